"""Survival metrics against the reference libraries, and the SUPPORT imputation rule."""
import numpy as np
import pytest

from survlm.config import SurvivalParams
from survlm.survival import (SUPPORT_NORMALS, Encoder, SurvivalModels, eval_times, harrell_c, harrell_c_weighted,
                             risk_group_km)


@pytest.fixture(scope="module")
def rossi():
    from lifelines.datasets import load_rossi

    return load_rossi()


def test_harrell_c_matches_lifelines_and_sksurv(rossi):
    from lifelines import CoxPHFitter
    from lifelines.utils import concordance_index
    from sksurv.metrics import concordance_index_censored

    cph = CoxPHFitter().fit(rossi, "week", "arrest")
    risk = np.asarray(cph.predict_partial_hazard(rossi)).ravel()
    ours = harrell_c(rossi["week"], rossi["arrest"], risk)
    assert ours == pytest.approx(concordance_index(rossi["week"], -risk, rossi["arrest"]), abs=1e-12)
    assert ours == pytest.approx(concordance_index_censored(rossi["arrest"].astype(bool), rossi["week"], risk)[0],
                                 abs=1e-12)
    tied = np.round(risk, 1)                                  # with risk ties, still equal to sksurv
    assert harrell_c(rossi["week"], rossi["arrest"], tied) == pytest.approx(
        concordance_index_censored(rossi["arrest"].astype(bool), rossi["week"], tied)[0], abs=1e-12)
    assert harrell_c(rossi["week"], rossi["arrest"], -risk) == pytest.approx(1 - ours, abs=1e-3)


def test_weighted_c_equals_sksurv_on_each_bootstrap_resample(monkeypatch):
    """Every resample at once from draw counts, in pair blocks: bit for bit scikit-survival's C on the drawn
    patients, with tied times (events and censored at one time), tied risks and patients drawn twice."""
    from sksurv.metrics import concordance_index_censored

    from survlm import survival
    from survlm.bootstrap import _draws, resample_counts

    rng = np.random.default_rng(1)
    n = 120
    time, event = rng.integers(1, 30, n).astype(float), rng.random(n) < 0.6
    risks = {"tied": np.round(rng.normal(size=n), 1), "smooth": rng.normal(size=n)}
    monkeypatch.setattr(survival, "_PAIR_BLOCK", 7 * n)       # several anchor blocks
    c = harrell_c_weighted(time, event, risks, resample_counts(n, 40, seed=5))
    for k, idx in enumerate(_draws(n, 40, 5)):
        for name, r in risks.items():
            assert c[name][k] == concordance_index_censored(event[idx], time[idx], r[idx])[0]
    assert len(set(c["tied"].tolist())) > 30                  # the resamples differ
    no_pair = harrell_c_weighted(time, np.zeros(n, bool), risks, np.ones(n))
    assert np.isnan(no_pair["tied"]).all()                    # every patient censored
    assert np.isnan(harrell_c(time, event, np.r_[np.inf, risks["smooth"][1:]]))


def test_imputation_uses_support_normals_then_train_median(schema):
    rows = [{"age": 50, "albumin_g_dl": 2.0, "sodium_meq_l": 130.0}, {"age": 70, "albumin_g_dl": 3.0,
                                                                       "sodium_meq_l": 140.0}]
    enc = Encoder.fit(schema, rows)
    X = enc.transform([{"age": None, "albumin_g_dl": None, "sodium_meq_l": None}])
    col = {c: X[0, i] for i, c in enumerate(enc.columns)}
    assert col["albumin_g_dl"] == SUPPORT_NORMALS["albumin_g_dl"]   # missing lab = normal, not the median 2.5
    assert col["sodium_meq_l"] == 135.0 and col["age"] == 60.0      # no SUPPORT normal: train median


def test_models_rank_risk_and_degrade_with_noise(schema):
    rng = np.random.default_rng(0)
    n = 400
    age = rng.uniform(20, 90, n)
    labels = [{"age": float(a), "sex": "male" if i % 2 else "female", "creatinine_mg_dl": float(rng.uniform(0.5, 3))}
              for i, a in enumerate(age)]
    time = rng.exponential(2000 / np.exp((age - 50) / 15))
    event = (rng.uniform(size=n) < 0.8).astype(int)
    m = SurvivalModels(schema, labels[:300], time[:300], event[:300], SurvivalParams(rsf_trees=20, n_jobs=1))
    grid = eval_times(time[:300], time[300:])
    good = m.evaluate(labels[300:], time[300:], event[300:], grid)
    noisy = [dict(x, age=float(rng.uniform(20, 90))) for x in labels[300:]]
    bad = m.evaluate(noisy, time[300:], event[300:], grid)
    assert good["cox_harrell"] > 0.65 and good["cox_harrell"] - bad["cox_harrell"] > 0.1
    assert 0 < good["cox_ibs"] < bad["cox_ibs"] < 0.5
    km = risk_group_km(m.risks(labels[300:])["cox"], time[300:], event[300:], np.array([0.0, 500.0]))
    assert set(km) == {"low", "middle", "high"} and km["low"]["survival"][1] > km["high"]["survival"][1]
    assert sum(c["at_risk"][0] for c in km.values()) == 100
    for c in km.values():
        assert c["at_risk"][1] < c["at_risk"][0] and c["lower"][1] <= c["survival"][1] <= c["upper"][1]
    assert km["high"]["lower"][1] < km["high"]["survival"][1] < km["high"]["upper"][1]   # events: a real band
