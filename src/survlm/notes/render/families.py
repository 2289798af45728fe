"""Chart families written in their own words (survlm.notes.family_vocab), none of them numbering hospital days:

  labsheet   lab shorthand: BMP and CBC skeletons ("fishbones"), ABG as pH/PaCO2/PaO2 on FiO2, vital signs by
             position (T / P / R / BP), a few labelled values
  datagrid   a flowsheet export with one column per calendar date, fixed-width or pipe-delimited, the unit in
             each row's heading
  handoff    a terse cross-cover log, heavily abbreviated, one line per date
  narrative  a prose discharge summary, one paragraph per date

Days are named only by calendar date; the admission date is written so that hospital day 3 can be counted.
Unit spellings and decimal styles are drawn per mention (per row in datagrid). The invariants are those of
the original styles: every mention is recorded with its day, kind, value, unit and canonical value, and
the day-3 mention of each charted field is written exactly once.
"""
from __future__ import annotations

import random
from typing import Any

from ...schema import Schema
from ...units import from_canonical, rounding_tolerance, to_canonical
from .. import family_vocab as fv
from .. import vocab
from .builder import NoteBuilder
from .core import Mention, _fmt, _rng
from .days import _perturb
from .writing import Written, pao2_for

FAMILY_STYLES = fv.NEW_FAMILIES
VITALS, LABS, GASES, OUTPUTS = vocab.VITALS, vocab.LABS, vocab.GASES, vocab.OUTPUTS


# ------------------------------------------------------------------------------------------
# One value in a family's words
# ------------------------------------------------------------------------------------------
class FamilyWriter:
    """Formats a canonical value in one family's words: its labels, unit spellings and decimal style.

    Decimal styles: "plain" (the unit's usual decimals), "extra" (one more, a trailing zero on a canonical
    value: 1.20), "strip" (trailing zeros dropped: 38.0 -> 38). No thousands separators: the answer's value
    pattern (survlm.schema.NUMBER_PATTERN) has none, so a model could not copy one."""

    def __init__(self, schema: Schema, rng: random.Random, family: str, alt_unit_rate: float, derived_rate: float):
        self.schema, self.rng, self.family = schema, rng, family
        self.alt_unit_rate, self.derived_rate = alt_unit_rate, derived_rate
        self.labels, self.units = fv.LABELS[family], fv.UNITS[family]

    def label(self, name: str) -> str:
        return self.rng.choice(self.labels[name])

    def choose_unit(self, name: str, canonicals: list[float]) -> tuple[str, int]:
        """The unit and its decimals: the alternative unit at alt_unit_rate, where its rounding keeps every
        one of `canonicals` (the values it will write) apart from its neighbours."""
        f = self.schema[name]
        if name in fv.ALT_UNITS and fv.ALT_UNITS[name] in f.units and self.rng.random() < self.alt_unit_rate:
            alt = fv.ALT_UNITS[name]
            decimals = vocab.FIELD_UNIT_DECIMALS.get((name, alt), vocab.WRITE_DECIMALS.get(alt, f.decimals))
            if all(rounding_tolerance(f, alt, decimals) <= 0.005 * abs(c) for c in canonicals):
                return alt, decimals
        return f.unit, f.decimals

    def spell(self, name: str, unit: str) -> str:
        """One written spelling of `unit` ("" only where the field has that unit as its implicit one)."""
        f = self.schema[name]
        spellings = self.units.get((name, unit)) or self.units.get(unit) or [" " + unit]
        allowed = [s for s in spellings if s or f.unit_for_missing() == unit]
        return self.rng.choice(allowed or [" " + unit])

    def number(self, name: str, canonical: float, unit: str, decimals: int, style: str = "plain") -> str:
        x = from_canonical(self.schema[name], canonical, unit)
        if style == "extra" and decimals > 0:
            return _fmt(x, decimals + 1)
        text = _fmt(x, decimals)
        if style == "strip" and "." in text:
            text = text.rstrip("0").rstrip(".")
        return text

    def written(self, name: str, value: str, spelled: str, surface: str) -> Written:
        unit = spelled.strip() or None
        return Written(surface, value, unit, round(to_canonical(self.schema[name], value, unit), 4))

    def write(self, name: str, canonical: float, frame: str = "{label} {value}{unit}", style: str = "plain",
              label: str | None = None) -> Written:
        """A labelled value, e.g. "SCr 1.1" or "a sodium level of 138 mmol/L"."""
        unit, decimals = self.choose_unit(name, [canonical])
        value = self.number(name, canonical, unit, decimals, style)
        spelled = self.spell(name, unit)
        surface = frame.format(label=label if label is not None else self.label(name), value=value, unit=spelled)
        return self.written(name, value, spelled, surface.rstrip())  # a frame's space before an unwritten unit

    def bp(self, canonical: float) -> tuple[int, int] | None:
        """Systolic/diastolic whose MAP, (S + 2D) / 3, is exactly the canonical MAP; None when none fits."""
        if canonical < 30:
            return None
        m = int(round(canonical))
        for _ in range(20):
            diastolic = int(round(m - self.rng.uniform(25, 70) / 3))
            systolic = 3 * m - 2 * diastolic
            if 0 < diastolic < systolic <= 300:
                return systolic, diastolic
        return None

    def pf(self, canonical: float) -> tuple[int, str, str] | None:
        """PaO2, the FiO2 as it goes into the value ("40%", "0.40", "RA") and as written; None when none fits
        (writing.pao2_for)."""
        choices = [0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 1.0] + ([0.21] * 3 if canonical > 250 else [])
        self.rng.shuffle(choices)
        for fio2 in choices:
            if (pao2 := pao2_for(canonical, fio2)) is not None:
                if fio2 == 0.21:
                    return pao2, "RA", self.rng.choice(["RA", "room air"])
                if self.rng.random() < 0.6:
                    pct = f"{int(round(fio2 * 100))}%"
                    return pao2, pct, pct
                frac = f"{fio2:.2f}"
                return pao2, frac, frac
        return None


