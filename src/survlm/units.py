"""Units and derived values: turn what a note says into the schema's canonical value.

Pure Python. The model copies "value" and "unit" as written; everything numeric happens here.
"""
from __future__ import annotations

import re

from .schema import Field

# Written spellings -> the unit keys used in schema files. Keys are compared after `_norm_unit`.
_ALIASES = {
    "°c": "°C", "c": "°C", "degc": "°C", "celsius": "°C", "ºc": "°C",
    "°f": "°F", "f": "°F", "degf": "°F", "fahrenheit": "°F", "ºf": "°F",
    "10^3/ul": "10^3/µL", "x10^3/ul": "10^3/µL", "k/ul": "10^3/µL", "10^9/l": "10^3/µL", "x10^9/l": "10^3/µL",
    "k/mm3": "10^3/µL", "thou/ul": "10^3/µL", "10*3/ul": "10^3/µL", "x10e3/ul": "10^3/µL",
    "cells/ul": "cells/µL", "/ul": "cells/µL", "/mm3": "cells/µL", "cells/mm3": "cells/µL",
    "bpm": "/min", "/min": "/min", "beats/min": "/min", "breaths/min": "/min", "min-1": "/min", "perminute": "/min", "beatsperminute": "/min",
    "mmhg": "mmHg",
    "meq/l": "mEq/L", "mmol/l": "mmol/L",
    "g/dl": "g/dL", "gm/dl": "g/dL", "g/l": "g/L",
    "mg/dl": "mg/dL", "mg%": "mg/dL", "umol/l": "µmol/L", "micromol/l": "µmol/L",
    "ml": "mL/24 h", "ml/24h": "mL/24 h", "ml/day": "mL/24 h", "ml/d": "mL/24 h", "cc": "mL/24 h", "cc/24h": "mL/24 h",
    "l": "L/24 h", "l/24h": "L/24 h", "l/day": "L/24 h", "l/d": "L/24 h",
    "years": "years", "yrs": "years", "yo": "years", "y": "years", "year": "years", "y/o": "years", "year-old": "years", "-year-old": "years", "yearsold": "years",
    "score": "score", "": "",
    # spellings of the chart families in survlm.notes.family_vocab (lab exports, sign-outs, prose)
    "degreescelsius": "°C", "degreesc": "°C", "degfahrenheit": "°F", "degreesfahrenheit": "°F", "degreesf": "°F",
    "k/mcl": "10^3/µL", "x10(9)/l": "10^3/µL", "10(9)/l": "10^3/µL", "thousand/ul": "10^3/µL",
    "cellsperul": "cells/µL", "br/min": "/min", "breaths/minute": "/min", "beats/minute": "/min",
    "gm/l": "g/L", "gramsperdl": "g/dL", "gramsperlitre": "g/L", "gramsperliter": "g/L", "mgperdl": "mg/dL",
    "mcmol/l": "µmol/L", "micromol/litre": "µmol/L", "micromol/liter": "µmol/L", "meqperlitre": "mEq/L",
    "meqperliter": "mEq/L", "mmolperlitre": "mmol/L", "mmolperliter": "mmol/L", "mmofmercury": "mmHg",
    "ml/24hr": "mL/24 h", "ml/24hrs": "mL/24 h", "cc/24hr": "mL/24 h", "millilitres": "mL/24 h",
    "milliliters": "mL/24 h", "l/24hr": "L/24 h", "l/24hrs": "L/24 h", "litres": "L/24 h", "liters": "L/24 h",
}

_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")


class UnitError(ValueError):
    """A written unit this field does not accept (status `unknown_unit`)."""


class ValueFormatError(ValueError):
    """A written value that is not a number/derived form this field accepts."""


def _norm_unit(text: str) -> str:
    return text.strip().lower().replace("μ", "u").replace("µ", "u").replace(" ", "")


def resolve_unit(f: Field, written: str | None) -> str:
    """Map a written unit to one of the field's unit keys, or raise UnitError."""
    if written is None or not str(written).strip():
        unit = f.unit_for_missing()
        if unit is None:
            raise UnitError(f"{f.name}: no unit written and the field has several")
        return unit
    key = _norm_unit(str(written))
    for unit in f.units:  # the schema's own keys win (user schemas may add units we have no alias for)
        if _norm_unit(unit) == key:
            return unit
    unit = _ALIASES.get(key)
    if unit is None or unit not in f.units:
        raise UnitError(f"{f.name}: unit {written!r} is not accepted")
    return unit


def parse_number(text: str) -> float:
    t = str(text).strip().replace(",", "")
    if not _NUMBER.match(t):
        raise ValueFormatError(f"not a number: {text!r}")
    return float(t)


def mean_arterial_pressure(systolic: float, diastolic: float) -> float:
    """MAP from a cuff pressure: (S + 2D) / 3."""
    if systolic < diastolic:
        raise ValueFormatError("systolic below diastolic")
    return (systolic + 2.0 * diastolic) / 3.0


def parse_fio2(text: str) -> float:
    """FiO2 as a fraction from '40%', '0.4', '40' or 'RA' (room air = 0.21)."""
    t = str(text).strip().upper().replace(" ", "")
    if t in ("RA", "ROOMAIR"):
        return 0.21
    pct = t.endswith("%")
    x = parse_number(t.rstrip("%"))
    if pct or x > 1.0:
        x = x / 100.0
    if not 0.21 <= x <= 1.0:
        raise ValueFormatError(f"FiO2 {text!r} is outside 21-100%")
    return x


def to_canonical(f: Field, value: str, unit: str | None) -> float:
    """Canonical value of a number field from the value and unit as written."""
    text = str(value).strip()
    if "/" in text:
        left, right = text.split("/", 1)
        if f.derived == "blood_pressure":
            canonical_unit = resolve_unit(f, unit)
            return f.units[canonical_unit].to_canonical(mean_arterial_pressure(parse_number(left), parse_number(right)))
        if f.derived == "pf_ratio":
            # The unit written next to a PaO2/FiO2 pair is that of PaO2 (mmHg); FiO2 is unitless.
            canonical_unit = resolve_unit(f, unit)
            return f.units[canonical_unit].to_canonical(parse_number(left) / parse_fio2(right))
        raise ValueFormatError(f"{f.name}: {value!r} is not a single number")
    return f.units[resolve_unit(f, unit)].to_canonical(parse_number(text))


def from_canonical(f: Field, canonical: float, unit: str) -> float:
    """Inverse conversion, used by the note renderer to write a value in another unit."""
    return f.units[unit].from_canonical(canonical)


def rounding_tolerance(f: Field, unit: str, decimals: int) -> float:
    """Half a unit in the last written digit, expressed in canonical units."""
    conv = f.units[unit]
    return 0.5 * 10.0 ** (-decimals) * abs(conv.factor / conv.divide)


def values_match(predicted: float, gold: float, tolerance: float = 0.0) -> bool:
    """Numeric agreement used everywhere: within max(1% relative, the rounding tolerance)."""
    return abs(predicted - gold) <= max(0.01 * abs(gold), tolerance) + 1e-9
