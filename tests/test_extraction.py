import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from survlm.extraction import FAILURES, STATUSES, answer_text, compact_json, parse_answer
from survlm.schema import target_json_schema

NOTE = "HD#3: T 99.5 F, HR 88, BP 120/60, PaO2 80 on FiO2 40%, Cr 106 umol/L. PMH: DM2, CAD. 62 yo M."


def _answer(**fields):
    return compact_json(fields)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=50).map(lambda b: b.decode("latin-1")),
                      st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.text(max_size=8),
                                   lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=12), c, max_size=4),
                                   max_leaves=12).map(json.dumps)))
def test_parser_is_total(schema, text):
    out = parse_answer(text, schema, NOTE)
    assert list(out) == schema.names
    for r in out.values():
        assert r.status in STATUSES
        assert (r.status == "ok") == (r.value is not None)


@settings(max_examples=200, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(["age", "sex", "diabetes", "heart_rate_bpm", "num_comorbidities"]),
                              st.none() | st.text(max_size=5) | st.fixed_dictionaries(
                                  {"value": st.sampled_from(["62", "male", True, ["CAD", "DM2"], "88", "x"]),
                                   "evidence": st.sampled_from(["62 yo", "M", "DM2", "HR 88", "nowhere"])},
                                  optional={"unit": st.sampled_from([None, "bpm", "years"])})),
       torn=st.booleans())
def test_an_answer_written_from_results_reads_back_as_them(schema, fields, torn):
    """answer_text (a chunked note's merged answer, written out): every field the model wrote reads back as it
    was read, from a whole answer or one read field by field; the others are left out."""
    text = compact_json(fields)
    results = parse_answer(text[:-1] if torn else text, schema, NOTE)
    reread = parse_answer(answer_text(results), schema, NOTE)
    for name, r in results.items():
        if r.status == "null" or r.written is not None:
            assert (reread[name].status, reread[name].value) == (r.status, r.value)
        else:
            assert reread[name].status in ("missing_field", "invalid_json")


def test_garbage_is_invalid_json(schema):
    for text in ["", "The patient is a 62 yo M ...", "{not json", "[1, 2]", None, 17]:
        assert {r.status for r in parse_answer(text, schema).values()} == {"invalid_json"}


def test_every_typed_failure(schema):
    out = parse_answer(_answer(
        age={"value": "62", "unit": None, "evidence": "62 yo"},
        sex={"value": "other", "evidence": "M"},
        cancer="yes",
        temperature_c={"value": "99.5", "unit": "kelvin", "evidence": "T 99.5 F"},
        heart_rate_bpm={"value": "880", "unit": None, "evidence": "HR 880"},
        mean_bp_mmhg={"value": "120/60", "unit": "mmHg", "evidence": "BP 120/60"},
        pao2_fio2={"value": "80/40%", "unit": None, "evidence": "PaO2 80 on FiO2 40%"},
        creatinine_mg_dl={"value": "1.2", "unit": "mg/dL", "evidence": "Cr 1.2 mg/dL"},
        sodium_meq_l={"value": "one hundred", "unit": None, "evidence": "Na"},
        num_comorbidities={"value": ["DM2", "CAD"]},
        diabetes={"value": True, "evidence": "DM2"},
        dementia={"value": True, "evidence": "dementia"},
        glucose_mg_dl=None,
    ), schema, NOTE)
    status = {k: v.status for k, v in out.items()}
    assert status["age"] == "ok" and out["age"].value == 62
    assert status["sex"] == "invalid_category"
    assert status["cancer"] == "bad_value"
    assert status["temperature_c"] == "unknown_unit"
    assert status["heart_rate_bpm"] == "out_of_range" and out["heart_rate_bpm"].candidate == 880
    assert status["mean_bp_mmhg"] == "ok" and out["mean_bp_mmhg"].value == pytest.approx(80.0)
    assert status["pao2_fio2"] == "ok" and out["pao2_fio2"].value == pytest.approx(200.0)
    assert status["creatinine_mg_dl"] == "ungrounded"  # the note never writes 1.2
    assert status["sodium_meq_l"] == "bad_value"
    assert status["num_comorbidities"] == "ok" and out["num_comorbidities"].value == 2
    assert status["diabetes"] == "ok" and out["diabetes"].value is True
    assert status["dementia"] == "ok"   # a yes/no is read as written, whatever its quote
    assert status["glucose_mg_dl"] == "null"
    assert status["ph"] == "missing_field"
    assert set(status.values()) - {"ok", "null"} <= set(FAILURES)


