"""Survival models on extracted covariates: does extraction error change what the survival model says?

Covariates are the schema's fields, encoded numerically (categories one-hot against the first category).
Missing values are imputed as in SUPPORT: the published "normal" values for the labs where missing means
normal, the train split's median for everything else. Models are fit on the train split's *gold*
covariates; test covariates come from gold labels or from an extractor, so the C-index gap isolates the
extraction error. No torch here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import SurvivalParams
from .schema import Schema

# SUPPORT's documented imputation values for physiology where a missing lab means "normal".
SUPPORT_NORMALS = {"albumin_g_dl": 3.5, "pao2_fio2": 333.3, "bilirubin_mg_dl": 1.01, "creatinine_mg_dl": 1.01,
                   "bun_mg_dl": 6.51, "wbc_k_ul": 9.0, "urine_ml_day": 2502.0}


class NoVariation(ValueError):
    pass


@dataclass
class Encoder:
    schema: Schema
    medians: dict[str, float]
    columns: list[str]

    @classmethod
    def fit(cls, schema: Schema, rows: list[dict]) -> "Encoder":
        enc = cls(schema, {}, [])
        raw = enc._raw(rows)
        for name in raw[0] if raw else []:
            vals = [r[name] for r in raw if r[name] is not None and not np.isnan(r[name])]
            enc.medians[name] = float(np.median(vals)) if vals else 0.0
        enc.columns = list(raw[0]) if raw else []
        return enc

    def _raw(self, rows: list[dict]) -> list[dict[str, float | None]]:
        out = []
        for labels in rows:
            r: dict[str, float | None] = {}
            for f in self.schema:
                v = labels.get(f.name)
                if f.type == "category":
                    for c in f.categories[1:]:
                        r[f"{f.name}={c}"] = None if v is None else float(v == c)
                elif f.type == "bool":
                    r[f.name] = None if v is None else float(bool(v))
                else:
                    r[f.name] = None if v is None else float(v)
            out.append(r)
        return out

    def transform(self, rows: list[dict]) -> np.ndarray:
        raw = self._raw(rows)
        X = np.empty((len(raw), len(self.columns)))
        for i, r in enumerate(raw):
            for j, c in enumerate(self.columns):
                v = r.get(c)
                if v is None or np.isnan(v):
                    v = SUPPORT_NORMALS.get(c, self.medians[c])
                X[i, j] = v
        return X


def harrell_c(time, event, risk) -> float:
    """Harrell's C (scikit-survival's `concordance_index_censored`): over comparable pairs, the share where the
    one that failed first has the higher risk; risk ties count 1/2. NaN when no pair is comparable."""
    from sksurv.metrics import concordance_index_censored

    time, event, risk = (np.asarray(a, dtype=float) for a in (time, event, risk))
    try:
        return float(concordance_index_censored(event.astype(bool), time, risk)[0])
    except (ValueError, ZeroDivisionError):   # every row censored, or no comparable pair
        return float("nan")


def structured(time, event):
    from sksurv.util import Surv

    return Surv.from_arrays(event=np.asarray(event, dtype=bool), time=np.asarray(time, dtype=float))


class SurvivalModels:
    """Cox PH (lifelines) and a random survival forest (scikit-survival), fit once on train gold covariates."""

    def __init__(self, schema: Schema, train_labels: list[dict], time, event, params: SurvivalParams):
        import pandas as pd
        from lifelines import CoxPHFitter
        from sksurv.ensemble import RandomSurvivalForest

        self.encoder = Encoder.fit(schema, train_labels)
        X = self.encoder.transform(train_labels)
        # standardised (one penalty fits every column); constant columns carry no information and are dropped
        self.keep = X.std(0) > 1e-8
        if not self.keep.any():
            raise NoVariation("no covariate varies across the fitting rows (e.g. an extractor that answered null)")
        self.columns = [c for c, k in zip(self.encoder.columns, self.keep) if k]
        X = X[:, self.keep]
        self.mean, self.std = X.mean(0), X.std(0)
        Xs = (X - self.mean) / self.std
        self.time, self.event = np.asarray(time, dtype=float), np.asarray(event, dtype=int)
        df = pd.DataFrame(Xs, columns=self.columns).assign(T=self.time, E=self.event)
        self.cox = CoxPHFitter(penalizer=params.cox_penalizer).fit(df, "T", "E")
        self.rsf = RandomSurvivalForest(n_estimators=params.rsf_trees, min_samples_leaf=params.rsf_min_leaf,
                                        max_features="sqrt", n_jobs=params.n_jobs, random_state=params.seed)
        self.rsf.fit(Xs, structured(self.time, self.event))
        self.y_train = structured(self.time, self.event)

    def _x(self, labels: list[dict]):
        import pandas as pd

        Xs = (self.encoder.transform(labels)[:, self.keep] - self.mean) / self.std
        return Xs, pd.DataFrame(Xs, columns=self.columns)

    def risks(self, labels: list[dict]) -> dict[str, np.ndarray]:
        Xs, df = self._x(labels)
        return {"cox": np.asarray(self.cox.predict_partial_hazard(df)).ravel(), "rsf": self.rsf.predict(Xs)}

    def evaluate(self, labels: list[dict], time, event, eval_times: np.ndarray) -> dict[str, Any]:
        """C-index (Harrell, Uno) and integrated Brier score for both models on one covariate source."""
        from sksurv.metrics import concordance_index_ipcw, integrated_brier_score

        time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=int)
        y_test = structured(time, event)
        Xs, df = self._x(labels)
        risks = self.risks(labels)
        out: dict[str, Any] = {}
        tau = float(eval_times.max())
        cox_surv = self.cox.predict_survival_function(df, times=eval_times).to_numpy().T
        rsf_surv = np.vstack([fn(eval_times) for fn in self.rsf.predict_survival_function(Xs)])
        for name, surv in (("cox", cox_surv), ("rsf", rsf_surv)):
            r = risks[name]
            out[f"{name}_harrell"] = round(harrell_c(time, event, r), 4)
            try:
                out[f"{name}_uno"] = round(float(concordance_index_ipcw(self.y_train, y_test, r, tau=tau)[0]), 4)
            except ValueError:
                out[f"{name}_uno"] = None
            try:
                out[f"{name}_ibs"] = round(float(integrated_brier_score(self.y_train, y_test, surv, eval_times)), 4)
            except ValueError:
                out[f"{name}_ibs"] = None
        return out


def eval_times(train_time, test_time, n: int = 20) -> np.ndarray:
    """Evaluation grid for Brier/Uno: test-time quantiles 10-80 %, inside the train follow-up."""
    test_time = np.asarray(test_time, dtype=float)
    grid = np.unique(np.quantile(test_time, np.linspace(0.1, 0.8, n)))
    return grid[(grid > test_time.min()) & (grid < min(test_time.max(), np.max(train_time)))]


def risk_group_km(risk, time, event, grid) -> dict[str, dict[str, np.ndarray]]:
    """Kaplan-Meier survival of the low/middle/high tertiles of predicted risk on a shared time grid: per group
    the survival, its 95 % confidence band (lifelines' exponential Greenwood) and the number still at risk."""
    from lifelines import KaplanMeierFitter

    risk, time, event = np.asarray(risk, dtype=float), np.asarray(time, dtype=float), np.asarray(event, dtype=int)
    grid = np.asarray(grid, dtype=float)
    groups = np.digitize(risk, np.quantile(risk, [1 / 3, 2 / 3]))
    out = {}
    for g, label in enumerate(("low", "middle", "high")):
        mask = groups == g
        if mask.sum():
            km = KaplanMeierFitter().fit(time[mask], event[mask])
            band = km.confidence_interval_survival_function_
            # the band is indexed by the fitted timeline: read it as a step function at the grid times
            at = np.searchsorted(band.index.to_numpy(dtype=float), grid, side="right") - 1
            lower, upper = (np.where(at >= 0, band.iloc[np.clip(at, 0, None), k].to_numpy(dtype=float), 1.0)
                            for k in (0, 1))
            out[label] = {"survival": np.asarray(km.survival_function_at_times(grid), dtype=float),
                          "lower": lower, "upper": upper,
                          "at_risk": np.array([(time[mask] >= t).sum() for t in grid], dtype=int)}
    return out
