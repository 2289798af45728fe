"""Evidence for a user's labels: where each label is written in its note, and the training target built from it.

Pure Python (no torch). A user's file gives, per note, the value of some fields; the model is trained to copy
value, unit and a verbatim span, so the span has to be found:

- Every place the note names a field (the schema's `aliases`, plus `BP S/D` and `PaO2 N on FiO2` for the
  derived forms) followed by a value is a mention, with the unit written after it and its character offsets.
- Each mention gets the hospital day it is written under: day markers (`HD#3`, `hospital day 3`, `Day 3`)
  and dates counted from the stated admission date. Text before the first marker is undated.
- A label is located when exactly one mention on the field's day (`Field.day`; any place for fields without a
  day rule) converts to the label within tolerance (survlm.units: units, aliases, derived forms). Several
  such mentions that are written differently make the label ambiguous; none is `not_found`; a mention on
  that day with another value and none with the label's makes the label `contradicted`.
- Category and bool fields are located by the names of their values; a negative finding (false, or a
  category such as "no") needs no quote. A count field is located by its list (`PMH: a; b, c`)
  when the list has as many items as the label.

The target has the answer format of the rendered SUPPORT2 notes (survlm.notes.render). A field that the
target must carry without a trained value (unlabelled, unlocated, contradicted) is written as null or
with its evidence masked: `TargetText.masked` gives the character spans that no loss may cover.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .extraction import ABSENCE_PHRASES, compact_json
from .schema import Field, Schema
from .units import _ALIASES, UnitError, ValueFormatError, _norm_unit, resolve_unit, rounding_tolerance, to_canonical, \
    values_match

STATUSES = ("located", "null", "ambiguous", "not_found", "contradicted")
UNLOCATED_POLICIES = ("value_only", "drop_field", "drop_record")
# Names that announce a derived form's parts rather than the field itself.
DERIVED_ANCHORS = {"blood_pressure": ("BP", "blood pressure")}
# Category values that state the absence of a finding ("no" cancer): nothing in the note needs quoting.
NEGATIVE_CATEGORIES = ("no", "none", "absent", "negative")
MENTION_COLUMNS = ("field", "kind", "day", "value", "unit", "canonical", "start", "end")

_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                                       "dec"), start=1)}
_DATE = (r"(?P<iso>(?P<iy>\d{4})-(?P<im>\d{1,2})-(?P<id>\d{1,2}))"
         r"|(?P<us>(?P<um>\d{1,2})/(?P<ud>\d{1,2})(?:/(?P<uy>\d{4}|\d{2}))?)"
         r"|(?P<mon>(?P<mm>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.? (?P<md>\d{1,2})(?:, (?P<my>\d{4}))?)")
_DATE_RE = re.compile(r"(?<![\d/.])(?:" + _DATE + r")(?![\d]|/\d)")
_ADMISSION_RE = re.compile(r"(?i:admission date|admit date|date of admission|admitted(?: on)?|adm\.?|admission)"
                           r"\s*[:\-]?\s*(?:" + _DATE + r")(?![\d]|/\d)")
_FEB29 = re.compile(r"(?<![\d/])0?2/29(?!\d)|\bFeb[a-z]*\.? 29\b|-02-29\b")
_DAY_RE = re.compile(r"(?i:\bHD\s*#?\s*|\bhospital day\s*#?\s*|\bday\s*#?\s*)(\d{1,2})(?!\d)")
_NUM = r"-?\d+(?:\.\d+)?"
_GAP = r"\s*(?:[:=#]|\bwas\b|\bof\b|\bis\b)?\s*"
_VALUE_RE = re.compile(r"(?P<v>" + _NUM + r")(?:\s*/\s*(?P<d>" + _NUM + r"))?(?!\d|\.\d|,\d{3})")
_PAO2_RE = re.compile(r"\bPaO2" + _GAP + r"(?P<p>\d+(?:\.\d+)?)(?:\s*mmHg)?\s*(?:on|/|,|@)\s*(?:FiO2\s*(?:of\s*)?[:=]?\s*)?"
                      r"(?P<f>\d+(?:\.\d+)?%?|RA\b|room air\b)", re.I)
_UNIT_TOKEN = re.compile(r" ?([^\s,;|()]+)")
_NEGATION = re.compile(r"(?i)\b(?:no|not|denies|denied|without|negative for|no history of|no known|free of)\b[^.;\n]{0,25}$")
_LIST_SPLIT = re.compile(r"\s*[;,]\s*")
_KNOWN_UNITS = {k for k in _ALIASES if k}


@dataclass
class Mention:
    field: str
    kind: str               # "day" (under a hospital day), "undated", "static" (fields without a day rule)
    day: int | None
    value: str              # as written (a derived form as the answer writes it: "120/80", "88/40%")
    unit: str | None        # as written
    canonical: Any          # survlm.units' value of (value, unit); None when it cannot be converted
    start: int              # evidence span: the field's name to the end of the value or unit
    end: int

    def row(self) -> list:
        return [getattr(self, c) for c in MENTION_COLUMNS]


@dataclass
class Located:
    status: str                         # one of STATUSES
    item: Any = None                    # the answer item built from the note (located / null)
    span: tuple[int, int] | None = None
    candidates: int = 0                 # mentions that match the label on the rule's day
    conflict: tuple[int, int] | None = None  # contradicted: the offsets of the mention that says otherwise


@dataclass
class NoteEvidence:
    fields: dict[str, Located]          # labelled fields only
    mentions: list[Mention] = field(default_factory=list)

    def meta(self) -> dict:
        """Render-metadata shaped provenance (offsets, no text): metrics' error tags and make_pairs' traps read it."""
        rows = sorted((m.row() for m in self.mentions), key=lambda r: r[6])
        return {"style": "user", "mention_columns": list(MENTION_COLUMNS), "mentions": rows}


# ------------------------------------------------------------------------------------------------
# When: day markers and dates
# ------------------------------------------------------------------------------------------------
def _date(m: re.Match, year: int | None) -> dt.date | None:
    g = m.groupdict()
    try:
        if g.get("iso"):
            return dt.date(int(g["iy"]), int(g["im"]), int(g["id"]))
        if g.get("us"):
            y = g.get("uy")
            y = (2000 + int(y) if len(y) == 2 else int(y)) if y else year
            return None if y is None else dt.date(y, int(g["um"]), int(g["ud"]))
        if g.get("mon"):
            y = int(g["my"]) if g.get("my") else year
            return None if y is None else dt.date(y, _MONTHS[g["mm"].lower()], int(g["md"]))
    except ValueError:
        return None
    return None


def day_markers(text: str) -> list[tuple[int, int]]:
    """(offset, hospital day) of every day marker, in note order; day 1 is the admission day."""
    adm = _ADMISSION_RE.search(text)
    # A year-less admission date gets a common year, or the year before a leap year when the note
    # dates a February 29; later year-less dates count from it.
    year = 2001
    if adm is not None and _FEB29.search(text):
        year = 2000 if (_date(adm, 2000) or dt.date(2000, 12, 31)).month <= 2 else 1999
    admission = None if adm is None else _date(adm, year)
    markers = [(m.start(), int(m.group(1))) for m in _DAY_RE.finditer(text)]
    if admission is not None:
        for m in _DATE_RE.finditer(text):
            if adm.start() <= m.start() < adm.end():
                continue  # the admission date itself opens no day
            d = _date(m, admission.year)
            if d is None:
                continue
            if d < admission - dt.timedelta(days=180):  # a year-less date after New Year
                d = d.replace(year=d.year + 1)
            day = (d - admission).days + 1
            if 0 <= day <= 400:
                markers.append((m.start(), day))
    return sorted(markers)


def _day_at(markers: list[tuple[int, int]], pos: int) -> int | None:
    day = None
    for at, d in markers:
        if at > pos:
            break
        day = d
    return day


# ------------------------------------------------------------------------------------------------
# Where: mentions of a field
# ------------------------------------------------------------------------------------------------
def _alias_pattern(names, left: str = "A-Za-z0-9") -> str:
    """Names as one alternation, longest first; short or all-capital names match case-sensitively."""
    parts = []
    for a in sorted(set(names), key=len, reverse=True):
        body = re.escape(a).replace(r"\ ", r"\s+")
        sensitive = len(a) <= 2 or a.upper() == a
        parts.append(body if sensitive else f"(?i:{body})")
    return f"(?<![{left}])(?:" + "|".join(parts) + ")(?![A-Za-z])"


def _unit_after(f: Field, text: str, pos: int) -> tuple[str | None, int, bool]:
    """(unit as written, end offset, ok): the token after a value if this field accepts it as a unit.
    ok is False when the token is a unit this field does not accept (the value is another quantity)."""
    m = _UNIT_TOKEN.match(text, pos)
    if m is None:
        return None, pos, True
    token = m.group(1).rstrip(".:")
    if not token:
        return None, pos, True
    try:
        resolve_unit(f, token)
        return token, m.start(1) + len(token), True
    except UnitError:
        pass
    return None, pos, _norm_unit(token) not in _KNOWN_UNITS and not any(_norm_unit(u) == _norm_unit(token)
                                                                        for u in f.units)


def _canonical(f: Field, value: str, unit: str | None) -> float | None:
    try:
        return round(to_canonical(f, value, unit), 4)
    except (UnitError, ValueFormatError, ZeroDivisionError):
        return None


def _written_decimals(value: str) -> int:
    head = value.split("/")[0]
    return len(head.split(".")[1]) if "." in head else 0


def number_mentions(f: Field, text: str, markers: list[tuple[int, int]]) -> list[Mention]:
    """Every mention of a number field: a name followed by a value (and unit), or a derived form's parts."""
    names = list(f.aliases) + list(DERIVED_ANCHORS.get(f.derived, ()))
    out: list[Mention] = []
    taken: set[int] = set()

    def add(start: int, vstart: int, value: str, unit: str | None, end: int) -> None:
        if vstart in taken:
            return
        taken.add(vstart)
        day = _day_at(markers, start) if f.day is not None else None
        kind = "static" if f.day is None else ("day" if day is not None else "undated")
        out.append(Mention(f.name, kind, day, value, unit, _canonical(f, value, unit), start, end))

    if names:
        anchors = DERIVED_ANCHORS.get(f.derived, ())
        for m in re.finditer(_alias_pattern(names) + "(?P<gap>" + _GAP + ")", text):
            v = _VALUE_RE.match(text, m.end())
            if v is None:
                continue
            alias = text[m.start():m.end() - len(m.group("gap"))]
            pair = v.group("d") is not None
            if pair and f.derived != "blood_pressure":
                continue
            if not pair and alias.strip().lower() in {a.lower() for a in anchors}:
                continue  # "BP 85" is no blood pressure pair
            value = f"{v.group('v')}/{v.group('d')}" if pair else v.group("v")
            unit, end, ok = _unit_after(f, text, v.end())
            if ok:
                add(m.start(), v.start(), value, unit, end)
    if f.derived == "pf_ratio":
        for m in _PAO2_RE.finditer(text):
            fio2 = m.group("f")
            fio2 = "RA" if fio2.lower() in ("ra", "room air") else fio2
            add(m.start(), m.start("p"), f"{m.group('p')}/{fio2}", None, m.end())
    # Age-like fields with no day: a value followed by the field's own unit ("67-year-old", "67 yo").
    if f.day is None and f.type == "number":
        for v in re.finditer(r"(?<![\d.,/])(\d+(?:\.\d+)?)(?=\s?-?[A-Za-z/])", text):
            unit, end, _ = _unit_after(f, text, v.end())
            if unit is None:
                m2 = re.match(r"-([A-Za-z-]+)", text[v.end():])  # "67-year-old"
                if m2:
                    try:
                        resolve_unit(f, m2.group(0))
                        unit, end = m2.group(0), v.end() + len(m2.group(0))
                    except UnitError:
                        pass
            if unit is not None and unit.strip():
                add(v.start(), v.start(), v.group(1), unit, end)
        if f.unit == "years":  # the clinical shorthand for age and sex: "67M", "67 F"
            for v in re.finditer(r"(?<![A-Za-z] )(?<![\d.,/])(\d{1,3})(?= ?[MF]\b)", text):  # not "T 99 F"
                add(v.start(), v.start(), v.group(1), None, v.end())
    return sorted(out, key=lambda m: m.start)