def _gcs(rng: random.Random, coma: float) -> str:
    e, v, m = fv.GCS_OF_COMA[min(fv.GCS_OF_COMA, key=lambda k: abs(k - coma))]
    return rng.choice([f"E{e}V{v}M{m}", f"E{e} V{v} M{m}", f"GCS {e + v + m} (E{e}V{v}M{m})"])


def _day_mention(b: NoteBuilder, ctx, name: str, day: int, w: Written) -> None:
    b.mention(Mention(name, "day", day, w.value, w.unit, w.canonical), w.surface)
    if day == ctx.schema[name].day:
        ctx.gold[name] = w


def _value(ctx, name: str, day: int) -> float | None:
    return ctx.plan.values.get(name, {}).get(day)


def _fillers(ctx, fam: str, day: int) -> list[str]:
    rng = _rng(ctx.seed, ctx.pid, fam, "filler", day)
    pool = list(fv.TEXT[fam]["filler"])
    rng.shuffle(pool)
    return [s.format(d=rng.randint(1, 9)) for s in pool[: ctx.filler_per_day]]


def _writer(ctx, fam: str, *purpose: Any) -> FamilyWriter:
    return FamilyWriter(ctx.schema, _rng(ctx.seed, ctx.pid, fam, "write", *purpose), fam, ctx.alt_unit_rate,
                        ctx.derived_rate)


# ------------------------------------------------------------------------------------------
# Patient description and history, in a family's words
# ------------------------------------------------------------------------------------------
def _demographics(b: NoteBuilder, ctx, fam: str, facts: dict) -> None:
    rng = _rng(ctx.seed, ctx.pid, fam, "demo")
    age, sex = str(facts["age"]), vocab.SEX_WORDS[facts["sex"]]
    age_m = Mention("age", "static", None, age, None, facts["age"])
    if fam == "labsheet":
        b.add("Age/Sex: ")
        b.mention(age_m, age)
        b.add("/")
        b.mention(Mention("sex", "static", None, sex["short"], None, facts["sex"]), sex["short"])
    elif fam == "datagrid":
        b.add("Age: ")
        b.mention(age_m, age)
        b.add(" y | Sex: ")
        word = facts["sex"].capitalize()
        b.mention(Mention("sex", "static", None, word, None, facts["sex"]), word)
    elif fam == "handoff":
        b.mention(age_m, age)
        b.mention(Mention("sex", "static", None, sex["short"], None, facts["sex"]), sex["short"])
    else:  # narrative
        noun = rng.choice(sex["noun"])
        b.add("The patient, a ")
        b.mention(Mention("sex", "static", None, noun, None, facts["sex"]), noun)
        b.add(" aged ")
        b.mention(age_m, age)
        b.add(",")


