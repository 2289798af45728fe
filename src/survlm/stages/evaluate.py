"""DVC stage `evaluate`: extraction metrics per model and split, then the survival models on covariates from
gold labels, each model and the regex baseline -> metrics/evaluate.json, plot data, metrics/report.md.

Models compared on the same notes: dpo (the pipeline's model), sft, zero_shot, regex (rules, computed here).
Survival models are fit on the train split's gold covariates; the headline is C-index(dpo) - C-index(gold)
on the test notes that were extracted. The regex baseline and gold are also scored on the whole test split.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .common import load_params, load_prompt, note_of, read_jsonl, render_meta, write_json

MODELS = ("dpo", "sft", "zero_shot", "regex")
HEADLINE = ("field_accuracy", "fabrication_rate", "omission_rate", "last_value_rate", "first_value_rate",
            "json_valid_rate", "unit_errors", "grounding_failures")


def _values(results) -> dict:
    return {name: (r.value if r.status == "ok" else None) for name, r in results.items()}


def load_model_results(pred_dir: Path, split: str, schema, records: dict[str, dict]) -> dict[str, dict]:
    """model -> {id: parsed results} for the notes that model answered (regex: every record)."""
    from ..baselines import regex_answer
    from ..extraction import parse_answer
    from ..modeling.extractor import read_rows, row_results
    from .infer import prediction_path

    out: dict[str, dict] = {}
    for model in MODELS[:-1]:
        path = prediction_path(pred_dir, model, split)
        if path.is_file():
            out[model] = {row["id"]: row_results(row) for row in read_rows(path) if row["id"] in records}
    out["regex"] = {i: parse_answer(regex_answer(schema, note_of(r)), schema, note_of(r)) for i, r in records.items()}
    return out


def extraction_metrics(schema, records: dict, meta: dict, results: dict[str, dict], ids: list[str]) -> dict:
    from ..metrics import score

    return {model: score(schema, [(records[i]["labels"], res[i], meta.get(i)) for i in ids])
            for model, res in results.items() if all(i in res for i in ids)}


def survival_block(models, records: dict, results: dict[str, dict], ids: list[str], train_time) -> dict:
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
    return out


def refit_block(schema, records: dict, results: dict[str, dict], ids: list[str], params: dict) -> dict | None:
    """Cox refit on *extracted* covariates: 2-fold cross-fit on the extracted test notes, C-index per source."""
    if len(ids) < int(params.get("refit_min_notes", 40)):
        return None
    from ..survival import NoVariation, SurvivalModels, harrell_c

    rng = np.random.default_rng(int(params.get("seed", 0)))
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
                                     [records[i]["event"] for i in halves[a]], {**params, "rsf_trees": 10})
                risk = fit.risks([labels[i] for i in halves[b]])["cox"]
            except NoVariation:
                risk = np.zeros(len(halves[b]))   # nothing to rank by: every pair is a tie (C = 0.5)
            cs.append(harrell_c([records[i]["time"] for i in halves[b]], [records[i]["event"] for i in halves[b]], risk))
        out[f"cindex_{name}"] = round(float(np.mean(cs)), 4)
    return out


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
              f"Extracted test notes: {s['notes']}. Headline: C-index(DPO) - C-index(gold) = {s['cindex_gap_dpo']}.",
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--predictions", default="data/predictions")
    ap.add_argument("--metrics", default="metrics/evaluate.json")
    ap.add_argument("--plots", default="metrics/plots")
    ap.add_argument("--report", default="metrics/report.md")
    args = ap.parse_args(argv)
    from ..survival import SurvivalModels, risk_tertile_km

    params = load_params("evaluate")
    prepared, preds = Path(args.prepared), Path(args.predictions)
    schema, _ = load_prompt(prepared)
    train = list(read_jsonl(prepared / "train.jsonl"))
    train_time = np.array([r["time"] for r in train], dtype=float)
    models = SurvivalModels(schema, [r["labels"] for r in train], train_time, [r["event"] for r in train],
                            params.get("survival", {}))
    ev: dict = {"extraction_by_model": {}}
    per_field_rows, km_rows = [], []
    survival: dict = {}
    for split in ("test", "test_heldout"):
        records = {r["id"]: r for r in read_jsonl(prepared / f"{split}.jsonl")}
        meta = render_meta(prepared, set(records))
        results = load_model_results(preds, split, schema, records)
        extracted = [i for i in records if all(i in results[m] for m in results)]
        if not extracted:
            continue
        by_model = extraction_metrics(schema, records, meta, results, extracted)
        ev["extraction_by_model"][split] = by_model
        for model, m in by_model.items():
            per_field_rows += [{"split": split, "model": model, "field": f, "accuracy": a}
                               for f, a in m["per_field"].items()]
        if split != "test":
            continue
        block = survival_block(models, records, results, extracted, train_time)
        full_ids = list(records)
        full = survival_block(models, records, {"regex": results["regex"]}, full_ids, train_time)
        survival = {"notes": block["notes"], "by_source": {k: v for k, v in block.items() if isinstance(v, dict)},
                    "full_test": {"notes": full["notes"], "by_source": {k: v for k, v in full.items()
                                                                         if isinstance(v, dict)}},
                    "refit_on_extracted": refit_block(schema, records, results, extracted, params.get("survival", {}))}
        src = survival["by_source"]
        for name in ("gold",) + MODELS:
            survival[f"cindex_{name}"] = src.get(name, {}).get("cox_harrell")
            survival[f"cindex_uno_{name}"] = src.get(name, {}).get("cox_uno")
            survival[f"ibs_{name}"] = src.get(name, {}).get("cox_ibs")
        gold_c, dpo_c = survival["cindex_gold"], survival["cindex_dpo"]
        survival["cindex_gap_dpo"] = None if gold_c is None or dpo_c is None else round(dpo_c - gold_c, 4)
        # KM by risk tertile on every test note: gold covariates vs the main extractor's (notes it answered)
        km_source = "dpo" if "dpo" in results else "regex"
        grid = np.linspace(0, float(np.quantile([r["time"] for r in records.values()], 0.95)), 60)
        curves = {}
        for name in ("gold", "extracted"):
            ids = full_ids if name == "gold" else [i for i in full_ids if i in results[km_source]]
            labels = [records[i]["labels"] if name == "gold" else _values(results[km_source][i]) for i in ids]
            if len(ids) >= 3:
                km = risk_tertile_km(models.risks(labels)["cox"], [records[i]["time"] for i in ids],
                                     [records[i]["event"] for i in ids], grid)
                curves.update({f"{name}_{k}": v for k, v in km.items()})
        km_rows = [{"time": round(float(t), 1), **{k: round(float(v[j]), 4) for k, v in curves.items()}}
                   for j, t in enumerate(grid)]
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
    write_json(Path(args.plots) / "per_field_accuracy.json", per_field_rows)
    write_json(Path(args.plots) / "km_risk_tertiles.json", km_rows)
    Path(args.report).write_text(report_md(ev), encoding="utf-8")
    print(f"evaluate: test field accuracy ({main_model}) {m.get('field_accuracy')}; C-index gold "
          f"{survival.get('cindex_gold')} vs {main_model} {survival.get('cindex_' + main_model)}")


if __name__ == "__main__":
    main()
