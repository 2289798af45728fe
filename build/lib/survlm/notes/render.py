"""Render one patient's structured record as a long, messy clinical note, with full provenance.

The gold label of every physiology field is defined by the note itself: it is the canonical value
of the single hospital-day-3 mention, as survlm.units computes it from what was written. Other
days (before and after), outside-hospital values, reference ranges, doses and home readings are
there to be *not* extracted. Each mention records day, unit and character offsets.

Determinism: every random choice comes from a `random.Random` seeded by (seed, patient, purpose),
so adding days or filler to reach a token budget never changes what was already rendered.
"""
from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from ..schema import Field, Schema
from ..units import from_canonical, rounding_tolerance, to_canonical
from . import vocab

STYLES = ("flowsheet", "discharge", "signout", "progress", "nursing")
GOLD_DAY = 3
MIN_DAYS, MAX_DAYS = 4, 30
MAX_FILLER_PER_DAY = len(vocab.FILLER)


class RenderError(ValueError):
    pass


@dataclass
class Mention:
    field: str
    kind: str                 # "day" (hospital-day value), "static", "distractor"
    day: int | None           # hospital day (1 = admission day); 0 = before admission
    value: str                # as written
    unit: str | None          # as written (None when no unit was written)
    canonical: Any            # what survlm.units makes of (value, unit)
    start: int = 0
    end: int = 0
    text: str = ""            # the surface span (note[start:end]); dropped from stored metadata


@dataclass
class RenderedNote:
    text: str
    style: str
    labels: dict[str, Any]
    target: dict[str, Any]
    mentions: list[Mention]
    admission_date: str
    n_days: int
    filler_per_day: int
    source_out_of_range: list[str] = field(default_factory=list)

    MENTION_COLUMNS = ("field", "kind", "day", "value", "unit", "canonical", "start", "end")

    def metadata(self) -> dict:
        """Provenance without note text: mentions as rows of MENTION_COLUMNS (offsets point into the note)."""
        rows = [[getattr(m, c) for c in self.MENTION_COLUMNS] for m in self.mentions]
        return {"style": self.style, "admission_date": self.admission_date, "n_days": self.n_days,
                "filler_per_day": self.filler_per_day, "source_out_of_range": self.source_out_of_range,
                "mention_columns": list(self.MENTION_COLUMNS), "mentions": rows}


def _rng(seed: int, pid: Any, *purpose: Any) -> random.Random:
    return random.Random(":".join(str(p) for p in (seed, pid, *purpose)))


def _fmt(x: float, decimals: int) -> str:
    return f"{x:.{decimals}f}" if decimals > 0 else str(int(round(x)))


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


# ------------------------------------------------------------------------------------------
# Values per day
# ------------------------------------------------------------------------------------------
def _perturb(f: Field, center: float, rng: random.Random, avoid: float | None) -> float:
    """A value for another day: near `center`, inside the field's range, never equal to `avoid`."""
    kind, sd = vocab.SPREAD[f.name]
    lo, hi = f.range if f.range else (-math.inf, math.inf)
    for attempt in range(50):
        if f.name == "coma_score":
            x = float(rng.choice(vocab.COMA_SCORES))
        elif kind == "abs":
            x = center + rng.gauss(0, sd) * (1 + attempt / 10)
        else:
            # Relative spread around a near-zero value (anuria, WBC 0) would stay at zero.
            base = max(center, 0.1 * vocab.TYPICAL[f.name])
            x = base * math.exp(rng.gauss(0, sd) * (1 + attempt / 10))
        x = round(min(max(x, lo), hi), f.decimals)
        if avoid is None:
            return x
        # Clearly different: beyond the scoring tolerance (1%) even after unit rounding.
        if abs(x - avoid) > max(0.02 * abs(avoid), 3 * 10.0 ** -f.decimals):
            return x
    # Pathological center (e.g. at the edge of the range): step away deterministically.
    return round(avoid + (1 if avoid + 0.2 * abs(avoid) + 1 <= hi else -1) * max(0.2 * abs(avoid), 1), f.decimals)


