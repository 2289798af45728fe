"""The prediction rows that extraction writes (one JSON line per note) and where infer puts them; evaluate, the
CLI and the review page read them back without loading any model code."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

from .extraction import FieldResult


def result_to_json(r: FieldResult) -> dict:
    """Compact: absent keys mean None (and recovered=False). `is`, not `in`: 0.0 == False must survive."""
    d = asdict(r)
    return {k: v for k, v in d.items() if not (v is None or (k == "recovered" and v is False))}


def result_from_json(d: dict) -> FieldResult:
    return FieldResult(**d)


def row_results(row: dict) -> dict[str, FieldResult]:
    return {name: result_from_json(d) for name, d in row["fields"].items()}


def read_rows(path: Path) -> Iterable[dict]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


ABSTAINING = "dpo_abstain"   # the DPO adapter's answers with calibrated confidence, unsure values made null
# the extractors compared on the same notes: the pipeline's model, it abstaining where unsure, its baselines
MODELS = ("dpo", ABSTAINING, "sft", "zero_shot", "regex")


def prediction_path(out: Path, model: str, split: str) -> Path:
    """infer's layout: the DPO adapter's rows at the top of `out`, its abstaining rows under abstain/, each
    baseline's under baselines/<model>/."""
    if model == "dpo":
        return out / f"{split}.jsonl"
    if model == ABSTAINING:
        return out / "abstain" / f"{split}.jsonl"
    return out / "baselines" / model / f"{split}.jsonl"
