"""DVC stage `evaluate`: extraction metrics per model and split, then the survival models on covariates from
gold labels, each model and the regex baseline -> metrics/evaluate.json, plot data, metrics/report.md.

Reads prepare's records and infer's predictions, computes the regex baseline's answers, and leaves the rest to
survlm.evaluation (the metrics) and survlm.report (the Markdown and plot data).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..artifacts import ArtifactError, load_prompt, note_of, read_jsonl, render_meta, write_json, write_text
from ..predictions import MODELS, TEST_SPLITS
from .common import failing_on, stage_params


def load_model_results(pred_dir: Path, split: str, schema, records: dict[str, dict]) -> dict[str, dict]:
    """model -> {id: parsed results} for the notes that model answered (regex: every record)."""
    from ..baselines import regex_answer
    from ..extraction import parse_answer
    from ..predictions import prediction_path, row_results

    out: dict[str, dict] = {}
    for model in MODELS:
        if model == "regex":
            continue
        path = prediction_path(pred_dir, model, split)
        if path.is_file():
            out[model] = {row["id"]: row_results(row) for row in read_jsonl(path) if row["id"] in records}
    out["regex"] = {i: parse_answer(regex_answer(schema, note_of(r)), schema, note_of(r)) for i, r in records.items()}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prepared", required=True, help="prepare's output dir")
    ap.add_argument("--predictions", required=True, help="infer's predictions dir")
    ap.add_argument("--metrics", required=True, help="the metrics JSON")
    ap.add_argument("--plots", required=True, help="plot data dir")
    ap.add_argument("--report", required=True, help="the Markdown report")
    args = ap.parse_args(argv)
    from ..evaluation import evaluate
    from ..report import plot_rows, report_md

    params = stage_params("evaluate")
    prepared, preds = Path(args.prepared), Path(args.predictions)
    with failing_on(ArtifactError):
        schema, _ = load_prompt(prepared)
    train = list(read_jsonl(prepared / "train.jsonl"))
    splits = {}
    for split in TEST_SPLITS:
        records = {r["id"]: r for r in read_jsonl(prepared / f"{split}.jsonl")}
        splits[split] = (records, render_meta(prepared, set(records)), load_model_results(preds, split, schema,
                                                                                           records))
    ev, km = evaluate(schema, train, splits, params)
    write_json(args.metrics, ev)
    for name, rows in {**plot_rows(ev), "km_risk_groups": km}.items():
        write_json(Path(args.plots) / f"{name}.json", rows)
    write_text(args.report, report_md(ev))
    main_model, survival = ev["extraction"]["model"], ev["survival"]
    print(f"evaluate: test field accuracy ({main_model}) {ev['extraction']['field_accuracy']}; C-index gold "
          f"{survival.get('cindex_gold')} vs {main_model} {survival.get('cindex_' + main_model)}")


if __name__ == "__main__":
    main()
