"""Percentile bootstrap over notes: the uncertainty that a handful of test notes leaves on every headline number.

Notes are resampled with replacement; every statistic of one resample is computed on the same draw, so paired
differences (C-index with extracted vs gold covariates on the same patients) get their own interval. No torch.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np


def _draws(n: int, resamples: int, seed: int):
    """The resamples' note indices, drawn with replacement in one seeded order that every caller shares."""
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield rng.integers(0, n, n)


def resample_counts(n: int, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """(resamples, n): how often each of `n` items is drawn in each resample of `bootstrap_ci` (same seed, same
    draws), for statistics that take a resample as weights and are computed for every resample at once."""
    return np.array([np.bincount(idx, minlength=n) for idx in _draws(n, resamples, seed)]).reshape(resamples, n)


def percentile_intervals(values: dict[str, Iterable[float | None]], resamples: int, level: float = 0.95
                         ) -> dict[str, list[float] | None]:
    """{name: the statistic on each resample} -> {name: [low, high]}. A value that is undefined on a resample
    (None or NaN: no comparable pair, no null gold field) is left out of that statistic's interval; with fewer
    than half of the resamples defined the interval is None."""
    tail = (1 - level) / 2 * 100
    out = {}
    for k, vs in values.items():
        v = [float(x) for x in vs if x is not None and not (isinstance(x, float) and math.isnan(x))]
        out[k] = ([round(float(np.percentile(v, tail)), 4), round(float(np.percentile(v, 100 - tail)), 4)]
                  if len(v) >= resamples / 2 else None)
    return out


def bootstrap_ci(stats: Callable[[np.ndarray], dict[str, float | None]], n: int, resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> dict[str, list[float] | None]:
    """`stats(index array) -> {name: value}` on `n` items -> {name: [low, high]} percentile interval
    (`percentile_intervals`)."""
    if n < 2 or resamples < 1:
        return {k: None for k in stats(np.arange(n))}
    values: dict[str, list[float | None]] = {}
    for idx in _draws(n, resamples, seed):
        for k, v in stats(idx).items():
            values.setdefault(k, []).append(v)
    return percentile_intervals(values, resamples, level)
