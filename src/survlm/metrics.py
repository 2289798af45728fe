"""Extraction scoring shared by checkpoint selection, preference pairs and evaluation. Pure Python.

A field is correct when: gold null -> answer null; number -> within max(1 % relative, rounding of the
field's decimals); category / bool / count -> equal. Error tags say *how* a wrong answer is wrong,
using the render metadata (every mention of the field with its day and canonical value).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

from .extraction import FieldResult, answer_is_valid_json
from .schema import Field, Schema
from .units import values_match

# the rates and counts of score() that headline a model: evaluate's summary and the report's tables
HEADLINE = ("field_accuracy", "fabrication_rate", "omission_rate", "last_value_rate", "first_value_rate",
            "json_valid_rate", "unit_errors", "grounding_failures")
ERROR_TAGS = ("invalid_json", "omitted", "fabricated", "last_value", "first_value", "wrong_day", "unit_wrong",
              "wrong_category", "wrong_value", "unparsed")


@dataclass(frozen=True)
class FieldMention:
    day: int | None
    kind: str
    value: str
    unit: str | None
    canonical: Any
    start: int


def mentions_by_field(meta: dict | None) -> dict[str, list[FieldMention]]:
    """Render metadata (prepare's render_meta.jsonl row) -> mentions per field, in note order."""
    out: dict[str, list[FieldMention]] = defaultdict(list)
    if not meta or "mentions" not in meta:
        return out
    cols = meta["mention_columns"]
    for row in meta["mentions"]:
        m = dict(zip(cols, row))
        out[m["field"]].append(FieldMention(m["day"], m["kind"], m["value"], m["unit"], m["canonical"], m["start"]))
    for ms in out.values():
        ms.sort(key=lambda m: m.start)
    return out


def tolerance(f: Field) -> float:
    return 0.5 * 10.0 ** -f.decimals


def is_correct(f: Field, gold: Any, r: FieldResult) -> bool:
    if gold is None:
        return r.status == "null"
    if r.status != "ok":
        return False
    if f.type == "number":
        return values_match(float(r.value), float(gold), tolerance(f))
    return r.value == gold


def _answered(r: FieldResult) -> Any:
    """The value the model committed to, even when a later check (range, grounding) rejected it."""
    return r.value if r.status == "ok" else r.candidate


def field_errors(f: Field, gold: Any, r: FieldResult, mentions: list[FieldMention] = ()) -> list[str]:
    """Why a field is wrong ([] when correct)."""
    if is_correct(f, gold, r):
        return []
    if r.status == "invalid_json":
        return ["invalid_json"]
    answer = _answered(r)
    if gold is not None and r.status in ("null", "missing_field"):
        return ["omitted"]
    if f.type != "number":
        if answer is None:
            return ["unparsed"]
        return ["wrong_category"] if f.type in ("category", "bool") else ["wrong_value"]
    if answer is None:
        return ["unparsed"] if gold is not None else ["fabricated"]
    tags = ["fabricated"] if gold is None else []
    tol = tolerance(f)
    day_mentions = [m for m in mentions if m.kind == "day"]
    if day_mentions:
        if values_match(answer, day_mentions[-1].canonical, tol) and (gold is None or not values_match(
                day_mentions[-1].canonical, gold, tol)):
            tags.append("last_value")
        elif values_match(answer, day_mentions[0].canonical, tol) and (gold is None or not values_match(
                day_mentions[0].canonical, gold, tol)):
            tags.append("first_value")
        elif any(values_match(answer, m.canonical, tol) for m in mentions if m.day != f.day):
            tags.append("wrong_day")
    written = r.written if isinstance(r.written, dict) else {}
    gold_mention = next((m for m in day_mentions if m.day == f.day), None)
    if gold_mention is not None and str(written.get("value", "")).strip() == gold_mention.value \
            and not values_match(answer, gold, tol):
        tags.append("unit_wrong")  # the right number read with the wrong unit (e.g. °F taken as °C)
    if gold is not None and not tags:
        tags.append("wrong_value")
    return tags


def rate(a: int, b: int) -> float | None:
    """a / b to 4 decimals; None when nothing was counted."""
    return round(a / b, 4) if b else None


def note_tally(schema: Schema, gold: dict, results: dict[str, FieldResult], meta: dict | None) -> Counter:
    """One note's counts behind score(): score() of several notes is tally_metrics() of their tallies' sum, so a
    bootstrap resample adds tallies instead of reading its notes again.

    A field missing from the note's gold labels is unlabelled: unknown, not null, so it is not counted."""
    tally = Counter(notes=1, json_valid=int(answer_is_valid_json(results)))
    mentions = mentions_by_field(meta)
    for f in schema:
        if f.name not in gold:
            continue
        r, g = results[f.name], gold[f.name]
        errs = field_errors(f, g, r, mentions.get(f.name, []))
        tally[("status", r.status)] += 1
        tally[("total", f.name)] += 1
        tally[("correct", f.name)] += not errs
        for tag in errs:
            tally[("tag", tag)] += 1
            tally[("field_tag", f.name, tag)] += 1
        if g is not None:
            tally["gold_present"] += 1
            tally["omitted"] += "omitted" in errs
            if f.type in ("number", "count") and r.status == "ok":
                tally[("abs_err", f.name)] += abs(float(r.value) - float(g))
                tally[("abs_err_n", f.name)] += 1
        if f.is_physiology:
            if g is None:
                tally["null_gold"] += 1
                tally["fabricated_null_gold"] += "fabricated" in errs
            day = [m for m in mentions.get(f.name, []) if m.kind == "day"]
            if day and (g is None or not values_match(day[-1].canonical, g, tolerance(f))):
                tally["last_trap"] += 1
                tally["last_taken"] += "last_value" in errs
            if day and (g is None or not values_match(day[0].canonical, g, tolerance(f))):
                tally["first_trap"] += 1
                tally["first_taken"] += "first_value" in errs
    return tally


def tally_metrics(schema: Schema, tally: dict) -> dict:
    """The metrics dict of summed note tallies (note_tally)."""
    def n(*key):
        return tally.get(key if len(key) > 1 else key[0], 0)

    statuses = {key[1]: v for key, v in tally.items() if isinstance(key, tuple) and key[0] == "status" and v}
    return {
        "notes": n("notes"),
        "field_accuracy": rate(sum(n("correct", f.name) for f in schema), sum(n("total", f.name) for f in schema)),
        "per_field": {f.name: rate(n("correct", f.name), n("total", f.name)) for f in schema},
        "fabrication_rate": rate(n("fabricated_null_gold"), n("null_gold")),
        "last_value_rate": rate(n("last_taken"), n("last_trap")),
        "first_value_rate": rate(n("first_taken"), n("first_trap")),
        "json_valid_rate": rate(n("json_valid"), n("notes")),
        "omission_rate": rate(n("omitted"), n("gold_present")),
        # mean absolute error in canonical units, over fields where gold and answer both have a value
        "mae": {f.name: round(n("abs_err", f.name) / n("abs_err_n", f.name), 4) if n("abs_err_n", f.name) else None
                for f in schema if f.type in ("number", "count")},
        "unit_errors": n("tag", "unit_wrong") + statuses.get("unknown_unit", 0),
        "grounding_failures": statuses.get("ungrounded", 0),
        "errors": {t: n("tag", t) for t in ERROR_TAGS},
        # which error a field makes (omission vs a wrong day vs a wrong value) decides the fix
        "per_field_errors": {f.name: {t: n("field_tag", f.name, t) for t in ERROR_TAGS if n("field_tag", f.name, t)}
                             for f in schema},
        "statuses": dict(sorted(statuses.items())),
    }


def summed(tallies: Iterable[Counter]) -> Counter:
    total = Counter()
    for tally in tallies:   # in note order: float sums (absolute errors) add up as a running sum over notes
        total.update(tally)
    return total


def score(schema: Schema, rows: Iterable[tuple[dict, dict[str, FieldResult], dict | None]]) -> dict:
    """rows: (gold labels, parsed results, render metadata or None) per note -> metrics dict."""
    return tally_metrics(schema, summed(note_tally(schema, *row) for row in rows))
