"""Extraction scoring on hand-made predictions with known answers."""
import dataclasses

import pytest

from survlm.extraction import FieldResult, compact_json, parse_answer
from survlm.metrics import field_errors, is_correct, mentions_by_field, score

COLS = ["field", "kind", "day", "value", "unit", "canonical", "start", "end"]
META = {"mention_columns": COLS, "mentions": [
    ["sodium_meq_l", "day", 1, "131", None, 131.0, 10, 16],
    ["sodium_meq_l", "day", 3, "138", None, 138.0, 40, 46],
    ["sodium_meq_l", "day", 4, "133", None, 133.0, 60, 66],
    ["sodium_meq_l", "day", 5, "142", None, 142.0, 80, 86],
    ["glucose_mg_dl", "day", 2, "150", None, 150.0, 20, 27],
    ["glucose_mg_dl", "day", 4, "180", None, 180.0, 70, 77],
    ["temperature_c", "day", 1, "37.9", "C", 37.9, 5, 9],
    ["temperature_c", "day", 3, "99.5", "F", 37.5, 30, 40],
    ["temperature_c", "day", 4, "36.8", "C", 36.8, 50, 58],
]}


def _ok(value, written=None):
    return FieldResult("ok", value=value, written=written)


def test_error_tags(schema):
    m = mentions_by_field(META)
    na, glu, temp = schema["sodium_meq_l"], schema["glucose_mg_dl"], schema["temperature_c"]
    assert field_errors(na, 138.0, _ok(138.0), m["sodium_meq_l"]) == []
    assert field_errors(na, 138.0, _ok(139.3), m["sodium_meq_l"]) == []          # within 1 %
    assert field_errors(na, 138.0, _ok(142.0), m["sodium_meq_l"]) == ["last_value"]
    assert field_errors(na, 138.0, _ok(131.0), m["sodium_meq_l"]) == ["first_value"]
    assert field_errors(na, 138.0, _ok(133.0), m["sodium_meq_l"]) == ["wrong_day"]
    assert field_errors(na, 138.0, _ok(120.0), m["sodium_meq_l"]) == ["wrong_value"]
    assert field_errors(na, 138.0, FieldResult("null"), m["sodium_meq_l"]) == ["omitted"]
    assert field_errors(glu, None, FieldResult("null"), m["glucose_mg_dl"]) == []
    assert field_errors(glu, None, _ok(180.0), m["glucose_mg_dl"]) == ["fabricated", "last_value"]
    assert field_errors(glu, None, FieldResult("ungrounded", candidate=97.0), m["glucose_mg_dl"]) == ["fabricated"]
    # °F read as °C: the day-3 number with the wrong unit
    wrong_unit = FieldResult("out_of_range", candidate=99.5, written={"value": "99.5", "unit": "C"})
    assert field_errors(temp, 37.5, wrong_unit, m["temperature_c"]) == ["unit_wrong"]
    assert field_errors(schema["sex"], "male", _ok("female")) == ["wrong_category"]
    assert field_errors(schema["sex"], "male", FieldResult("invalid_json")) == ["invalid_json"]
    assert is_correct(schema["num_comorbidities"], 2, _ok(2)) and not is_correct(schema["num_comorbidities"], 2, _ok(3))
    # the gold day is the field's own (Field.day): read on day 4, 133 is right and day 3's value is the wrong day
    na4 = dataclasses.replace(na, day=4)
    assert field_errors(na4, 133.0, _ok(133.0), m["sodium_meq_l"]) == []
    assert field_errors(na4, 133.0, _ok(138.0), m["sodium_meq_l"]) == ["wrong_day"]


