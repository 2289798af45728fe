"""The `hf` backend's KV cache on CPU: the static cache it uses there against a dynamic one, on select_ckpt's own
workload (the validation notes params.yaml's select_ckpt scores, every SFT checkpoint, greedy, constrained).

A dynamic cache grows by copying every layer's keys and values at each decode step; a static one, sized for
prompt + max_new_tokens, is written in place. Run after `dvc repro select_ckpt` on the embedded defaults:

  python benchmarks/hf_kv_cache.py --out benchmarks/results/hf_kv_cache_cpu.json

The result holds each cache's seconds for the same answers and whether the answers are the same, text for text.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from survlm.artifacts import ArtifactError, labelled_records, load_prompt, note_of, read_jsonl, write_json  # noqa: E402
from survlm.config import load_config  # noqa: E402


def cpu_description() -> str:
    """CPU model, cores and its widest vector extension: fp32 decoding speed follows them."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    vector = ("AVX-512 BF16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags
              else "AVX2" if "avx2" in flags else "no AVX2")
    return f"{model}, {os.cpu_count()} cores, {vector}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--base", default="models/base")
    ap.add_argument("--sft", default="models/sft", help="the sft stage's output (its checkpoint-* dirs)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from survlm.modeling.backends import Decoding, make_backend
    from survlm.modeling.extractor import Task, run_tasks

    params = load_config("select_ckpt")
    try:
        schema, system = load_prompt(Path(args.prepared))
        rows = labelled_records(Path(args.prepared) / "val.jsonl", params.val_notes)
    except ArtifactError as exc:
        sys.exit(str(exc))
    records = [{"id": r["id"], "note": note_of(r)} for r in rows]
    adapters = {p.name: p for p in sorted(Path(args.sft).glob("checkpoint-*"))}
    if not adapters:
        sys.exit(f"{args.sft}: no checkpoint-* directory (run `dvc repro sft` first)")
    backend = make_backend("hf", Path(args.base), adapters, schema, params.engine)
    decoding = Decoding(strategy="greedy", max_new_tokens=params.max_new_tokens, constrained=params.constrained)
    result: dict = {"machine": cpu_description(), "notes": len(records),
                    "adapters": len(adapters), "max_new_tokens": params.max_new_tokens, "runs": {}}
    answers = {}
    for cache in ("dynamic", "static"):
        backend.cache_implementation = None if cache == "dynamic" else "static"
        with tempfile.TemporaryDirectory() as scratch:
            t0 = time.perf_counter()
            run_tasks(backend, [Task(n, n, records, Path(scratch) / f"{n}.jsonl") for n in adapters], schema,
                      system, decoding, progress=False)
            seconds = round(time.perf_counter() - t0, 1)
            answers[cache] = [row["raw"] for n in adapters for row in read_jsonl(Path(scratch) / f"{n}.jsonl")]
        result["runs"][cache] = {"seconds": seconds}
        print(f"hf_kv_cache: {cache} cache: {seconds} s", flush=True)
    backend.close()
    result["same_answers"] = answers["static"] == answers["dynamic"]
    result["static_vs_dynamic"] = round(result["runs"]["static"]["seconds"] / result["runs"]["dynamic"]["seconds"], 3)
    write_json(args.out, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
