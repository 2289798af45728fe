"""What the evaluate stage computes, from records and parsed answers (no files, no torch): extraction metrics per
model and split with bootstrap intervals, then the survival models on covariates from gold labels and from each
extractor (survlm.survival).

Models compared on the same notes: dpo (the pipeline's model), dpo_abstain (the same answers, unsure and refused
values made null; where infer calibrated them), sft, zero_shot, regex (rules). Survival models are fit on the train
split's gold covariates; the headline is C-index(dpo) - C-index(gold) on the test notes that were extracted. The
regex baseline and gold are also scored on the whole test split.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .config import EvaluateParams
from .metrics import HEADLINE
from .predictions import HELDOUT_SPLIT, TEST_SPLIT
from .schema import Schema

CI_KEYS = ("field_accuracy", "fabrication_rate", "last_value_rate", "json_valid_rate")


def extraction_metrics(schema: Schema, records: dict, meta: dict, results: dict[str, dict], ids: list[str],
                       boot: dict | None = None) -> dict:
    """score() per model on the same notes, with `ci95`: a percentile bootstrap over notes (`boot` params)."""
    from .bootstrap import bootstrap_ci
    from .metrics import note_tally, summed, tally_metrics

    out = {}
    for model, res in results.items():
        if not all(i in res for i in ids):
            continue
        tallies = [note_tally(schema, records[i]["labels"], res[i], meta.get(i)) for i in ids]
        out[model] = tally_metrics(schema, summed(tallies))
        if boot is not None:
            # a resample's counts are its notes' tallies added up: exact integers, so its rates are score()'s
            keys = sorted({k for t in tallies for k in t}, key=repr)
            counts = np.array([[t.get(k, 0) for k in keys] for t in tallies], dtype=float)

            def resample(idx):
                drawn = tally_metrics(schema, dict(zip(keys, counts[idx].sum(0).tolist())))
                return {k: v for k, v in drawn.items() if k in CI_KEYS}

            out[model]["ci95"] = bootstrap_ci(resample, len(tallies), **boot)
    return out


def evaluate(schema: Schema, train: list[dict], splits: dict[str, tuple[dict, dict, dict[str, dict]]],
             params: EvaluateParams) -> tuple[dict, list[dict]]:
    """-> (the metrics, the KM plot rows). `splits`: split -> (records by id, render metadata by id, model ->
    {id: parsed results}); each split is scored on the notes every model answered, the survival comparison runs
    on the test split."""
    from .survival import SurvivalModels, compare_on_test

    boot = dataclasses.asdict(params.bootstrap)
    train_time = np.array([r["time"] for r in train], dtype=float)
    models = SurvivalModels(schema, [r["labels"] for r in train], train_time, [r["event"] for r in train],
                            params.survival)
    ev: dict = {"extraction_by_model": {}}
    km: list[dict] = []
    survival: dict = {}
    for split, (records, meta, results) in splits.items():
        extracted = [i for i in records if all(i in results[m] for m in results)]
        if not extracted:
            continue
        ev["extraction_by_model"][split] = extraction_metrics(schema, records, meta, results, extracted, boot)
        if split == TEST_SPLIT:
            survival, km = compare_on_test(models, schema, records, results, extracted, train_time, boot,
                                           params.survival)
    primary = ev["extraction_by_model"].get(TEST_SPLIT, {})
    main_model = "dpo" if "dpo" in primary else "regex"
    m = primary.get(main_model, {})
    ev["extraction"] = {"model": main_model, **{k: m.get(k) for k in HEADLINE + ("per_field", "mae", "errors",
                                                                                 "per_field_errors", "notes")}}
    held = ev["extraction_by_model"].get(HELDOUT_SPLIT, {}).get(main_model)
    ev["extraction_heldout"] = None if held is None else {k: held.get(k) for k in HEADLINE + ("notes",)}
    ev["survival"] = survival
    return ev, km
