"""Extraction speed on the Llama-3.1-8B shape: many long notes through the vLLM backend, LoRA r16 unmerged,
answers constrained by the schema's grammar, on one GPU.

No checkpoint can be fetched, and speed does not depend on weight values: the base is the 8B config with
vLLM's dummy weights (`load_format: dummy`) and the embedded model's tokenizer, the adapter random r16 LoRA
tensors on every linear layer. The notes are real prepared notes (`prepare.note_tokens` sets their length).
Random weights write random JSON within the grammar, so most answers run to `--max-new-tokens`: an upper
bound on the generation work real answers need.

  python benchmarks/extract_8b.py --notes 1000 --out benchmarks/results/extract_8b.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

LORA_MODULES = {"q_proj": ("hidden", "q"), "k_proj": ("hidden", "kv"), "v_proj": ("hidden", "kv"),
                "o_proj": ("q", "hidden"), "gate_proj": ("hidden", "ffn"), "up_proj": ("hidden", "ffn"),
                "down_proj": ("ffn", "hidden")}


def write_base(out: Path, tokenizer_dir: Path, shape: dict) -> None:
    """config.json of the shape plus the tokenizer: all vLLM's dummy loader needs."""
    from transformers import AutoTokenizer, LlamaConfig

    # the architecture named, as a checkpoint names it: vLLM reads a config without one as `LlamaModel`
    LlamaConfig(**{"architectures": ["LlamaForCausalLM"], **shape}).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)


def write_random_lora(out: Path, shape: dict, r: int, seed: int = 0) -> None:
    """A PEFT LoRA adapter of rank r on every linear layer of the shape, small random weights."""
    import torch
    from safetensors.torch import save_file

    head = shape["hidden_size"] // shape["num_attention_heads"]
    dims = {"hidden": shape["hidden_size"], "q": shape["num_attention_heads"] * head,
            "kv": shape["num_key_value_heads"] * head, "ffn": shape["intermediate_size"]}
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(shape["num_hidden_layers"]):
        for name, (d_in, d_out) in LORA_MODULES.items():
            block = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{block}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = (torch.randn(r, dims[d_in], generator=gen) * 0.01).to(torch.bfloat16)
            tensors[f"{prefix}.lora_B.weight"] = (torch.randn(dims[d_out], r, generator=gen) * 0.01).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r, "lora_dropout": 0.0,
        "target_modules": sorted(LORA_MODULES), "bias": "none", "base_model_name_or_path": None}))


def main() -> None:
    from sft_memory import LLAMA31_8B

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--tokenizer", default="models/base")
    ap.add_argument("--notes", type=int, default=1000)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=768)
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--shape", default=None, help="JSON of LlamaConfig overrides (a smaller shape for a CPU check)")
    ap.add_argument("--out", default="benchmarks/results/extract_8b.json")
    args = ap.parse_args()
    import torch

    from survlm.modeling.backends import BackendSettings, Decoding, make_backend
    from survlm.artifacts import chat_prompt, load_prompt, read_jsonl

    shape = {**LLAMA31_8B, **json.loads(args.shape or "{}")}
    schema, system = load_prompt(args.prepared)
    rows = [r for split in ("test", "val", "pairs", "train") for r in read_jsonl(Path(args.prepared) / f"{split}.jsonl")]
    prompts = [chat_prompt(system, r) for r in rows[:args.notes]]
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        base, adapter = Path(tmp) / "base", Path(tmp) / "lora"
        write_base(base, Path(args.tokenizer), shape)
        write_random_lora(adapter, shape, args.lora_r)
        settings = BackendSettings(max_model_len=args.max_model_len, quantization="none",
                                   gpu_memory_utilization=args.gpu_memory_utilization,
                                   enforce_eager=args.enforce_eager or not torch.cuda.is_available(),
                                   extra={"load_format": "dummy"})
        t0 = time.perf_counter()
        backend = make_backend("vllm", base, {"lora": adapter}, schema, settings)
        start_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        gens = [g[0] for g in backend.generate(prompts, Decoding(max_new_tokens=args.max_new_tokens), "lora")]
        seconds = time.perf_counter() - t0
        backend.close()
    completion = sum(g.completion_tokens for g in gens)
    result = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU",
              "date": dt.date.today().isoformat(), "shape": {k: shape[k] for k in (
                  "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "vocab_size")},
              "weights": "vLLM dummy (random), bf16", "lora_r": args.lora_r, "constrained": True,
              "cuda_graphs": not settings.enforce_eager, "notes": len(gens),
              "prompt_tokens": sum(g.prompt_tokens for g in gens), "completion_tokens": completion,
              "hit_max_new_tokens": sum(g.finish_reason == "length" for g in gens),
              "engine_start_s": round(start_s, 1), "generation_s": round(seconds, 1),
              "notes_per_s": round(len(gens) / seconds, 2), "generated_tokens_per_s": round(completion / seconds, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