def _name_hits(names, text: str) -> list[tuple[int, int]]:
    if not names:
        return []
    pat = _alias_pattern(names, left="A-Za-z")  # "67M": a value may touch the name
    return [(m.start(), m.end()) for m in re.finditer(pat, text)]


def _negated(text: str, start: int) -> bool:
    return _NEGATION.search(text[max(0, start - 40):start]) is not None


# ------------------------------------------------------------------------------------------------
# Checking a model's answer against the note (survlm.extraction)
# ------------------------------------------------------------------------------------------------
_PLAIN_NUMBER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?(?!\d|\.\d)")


@dataclass
class _NoteIndex:
    """What checking answers needs from one note, worked out once: every field of an answer, and every adapter's
    answer to the same note (a batch holds several hundred notes), is checked against it. Fields are kept
    beside what was found for them, so an id is never reused for another Field."""
    markers: list[tuple[int, int]]
    mentions: dict[int, tuple[Field, list[Mention]]] = field(default_factory=dict)   # number_mentions per field
    owned: dict[int, tuple[Field, dict[float, list[tuple[int, int]]]]] = field(default_factory=dict)
    numbers: dict[float, list[int]] | None = None   # each plain number the note writes -> where it starts


@lru_cache(maxsize=512)
def _note_index(text: str) -> _NoteIndex:
    return _NoteIndex(day_markers(text))


