"""QLoRA / LoRA supervised fine-tuning with TRL's SFTTrainer on prompt/completion records.

The loss covers the assistant answer only (`completion_only_loss`): prompt tokens get label -100.
Checkpoints hold the adapter (plus optimizer state for resuming), never base weights. A run whose
params and data match the one recorded in `run.json` resumes from its last checkpoint; anything
else starts clean, so a stale checkpoint never leaks into a new experiment.
"""
from __future__ import annotations

import hashlib
import json
import resource
import shutil
import time
from pathlib import Path

import torch

from .loading import compute_dtype, load_base, load_tokenizer, lora_config, pick_device, resolve_quantization

RUN_FILE = "run.json"


def prompt_completion(row: dict) -> dict:
    """A prepared chat record -> TRL's conversational prompt/completion format."""
    msgs = row["messages"]
    if len(msgs) != 3 or msgs[2]["role"] != "assistant":
        raise ValueError(f"record {row.get('id')}: needs system, user and assistant turns to train on")
    return {"id": row["id"], "prompt": msgs[:2], "completion": msgs[2:]}


def example_lengths(tokenizer, example: dict) -> tuple[int, int]:
    prompt = tokenizer.apply_chat_template(example["prompt"], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=False)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return n_prompt, len(tokenizer(full, add_special_tokens=False)["input_ids"])


def _fingerprint(params: dict, quantization: str, files: list[Path]) -> str:
    h = hashlib.sha256(json.dumps({"params": params, "quantization": quantization}, sort_keys=True).encode())
    for f in files:
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def _read(path: Path, limit: int | None) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if limit is not None and len(rows) >= limit:
                break
            rows.append(json.loads(line))
    return rows


def select_examples(tokenizer, rows: list[dict], max_length: int) -> tuple[list[dict], int]:
    """Examples that fit `max_length` whole; the rest are dropped and counted, never truncated."""
    kept, dropped = [], 0
    for row in rows:
        ex = prompt_completion(row)
        if example_lengths(tokenizer, ex)[1] <= max_length:
            kept.append(ex)
        else:
            dropped += 1
    return kept, dropped


def _peak_memory_gib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (process RSS)


def _callbacks(live, device: str) -> list:
    from transformers import TrainerCallback
    from transformers.integrations import DVCLiveCallback

    class Throughput(TrainerCallback):
        """tokens/s and peak memory next to TRL's loss, lr and grad-norm in the same dvclive step."""

        def __init__(self):
            self.t0, self.tokens0 = None, 0
            self.history: list[float] = []

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs is None or "num_tokens" not in logs or self.t0 is None:
                return
            now = time.perf_counter()
            tokens = logs["num_tokens"]
            logs["tokens_per_s"] = round((tokens - self.tokens0) / max(now - self.t0, 1e-9), 2)
            self.history.append(logs["tokens_per_s"])
            logs["peak_mem_gib"] = round(_peak_memory_gib(device), 3)
            self.t0, self.tokens0 = now, tokens

    # Throughput must run before DVCLive so the values it adds to `logs` are logged too.
    return [Throughput()] + ([DVCLiveCallback(live=live)] if live is not None else [])


def sft_config(params: dict, out_dir: Path, device: str, with_eval: bool):
    """TRL SFTConfig from the `sft` params section (memory discipline on CUDA, see module loading)."""
    from trl import SFTConfig

    on_cuda = device == "cuda"
    liger = bool(params.get("liger", False)) and on_cuda
    if liger:
        import importlib.util

        liger = importlib.util.find_spec("liger_kernel") is not None
    optim = params.get("optim", "auto")
    return SFTConfig(
        output_dir=str(out_dir),
        learning_rate=float(params["lr"]),
        num_train_epochs=float(params["epochs"]),
        max_steps=int(params.get("max_steps") or -1),
        per_device_train_batch_size=int(params["batch_size"]),
        per_device_eval_batch_size=int(params["batch_size"]),
        gradient_accumulation_steps=int(params["grad_accum"]),
        warmup_steps=int(params["warmup_steps"]),
        lr_scheduler_type=str(params.get("lr_scheduler", "cosine")),
        weight_decay=float(params["weight_decay"]),
        max_grad_norm=float(params.get("max_grad_norm", 1.0)),
        seed=int(params["seed"]),
        data_seed=int(params["seed"]),
        max_length=int(params["max_length"]),
        completion_only_loss=True,
        packing=False,
        save_strategy="steps" if params.get("save_steps") else "no",
        save_steps=int(params.get("save_steps") or 1),
        save_total_limit=None,
        eval_strategy="steps" if with_eval else "no",
        eval_steps=int(params["eval_steps"]),
        logging_steps=1,
        gradient_checkpointing=bool(params["gradient_checkpointing"]),
        gradient_checkpointing_kwargs={"use_reentrant": False},
        # The checkpointed per-layer inputs (seq x hidden x layers: 4.3 GiB at 16k on the 8B shape) move
        # to pinned CPU memory; what stays on the GPU is the 4-bit weights and one layer's recompute.
        activation_offloading=bool(params.get("activation_offloading", False)) and on_cuda,
        bf16=compute_dtype(device) == torch.bfloat16,
        optim=("paged_adamw_8bit" if on_cuda else "adamw_torch") if optim == "auto" else str(optim),
        use_liger_kernel=liger,
        report_to="none",
        dataloader_num_workers=0,
        use_cpu=not on_cuda,
        disable_tqdm=False,           # the Trainer's step bar (rank 0 only): steps, s/step, ETA
    )


