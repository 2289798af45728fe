"""Before a long GPU run hands its generation to vLLM: does the carried vLLM serve our base model in NF4 with a
LoRA adapter (unmerged) and JSON-constrained decoding? Prints one JSON line; exit status 1 if not.

  python scripts/offline_gpu/vllm_smoke.py [--base models/base] [--prepared data/prepared] [--notes 4]

The adapter is a random rank-64 LoRA on every linear layer (the SFT shape), made here with PEFT, so the check
needs no trained adapter, and no prepared notes: it can run while `prepare` does (which uses no GPU).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="models/base")
    ap.add_argument("--prepared", default=None, help="notes from here (val.jsonl); default: made-up notes")
    ap.add_argument("--notes", type=int, default=4)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.2)
    ap.add_argument("--quantization", default="nf4", choices=["nf4", "none"],
                    help="the base the adapter is served on: nf4 as in QLoRA, none for the full-precision base")
    ap.add_argument("--nf4-serving", default="dequantized", choices=["dequantized", "bitsandbytes"])
    args = ap.parse_args()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from survlm.modeling.backends import BackendSettings, Decoding, make_backend
    from survlm.schema import answer_prefix, load_schema, system_prompt
    from survlm.artifacts import first_records, load_prompt, note_of

    if args.prepared:  # real notes
        schema, system = load_prompt(args.prepared)
        notes = [note_of(r) for r in first_records(Path(args.prepared) / "val.jsonl", args.notes)]
    else:  # runs before `prepare` has made any
        schema = load_schema()
        system = system_prompt(schema)
        notes = [f"Day 3: HR {80 + i} bpm, Temp 38.{i} C, Na 13{i} mmol/L, age {50 + i}." for i in range(args.notes)]
    prompts = [[{"role": "system", "content": system}, {"role": "user", "content": note}] for note in notes]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
        lora = get_peft_model(model, LoraConfig(r=64, lora_alpha=128, target_modules="all-linear",
                                                init_lora_weights=False))
        lora.save_pretrained(tmp)
        del model, lora
        settings = BackendSettings(max_model_len=8192, enforce_eager=True, quantization=args.quantization,
                                   nf4_serving=args.nf4_serving, gpu_memory_utilization=args.gpu_memory_utilization)
        t0 = time.perf_counter()
        backend = make_backend("vllm", args.base, {"random_lora": tmp}, schema, settings)
        start_s = time.perf_counter() - t0
        adapters = ["random_lora", None] * (len(prompts) // 2) + ["random_lora"] * (len(prompts) % 2)
        t0 = time.perf_counter()
        gens = backend.generate(prompts, Decoding(max_new_tokens=48), adapters)
        seconds = time.perf_counter() - t0
        backend.close()
    texts = [g[0].text for g in gens]
    first_key = answer_prefix(schema)  # the schema's grammar forces this opening
    result = {"vllm_engine_start_s": round(start_s, 1), "generate_s": round(seconds, 1), "notes": len(texts),
              "completion_tokens": [g[0].completion_tokens for g in gens],
              "lora_and_base_differ": texts[0] != texts[1] if len(texts) > 1 else None,
              "constrained_opening": [t.startswith(first_key) for t in texts]}
    print(json.dumps(result))
    sys.exit(0 if all(result["constrained_opening"]) else 1)


if __name__ == "__main__":
    main()