def _history(b: NoteBuilder, ctx, fam: str, facts: dict, gold_static: dict, sep: str) -> None:
    """Diagnosis, cancer, chronic problems (the comorbidity items as this family writes them), flags."""
    rng = _rng(ctx.seed, ctx.pid, fam, "history")
    words = fv.TEXT[fam]
    spell = (lambda s: fv.COMORBIDITY_ABBREV.get(s, s)) if fam == "handoff" else (lambda s: s)
    phrase = rng.choice(vocab.DISEASE_PHRASES[facts["disease_group"]])
    b.add(rng.choice(words["dx"]))
    b.mention(Mention("disease_group", "static", None, phrase, None, facts["disease_group"]), phrase)
    gold_static["disease_group"] = phrase
    b.add(sep)
    site = vocab.SITE_OF_GROUP.get(facts["disease_group"], rng.choice(vocab.CANCER_SITES))
    if facts["cancer"] != "no" or rng.random() < 0.4:
        ca = rng.choice(vocab.CANCER_PHRASES[facts["cancer"]]).format(site=site)
        b.add(rng.choice(words["onc"]))
        b.mention(Mention("cancer", "static", None, ca, None, facts["cancer"]), ca)
        gold_static["cancer"] = ca
        b.add(sep)
    items = [spell(i) for i in facts["comorbidity_items"]]
    b.add(rng.choice(words["pmh"]))
    if not items:
        b.add(rng.choice(words["pmh_none"]))
    for i, item in enumerate(items):
        if i:
            b.add(rng.choice(words["pmh_sep"]) if i < len(items) - 1 or fam != "narrative" else " and ")
        b.mention(Mention("num_comorbidities", "static", None, item, None, 1), item)
    gold_static["comorbidity_items"] = items
    b.add(sep)
    for flag, terms in (("diabetes", vocab.DIABETES_TERMS), ("dementia", vocab.DEMENTIA_TERMS)):
        listed = [spell(i) for i in facts["comorbidity_items"] if i in terms]
        if facts[flag] and not listed:
            term = spell(rng.choice(terms))
            b.add(words["flag"])
            b.mention(Mention(flag, "static", None, term, None, True), term)
            gold_static[flag] = term
            b.add(sep)
        elif facts[flag]:
            gold_static[flag] = listed[0]


def _prior(b: NoteBuilder, ctx, fam: str, frame: str, join: str, end: str) -> None:
    """Values from before admission, labelled in the family's words: distractors, recorded as day 0."""
    rng = _rng(ctx.seed, ctx.pid, fam, "prior")
    names = [n for n in ("creatinine_mg_dl", "sodium_meq_l", "wbc_k_ul", "glucose_mg_dl") if n in ctx.schema.fields]
    chosen = [n for n in names if rng.random() < 0.5]
    if not chosen:
        return
    w = FamilyWriter(ctx.schema, rng, fam, ctx.alt_unit_rate, 0.0)
    b.add(rng.choice(fv.TEXT[fam]["prior"]))
    for i, n in enumerate(chosen):
        if i:
            b.add(join)
        gold = ctx.plan.values[n].get(ctx.schema[n].day)
        x = _perturb(ctx.schema[n], gold if gold is not None else vocab.TYPICAL[n], rng, gold)
        written = w.write(n, x, frame=frame)
        b.mention(Mention(n, "distractor", 0, written.value, written.unit, written.canonical), written.surface)
    b.add(end)


def _home_glucose(b: NoteBuilder, ctx, fam: str, lead: str, end: str) -> None:
    words = fv.TEXT[fam]["home_glucose"]
    if "glucose_mg_dl" not in ctx.schema.fields or words is None:
        return
    rng = _rng(ctx.seed, ctx.pid, fam, "home-glucose")
    if rng.random() < 0.5:
        value = str(rng.randint(9, 30) * 10)
        b.add(lead)
        b.mention(Mention("glucose_mg_dl", "distractor", 0, value, None, float(value)), f"{words} {value}")
        b.add(end)


