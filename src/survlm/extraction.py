"""The model's answer format: build it from gold transcriptions, and parse any output back.

`parse_answer` is total: whatever text a model produces, every schema field gets either a
canonical value (status `ok`), an explicit `null`, or a typed failure. Pure Python.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .schema import Field, Schema
from .units import UnitError, ValueFormatError, to_canonical

STATUSES = ("ok", "null", "invalid_json", "missing_field", "bad_value", "invalid_category",
            "unknown_unit", "out_of_range", "ungrounded", "other_day", "other_field")
FAILURES = tuple(s for s in STATUSES if s not in ("ok", "null"))


@dataclass
class FieldResult:
    status: str
    value: Any = None          # canonical value when status == "ok" (float, str, bool or int)
    candidate: Any = None      # the value code computed before a later check rejected it (the model's own flag,
                               # where the answer's list named the condition: Field.listed_in)
    written: Any = None        # the field's JSON as the model wrote it
    recovered: bool = False    # read from a malformed answer, field by field


def compact_json(obj: Any) -> str:
    """One canonical serialisation for targets (fewer tokens than pretty JSON, stable for hashing)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _grounded(span: Any, note_squashed: str | None) -> bool:
    if note_squashed is None:
        return True
    return isinstance(span, str) and bool(span.strip()) and _squash(span) in note_squashed


# What a list says when it lists nothing ("PMH: none"): an answer that copies it lists no item.
ABSENCE_PHRASES = frozenset({"none", "no chronic conditions", "unremarkable", "negative", "no significant history",
                             "n/a"})
# A negation that opens a list entry ("no chronic conditions"): what follows it in that entry is not listed.
_NEGATED_ENTRY = re.compile(r"(?i)\b(?:no|not|denies|denied|without|negative for|no history of|no known|free of)\s+$")
_ENTRY_START = re.compile(r"[,;:\n]")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_ROOM_AIR = re.compile(r"\bra\b|room air")


@lru_cache(maxsize=4)
def _note_numbers(note_squashed: str) -> frozenset[str]:
    return frozenset(_NUMBER.findall(note_squashed))


def _value_in_note(value: str, note_squashed: str | None) -> bool:
    """Every number the value states is a number the note writes (a P/F on room air: the note says so too).

    The model's evidence quote is not required to be verbatim: SFT adapters paraphrase it ("coma score 100" for
    "SCOMA 100") while reading the value right, and a verbatim rule refused far more right values than wrong
    ones (BENCHMARKS.md, "Answer checks"). A number the note never writes is still refused."""
    if note_squashed is None:
        return True
    numbers = _NUMBER.findall(value)
    if not numbers:
        return _squash(value) in note_squashed
    return (all(n in _note_numbers(note_squashed) for n in numbers)
            and ("ra" not in value.lower() or bool(_ROOM_AIR.search(note_squashed))))


def _parse_number_field(f: Field, item: dict, note_sq: str | None, note: str | None) -> FieldResult:
    value, unit = item.get("value"), item.get("unit")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = repr(value) if isinstance(value, float) else str(value)
    if not isinstance(value, str) or (unit is not None and not isinstance(unit, str)):
        return FieldResult("bad_value", written=item)
    try:
        canonical = round(to_canonical(f, value, unit), 4)
    except UnitError:
        return FieldResult("unknown_unit", written=item)
    except (ValueFormatError, ZeroDivisionError):
        return FieldResult("bad_value", written=item)
    if not f.in_range(canonical):
        return FieldResult("out_of_range", candidate=canonical, written=item)
    if not _value_in_note(value, note_sq):
        return FieldResult("ungrounded", candidate=canonical, written=item)
    if note is not None and f.day is not None:
        from .evidence import written_on_other_days_only   # evidence builds its targets with this module

        # the value another day's line gives (day 2 carried forward to a day 3 the note leaves empty, or the last
        # day's): the note's own day markers say it is not this day's
        if written_on_other_days_only(f, canonical, note):
            return FieldResult("other_day", candidate=canonical, written=item)
    return FieldResult("ok", value=canonical, written=item)