def _mentions_in(f: Field, text: str) -> list[Mention]:
    """`number_mentions` of `f` in `text`, worked out once per note and field."""
    index = _note_index(text)
    cached = index.mentions.get(id(f))
    if cached is None or cached[0] is not f:
        cached = index.mentions[id(f)] = (f, number_mentions(f, text, index.markers))
    return cached[1]


def _owned_by(f: Field, text: str) -> dict[float, list[tuple[int, int]]]:
    """The numbers that mentions of `f` own, with each owning mention's span. A mention owns its number where a
    name precedes it and its value is that one number: a pair ("BP 120/80", or the "PaO2: 7.50/49" that
    "ABG pH/PaCO2/PaO2: 7.50/49/266" gives) does not say which of its numbers is whose, and a mention that
    starts at its number (age read from "Tmax:97F") names no field."""
    index = _note_index(text)
    cached = index.owned.get(id(f))
    if cached is None or cached[0] is not f:
        owned: dict[float, list[tuple[int, int]]] = {}
        for m in _mentions_in(f, text):
            if not text[m.start].isdigit() and _PLAIN_NUMBER.fullmatch(str(m.value)):
                owned.setdefault(float(m.value), []).append((m.start, m.end))
        cached = index.owned[id(f)] = (f, owned)
    return cached[1]