# ------------------------------------------------------------------------------------------
# labsheet: lab shorthand
# ------------------------------------------------------------------------------------------
def _slot(b: NoteBuilder, ctx, name: str, day: int, w: FamilyWriter, width: int = 0, style: str = "plain",
          unit: bool = False) -> None:
    """A value written by position (no label), or "--" when not charted; padded on the left to `width`."""
    x = _value(ctx, name, day)
    if x is None:
        b.add("--".rjust(width))
        return
    if unit:
        chosen, decimals = w.choose_unit(name, [x])
        value = w.number(name, x, chosen, decimals, style)
        spelled = w.spell(name, chosen)
    else:
        f = ctx.schema[name]
        value = w.number(name, x, f.unit, f.decimals, style)
        spelled = ""
    surface = value + spelled
    b.add(" " * max(0, width - len(surface)))
    _day_mention(b, ctx, name, day, w.written(name, value, spelled, surface))


def _labsheet_day(b: NoteBuilder, ctx, day: int) -> None:
    w = _writer(ctx, "labsheet", day)
    rng = w.rng
    # vital signs by position: T / P / R / BP; the BP slot holds S/D whose MAP is the day's MAP
    b.add("VS T/P/R/BP: ")
    _slot(b, ctx, "temperature_c", day, w, unit=True)
    b.add(" / ")
    _slot(b, ctx, "heart_rate_bpm", day, w)
    b.add(" / ")
    _slot(b, ctx, "resp_rate", day, w)
    b.add(" / ")
    mean = _value(ctx, "mean_bp_mmhg", day)
    split = None if mean is None else w.bp(mean)
    if split is None:
        b.add("--")
    else:
        value = f"{split[0]}/{split[1]}"
        _day_mention(b, ctx, "mean_bp_mmhg", day, w.written("mean_bp_mmhg", value, "", value))
    b.add(f" / SpO2 {rng.randint(86, 100)}%")
    if mean is not None and split is None:
        b.add("; ")
        _day_mention(b, ctx, "mean_bp_mmhg", day, w.write("mean_bp_mmhg", mean))
    coma = _value(ctx, "coma_score", day)
    if coma is not None:
        b.add("; ")
        _day_mention(b, ctx, "coma_score", day, w.write("coma_score", coma))
        if rng.random() < 0.6:
            b.add(f" / {_gcs(rng, coma)}")
    b.add("\n")
    # BMP skeleton: Na | Cl | BUN over K | HCO3 | Cr, glucose at the point
    bmp = ("sodium_meq_l", "bun_mg_dl", "creatinine_mg_dl", "glucose_mg_dl")
    cr_style = rng.choice(["plain", "extra"])
    if any(_value(ctx, n, day) is not None for n in bmp):
        b.add("   ")
        _slot(b, ctx, "sodium_meq_l", day, w, width=5)
        b.add(f" | {rng.randint(94, 112):>4} | ")
        _slot(b, ctx, "bun_mg_dl", day, w, width=5)
        b.add(" /\n  " + "-" * 24 + "< ")
        _slot(b, ctx, "glucose_mg_dl", day, w)
        b.add(f"\n   {rng.randint(30, 55) / 10:>5.1f} | {rng.randint(14, 32):>4} | ")
        _slot(b, ctx, "creatinine_mg_dl", day, w, width=5, style=cr_style)
        b.add(" \\\n")
    else:
        b.add("BMP: not resulted\n")
    # CBC skeleton: WBC > Hgb / Hct < Plt
    if _value(ctx, "wbc_k_ul", day) is not None:
        hgb = rng.randint(70, 140) / 10
        b.add(f"         {hgb:.1f} /\n  ")
        _slot(b, ctx, "wbc_k_ul", day, w, width=5, style=rng.choice(["plain", "extra"]))
        b.add(f" >-------< {rng.randint(60, 420)}\n         {3 * hgb + rng.uniform(-1, 1):.1f} \\\n")
    else:
        b.add("CBC: not sent\n")
    lft = [n for n in ("bilirubin_mg_dl", "albumin_g_dl") if _value(ctx, n, day) is not None]
    if lft:
        b.add("LFT: ")
        for i, n in enumerate(lft):
            if i:
                b.add(" | ")
            _day_mention(b, ctx, n, day, w.write(n, _value(ctx, n, day), style=rng.choice(["plain", "extra"])))
        b.add("\n")
    # ABG as pH/PaCO2/PaO2 on FiO2
    ph, pf = _value(ctx, "ph", day), _value(ctx, "pao2_fio2", day)
    pf_split = None if pf is None else w.pf(pf)
    if ph is None and pf is None:
        b.add("ABG: not drawn\n")
    elif pf_split is not None:
        b.add("ABG pH/PaCO2/PaO2: ")
        _slot(b, ctx, "ph", day, w)
        b.add(f"/{rng.randint(28, 62)}/")
        pao2, fio2_value, fio2_text = pf_split
        on = fio2_text if fio2_value == "RA" else rng.choice([f"FiO2 {fio2_text}", fio2_text])
        surface = f"{pao2} on {on}"
        _day_mention(b, ctx, "pao2_fio2", day, w.written("pao2_fio2", f"{pao2}/{fio2_value}", "", surface))
        b.add("\n")
    else:
        if ph is not None:
            b.add("ABG pH/PaCO2: ")
            _slot(b, ctx, "ph", day, w)
            b.add(f"/{rng.randint(28, 62)} (PaO2 not reported)")
        if pf is not None:
            b.add("; " if ph is not None else "")
            _day_mention(b, ctx, "pao2_fio2", day, w.write("pao2_fio2", pf))
        b.add("\n")
    urine = _value(ctx, "urine_ml_day", day)
    if urine is None:
        b.add("24h urine: not measured\n")
    else:
        _day_mention(b, ctx, "urine_ml_day", day, w.write("urine_ml_day", urine))
        b.add("\n")


