"""Which canonical value each physiology field takes on each hospital day."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from ...schema import Field, Schema
from .. import vocab
from .core import MAX_DAYS, MIN_DAYS, RenderError, _rng


def min_gap(f: Field, gold: float) -> float:
    """How far another day's value stays from the gold one: clearly beyond the scoring tolerance (1 %) even after
    each is rounded as written (a unit's rounding, or PaO2 in whole mmHg: writing.pao2_for)."""
    return max(0.02 * abs(gold), 3 * 10.0 ** -f.decimals)


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
        if avoid is None or abs(x - avoid) > min_gap(f, avoid):
            return x
    # Pathological center (e.g. at the edge of the range): step away deterministically.
    return round(avoid + (1 if avoid + 0.2 * abs(avoid) + 1 <= hi else -1) * max(0.2 * abs(avoid), 1), f.decimals)


@dataclass
class DayPlan:
    """Which canonical value each physiology field takes on each hospital day (None: not charted)."""
    values: dict[str, dict[int, float]]


def plan_days(schema: Schema, gold_values: dict[str, float | None], seed: int, pid: Any) -> DayPlan:
    """`gold_values`: each physiology field's value on its own day (`Field.day`), None where the source has none."""
    values: dict[str, dict[int, float]] = {}
    for f in schema:
        if not f.is_physiology:
            continue
        if not 1 < f.day < MIN_DAYS:
            raise RenderError(f"field {f.name}: day {f.day}: a rendered note needs a day before it and one after it "
                              f"within its first {MIN_DAYS} days")
        rng = _rng(seed, pid, "days", f.name)
        gold = gold_values.get(f.name)
        center = gold if gold is not None else float(vocab.TYPICAL[f.name])
        per_day: dict[int, float] = {}
        # Mandatory: at least one mention before and one after the gold day, so first/last mentions
        # are wrong answers; the gold day itself carries a value only when the source has one.
        before = rng.choice(range(1, f.day))
        after = f.day + 1
        for day in range(1, MAX_DAYS + 1):
            if day == f.day:
                if gold is not None:
                    per_day[day] = gold
                continue
            if day in (before, after) or rng.random() < 0.7:
                per_day[day] = _perturb(f, center, rng, gold)
        values[f.name] = per_day
    return DayPlan(values)
