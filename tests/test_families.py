"""The chart families written in their own words (labsheet, datagrid, handoff, narrative): renderer invariants
on the real SUPPORT2 cohort, wording shared with no other family, dates only, and answers copied from their
forms parse back to the labels."""
import dataclasses
import datetime as dt
import json
import statistics

import jsonschema
import pytest

from survlm.extraction import compact_json, parse_answer
from survlm.metrics import field_errors, mentions_by_field
from survlm.notes import family_vocab as fv
from survlm.notes import vocab
from survlm.notes.checks import check_note, trap_stats
from survlm.notes.render import FAMILY_STYLES, ORIGINAL_STYLES, STYLES, render_patient, render_to_budget
from survlm.schema import target_json_schema
from survlm.units import UnitError, resolve_unit
from conftest import over_cohort


def test_families_are_registered_after_the_original_styles():
    assert STYLES == ORIGINAL_STYLES + FAMILY_STYLES
    assert ORIGINAL_STYLES == ("flowsheet", "discharge", "signout", "progress", "nursing")
    assert set(FAMILY_STYLES) == {"labsheet", "datagrid", "handoff", "narrative"}


@pytest.mark.slow
def test_family_invariants_hold_over_the_whole_cohort(schema, support2_rows):
    """Every patient in one family (rotating): labels come from the single day-3 mention, nulls have none, every
    mention's metadata converts back to its canonical value, days are named by date only, and every target is
    an answer the decoding schema allows."""
    validator = jsonschema.Draft202012Validator(target_json_schema(schema))
    def check(i, row):
        style = FAMILY_STYLES[i % len(FAMILY_STYLES)]
        note = render_patient(row, schema, style, 11, row["id"], n_days=4 + i % 5, filler_per_day=i % 3)
        found = [f"{row['id']} {style}: {v}" for v in check_note(note, schema, row)]
        found += [f"{row['id']} {style}: {e.message}" for e in validator.iter_errors(json.loads(compact_json(note.target)))]
        return found, list(trap_stats(note, schema).values()), note.style

    results = over_cohort(support2_rows, check)
    violations = [v for vs, _, _ in results for v in vs]
    traps = [t for _, ts, _ in results for t in ts]
    seen = {style for _, _, style in results}
    assert len(support2_rows) == len(results) == 9105 and seen == set(FAMILY_STYLES)
    assert violations == []
    assert statistics.fmean(t["first_wrong"] for t in traps) > 0.999
    assert statistics.fmean(t["last_wrong"] for t in traps) == 1.0


@pytest.mark.parametrize("style", FAMILY_STYLES)
def test_each_family_longest_notes(schema, support2_rows, style):
    """30 days (datagrid: several column blocks) and all filler; null labels are still charted on other days."""
    for row in support2_rows[:30]:
        note = render_patient(row, schema, style, 5, row["id"], n_days=30, filler_per_day=30)
        assert check_note(note, schema, row) == []
        for f in schema:
            if f.is_physiology:
                days = {m.day for m in note.mentions if m.field == f.name and m.kind == "day"}
                assert days and (f.day in days) == (note.labels[f.name] is not None)


@pytest.mark.parametrize("style", FAMILY_STYLES)
def test_family_render_is_deterministic_and_budget_monotone(schema, support2_rows, style):
    row = support2_rows[23]
    a, na = render_to_budget(row, schema, style, 3, row["id"], 3000, len)
    b, nb = render_to_budget(row, schema, style, 3, row["id"], 3000, len)
    assert a.text == b.text and a.metadata() == b.metadata() and na == nb <= 3000
    c, nc = render_to_budget(row, schema, style, 3, row["id"], 12000, len)
    assert nc > na and c.labels == a.labels and c.target == a.target
    assert render_patient(row, schema, style, 4, row["id"]).text != render_patient(row, schema, style, 3, row["id"]).text


def _labels(table):
    return {label.lower() for labels in table.values() if labels for label in labels}


def test_family_labels_are_shared_with_no_other_family():
    original = {label.lower() for terse, prose in vocab.LABELS.values() for label in terse + prose}
    original |= {label.lower() for label in vocab.UREA_LABELS[0] + vocab.UREA_LABELS[1]}
    for i, a in enumerate(FAMILY_STYLES):
        assert _labels(fv.LABELS[a]) & original == set(), a
        assert set(fv.LABELS[a]) == set(vocab.LABELS), a         # every physiology field has a way to be written
        for b in FAMILY_STYLES[i + 1:]:
            assert _labels(fv.LABELS[a]) & _labels(fv.LABELS[b]) == set(), (a, b)


@pytest.mark.parametrize("style", FAMILY_STYLES)
def test_family_notes_use_none_of_the_other_families_headings_or_filler(schema, support2_rows, style):
    others = [s for s in FAMILY_STYLES if s != style]
    foreign = [t for s in others for key in ("title", "dx", "pmh", "prior") for t in fv.TEXT[s][key]]
    foreign += [t.split("{")[0] for s in others for t in fv.TEXT[s]["filler"]]
    foreign += [t.split("{")[0] for t in vocab.FILLER]
    for row in support2_rows[:20]:
        text = render_patient(row, schema, style, 2, row["id"], n_days=8, filler_per_day=12).text
        assert [t for t in foreign if t.strip() in text] == []


