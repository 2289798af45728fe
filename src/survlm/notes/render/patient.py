"""One patient: facts from the cohort row, the day plan, the note in a style, and the richest note within a
token budget."""
from __future__ import annotations

import datetime as dt
import math
from typing import Any, Callable

from ...schema import Schema
from .. import vocab
from .builder import NoteBuilder
from .core import MAX_DAYS, MIN_DAYS, MAX_FILLER_PER_DAY, RenderError, RenderedNote, _missing, _rng
from .days import plan_days
from .families import DATE_FORMATS as FAMILY_DATE_FORMATS
from .families import FAMILY_STYLES
from .families import RENDERERS as FAMILY_RENDERERS
from .styles import _DATE_FORMATS, _DATE_ONLY_STYLES, _DAY_FORMATS, _RENDERERS, _Context

# the original five styles, then the families written in their own words (survlm.notes.render.families)
ORIGINAL_STYLES = tuple(_RENDERERS)
STYLES = ORIGINAL_STYLES + FAMILY_STYLES
_ALL_RENDERERS = {**_RENDERERS, **FAMILY_RENDERERS}


STATIC_FIELDS = ("age", "sex", "disease_group", "cancer", "diabetes", "dementia", "num_comorbidities")


def patient_facts(row: dict, schema: Schema, seed: int, pid: Any) -> tuple[dict, dict[str, float | None], list[str]]:
    """Static facts, canonical values on each field's day (None = missing) and fields whose source was implausible."""
    missing_static = [n for n in STATIC_FIELDS if n not in schema.fields]
    if missing_static:
        raise RenderError(f"the SUPPORT2 renderer needs schema fields {', '.join(missing_static)}")
    rng = _rng(seed, pid, "facts")
    src = {n: row[schema[n].source] for n in STATIC_FIELDS}
    items: list[str] = []
    n_co = int(src["num_comorbidities"])
    diabetes, dementia = bool(int(src["diabetes"])), bool(int(src["dementia"]))
    if diabetes and len(items) < n_co:
        items.append(rng.choice(vocab.DIABETES_TERMS))
    if dementia and len(items) < n_co:
        items.append(rng.choice(vocab.DEMENTIA_TERMS))
    items += rng.sample(vocab.COMORBIDITIES, n_co - len(items))
    rng.shuffle(items)
    facts = {"age": int(math.floor(float(src["age"]))), "sex": str(src["sex"]),
             "disease_group": str(src["disease_group"]), "cancer": str(src["cancer"]),
             "diabetes": diabetes, "dementia": dementia, "comorbidity_items": items}
    gold_values: dict[str, float | None] = {}
    out_of_range: list[str] = []
    for f in schema:
        if not f.is_physiology:
            continue
        if f.name not in vocab.LABELS:
            raise RenderError(f"the SUPPORT2 renderer has no wording for field {f.name}")
        x = row.get(f.source)
        if _missing(x):
            gold_values[f.name] = None
            continue
        x = round(float(x), f.decimals)
        if not f.in_range(x):
            out_of_range.append(f.name)  # e.g. albumin 29 "g/dL": a unit slip in the source, not a value
            gold_values[f.name] = None
            continue
        gold_values[f.name] = x
    return facts, gold_values, out_of_range


