"""Extraction throughput, and where generation time goes: the same test notes through several serving variants.

Every variant runs the pipeline's own code (survlm.modeling.backends, `Backend.generate` with all notes at once)
in a fresh process, so each pays its own engine start, which is timed apart from generation:

  vllm                    the pipeline's default: NF4 base dequantized once (exact trained weights, bf16
                          kernels), adapter unmerged as a LoRARequest, compact JSON grammar, eager mode
  vllm_nf4_bitsandbytes   the same, with vLLM quantizing the base to NF4 itself (4-bit kernels)
  vllm_cuda_graphs        the default with CUDA graphs (torch.compile + graph capture at engine start)
  vllm_unconstrained      the default without the grammar: the cost of the token masks
  vllm_no_lora            the default without the adapter: the cost of the LoRA kernels
  vllm_ceiling            no adapter, no grammar, CUDA graphs: the engine's own ceiling on these prompts
  vllm_prefill            the default with one new token: prompt processing alone
  vllm_ngram              CUDA graphs and n-gram speculation (drafts of 8 tokens looked up in the note and the
                          answer so far, verified by the model: the greedy answers stay; fewer decoding steps)
  hf                      transformers `generate`, NF4 base as trained, PEFT adapter, the same grammar

Greedy answers of every variant are compared with the default's, so a serving change cannot move quality
silently: whole answers (`identical_to_vllm`), parsed field values (`same_fields_as_vllm`), and each variant's
field accuracy against the gold labels next to the default's on the same notes (bf16 kernels of two engines
seldom agree on every token of a long answer, so whole-answer identity alone says little on a GPU). CPU-side
work (chunk planning with tokenization, answer parsing) is timed in the parent process.
ratio = vllm notes/s / hf notes/s; ceiling_gap = ceiling tokens/s / vllm tokens/s.

  python benchmarks/infer_throughput.py --notes 128 --adapter models/sft_best --out benchmarks/results/infer_throughput.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# variant -> (backend, BackendSettings overrides, adapter served, constrained, max_new_tokens: None = --max-new-tokens)
VARIANTS = {
    "vllm": ("vllm", {}, True, True, None),
    "vllm_nf4_bitsandbytes": ("vllm", {"nf4_serving": "bitsandbytes"}, True, True, None),
    "vllm_cuda_graphs": ("vllm", {"enforce_eager": False}, True, True, None),
    "vllm_unconstrained": ("vllm", {}, True, False, None),
    "vllm_no_lora": ("vllm", {}, False, True, None),
    "vllm_ceiling": ("vllm", {"enforce_eager": False}, False, False, None),
    "vllm_prefill": ("vllm", {}, True, True, 1),
    "vllm_ngram": ("vllm", {"enforce_eager": False, "extra": {"speculative_config": {
        "method": "ngram", "num_speculative_tokens": 8, "prompt_lookup_min": 1, "prompt_lookup_max": 4}}},
        True, True, None),
    "hf": ("hf", {}, True, True, None),
}


def _records(args):
    from survlm.artifacts import first_records, load_prompt, note_of

    schema, system = load_prompt(args.prepared)
    rows = first_records(Path(args.prepared) / "test.jsonl", args.notes)
    return schema, system, [{"id": r["id"], "note": note_of(r), "labels": r.get("labels")} for r in rows]


def run_variant(name: str, args) -> dict:
    """One variant in this process: engine start, then every note in one `generate` call."""
    from survlm.modeling.backends import BackendSettings, Decoding, make_backend
    from survlm.artifacts import read_adapter_run

    backend_name, overrides, with_adapter, constrained, max_new = VARIANTS[name]
    schema, system, records = _records(args)
    if backend_name == "hf":
        records = records[:args.hf_notes]
    settings = BackendSettings(**{"max_model_len": args.max_model_len, "batch_size": args.hf_batch,
                                  "gpu_memory_utilization": args.gpu_memory_utilization,
                                  "quantization": read_adapter_run(args.adapter)["quantization"], **overrides})
    t0 = time.perf_counter()
    backend = make_backend(backend_name, args.base, {"adapter": args.adapter} if with_adapter else {}, schema, settings)
    start_s = time.perf_counter() - t0
    prompts = [[{"role": "system", "content": system}, {"role": "user", "content": r["note"]}] for r in records]
    dec = Decoding(max_new_tokens=max_new or args.max_new_tokens, constrained=constrained)
    t0 = time.perf_counter()
    gens = [g[0] for g in backend.generate(prompts, dec, "adapter" if with_adapter else None)]
    seconds = time.perf_counter() - t0
    backend.close()
    completion = sum(g.completion_tokens for g in gens)
    return {"variant": name, "backend": backend_name, "settings": overrides, "adapter": with_adapter,
            "constrained": constrained, "max_new_tokens": dec.max_new_tokens, "notes": len(records),
            "engine_start_s": round(start_s, 1), "seconds": round(seconds, 2),
            "notes_per_s": round(len(records) / seconds, 3), "generated_tokens_per_s": round(completion / seconds, 1),
            "prompt_tokens": sum(g.prompt_tokens for g in gens), "completion_tokens": completion,
            "hit_max_new_tokens": sum(g.finish_reason == "length" for g in gens),
            "texts": [g.text for g in gens]}


def cpu_side(args, texts: list[str]) -> dict:
    """Chunk planning (tokenizing every note with its prompt) and answer parsing, timed on these notes."""
    from survlm.extraction import parse_answer
    from survlm.modeling.backends import Backend, BackendSettings, Decoding
    from survlm.modeling.extractor import plan_chunks

    schema, system, records = _records(args)
    backend = Backend(args.base, {}, schema, BackendSettings(max_model_len=args.max_model_len))
    dec = Decoding(max_new_tokens=args.max_new_tokens)
    t0 = time.perf_counter()
    chunks = [plan_chunks(backend, system, r["note"], dec, 256) for r in records]
    plan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for text, r in zip(texts, records):
        parse_answer(text, schema, r["note"])
    parse_s = time.perf_counter() - t0
    return {"chunk_planning_s": round(plan_s, 3), "parsing_s": round(parse_s, 3),
            "chunks": sum(len(c) for c in chunks), "notes": len(records)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--base", default="models/base")
    ap.add_argument("--adapter", default="models/sft_best")
    ap.add_argument("--notes", type=int, default=128)
    ap.add_argument("--hf-notes", type=int, default=64, help="hf answers the first N of the same notes")
    ap.add_argument("--max-new-tokens", type=int, default=768)
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--hf-batch", type=int, default=64)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--timeout", type=int, default=420, help="seconds per variant; a slower one is recorded as such")
    ap.add_argument("--one", choices=list(VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="benchmarks/results/infer_throughput.json")
    args = ap.parse_args()
    if args.one:  # child process: one variant
        Path(args.result).write_text(json.dumps(run_variant(args.one, args)))
        return
    runs: list[dict] = []
    for name in args.variants:
        with tempfile.NamedTemporaryFile(suffix=".json") as res:
            cmd = [sys.executable, __file__, "--one", name, "--result", res.name]
            for key in ("prepared", "base", "adapter", "notes", "hf_notes", "max_new_tokens", "max_model_len",
                        "hf_batch", "gpu_memory_utilization"):
                cmd += ["--" + key.replace("_", "-"), str(getattr(args, key))]
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, timeout=args.timeout, capture_output=True, text=True)
                ok = proc.returncode == 0 and Path(res.name).stat().st_size > 0
                row = json.loads(Path(res.name).read_text()) if ok else {"variant": name, "error": _error_line(proc)}
            except subprocess.TimeoutExpired:
                row = {"variant": name, "error": f"did not finish in {args.timeout} s"}
            row["process_s"] = round(time.perf_counter() - t0, 1)
        runs.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "texts"}), flush=True)
        write_result(args, runs)   # after every variant: a run cut short keeps what it measured
    write_result(args, runs, final=True)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The exception line of a failed variant's traceback (its last line is often a link or a hint)."""
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]]
    return (errors or lines or [f"exit {proc.returncode}"])[-1][:500]