@dataclass
class DayPlan:
    """Which canonical value each physiology field takes on each hospital day (None: not charted)."""
    values: dict[str, dict[int, float]]


def plan_days(schema: Schema, day3: dict[str, float | None], seed: int, pid: Any) -> DayPlan:
    values: dict[str, dict[int, float]] = {}
    for f in schema:
        if not f.is_physiology:
            continue
        rng = _rng(seed, pid, "days", f.name)
        gold = day3.get(f.name)
        center = gold if gold is not None else float(vocab.TYPICAL[f.name])
        per_day: dict[int, float] = {}
        # Mandatory: at least one mention before and one after the gold day, so first/last mentions
        # are wrong answers; the gold day itself carries a value only when the source has one.
        before = rng.choice(range(1, GOLD_DAY))
        after = GOLD_DAY + 1
        for day in range(1, MAX_DAYS + 1):
            if day == GOLD_DAY:
                if gold is not None:
                    per_day[day] = gold
                continue
            if day in (before, after) or rng.random() < 0.7:
                per_day[day] = _perturb(f, center, rng, gold)
        values[f.name] = per_day
    return DayPlan(values)


# ------------------------------------------------------------------------------------------
# Writing one value
# ------------------------------------------------------------------------------------------
ALT_UNIT = {"temperature_c": "°F", "wbc_k_ul": "cells/µL", "albumin_g_dl": "g/L", "bilirubin_mg_dl": "µmol/L",
            "creatinine_mg_dl": "µmol/L", "sodium_meq_l": "mmol/L", "glucose_mg_dl": "mmol/L",
            "bun_mg_dl": "mmol/L", "urine_ml_day": "L/24 h"}


@dataclass
class Written:
    surface: str
    value: str
    unit: str | None
    canonical: float


class MentionWriter:
    """Formats a canonical value as a note would write it (label, unit, derived form)."""

    def __init__(self, schema: Schema, rng: random.Random, terse: bool, alt_unit_rate: float, derived_rate: float):
        self.schema, self.rng, self.terse = schema, rng, terse
        self.alt_unit_rate, self.derived_rate = alt_unit_rate, derived_rate

    def _label(self, name: str, unit: str) -> str:
        labels = vocab.UREA_LABELS if (name == "bun_mg_dl" and unit == "mmol/L") else vocab.LABELS[name]
        return self.rng.choice(labels[0] if self.terse else labels[1])

    def write(self, name: str, canonical: float) -> Written:
        f = self.schema[name]
        rng = self.rng
        if f.derived == "blood_pressure" and canonical >= 30 and rng.random() < self.derived_rate:
            m = int(round(canonical))
            for _ in range(20):
                diastolic = int(round(m - rng.uniform(25, 70) / 3))
                systolic = 3 * m - 2 * diastolic
                if 0 < diastolic < systolic <= 300:
                    value = f"{systolic}/{diastolic}"
                    unit = rng.choice(["", " mmHg"])
                    surface = f"{rng.choice(['BP', 'BP', 'blood pressure'])} {value}{unit}"
                    return Written(surface, value, unit.strip() or None, round(to_canonical(f, value, unit), 4))
        if f.derived == "pf_ratio" and rng.random() < self.derived_rate:
            fio2_choices = [0.3, 0.35, 0.4, 0.5, 0.6, 0.8, 1.0] + ([0.21] * 3 if canonical > 250 else [])
            rng.shuffle(fio2_choices)
            for fio2 in fio2_choices:
                pao2 = int(round(canonical * fio2))
                if 25 <= pao2 <= 600:
                    if fio2 == 0.21:
                        fio2_value, fio2_text = "RA", rng.choice(["RA", "room air"])
                    elif rng.random() < 0.6:
                        fio2_value = f"{int(round(fio2 * 100))}%"
                        fio2_text = rng.choice([f"FiO2 {fio2_value}", fio2_value])
                    else:
                        fio2_value = f"{fio2:.2f}"
                        fio2_text = f"FiO2 {fio2_value}"
                    value = f"{pao2}/{fio2_value}"
                    surface = f"PaO2 {pao2} on {fio2_text}"
                    return Written(surface, value, None, round(to_canonical(f, value, None), 4))
        unit, decimals = f.unit, f.decimals
        if name in ALT_UNIT and rng.random() < self.alt_unit_rate:
            alt = ALT_UNIT[name]
            alt_decimals = vocab.FIELD_UNIT_DECIMALS.get((name, alt), vocab.WRITE_DECIMALS.get(alt, f.decimals))
            # Only where the unit's rounding is fine enough to keep neighbouring days apart
            # (nobody writes 0.16 L of urine or 44 umol/L creatinine to two significant digits).
            if rounding_tolerance(f, alt, alt_decimals) <= 0.005 * abs(canonical):
                unit, decimals = alt, alt_decimals
        written_value = _fmt(from_canonical(f, canonical, unit), decimals)
        spellings = [s for s in vocab.UNIT_SPELLINGS[unit] if s or f.unit_for_missing() == unit]
        spelled = rng.choice(spellings or [" " + unit])
        label = self._label(name, unit)
        sep = rng.choice([" ", ": "]) if not self.terse else " "
        surface = f"{label}{sep}{written_value}{spelled}"
        return Written(surface, written_value, spelled.strip() or None,
                       round(to_canonical(f, written_value, spelled.strip() or None), 4))