def render_patient(row: dict, schema: Schema, style: str, seed: int, pid: Any, n_days: int = MIN_DAYS,
                   filler_per_day: int = 0, alt_unit_rate: float = 0.3, derived_rate: float = 0.3,
                   _planned: tuple | None = None) -> RenderedNote:
    if style not in _ALL_RENDERERS:
        raise RenderError(f"unknown note style {style!r}; known: {', '.join(STYLES)}")
    if not MIN_DAYS <= n_days <= MAX_DAYS:
        raise RenderError(f"n_days must be in [{MIN_DAYS}, {MAX_DAYS}]")
    facts, gold_values, out_of_range, plan = _planned or _plan(row, schema, seed, pid)
    rng = _rng(seed, pid, "note")
    admission = dt.date(2019, 1, 1) + dt.timedelta(days=rng.randrange(5 * 365))
    date_only = style in _DATE_ONLY_STYLES or style in FAMILY_STYLES or rng.random() < 0.25
    ctx = _Context(schema=schema, plan=plan, seed=seed, pid=pid, style=style, admission=admission,
                   date_only=date_only, date_format=rng.choice(_DATE_FORMATS), day_format=rng.choice(_DAY_FORMATS),
                   alt_unit_rate=alt_unit_rate, derived_rate=derived_rate,
                   filler_per_day=min(filler_per_day, len(vocab.FILLER)), gold={})
    if style in FAMILY_DATE_FORMATS:  # each family writes dates its own way
        ctx.date_format = _rng(seed, pid, style, "date-format").choice(FAMILY_DATE_FORMATS[style])
    ctx.days = list(range(1, n_days + 1))
    b = NoteBuilder()
    gold_static: dict[str, Any] = {}
    _ALL_RENDERERS[style](b, ctx, facts, gold_static)
    text = b.text()

    labels: dict[str, Any] = {}
    target: dict[str, Any] = {}
    for f in schema:
        if f.name == "num_comorbidities":
            labels[f.name] = len(facts["comorbidity_items"])
            # the items as the note writes them (a family may abbreviate them)
            target[f.name] = {"value": list(gold_static.get("comorbidity_items", facts["comorbidity_items"]))}
        elif f.name in ("diabetes", "dementia"):
            labels[f.name] = facts[f.name]
            target[f.name] = {"value": facts[f.name], "evidence": gold_static.get(f.name)}
        elif f.name in ("age", "sex"):
            m = next(m for m in b.mentions if m.field == f.name)
            labels[f.name] = facts[f.name]
            target[f.name] = ({"value": m.value, "unit": None, "evidence": m.text} if f.type == "number"
                              else {"value": facts[f.name], "evidence": m.text})
        elif f.name in ("disease_group", "cancer"):
            labels[f.name] = facts[f.name]
            target[f.name] = {"value": facts[f.name], "evidence": gold_static.get(f.name)}
        else:
            w = ctx.gold.get(f.name)
            labels[f.name] = None if w is None else w.canonical
            target[f.name] = None if w is None else {"value": w.value, "unit": w.unit, "evidence": w.surface}
    return RenderedNote(text=text, style=style, labels=labels, target=target, mentions=b.mentions,
                        admission_date=admission.isoformat(), n_days=n_days, filler_per_day=ctx.filler_per_day,
                        source_out_of_range=out_of_range)


def _levels() -> list[tuple[int, int]]:
    """Richness levels, each adding one day or one filler sentence per day (lengths grow monotonically)."""
    levels, days, filler = [(MIN_DAYS, 0)], MIN_DAYS, 0
    while days < MAX_DAYS or filler < MAX_FILLER_PER_DAY:
        if days < MAX_DAYS and (days - MIN_DAYS <= filler or filler >= MAX_FILLER_PER_DAY):
            days += 1
        else:
            filler += 1
        levels.append((days, filler))
    return levels


LEVELS = _levels()


def _plan(row: dict, schema: Schema, seed: int, pid: Any) -> tuple:
    facts, gold_values, out_of_range = patient_facts(row, schema, seed, pid)
    return facts, gold_values, out_of_range, plan_days(schema, gold_values, seed, pid)


def richest_level(tokens_at: Callable[[int], int], levels: int, budget: int) -> int:
    """The largest level in [0, levels) whose `tokens_at(level)` stays within `budget` (0 when none does), for
    counts that grow with the level. It keeps a bracket (a level that fits, one that is over) and probes where the
    counts measured so far put the budget: extrapolating from the last two fits until some level is over, then
    interpolating inside the bracket, and bisecting after two probes in a row that did not halve it. A note of ~3k
    tokens takes about 6 renders instead of a galloping search's 10, with the same result."""
    fit, n_fit = 0, tokens_at(0)
    if n_fit > budget:
        return 0
    over, n_over = levels, None
    last: tuple[int, int] | None = None          # the fit before `fit`: (level, tokens)
    stalls = 0                                   # probes in a row, inside a bracket, that did not halve it
    while over - fit > 1:
        if stalls >= 2:
            guess = (fit + over) // 2
        elif n_over is not None:
            guess = fit + int((budget - n_fit) * (over - fit) / (n_over - n_fit))
        elif last is not None and n_fit > last[1]:
            guess = fit + int((budget - n_fit) * (fit - last[0]) / (n_fit - last[1]))
        else:
            guess = fit + 1
        guess = min(max(guess, fit + 1), over - 1)
        width = over - fit if n_over is not None else None
        n = tokens_at(guess)
        if n <= budget:
            last, fit, n_fit = (fit, n_fit), guess, n
        else:
            over, n_over = guess, n
        stalls = stalls + 1 if width is not None and (over - fit) * 2 > width else 0
    return fit


def render_to_budget(row: dict, schema: Schema, style: str, seed: int, pid: Any, max_tokens: int,
                     count_tokens: Callable[[str], int], **kwargs) -> tuple[RenderedNote, int]:
    """The richest note whose token count stays within `max_tokens` (the minimal note if none does)."""
    planned = _plan(row, schema, seed, pid)
    rendered: dict[int, tuple[RenderedNote, int]] = {}

    def tokens_at(level: int) -> int:
        note = render_patient(row, schema, style, seed, pid, *LEVELS[level], _planned=planned, **kwargs)
        rendered[level] = (note, count_tokens(note.text))
        return rendered[level][1]

    return rendered[richest_level(tokens_at, len(LEVELS), max_tokens)]
