"""Preference pairs aimed at the known failure modes. Pure Python.

Chosen is always the gold answer (the SFT target). Rejected answers come from two places:
- the model: every distinct sampled or greedy answer with at least one wrong field, tagged with the
  error types of its wrong fields (survlm.metrics.field_errors);
- synthetic: the gold answer with exactly one field replaced by a trap taken from the note itself
  (render metadata gives each mention's day, value, unit and offsets): the last or first mention instead
  of hospital day 3, another day's value for a field that is null on day 3, the day-3 number read with
  another unit. A synthetic rejection is kept only if scoring it yields the intended error tag, so the
  pair teaches exactly that error. Synthetic types are added only where the model did not already make
  that error on that note, at the rates given in params.
No pair has rejected == chosen, as text or as parsed values.

`single_field`: a model answer with k wrong fields gives k pairs instead of one, each rejected answer being the
gold answer with one field replaced by the model's own (wrong) value, so chosen and rejected differ in exactly one
field and the shared fields carry no gradient. `balance_pairs` then caps error types against each other and the
two null directions (value -> null, null -> value) against each other.
"""
from __future__ import annotations

import json
import math
import random
from typing import Any

from .artifacts import chat_prompt, note_of, target_of
from .extraction import answer_members, compact_json, parse_answer
from .metrics import FieldMention, field_errors, is_correct, mentions_by_field
from .schema import Schema
from .units import UnitError, resolve_unit

SYNTHETIC_TYPES = ("last_value", "first_value", "fabricated", "unit_wrong")


def answer_errors(schema: Schema, gold: dict, text: str, note: str, meta: dict | None) -> dict[str, list[str]]:
    """Field -> error tags for one answer ({} when every field is correct); unlabelled fields (not in gold)
    are not judged."""
    results = parse_answer(text, schema, note)
    mentions = mentions_by_field(meta)
    out = {}
    for f in schema:
        if f.name not in gold:
            continue
        tags = field_errors(f, gold.get(f.name), results[f.name], mentions.get(f.name, []))
        if tags:
            out[f.name] = tags
    return out


def _item(m: FieldMention, note: str, end: int) -> dict:
    return {"value": m.value, "unit": m.unit, "evidence": note[m.start:end]}


def _mention_ends(meta: dict) -> dict[tuple[str, int], int]:
    cols = meta["mention_columns"]
    ends = {}
    for row in meta["mentions"]:
        m = dict(zip(cols, row))
        ends[(m["field"], m["start"])] = m["end"]
    return ends


def synthetic_candidates(schema: Schema, gold: dict, target: dict, note: str, meta: dict, kind: str,
                         rng: random.Random) -> list[tuple[str, dict]]:
    """(field, replacement item) options for one synthetic error type, in schema order."""
    mentions = mentions_by_field(meta)
    ends = _mention_ends(meta)
    options = []
    for f in schema:
        if f.type != "number" or not f.is_physiology:
            continue
        day = [m for m in mentions.get(f.name, []) if m.kind == "day"]
        if not day:
            continue
        g = gold.get(f.name)
        if kind in ("last_value", "first_value") and g is not None:
            m = day[-1] if kind == "last_value" else day[0]
            if m.day != f.day:
                options.append((f.name, _item(m, note, ends[(f.name, m.start)])))
        elif kind == "fabricated" and g is None:
            m = rng.choice(day)
            options.append((f.name, _item(m, note, ends[(f.name, m.start)])))
        elif kind == "unit_wrong" and g is not None:
            m = next((m for m in day if m.day == f.day), None)
            if m is None or m.unit is None:
                continue
            try:
                written_key = resolve_unit(f, m.unit)
            except UnitError:
                continue
            others = [u for u in f.units if u != written_key]
            if others:
                item = _item(m, note, ends[(f.name, m.start)])
                item["unit"] = rng.choice(others)
                options.append((f.name, item))
    return options