def build_trainer(model, tokenizer, params: dict, train: list[dict], val: list[dict], out_dir: Path, device: str,
                  live=None):
    """SFTTrainer over `model` (wrapped with a fresh LoRA adapter); `trainer.throughput` has tokens/s per step."""
    from datasets import Dataset
    from trl import SFTTrainer

    callbacks = _callbacks(live, device)
    trainer = SFTTrainer(model=model, args=sft_config(params, out_dir, device, bool(val)),
                         train_dataset=Dataset.from_list(train),
                         eval_dataset=Dataset.from_list(val) if val else None, processing_class=tokenizer,
                         peft_config=lora_config(params["lora"]), callbacks=callbacks)
    trainer.throughput = callbacks[0]
    return trainer


def train_sft(params: dict, prepared_dir: Path, base_dir: Path, out_dir: Path, live_dir: Path | None) -> dict:
    """Train (or resume) and return a summary; `live_dir` None skips dvclive."""
    from accelerate import PartialState
    from transformers.trainer_utils import get_last_checkpoint

    device = pick_device()
    quantization = resolve_quantization(str(params.get("quantization", "auto")), device)
    train_path, val_path = prepared_dir / "train.jsonl", prepared_dir / "val.jsonl"
    fingerprint = _fingerprint(params, quantization, [train_path, val_path, base_dir / "config.json"])
    run_file = out_dir / RUN_FILE
    previous = json.loads(run_file.read_text()) if run_file.is_file() else {}
    resume = None
    if previous.get("fingerprint") == fingerprint and out_dir.is_dir():
        resume = get_last_checkpoint(str(out_dir))
    state = PartialState()  # joins the process group when launched on several GPUs (DDP); else one process
    main_process = state.is_main_process
    if main_process:
        if resume is None:
            shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps({"fingerprint": fingerprint, "quantization": quantization, "device": device,
                                        "base": str(base_dir), "complete": False}, indent=2) + "\n")
    state.wait_for_everyone()

    torch.manual_seed(int(params["seed"]))
    tokenizer = load_tokenizer(base_dir)
    max_length = int(params["max_length"])
    train, dropped_train = select_examples(tokenizer, _read(train_path, params.get("max_train_notes")), max_length)
    val, dropped_val = select_examples(tokenizer, _read(val_path, params.get("eval_notes")), max_length)
    if not train:
        raise ValueError(f"sft: no training example fits max_length={max_length} tokens")

    model = load_base(base_dir, quantization, device, str(params.get("attn_implementation", "sdpa")))
    live = None
    if live_dir is not None and main_process:
        from dvclive import Live

        live = Live(dir=str(live_dir), resume=resume is not None, report=None, save_dvc_exp=False,
                    dvcyaml=None)  # metrics and plots are declared in dvc.yaml; tests must not edit it
    trainer = build_trainer(model, tokenizer, params, train, val, out_dir, device, live)
    t0 = time.perf_counter()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = trainer.train(resume_from_checkpoint=resume)
    if live is not None:
        live.end()
    summary = {
        "device": device, "quantization": quantization, "liger": trainer.args.use_liger_kernel,
        "resumed_from": resume and Path(resume).name,
        "train_examples": len(train), "dropped_too_long": {"train": dropped_train, "val": dropped_val},
        "steps": trainer.state.global_step, "train_loss": round(float(result.training_loss), 5),
        "final_eval_loss": next((round(h["eval_loss"], 5) for h in reversed(trainer.state.log_history)
                                 if "eval_loss" in h), None),
        "train_seconds": round(time.perf_counter() - t0, 1), "peak_mem_gib": round(_peak_memory_gib(device), 3),
        "checkpoints": sorted((p.name for p in out_dir.glob("checkpoint-*")), key=lambda n: int(n.split("-")[1])),
    }
    if state.num_processes > 1:
        print(f"sft: DDP over {state.num_processes} processes")
    if main_process:
        info = json.loads(run_file.read_text())
        info.update({"complete": True, "summary": summary})
        run_file.write_text(json.dumps(info, indent=2) + "\n")
    return summary