# ------------------------------------------------------------------------------------------
# Building the text with offsets
# ------------------------------------------------------------------------------------------
class NoteBuilder:
    def __init__(self):
        self.parts: list[str] = []
        self.length = 0
        self.mentions: list[Mention] = []

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)

    def mention(self, m: Mention, surface: str) -> None:
        m.start, m.end, m.text = self.length, self.length + len(surface), surface
        self.mentions.append(m)
        self.add(surface)

    def text(self) -> str:
        return "".join(self.parts)


# ------------------------------------------------------------------------------------------
# Note styles
# ------------------------------------------------------------------------------------------
REFERENCE_RANGES = {"sodium_meq_l": "135-145", "creatinine_mg_dl": "0.6-1.2", "bun_mg_dl": "7-20",
                    "glucose_mg_dl": "70-99", "wbc_k_ul": "4.0-11.0", "albumin_g_dl": "3.5-5.0",
                    "bilirubin_mg_dl": "0.1-1.2"}


@dataclass
class _Context:
    schema: Schema
    plan: DayPlan
    seed: int
    pid: Any
    style: str
    admission: dt.date
    date_only: bool           # refer to days by calendar date only (day 3 must be worked out)
    date_format: str
    day_format: str
    alt_unit_rate: float
    derived_rate: float
    filler_per_day: int
    gold: dict[str, Written]  # the day-3 mention of each field, filled while rendering

    def date(self, day: int) -> str:
        return (self.admission + dt.timedelta(days=day - 1)).strftime(self.date_format)

    def day_ref(self, day: int) -> str:
        if self.date_only:
            return self.date(day)
        return self.day_format.format(d=day, date=self.date(day))

    def writer(self, day: int, terse: bool) -> MentionWriter:
        rng = _rng(self.seed, self.pid, "write", day)
        return MentionWriter(self.schema, rng, terse, self.alt_unit_rate, self.derived_rate)

    def fields_on(self, day: int, names: list[str]) -> list[tuple[str, float]]:
        out = [(n, self.plan.values[n][day]) for n in names if n in self.plan.values and day in self.plan.values[n]]
        _rng(self.seed, self.pid, "order", day, names[0]).shuffle(out)
        return out

    def fillers(self, day: int) -> list[str]:
        rng = _rng(self.seed, self.pid, "filler", day)
        pool = list(vocab.FILLER)
        rng.shuffle(pool)
        return [s.format(n=day, d=rng.randint(1, 9), g=rng.randint(2, 7) * 10) for s in pool[: self.filler_per_day]]


