"""The prediction rows that extraction writes (one JSON line per note) and where infer puts them; evaluate, the
CLI and the review page read them back without loading any model code."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .extraction import FieldResult


def result_to_json(r: FieldResult) -> dict:
    """Compact: absent keys mean None (and recovered=False). `is`, not `in`: 0.0 == False must survive."""
    d = asdict(r)
    return {k: v for k, v in d.items() if not (v is None or (k == "recovered" and v is False))}


def result_from_json(d: dict) -> FieldResult:
    return FieldResult(**d)


def row_results(row: dict) -> dict[str, FieldResult]:
    return {name: result_from_json(d) for name, d in row["fields"].items()}


TEST_SPLIT = "test"
HELDOUT_SPLIT = "test_heldout"   # test patients in the styles training never saw (prepare.heldout_styles)
TEST_SPLITS = (TEST_SPLIT, HELDOUT_SPLIT)

ABSTAINING = "dpo_abstain"   # the DPO adapter's answers with calibrated confidence, unsure values made null
ZERO_SHOT = "zero_shot"      # the base model without an adapter
# the extractors compared on the same notes: the pipeline's model, it abstaining where unsure, its baselines
MODELS = ("dpo", ABSTAINING, "sft", ZERO_SHOT, "regex")


def prediction_path(out: Path, model: str, split: str) -> Path:
    """infer's layout: the DPO adapter's rows at the top of `out`, its abstaining rows under abstain/, each
    baseline's under baselines/<model>/."""
    if model == "dpo":
        return out / f"{split}.jsonl"
    if model == ABSTAINING:
        return out / "abstain" / f"{split}.jsonl"
    return out / "baselines" / model / f"{split}.jsonl"