def single_field_rejections(schema: Schema, gold: dict, target: dict, text: str, note: str, meta: dict | None
                            ) -> list[tuple[str, list[str], str]]:
    """(field, error tags, rejected text) for each wrong field of a model answer: the gold answer with that one
    field as the model wrote it. Kept only where scoring gives an error on that field alone; a field the answer
    never got to (cut off) gives none."""
    spans = answer_members(text)
    out = []
    for name in answer_errors(schema, gold, text, note, meta):
        if name not in spans:
            continue
        answer = dict(target)
        answer[name] = spans[name][2]
        rejected = compact_json(answer)
        errors = answer_errors(schema, gold, rejected, note, meta)
        if set(errors) == {name}:
            out.append((name, sorted(errors[name]), rejected))
    return out


def _pair(record: dict, system: str, source: str, tags: list[str], fields: list[str], chosen: str, rejected: str
          ) -> dict:
    return {"id": record["id"], "source": source, "tags": tags, "fields": fields,
            "direction": pair_direction(chosen, rejected), "type": primary_type(tags),
            "prompt": chat_prompt(system, record), "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def build_pairs(schema: Schema, record: dict, system: str, meta: dict | None, completions: list[str],
                rates: dict[str, float], seed: int, max_model_rejections: int = 4, single_field: bool = False
                ) -> tuple[list[dict], dict]:
    """Pairs for one prepared record (with a target) from the model's completions plus synthetic traps, each
    prompted with `system` and the note. Returns (pairs, counters). `max_model_rejections` caps the model-made
    pairs of the note (whole answers, or one-field mistakes)."""
    gold, note = record["labels"], note_of(record)
    chosen = target_of(record)
    target = json.loads(chosen)
    rng = random.Random(f"{seed}:{record['id']}")
    pairs, seen = [], {chosen}
    made_by_model: set[str] = set()
    counters = {"completions": len(completions), "fully_correct": 0}
    for text in completions:
        errors = answer_errors(schema, gold, text, note, meta)
        if not errors:
            counters["fully_correct"] += 1
            continue
        options = (single_field_rejections(schema, gold, target, text, note, meta) if single_field else
                   [(sorted(errors), sorted({t for ts in errors.values() for t in ts}), text)])
        for fields, tags, rejected in options:
            if rejected in seen or len(pairs) >= max_model_rejections:
                continue
            seen.add(rejected)
            made_by_model.update(tags)
            pairs.append(_pair(record, system, "model", tags, [fields] if isinstance(fields, str) else fields,
                               chosen, rejected))
    if meta:
        for kind in SYNTHETIC_TYPES:
            if kind in made_by_model or rng.random() >= float(rates.get(kind, 0.0)):
                continue
            options = synthetic_candidates(schema, gold, target, note, meta, kind, rng)
            rng.shuffle(options)
            for name, item in options:
                answer = dict(target)
                answer[name] = item
                text = compact_json(answer)
                if text in seen:
                    continue
                errors = answer_errors(schema, gold, text, note, meta)
                if set(errors) != {name} or kind not in errors[name]:
                    continue  # the trap must produce exactly the intended error, on that field only
                seen.add(text)
                pairs.append(_pair(record, system, "synthetic", sorted(errors[name]), [name], chosen, text))
                break
    return pairs, counters


def pair_is_valid(schema: Schema, pair: dict, gold: dict, note: str) -> bool:
    """rejected != chosen as text, and the rejected answer is wrong on at least one field."""
    chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
    if chosen == rejected:
        return False
    results = parse_answer(rejected, schema, note)
    return not all(is_correct(f, gold[f.name], results[f.name]) for f in schema if f.name in gold)


def fill_untrained(pair: dict, names: list[str], source: str) -> dict | None:
    """A pair whose chosen answer has placeholders (a user's unlabelled or unlocated fields): those fields are
    copied from `source`, a model answer, into chosen (and into a synthetic rejected, the chosen answer with
    one field changed), so the pair differs only where the label is known and never teaches a placeholder.
    None when `source` is no JSON object with those fields."""
    if not names:
        return pair
    obj = _json_object(source)
    if obj is None or not all(n in obj for n in names):
        return None
    out = dict(pair)
    for side in ("chosen", "rejected") if pair["source"] == "synthetic" else ("chosen",):
        answer = _json_object(pair[side][0]["content"])
        if answer is None:
            return None
        answer.update({n: obj[n] for n in names})
        out[side] = [{"role": "assistant", "content": compact_json(answer)}]
    return None if out["chosen"][0]["content"] == out["rejected"][0]["content"] else out


