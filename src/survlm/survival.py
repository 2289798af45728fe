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


# anchor rows x patients compared at once: bounds the pair matrices of a large cohort (about 32 MiB each)
_PAIR_BLOCK = 1 << 22


def harrell_c_weighted(time, event, risks: dict[str, Any], weights, tied_tol: float = 1e-8) -> dict[str, np.ndarray]:
    """Harrell's C of each risk under each row of `weights` (how many times each patient counts: ones for the
    cohort itself, a bootstrap resample's draw counts), as scikit-survival's `concordance_index_censored`
    computes it on the drawn patients: a pair is comparable when the earlier time is an event (or both times
    are equal and only the other is censored), the higher risk should fail first, risks within `tied_tol`
    count 1/2. A patient drawn twice makes no pair with itself, so a resample's sums are the weighted pair
    sums, and every sum is an exact multiple of 1/2. NaN where no pair is comparable or a risk is not finite.

    -> {name: array with one C per weights row}."""
    time, event = np.asarray(time, dtype=float), np.asarray(event).astype(bool)
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    risks = {name: np.asarray(r, dtype=float) for name, r in risks.items()}
    finite = {name: r for name, r in risks.items() if np.isfinite(r).all()}
    num = {name: np.zeros(len(w)) if name in finite else np.full(len(w), np.nan) for name in risks}
    den = np.zeros(len(w))
    anchors = np.flatnonzero(event)
    step = max(1, _PAIR_BLOCK // max(len(time), 1))
    for at in range(0, len(anchors), step):
        a = anchors[at:at + step]
        comparable = (time[None, :] > time[a, None]) | ((time[None, :] == time[a, None]) & ~event[None, :])
        wa = w[:, a].T                                     # (anchors, rows)
        den += (wa * (comparable.astype(float) @ w.T)).sum(0)
        for name, r in finite.items():
            diff = r[None, :] - r[a, None]
            score = np.where(np.abs(diff) <= tied_tol, 0.5, (diff < 0).astype(float)) * comparable
            num[name] += (wa * (score @ w.T)).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {name: c / den for name, c in num.items()}


def harrell_c(time, event, risk) -> float:
    """Harrell's C of one risk on the cohort (`harrell_c_weighted`); NaN when no pair is comparable."""
    return float(harrell_c_weighted(time, event, {"risk": risk}, np.ones(len(np.asarray(time))))["risk"][0])


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


# ---------------------------------------------------------------- gold vs extracted covariates

KM_GRID_POINTS = 120


def extracted_covariates(results: dict) -> dict[str, Any]:
    """An extractor's parsed answer (field -> FieldResult) as covariates: the value where it is ok, else missing."""
    return {name: (r.value if r.status == "ok" else None) for name, r in results.items()}


def _outcomes(records: dict, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([records[i]["time"] for i in ids], dtype=float),
            np.array([records[i]["event"] for i in ids], dtype=int))


def _sources(records: dict, results: dict[str, dict], ids: list[str]) -> dict[str, list[dict]]:
    """Covariates per source on `ids`: gold labels, then every extractor that answered all of them."""
    sources = {"gold": [records[i]["labels"] for i in ids]}
    sources.update({m: [extracted_covariates(res[i]) for i in ids] for m, res in results.items()
                    if all(i in res for i in ids)})
    return sources


def survival_block(models: SurvivalModels, records: dict, results: dict[str, dict], ids: list[str], train_time,
                   boot: dict | None = None) -> dict:
    """Cox/RSF metrics per covariate source on the same notes; with `boot`, `ci95`: bootstrap intervals of the
    Cox Harrell C per source and of each source's paired gap to gold (same resampled patients)."""
    time, event = _outcomes(records, ids)
    if len(ids) < 3 or event.sum() == 0:
        return {"notes": len(ids), "skipped": "too few notes or no events"}
    grid = eval_times(train_time, time)
    out: dict = {"notes": len(ids), "events": int(event.sum())}
    sources = _sources(records, results, ids)
    for name, labels in sources.items():
        out[name] = models.evaluate(labels, time, event, grid)
    if boot is not None:
        out["ci95"] = cindex_ci(models, sources, time, event, boot)
    return out


def cindex_ci(models: SurvivalModels, sources: dict[str, list[dict]], time, event, boot: dict) -> dict:
    """Bootstrap intervals of the Cox Harrell C per source and of its paired gap to gold, every resample at once
    (`harrell_c_weighted` on the resamples' draw counts: the draws of `bootstrap_ci` with the same seed)."""
    from .bootstrap import percentile_intervals, resample_counts

    risks = {name: models.risks(labels)["cox"] for name, labels in sources.items()}
    c = harrell_c_weighted(time, event, risks, resample_counts(len(time), **boot))
    values = {**{f"cindex_{n}": v for n, v in c.items()},
              **{f"cindex_gap_{n}": v - c["gold"] for n, v in c.items() if n != "gold"}}
    return percentile_intervals(values, boot["resamples"])


def refit_block(schema: Schema, records: dict, results: dict[str, dict], ids: list[str], params: SurvivalParams
                ) -> dict | None:
    """Cox refit on *extracted* covariates: 2-fold cross-fit on the extracted test notes, C-index per source."""
    if len(ids) < params.refit_min_notes:
        return None
    import dataclasses

    rng = np.random.default_rng(params.seed)
    order = rng.permutation(len(ids))
    halves = [[ids[k] for k in order[: len(ids) // 2]], [ids[k] for k in order[len(ids) // 2:]]]
    sources = {name: dict(zip(ids, labels)) for name, labels in _sources(records, results, ids).items()}
    out = {}
    for name, labels in sources.items():
        cs = []
        for a, b in ((0, 1), (1, 0)):
            try:
                fit = SurvivalModels(schema, [labels[i] for i in halves[a]], [records[i]["time"] for i in halves[a]],
                                     [records[i]["event"] for i in halves[a]],
                                     dataclasses.replace(params, rsf_trees=10))
                risk = fit.risks([labels[i] for i in halves[b]])["cox"]
            except NoVariation:
                risk = np.zeros(len(halves[b]))   # nothing to rank by: every pair is a tie (C = 0.5)
            cs.append(harrell_c([records[i]["time"] for i in halves[b]], [records[i]["event"] for i in halves[b]], risk))
        out[f"cindex_{name}"] = round(float(np.mean(cs)), 4)
    return out


def km_rows(models: SurvivalModels, records: dict, cohorts: dict[str, tuple[list[str], dict[str, list[dict]]]]
            ) -> list[dict]:
    """KM step curves by predicted-risk tertile: per cohort, every covariate source on the *same* patients
    (each source's Cox risk makes its own tertiles), with the 95 % band and the number at risk."""
    rows = []
    for cohort, (ids, sources) in cohorts.items():
        if len(ids) < 3:
            continue
        time, event = _outcomes(records, ids)
        end = float(np.quantile(time, 0.95))
        grid = np.linspace(0.0, end, KM_GRID_POINTS)
        if len(ids) <= KM_GRID_POINTS:   # few patients: every event time, so each step sits where it happened
            grid = np.union1d(grid, time[(event == 1) & (time <= end)])
        ticks = set(np.linspace(0, len(grid) - 1, 6).round().astype(int).tolist())
        label = f"{cohort}: {' vs '.join(sources)} ({len(ids)} patients)"
        for source, labels in sources.items():
            km = risk_group_km(models.risks(labels)["cox"], time, event, grid)
            for group, curve in km.items():
                rows += [{"cohort": label, "source": source, "risk_group": group, "time": round(float(t), 1),
                          "survival": round(float(curve["survival"][j]), 4), "lower": round(float(curve["lower"][j]), 4),
                          "upper": round(float(curve["upper"][j]), 4), "at_risk": int(curve["at_risk"][j]),
                          "tick": j in ticks} for j, t in enumerate(grid)]
    return rows


def compare_on_test(models: SurvivalModels, schema: Schema, records: dict, results: dict[str, dict],
                    extracted: list[str], train_time, boot: dict, params: SurvivalParams) -> tuple[dict, list[dict]]:
    """The survival comparison on the test split -> (metrics, KM plot rows).

    On the `extracted` notes (those every model answered): each source's Cox/RSF metrics, bootstrap intervals,
    the Cox refit on extracted covariates and the headline C-index(dpo) - C-index(gold). On the whole split: gold
    against the regex baseline (rules answer every note)."""
    from .predictions import MODELS

    block = survival_block(models, records, results, extracted, train_time, boot)
    full_ids = list(records)
    full = survival_block(models, records, {"regex": results["regex"]}, full_ids, train_time, boot)

    def sources_of(b):
        return {k: v for k, v in b.items() if isinstance(v, dict) and k != "ci95"}

    survival = {"notes": block["notes"], "by_source": sources_of(block), "ci95": block.get("ci95"),
                "full_test": {"notes": full["notes"], "by_source": sources_of(full), "ci95": full.get("ci95")},
                "refit_on_extracted": refit_block(schema, records, results, extracted, params)}
    src = survival["by_source"]
    for name in ("gold",) + MODELS:
        survival[f"cindex_{name}"] = src.get(name, {}).get("cox_harrell")
        survival[f"cindex_uno_{name}"] = src.get(name, {}).get("cox_uno")
        survival[f"ibs_{name}"] = src.get(name, {}).get("cox_ibs")
    gold_c, dpo_c = survival["cindex_gold"], survival["cindex_dpo"]
    survival["cindex_gap_dpo"] = None if gold_c is None or dpo_c is None else round(dpo_c - gold_c, 4)
    # KM curves: gold vs the main extractor on the notes it answered; gold vs regex on the whole split
    km_source = "dpo" if "dpo" in results else "regex"
    km = km_rows(models, records, {
        "extracted test notes": (extracted, {"gold": [records[i]["labels"] for i in extracted],
                                             km_source: [extracted_covariates(results[km_source][i])
                                                         for i in extracted]}),
        "whole test split": (full_ids, {"gold": [records[i]["labels"] for i in full_ids],
                                        "regex": [extracted_covariates(results["regex"][i]) for i in full_ids]})})
    survival["km_extracted_source"] = km_source
    return survival, km