def _plain_numbers(text: str) -> dict[float, list[int]]:
    index = _note_index(text)
    if index.numbers is None:
        index.numbers = {}
        for m in _PLAIN_NUMBER.finditer(text):
            index.numbers.setdefault(float(m.group()), []).append(m.start())
    return index.numbers


def written_on_other_days_only(f: Field, value: float, text: str) -> bool:
    """Whether the note writes `value` for `f` only under hospital days other than the field's own: some mention
    of the field under another day's marker converts to it, and none on the field's day or before the first
    marker does. A value the note never writes under the field's names, a field without a day rule and a note
    without day markers are not judged (False)."""
    if f.day is None:
        return False
    hits = [m for m in _mentions_in(f, text)
            if m.canonical is not None and values_match(m.canonical, value, _tolerance(f, m))]
    return bool(hits) and all(m.kind == "day" and m.day != f.day for m in hits)


def written_for_other_fields_only(f: Field, value: Any, text: str, fields: list[Field]) -> bool:
    """Whether every place the note writes the number `value` (as the answer wrote it) is the value of another of
    `fields`, after that field's name ("P 94" read as urine output, "Alb 3.6", "PF 305"; `_owned_by`), and none
    is after a name of `f`'s. A number the note also writes without a field's name before it, a value that is
    no plain number (a pair, a unit conversion's result that the note does not write) and a field without names
    are not judged (False)."""
    if not f.aliases or not isinstance(value, (str, int, float)) or isinstance(value, bool):
        return False
    try:
        target = float(value)
    except ValueError:
        return False
    spots = _plain_numbers(text).get(target)
    if not spots:
        return False
    owners = [(g is f, start, end) for g in fields if g.type == "number"
              for start, end in _owned_by(g, text).get(target, ())]
    for at in spots:
        owner = [own for own, start, end in owners if start <= at < end]
        if not owner or any(owner):
            return False
    return True


