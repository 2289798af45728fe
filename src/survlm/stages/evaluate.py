"""DVC stage `evaluate`: extraction metrics per model and split, then the survival models on covariates from
gold labels, each model and the regex baseline -> metrics/evaluate.json, plot data, metrics/report.md.

Reads prepare's records and infer's predictions, computes the regex baseline's answers, and leaves the rest to
survlm.evaluation (the metrics) and survlm.report (the Markdown and plot data).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..artifacts import ArtifactError, load_prompt, note_of, read_jsonl, render_meta, write_json, write_text
from ..config import EvaluateParams
from ..predictions import MODELS, TEST_SPLITS
from .common import failing_on, path_arg, run_stage


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


@dataclass(frozen=True)
class Paths:
    prepared: Path = path_arg("prepare's output dir")
    predictions: Path = path_arg("infer's predictions dir")
    metrics: Path = path_arg("the metrics JSON")
    plots: Path = path_arg("plot data dir")
    report: Path = path_arg("the Markdown report")


def main(cfg: EvaluateParams, paths: Paths) -> None:
    from ..evaluation import evaluate
    from ..report import plot_rows, report_md

    prepared, preds = paths.prepared, paths.predictions
    with failing_on(ArtifactError):
        schema, _ = load_prompt(prepared)
    train = list(read_jsonl(prepared / "train.jsonl"))
    splits = {}
    for split in TEST_SPLITS:
        records = {r["id"]: r for r in read_jsonl(prepared / f"{split}.jsonl")}
        splits[split] = (records, render_meta(prepared, set(records)), load_model_results(preds, split, schema,
                                                                                           records))
    ev, km = evaluate(schema, train, splits, cfg)
    write_json(paths.metrics, ev)
    for name, rows in {**plot_rows(ev), "km_risk_groups": km}.items():
        write_json(paths.plots / f"{name}.json", rows)
    write_text(paths.report, report_md(ev))
    main_model, survival = ev["extraction"]["model"], ev["survival"]
    print(f"evaluate: test field accuracy ({main_model}) {ev['extraction']['field_accuracy']}; C-index gold "
          f"{survival.get('cindex_gold')} vs {main_model} {survival.get('cindex_' + main_model)}")


if __name__ == "__main__":
    run_stage(main, "evaluate", Paths)
