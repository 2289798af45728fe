"""DVC stage `select_ckpt`: score every SFT checkpoint (and the zero-shot base as step 0) by extraction
accuracy on validation notes, all in one generation pass; copy the best adapter to models/sft_best."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ..artifacts import (ArtifactError, atomic_dir, check_adapter_runs, copy_adapter, labelled_records, load_prompt,
                         write_json)
from ..predictions import ZERO_SHOT
from ..selection import checkpoints, choose_checkpoint
from .common import failing_on, stage_params


def choose_best(curve: list[dict]) -> dict:
    """Highest field accuracy; ties go to the earlier step (the rule dpo applies too)."""
    return choose_checkpoint(curve)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prepared", required=True, help="prepare's output dir")
    ap.add_argument("--base", required=True, help="the base model dir")
    ap.add_argument("--sft", required=True, help="the sft stage's checkpoints, each with its run record")
    ap.add_argument("--out", required=True, help="where the chosen adapter goes")
    ap.add_argument("--metrics", required=True, help="the summary JSON")
    ap.add_argument("--curve", required=True, help="the accuracy-by-step plot data")
    args = ap.parse_args(argv)
    params = stage_params("select_ckpt")
    prepared, sft_dir = Path(args.prepared), Path(args.sft)
    rows = labelled_records(prepared / "val.jsonl", params.val_notes)
    found = checkpoints(sft_dir)
    steps = ([(0, None)] if params.include_zero_shot else []) + found
    names = {step: (path.name if path else ZERO_SHOT) for step, path in steps}
    from ..modeling.extractor import score_adapters
    from ..modeling.loading import model_digest

    with failing_on(ArtifactError):
        schema, system = load_prompt(prepared)
        check_adapter_runs({names[s]: p for s, p in steps}, args.base, model_digest(Path(args.base)), prepared,
                           schema, system)
    with tempfile.TemporaryDirectory() as work:
        metrics = score_adapters(Path(args.base), {names[s]: p for s, p in steps}, rows, schema, system, prepared,
                                 params, Path(work))
        curve = []
        for step, _ in steps:
            m = metrics[names[step]]
            curve.append({"step": step, "checkpoint": names[step], **{
                k: m[k] for k in ("field_accuracy", "fabrication_rate", "last_value_rate", "json_valid_rate")}})
            print(f"select_ckpt: step {step}: field accuracy {m['field_accuracy']}, json valid {m['json_valid_rate']}")
        best = choose_best([c for c in curve if c["step"] > 0] or curve)
        with atomic_dir(args.out) as tmp:
            if best["step"] > 0:   # the checkpoint's adapter with its run record; the zero-shot base has neither
                copy_adapter(sft_dir / best["checkpoint"], tmp)
    zero = next((c for c in curve if c["step"] == 0), None)
    write_json(args.metrics, {"val_notes": len(rows), "best": best, "zero_shot": zero,
                              "best_detail": {k: metrics[best["checkpoint"]][k] for k in ("errors", "per_field")},
                              "gain_over_zero_shot": None if zero is None else
                              round(best["field_accuracy"] - zero["field_accuracy"], 4)})
    write_json(args.curve, curve)


if __name__ == "__main__":
    main()
