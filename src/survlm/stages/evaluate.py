"""DVC stage `evaluate`: extraction metrics per model and split, then the survival models on covariates from
gold labels, each model and the regex baseline -> metrics/evaluate.json, plot data, metrics/report.md.

Models compared on the same notes: dpo (the pipeline's model), dpo_abstain (the same answers, unsure values made
null; where infer calibrated them), sft, zero_shot, regex (rules, computed here).
Survival models are fit on the train split's gold covariates; the headline is C-index(dpo) - C-index(gold)
on the test notes that were extracted. The regex baseline and gold are also scored on the whole test split.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from ..artifacts import ArtifactError, load_prompt, note_of, read_jsonl, render_meta, write_json
from ..config import SurvivalParams
from ..predictions import MODELS
from .common import failing_on, stage_params

HEADLINE = ("field_accuracy", "fabrication_rate", "omission_rate", "last_value_rate", "first_value_rate",
            "json_valid_rate", "unit_errors", "grounding_failures")
CI_KEYS = ("field_accuracy", "fabrication_rate", "last_value_rate", "json_valid_rate")
KM_GRID_POINTS = 120


def _values(results) -> dict:
    return {name: (r.value if r.status == "ok" else None) for name, r in results.items()}


def load_model_results(pred_dir: Path, split: str, schema, records: dict[str, dict]) -> dict[str, dict]:
    """model -> {id: parsed results} for the notes that model answered (regex: every record)."""
    from ..baselines import regex_answer
    from ..extraction import parse_answer
    from ..predictions import prediction_path, read_rows, row_results

    out: dict[str, dict] = {}
    for model in MODELS:
        if model == "regex":
            continue
        path = prediction_path(pred_dir, model, split)
        if path.is_file():
            out[model] = {row["id"]: row_results(row) for row in read_rows(path) if row["id"] in records}
    out["regex"] = {i: parse_answer(regex_answer(schema, note_of(r)), schema, note_of(r)) for i, r in records.items()}
    return out


def extraction_metrics(schema, records: dict, meta: dict, results: dict[str, dict], ids: list[str],
                       boot: dict | None = None) -> dict:
    """score() per model on the same notes, with `ci95`: a percentile bootstrap over notes (`boot` params)."""
    from ..bootstrap import bootstrap_ci
    from ..metrics import score

    out = {}
    for model, res in results.items():
        if not all(i in res for i in ids):
            continue
        rows = [(records[i]["labels"], res[i], meta.get(i)) for i in ids]
        out[model] = score(schema, rows)
        if boot is not None:
            out[model]["ci95"] = bootstrap_ci(lambda idx: {k: v for k, v in score(schema, [rows[j] for j in idx]).items()
                                                           if k in CI_KEYS}, len(rows), **boot)
    return out


def survival_block(models, records: dict, results: dict[str, dict], ids: list[str], train_time,
                   boot: dict | None = None) -> dict:
    """Cox/RSF metrics per covariate source on the same notes; with `boot`, `ci95`: bootstrap intervals of the
    Cox Harrell C per source and of each source's paired gap to gold (same resampled patients)."""
    from ..survival import eval_times

    time = np.array([records[i]["time"] for i in ids], dtype=float)
    event = np.array([records[i]["event"] for i in ids], dtype=int)
    if len(ids) < 3 or event.sum() == 0:
        return {"notes": len(ids), "skipped": "too few notes or no events"}
    grid = eval_times(train_time, time)
    out: dict = {"notes": len(ids), "events": int(event.sum())}
    sources = {"gold": [records[i]["labels"] for i in ids]}
    sources.update({m: [_values(res[i]) for i in ids] for m, res in results.items() if all(i in res for i in ids)})
    for name, labels in sources.items():
        out[name] = models.evaluate(labels, time, event, grid)
    if boot is not None:
        out["ci95"] = cindex_ci(models, sources, time, event, boot)
    return out


def cindex_ci(models, sources: dict[str, list[dict]], time, event, boot: dict) -> dict:
    from ..bootstrap import bootstrap_ci
    from ..survival import harrell_c

    risks = {name: models.risks(labels)["cox"] for name, labels in sources.items()}

    def stats(idx):
        c = {name: harrell_c(time[idx], event[idx], r[idx]) for name, r in risks.items()}
        return {**{f"cindex_{n}": v for n, v in c.items()},
                **{f"cindex_gap_{n}": v - c["gold"] for n, v in c.items() if n != "gold"}}

    return bootstrap_ci(stats, len(time), **boot)


