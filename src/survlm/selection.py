"""Which checkpoint to ship, from extraction scores on validation notes. Pure Python.

One rule for SFT checkpoints (select_ckpt) and DPO checkpoints (dpo): highest field accuracy, ties to the
earlier step (less training, same answer quality). In dpo the SFT adapter is step 0, so DPO ships only
when a DPO checkpoint is strictly more accurate than the SFT model it started from.
"""
from __future__ import annotations

from pathlib import Path


def checkpoints(train_dir: Path) -> list[tuple[int, Path]]:
    """The `checkpoint-<step>` directories a Trainer wrote into `train_dir`, as (step, path) by step."""
    found = [(int(p.name.split("-")[1]), p) for p in Path(train_dir).glob("checkpoint-*")
             if p.name.split("-")[1].isdigit()]
    return sorted(found)


def choose_checkpoint(scores: list[dict]) -> dict:
    """scores: [{"step": int, "field_accuracy": float | None, ...}] -> the chosen entry.

    A checkpoint with no accuracy (no scorable note) ranks below every scored one."""
    if not scores:
        raise ValueError("no checkpoint to choose from")
    return max(scores, key=lambda c: (c["field_accuracy"] is not None, c["field_accuracy"] or 0.0, -c["step"]))


def dpo_selection(curve: list[dict]) -> dict:
    """curve: the SFT adapter as step 0 and every DPO checkpoint (step > 0) -> what dpo ships, and by how much
    it differs from SFT. `selected` is "sft" when no DPO checkpoint beats the SFT adapter."""
    sft = [c for c in curve if c["step"] == 0]
    dpo = [c for c in curve if c["step"] > 0]
    if len(sft) != 1 or not dpo:
        raise ValueError("dpo selection needs the SFT adapter as step 0 and at least one DPO checkpoint")
    best = choose_checkpoint(curve)
    best_dpo = choose_checkpoint(dpo)
    sft_acc = sft[0]["field_accuracy"]

    def margin(acc):
        return None if acc is None or sft_acc is None else round(acc - sft_acc, 4)

    return {"selected": "sft" if best["step"] == 0 else "dpo", "selected_step": best["step"],
            "selected_field_accuracy": best["field_accuracy"], "sft_field_accuracy": sft_acc,
            "best_dpo_step": best_dpo["step"], "best_dpo_field_accuracy": best_dpo["field_accuracy"],
            "margin_over_sft": margin(best["field_accuracy"]),
            "best_dpo_margin_over_sft": margin(best_dpo["field_accuracy"])}