def _values(b: NoteBuilder, ctx: _Context, day: int, names: list[str], sep: str, terse: bool,
            ref_ranges: bool = False, empty: str = "not charted") -> int:
    """Write the day's values of `names` (or `empty`); returns how many were written."""
    w = ctx.writer(day, terse)
    items = ctx.fields_on(day, names)
    if not items:
        b.add(empty)
    for i, (name, canonical) in enumerate(items):
        if i:
            b.add(sep)
        written = w.write(name, canonical)
        b.mention(Mention(name, "day", day, written.value, written.unit, written.canonical), written.surface)
        if day == GOLD_DAY:
            ctx.gold[name] = written
        if ref_ranges and name in REFERENCE_RANGES and (written.unit or "").lower() in ("", "mg/dl", "meq/l", "g/dl") \
                and w.rng.random() < 0.3:
            b.add(f" (ref {REFERENCE_RANGES[name]})")
    return len(items)


def _outside_labs(b: NoteBuilder, ctx: _Context, terse: bool) -> None:
    """Values from before admission (outside hospital): distractors, recorded as day 0."""
    rng = _rng(ctx.seed, ctx.pid, "osh")
    names = [n for n in ("creatinine_mg_dl", "sodium_meq_l", "wbc_k_ul", "glucose_mg_dl") if n in ctx.schema.fields]
    chosen = [n for n in names if rng.random() < 0.5]
    if not chosen:
        return
    w = MentionWriter(ctx.schema, rng, terse, ctx.alt_unit_rate, 0.0)
    b.add(rng.choice(["Outside hospital labs: ", "OSH labs prior to transfer: ", "Labs at referring hospital: "]))
    for i, n in enumerate(chosen):
        if i:
            b.add(", ")
        center = ctx.plan.values[n].get(GOLD_DAY, vocab.TYPICAL[n])
        x = _perturb(ctx.schema[n], center, rng, ctx.plan.values[n].get(GOLD_DAY))
        written = w.write(n, x)
        b.mention(Mention(n, "distractor", 0, written.value, written.unit, written.canonical), written.surface)
    b.add(".\n")


def _home_glucose(b: NoteBuilder, ctx: _Context) -> None:
    if "glucose_mg_dl" not in ctx.schema.fields:
        return
    rng = _rng(ctx.seed, ctx.pid, "home-glucose")
    if rng.random() < 0.5:
        value = str(rng.randint(9, 30) * 10)
        surface = f"home glucometer {value}"
        b.add(rng.choice(["Per family, ", "Reports ", "Pre-admission: "]))
        b.mention(Mention("glucose_mg_dl", "distractor", 0, value, None, float(value)), surface)
        b.add(".\n")


def _demographics(b: NoteBuilder, ctx: _Context, facts: dict, short: bool) -> None:
    rng = _rng(ctx.seed, ctx.pid, "demo")
    sex = vocab.SEX_WORDS[facts["sex"]]
    age = str(facts["age"])
    if short:
        b.mention(Mention("age", "static", None, age, None, facts["age"]), age)
        b.mention(Mention("sex", "static", None, sex["short"], None, facts["sex"]), sex["short"])
    else:
        age_surface = rng.choice([f"{age}-year-old", f"{age} yo", f"{age} y/o"])
        b.mention(Mention("age", "static", None, age, None, facts["age"]), age_surface)
        b.add(" ")
        noun = rng.choice(sex["noun"])
        b.mention(Mention("sex", "static", None, noun, None, facts["sex"]), noun)


