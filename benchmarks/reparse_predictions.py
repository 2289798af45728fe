"""A run's answers read again by survlm's parser as it stands: what a change to the answer checks does to them.

`infer` stores each note's raw answer beside the fields it parsed from it. This reads every prediction file of an
`infer` output directory, parses each raw answer again against its note (survlm.extraction.parse_answer), writes
the rows to a new predictions directory, and redoes the abstention rows from the re-read validation answers as
`infer` does. `evaluate` then scores the new directory like any other:

  python benchmarks/reparse_predictions.py --prepared data/prepared --predictions data/predictions \
      --out data/predictions_reparsed
  python -m survlm.stages.evaluate --prepared data/prepared --predictions data/predictions_reparsed \
      --metrics metrics/evaluate_reparsed.json --plots /tmp/plots --report /tmp/report.md

Rows answered in more than one chunk or by several samples (a vote) hold more than one answer; they are copied
unchanged and counted (`infer`'s own resume asks those again). Field confidences come from the answer's tokens
and stay as they were. Prints, per file, how many fields changed status; no note text.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepared", type=Path, required=True, help="prepare's output (the notes answered)")
    ap.add_argument("--predictions", type=Path, required=True, help="infer's output directory")
    ap.add_argument("--out", type=Path, required=True, help="new predictions directory (replaced)")
    args = ap.parse_args()

    from survlm.artifacts import load_prompt, note_of, read_jsonl, write_jsonl
    from survlm.predictions import ABSTAINING, TEST_SPLITS, holds_whole_answer, prediction_path, reparsed_row
    from survlm.stages.infer import abstain

    schema, _ = load_prompt(args.prepared)
    notes = {r["id"]: note_of(r) for split in ("val", *TEST_SPLITS)
             for r in read_jsonl(args.prepared / f"{split}.jsonl")}
    abstain_dir = prediction_path(args.out, ABSTAINING, TEST_SPLITS[0]).parent
    shutil.rmtree(args.out, ignore_errors=True)
    summary = {}
    for path in sorted(args.predictions.rglob("*.jsonl")):
        rel = path.relative_to(args.predictions)
        target = args.out / rel
        if target.parent == abstain_dir:
            continue   # redone below from the re-read answers
        target.parent.mkdir(parents=True, exist_ok=True)
        rows, changes, kept = [], Counter(), 0
        for row in read_jsonl(path):
            if not holds_whole_answer(row):
                rows.append(row)
                kept += 1
                continue
            new = reparsed_row(row, notes[row["id"]], schema)
            rows.append(new)
            changes.update((old["status"], new["fields"][name]["status"]) for name, old in row["fields"].items()
                           if old["status"] != new["fields"][name]["status"])
        write_jsonl(target, rows)
        summary[str(rel)] = {"rows": len(rows), "copied_unchanged": kept,
                             "status_changes": {f"{a}->{b}": n for (a, b), n in sorted(changes.items())}}
    had_abstention = (args.predictions / abstain_dir.relative_to(args.out)).is_dir()
    if had_abstention and (args.out / "decoding" / "greedy.jsonl").is_file():
        val = list(read_jsonl(args.prepared / "val.jsonl"))
        summary["abstention"] = abstain(args.out, schema, val, list(TEST_SPLITS))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
