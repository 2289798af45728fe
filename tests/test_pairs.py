"""Preference pairs from constructed model answers on real rendered notes: tags, synthetic traps, validity."""
import json

import pytest

from survlm.artifacts import chat_prompt, prepared_record, target_of
from survlm.extraction import compact_json
from survlm.metrics import mentions_by_field
from survlm.notes.render import render_patient
from survlm.pairs import SYNTHETIC_TYPES, answer_errors, build_pairs, field_completion, pair_is_valid, summarize

ALL_RATES = {t: 1.0 for t in SYNTHETIC_TYPES}
SYSTEM = "Extract."


def _record(schema, row, pid, style="flowsheet"):
    note = render_patient(row, schema, style, seed=1, pid=pid, n_days=5, alt_unit_rate=0.5)
    record = prepared_record(id=f"p{pid}", split="pairs", style=style, text=note.text, labels=note.labels,
                             target=compact_json(note.target), time=float(row["time"]), event=int(row["event"]),
                             n_tokens=len(note.text) // 4)
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
            has["last"] |= g is not None and day[-1].day != f.day
            has["null"] |= g is None
            has["unit"] |= g is not None and any(x.day == f.day and x.unit for x in day)
        if all(has.values()):
            found.append((rec, text, meta))
        if len(found) == 3:
            break
    assert len(found) == 3
    return found


def _with_field(rec, name, item):
    answer = json.loads(target_of(rec))
    answer[name] = item
    return compact_json(answer)


def test_model_answers_are_tagged(schema, cases):
    rec, text, meta = cases[0]
    gold_text = target_of(rec)
    assert answer_errors(schema, rec["labels"], gold_text, text, meta) == {}
    m = mentions_by_field(meta)
    name = next(f.name for f in schema if f.type == "number" and f.is_physiology and rec["labels"][f.name] is not None
                and [x for x in m[f.name] if x.kind == "day"][-1].day != f.day)
    last = [x for x in m[name] if x.kind == "day"][-1]
    ends = {(r[0], r[6]): r[7] for r in meta["mentions"]}
    wrong = _with_field(rec, name, {"value": last.value, "unit": last.unit, "evidence": text[last.start:ends[(name, last.start)]]})
    omitted_name = next(f.name for f in schema if f.is_physiology and rec["labels"][f.name] is not None and f.name != name)
    completions = [gold_text, wrong, wrong, "{not json", _with_field(rec, omitted_name, None)]
    pairs, counters = build_pairs(schema, rec, SYSTEM, meta, completions, rates={}, seed=0)
    assert counters == {"completions": 5, "fully_correct": 1}
    model = [p for p in pairs if p["source"] == "model"]
    assert len(model) == 3                                # the duplicate wrong answer is used once
    assert "last_value" in model[0]["tags"] and model[0]["fields"] == [name]
    assert model[1]["tags"] == ["invalid_json"]
    assert model[2]["tags"] == ["omitted"] and model[2]["fields"] == [omitted_name]
    assert all(p["chosen"][0]["content"] == gold_text for p in pairs)
    assert all(p["prompt"] == chat_prompt(SYSTEM, rec) for p in pairs)   # DPO's prompt, from the plain record


def test_synthetic_traps_each_teach_one_error(schema, cases):
    kinds = set()
    for rec, text, meta in cases:
        pairs, _ = build_pairs(schema, rec, SYSTEM, meta, [], rates=ALL_RATES, seed=3)
        for p in pairs:
            assert p["source"] == "synthetic" and len(p["fields"]) == 1
            errors = answer_errors(schema, rec["labels"], p["rejected"][0]["content"], text, meta)
            assert list(errors) == p["fields"]              # exactly one field wrong
            assert pair_is_valid(schema, p, rec["labels"], text)
            kinds.update(p["tags"])
    assert {"last_value", "first_value", "fabricated", "unit_wrong"} <= kinds


def test_no_synthetic_for_errors_the_model_made_and_rates_zero(schema, cases):
    rec, text, meta = cases[1]
    assert build_pairs(schema, rec, SYSTEM, meta, [], rates={}, seed=0)[0] == []
    synthetic, _ = build_pairs(schema, rec, SYSTEM, meta, [], rates={"fabricated": 1.0}, seed=0)
    assert [p["tags"][0] for p in synthetic] == ["fabricated"]
    made = synthetic[0]["rejected"][0]["content"]
    pairs, _ = build_pairs(schema, rec, SYSTEM, meta, [made], rates={"fabricated": 1.0}, seed=0)
    assert [p["source"] for p in pairs] == ["model"]       # the model made it: no synthetic copy


def test_never_rejected_equal_to_chosen(schema, cases):
    rec, text, meta = cases[2]
    gold_text = target_of(rec)
    pairs, _ = build_pairs(schema, rec, SYSTEM, meta, [gold_text] * 3, rates=ALL_RATES, seed=1)
    assert all(p["rejected"][0]["content"] != gold_text for p in pairs)
    fake = {"chosen": [{"content": gold_text}], "rejected": [{"content": gold_text}]}
    assert not pair_is_valid(schema, fake, rec["labels"], text)
    s = summarize(pairs)
    assert s["pairs"] == len(pairs) and s["synthetic"] == len(pairs) and s["model_made_share"] == 0.0


def test_answer_tokens_are_classed_by_field_and_null():
    from survlm.extraction import answer_members
    from survlm.pairs import aggregate_logp_changes, char_classes, class_sums, differing_fields, token_classes

    age = {"value": "70", "unit": None, "evidence": "70 y"}
    chosen = compact_json({"age": age, "ph": None, "bun_mg_dl": {"value": "20", "unit": None, "evidence": "BUN 20"}})
    rejected = compact_json({"age": age, "ph": {"value": "7.3", "unit": None, "evidence": "pH 7.3"},
                             "bun_mg_dl": {"value": "20", "unit": None, "evidence": "BUN 20"}})
    spans = answer_members(chosen)
    assert {k: chosen[s:e] for k, (s, e, _) in spans.items()} == {
        "age": compact_json(age), "ph": "null", "bun_mg_dl": '{"value":"20","unit":null,"evidence":"BUN 20"}'}
    assert list(answer_members('{"age":null,"ph":{"va')) == ["age"] and answer_members("oops") == {}
    assert list(answer_members('```json\n{"age":null}```')) == ["age"]   # the first object, after chatter
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


def test_single_field_pairs_differ_in_exactly_one_field(schema, cases):
    from survlm.pairs import differing_fields, pair_direction

    rec, text, meta = cases[0]
    gold_text = target_of(rec)
    m = mentions_by_field(meta)
    name = next(f.name for f in schema if f.type == "number" and f.is_physiology and rec["labels"][f.name] is not None
                and [x for x in m[f.name] if x.kind == "day"][-1].day != f.day)
    last = [x for x in m[name] if x.kind == "day"][-1]
    ends = {(r[0], r[6]): r[7] for r in meta["mentions"]}
    omitted = next(f.name for f in schema if f.is_physiology and rec["labels"][f.name] is not None and f.name != name)
    answer = json.loads(_with_field(rec, name, {"value": last.value, "unit": last.unit,
                                                "evidence": text[last.start:ends[(name, last.start)]]}))
    answer[omitted] = None
    two_wrong = compact_json(answer)
    assert set(answer_errors(schema, rec["labels"], two_wrong, text, meta)) == {name, omitted}
    cut_off = two_wrong[:two_wrong.index(f'"{omitted}"')]   # stops before the omitted field: only `name` is usable
    pairs, _ = build_pairs(schema, rec, SYSTEM, meta, [two_wrong, two_wrong, cut_off], rates={}, seed=0,
                           single_field=True)
    assert sorted(p["fields"][0] for p in pairs) == sorted([name, omitted])    # k wrong fields -> k pairs, no copy
    for p in pairs:
        rejected = p["rejected"][0]["content"]
        assert rejected != gold_text and pair_is_valid(schema, p, rec["labels"], text)
        assert list(answer_errors(schema, rec["labels"], rejected, text, meta)) == p["fields"]
        assert differing_fields(gold_text, rejected) == set(p["fields"])
    by_field = {p["fields"][0]: p for p in pairs}
    assert by_field[omitted]["direction"] == "value_to_null" and by_field[omitted]["type"] == "omitted"
    assert by_field[name]["direction"] == "value_to_value" and by_field[name]["type"] == "last_value"
    assert pair_direction(gold_text, two_wrong) == "value_to_null"
    capped, _ = build_pairs(schema, rec, SYSTEM, meta, [two_wrong], rates={}, seed=0, max_model_rejections=1,
                            single_field=True)
    assert len(capped) == 1


def _fake(i, direction, type_, source="model"):
    return {"id": f"n{i}", "source": source, "direction": direction, "type": type_, "tags": [type_]}


def test_balance_caps_types_then_directions():
    from survlm.pairs import balance_pairs

    pairs = ([_fake(i, "value_to_null", "omitted", "synthetic" if i < 4 else "model") for i in range(10)]
             + [_fake(10 + i, "null_to_value", "fabricated") for i in range(3)]
             + [_fake(20 + i, "value_to_value", "last_value") for i in range(4)] + [_fake(30, "value_to_value", "unit_wrong")])
    kept, report = balance_pairs(pairs, max_type_ratio=2.0, max_direction_ratio=1.0, seed=0)
    assert report["before"]["by_type"] == {"fabricated": 3, "last_value": 4, "omitted": 10, "unit_wrong": 1}
    # types: median count 3 -> at most 6 a type; directions: value_to_null at most 1.0 x 3 null_to_value
    assert report["after"]["by_direction"] == {"null_to_value": 3, "value_to_null": 3, "value_to_value": 5}
    assert report["dropped"] == 7 and len(kept) == 11
    assert all(p["source"] == "model" for p in kept if p["type"] == "omitted")   # synthetic pairs go first
    assert [p["id"] for p in kept] == [p["id"] for p in pairs if p in kept]       # order kept
    assert balance_pairs(pairs, None, None, 0)[0] == pairs


@pytest.mark.parametrize("seed", range(5))
def test_balance_holds_on_random_pools(seed):
    import random

    from survlm.pairs import DIRECTIONS, balance_pairs

    rng = random.Random(seed)
    types = ["omitted", "fabricated", "last_value", "wrong_value", "unit_wrong"]
    pairs = [_fake(i, rng.choice(DIRECTIONS[:3]), rng.choices(types, weights=[8, 1, 3, 2, 1])[0],
                   rng.choice(["model", "synthetic"])) for i in range(rng.randint(20, 200))]
    kept, report = balance_pairs(pairs, max_type_ratio=1.5, max_direction_ratio=1.2, seed=seed)
    by_dir = report["after"]["by_direction"]
    v2n, n2v = by_dir.get("value_to_null", 0), by_dir.get("null_to_value", 0)
    assert max(v2n, n2v) <= -(-1.2 * max(min(v2n, n2v), 1) // 1)
    counts = sorted(report["before"]["by_type"].values())
    assert max(report["after"]["by_type"].values()) <= -(-1.5 * counts[(len(counts) - 1) // 2] // 1)


def test_field_completion_is_the_one_contrasted_value(cases):
    rec, _, _ = cases[0]
    chosen = target_of(rec)
    gold = json.loads(chosen)
    names = [k for k, v in gold.items() if v is not None]
    first, later = names[0], names[-1]
    wrong = {"value": 1.5, "unit": None, "evidence": "x 1.5"}
    rejected = _with_field(rec, later, wrong)
    name, (c0, c1), (r0, r1) = field_completion(chosen, rejected)
    assert name == later and chosen[:c0] == rejected[:r0] and chosen[c0 - len(later) - 3:c0] == f'"{later}":'
    assert json.loads(chosen[c0:c1]) == gold[later] and json.loads(rejected[r0:r1]) == wrong
    assert field_completion(chosen, chosen) is None                          # nothing contrasted
    two = json.loads(rejected)
    two[first] = wrong
    assert field_completion(chosen, compact_json(two)) is None               # two fields differ