def _render_labsheet(b, ctx, facts, gold_static):
    rng = _rng(ctx.seed, ctx.pid, "labsheet", "layout")
    words = fv.TEXT["labsheet"]
    b.add(rng.choice(words["title"]) + "\n" + rng.choice(words["admit"]).format(date=ctx.date(1)) + "    ")
    _demographics(b, ctx, "labsheet", facts)
    b.add("\n")
    _history(b, ctx, "labsheet", facts, gold_static, sep="\n")
    _labsheet_prior(b, ctx)
    heading = rng.choice(words["day_heading"])
    for day in ctx.days:
        b.add("\n" + heading.format(date=ctx.date(day)) + "\n")
        _labsheet_day(b, ctx, day)
        for s in _fillers(ctx, "labsheet", day):
            b.add("- " + s + "\n")


def _labsheet_prior(b: NoteBuilder, ctx) -> None:
    """Pre-admission chemistry as a linear skeleton, Na/K/Cl/HCO3/BUN/Cr<Glu (distractors, day 0)."""
    rng = _rng(ctx.seed, ctx.pid, "labsheet", "prior")
    if rng.random() < 0.4:
        return
    w = FamilyWriter(ctx.schema, rng, "labsheet", 0.0, 0.0)
    values = {}
    for n in ("sodium_meq_l", "bun_mg_dl", "creatinine_mg_dl", "glucose_mg_dl"):
        gold = ctx.plan.values[n].get(ctx.schema[n].day)
        values[n] = _perturb(ctx.schema[n], gold if gold is not None else vocab.TYPICAL[n], rng, gold)

    def put(n: str) -> None:
        f = ctx.schema[n]
        text = w.number(n, values[n], f.unit, f.decimals)
        b.mention(Mention(n, "distractor", 0, text, None, round(to_canonical(f, text, None), 4)), text)

    b.add(rng.choice(fv.TEXT["labsheet"]["prior"]))
    put("sodium_meq_l")
    b.add(f"/{rng.randint(30, 55) / 10:.1f}/{rng.randint(94, 112)}/{rng.randint(14, 32)}/")
    put("bun_mg_dl")
    b.add("/")
    put("creatinine_mg_dl")
    b.add("<")
    put("glucose_mg_dl")
    b.add("\n")