def _history(b: NoteBuilder, ctx: _Context, facts: dict, gold_static: dict) -> None:
    """Admission diagnosis, cancer, past medical history (problem list = the comorbidities)."""
    rng = _rng(ctx.seed, ctx.pid, "history")
    phrase = rng.choice(vocab.DISEASE_PHRASES[facts["disease_group"]])
    b.add(rng.choice(["admitted with ", "presenting with ", "transferred for "]))
    b.mention(Mention("disease_group", "static", None, phrase, None, facts["disease_group"]), phrase)
    gold_static["disease_group"] = phrase
    b.add(".\n")
    site = vocab.SITE_OF_GROUP.get(facts["disease_group"], rng.choice(vocab.CANCER_SITES))
    if facts["cancer"] != "no" or rng.random() < 0.4:
        ca = rng.choice(vocab.CANCER_PHRASES[facts["cancer"]]).format(site=site)
        b.add(rng.choice(["Oncologic history: ", "Cancer: ", "Onc hx: "]))
        b.mention(Mention("cancer", "static", None, ca, None, facts["cancer"]), ca)
        gold_static["cancer"] = ca
        b.add(".\n")
    items = list(facts["comorbidity_items"])
    b.add(rng.choice(["Past medical history: ", "PMH: ", "Comorbidities: ", "Problem list: "]))
    if not items:
        b.add(rng.choice(["none", "no chronic conditions", "unremarkable"]))
    for i, item in enumerate(items):
        if i:
            b.add(rng.choice(["; ", ", "]))
        b.mention(Mention("num_comorbidities", "static", None, item, None, 1), item)
    b.add(".\n")
    for flag, terms in (("diabetes", vocab.DIABETES_TERMS), ("dementia", vocab.DEMENTIA_TERMS)):
        if facts[flag] and not any(i in terms for i in items):
            # Flag set but no room in the comorbidity count (a few SUPPORT rows): say it outside the list.
            term = rng.choice(terms)
            b.add("Also noted: ")
            b.mention(Mention(flag, "static", None, term, None, True), term)
            gold_static[flag] = term
            b.add(".\n")
        elif facts[flag]:
            gold_static[flag] = next(i for i in items if i in terms)


def _render_flowsheet(b, ctx, facts, gold_static):
    b.add(f"ICU FLOWSHEET SUMMARY\nAdmit date: {ctx.date(1)}\nPt: ")
    _demographics(b, ctx, facts, short=False)
    b.add(", ")
    _history(b, ctx, facts, gold_static)
    _outside_labs(b, ctx, terse=True)
    for day in ctx.days:
        b.add(f"\n--- {ctx.day_ref(day)} ---\nVS: ")
        _values(b, ctx, day, vocab.VITALS, " | ", terse=True)
        b.add("\nLabs: ")
        _values(b, ctx, day, vocab.LABS, " | ", terse=True, ref_ranges=True)
        b.add("\nABG/vent: ")
        _values(b, ctx, day, vocab.GASES, ", ", terse=True)
        b.add("\nI/O: ")
        _values(b, ctx, day, vocab.OUTPUTS, "", terse=True)
        for s in ctx.fillers(day):
            b.add("\n* " + s)
        b.add("\n")


def _render_discharge(b, ctx, facts, gold_static):
    b.add(f"DISCHARGE SUMMARY\nAdmission date: {ctx.date(1)}\n\nHISTORY OF PRESENT ILLNESS: The patient is a ")
    _demographics(b, ctx, facts, short=False)
    b.add(" ")
    _history(b, ctx, facts, gold_static)
    _home_glucose(b, ctx)
    _outside_labs(b, ctx, terse=False)
    b.add("\nHOSPITAL COURSE:\n")
    for day in ctx.days:
        rng = _rng(ctx.seed, ctx.pid, "course", day)
        b.add(f"{rng.choice(['On', 'By'])} {ctx.day_ref(day)} the patient was {rng.choice(vocab.ASSESSMENTS)}, with ")
        _values(b, ctx, day, vocab.VITALS, ", ", terse=False)
        b.add(". Laboratory studies showed ")
        _values(b, ctx, day, vocab.LABS + vocab.GASES, ", ", terse=False)
        b.add("; ")
        _values(b, ctx, day, vocab.OUTPUTS, "", terse=False, empty="urine output not recorded")
        b.add(". " + " ".join(ctx.fillers(day)) + "\n")


