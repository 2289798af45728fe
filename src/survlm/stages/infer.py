"""DVC stage `infer`: extraction on the test splits with the DPO adapter (and, as baselines on the same notes,
the SFT adapter and the zero-shot base), plus a decoding comparison on validation; everything in one
generation pass through the configured backend. Adapters are served unmerged.

Outputs (data/predictions, kept between runs so an interrupted run resumes):
  test.jsonl, test_heldout.jsonl                  the DPO adapter
  baselines/<name>/<split>.jsonl                  sft, zero_shot
  decoding/<strategy>.jsonl                       DPO adapter on validation notes, per decoding strategy
                                                  (`vote`: each field the majority of the samples, its
                                                  confidence the share of samples that agree)
  calibration.json, abstain/<split>.jsonl         with `abstention.enabled`: the DPO adapter's field confidences
                                                  calibrated on its greedy validation answers, and its test
                                                  answers with calibrated confidences, unsure and refused
                                                  values made null
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import (ArtifactError, check_adapter_runs, first_records, load_prompt, note_of, read_jsonl,
                         render_meta, write_json, write_jsonl)
from ..config import InferParams
from ..modeling.backends.openai import OpenAIBackendError
from ..phases import process_age_s
from ..predictions import ABSTAINING, HELDOUT_SPLIT, TEST_SPLIT, ZERO_SHOT, prediction_path, row_results
from .common import failing_on, path_arg, run_stage

SPLITS = {TEST_SPLIT: "test_notes", HELDOUT_SPLIT: "heldout_notes"}


def adapter_dirs(baselines, adapter: Path, sft: Path) -> dict[str, Path | None]:
    """Model name -> adapter dir (None = base). `dpo` is the model under evaluation; the baseline `sft` is the
    selected SFT adapter, `zero_shot` the base, any other name an adapter dir."""
    out: dict[str, Path | None] = {"dpo": adapter}
    for name in baselines:
        out[name] = None if name == ZERO_SHOT else sft if name == "sft" else Path(name)
    return out


def abstain(out: Path, schema, val_rows: list[dict], splits: list[str]) -> dict:
    """Calibrate the DPO adapter's field confidences on its greedy validation answers, then write its test
    answers with calibrated confidences and abstentions (model `dpo_abstain`). Returns the calibration summary."""
    from ..confidence import abstained_row, fit_calibration, validation_answers
    from ..metrics import score

    labels = {r["id"]: r["labels"] for r in val_rows}
    greedy = list(read_jsonl(out / "decoding" / "greedy.jsonl"))
    calibration = fit_calibration(validation_answers(schema, greedy, labels))
    write_json(out / "calibration.json", calibration.to_json())
    for split in splits:
        source, target = prediction_path(out, "dpo", split), prediction_path(out, ABSTAINING, split)
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            write_jsonl(target, (abstained_row(row, calibration) for row in read_jsonl(source)))
        else:   # no DPO answers on this split in this run: none from an earlier one either
            target.unlink(missing_ok=True)
    keys = ("field_accuracy", "fabrication_rate", "omission_rate")
    scored = {kind: score(schema, [(labels[p["id"]], row_results(how(p)), None) for p in greedy])
              for kind, how in (("raw", lambda p: p), ("abstaining", lambda p: abstained_row(p, calibration)))}
    # on the notes the threshold was chosen on: an upper bound of what it does elsewhere
    return {"threshold": calibration.threshold, "fitted_on_field_answers": calibration.fitted_on,
            "validation_notes": len(greedy),
            "on_validation": {kind: {k: m[k] for k in keys} for kind, m in scored.items()}}


def task_summary(rows: list[dict]) -> dict:
    """What a task's rows (kept and new) add up to: notes answered in chunks and the fields their chunks disagreed
    on (the merge rule settled them; a field counted once a note), tokens, answers cut at max_new_tokens, and the
    parser's field statuses."""
    statuses: dict[str, int] = {}
    for row in rows:
        for f in row["fields"].values():
            statuses[f["status"]] = statuses.get(f["status"], 0) + 1
    return {"rows": len(rows), "chunked_notes_total": sum(r["n_chunks"] > 1 for r in rows),
            "chunk_conflicts": sum(len(r.get("chunk_conflicts") or ()) for r in rows),
            "completion_tokens": sum(r["completion_tokens"] for r in rows),
            "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
            "hit_max_new_tokens": sum("length" in r["finish_reasons"] for r in rows),
            "statuses": dict(sorted(statuses.items()))}


@dataclass(frozen=True)
class Paths:
    prepared: Path = path_arg("prepare's output dir (test splits, validation, prompt)")
    base: Path = path_arg("the base model dir")
    adapter: Path = path_arg("the adapter under evaluation (dpo's output)")
    sft: Path = path_arg("the selected SFT adapter, the `sft` baseline")
    out: Path = path_arg("predictions dir (kept between runs to resume)")
    metrics: Path = path_arg("the summary JSON")