# ------------------------------------------------------------------------------------------
# datagrid: one column per calendar date
# ------------------------------------------------------------------------------------------
def _render_datagrid(b, ctx, facts, gold_static):
    rng = _rng(ctx.seed, ctx.pid, "datagrid", "layout")
    words = fv.TEXT["datagrid"]
    pipes = rng.random() < 0.5
    per_block = rng.choice([5, 7, 10])
    empty = rng.choice(["", "--", "."])
    b.add(rng.choice(words["title"]) + "\n" + rng.choice(words["admit"]).format(date=ctx.date(1)) + " | ")
    _demographics(b, ctx, "datagrid", facts)
    b.add("\n")
    _history(b, ctx, "datagrid", facts, gold_static, sep="\n")
    _prior(b, ctx, "datagrid", frame="{label} {value} {unit}", join="; ", end="\n")  # row-heading spellings
    # one unit spelling and decimal style per row, as a flowsheet row heading carries them
    rows = []
    for name in [n for n in VITALS + LABS + GASES + OUTPUTS if n in ctx.plan.values]:
        w = _writer(ctx, "datagrid", "row", name)
        unit, decimals = w.choose_unit(name, list(ctx.plan.values[name].values()))
        spelled = w.spell(name, unit).strip()
        style = w.rng.choice(["plain", "plain", "extra"])
        head = w.label(name) + (f" ({spelled})" if spelled else "")
        rows.append((name, w, unit, decimals, spelled, style, head))
    width = max(len(r[-1]) for r in rows) + 2
    for start in range(0, len(ctx.days), per_block):
        block = ctx.days[start:start + per_block]
        b.add("\n")
        dates = [ctx.date(d) for d in block]
        if pipes:
            b.add("| Parameter | " + " | ".join(dates) + " |\n")
            b.add("|---|" + "---|" * len(block) + "\n")
        else:
            b.add("Parameter".ljust(width) + "".join(d.rjust(11) for d in dates) + "\n")
        for name, w, unit, decimals, spelled, style, head in rows:
            b.add(f"| {head} |" if pipes else head.ljust(width))
            for day in block:
                x = _value(ctx, name, day)
                text = empty if x is None else w.number(name, x, unit, decimals, style)
                if pipes:
                    b.add(" ")
                else:
                    b.add(" " * (11 - len(text)))
                if x is None:
                    b.add(text)
                else:
                    _day_mention(b, ctx, name, day, w.written(name, text, spelled, text))
                if pipes:
                    b.add(" |")
            b.add("\n")
        notes = [(d, s) for d in block for s in _fillers(ctx, "datagrid", d)]
        if notes:
            b.add("Comments:\n" + "".join(f"  {ctx.date(d)}: {s}\n" for d, s in notes))


# ------------------------------------------------------------------------------------------
# handoff: terse cross-cover log
# ------------------------------------------------------------------------------------------
def _handoff_item(b: NoteBuilder, ctx, w: FamilyWriter, name: str, day: int, x: float) -> None:
    rng = w.rng
    if name == "mean_bp_mmhg" and rng.random() < ctx.derived_rate and (split := w.bp(x)) is not None:
        value = f"{split[0]}/{split[1]}"
        _day_mention(b, ctx, name, day, w.written(name, value, "", f"pressures {value}"))
        return
    if name == "pao2_fio2" and rng.random() < ctx.derived_rate and (pf := w.pf(x)) is not None:
        pao2, fio2_value, fio2_text = pf
        _day_mention(b, ctx, name, day, w.written(name, f"{pao2}/{fio2_value}", "", f"pO2 {pao2} on {fio2_text}"))
        return
    frame = rng.choice(["{label} {value}{unit}", "{label} {value}{unit}", "{label}:{value}{unit}"])
    _day_mention(b, ctx, name, day, w.write(name, x, frame=frame, style="strip"))
    if name == "coma_score" and rng.random() < 0.5:
        b.add(f" ({_gcs(rng, x)})")


