"""Extraction throughput: the same test notes through vLLM and through transformers `generate` on one machine.

Both run the pipeline's own code (survlm.modeling.backends) with the same adapter (unmerged), greedy decoding
constrained by the answer's JSON schema, and all notes submitted at once (hf: `--hf-batch` rows per call).
Reports notes/s, generated tokens/s and ratio = vLLM notes/s / HF notes/s, plus whether the two answered
identically. Engine start is timed separately and left out of the rates.

  python benchmarks/infer_throughput.py --notes 64 --adapter models/dpo --out benchmarks/results/infer_throughput.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def run(backend_name: str, args, records, schema, system) -> dict:
    from survlm.modeling.backends import BackendSettings, Decoding, make_backend

    settings = BackendSettings(max_model_len=args.max_model_len, batch_size=args.hf_batch,
                               enforce_eager=args.enforce_eager,
                               quantization=None if args.quantization == "none" else args.quantization)
    t0 = time.perf_counter()
    backend = make_backend(backend_name, args.base, {"adapter": args.adapter}, schema, settings)
    start_s = time.perf_counter() - t0
    prompts = [[{"role": "system", "content": system}, {"role": "user", "content": r["messages"][1]["content"]}]
               for r in records]
    dec = Decoding(max_new_tokens=args.max_new_tokens, constrained=True)
    t0 = time.perf_counter()
    gens = backend.generate(prompts, dec, "adapter")
    seconds = time.perf_counter() - t0
    backend.close()
    completion = sum(g[0].completion_tokens for g in gens)
    return {"backend": backend_name, "notes": len(records), "engine_start_s": round(start_s, 1),
            "seconds": round(seconds, 1), "notes_per_s": round(len(records) / seconds, 4),
            "generated_tokens_per_s": round(completion / seconds, 1),
            "prompt_tokens": sum(g[0].prompt_tokens for g in gens), "completion_tokens": completion,
            "texts": [g[0].text for g in gens]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--base", default="models/base")
    ap.add_argument("--adapter", default="models/dpo")
    ap.add_argument("--notes", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=640)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--hf-batch", type=int, default=64)
    ap.add_argument("--enforce-eager", action="store_true", help="vLLM without CUDA graphs (always on for CPU)")
    ap.add_argument("--quantization", default="none",
                    help="base weights for both: none, or bitsandbytes (NF4, as a QLoRA adapter was trained)")
    ap.add_argument("--backends", nargs="+", default=["vllm", "hf"])
    ap.add_argument("--out", default="benchmarks/results/infer_throughput.json")
    args = ap.parse_args()
    import torch

    from survlm.stages.common import first_records, load_prompt

    if not torch.cuda.is_available():
        args.enforce_eager = True
        os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    schema, system = load_prompt(args.prepared)
    records = first_records(Path(args.prepared) / "test.jsonl", args.notes)
    rows = [run(name, args, records, schema, system) for name in args.backends]
    by = {r["backend"]: r for r in rows}
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    result = {"device": device, "date": dt.date.today().isoformat(), "machine": platform.machine(),
              "adapter": args.adapter, "max_new_tokens": args.max_new_tokens, "quantization": args.quantization,
              "vllm_cuda_graphs": not args.enforce_eager, "decoding": "greedy, JSON-constrained",
              "runs": [{k: v for k, v in r.items() if k != "texts"} for r in rows]}
    if "vllm" in by and "hf" in by:
        result["ratio"] = round(by["vllm"]["notes_per_s"] / by["hf"]["notes_per_s"], 3)
        result["identical_answers"] = sum(a == b for a, b in zip(by["vllm"]["texts"], by["hf"]["texts"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
