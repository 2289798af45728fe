"""Renderer invariants on the real SUPPORT2 cohort."""
import json
import statistics

import jsonschema
import pytest

from survlm.extraction import compact_json
from survlm.notes.checks import check_note, trap_stats
from survlm.notes.render import STYLES, render_patient, render_to_budget
from survlm.schema import target_json_schema
from conftest import over_cohort


@pytest.mark.slow   # renders all 9,105 patients
def test_invariants_hold_over_the_whole_cohort(schema, support2_rows):
    """Every patient, each in one style (rotating): labels come from the day-3 mention, nulls have none."""
    def check(i, row):
        note = render_patient(row, schema, STYLES[i % len(STYLES)], 7, row["id"], n_days=5, filler_per_day=1)
        return [f"{row['id']}: {v}" for v in check_note(note, schema, row)], list(trap_stats(note, schema).values())

    results = over_cohort(support2_rows, check)
    violations = [v for vs, _ in results for v in vs]
    traps = [t for _, ts in results for t in ts]
    assert len(support2_rows) == len(results) == 9105
    assert violations == []
    # The first and last mention of a physiology value are (almost) never the day-3 value; a home
    # glucometer reading may coincide with it by chance.
    assert statistics.fmean(t["first_wrong"] for t in traps) > 0.999
    assert statistics.fmean(t["last_wrong"] for t in traps) == 1.0


@pytest.mark.parametrize("style", STYLES)
def test_each_style_long_notes(schema, support2_rows, style):
    for row in support2_rows[:40]:
        note = render_patient(row, schema, style, 1, row["id"], n_days=12, filler_per_day=6)
        assert check_note(note, schema, row) == []
        # every null label: the field is still documented on other days (the fabrication trap)
        for f in schema:
            if f.is_physiology and note.labels[f.name] is None:
                days = {m.day for m in note.mentions if m.field == f.name and m.kind == "day"}
                assert days and f.day not in days


def test_note_text_matches_source_day3(schema, support2_rows):
    row = next(r for r in support2_rows if r["num_sod"] and r["num_ph"])
    note = render_patient(row, schema, "flowsheet", 0, row["id"])
    assert note.labels["sodium_meq_l"] == round(row["num_sod"])
    assert abs(note.labels["ph"] - row["num_ph"]) <= 0.006
    m = next(m for m in note.mentions if m.field == "sodium_meq_l" and m.day == schema["sodium_meq_l"].day)
    assert note.text[m.start:m.end] == note.target["sodium_meq_l"]["evidence"]


def test_render_is_deterministic_and_budget_monotone(schema, support2_rows):
    count = len  # characters stand in for tokens here; the stage uses the base model's tokenizer
    row = support2_rows[11]
    a, na = render_to_budget(row, schema, "discharge", 3, row["id"], 3000, count)
    b, nb = render_to_budget(row, schema, "discharge", 3, row["id"], 3000, count)
    assert a.text == b.text and na == nb <= 3000
    c, nc = render_to_budget(row, schema, "discharge", 3, row["id"], 9000, count)
    assert nc > na and c.labels == a.labels and c.target == a.target
    other_seed = render_patient(row, schema, "discharge", 4, row["id"])
    assert other_seed.text != render_patient(row, schema, "discharge", 3, row["id"]).text


def test_the_richest_level_search_finds_what_trying_every_level_finds():
    """For counts that grow with the level (with plateaus, jumps, budgets below the first and above the last),
    richest_level returns the largest level within the budget, as a scan of every level does, and on smooth
    growth it needs fewer probes than a galloping search (10 here)."""
    import random

    from survlm.notes.render.patient import richest_level

    rng = random.Random(0)
    for _ in range(3000):
        levels = rng.randint(1, 80)
        counts, c = [], rng.randint(0, 500)
        for _ in range(levels):
            c += rng.choice([0, 1, 2, 5, 20, 100, rng.randint(0, 300)])
            counts.append(c)
        budget = rng.randint(0, counts[-1] + 200)
        assert richest_level(counts.__getitem__, levels, budget) == max(
            [k for k in range(levels) if counts[k] <= budget], default=0)
    probes = []
    smooth = [1000 + 40 * k + k * k for k in range(57)]
    assert richest_level(lambda k: probes.append(k) or smooth[k], 57, 3072) == 29 and len(probes) <= 8