def _render_signout(b, ctx, facts, gold_static):
    b.add(f"SIGN-OUT (adm {ctx.date(1)})\n")
    _demographics(b, ctx, facts, short=True)
    b.add(" ")
    _history(b, ctx, facts, gold_static)
    _outside_labs(b, ctx, terse=True)
    for day in ctx.days:
        b.add(f"{ctx.day_ref(day)}: ")
        _values(b, ctx, day, vocab.VITALS, " ", terse=True)
        b.add(" / ")
        _values(b, ctx, day, vocab.LABS + vocab.GASES, " ", terse=True)
        b.add(" / ")
        _values(b, ctx, day, vocab.OUTPUTS, "", terse=True)
        fill = ctx.fillers(day)
        b.add(("; " + " ".join(fill)) if fill else "")
        b.add("\n")


def _render_progress(b, ctx, facts, gold_static):
    b.add(f"ADMISSION H&P - date of admission {ctx.date(1)}\n")
    _demographics(b, ctx, facts, short=False)
    b.add(" ")
    _history(b, ctx, facts, gold_static)
    _home_glucose(b, ctx)
    _outside_labs(b, ctx, terse=False)
    for day in ctx.days:
        rng = _rng(ctx.seed, ctx.pid, "progress", day)
        fill = ctx.fillers(day)
        half = len(fill) // 2
        b.add(f"\nPROGRESS NOTE - {ctx.date(day)}\nS: {' '.join(fill[:half]) or 'No acute events overnight.'}\nO: ")
        _values(b, ctx, day, vocab.VITALS, ", ", terse=False)
        b.add("\nLabs: ")
        _values(b, ctx, day, vocab.LABS + vocab.GASES, ", ", terse=True, ref_ranges=True)
        b.add("\n")
        _values(b, ctx, day, vocab.OUTPUTS, "", terse=False)
        b.add(f"\nA/P: {rng.choice(vocab.ASSESSMENTS)}. {' '.join(fill[half:])}\n")


def _render_nursing(b, ctx, facts, gold_static):
    b.add(f"NURSING NOTES (admitted {ctx.date(1)})\nPatient is a ")
    _demographics(b, ctx, facts, short=False)
    b.add(" ")
    _history(b, ctx, facts, gold_static)
    _home_glucose(b, ctx)
    for day in ctx.days:
        rng = _rng(ctx.seed, ctx.pid, "nursing", day)
        d = ctx.date(day)
        b.add(f"\n{d} 0{rng.randint(5, 7)}00 labs resulted: ")
        _values(b, ctx, day, vocab.LABS + vocab.GASES, ", ", terse=True)
        b.add(f"\n{d} 0800 RN assessment: VS ")
        _values(b, ctx, day, vocab.VITALS, ", ", terse=True)
        b.add(". " + " ".join(ctx.fillers(day)))
        b.add(f"\n{d} 2300 24h totals: ")
        _values(b, ctx, day, vocab.OUTPUTS, "", terse=False)
        b.add("\n")


_RENDERERS: dict[str, Callable] = {"flowsheet": _render_flowsheet, "discharge": _render_discharge,
                                   "signout": _render_signout, "progress": _render_progress,
                                   "nursing": _render_nursing}
# Progress and nursing notes are dated, never numbered: day 3 must be counted from the admission date.
_DATE_ONLY_STYLES = ("progress", "nursing")
_DATE_FORMATS = ["%m/%d/%Y", "%m/%d", "%Y-%m-%d", "%b %d"]
_DAY_FORMATS = ["HD#{d} ({date})", "HD {d}", "hospital day {d}", "Hospital Day {d} - {date}", "Day {d} ({date})"]



# ------------------------------------------------------------------------------------------
# One patient
# ------------------------------------------------------------------------------------------
STATIC_FIELDS = ("age", "sex", "disease_group", "cancer", "diabetes", "dementia", "num_comorbidities")