class AnswerQuality:
    """Answers read as the pipeline reads them: scored against the notes' gold labels, or field by field
    against another variant's answers to the same notes."""

    def __init__(self, args):
        from survlm.artifacts import render_meta

        self.schema, _, self.records = _records(args)
        self.meta = render_meta(args.prepared, {r["id"] for r in self.records})

    def _parsed(self, texts: list[str]) -> list[dict]:
        from survlm.extraction import parse_answer

        return [parse_answer(text, self.schema, r["note"]) for text, r in zip(texts, self.records)]

    def accuracy(self, texts: list[str]) -> float | None:
        from survlm.metrics import score

        rows = [(r["labels"], parsed, self.meta.get(r["id"]))
                for r, parsed in zip(self.records, self._parsed(texts)) if r["labels"] is not None]
        return score(self.schema, rows)["field_accuracy"] if rows else None

    def same_fields(self, texts: list[str], other: list[str]) -> str:
        pairs = [(a[f.name], b[f.name]) for a, b in zip(self._parsed(texts), self._parsed(other)) for f in self.schema]
        return f"{sum((a.status, a.value) == (b.status, b.value) for a, b in pairs)}/{len(pairs)}"


def write_result(args, runs: list[dict], final: bool = False) -> None:
    import torch

    by = {r["variant"]: r for r in runs if "error" not in r}
    reference = by.get("vllm", {}).get("texts")
    quality = AnswerQuality(args)
    for r in runs:
        if "texts" not in r or r["variant"] == "vllm_prefill":
            continue
        r["field_accuracy"] = quality.accuracy(r["texts"])
        if reference and r["variant"] != "vllm":
            n = min(len(reference), len(r["texts"]))
            r["identical_to_vllm"] = f"{sum(a == b for a, b in zip(reference, r['texts']))}/{n}"
            r["same_fields_as_vllm"] = quality.same_fields(reference[:n], r["texts"][:n])
            r["vllm_field_accuracy_same_notes"] = quality.accuracy(reference[:n])
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    result = {"device": device, "date": dt.date.today().isoformat(), "machine": platform.machine(),
              "adapter": args.adapter, "notes": args.notes, "hf_notes": args.hf_notes,
              "max_new_tokens": args.max_new_tokens, "decoding": "greedy",
              "runs": [{k: v for k, v in r.items() if k != "texts"} for r in runs]}
    if "vllm" in by and "hf" in by:  # per note on the same notes: hf answers a prefix of vllm's notes
        result["ratio"] = round(by["vllm"]["notes_per_s"] / by["hf"]["notes_per_s"], 2)
    if "vllm" in by and "vllm_ceiling" in by:
        result["ceiling_gap"] = round(by["vllm_ceiling"]["generated_tokens_per_s"]
                                      / by["vllm"]["generated_tokens_per_s"], 2)
    if reference and final:
        result["cpu_side"] = cpu_side(args, reference)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if final:
        print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