@pytest.mark.parametrize("style", FAMILY_STYLES)
def test_days_are_named_by_calendar_date_and_the_check_catches_numbering(schema, support2_rows, style):
    row = support2_rows[7]
    note = render_patient(row, schema, style, 0, row["id"], n_days=9, filler_per_day=12)
    assert check_note(note, schema, row) == []
    admission = dt.date.fromisoformat(note.admission_date)
    day3 = (admission + dt.timedelta(days=schema["sodium_meq_l"].day - 1)).strftime(
        next(f for f in fv.TEXT[style]["date_formats"] if admission.strftime(f) in note.text))
    assert day3 in note.text
    numbered = dataclasses.replace(note, text=note.text + "\nHD#3 events reviewed")
    assert "the note numbers hospital days" in check_note(numbered, schema, row)
    undated = dataclasses.replace(note, admission_date=(admission - dt.timedelta(days=400)).isoformat())
    assert "the admission date is not written" in check_note(undated, schema, row)


def test_family_unit_spellings_resolve_for_the_fields_that_use_them(schema):
    max_unit = target_json_schema(schema)["properties"]["sodium_meq_l"]["anyOf"][0]["properties"]["unit"]["maxLength"]
    for style in FAMILY_STYLES:
        for key, spellings in fv.UNITS[style].items():
            name, unit = key if isinstance(key, tuple) else (None, key)
            fields = [schema[name]] if name else [f for f in schema if f.type == "number" and unit in f.units]
            for spelling in spellings:
                assert len(spelling.strip()) <= max_unit, (style, spelling)          # the answer can hold it
                for f in fields:
                    if spelling.strip() or f.unit_for_missing() == unit:
                        assert resolve_unit(f, spelling.strip() or None) == unit, (style, f.name, spelling)


def test_answers_copied_from_family_forms_parse(schema):
    def parse_field(f, item, note=None):   # one field's answer through the whole parser
        return parse_answer(compact_json({f.name: item}), schema.subset([f.name]), note)[f.name]

    urine, wbc, temp, creat = (schema[n] for n in ("urine_ml_day", "wbc_k_ul", "temperature_c", "creatinine_mg_dl"))
    assert parse_field(urine, {"value": "1850", "unit": "ml/24hr", "evidence": "UO 1850"}, "UO 1850 ml/24hr").value == 1850
    assert parse_field(urine, {"value": "1.85", "unit": "litres", "evidence": "1.85 litres"}).value == 1850
    assert parse_field(wbc, {"value": "12.3", "unit": "k/uL", "evidence": "leuk 12.3k/uL"}, "leuk 12.3k/uL").value == 12.3
    assert parse_field(wbc, {"value": "12.3", "unit": "x10(9)/L", "evidence": "12.3"}).value == 12.3
    assert parse_field(temp, {"value": "100.4", "unit": "deg Fahrenheit", "evidence": "x"}).value == 38.0
    assert parse_field(creat, {"value": "1.10", "unit": None, "evidence": "1.10"}).value == 1.1
    assert parse_field(creat, {"value": "97", "unit": "mcmol/L", "evidence": "97"}).value == round(97 / 88.42, 4)
    with pytest.raises(UnitError):  # a bare "K" after a value is potassium's label in "Na 138 K 4.1", not a unit
        resolve_unit(schema["wbc_k_ul"], "K")


def test_family_metadata_tags_last_value_and_wrong_day_answers(schema, support2_rows):
    """metrics reads the family notes' metadata like any other: another day's number is tagged by its day."""
    row = next(r for r in support2_rows if r["num_sod"])
    note = render_patient(row, schema, "datagrid", 1, row["id"], n_days=7)
    mentions = mentions_by_field(note.metadata())["sodium_meq_l"]
    gold = parse_answer(compact_json(note.target), schema, note.text)
    assert field_errors(schema["sodium_meq_l"], note.labels["sodium_meq_l"], gold["sodium_meq_l"], mentions) == []
    day_mentions = [m for m in mentions if m.kind == "day"]
    first, last = day_mentions[0], day_mentions[-1]
    other = next(m for m in day_mentions[1:-1]
                 if m.day != schema["sodium_meq_l"].day and m.canonical not in (first.canonical, last.canonical))
    for m, tag in ((last, "last_value"), (other, "wrong_day")):
        answer = {**note.target, "sodium_meq_l": {"value": m.value, "unit": m.unit, "evidence": m.value}}
        r = parse_answer(compact_json(answer), schema, note.text)["sodium_meq_l"]
        assert tag in field_errors(schema["sodium_meq_l"], note.labels["sodium_meq_l"], r, mentions)


def test_check_catches_metadata_that_does_not_convert_back(schema, support2_rows):
    row = support2_rows[3]
    note = render_patient(row, schema, "labsheet", 0, row["id"], n_days=5)
    assert check_note(note, schema, row) == []
    k = next(i for i, m in enumerate(note.mentions)
             if m.field == "creatinine_mg_dl" and m.day != schema["creatinine_mg_dl"].day)
    wrong = dataclasses.replace(note.mentions[k], canonical=note.mentions[k].canonical * 2 + 1)
    broken = dataclasses.replace(note, mentions=note.mentions[:k] + [wrong] + note.mentions[k + 1:])
    assert any("do not convert to its canonical value" in v for v in check_note(broken, schema, row))