def test_score_rates(schema):
    gold = {f.name: None for f in schema}
    gold.update(sodium_meq_l=138.0, temperature_c=37.5, sex="male")
    right = parse_answer(compact_json({
        "sex": {"value": "male", "evidence": None},
        "sodium_meq_l": {"value": "138", "unit": None, "evidence": "Na 138"},
        "temperature_c": {"value": "99.5", "unit": "F", "evidence": "T 99.5 F"},
        **{f.name: None for f in schema if f.name not in ("sex", "sodium_meq_l", "temperature_c")},
    }), schema)
    last = dict(right)
    last["sodium_meq_l"] = _ok(142.0)
    last["glucose_mg_dl"] = _ok(180.0)
    rows = [(gold, right, META), (gold, last, META), (gold, parse_answer("not json", schema), META)]
    m = score(schema, rows)
    n_fields = len(schema.names)
    wrong_in_right = sum(not is_correct(schema[f], gold[f], right[f]) for f in schema.names)
    # age/disease group/... golds are None here, and the answers are null, so `right` is fully right
    assert wrong_in_right == 0
    assert m["field_accuracy"] == pytest.approx((n_fields + n_fields - 2 + 0) / (3 * n_fields), abs=1e-4)
    assert m["json_valid_rate"] == pytest.approx(2 / 3, abs=1e-4)
    # glucose is the only null-gold field with a trap here? every null physiology field counts in the denominator
    null_phys = sum(1 for f in schema if f.is_physiology and gold[f.name] is None)
    assert m["fabrication_rate"] == pytest.approx(1 / (3 * null_phys), abs=1e-4)
    # last-value traps: sodium (last 142 != 138), glucose (null gold, last 180), temperature (36.8 != 37.5)
    assert m["last_value_rate"] == pytest.approx(2 / 9, abs=1e-4)
    assert m["errors"]["last_value"] == 2 and m["errors"]["fabricated"] == 1
    assert m["errors"]["invalid_json"] == n_fields
    # the same tags, split by field: each field's own mistakes, adding up to the totals
    assert m["per_field_errors"]["sodium_meq_l"] == {"last_value": 1, "invalid_json": 1}
    assert m["per_field_errors"]["glucose_mg_dl"] == {"fabricated": 1, "last_value": 1, "invalid_json": 1}
    for tag, n in m["errors"].items():
        assert sum(e.get(tag, 0) for e in m["per_field_errors"].values()) == n


def test_bootstrap_of_tallies_equals_scoring_each_resample(schema):
    """extraction_metrics adds up per-note tallies for each bootstrap resample; its intervals and rates must be
    exactly those of scoring the resampled notes again, on notes whose answers differ in every error kind."""
    import random

    from survlm.bootstrap import bootstrap_ci
    from survlm.evaluation import CI_KEYS, extraction_metrics

    rng = random.Random(0)
    choices = [_ok(138.0), _ok(142.0), _ok(131.0), _ok(133.0), FieldResult("null"), FieldResult("invalid_json"),
               FieldResult("ungrounded", candidate=97.0)]
    records, results, meta = {}, {}, {}
    for k in range(40):
        gold = {"sodium_meq_l": rng.choice([138.0, None]), "glucose_mg_dl": rng.choice([None, 150.0]),
                "temperature_c": 37.5, "sex": "male"}
        answer = {f.name: FieldResult("missing_field") for f in schema}
        answer.update(sodium_meq_l=rng.choice(choices), glucose_mg_dl=rng.choice([_ok(180.0), FieldResult("null")]),
                      temperature_c=rng.choice([_ok(37.5), _ok(36.8)]), sex=rng.choice([_ok("male"), _ok("female")]))
        records[f"n{k}"], results[f"n{k}"], meta[f"n{k}"] = {"labels": gold}, answer, META
    ids = list(records)
    boot = {"resamples": 50, "seed": 3}
    fast = extraction_metrics(schema, records, meta, {"m": results}, ids, boot)["m"]
    rows = [(records[i]["labels"], results[i], META) for i in ids]
    slow = bootstrap_ci(lambda idx: {k: v for k, v in score(schema, [rows[j] for j in idx]).items() if k in CI_KEYS},
                        len(rows), **boot)
    assert fast.pop("ci95") == slow
    assert fast == score(schema, rows)
    assert 0 < fast["field_accuracy"] < 1 and 0 < fast["fabrication_rate"] < 1 and 0 < fast["last_value_rate"] < 1