def _listed_items(entries: list[str], note: str | None) -> list[str]:
    """The items a list answer names: its entries without the phrases of absence ("none") and, given the note,
    without an entry the note writes only negated."""
    return [e for e in entries if _squash(e).strip(" .") not in ABSENCE_PHRASES and not _negated_in(e, note)]


def _negated_in(entry: str, note: str | None) -> bool:
    """Whether the note writes `entry` only after a negation that opens its own list entry ("PMH: no chronic
    conditions" for the entry "chronic conditions"); an entry the note does not write as it is is not judged."""
    if note is None:
        return False
    spots = [m.start() for m in re.finditer(r"\s+".join(map(re.escape, entry.split())), note, re.IGNORECASE)]
    for at in spots:
        before = note[max(0, at - 80):at]
        opened = [m.end() for m in _ENTRY_START.finditer(before)]
        if not _NEGATED_ENTRY.search(before[opened[-1] if opened else 0:]):
            return False
    return bool(spots)


def _parse_field(f: Field, item: Any, note_sq: str | None, note: str | None) -> FieldResult:
    """One field of an answer; the note (`note`, and `note_sq` its squashed text) enables the checks against it."""
    if item is None:
        return FieldResult("null")
    if not isinstance(item, dict) or "value" not in item:
        return FieldResult("bad_value", written=item)
    if f.type == "number":
        return _parse_number_field(f, item, note_sq, note)
    # a category or a yes/no is read as written: it states no number the note could confirm, and requiring its
    # quote verbatim refused right answers far more often than wrong ones (BENCHMARKS.md, "Answer checks")
    value = item.get("value")
    if f.type == "category":
        if not isinstance(value, str):
            return FieldResult("bad_value", written=item)
        match = next((c for c in f.categories if c.lower() == value.strip().lower()), None)
        if match is None:
            return FieldResult("invalid_category", written=item)
        return FieldResult("ok", value=match, written=item)
    if f.type == "bool":
        if not isinstance(value, bool):
            return FieldResult("bad_value", written=item)
        return FieldResult("ok", value=value, written=item)
    # count: the model lists, code counts
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        return FieldResult("bad_value", written=item)
    value = _listed_items(value, note)
    count = len(value)
    if not f.in_range(count):
        return FieldResult("out_of_range", candidate=count, written=item)
    if not all(_grounded(v, note_sq) for v in value):
        return FieldResult("ungrounded", candidate=count, written=item)
    return FieldResult("ok", value=count, written=item)


_DECODER = json.JSONDecoder()


def _load_json_object(text: str, keys: set[str]) -> dict | None:
    """The first JSON object in the text that has a schema key (tolerates fences and chatter)."""
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = _DECODER.raw_decode(text[start:])
        except ValueError:
            obj = None
        if isinstance(obj, dict) and keys & set(obj):
            return obj
        start = text.find("{", start + 1)
    return None


def _recover_fields(text: str, names: list[str]) -> dict[str, Any]:
    """Malformed JSON: each field's value read on its own after its first `"name":` key."""
    found = {}
    for name in names:
        m = re.search(r'"' + re.escape(name) + r'"\s*:\s*', text)
        if m is None:
            continue
        try:
            found[name], _ = _DECODER.raw_decode(text[m.end():])
        except ValueError:
            continue
    return found


def answer_members(text: str) -> dict[str, tuple[int, int, Any]]:
    """Each top-level member of the first JSON object in `text`: key -> (start, end, value) of its value's
    characters. Lenient: reading stops at the first member that is not JSON, so an answer cut off or malformed
    keeps the members before that point."""
    members: dict[str, tuple[int, int, Any]] = {}
    pos = text.find("{")
    if pos < 0:
        return members
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "}":
            return members
        try:
            key, pos = _DECODER.raw_decode(text, pos)
            while pos < len(text) and text[pos] in " \t\r\n:":
                pos += 1
            start = pos
            value, pos = _DECODER.raw_decode(text, pos)
        except ValueError:
            return members
        if not isinstance(key, str):
            return members
        members[key] = (start, pos, value)


