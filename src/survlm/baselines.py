"""Rule baseline: a regex extractor of the kind a chart-abstraction script would use. Pure Python.

Numbers: a field label, then a number and an optional unit. When the note has a heading naming the field's day
(`Field.day`: "hospital day 3" / "HD#3" in the bundled schema), only that section is searched (nothing there:
null); otherwise the *last* mention in the note is taken ("most recent value") - the trap the notes set for notes
dated by calendar day. Categories and flags:
keyword search. Comorbidity lists are not attempted (null). Output is an answer in the model's own format,
so it goes through the same parser, checks and metrics as every model.
"""
from __future__ import annotations

import re

from .extraction import compact_json
from .notes import vocab
from .schema import Schema

_NUM = r"(\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?)"
_UNIT = r"\s?((?:°|deg)?[A-Za-zµ/%^0-9]+(?:/[A-Za-z0-9µ ]+)?)?"


def _label_regex(labels: list[str]) -> re.Pattern:
    alts = "|".join(sorted((re.escape(x) for x in labels), key=len, reverse=True))
    return re.compile(r"(?<![A-Za-z])(?:" + alts + r")\b[:=]?\s*(?:of\s+|was\s+|is\s+)?" + _NUM + _UNIT)


_PATTERNS = {name: _label_regex(terse + prose + (["BP", "blood pressure"] if name == "mean_bp_mmhg" else []))
             for name, (terse, prose) in vocab.LABELS.items()}
_DAY_HEADING = re.compile(r"(?i)\b(?:hospital day|HD\s*#?|day)\s*(\d+)\b")
_AGE = re.compile(r"\b(\d{2,3})[- ]?(?:yo|y/o|year[- ]old)\b", re.I)


def day_section(note: str, day: int) -> str | None:
    """The text from a heading naming hospital `day` to the next day heading, if the note has one."""
    heads = list(_DAY_HEADING.finditer(note))
    for k, m in enumerate(heads):
        if int(m.group(1)) == day:
            end = next((h.start() for h in heads[k + 1:] if int(h.group(1)) != day), len(note))
            return note[m.end():end]
    return None


def _number_item(schema_field, text: str):
    pat = _PATTERNS.get(schema_field.name)
    if pat is None:
        return None
    for m in reversed(list(pat.finditer(text))):
        value, unit = m.group(1), (m.group(2) or None)
        if unit is not None and unit.lower() in ("on", "and", "at", "with", "ra"):
            unit = None
        return {"value": value, "unit": unit, "evidence": m.group(0).strip()}
    return None


def regex_answer(schema: Schema, note: str) -> str:
    """The rule extractor's answer for one note, as compact JSON in the model's answer format."""
    low = note.lower()
    sections: dict[int, str | None] = {}
    answer: dict = {}
    for f in schema:
        item = None
        if f.name == "age":
            m = _AGE.search(note)
            item = {"value": m.group(1), "unit": None, "evidence": m.group(0)} if m else None
        elif f.type == "number":
            if f.is_physiology and f.day not in sections:
                sections[f.day] = day_section(note, f.day)
            section = sections.get(f.day) if f.is_physiology else None
            item = _number_item(f, note if section is None else section)
        elif f.name == "sex":
            words = {s: [w for w in d["noun"]] for s, d in vocab.SEX_WORDS.items()}
            hit = next((s for s in ("female", "male") for w in words[s] if re.search(rf"\b{w}\b", low)), None)
            item = {"value": hit, "evidence": None} if hit else None
        elif f.name == "disease_group":
            hit = next((g for g, phrases in vocab.DISEASE_PHRASES.items() for p in phrases if p.lower() in low), None)
            item = {"value": hit, "evidence": None} if hit else None
        elif f.name == "cancer":
            value = "metastatic" if "metasta" in low or "stage iv" in low else (
                "yes" if "cancer" in low and "no known cancer" not in low and "no history of malignancy" not in low
                else "no")
            item = {"value": value, "evidence": None}
        elif f.type == "bool":
            terms = vocab.DIABETES_TERMS if f.name == "diabetes" else vocab.DEMENTIA_TERMS
            hit = next((t for t in terms if t.lower() in low), None)
            item = {"value": hit is not None, "evidence": hit}
        answer[f.name] = item
    return compact_json(answer)
