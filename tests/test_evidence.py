"""Locating a user's labels in their notes, and the targets built from them (survlm.evidence, no torch)."""
import json
import random

import pytest

from survlm.evidence import day_markers, locate, target_text, value_only_item
from survlm.extraction import parse_answer

NOTE = ("Admission date: Mar 30\n72 yo woman admitted with CHF exacerbation.\nPMH: DM2; CKD.\nNo dementia.\n"
        "OSH labs: Na 150.\n"
        "03/30: Na 131, HR 100, T 99.1 F, BP 120/70, PaO2 80 on 40%, Cr 1.1\n"
        "03/31: Na 133, HR 96, T 37.0 C\n"
        "Apr 01: Na 138 mmol/L, HR 92 bpm, T 100.4 F, BP 110/65 mmHg, PaO2 90 on FiO2 0.50, Cr 133 umol/L\n"
        "Apr 02: Na 140, HR 88\n")


def test_day_markers_count_from_a_year_less_admission_date():
    days = [d for _, d in day_markers(NOTE)]
    assert days == [1, 2, 3, 4]                 # the admission date itself opens no day; April follows March
    assert [d for _, d in day_markers("HD#2 x. Hospital Day 3 - y. day 4")] == [2, 3, 4]


def test_labels_are_located_on_the_rule_day_in_any_unit(schema):
    labels = {"sodium_meq_l": 138, "heart_rate_bpm": 92, "temperature_c": 38.0, "mean_bp_mmhg": 80,
              "pao2_fio2": 180, "creatinine_mg_dl": 1.5, "age": 72, "sex": "female", "disease_group": "CHF",
              "diabetes": True, "dementia": False, "num_comorbidities": 2}
    ev = locate(schema, NOTE, labels)
    assert {n: loc.status for n, loc in ev.fields.items()} == {n: "located" for n in labels}
    got = {n: loc.item for n, loc in ev.fields.items()}
    assert got["sodium_meq_l"] == {"value": "138", "unit": "mmol/L", "evidence": "Na 138 mmol/L"}
    assert got["temperature_c"] == {"value": "100.4", "unit": "F", "evidence": "T 100.4 F"}      # 38.0 °C
    assert got["mean_bp_mmhg"] == {"value": "110/65", "unit": "mmHg", "evidence": "BP 110/65 mmHg"}  # MAP 80
    assert got["pao2_fio2"] == {"value": "90/0.50", "unit": None, "evidence": "PaO2 90 on FiO2 0.50"}
    assert got["creatinine_mg_dl"]["evidence"] == "Cr 133 umol/L"
    assert got["age"]["evidence"] == "72 yo" and got["sex"] == {"value": "female", "evidence": "woman"}
    assert got["diabetes"] == {"value": True, "evidence": "DM2"}
    assert got["dementia"] == {"value": False, "evidence": None}                   # "no dementia" is negated
    assert got["num_comorbidities"] == {"value": ["DM2", "CKD"]}
    # every located item parses back to its label, grounded in the note
    answer = json.dumps({f.name: got.get(f.name) for f in schema})
    results = parse_answer(answer, schema, NOTE)
    for name in ("sodium_meq_l", "heart_rate_bpm", "temperature_c", "mean_bp_mmhg", "pao2_fio2", "creatinine_mg_dl"):
        assert results[name].status == "ok" and abs(results[name].value - labels[name]) <= 0.01 * labels[name] + 0.05


def test_unlocated_ambiguous_contradicted_and_null(schema):
    ev = locate(schema, NOTE + "Apr 01 addendum: Na 138\n", {
        "sodium_meq_l": 138,        # twice on day 3, written differently: which span is unknown
        "heart_rate_bpm": 100,      # only on day 1, and day 3 says 92
        "glucose_mg_dl": 120,       # never mentioned
        "ph": None,                 # null and nothing on day 3
        "temperature_c": None,      # null, but day 3 has a temperature
    })
    status = {n: loc.status for n, loc in ev.fields.items()}
    assert status == {"sodium_meq_l": "ambiguous", "heart_rate_bpm": "contradicted", "glucose_mg_dl": "not_found",
                      "ph": "null", "temperature_c": "contradicted"}
    s, e = ev.fields["heart_rate_bpm"].conflict
    assert NOTE[s:e] == "HR 92 bpm"
    # Mentions keep their day: metrics' error tags and make_pairs' traps read them as render metadata.
    meta = ev.meta()
    days = [row[2] for row in meta["mentions"] if row[0] == "sodium_meq_l"]
    assert days == [None, 1, 2, 3, 4, 3]


def test_target_masks_placeholders(schema):
    items = {"sodium_meq_l": {"value": "138", "unit": None, "evidence": "Na 138"},
             "age": value_only_item(schema["age"], 72)}
    t = target_text(schema, items, {**{f.name: "value" for f in schema if f.name not in items}, "age": "evidence"})
    assert json.loads(t.text)["sodium_meq_l"]["evidence"] == "Na 138"
    masked = [t.text[s:e] for s, e in t.masked]
    assert masked.count("null") == len(schema.names) - 2 and '"72"' in masked
    assert not any("138" in m for m in masked)   # the located label is trained


@pytest.mark.parametrize("style", ["flowsheet", "discharge", "signout", "progress", "nursing"])
def test_rendered_notes_every_label_is_found_where_the_renderer_wrote_it(schema, support2_rows, style):
    from survlm.notes.render import LEVELS, render_patient

    rng = random.Random(style)
    for row in rng.sample(support2_rows, 12):
        note = render_patient(row, schema, style, 42, row["id"], *LEVELS[rng.randrange(30)])
        ev = locate(schema, note.text, note.labels)
        for f in schema:
            loc = ev.fields[f.name]
            assert loc.status == ("null" if note.labels[f.name] is None else "located"), (style, f.name)
            if f.is_physiology and loc.item is not None:
                assert loc.item == note.target[f.name], (style, f.name)   # value, unit and evidence span
            elif f.name == "age":
                assert loc.item["evidence"] == note.target["age"]["evidence"]