_PRE = re.compile(r"(?i)pre-?$")


def names_condition(f: Field, item: str) -> bool:
    """Whether a list item (a comorbidity as the answer lists it) names the yes/no condition `f` by one of its
    aliases, neither negated ("no DM") nor as its forerunner ("pre-diabetes")."""
    return any(not _negated(item, s) and not _PRE.search(item[:s]) for s, _ in _name_hits(f.aliases, item))


# ------------------------------------------------------------------------------------------------
# Locating one label
# ------------------------------------------------------------------------------------------------
def _number_item(text: str, m: Mention) -> dict:
    return {"value": m.value, "unit": m.unit, "evidence": text[m.start:m.end]}


def _tolerance(f: Field, m: Mention) -> float:
    tol = 0.5 * 10.0 ** -f.decimals
    try:
        tol = max(tol, rounding_tolerance(f, resolve_unit(f, m.unit), _written_decimals(m.value)))
    except UnitError:
        pass
    return tol


def _locate_number(f: Field, label: Any, text: str, mentions: list[Mention]) -> Located:
    on_day = [m for m in mentions if f.day is None or m.day == f.day]
    if label is None:
        said = [m for m in on_day if m.canonical is not None]
        if said:
            return Located("contradicted", conflict=(said[0].start, said[0].end))
        return Located("null", item=None)
    hits = [m for m in on_day if m.canonical is not None and values_match(m.canonical, float(label), _tolerance(f, m))]
    if len({(m.value, m.unit) for m in hits}) == 1:  # one mention, or the same one written again
        return Located("located", item=_number_item(text, hits[0]), span=(hits[0].start, hits[0].end),
                       candidates=len(hits))
    if hits:
        return Located("ambiguous", candidates=len(hits))
    other = [m for m in on_day if m.canonical is not None]
    if other:
        return Located("contradicted", conflict=(other[0].start, other[0].end))
    return Located("not_found")


def _category_names(f: Field, category: str) -> tuple[str, ...]:
    """A category's names: its aliases, else the category as written in the schema."""
    return f.category_aliases.get(category) or (category,)