def _json_object(text: str) -> dict | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


# Most specific first: a fabricated value that is another day's reading counts as that day's error.
TYPE_PRIORITY = ("last_value", "first_value", "wrong_day", "unit_wrong", "fabricated", "omitted", "wrong_category",
                 "wrong_value", "unparsed", "invalid_json")
DIRECTIONS = ("value_to_null", "null_to_value", "value_to_value", "mixed")


def primary_type(tags: list[str]) -> str:
    return next((t for t in TYPE_PRIORITY if t in tags), tags[0] if tags else "none")


def pair_direction(chosen: str, rejected: str) -> str:
    """value_to_null: where they differ, the rejected answer writes null for a value the gold has (such pairs
    push `null` down); null_to_value: it writes a value where the gold is null (they push `null` up); mixed:
    both; value_to_value: neither (a wrong value, unit, category, or an answer cut off)."""
    a, b = answer_members(chosen), answer_members(rejected)
    drop = add = False
    for k in differing_fields(chosen, rejected):
        if k in a and k in b:
            drop |= a[k][2] is not None and b[k][2] is None
            add |= a[k][2] is None and b[k][2] is not None
    return "mixed" if drop and add else "value_to_null" if drop else "null_to_value" if add else "value_to_value"


def _counts(pairs: list[dict], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in pairs:
        out[p[key]] = out.get(p[key], 0) + 1
    return dict(sorted(out.items()))


def balance_pairs(pairs: list[dict], max_type_ratio: float | None, max_direction_ratio: float | None, seed: int
                  ) -> tuple[list[dict], dict]:
    """Cap each error type at `max_type_ratio` x the median type's count, then the larger of value_to_null and
    null_to_value at `max_direction_ratio` x the smaller (at least 1). Synthetic pairs go before the model's
    own mistakes; among those, a seeded random choice. Returns (kept pairs in their order, counts)."""
    rng = random.Random(seed)
    drop_order = sorted(range(len(pairs)), key=lambda i: (pairs[i]["source"] == "model", rng.random()))
    kept = set(range(len(pairs)))

    def cap(key: str, value: str, limit: int) -> None:
        excess = sum(pairs[i][key] == value for i in kept) - limit
        for i in drop_order:
            if excess <= 0:
                break
            if i in kept and pairs[i][key] == value:
                kept.discard(i)
                excess -= 1

    if max_type_ratio and pairs:
        by_type = sorted(_counts(pairs, "type").values())
        median = by_type[(len(by_type) - 1) // 2]
        for t in _counts(pairs, "type"):
            cap("type", t, math.ceil(float(max_type_ratio) * median))
    if max_direction_ratio:
        n = {d: sum(pairs[i]["direction"] == d for i in kept) for d in ("value_to_null", "null_to_value")}
        big, small = sorted(n, key=lambda d: -n[d])
        cap("direction", big, math.ceil(float(max_direction_ratio) * max(n[small], 1)))
    out = [p for i, p in enumerate(pairs) if i in kept]
    return out, {"before": {"by_direction": _counts(pairs, "direction"), "by_type": _counts(pairs, "type")},
                 "after": {"by_direction": _counts(out, "direction"), "by_type": _counts(out, "type")},
                 "dropped": len(pairs) - len(out)}


def summarize(pairs: list[dict]) -> dict[str, Any]:
    by_tag: dict[str, int] = {}
    for p in pairs:
        for t in p["tags"]:
            by_tag[t] = by_tag.get(t, 0) + 1
    n = len(pairs)
    model = sum(p["source"] == "model" for p in pairs)
    return {"pairs": n, "by_error_type": dict(sorted(by_tag.items())), "by_primary_type": _counts(pairs, "type"),
            "by_direction": _counts(pairs, "direction"), "model_made": model,
            "synthetic": n - model, "model_made_share": round(model / n, 4) if n else None}


# --- Where DPO moves probability: answer tokens by class -------------------------------------------------------

TOKEN_CLASSES = ("differing_field", "shared_fields", "null_values", "other_values", "structure", "answer")


def differing_fields(chosen: str, rejected: str) -> set[str]:
    """Fields whose parsed value differs between the two answers (a field one answer lacks differs)."""
    a, b = answer_members(chosen), answer_members(rejected)
    return {k for k in set(a) | set(b) if k not in a or k not in b or a[k][2] != b[k][2]}


def field_completion(chosen: str, rejected: str) -> tuple[str, tuple[int, int], tuple[int, int]] | None:
    """For two answers that differ in exactly one field and agree before it: (that field's name, its value's
    character span in chosen, in rejected). None for any other pair (several fields differ, a field is
    missing, or the answers part before that field)."""
    differing = differing_fields(chosen, rejected)
    if len(differing) != 1:
        return None
    (name,) = differing
    a, b = answer_members(chosen), answer_members(rejected)
    if name not in a or name not in b or chosen[:a[name][0]] != rejected[:b[name][0]]:
        return None
    return name, a[name][:2], b[name][:2]


def char_classes(text: str, differing: set[str]) -> list[tuple[int, int, str, str]]:
    """(start, end, "differing_field" | "shared_fields", "null_values" | "other_values") per field value."""
    return [(s, e, "differing_field" if k in differing else "shared_fields",
             "null_values" if v is None else "other_values") for k, (s, e, v) in answer_members(text).items()]


def token_classes(offsets: list[tuple[int, int]], spans: list[tuple[int, int, str, str]]) -> list[tuple[str, ...]]:
    """Classes of each answer token from its (start, end) characters: the field value it overlaps most, else
    structure (keys, braces, separators, end of turn)."""
    out = []
    for s, e in offsets:
        best, overlap = None, 0
        for vs, ve, where, kind in spans:
            o = min(e, ve) - max(s, vs)
            if o > overlap:
                best, overlap = (where, kind), o
        out.append(best or ("structure",))
    return out


def aggregate_logp_changes(rows: list[dict]) -> dict[str, dict]:
    """rows: one per eval pair, {"tags": [...], "chosen"/"rejected": {class: [tokens, sft nats, dpo nats]}}.
    -> per pair type (each error tag, and "all"), per answer and class: the mean change of the summed
    log-prob per pair (DPO - SFT, nats), the change per token, and the SFT log-prob per token."""
    groups: dict[str, list[dict]] = {"all": rows}
    for r in rows:
        for t in r["tags"]:
            groups.setdefault(t, []).append(r)
    out = {}
    for tag in sorted(groups, key=lambda t: (t != "all", t)):
        members = groups[tag]
        block: dict[str, Any] = {"pairs": len(members)}
        for side in ("chosen", "rejected"):
            cells = {}
            for cls in TOKEN_CLASSES:
                tokens = sum(m[side][cls][0] for m in members)
                sft = sum(m[side][cls][1] for m in members)
                dpo = sum(m[side][cls][2] for m in members)
                cells[cls] = {"tokens_per_pair": round(tokens / len(members), 2),
                              "change_per_pair": round((dpo - sft) / len(members), 4),
                              "change_per_token": round((dpo - sft) / tokens, 5) if tokens else None,
                              "sft_per_token": round(sft / tokens, 5) if tokens else None}
            block[side] = cells
        out[tag] = block
    return out


def class_sums(classes: list[tuple[str, ...]], sft: list[float], dpo: list[float]) -> dict[str, list[float]]:
    """Token classes and per-token log-probs of one answer under SFT and DPO -> class: [tokens, sft, dpo]."""
    sums = {c: [0, 0.0, 0.0] for c in TOKEN_CLASSES}
    for cls, a, b in zip(classes, sft, dpo):
        for c in cls + ("answer",):
            sums[c][0] += 1
            sums[c][1] += a
            sums[c][2] += b
    return sums
