"""The prediction rows that extraction writes (one JSON line per note) and where infer puts them; evaluate, the
CLI and the review page read them back without loading any model code."""
from __future__ import annotations

import hashlib
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

from .extraction import FieldResult, answer_is_valid_json, as_written, parse_answer
from .hashing import sha256_file


def result_to_json(r: FieldResult) -> dict:
    """Compact: absent keys mean None (and recovered=False). `is`, not `in`: 0.0 == False must survive."""
    d = asdict(r)
    return {k: v for k, v in d.items() if not (v is None or (k == "recovered" and v is False))}


def result_from_json(d: dict) -> FieldResult:
    return FieldResult(**d)


def row_results(row: dict) -> dict[str, FieldResult]:
    return {name: result_from_json(d) for name, d in row["fields"].items()}


# the code that turns a raw answer into fields: parsing, the checks against the note (evidence: the day check), units,
# schema rules, merging chunks' answers
PARSER_SOURCES = ("extraction.py", "evidence.py", "units.py", "schema.py", "chunking.py")


@lru_cache(maxsize=1)
def parser_digest() -> str:
    """Digest of PARSER_SOURCES, which each prediction row records."""
    h = hashlib.sha256()
    for name in PARSER_SOURCES:
        h.update(sha256_file(Path(__file__).with_name(name)).encode())
    return h.hexdigest()[:16]


def holds_whole_answer(row: dict) -> bool:
    """One chunk and one completion: the row's raw answer is all that its fields were read from."""
    return len(row.get("raw", ())) == 1 and "answers" not in row


def reparsed_row(row: dict, note: str, schema) -> dict:
    """A row answered in one chunk with one completion, its fields read again from its raw answer by this code.
    Field confidences come from the answer's tokens, not from how it is read, and stay, except where the reading
    puts a value of its own in place of the model's (extraction.as_written)."""
    results = parse_answer(row["raw"][0], schema, note)
    out = {**row, "json_valid": answer_is_valid_json(results),
           "fields": {name: result_to_json(r) for name, r in results.items()},
           "values": {name: (r.value if r.status == "ok" else None) for name, r in results.items()},
           "parser": parser_digest()}
    if row.get("confidence") is not None:
        out["confidence"] = {name: c for name, c in row["confidence"].items() if as_written(results[name])}
    return out


TEST_SPLIT = "test"
HELDOUT_SPLIT = "test_heldout"   # test patients in the styles training never saw (prepare.heldout_styles)
TEST_SPLITS = (TEST_SPLIT, HELDOUT_SPLIT)

ABSTAINING = "dpo_abstain"   # the DPO adapter's answers with calibrated confidence, unsure and refused values null
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