def test_a_value_needs_its_numbers_in_the_note_not_a_verbatim_quote(schema):
    """A paraphrased quote keeps a value the note writes; a number the note never writes is refused, quote or not;
    a listed comorbidity must be in the note."""
    out = parse_answer(_answer(
        heart_rate_bpm={"value": "88", "unit": "bpm", "evidence": "heart rate 88 bpm"},   # the note: "HR 88"
        resp_rate={"value": "18", "unit": None, "evidence": "HR 88"},                       # 18: not in the note
        pao2_fio2={"value": "80/RA", "unit": None, "evidence": "PaO2 80"},                  # the note has FiO2 40%
        sex={"value": "male", "evidence": "a man"},
        num_comorbidities={"value": ["DM2", "COPD"]},
    ), schema, NOTE)
    status = {k: v.status for k, v in out.items()}
    assert status["heart_rate_bpm"] == "ok" and out["heart_rate_bpm"].value == 88
    assert status["resp_rate"] == "ungrounded" and out["resp_rate"].candidate == 18
    assert status["pao2_fio2"] == "ungrounded"      # "RA" but the note never says room air
    assert status["sex"] == "ok"
    assert status["num_comorbidities"] == "ungrounded" and out["num_comorbidities"].candidate == 2
    room_air = parse_answer(_answer(pao2_fio2={"value": "80/RA", "unit": None, "evidence": "PaO2 80 on RA"}),
                            schema, NOTE.replace("on FiO2 40%", "on RA"))
    assert room_air["pao2_fio2"].status == "ok"


OTHER_FIELDS = ("HD 3: HR 94, MAP 71 mmHg, Alb 3.6 g/dL. PF 305.\n"
                "Ultrasound-guided paracentesis removed 3.5 L.")


def test_a_number_the_note_writes_only_as_other_fields_values_is_refused(schema):
    """Urine output answered with the pulse, the albumin or the P/F ratio, all written after their own names, is
    `other_field` (the value kept as candidate); a number the note also writes after the field's own name, or
    without any field's name before it, is read; so is every field whose number is its own."""
    def status(note, **fields):
        out = parse_answer(_answer(**fields), schema, note)
        return {name: (out[name].status, out[name].candidate) for name in fields}

    for taken in ("94", "3.6", "305"):
        assert status(OTHER_FIELDS, urine_ml_day={"value": taken, "unit": "mL", "evidence": "x"}) == {
            "urine_ml_day": ("other_field", float(taken))}
    assert status(OTHER_FIELDS, heart_rate_bpm={"value": "94", "unit": None, "evidence": "HR 94"},
                  albumin_g_dl={"value": "3.6", "unit": "g/dL", "evidence": "Alb 3.6"}) == {
        "heart_rate_bpm": ("ok", None), "albumin_g_dl": ("ok", None)}
    # "3.5 L" follows no field's name: not judged
    assert status(OTHER_FIELDS, urine_ml_day={"value": "3.5", "unit": "L", "evidence": "3.5 L"}) == {
        "urine_ml_day": ("ok", None)}
    # the same number after urine output's own name too: read
    assert status(OTHER_FIELDS + " UOP 94 mL.", urine_ml_day={"value": "94", "unit": "mL", "evidence": "UOP 94"}) == {
        "urine_ml_day": ("ok", None)}
    # without the note, or for a schema cut to the one field, nothing owns the number
    assert parse_answer(_answer(urine_ml_day={"value": "94", "unit": "mL", "evidence": "x"}), schema)[
        "urine_ml_day"].status == "ok"
    alone = schema.subset(["urine_ml_day"])
    assert parse_answer(json.dumps({"urine_ml_day": {"value": "94", "unit": "mL", "evidence": "x"}}), alone,
                        OTHER_FIELDS)["urine_ml_day"].status == "ok"


DAYS = ("Admitted Mar 3. Outside labs: Cr 1.9.\n"
        "HD 1: HR 90, UOP 1200 mL. Cr 1.4.\n"
        "HD 2: HR 88, UOP 1500 mL. Cr 1.4.\n"
        "HD 3: HR 86. Cr 1.2.\n"
        "Mar 6: HR 84, UOP 1500 mL, T 37.2 C.")