def patient_facts(row: dict, schema: Schema, seed: int, pid: Any) -> tuple[dict, dict[str, float | None], list[str]]:
    """Static facts, day-3 canonical values (None = missing) and fields whose source was implausible."""
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
    day3: dict[str, float | None] = {}
    out_of_range: list[str] = []
    for f in schema:
        if not f.is_physiology:
            continue
        if f.name not in vocab.LABELS:
            raise RenderError(f"the SUPPORT2 renderer has no wording for field {f.name}")
        x = row.get(f.source)
        if _missing(x):
            day3[f.name] = None
            continue
        x = round(float(x), f.decimals)
        if not f.in_range(x):
            out_of_range.append(f.name)  # e.g. albumin 29 "g/dL": a unit slip in the source, not a value
            day3[f.name] = None
            continue
        day3[f.name] = x
    return facts, day3, out_of_range


def render_patient(row: dict, schema: Schema, style: str, seed: int, pid: Any, n_days: int = MIN_DAYS,
                   filler_per_day: int = 0, alt_unit_rate: float = 0.3, derived_rate: float = 0.3,
                   _planned: tuple | None = None) -> RenderedNote:
    if style not in _RENDERERS:
        raise RenderError(f"unknown note style {style!r}; known: {', '.join(STYLES)}")
    if not MIN_DAYS <= n_days <= MAX_DAYS:
        raise RenderError(f"n_days must be in [{MIN_DAYS}, {MAX_DAYS}]")
    facts, day3, out_of_range, plan = _planned or _plan(row, schema, seed, pid)
    rng = _rng(seed, pid, "note")
    admission = dt.date(2019, 1, 1) + dt.timedelta(days=rng.randrange(5 * 365))
    date_only = style in _DATE_ONLY_STYLES or rng.random() < 0.25
    ctx = _Context(schema=schema, plan=plan, seed=seed, pid=pid, style=style, admission=admission,
                   date_only=date_only, date_format=rng.choice(_DATE_FORMATS), day_format=rng.choice(_DAY_FORMATS),
                   alt_unit_rate=alt_unit_rate, derived_rate=derived_rate,
                   filler_per_day=min(filler_per_day, len(vocab.FILLER)), gold={})
    ctx.days = list(range(1, n_days + 1))
    b = NoteBuilder()
    gold_static: dict[str, str] = {}
    _RENDERERS[style](b, ctx, facts, gold_static)
    text = b.text()

    labels: dict[str, Any] = {}
    target: dict[str, Any] = {}
    for f in schema:
        if f.name == "num_comorbidities":
            labels[f.name] = len(facts["comorbidity_items"])
            target[f.name] = {"value": list(facts["comorbidity_items"])}
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
    facts, day3, out_of_range = patient_facts(row, schema, seed, pid)
    return facts, day3, out_of_range, plan_days(schema, day3, seed, pid)


def render_to_budget(row: dict, schema: Schema, style: str, seed: int, pid: Any, max_tokens: int,
                     count_tokens: Callable[[str], int], **kwargs) -> tuple[RenderedNote, int]:
    """The richest note whose token count stays within `max_tokens` (the minimal note if none does)."""
    planned = _plan(row, schema, seed, pid)

    def render(level: int) -> RenderedNote:
        return render_patient(row, schema, style, seed, pid, *LEVELS[level], _planned=planned, **kwargs)

    best = render(0)
    best_tokens = count_tokens(best.text)
    if best_tokens > max_tokens:
        return best, best_tokens
    # Galloping search: short budgets (the CPU default) never render the long levels at all.
    lo, step = 1, 1
    hi = len(LEVELS) - 1
    while lo <= hi:
        probe = min(lo + step - 1, hi)
        note = render(probe)
        n = count_tokens(note.text)
        if n > max_tokens:
            hi = probe - 1
            break
        best, best_tokens, lo, step = note, n, probe + 1, step * 2
    while lo <= hi:
        mid = (lo + hi) // 2
        note = render(mid)
        n = count_tokens(note.text)
        if n <= max_tokens:
            best, best_tokens, lo = note, n, mid + 1
        else:
            hi = mid - 1
    return best, best_tokens