def test_targets_validate_against_the_json_schema(schema, support2_rows):
    validator = jsonschema.Draft202012Validator(target_json_schema(schema))
    for i, row in enumerate(support2_rows[:200]):
        note = render_patient(row, schema, STYLES[i % len(STYLES)], 0, row["id"])
        errors = list(validator.iter_errors(json.loads(compact_json(note.target))))
        assert errors == [], (row["id"], errors[0].message)


def test_dates_only_styles_never_number_days(schema, support2_rows):
    row = support2_rows[5]
    for style in ("progress", "nursing"):
        text = render_patient(row, schema, style, 0, row["id"], n_days=6).text
        assert "HD" not in text and "hospital day" not in text.lower()


def test_decoding_grammar_accepts_every_target_and_only_compact_json(schema, support2_rows):
    """The grammar both backends decode with (vLLM's own JSON-schema path forced `, ` and `: ` in vllm 0.24)."""
    xgr = pytest.importorskip("xgrammar")
    from survlm.modeling.backends import compact_json_grammar

    compiled = xgr.GrammarCompiler(xgr.TokenizerInfo(["{", "}"])).compile_grammar(
        compact_json_grammar(target_json_schema(schema)))
    for i, row in enumerate(support2_rows[:100]):
        target = compact_json(render_patient(row, schema, STYLES[i % len(STYLES)], 0, row["id"]).target)
        assert xgr.GrammarMatcher(compiled).accept_string(target), row["id"]
        spaced = json.dumps(json.loads(target))
        assert not xgr.GrammarMatcher(compiled).accept_string(spaced), row["id"]



def test_the_grammar_takes_exactly_the_values_the_number_pattern_matches(schema):
    """A value's digits are bounded (9 before the point, 6 after), so a model that runs on in digits must close
    it; the decoding grammar accepts a value exactly when Python's `re` matches the pattern."""
    import random
    import re

    xgr = pytest.importorskip("xgrammar")
    from survlm.modeling.backends import compact_json_grammar
    from survlm.schema import NUMBER_PATTERN

    sub = schema.subset(["age"])
    compiled = xgr.GrammarCompiler(xgr.TokenizerInfo(["{", "}"])).compile_grammar(
        compact_json_grammar(target_json_schema(sub)))
    rng = random.Random(0)
    values = {"".join(rng.choice("0123456789") for _ in range(n)) for n in range(1, 13) for _ in range(30)}
    parts = ["7", "123456789", "1234567890", "0.5", "1.123456", "1.1234567", "-3.5"]
    values |= {f"{a}/{b}" for a in parts for b in parts + ["RA", "21%", "30.5%"] if not b.startswith("-")}
    values |= set(parts) | {"1,200", "12a5", "1.", ".5", "5/"}
    for value in sorted(values):
        answer = compact_json({"age": {"value": value, "unit": None, "evidence": "x"}})
        assert xgr.GrammarMatcher(compiled).accept_string(answer) is bool(re.match(NUMBER_PATTERN, value)), value
    assert re.match(NUMBER_PATTERN, "123456789.123456") and not re.match(NUMBER_PATTERN, "1234567890")


def test_another_days_p_f_ratio_as_written_never_scores_as_the_day3_one(schema):
    """PaO2 is written in whole mmHg: at FiO2 0.3 rounding moves the ratio by up to 1.7, enough to bring two days
    planned the minimum gap apart within the 1 % scoring tolerance when both are written as PaO2 on FiO2."""
    import random

    from survlm.notes.render.days import min_gap
    from survlm.notes.render.writing import MentionWriter, pao2_for
    from survlm.units import values_match

    f = schema["pao2_fio2"]
    fio2s = [0.21, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 1.0]

    def as_written(ratio: int) -> set[float]:
        return {ratio} | {pao2 / fio2 for fio2 in fio2s if (pao2 := pao2_for(ratio, fio2)) is not None}

    for gold in range(int(f.range[0]), int(f.range[1]) + 1):     # every whole ratio, the nearest other-day values
        gap = min_gap(f, gold)
        nearest = [gold - int(gap) - 1, gold + int(gap) + 1]
        for day3 in as_written(gold):
            for other in (c for x in nearest for c in as_written(x)):
                assert not values_match(other, day3), (gold, day3, other)
    # the writer of the original styles writes PaO2 on FiO2 only where pao2_for allows it
    writer = MentionWriter(schema, random.Random(0), terse=False, alt_unit_rate=0.0, derived_rate=1.0)
    written = [(x, writer.write(f.name, float(x))) for x in range(60, 600) for _ in range(3)]
    assert sum("/" in w.value for _, w in written) > 1500
    assert all(abs(w.canonical - x) <= 0.5 for x, w in written)