def main(cfg: InferParams, paths: Paths) -> None:
    from ..metrics import score
    from ..modeling.backends import Decoding, make_backend
    from ..modeling.extractor import Task, run_tasks
    from ..modeling.loading import model_digest

    startup_s = process_age_s()   # interpreter and imports, torch's included

    prepared, out = paths.prepared, paths.out
    models = adapter_dirs(cfg.baselines, paths.adapter, paths.sft)
    with failing_on(ArtifactError):
        schema, system = load_prompt(prepared)
        check_adapter_runs(models, paths.base, model_digest(paths.base), prepared, schema, system)
    greedy = Decoding(strategy="greedy", **cfg.decoding_args())
    tasks = []
    for split, key in SPLITS.items():
        split_rows = first_records(prepared / f"{split}.jsonl", getattr(cfg, key))
        records = [{"id": r["id"], "note": note_of(r)} for r in split_rows]
        if not records:  # e.g. test_notes: 0 to run only the decoding comparison
            continue
        for model, path in models.items():
            tasks.append(Task(f"{model}/{split}", None if path is None else model, records,
                              prediction_path(out, model, split)))
    comparison = cfg.decoding_comparison
    val_rows = first_records(prepared / "val.jsonl", comparison.val_notes) if comparison.val_notes != 0 else []
    val_records = [{"id": r["id"], "note": note_of(r)} for r in val_rows]
    for strategy in comparison.strategies if val_records else []:
        if strategy == "greedy":
            dec = greedy
        else:   # vote (self-consistency): `vote_samples` samples, the majority taken per field
            dec = Decoding(strategy="sample" if strategy == "vote" else strategy,
                           n=comparison.vote_samples if strategy == "vote" else 1,
                           temperature=comparison.temperature, top_p=comparison.top_p,
                           beam_width=comparison.beam_width, **cfg.decoding_args())
        tasks.append(Task(f"decoding/{strategy}", "dpo", val_records, out / "decoding" / f"{strategy}.jsonl", dec,
                          vote=strategy == "vote"))
    adapters = {m: p for m, p in models.items() if p is not None}
    t0 = time.perf_counter()
    backend = make_backend(cfg.backend, paths.base, adapters, schema, cfg.engine)
    started = time.perf_counter() - t0
    # beam search runs apart (vLLM's beam_search steps the engine once per token), so its cost is timed apart
    is_beam = [t.decoding is not None and t.decoding.strategy == "beam" for t in tasks]
    groups = {"batched": [t for t, b in zip(tasks, is_beam) if not b],
              "beam_search": [t for t, b in zip(tasks, is_beam) if b]}
    counts, seconds = {}, {}
    try:
        for name, group in groups.items():
            t1 = time.perf_counter()
            counts.update(run_tasks(backend, group, schema, system, greedy,
                                    chunk_overlap=cfg.chunk_overlap))
            seconds[name] = time.perf_counter() - t1
    finally:
        backend.close()

    summary: dict = {"backend": backend.name, "startup_s": startup_s, "engine_start_s": round(started, 1),
                     # milliseconds: a short beam-search group would round to zero at a tenth of a second
                     "generation_s": round(sum(seconds.values()), 3), "beam_search_s": round(seconds["beam_search"], 3),
                     "tasks": {}}
    for task in tasks:
        summary["tasks"][task.name] = {**counts[task.name], **task_summary(list(read_jsonl(task.out_path)))}
    if val_rows:
        meta = render_meta(prepared, {r["id"] for r in val_rows})
        labels = {r["id"]: r["labels"] for r in val_rows}
        summary["decoding_comparison"] = {}
        for task in tasks:
            if task.name.startswith("decoding/"):
                m = score(schema, [(labels[p["id"]], row_results(p), meta.get(p["id"])) for p in read_jsonl(task.out_path)])
                summary["decoding_comparison"][task.name.split("/")[1]] = {
                    k: m[k] for k in ("notes", "field_accuracy", "last_value_rate", "first_value_rate",
                                      "fabrication_rate", "json_valid_rate")}
    if cfg.abstention.enabled and "greedy" in comparison.strategies and val_rows:
        summary["abstention"] = abstain(out, schema, val_rows, list(SPLITS))
    else:   # answers of an earlier run must not pass for this one's
        shutil.rmtree(out / "abstain", ignore_errors=True)
        (out / "calibration.json").unlink(missing_ok=True)
    write_json(paths.metrics, summary)
    print(f"infer: {len(tasks)} tasks via {backend.name} in {summary['generation_s']} s "
          f"(engine start {summary['engine_start_s']} s)")


if __name__ == "__main__":
    run_stage(main, "infer", Paths, errors=(OpenAIBackendError,))