def test_a_value_the_note_gives_only_for_other_days_is_refused(schema):
    """Day 2's urine output (also day 4's) copied into a day 3 that has none is `other_day`, the value kept as the
    candidate; a value the note also gives on day 3, or before the first day marker, or under no name the check
    knows, is read; a note without day markers is not judged."""
    def status(note, **fields):
        out = parse_answer(_answer(**fields), schema, note)
        return {name: (out[name].status, out[name].candidate) for name in fields}

    copied = status(DAYS, urine_ml_day={"value": "1500", "unit": "mL", "evidence": "UOP 1500 mL"},
                    heart_rate_bpm={"value": "84", "unit": None, "evidence": "HR 84"},   # dated Mar 6: day 4
                    temperature_c={"value": "37.2", "unit": "C", "evidence": "T 37.2 C"})
    assert copied == {"urine_ml_day": ("other_day", 1500.0), "heart_rate_bpm": ("other_day", 84.0),
                      "temperature_c": ("other_day", 37.2)}
    read = status(DAYS, heart_rate_bpm={"value": "86", "unit": None, "evidence": "HR 86"},
                  creatinine_mg_dl={"value": "1.2", "unit": None, "evidence": "Cr 1.2"},
                  resp_rate=None)
    assert read == {"heart_rate_bpm": ("ok", None), "creatinine_mg_dl": ("ok", None), "resp_rate": ("null", None)}
    # Cr 1.9 is written before the first day marker: undated, so not another day's
    assert status(DAYS, creatinine_mg_dl={"value": "1.9", "unit": None, "evidence": "Cr 1.9"}) == {
        "creatinine_mg_dl": ("ok", None)}
    # Cr 1.4 on days 1 and 2 only: refused, whichever day the model copied
    assert status(DAYS, creatinine_mg_dl={"value": "1.4", "unit": None, "evidence": "Cr 1.4"}) == {
        "creatinine_mg_dl": ("other_day", 1.4)}
    undated = DAYS.replace("HD ", "shift ").replace("Mar 6", "later")
    assert status(undated, urine_ml_day={"value": "1500", "unit": "mL", "evidence": "UOP 1500 mL"}) == {
        "urine_ml_day": ("ok", None)}
    assert status(DAYS.replace("UOP", "urine vol"),    # a name the schema does not list: not judged
                  urine_ml_day={"value": "1500", "unit": "mL", "evidence": "urine vol 1500 mL"}) == {
        "urine_ml_day": ("ok", None)}


def test_a_condition_the_answers_own_list_names_is_true(schema):
    """diabetes and dementia are `listed_in` the comorbidities: an answer that lists "DM2" but says diabetes false
    (or null) reads as true, its own flag kept as the candidate; a negated or pre- mention, a list the note does not
    confirm, or a schema without listed_in leave the flag as written."""
    from dataclasses import replace

    note = "PMH: DM2, CAD, vascular dementia. No DM1. 62 yo M."

    def read(items, diabetes=False, dementia=None, s=schema):
        out = parse_answer(_answer(num_comorbidities={"value": items},
                                   diabetes={"value": diabetes, "evidence": None} if diabetes is not None else None,
                                   dementia={"value": dementia, "evidence": None} if dementia is not None else None),
                           s, note)
        return {k: (out[k].status, out[k].value, out[k].candidate) for k in ("diabetes", "dementia")}

    assert read(["DM2", "CAD", "vascular dementia"]) == {"diabetes": ("ok", True, False),
                                                         "dementia": ("ok", True, None)}
    assert read(["DM2"], diabetes=True) == {"diabetes": ("ok", True, None), "dementia": ("null", None, None)}
    assert read(["CAD"])["diabetes"] == ("ok", False, None)
    assert read(["No DM1"])["diabetes"] == ("ok", False, None)             # negated
    assert read(["DM2", "COPD"])["diabetes"] == ("ok", False, None)        # COPD: not in the note, the list refused
    unlinked = replace(schema, fields={**schema.fields, "diabetes": replace(schema["diabetes"], listed_in=None)})
    assert read(["DM2"], s=unlinked)["diabetes"] == ("ok", False, None)
    flags_only = parse_answer(_answer(diabetes={"value": False, "evidence": None}), schema.subset(["diabetes"]), note)
    assert flags_only["diabetes"].value is False                    # a schema cut without the list: as written
    # the model's confidence was in its `false`: a flag read from the list keeps none, the other fields theirs
    from survlm.predictions import reparsed_row
    raw = _answer(num_comorbidities={"value": ["DM2"]}, diabetes={"value": False, "evidence": None},
                  dementia={"value": False, "evidence": None})
    row = reparsed_row({"id": "n", "raw": [raw], "confidence": {"diabetes": 0.99, "dementia": 0.98,
                                                                  "num_comorbidities": 0.9}}, note, schema)
    assert row["values"]["diabetes"] is True and row["confidence"] == {"dementia": 0.98, "num_comorbidities": 0.9}
    from survlm.evidence import names_condition
    assert not names_condition(schema["diabetes"], "pre-diabetes") and names_condition(schema["diabetes"], "T2DM")


