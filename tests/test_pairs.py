"""Preference pairs from constructed model answers on real rendered notes: tags, synthetic traps, validity."""
import json

import pytest

from survlm.extraction import compact_json
from survlm.metrics import GOLD_DAY, mentions_by_field
from survlm.notes.render import render_patient
from survlm.pairs import SYNTHETIC_TYPES, answer_errors, build_pairs, pair_is_valid, summarize

ALL_RATES = {t: 1.0 for t in SYNTHETIC_TYPES}


def _record(schema, row, pid, style="flowsheet"):
    note = render_patient(row, schema, style, seed=1, pid=pid, n_days=5, alt_unit_rate=0.5)
    record = {"id": f"p{pid}", "labels": note.labels, "messages": [
        {"role": "system", "content": "Extract."}, {"role": "user", "content": note.text},
        {"role": "assistant", "content": compact_json(note.target)}]}
    return record, note.text, note.metadata()


@pytest.fixture(scope="module")
def cases(schema, support2_rows):
    """Rendered notes that offer every trap: a day-3 value with a different last mention, a null field
    charted on other days, a day-3 mention written with a unit."""
    found = []
    for pid, row in enumerate(support2_rows[:400]):
        rec, text, meta = _record(schema, row, pid)
        m = mentions_by_field(meta)
        has = {"last": False, "null": False, "unit": False}
        for f in schema:
            day = [x for x in m.get(f.name, []) if x.kind == "day"]
            g = rec["labels"].get(f.name)
            if f.type != "number" or not f.is_physiology or not day:
                continue
            has["last"] |= g is not None and day[-1].day != GOLD_DAY
            has["null"] |= g is None
            has["unit"] |= g is not None and any(x.day == GOLD_DAY and x.unit for x in day)
        if all(has.values()):
            found.append((rec, text, meta))
        if len(found) == 3:
            break
    assert len(found) == 3
    return found


def _with_field(rec, name, item):
    answer = json.loads(rec["messages"][2]["content"])
    answer[name] = item
    return compact_json(answer)


def test_model_answers_are_tagged(schema, cases):
    rec, text, meta = cases[0]
    gold_text = rec["messages"][2]["content"]
    assert answer_errors(schema, rec["labels"], gold_text, text, meta) == {}
    m = mentions_by_field(meta)
    name = next(f.name for f in schema if f.type == "number" and f.is_physiology and rec["labels"][f.name] is not None
                and [x for x in m[f.name] if x.kind == "day"][-1].day != GOLD_DAY)
    last = [x for x in m[name] if x.kind == "day"][-1]
    ends = {(r[0], r[6]): r[7] for r in meta["mentions"]}
    wrong = _with_field(rec, name, {"value": last.value, "unit": last.unit, "evidence": text[last.start:ends[(name, last.start)]]})
    null_name = next(f.name for f in schema if f.type == "number" and f.is_physiology and rec["labels"][f.name] is None)
    omitted_name = next(f.name for f in schema if f.is_physiology and rec["labels"][f.name] is not None and f.name != name)
    completions = [gold_text, wrong, wrong, "{not json", _with_field(rec, omitted_name, None)]
    pairs, counters = build_pairs(schema, rec, text, meta, completions, rates={}, seed=0)
    assert counters == {"completions": 5, "fully_correct": 1}
    model = [p for p in pairs if p["source"] == "model"]
    assert len(model) == 3                                # the duplicate wrong answer is used once
    assert "last_value" in model[0]["tags"] and model[0]["fields"] == [name]
    assert model[1]["tags"] == ["invalid_json"]
    assert model[2]["tags"] == ["omitted"] and model[2]["fields"] == [omitted_name]
    assert all(p["chosen"][0]["content"] == gold_text for p in pairs)
    assert null_name  # the case offers a fabrication trap too (used below)


def test_synthetic_traps_each_teach_one_error(schema, cases):
    kinds = set()
    for rec, text, meta in cases:
        pairs, _ = build_pairs(schema, rec, text, meta, [], rates=ALL_RATES, seed=3)
        for p in pairs:
            assert p["source"] == "synthetic" and len(p["fields"]) == 1
            errors = answer_errors(schema, rec["labels"], p["rejected"][0]["content"], text, meta)
            assert list(errors) == p["fields"]              # exactly one field wrong
            assert pair_is_valid(schema, p, rec["labels"], text)
            kinds.update(p["tags"])
    assert {"last_value", "first_value", "fabricated", "unit_wrong"} <= kinds


