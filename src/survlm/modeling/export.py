"""A merged (adapter-free) export that computes what the adapter computed in training.

A QLoRA adapter was trained on the *NF4-quantized* base: its deltas correct that base, not the original
weights. Faithful merge: load the same NF4 weights, dequantize them exactly (bitsandbytes), add the LoRA
deltas, save a plain bf16 (or fp32) HF model. The proof is in the logits: the merged model against the
unmerged 4-bit base + adapter, next to the two naive routes,
  naive_original: merge into the original full-precision weights (ignores the quantization the adapter saw);
  naive_requant:  merge into the 4-bit model (PEFT dequantizes, adds, requantizes: the delta is rounded away).
Every model here is a fresh object: bitsandbytes repacks 4-bit weights on an eval-mode forward, so a model
that has run a forward is never the one that is merged.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .loading import dequantized_nf4, load_base, load_tokenizer, save_plain


def _peft(model, adapter: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter), is_trainable=False)


def dequantized_merge(base_dir: Path, adapter: Path, device: str, dtype: torch.dtype = torch.float32):
    """The NF4 base as trained, dequantized exactly, with the adapter merged in."""
    return _peft(dequantized_nf4(base_dir, device, dtype), adapter).merge_and_unload()


def full_precision_merge(base_dir: Path, adapter: Path, device: str):
    """The adapter merged into the full-precision base: faithful for plain LoRA, naive for QLoRA."""
    return _peft(load_base(base_dir, "none", device), adapter).merge_and_unload()


def faithful_merge(base_dir: Path, adapter: Path, device: str, quantization: str):
    """The merge that reproduces training: dequantized NF4 for QLoRA, the full-precision base for LoRA."""
    if quantization == "nf4":
        return dequantized_merge(base_dir, adapter, device)
    return full_precision_merge(base_dir, adapter, device)


def route_models(route: str, base_dir: Path, adapter: Path, device: str):
    if route == "unmerged_4bit":
        return _peft(load_base(base_dir, "nf4", device), adapter)
    if route == "unmerged_full":
        return _peft(load_base(base_dir, "none", device), adapter)
    if route in ("merge_full", "naive_original"):  # one merge; faithful or naive by how the adapter was trained
        return full_precision_merge(base_dir, adapter, device)
    if route == "dequantized_merge":
        return dequantized_merge(base_dir, adapter, device)
    if route == "naive_requant":
        return _peft(load_base(base_dir, "nf4", device), adapter).merge_and_unload()
    raise ValueError(route)


# Routes compared against the unmerged model, by the adapter's training quantization.
ROUTES = {"nf4": ("unmerged_4bit", ("dequantized_merge", "naive_original", "naive_requant")),
          "none": ("unmerged_full", ("merge_full",))}


@torch.inference_mode()
def _logits_and_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int):
    model.eval()
    device = next(model.parameters()).device
    out = []
    for text in prompts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
        logits = model(input_ids=ids).logits.float().cpu()
        gen = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        out.append((logits, gen[0, ids.shape[1]:].tolist()))
    return out


def compare_routes(base_dir: Path, adapter: Path, prompts: list[str], device: str, max_new_tokens: int = 32,
                   quantization: str = "nf4", exported: Path | None = None) -> dict:
    """Max |logit diff| and greedy agreement of each merge route against the unmerged model as trained;
    with `exported`, also of that saved merged model as it loads from disk (route `saved_export`)."""
    if quantization not in ROUTES:
        raise ValueError(f"quantization {quantization!r}: expected one of {', '.join(ROUTES)}")
    tokenizer = load_tokenizer(base_dir)
    reference_route, routes = ROUTES[quantization]
    reference = _logits_and_greedy(route_models(reference_route, base_dir, adapter, device), tokenizer, prompts,
                                   max_new_tokens)
    report = {}
    for route in routes + (("saved_export",) if exported else ()):
        model = (load_base(exported, "none", device) if route == "saved_export"
                 else route_models(route, base_dir, adapter, device))
        got = _logits_and_greedy(model, tokenizer, prompts, max_new_tokens)
        diffs = [float((a[0] - b[0]).abs().max()) for a, b in zip(reference, got)]
        report[route] = {"max_abs_logit_diff": max(diffs), "mean_max_abs_logit_diff": sum(diffs) / len(diffs),
                         "greedy_identical": sum(a[1] == b[1] for a, b in zip(reference, got)),
                         "prompts": len(prompts)}
    return report


def export_merged(base_dir: Path, adapter: Path, out_dir: Path, device: str, dtype: str = "bfloat16",
                  quantization: str = "nf4") -> None:
    model = faithful_merge(base_dir, adapter, device, quantization)
    save_plain(model.to(getattr(torch, dtype)), out_dir, base_dir)
