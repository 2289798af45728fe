"""The five original note styles (flowsheet, discharge, signout, progress, nursing) and the helpers they share."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable

from ...schema import Schema
from .. import vocab
from .builder import NoteBuilder
from .core import Mention, _rng
from .days import DayPlan, _perturb
from .writing import MentionWriter, Written


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
    gold: dict[str, Written]  # each field's mention on its day, filled while rendering

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
        if day == ctx.schema[name].day:
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
        gold = ctx.plan.values[n].get(ctx.schema[n].day)
        x = _perturb(ctx.schema[n], gold if gold is not None else vocab.TYPICAL[n], rng, gold)
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