def refit_block(schema, records: dict, results: dict[str, dict], ids: list[str], params: SurvivalParams
                ) -> dict | None:
    """Cox refit on *extracted* covariates: 2-fold cross-fit on the extracted test notes, C-index per source."""
    if len(ids) < params.refit_min_notes:
        return None
    from ..survival import NoVariation, SurvivalModels, harrell_c

    rng = np.random.default_rng(params.seed)
    order = rng.permutation(len(ids))
    halves = [[ids[k] for k in order[: len(ids) // 2]], [ids[k] for k in order[len(ids) // 2:]]]
    sources = {"gold": {i: records[i]["labels"] for i in ids}}
    sources.update({m: {i: _values(res[i]) for i in ids} for m, res in results.items() if all(i in res for i in ids)})
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


def _ci_text(ci) -> str:
    return "" if not ci else f" (95 % CI {ci[0]} to {ci[1]})"


def report_md(ev: dict) -> str:
    lines = ["# survlm evaluation", ""]
    for split, by_model in ev["extraction_by_model"].items():
        lines += [f"## Extraction: {split} ({by_model.get('dpo', by_model.get('regex'))['notes']} notes)", "",
                  "| model | " + " | ".join(HEADLINE) + " |", "|---" * (len(HEADLINE) + 1) + "|"]
        for model, m in by_model.items():
            lines.append(f"| {model} | " + " | ".join(str(m[k]) for k in HEADLINE) + " |")
        lines.append("")
    for model in ("dpo", "sft"):  # the trained models: where their errors are decides the next fix
        m = ev["extraction_by_model"].get("test", {}).get(model)
        wrong = {name: tags for name, tags in (m or {}).get("per_field_errors", {}).items() if tags}
        if not wrong:
            continue
        lines += [f"## Errors by field: {model} on test", "", "| field | accuracy | error tags |", "|---|---|---|"]
        for name, tags in wrong.items():
            ranked = sorted(tags.items(), key=lambda kv: -kv[1])
            lines.append(f"| {name} | {m['per_field'][name]} | " + ", ".join(f"{t} {n}" for t, n in ranked) + " |")
        lines.append("")
    s = ev["survival"]
    lines += ["## Survival (models fit on train gold covariates)", "",
              f"Extracted test notes: {s['notes']}. Headline: C-index(DPO) - C-index(gold) = {s['cindex_gap_dpo']}"
              f"{_ci_text((s.get('ci95') or {}).get('cindex_gap_dpo'))}.",
              "", "| covariates | Cox Harrell C | Cox Uno C | Cox IBS | RSF Harrell C | RSF IBS |", "|---|---|---|---|---|---|"]
    for name, m in s.get("by_source", {}).items():
        if isinstance(m, dict):
            lines.append(f"| {name} | {m['cox_harrell']} | {m['cox_uno']} | {m['cox_ibs']} | {m['rsf_harrell']} | "
                         f"{m['rsf_ibs']} |")
    full = s.get("full_test", {})
    if full.get("by_source"):
        lines += ["", f"Whole test split ({full['notes']} notes): Cox C-index gold {full['by_source']['gold']['cox_harrell']}, "
                      f"regex {full['by_source']['regex']['cox_harrell']}."]
    lines += ["", "Accuracy: numbers within max(1 % relative, rounding); categories exact; null must be null.", ""]
    return "\n".join(lines)


def plot_rows(ev: dict) -> dict[str, list[dict]]:
    """Plot data from the metrics: field accuracy and error tags per (split, model, covariate).

    The schema field is called `covariate` here: DVC's plots reserve the key `field`."""
    acc, errs = [], []
    for split, by_model in ev["extraction_by_model"].items():
        for model, m in by_model.items():
            acc += [{"split": split, "model": model, "covariate": f, "accuracy": a} for f, a in m["per_field"].items()]
            errs += [{"split": split, "model": model, "covariate": f, "error": tag, "count": n}
                     for f, tags in m.get("per_field_errors", {}).items() for tag, n in tags.items()]
    return {"per_field_accuracy": acc, "field_errors": errs}


def km_rows(models, records: dict, cohorts: dict[str, tuple[list[str], dict[str, list[dict]]]]) -> list[dict]:
    """KM step curves by predicted-risk tertile: per cohort, every covariate source on the *same* patients
    (each source's Cox risk makes its own tertiles), with the 95 % band and the number at risk."""
    from ..survival import risk_group_km

    rows = []
    for cohort, (ids, sources) in cohorts.items():
        if len(ids) < 3:
            continue
        time = np.array([records[i]["time"] for i in ids], dtype=float)
        event = np.array([records[i]["event"] for i in ids], dtype=int)
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prepared", required=True, help="prepare's output dir")
    ap.add_argument("--predictions", required=True, help="infer's predictions dir")
    ap.add_argument("--metrics", required=True, help="the metrics JSON")
    ap.add_argument("--plots", required=True, help="plot data dir")
    ap.add_argument("--report", required=True, help="the Markdown report")
    args = ap.parse_args(argv)
    from ..survival import SurvivalModels

    params = stage_params("evaluate")
    boot = dataclasses.asdict(params.bootstrap)
    prepared, preds = Path(args.prepared), Path(args.predictions)
    with failing_on(ArtifactError):
        schema, _ = load_prompt(prepared)
    train = list(read_jsonl(prepared / "train.jsonl"))
    train_time = np.array([r["time"] for r in train], dtype=float)
    models = SurvivalModels(schema, [r["labels"] for r in train], train_time, [r["event"] for r in train],
                            params.survival)
    ev: dict = {"extraction_by_model": {}}
    km: list[dict] = []
    survival: dict = {}
    for split in ("test", "test_heldout"):
        records = {r["id"]: r for r in read_jsonl(prepared / f"{split}.jsonl")}
        meta = render_meta(prepared, set(records))
        results = load_model_results(preds, split, schema, records)
        extracted = [i for i in records if all(i in results[m] for m in results)]
        if not extracted:
            continue
        ev["extraction_by_model"][split] = extraction_metrics(schema, records, meta, results, extracted, boot)
        if split != "test":
            continue
        block = survival_block(models, records, results, extracted, train_time, boot)
        full_ids = list(records)
        full = survival_block(models, records, {"regex": results["regex"]}, full_ids, train_time, boot)

        def sources_of(b):
            return {k: v for k, v in b.items() if isinstance(v, dict) and k != "ci95"}

        survival = {"notes": block["notes"], "by_source": sources_of(block), "ci95": block.get("ci95"),
                    "full_test": {"notes": full["notes"], "by_source": sources_of(full), "ci95": full.get("ci95")},
                    "refit_on_extracted": refit_block(schema, records, results, extracted, params.survival)}
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
                                                 km_source: [_values(results[km_source][i]) for i in extracted]}),
            "whole test split": (full_ids, {"gold": [records[i]["labels"] for i in full_ids],
                                            "regex": [_values(results["regex"][i]) for i in full_ids]})})
        survival["km_extracted_source"] = km_source
    primary = ev["extraction_by_model"].get("test", {})
    main_model = "dpo" if "dpo" in primary else "regex"
    m = primary.get(main_model, {})
    ev["extraction"] = {"model": main_model, **{k: m.get(k) for k in HEADLINE + ("per_field", "mae", "errors",
                                                                                 "per_field_errors", "notes")}}
    held = ev["extraction_by_model"].get("test_heldout", {}).get(main_model)
    ev["extraction_heldout"] = None if held is None else {k: held.get(k) for k in HEADLINE + ("notes",)}
    ev["survival"] = survival
    write_json(args.metrics, ev)
    for name, rows in {**plot_rows(ev), "km_risk_groups": km}.items():
        write_json(Path(args.plots) / f"{name}.json", rows)
    Path(args.report).write_text(report_md(ev), encoding="utf-8")
    print(f"evaluate: test field accuracy ({main_model}) {m.get('field_accuracy')}; C-index gold "
          f"{survival.get('cindex_gold')} vs {main_model} {survival.get('cindex_' + main_model)}")


if __name__ == "__main__":
    main()
