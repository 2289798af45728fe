"""DVC stage `select_ckpt`: score every SFT checkpoint (and the zero-shot base as step 0) by extraction
accuracy on validation notes, all in one generation pass; copy the best adapter to models/sft_best."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import (ArtifactError, atomic_dir, check_adapter_runs, copy_adapter, labelled_records, load_prompt,
                         write_json)
from ..config import SelectCkptParams
from ..modeling.backends.openai import OpenAIBackendError
from ..phases import Phases
from ..predictions import ZERO_SHOT
from ..selection import checkpoints, choose_checkpoint
from .common import failing_on, path_arg, run_stage


def choose_best(curve: list[dict]) -> dict:
    """Highest field accuracy; ties go to the earlier step (the rule dpo applies too)."""
    return choose_checkpoint(curve)


@dataclass(frozen=True)
class Paths:
    prepared: Path = path_arg("prepare's output dir")
    base: Path = path_arg("the base model dir")
    sft: Path = path_arg("the sft stage's checkpoints, each with its run record")
    out: Path = path_arg("where the chosen adapter goes")
    metrics: Path = path_arg("the summary JSON")
    curve: Path = path_arg("the accuracy-by-step plot data")


def main(cfg: SelectCkptParams, paths: Paths) -> None:
    prepared, sft_dir = paths.prepared, paths.sft
    rows = labelled_records(prepared / "val.jsonl", cfg.val_notes)
    found = checkpoints(sft_dir)
    steps = ([(0, None)] if cfg.include_zero_shot else []) + found
    names = {step: (path.name if path else ZERO_SHOT) for step, path in steps}
    from ..modeling.extractor import score_adapters
    from ..modeling.loading import model_digest

    phases = Phases()   # its startup: the interpreter and the imports above

    with failing_on(ArtifactError), phases.time("checks"):   # the run records against the base's digest
        schema, system = load_prompt(prepared)
        check_adapter_runs({names[s]: p for s, p in steps}, paths.base, model_digest(paths.base), prepared,
                           schema, system)
    with tempfile.TemporaryDirectory() as work:
        metrics = score_adapters(paths.base, {names[s]: p for s, p in steps}, rows, schema, system, prepared,
                                 cfg, Path(work), phases)
        curve = []
        for step, _ in steps:
            m = metrics[names[step]]
            curve.append({"step": step, "checkpoint": names[step], **{
                k: m[k] for k in ("field_accuracy", "fabrication_rate", "last_value_rate", "json_valid_rate")}})
            print(f"select_ckpt: step {step}: field accuracy {m['field_accuracy']}, json valid {m['json_valid_rate']}")
        best = choose_best([c for c in curve if c["step"] > 0] or curve)
        with atomic_dir(paths.out) as tmp:
            if best["step"] > 0:   # the checkpoint's adapter with its run record; the zero-shot base has neither
                copy_adapter(sft_dir / best["checkpoint"], tmp)
    zero = next((c for c in curve if c["step"] == 0), None)
    write_json(paths.metrics, {"val_notes": len(rows), "best": best, "zero_shot": zero,
                               "best_detail": {k: metrics[best["checkpoint"]][k] for k in ("errors", "per_field")},
                               "gain_over_zero_shot": None if zero is None else
                               round(best["field_accuracy"] - zero["field_accuracy"], 4),
                               "phase_s": phases.as_dict()})
    write_json(paths.curve, curve)


if __name__ == "__main__":
    run_stage(main, "select_ckpt", Paths, errors=(OpenAIBackendError,))
