"""Percentile bootstrap over notes: the uncertainty that a handful of test notes leaves on every headline number.

Notes are resampled with replacement; every statistic of one resample is computed on the same draw, so paired
differences (C-index with extracted vs gold covariates on the same patients) get their own interval. No torch.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np


def bootstrap_ci(stats: Callable[[np.ndarray], dict[str, float | None]], n: int, resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> dict[str, list[float] | None]:
    """`stats(index array) -> {name: value}` on `n` items -> {name: [low, high]} percentile interval.

    A statistic that is undefined on a resample (None or NaN: no comparable pair, no null gold field) is left
    out of that statistic's interval; with fewer than half of the resamples defined the interval is None."""
    if n < 2 or resamples < 1:
        return {k: None for k in stats(np.arange(n))}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        for k, v in stats(rng.integers(0, n, n)).items():
            draws.setdefault(k, [])
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                draws[k].append(float(v))
    tail = (1 - level) / 2 * 100
    return {k: ([round(float(np.percentile(v, tail)), 4), round(float(np.percentile(v, 100 - tail)), 4)]
                if len(v) >= resamples / 2 else None) for k, v in draws.items()}