def _prefer(hits: list[tuple[int, int]], text: str, claimed: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """A heading ("Cancer:") is no finding; a name inside another field's phrase ("colon cancer" as the
    disease group) comes after the field's own mentions."""
    hits = [(s, e) for s, e in hits if not re.match(r"\s*:", text[e:e + 3])]
    free = [h for h in hits if not any(s < h[1] and h[0] < e for s, e in claimed)]
    return free + [h for h in hits if h not in free]


def _locate_category(f: Field, label: Any, text: str, claimed: list[tuple[int, int]] = ()) -> Located:
    if label is None:
        return Located("null", item=None)
    own = _prefer(_name_hits(_category_names(f, label), text), text, claimed)
    if own:
        s, e = own[0]
        return Located("located", item={"value": label, "evidence": text[s:e]}, span=(s, e), candidates=len(own))
    others = _prefer([hit for c in f.categories if c != label for hit in _name_hits(_category_names(f, c), text)],
                     text, claimed)
    if others:
        s, e = min(others)
        return Located("contradicted", conflict=(s, e))
    if str(label).lower() in NEGATIVE_CATEGORIES:  # "no cancer" is the absence of a finding: nothing to quote
        return Located("located", item={"value": label, "evidence": None})
    return Located("not_found")


def _locate_bool(f: Field, label: Any, text: str, claimed: list[tuple[int, int]] = ()) -> Located:
    if label is None:
        return Located("null", item=None)
    hits = _prefer([(s, e) for s, e in _name_hits(f.aliases or (f.name,), text) if not _negated(text, s)], text, claimed)
    if label:
        if not hits:
            return Located("not_found")
        s, e = hits[0]
        return Located("located", item={"value": True, "evidence": text[s:e]}, span=(s, e), candidates=len(hits))
    if hits:
        return Located("contradicted", conflict=hits[0])
    return Located("located", item={"value": False, "evidence": None})


def count_lists(f: Field, text: str) -> list[tuple[list[tuple[int, int]], tuple[int, int]]]:
    """Lists under the field's names: (item spans, whole list span) for `NAME: a; b, c.`"""
    out = []
    for s, e in _name_hits(f.aliases, text):
        m = re.match(r"\s*:\s*([^.\n]*)", text[e:])
        if m is None:
            continue
        body_start = e + m.start(1)
        body = m.group(1)
        if body.strip().lower() in ABSENCE_PHRASES:
            out.append(([], (s, body_start + len(body))))
            continue
        items, pos = [], 0
        for part in _LIST_SPLIT.split(body):
            k = body.index(part, pos) if part else pos
            if part.strip():
                items.append((body_start + k, body_start + k + len(part.rstrip())))
            pos = k + len(part)
        out.append((items, (s, body_start + len(body))))
    return out


def _locate_count(f: Field, label: Any, text: str, claimed: list[tuple[int, int]] = ()) -> Located:
    if label is None:
        return Located("null", item=None)
    lists = count_lists(f, text)
    fits = [(items, span) for items, span in lists if len(items) == int(label)]
    if len({tuple(text[s:e] for s, e in items) for items, _ in fits}) == 1:
        items, span = fits[0]
        return Located("located", item={"value": [text[s:e] for s, e in items]}, span=span, candidates=len(fits))
    if fits:
        return Located("ambiguous", candidates=len(fits))
    if lists:
        return Located("contradicted", conflict=lists[0][1])
    return Located("not_found")


def locate(schema: Schema, text: str, labels: dict[str, Any]) -> NoteEvidence:
    """Locate every label (`labels` holds labelled fields only; a value of None is a null label)."""
    markers = day_markers(text)
    fields: dict[str, Located] = {}
    mentions: list[Mention] = []
    names = {f.name: _name_hits(f.aliases + tuple(a for v in f.category_aliases.values() for a in v), text)
             for f in schema if f.type in ("category", "bool")}
    for f in schema:
        if f.type == "number":
            found = number_mentions(f, text, markers)
            mentions += found
            if f.name in labels:
                fields[f.name] = _locate_number(f, labels[f.name], text, found)
        elif f.name in labels:
            locator = {"category": _locate_category, "bool": _locate_bool, "count": _locate_count}[f.type]
            claimed = [h for n, hits in names.items() if n != f.name for h in hits]
            fields[f.name] = locator(f, labels[f.name], text, claimed)
    return NoteEvidence(fields, mentions)


# ------------------------------------------------------------------------------------------------
# The target
# ------------------------------------------------------------------------------------------------
def value_only_item(f: Field, label: Any) -> dict:
    """The label in the answer format without a located span (its evidence is masked from the loss)."""
    if f.type == "number":
        text = f"{float(label):.{f.decimals}f}" if f.decimals else str(int(round(float(label))))
        return {"value": text, "unit": f.unit or None, "evidence": text}
    if f.type == "count":
        return {"value": [f"item {i + 1}" for i in range(int(label))]}
    return {"value": label, "evidence": None}


@dataclass
class TargetText:
    text: str
    masked: list[tuple[int, int]]   # character spans of `text` that carry no training signal


def target_text(schema: Schema, items: dict[str, Any], masked: dict[str, str]) -> TargetText:
    """The compact JSON answer (as survlm.extraction.compact_json writes it) and its masked spans.

    masked: field -> "value" (the whole item is a placeholder) or "evidence" (only the evidence string,
    or for a count the listed items, is a placeholder)."""
    parts, spans, pos = ["{"], [], 1
    for i, f in enumerate(schema):
        head = ("," if i else "") + compact_json(f.name) + ":"
        parts.append(head)
        pos += len(head)
        item = items.get(f.name)
        body = compact_json(item)
        how = masked.get(f.name)
        if how == "value":
            spans.append((pos, pos + len(body)))
        elif how == "evidence" and isinstance(item, dict):
            last = compact_json(item[list(item)[-1]])  # evidence (a count: its list) is the item's last key
            spans.append((pos + len(body) - 1 - len(last), pos + len(body) - 1))
        parts.append(body)
        pos += len(body)
    parts.append("}")
    text = "".join(parts)
    assert text == compact_json({f.name: items.get(f.name) for f in schema})
    return TargetText(text, spans)