def test_a_list_of_nothing_counts_nothing(schema):
    """The model lists, code counts: a copied phrase of absence ("none", "no chronic conditions") is no item, nor
    is an entry the note negates where it opens its list entry; an entry written un-negated anywhere counts."""
    def count(items, note):
        r = parse_answer(_answer(num_comorbidities={"value": items}), schema, note)["num_comorbidities"]
        return r.status, r.value

    assert count(["none"], "PMH: none.") == ("ok", 0)
    assert count(["No chronic conditions."], "PMH: no chronic conditions.") == ("ok", 0)
    assert count(["chronic conditions"], "PMH: no chronic conditions.") == ("ok", 0)       # the "no" dropped
    assert count(["COPD", "CHF"], "PMH: no COPD; CHF.") == ("ok", 1)
    assert count(["COPD", "CHF"], "PMH: CHF, COPD. No COPD flare this year.") == ("ok", 2)   # listed un-negated
    assert count(["depression"], "PMH: no known drug allergies, depression.") == ("ok", 1)  # another entry's "no"
    assert count(["CHF", "COPD"], "PMH: CHF.") == ("ungrounded", None)          # COPD: not in the note


def test_units_are_converted_by_code(schema):
    out = parse_answer(_answer(temperature_c={"value": "99.5", "unit": "F", "evidence": "T 99.5 F"},
                               creatinine_mg_dl={"value": "106", "unit": "umol/L", "evidence": "Cr 106 umol/L"}),
                       schema, NOTE)
    assert out["temperature_c"].value == pytest.approx(37.5)
    assert out["creatinine_mg_dl"].value == pytest.approx(106 / 88.42, abs=1e-4)


def test_json_with_chatter_and_fences(schema):
    text = "Sure! ```json\n" + _answer(heart_rate_bpm={"value": "88", "unit": "bpm", "evidence": "HR 88"}) + "\n```"
    out = parse_answer(text, schema, NOTE)["heart_rate_bpm"]
    assert out.status == "ok" and out.value == 88.0


def test_target_schema_lists_every_field(schema):
    js = target_json_schema(schema)
    assert js["required"] == schema.names and js["additionalProperties"] is False
    assert js["properties"]["sex"]["properties"]["value"]["enum"] == ["male", "female"]


def test_malformed_answers_are_read_field_by_field(schema):
    from survlm.extraction import answer_is_valid_json

    broken = ('{"age":{"value":"62","unit":null,"evidence":"62 yo"},{"sex":{"value":"male","evidence":"M"},'
              '"heart_rate_bpm":{"value":"88","unit":null,"evidence":"HR 88"},"ph":{"value":')
    out = parse_answer(broken, schema, NOTE)
    assert out["age"].status == "ok" and out["age"].value == 62 and out["age"].recovered
    assert out["sex"].status == "ok" and out["heart_rate_bpm"].value == 88.0
    assert out["ph"].status == "invalid_json" and out["glucose_mg_dl"].status == "invalid_json"
    assert not answer_is_valid_json(out)
    good = parse_answer(_answer(age={"value": "62", "unit": None, "evidence": "62 yo"}), schema, NOTE)
    assert answer_is_valid_json({k: v for k, v in good.items() if k == "age"})
    assert good["sex"].status == "missing_field" and not good["age"].recovered