def test_no_synthetic_for_errors_the_model_made_and_rates_zero(schema, cases):
    rec, text, meta = cases[1]
    assert build_pairs(schema, rec, text, meta, [], rates={}, seed=0)[0] == []
    synthetic, _ = build_pairs(schema, rec, text, meta, [], rates={"fabricated": 1.0}, seed=0)
    assert [p["tags"][0] for p in synthetic] == ["fabricated"]
    made = synthetic[0]["rejected"][0]["content"]
    pairs, _ = build_pairs(schema, rec, text, meta, [made], rates={"fabricated": 1.0}, seed=0)
    assert [p["source"] for p in pairs] == ["model"]       # the model made it: no synthetic copy


def test_never_rejected_equal_to_chosen(schema, cases):
    rec, text, meta = cases[2]
    gold_text = rec["messages"][2]["content"]
    pairs, _ = build_pairs(schema, rec, text, meta, [gold_text] * 3, rates=ALL_RATES, seed=1)
    assert all(p["rejected"][0]["content"] != gold_text for p in pairs)
    fake = {"chosen": [{"content": gold_text}], "rejected": [{"content": gold_text}]}
    assert not pair_is_valid(schema, fake, rec["labels"], text)
    s = summarize(pairs)
    assert s["pairs"] == len(pairs) and s["synthetic"] == len(pairs) and s["model_made_share"] == 0.0


def test_answer_tokens_are_classed_by_field_and_null():
    from survlm.pairs import (aggregate_logp_changes, char_classes, class_sums, differing_fields, token_classes,
                              value_spans)

    age = {"value": "70", "unit": None, "evidence": "70 y"}
    chosen = compact_json({"age": age, "ph": None, "bun_mg_dl": {"value": "20", "unit": None, "evidence": "BUN 20"}})
    rejected = compact_json({"age": age, "ph": {"value": "7.3", "unit": None, "evidence": "pH 7.3"},
                             "bun_mg_dl": {"value": "20", "unit": None, "evidence": "BUN 20"}})
    spans = value_spans(chosen)
    assert {k: chosen[s:e] for k, (s, e, _) in spans.items()} == {
        "age": compact_json(age), "ph": "null", "bun_mg_dl": '{"value":"20","unit":null,"evidence":"BUN 20"}'}
    assert list(value_spans('{"age":null,"ph":{"va')) == ["age"] and value_spans("oops") == {}
    assert differing_fields(chosen, rejected) == {"ph"}
    assert differing_fields(chosen, chosen[:20]) == {"age", "ph", "bun_mg_dl"}   # cut off: nothing shared
    ph = chosen.index('"ph":null') + 5
    offsets = [(0, 2), (ph, ph + 4), (ph + 4, ph + 5), (len(chosen) - 2, len(chosen) + 10)]
    classes = token_classes(offsets, char_classes(chosen, {"ph"}))
    assert classes[0] == ("structure",) and classes[1] == ("differing_field", "null_values")
    assert classes[2] == ("structure",) and classes[3] == ("shared_fields", "other_values")

    rows = [{"tags": ["fabricated"], "chosen": class_sums(classes, [-1.0] * 4, [-0.5, -3.0, -1.0, -1.0]),
             "rejected": class_sums(classes, [-2.0] * 4, [-2.0] * 4)},
            {"tags": ["last_value"], "chosen": class_sums(classes, [-1.0] * 4, [-1.0] * 4),
             "rejected": class_sums(classes, [-1.0] * 4, [-1.0] * 4)}]
    out = aggregate_logp_changes(rows)
    assert list(out) == ["all", "fabricated", "last_value"] and out["all"]["pairs"] == 2
    fab = out["fabricated"]["chosen"]
    assert fab["null_values"]["change_per_pair"] == -2.0 and fab["differing_field"]["tokens_per_pair"] == 1
    assert fab["structure"]["change_per_pair"] == 0.5 and fab["answer"]["change_per_pair"] == -1.5
    assert out["all"]["chosen"]["null_values"]["change_per_pair"] == -1.0
    assert out["last_value"]["rejected"]["answer"]["change_per_token"] == 0.0
