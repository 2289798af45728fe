"""Invariants every rendered note must satisfy; `prepare` runs them on every patient it renders."""
from __future__ import annotations

import datetime as dt
import re
from typing import Any

from ..extraction import compact_json, parse_answer
from ..schema import Schema
from ..units import parse_fio2, resolve_unit, rounding_tolerance, to_canonical, values_match
from . import family_vocab
from .render import FAMILY_STYLES, RenderedNote

# Hospital-day numbering ("HD#3", "hospital day 3", "day 3", "POD 2"): the families never write it.
_DAY_NUMBER = re.compile(r"(?i)\b(?:hospital\s+day|HD|POD|day)\s*#?\s*\d")


def check_note(note: RenderedNote, schema: Schema, source: dict | None = None) -> list[str]:
    """Violations (empty = fine). `source` is the cohort row, to check labels against it."""
    bad: list[str] = []
    text = note.text
    for m in note.mentions:
        if text[m.start:m.end] != m.text:
            bad.append(f"{m.field}: offsets {m.start}-{m.end} do not hold the mention")
        f = schema.fields.get(m.field)
        if f is not None and f.type == "number" and m.kind != "static":
            # the metadata's canonical value is what survlm.units makes of the value and unit as written
            try:
                back = round(to_canonical(f, m.value, m.unit), 4)
            except ValueError:
                back = None
            if back is None or not values_match(back, m.canonical):
                bad.append(f"{m.field}: a day-{m.day} mention's value and unit do not convert to its canonical value")
    if note.style in FAMILY_STYLES:
        bad += _family_violations(note)
    for f in schema:
        if not f.is_physiology:
            continue
        gold_day = [m for m in note.mentions if m.field == f.name and m.kind == "day" and m.day == f.day]
        label = note.labels[f.name]
        if label is None:
            if gold_day:
                bad.append(f"{f.name}: label is null but day {f.day} has a mention")
            continue
        if len(gold_day) != 1:
            bad.append(f"{f.name}: {len(gold_day)} day-{f.day} mentions (need exactly 1)")
            continue
        m = gold_day[0]
        back = round(to_canonical(f, m.value, m.unit), 4)
        if back != label:
            bad.append(f"{f.name}: day-{f.day} mention converts to {back}, label is {label}")
        if not f.in_range(label):
            bad.append(f"{f.name}: label {label} outside the plausible range")
        if source is not None and source.get(f.source) is not None:
            raw = float(source[f.source])
            if f.derived == "pf_ratio" and "/" in m.value:  # PaO2 was rounded to whole mmHg, then divided
                tol = 0.5 / parse_fio2(m.value.split("/", 1)[1])
            elif "/" in m.value:
                tol = 0.0
            else:
                decimals = len(m.value.split(".")[1]) if "." in m.value else 0
                tol = rounding_tolerance(f, resolve_unit(f, m.unit), decimals)
            tol += 0.5 * 10.0 ** -f.decimals  # the source value was rounded to the field's decimals first
            if not values_match(label, raw, tol):
                bad.append(f"{f.name}: label {label} is not the source value {raw:g} within rounding")
        others = [x for x in note.mentions if x.field == f.name and x.day != f.day]
        if any(values_match(x.canonical, label) for x in others if x.kind == "day"):
            bad.append(f"{f.name}: another day carries the day-{f.day} value")
    parsed = parse_answer(compact_json(note.target), schema, text)
    for name, r in parsed.items():
        expect = note.labels[name]
        if expect is None:
            if r.status != "null":
                bad.append(f"{name}: target parses to {r.status}, expected null")
        elif r.status != "ok":
            bad.append(f"{name}: target parses to {r.status}")
        elif isinstance(expect, float) and not values_match(float(r.value), expect):
            bad.append(f"{name}: target parses to {r.value}, label {expect}")
        elif not isinstance(expect, float) and r.value != expect:
            bad.append(f"{name}: target parses to {r.value!r}, label {expect!r}")
    return bad


def _family_violations(note: RenderedNote) -> list[str]:
    """The families name days by calendar date only, and write the admission date so day 3 can be counted."""
    bad = []
    if _DAY_NUMBER.search(note.text):
        bad.append("the note numbers hospital days")
    admission = dt.date.fromisoformat(note.admission_date)
    if not any(admission.strftime(f) in note.text for f in family_vocab.TEXT[note.style]["date_formats"]):
        bad.append("the admission date is not written")
    return bad


def trap_stats(note: RenderedNote, schema: Schema) -> dict[str, Any]:
    """Per physiology field with a label: is the first / last mention in the note a wrong answer?"""
    out = {}
    for f in schema:
        label = note.labels.get(f.name)
        if not f.is_physiology or label is None:
            continue
        ms = sorted((m for m in note.mentions if m.field == f.name), key=lambda m: m.start)
        out[f.name] = {"first_wrong": not values_match(ms[0].canonical, label),
                       "last_wrong": not values_match(ms[-1].canonical, label)}
    return out

