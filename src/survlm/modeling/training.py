"""What SFT and DPO training share: the TRL config built from a `TrainerParams` block (its trainer knobs carry TRL's
own names and pass through as they are; the device is decided in one place) and the callbacks that log throughput
and peak memory next to TRL's metrics."""
from __future__ import annotations

import importlib.util
import resource
import time
from dataclasses import fields
from pathlib import Path

import torch

from ..config import SFTParams, TrainerParams
from .loading import compute_dtype

# our own keys (data selection, model loading, generation), not TRL's
NOT_TRAINER = {"quantization", "max_train_notes", "eval_notes", "attn_implementation", "lora", "max_pairs",
               "max_prompt_length", "completion", "val_notes", "report", "value_weight"}


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two token lists share (a tokenized prompt and the prompt with its answer, two
    answers' rows)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    return next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)


def value_token_weights(offsets: list[tuple[int, int]], values: list[tuple[int, int]], in_loss: list[int],
                        value_weight: float) -> list[float]:
    """Each token's loss weight: `value_weight` for a loss token overlapping a field's value (character spans in
    the offsets' coordinates), 1 for the other loss tokens, 0 outside the loss; scaled so that the loss tokens
    average 1, so the loss keeps its scale and only its spread over the answer changes."""
    spans: list[list[int]] = []   # overlapping value spans merged, in text order (touching ones are kept apart:
    for a, b in sorted(values):   # a zero-width token where they meet overlaps neither)
        if spans and a < spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], b)
        else:
            spans.append([a, b])
    # one sweep, since the tokens come in text order: a span that ends before a token cannot touch later ones
    k, weights = 0, []
    for m, (s, e) in zip(in_loss, offsets):
        while k < len(spans) and spans[k][1] <= s:
            k += 1
        overlaps = k < len(spans) and spans[k][0] < e
        weights.append(0.0 if not m else value_weight if overlaps else 1.0)
    scale = sum(in_loss) / sum(weights) if sum(weights) else 1.0
    return [w * scale for w in weights]


class TokenWeightCollator:
    """A TRL collator, and each example's per-token loss weights (`key`, one per token of its `tokens` list) placed
    in a tensor shaped as the batch's `like`, on the positions of those tokens: after the example's `before` tokens
    where given. Weight 0 elsewhere (padding, prompts, the rows of other sequences)."""

    def __init__(self, collator, key: str, like: str, tokens: str, before: str | None = None):
        self.collator, self.key, self.like, self.tokens, self.before = collator, key, like, tokens, before

    def __call__(self, examples: list[dict]) -> dict:
        if self.key not in examples[0]:
            return self.collator(examples)
        batch = self.collator([{k: v for k, v in ex.items() if k != self.key} for ex in examples])
        weights = torch.zeros(batch[self.like].shape, dtype=torch.float32)
        for row, ex in enumerate(examples):
            start, w = len(ex[self.before]) if self.before else 0, ex[self.key]
            if len(w) != len(ex[self.tokens]) or start + len(w) > weights.shape[1]:
                raise ValueError(f"{self.key}: weights and tokens differ in length (a truncated example?)")
            weights[row, start:start + len(w)] = torch.tensor(w)
        batch[self.key] = weights
        return batch


def device_args(params: TrainerParams, device: str) -> dict:
    """The TRL settings that depend on the device. On CUDA: bf16, paged 8-bit AdamW (optim `auto`), Liger kernels
    where asked for and installed, optional activation offloading. On CPU: fp32, plain AdamW, none of the CUDA-only
    options."""
    on_cuda = device == "cuda"
    out = {
        "bf16": compute_dtype(device) == torch.bfloat16,
        "optim": ("paged_adamw_8bit" if on_cuda else "adamw_torch") if params.optim == "auto" else params.optim,
        # The checkpointed per-layer inputs (seq x hidden x layers: 4.3 GiB at 16k on the 8B shape) move to pinned
        # CPU memory; what stays on the GPU is the 4-bit weights and one layer's recompute.
        "activation_offloading": params.activation_offloading and on_cuda,
        "use_cpu": not on_cuda,
    }
    if isinstance(params, SFTParams):
        out["use_liger_kernel"] = params.use_liger_kernel and on_cuda and importlib.util.find_spec("liger_kernel") is not None
    return out


def trainer_config(config_cls, params: TrainerParams, out_dir: Path, device: str, with_eval: bool, **fixed):
    """`config_cls` (TRL's SFTConfig or DPOConfig) from the params block: every trainer knob as it is, then what
    a null stands for (no step limit, no checkpoints, eval once per epoch), the device settings, and `fixed` (what
    the calling trainer always sets)."""
    args = {f.name: getattr(params, f.name) for f in fields(params) if f.name not in NOT_TRAINER}
    args.update(
        max_steps=params.max_steps or -1,
        per_device_eval_batch_size=params.per_device_train_batch_size,
        data_seed=params.seed,
        save_strategy="steps" if params.save_steps else "no",
        save_steps=params.save_steps or 1,
        # eval loss once per epoch unless eval_steps asks for more
        eval_strategy=("steps" if params.eval_steps else "epoch") if with_eval else "no",
        eval_steps=params.eval_steps or 1,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=1,
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=False,           # the Trainer's step bar (rank 0 only): steps, s/step, ETA
    )
    args.update(device_args(params, device))
    args.update(fixed)
    return config_cls(output_dir=str(out_dir), **args)


def peak_memory_gib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (process RSS)


def callbacks(live, device: str) -> list:
    """[Throughput, DVCLive (when `live` is given)]: tokens/s and peak memory next to TRL's loss, lr and grad-norm
    in the same dvclive step."""
    from transformers import TrainerCallback
    from transformers.integrations import DVCLiveCallback

    class Throughput(TrainerCallback):
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
            logs["peak_mem_gib"] = round(peak_memory_gib(device), 3)
            self.t0, self.tokens0 = now, tokens

    class DVCLive(DVCLiveCallback):
        """dvclive's callback, logging the training arguments without `output_dir`: where a trainer keeps its
        checkpoints is no parameter, and dpo's is a work directory named by its process id, which made the
        logged params differ on every run."""

        def setup(self, args, state, model):
            log_params = self.live.log_params
            self.live.log_params = lambda params: log_params({k: v for k, v in params.items() if k != "output_dir"})
            try:
                super().setup(args, state, model)
            finally:
                del self.live.log_params

    # Throughput must run before DVCLive so the values it adds to `logs` are logged too.
    return [Throughput()] + ([DVCLive(live=live)] if live is not None else [])
