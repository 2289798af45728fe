"""SFT peak memory and speed on the Llama-3.1-8B shape (random weights), batch 1, on one CUDA GPU.

Variants, each in its own process so one OOM cannot disturb the next:
  survlm             our sft code path (survlm.modeling.sft.build_trainer: NF4 base, bf16, SDPA,
                     gradient checkpointing, TRL's fused LM head, paged 8-bit AdamW, Liger if installed)
  survlm_offload     the same with `sft.activation_offloading: true` (checkpointed activations on the CPU)
  anchor_bf16_sdpa   same 4-bit base in bf16 + SDPA + checkpointing, LoRA, plain forward/backward with
                     the model's own loss (full logits), paged 8-bit AdamW
  anchor_stock_peft  the stock PEFT QLoRA recipe: prepare_model_for_kbit_training defaults (fp32 norms)

No checkpoint can be fetched: the model is built from the config on the GPU, saved to /dev/shm and
loaded 4-bit like any base. Memory and speed do not depend on weight values.

  python benchmarks/sft_memory.py --tokenizer DIR --seqs 8192 16384 32768 --out benchmarks/results/sft_memory.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

LLAMA31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                  rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2, pad_token_id=2)
COMPLETION_TOKENS = 512
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}


def build_random_base(out: Path, tokenizer_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return
    config = LlamaConfig(**LLAMA31_8B)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, max_shard_size="5GB")
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    del model
    torch.cuda.empty_cache()


def synthetic_example(tokenizer, seq: int) -> dict:
    """A prompt/completion record of `seq` tokens in total (prompt padded with filler text)."""
    filler = "HD#3 T 37.2 C HR 88 RR 18 BP 120/60 Na 138 Cr 1.2 BUN 22 glucose 145 WBC 8.1 albumin 3.1. "
    unit = len(tokenizer(filler, add_special_tokens=False)["input_ids"])
    answer = ("x " * COMPLETION_TOKENS).strip()
    prompt_budget = seq - COMPLETION_TOKENS - 40
    note = filler * max(1, prompt_budget // unit)
    return {"prompt": [{"role": "system", "content": "Extract."}, {"role": "user", "content": note}],
            "completion": [{"role": "assistant", "content": answer}]}


def _steps_timed(step_fn, steps: int) -> list[float]:
    import torch

    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step_fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def run_variant(variant: str, base: Path, seqs: list[int], steps: int) -> list[dict]:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from survlm.modeling.loading import load_base, load_tokenizer, lora_config
    from survlm.config import parse_section
    from survlm.modeling.sft import build_trainer, example_lengths

    tokenizer = load_tokenizer(base)
    attn = "sdpa"
    model = load_base(base, "nf4", "cuda", attn)
    rows = []
    for seq in seqs:
        ex = synthetic_example(tokenizer, seq)
        n = example_lengths(tokenizer, ex)[1]
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        row = {"variant": variant, "seq": n}
        try:
            if variant.startswith("survlm"):
                params = parse_section("sft", {
                    "learning_rate": 1e-5, "num_train_epochs": 1, "max_steps": steps,
                    "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
                    "warmup_steps": 0, "lr_scheduler_type": "constant", "weight_decay": 0.0, "seed": 0,
                    "max_length": n + 8, "save_steps": None, "eval_steps": 1, "gradient_checkpointing": True,
                    "activation_offloading": variant == "survlm_offload", "use_liger_kernel": True, "optim": "auto",
                    "lora": LORA})
                trainer = build_trainer(model, tokenizer, params, [ex] * steps, [], base.parent / "sft-bench-out",
                                        "cuda")
                t0 = time.perf_counter()
                trainer.train()
                total = time.perf_counter() - t0
                per_step = trainer.throughput.history[1:] or trainer.throughput.history
                row["tok_s"] = round(statistics.median(per_step), 1) if per_step else round(n * steps / total, 1)
                row["liger"] = trainer.args.use_liger_kernel
                model = trainer.model.unload()  # drop the LoRA layers so the next length starts clean
                del trainer
            else:
                from peft import get_peft_model, prepare_model_for_kbit_training

                if variant == "anchor_stock_peft":
                    model = prepare_model_for_kbit_training(model)  # defaults: fp32 norms + checkpointing
                else:
                    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                    model.enable_input_require_grads()
                peft_model = get_peft_model(model, lora_config(parse_section("sft", {"lora": LORA}).lora))
                peft_model.train()
                import bitsandbytes as bnb

                opt = bnb.optim.PagedAdamW8bit([p for p in peft_model.parameters() if p.requires_grad], lr=1e-5)
                ids = tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True,
                                                    return_tensors="pt", return_dict=True)["input_ids"].cuda()

                def step():
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        loss = peft_model(input_ids=ids, labels=ids).loss
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)

                times = _steps_timed(step, steps)
                row["tok_s"] = round(n / statistics.median(times[1:] or times), 1)
                model = peft_model.unload()
                del peft_model, opt
            row["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        except torch.cuda.OutOfMemoryError:
            row.update({"oom": True, "peak_alloc_gib": None, "tok_s": None,
                        "gpu_total_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)})
            print(json.dumps(row), flush=True)
            rows.append(row)
            break  # longer sequences will not fit either
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def default_base_dir() -> str:
    """/dev/shm when it has room for the 16 GB bf16 checkpoint (fast reloads per variant), else /tmp."""
    import shutil

    room = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
    return "/dev/shm/llama31-8b-random" if room > 24 * 2**30 else "/tmp/llama31-8b-random"


def run_workers(script: str, args) -> list[dict]:
    """Each variant in its own process (an OOM cannot disturb the next); rows from its `ROWS` line."""
    runs = []
    for variant in args.variants:
        cmd = [sys.executable, script, "--tokenizer", args.tokenizer, "--base", args.base, "--steps",
               str(args.steps), "--worker", variant, "--seqs", *map(str, args.seqs)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        lines = [line for line in proc.stdout.splitlines() if line.startswith("ROWS ")]
        runs += json.loads(lines[-1][5:]) if lines else [{"variant": variant,
                                                          "error": (proc.stderr or proc.stdout)[-1500:]}]
        print(f"{variant}: {json.dumps(runs[-1])[:300]}", flush=True)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="dir with tokenizer files (e.g. models/base)")
    ap.add_argument("--base", default=None, help="where the random model is saved (default: /dev/shm if it has room)")
    ap.add_argument("--seqs", type=int, nargs="+", default=[8192, 16384, 32768])
    ap.add_argument("--variants", nargs="+",
                    default=["survlm", "survlm_offload", "anchor_bf16_sdpa", "anchor_stock_peft"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/sft_memory.json")
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
              "lora_r": LORA["r"], "batch": 1, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else None
    if previous and previous.get("gpu") == gpu and previous.get("date") == result["date"]:
        result["runs"] = previous["runs"] + runs  # several calls on one card and day add up
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in result["runs"]:
        print(f"{r.get('variant'):20s} seq={r.get('seq')} peak={r.get('peak_alloc_gib')} GiB tok/s={r.get('tok_s')}")


if __name__ == "__main__":
    main()
