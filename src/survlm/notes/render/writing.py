"""Writing one value: a canonical value as a note writes it (label, unit, derived form)."""
from __future__ import annotations

import random
from dataclasses import dataclass

from ...schema import Schema
from ...units import from_canonical, rounding_tolerance, to_canonical
from .. import vocab
from .core import _fmt


ALT_UNIT = {"temperature_c": "°F", "wbc_k_ul": "cells/µL", "albumin_g_dl": "g/L", "bilirubin_mg_dl": "µmol/L",
            "creatinine_mg_dl": "µmol/L", "sodium_meq_l": "mmol/L", "glucose_mg_dl": "mmol/L",
            "bun_mg_dl": "mmol/L", "urine_ml_day": "L/24 h"}


def pao2_for(canonical: float, fio2: float) -> int | None:
    """The whole-mmHg PaO2 that writes the P/F ratio `canonical` at this FiO2; None when it is implausible or its
    rounding moves the ratio by more than 0.5, so that rounding PaO2 never brings another day's ratio within the
    scoring tolerance of the day-3 one (days are planned days.min_gap apart)."""
    pao2 = int(round(canonical * fio2))
    return pao2 if 25 <= pao2 <= 600 and abs(pao2 / fio2 - canonical) <= 0.5 else None


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
                if (pao2 := pao2_for(canonical, fio2)) is not None:
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
