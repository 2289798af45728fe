"""What each rule that reads an answer against its note changes, on a run's stored answers and on gold answers.

The rules (survlm.extraction): the day check (a day-3 value the note writes only under other days is refused),
the other-field check (a number the note writes only after other fields' names is refused),
flags read from the answer's list (`listed_in`), and counts that leave out phrases of absence and negated
entries. For every stored answer whose note a prepared split holds (answered in one chunk), the answer is read
with all rules and with each rule switched off in turn; each rule's changed fields are counted by whether they
were right before and after, per prediction file. Then every prepared record's gold answer is read against its
note, in each `--gold` prepared dir: a rule must leave every gold answer as its labels say.

  python benchmarks/answer_rules.py --prepared data/prepared --predictions data/predictions \
      --gold defaults=data/prepared --out benchmarks/results/answer_rules.json

No note text is written.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


@contextmanager
def rule_off(name: str, schema):
    """The parser with one rule switched off; yields the schema to read with."""
    from survlm import evidence, extraction

    if name == "day_check":
        saved = evidence.written_on_other_days_only
        evidence.written_on_other_days_only = lambda f, value, text: False
        try:
            yield schema
        finally:
            evidence.written_on_other_days_only = saved
    elif name == "other_field":
        saved = evidence.written_for_other_fields_only
        evidence.written_for_other_fields_only = lambda f, value, text, fields: False
        try:
            yield schema
        finally:
            evidence.written_for_other_fields_only = saved
    elif name == "flags_from_list":
        yield replace(schema, fields={n: replace(f, listed_in=None) for n, f in schema.fields.items()})
    elif name == "counts_without_absence":
        saved = extraction._listed_items
        extraction._listed_items = lambda entries, note: list(entries)
        try:
            yield schema
        finally:
            extraction._listed_items = saved
    else:
        raise ValueError(name)


RULES = ("day_check", "other_field", "flags_from_list", "counts_without_absence")


def _reading(results: dict) -> dict:
    return {name: (r.status, r.value) for name, r in results.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", type=Path, required=True, help="the prepared dir the predictions answered")
    ap.add_argument("--predictions", type=Path, required=True)
    ap.add_argument("--gold", nargs="*", default=[], metavar="NAME=DIR",
                    help="prepared dirs whose gold answers to read, each under a name for the result")
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    from survlm.artifacts import load_prompt, note_of, read_jsonl
    from survlm.extraction import parse_answer
    from survlm.metrics import is_correct
    from survlm.schema import load_schema

    schema, _ = load_prompt(args.prepared)
    records = {r["id"]: r for split in sorted(args.prepared.glob("*.jsonl")) for r in read_jsonl(split) if "text" in r}
    result: dict = {"rules": {rule: {} for rule in RULES}, "gold": {}}
    for path in sorted(args.predictions.rglob("*.jsonl")):
        rows = [row for row in read_jsonl(path) if row["id"] in records and len(row.get("raw", ())) == 1
                and "answers" not in row]
        if not rows:
            continue
        name = str(path.relative_to(args.predictions))
        full = [parse_answer(row["raw"][0], schema, note_of(records[row["id"]])) for row in rows]
        for rule in RULES:
            changes: Counter = Counter()
            by_field: Counter = Counter()
            with rule_off(rule, schema) as without:
                for row, after in zip(rows, full):
                    record = records[row["id"]]
                    before = parse_answer(row["raw"][0], without, note_of(record))
                    if _reading(before) == _reading(after):
                        continue
                    for f in schema:
                        if (before[f.name].status, before[f.name].value) == (after[f.name].status,
                                                                                 after[f.name].value):
                            continue
                        gold = record["labels"].get(f.name, "unlabelled")
                        if gold == "unlabelled":
                            continue
                        was, now = is_correct(f, gold, before[f.name]), is_correct(f, gold, after[f.name])
                        changes[f"{'right' if was else 'wrong'}->{'right' if now else 'wrong'}"] += 1
                        changes["where the note has no value"] += gold is None
                        by_field[f.name] += 1
            result["rules"][rule][name] = {"rows": len(rows), "changed_fields": dict(sorted(changes.items())),
                                           "by_field": dict(by_field.most_common())}
    for named in args.gold:
        label, _, where = named.rpartition("=")
        gold_dir = Path(where)
        gold_schema = load_schema(json.loads((gold_dir / "prompt.json").read_text())["schema_path"])
        tally: Counter = Counter()
        for split in sorted(gold_dir.glob("*.jsonl")):
            for record in read_jsonl(split):
                if "text" not in record or "target" not in record:
                    continue
                tally["notes"] += 1
                read = parse_answer(record["target"], gold_schema, record["text"])
                for f in gold_schema:
                    if f.name in record["labels"] and not is_correct(f, record["labels"][f.name], read[f.name]):
                        tally[f"{f.name}: {read[f.name].status}"] += 1
        result["gold"][label or where] = dict(sorted(tally.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
