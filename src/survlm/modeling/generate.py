"""Greedy extraction with transformers `generate` (the `hf` backend): chat prompt in, raw answer out."""
from __future__ import annotations

import time
from typing import Iterable

import torch


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The exact prompt string TRL trains on for a prompt/completion record (system + user turns)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def answer_prefix(schema) -> str:
    """The opening every answer must have: the JSON object and its first key (the schema fixes the order).

    Forcing it costs nothing a correct answer would not write anyway, and stops a briefly tuned model
    (or the zero-shot base) from drifting into prose before it ever opens the object."""
    return '{"' + schema.names[0] + '":'


@torch.inference_mode()
def generate_answers(model, tokenizer, prompts: Iterable[list[dict]], max_new_tokens: int, batch_size: int = 4,
                     progress: bool = False, prefix: str = "") -> list[dict]:
    """Greedy answers for chat prompts: [{text, prompt_tokens, completion_tokens, latency_s}], in order.

    `prefix` is written as the start of every answer and is included in `text`."""
    prompts = list(prompts)
    tokenizer.padding_side = "left"  # decoder-only: pad on the left so every row continues its own prompt
    device = next(model.parameters()).device
    out: list[dict] = []
    batches = range(0, len(prompts), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="generate", unit="batch")
    for start in batches:
        texts = [chat_prompt(tokenizer, p) + prefix for p in prompts[start:start + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        t0 = time.perf_counter()
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        latency = (time.perf_counter() - t0) / len(texts)
        new = gen[:, enc["input_ids"].shape[1]:]
        for i in range(len(texts)):
            ids = new[i]
            keep = ids != tokenizer.pad_token_id
            if tokenizer.pad_token_id == tokenizer.eos_token_id:
                # pad == eos: everything up to (excluding) the first eos is the answer
                stop = (ids == tokenizer.eos_token_id).nonzero()
                keep = torch.arange(len(ids), device=ids.device) < (stop[0, 0] if len(stop) else len(ids))
            out.append({"text": prefix + tokenizer.decode(ids[keep], skip_special_tokens=True),
                        "prompt_tokens": int(enc["attention_mask"][i].sum()), "completion_tokens": int(keep.sum()),
                        "latency_s": round(latency, 4)})
    return out