def parse_answer(text: Any, schema: Schema, note: str | None = None) -> dict[str, FieldResult]:
    """Total parser: any model output -> one FieldResult per schema field.

    A well-formed answer is read as one object. A malformed one is read field by field (each result
    is then marked `recovered`, and the answer does not count as valid JSON); a field that cannot be
    read either way is `invalid_json`."""
    if not isinstance(text, str):
        return {f.name: FieldResult("invalid_json") for f in schema}
    obj = _load_json_object(text, set(schema.names))
    recovered = obj is None
    if recovered:
        obj = _recover_fields(text, schema.names)
    out = {}
    note_sq = None if note is None else _squash(note)
    for f in schema:
        if f.name not in obj:
            out[f.name] = FieldResult("invalid_json" if recovered else "missing_field")
            continue
        try:
            out[f.name] = _parse_field(f, obj[f.name], note_sq, note)
        except Exception:  # totality: a parser bug must not lose the other fields  # noqa: BLE001
            out[f.name] = FieldResult("bad_value", written=obj[f.name])
        out[f.name].recovered = recovered
    for f in schema:   # a schema cut to some fields (extract --fields) may lack the list: the flag is as written
        if f.listed_in in out and f.name in obj:
            out[f.name] = _listed_condition(f, out[f.name], out[f.listed_in], note)
    if note is not None:
        numbers = [f for f in schema if f.type == "number"]
        for f in numbers:
            out[f.name] = _other_fields_value(f, out[f.name], note, numbers)
    return out


def _other_fields_value(f: Field, result: FieldResult, note: str, numbers: list[Field]) -> FieldResult:
    """A number that the note writes only as other fields' values is refused (`other_field`): the model read the
    line next to the one it was asked for (a pulse of 94 for urine output). The schema's number fields
    (`numbers`) say which names own a value; the value stays as `candidate`."""
    from .evidence import written_for_other_fields_only   # evidence builds its targets with this module

    if result.status != "ok" or not isinstance(result.written, dict):
        return result
    if not written_for_other_fields_only(f, result.written.get("value"), note, numbers):
        return result
    return FieldResult("other_field", candidate=result.value, written=result.written, recovered=result.recovered)


def _listed_condition(f: Field, flag: FieldResult, listed: FieldResult, note: str | None) -> FieldResult:
    """A yes/no condition that the answer's own list names is true: the list is a transcription whose items the
    note confirms (a count answer is `ok` only then), while a model can learn to answer the flag from its
    commonest value or its commonest wording (never `dementia: true`, "DM2" not read as diabetes). The model's
    own flag stays as `candidate`."""
    from .evidence import names_condition   # evidence builds its targets with this module

    if flag.status not in ("ok", "null") or flag.value is True or listed.status != "ok":
        return flag
    entries = listed.written.get("value") if isinstance(listed.written, dict) else None
    if not any(names_condition(f, item) for item in _listed_items(entries or [], note)):
        return flag
    return FieldResult("ok", value=True, candidate=flag.value, written=flag.written, recovered=flag.recovered)


def as_written(r: FieldResult) -> bool:
    """Whether a field's result is the answer the model wrote, not a value code put in its place (a flag read from
    the list): only then is the model's confidence in its tokens a confidence in the result."""
    return not (r.status == "ok" and r.candidate is not None)


def answer_text(results: dict[str, FieldResult]) -> str:
    """An answer that reads back as `results`: each field as the model wrote it. A field it did not write, or that
    could not be read, is left out."""
    return compact_json({name: r.written for name, r in results.items() if r.status == "null" or r.written is not None})


def answer_is_valid_json(results: dict[str, FieldResult]) -> bool:
    return not any(r.status == "invalid_json" or r.recovered for r in results.values())