def _render_handoff(b, ctx, facts, gold_static):
    rng = _rng(ctx.seed, ctx.pid, "handoff", "layout")
    words = fv.TEXT["handoff"]
    b.add(rng.choice(words["title"]) + " | " + rng.choice(words["admit"]).format(date=ctx.date(1)) + "\n")
    _demographics(b, ctx, "handoff", facts)
    b.add(" ")
    _history(b, ctx, "handoff", facts, gold_static, sep=". ")
    b.add("\n")
    _prior(b, ctx, "handoff", frame="{label} {value}{unit}", join=", ", end=". ")
    _home_glucose(b, ctx, "handoff", lead="", end=".")
    b.add("\n")
    heading = rng.choice(words["day_heading"])
    for day in ctx.days:
        w = _writer(ctx, "handoff", day)
        b.add(heading.format(date=ctx.date(day), time=f"{w.rng.choice([19, 21, 23, 1, 3, 5]):02d}00") + " ")
        groups = [VITALS, LABS + GASES, OUTPUTS]
        for g, names in enumerate(groups):
            if g:
                b.add(" // ")
            items = [(n, _value(ctx, n, day)) for n in names if _value(ctx, n, day) is not None]
            w.rng.shuffle(items)
            if not items:
                b.add(w.rng.choice(["nil", "n/a", "none"]))
            for i, (n, x) in enumerate(items):
                if i:
                    b.add(", ")
                _handoff_item(b, ctx, w, n, day, x)
        fill = _fillers(ctx, "handoff", day)
        b.add((" ; " + " ".join(fill)) if fill else "")
        b.add("\n")


# ------------------------------------------------------------------------------------------
# narrative: a discharge summary, one paragraph per date
# ------------------------------------------------------------------------------------------
def _narrative_list(b: NoteBuilder, ctx, w: FamilyWriter, names: list[str], day: int) -> int:
    items = [(n, _value(ctx, n, day)) for n in names if _value(ctx, n, day) is not None]
    for i, (n, x) in enumerate(items):
        if i:
            b.add(" and " if i == len(items) - 1 else ", ")
        if n == "pao2_fio2" and w.rng.random() < ctx.derived_rate and (pf := w.pf(x)) is not None:
            pao2, fio2_value, fio2_text = pf
            air = "room air" if fio2_value == "RA" else f"{fio2_text} inspired oxygen"
            _day_mention(b, ctx, n, day, w.written(n, f"{pao2}/{fio2_value}", "",
                                                  f"an arterial oxygen tension of {pao2} on {air}"))
            continue
        if n == "mean_bp_mmhg" and w.rng.random() < ctx.derived_rate and (split := w.bp(x)) is not None:
            value = f"{split[0]}/{split[1]}"
            _day_mention(b, ctx, n, day, w.written(n, value, "", f"a cuff pressure of {value}"))
            continue
        _day_mention(b, ctx, n, day, w.write(n, x, style=w.rng.choice(["plain", "extra"])))
        if n == "coma_score" and w.rng.random() < 0.5:
            b.add(f" (Glasgow {_gcs(w.rng, x)})")
    return len(items)


def _render_narrative(b, ctx, facts, gold_static):
    rng = _rng(ctx.seed, ctx.pid, "narrative", "layout")
    words = fv.TEXT["narrative"]
    b.add(rng.choice(words["title"]) + "\n" + rng.choice(words["admit"]).format(date=ctx.date(1)) + "\n\n")
    _demographics(b, ctx, "narrative", facts)
    b.add(" is summarised here. ")
    _history(b, ctx, "narrative", facts, gold_static, sep=". ")
    _prior(b, ctx, "narrative", frame="{label} {value}{unit}", join=", ", end=". ")
    _home_glucose(b, ctx, "narrative", lead="The family described ", end=". ")
    heading = rng.choice(words["day_heading"])
    for day in ctx.days:
        w = _writer(ctx, "narrative", day)
        b.add("\n\n" + heading.format(date=ctx.date(day)) + " ")
        b.add(w.rng.choice(["the bedside record shows ", "observations included ", "we documented "]))
        if not _narrative_list(b, ctx, w, VITALS, day):
            b.add("no observations")
        b.add(". " + w.rng.choice(["Blood tests gave ", "The laboratory reported ", "Bloodwork showed "]))
        if not _narrative_list(b, ctx, w, LABS + GASES, day):
            b.add("nothing new")
        b.add(". ")
        if _value(ctx, "urine_ml_day", day) is None:
            b.add("Urine was not collected")
        else:
            b.add("We also recorded ")
            _narrative_list(b, ctx, w, OUTPUTS, day)
        b.add(". " + " ".join(_fillers(ctx, "narrative", day)))


RENDERERS = {"labsheet": _render_labsheet, "datagrid": _render_datagrid, "handoff": _render_handoff,
             "narrative": _render_narrative}
DATE_FORMATS = {fam: fv.TEXT[fam]["date_formats"] for fam in FAMILY_STYLES}
