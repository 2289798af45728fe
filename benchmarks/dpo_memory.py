"""DPO peak memory and speed on the Llama-3.1-8B shape (random weights), batch 1 pair, on one CUDA GPU.

Each pair is a ~`seq`-token prompt plus a 512-token chosen and a 512-token rejected answer (`seq` in the
results = prompt + one answer, the tokens of each of the two sequences DPO runs). Variants, each in its own
process:
  survlm            our dpo code path (survlm.modeling.dpo.build_dpo_trainer): NF4 base in bf16, an SFT adapter
                    loaded as the trainable `default`, TRL's frozen `ref` copy as reference, SDPA, gradient
                    checkpointing, TRL's chunked log-probs (no full logits), paged 8-bit AdamW
  survlm_offload    the same with activation offloading (checkpointed activations on the CPU)
  anchor_stock_trl  TRL's stock DPO QLoRA recipe: prepare_model_for_kbit_training defaults (fp32 norms,
                    checkpointing), DPOTrainer with peft_config (a fresh adapter), no Liger

  python benchmarks/dpo_memory.py --tokenizer DIR --seqs 8192 16384 --out benchmarks/results/dpo_memory.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_memory import LORA, build_random_base, default_base_dir, run_workers  # noqa: E402  (shared with SFT)

ANSWER_TOKENS = 512


def synthetic_pair(tokenizer, seq: int) -> dict:
    filler = "HD#3 T 37.2 C HR 88 RR 18 BP 120/60 Na 138 Cr 1.2 BUN 22 glucose 145 WBC 8.1 albumin 3.1. "
    unit = len(tokenizer(filler, add_special_tokens=False)["input_ids"])
    note = filler * max(1, (seq - ANSWER_TOKENS - 40) // unit)
    return {"prompt": [{"role": "system", "content": "Extract."}, {"role": "user", "content": note}],
            "chosen": [{"role": "assistant", "content": ("a " * ANSWER_TOKENS).strip()}],
            "rejected": [{"role": "assistant", "content": ("b " * ANSWER_TOKENS).strip()}]}


def run_variant(variant: str, base: Path, seqs: list[int], steps: int) -> list[dict]:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    from survlm.config import LoraParams, parse_section
    from survlm.modeling.dpo import build_dpo_trainer, pair_lengths
    from survlm.modeling.loading import load_base, load_tokenizer, lora_config

    tokenizer = load_tokenizer(base)
    adapter_dir = base.parent / "dpo-bench-sft-adapter"
    rows = []
    for seq in seqs:
        pair = synthetic_pair(tokenizer, seq)
        n = pair_lengths(tokenizer, pair)[1]
        gc.collect()
        torch.cuda.empty_cache()
        row = {"variant": variant, "seq": n}
        model = load_base(base, "nf4", "cuda", "sdpa")
        if not (adapter_dir / "adapter_config.json").is_file():
            get_peft_model(model, lora_config(LoraParams(**LORA))).save_pretrained(adapter_dir)
            model = load_base(base, "nf4", "cuda", "sdpa")
        params = parse_section("dpo", {
            "beta": 0.1, "loss_type": "sigmoid", "loss_weights": None, "learning_rate": 1e-5,
            "num_train_epochs": 1, "max_steps": steps, "per_device_train_batch_size": 1,
            "gradient_accumulation_steps": 1, "warmup_steps": 0, "lr_scheduler_type": "constant", "max_grad_norm": 1.0,
            "max_length": n + 8, "precompute_ref_log_probs": False, "seed": 0,
            "gradient_checkpointing": variant != "anchor_stock_trl",
            "activation_offloading": variant == "survlm_offload", "optim": "auto",
            "save_steps": None, "eval_steps": None})
        torch.cuda.reset_peak_memory_stats()
        try:
            if variant == "anchor_stock_trl":
                from datasets import Dataset
                from trl import DPOConfig, DPOTrainer

                model = prepare_model_for_kbit_training(model)  # defaults: fp32 norms + gradient checkpointing
                args = DPOConfig(output_dir=str(base.parent / "dpo-bench-out"), max_steps=steps, learning_rate=1e-5,
                                 per_device_train_batch_size=1, max_length=n + 8, bf16=True, logging_steps=1,
                                 save_strategy="no", report_to="none", optim="paged_adamw_8bit",
                                 gradient_checkpointing=True, disable_tqdm=True)
                trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list([pair] * steps),
                                     processing_class=tokenizer, peft_config=lora_config(LoraParams(**LORA)))
                times = []

                from transformers import TrainerCallback

                class Clock(TrainerCallback):
                    def on_step_begin(self, *a, **k):
                        torch.cuda.synchronize()
                        self.t0 = time.perf_counter()

                    def on_step_end(self, *a, **k):
                        torch.cuda.synchronize()
                        times.append(time.perf_counter() - self.t0)

                trainer.add_callback(Clock())
                trainer.train()
                row["tok_s"] = round(2 * n / statistics.median(times[1:] or times), 1)
            else:
                policy = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
                trainer = build_dpo_trainer(policy, tokenizer, params, [pair] * steps, [],
                                            base.parent / "dpo-bench-out", "cuda")
                trainer.train()
                per_step = trainer.throughput.history[1:] or trainer.throughput.history
                row["tok_s"] = round(statistics.median(per_step), 1) if per_step else None
                row["adapters"] = sorted(trainer.model.peft_config)
            row["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        except torch.cuda.OutOfMemoryError:
            row.update({"oom": True, "peak_alloc_gib": None, "tok_s": None,
                        "gpu_total_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)})
            print(json.dumps(row), flush=True)
            rows.append(row)
            break
        del trainer, model
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--base", default=None)
    ap.add_argument("--seqs", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--variants", nargs="+", default=["survlm", "survlm_offload", "anchor_stock_trl"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/dpo_memory.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.base is None:
        args.base = default_base_dir()
    if args.worker:
        print("ROWS " + json.dumps(run_variant(args.worker, Path(args.base), args.seqs, args.steps)), flush=True)
        return
    import torch

    build_random_base(Path(args.base), Path(args.tokenizer))
    gpu = torch.cuda.get_device_name(0)
    runs = run_workers(__file__, args)
    result = {"gpu": gpu, "date": dt.date.today().isoformat(), "model": "Llama-3.1-8B shape, random weights, NF4",
              "lora_r": LORA["r"], "batch": "1 pair (chosen + rejected)", "answer_tokens": ANSWER_TOKENS,
              "seq": "prompt + one answer, tokens per sequence", "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        print(f"{r.get('variant'):18s} seq={r.get('seq')} peak={r.get('peak_alloc_gib')} GiB tok/s={r.get('tok_s')}")


if __name__ == "__main__":
    main()
