"""DPO on the selected SFT adapter, with a frozen copy of that same adapter as the reference policy.

"Load the adapter twice", as TRL 1.16 does it: we load the base once (same quantization the adapter was
trained on), wrap it in a PeftModel whose `default` adapter is the SFT adapter with is_trainable=True, and
pass no ref_model. DPOTrainer then adds a `ref` adapter with the same config and copies `default`'s weights
into it; reference log-probs come from the same base with `ref` active. No second base model is loaded and
nothing is merged. (TRL >= 0.29 removed `model_adapter_name` / `ref_adapter_name`; trl is pinned to 1.16.0.)

TRL 1.16 has no `max_prompt_length` and would cut over-long sequences (`truncation_mode`); we instead drop
pairs whose prompt or whole sequence is too long, and count them.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterable

import torch

from ..config import DPOParams
from ..confidence import value_spans
from .loading import load_base, load_tokenizer, pick_device
from .training import (TokenWeightCollator, callbacks, common_prefix, peak_memory_gib, trainer_config,
                       value_token_weights)


def pair_lengths(tokenizer, pair: dict) -> tuple[int, int]:
    """(prompt tokens, longest prompt+answer tokens) under the chat template."""
    prompt = tokenizer.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    longest = 0
    for key in ("chosen", "rejected"):
        full = tokenizer.apply_chat_template(pair["prompt"] + pair[key], tokenize=False)
        longest = max(longest, len(tokenizer(full, add_special_tokens=False)["input_ids"]))
    return n_prompt, longest


def select_pairs(tokenizer, pairs: list[dict], max_prompt_length: int, max_length: int) -> tuple[list[dict], int]:
    """The pairs that fit (as given, tags included), and how many did not."""
    kept, dropped = [], 0
    for p in pairs:
        n_prompt, n_full = pair_lengths(tokenizer, p)
        if n_prompt <= max_prompt_length and n_full <= max_length:
            kept.append(p)
        else:
            dropped += 1
    return kept, dropped


def _trl_rows(pairs: list[dict]) -> list[dict]:
    return [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]


def _tokenized_row(tokenizer, pair: dict, spans: tuple | None = None) -> dict:
    """A pair as a tokenized DPO row. Without `spans`, as TRL tokenizes a conversational pair: each whole answer,
    end of turn included, is the completion. With (chosen, rejected) character spans of one field's value, the
    completions are the tokens that cover each value, tokenized inside the whole answer (the tokens the model
    writes there; no end of turn), and the gold answer before the value is part of the prompt."""
    sides = []
    for key, span in zip(("chosen", "rejected"), spans or (None, None)):
        ids, first, offsets = _answer_tokens(tokenizer, pair["prompt"], pair[key])
        lo, hi = first, len(ids)
        if span is not None:
            start, end = span
            lo = first + next(i for i, (_, e) in enumerate(offsets) if e > start)
            hi = first + 1 + max(i for i, (s, _) in enumerate(offsets) if s < end)
        sides.append((ids, lo, hi))
    (chosen, c_lo, c_hi), (rejected, r_lo, r_hi) = sides
    # where a token joins the completion to the text before it, both sides keep it in their completion
    n = min(c_lo, r_lo, common_prefix(chosen, rejected))
    return {"prompt_ids": chosen[:n], "chosen_ids": chosen[n:c_hi], "rejected_ids": rejected[n:r_hi]}


def field_completion_row(tokenizer, pair: dict) -> dict | None:
    """A pair whose answers differ in one field, as a tokenized row whose completions are that field's value
    alone. The fields after it leave the loss: sigmoid's margin only nearly cancels them (their context differs
    in one value), apo_zero and the SFT term do not cancel them at all. None for any other pair."""
    from ..pairs import field_completion

    split = field_completion(pair["chosen"][0]["content"], pair["rejected"][0]["content"])
    return None if split is None else _tokenized_row(tokenizer, pair, split[1:])


def value_weighted_row(tokenizer, pair: dict, value_names: Iterable[str], value_weight: float) -> dict:
    """A pair as a tokenized DPO row of whole answers (as TRL tokenizes it) with `chosen_value_weights`: each
    chosen completion token's weight in the `sft` term, `value_weight` on a field's value tokens (`null`, or value
    and unit, as sft.value_weight weighs them), 1 on the rest, averaging 1 over the chosen completion."""
    row = _tokenized_row(tokenizer, pair)
    ids, first, offsets = _answer_tokens(tokenizer, pair["prompt"], pair["chosen"])
    values = list(value_spans(pair["chosen"][0]["content"], value_names).values())
    # completion tokens before the answer text (none under the usual chat templates) are no value's
    completion = [offsets[k - first] if k >= first else (0, 0) for k in range(len(row["prompt_ids"]), len(ids))]
    row["chosen_value_weights"] = value_token_weights(completion, values, [1] * len(completion), value_weight)
    return row


def dataset_rows(tokenizer, pairs: list[dict], completion: str, value_names: Iterable[str] = (),
                 value_weight: float = 1.0) -> tuple[list[dict], int]:
    """The rows DPOTrainer trains on, and how many are field completions. `answer`: the pairs as they are (TRL
    tokenizes them), or value_weighted_row with `value_weight` other than 1; `field`: each pair that differs in one
    field as field_completion_row, others whole."""
    if completion == "answer":
        if value_weight != 1.0:
            names = list(value_names)
            if not names:   # every weight would silently be 1
                raise ValueError("dpo.value_weight: no field names given to find the answers' value tokens by")
            return [value_weighted_row(tokenizer, p, names, value_weight) for p in pairs], 0
        return _trl_rows(pairs), 0
    rows = [field_completion_row(tokenizer, p) for p in pairs]
    return [r or _tokenized_row(tokenizer, p) for r, p in zip(rows, pairs)], sum(r is not None for r in rows)


def load_policy(base_dir: str | Path, adapter_dir: str | Path, quantization: str, device: str,
                attn_implementation: str = "sdpa"):
    """One base model + the SFT adapter as the trainable `default` adapter."""
    from peft import PeftModel

    base = load_base(base_dir, quantization, device, attn_implementation)
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)


def dpo_config(params: DPOParams, out_dir: Path, device: str, with_eval: bool):
    """TRL DPOConfig from the `dpo` params (device settings and memory discipline: modeling.training)."""
    from trl import DPOConfig

    loss = params.loss_type
    return trainer_config(
        DPOConfig, params, out_dir, device, with_eval,
        loss_type=[loss] if isinstance(loss, str) else list(loss),
        # [sigmoid, sft] with weights [1, w]: DPO plus w x the gold answer's NLL (RPO), against displacement
        loss_weights=[float(w) for w in params.loss_weights] if params.loss_weights else None,
        # checkpoints are candidates for the shipped adapter (the dpo stage scores each); never resumed from,
        # so no optimizer state is written
        save_only_model=True)


class _PolicyLogProbs:
    """The model as DPOTrainer's loss calls it for the policy's forward (the reference's goes through the trainer's
    own model), keeping that forward's per-token log-probabilities."""

    def __init__(self, model):
        self.model, self.log_probs = model, None

    def __call__(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        if self.log_probs is None:
            self.log_probs = out.log_probs
        return out


def weighted_sft_term(log_probs: torch.Tensor, completion_mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """TRL's `sft` term, the chosen completions' mean negative log-likelihood per token, with each token weighted.
    Rows are [chosen..., rejected...]; `log_probs` are per label token (shifted by one), so the weights are too."""
    chosen = completion_mask.size(0) // 2
    mask = completion_mask[:chosen, 1:].to(log_probs.dtype)
    w = weights[:chosen, 1:].to(log_probs.dtype)
    return -(log_probs[:chosen, -mask.size(1):] * w * mask).sum() / mask.sum().clamp_min(1)


def build_dpo_trainer(model, tokenizer, params: DPOParams, train: list[dict], val: list[dict], out_dir: Path,
                      device: str, live=None, value_names: Iterable[str] = ()):
    """DPOTrainer over a PeftModel with the SFT adapter as `default`; TRL adds the frozen `ref` copy. With
    `params.value_weight` other than 1, the training loss's `sft` term weighs the chosen answers' value tokens
    (weighted_sft_term); the preference terms and the eval loss are TRL's."""
    from datasets import Dataset
    from trl import DPOTrainer

    class Trainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" in dataset.column_names:   # dataset_rows tokenized it: keep its completions
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "chosen_value_weights" not in self._signature_columns:   # else the Trainer drops the column unread
                self._signature_columns = [*self._signature_columns, "chosen_value_weights"]

        def evaluate(self, *args, **kwargs):
            if self.eval_logps is None:
                return super().evaluate(*args, **kwargs)
            self.eval_logps.start(self.state.global_step)
            metrics = super().evaluate(*args, **kwargs)
            self.eval_logps.gather()
            return metrics

        def _compute_loss(self, model, inputs, return_outputs):
            if self.eval_logps is None or self.model.training:
                return self._weighted_loss(model, inputs, return_outputs)
            with self.eval_logps.batch(self.model, inputs) as seen:
                result = self._weighted_loss(model, inputs, return_outputs)
                if "ref" not in seen:   # precompute_ref_log_probs: TRL's evaluation ran no reference forward
                    self.compute_ref_log_probs(model, inputs)
            return result

        def _weighted_loss(self, model, inputs, return_outputs):
            weights = inputs.pop("chosen_value_weights", None)
            if weights is None:
                return super()._compute_loss(model, inputs, return_outputs)
            # TRL computes the other terms; the sft term is computed here from the same policy forward
            types, term_weights = self.loss_types, self.loss_weights
            k = types.index("sft")
            self.loss_types, self.loss_weights = types[:k] + types[k + 1:], term_weights[:k] + term_weights[k + 1:]
            policy = _PolicyLogProbs(model)
            try:
                result = super()._compute_loss(policy, inputs, return_outputs)
            finally:
                self.loss_types, self.loss_weights = types, term_weights
            loss, outputs = result if return_outputs else (result, None)
            loss = loss + term_weights[k] * weighted_sft_term(policy.log_probs, inputs["completion_mask"], weights)
            return (loss, outputs) if return_outputs else loss

    hooks = callbacks(live, device)
    train_rows, fields = dataset_rows(tokenizer, train, params.completion, value_names, params.value_weight)
    # the eval pairs as whole answers, tokenized as TRL tokenizes them, whatever the training completion: their
    # forwards give TRL's eval loss and rewards (unweighted) and, through `eval_logps`, the per-token log-probs
    val_rows = [_tokenized_row(tokenizer, p) for p in val]
    trainer = Trainer(model=model, ref_model=None, args=dpo_config(params, out_dir, device, bool(val)),
                      train_dataset=Dataset.from_list(train_rows),
                      eval_dataset=Dataset.from_list(val_rows) if val else None,
                      processing_class=tokenizer, callbacks=hooks)
    # each row's weights on its chosen completion, which TRL's collator puts after the row's prompt
    trainer.data_collator = TokenWeightCollator(trainer.data_collator, "chosen_value_weights", "completion_mask",
                                                "chosen_ids", before="prompt_ids")
    trainer.throughput = hooks[0]
    trainer.field_completions = fields
    trainer.eval_logps = _EvalLogps(tokenizer, val) if val else None
    return trainer


def adapter_state(model, name: str) -> dict[str, torch.Tensor]:
    """LoRA tensors of one adapter, keyed without the adapter name (comparable across adapters)."""
    tag = f".{name}."
    return {k.replace(tag, "."): v.detach().float().cpu().clone() for k, v in model.named_parameters()
            if "lora_" in k and tag in k}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if a.keys() != b.keys():
        raise ValueError("adapters have different LoRA tensors")
    return max((float((a[k] - b[k]).abs().max()) for k in a), default=0.0)


def _answer_tokens(tokenizer, prompt: list[dict], answer: list[dict]) -> tuple[list[int], int, list[tuple[int, int]]]:
    """Token ids of prompt + answer under the chat template, the index of the first answer token, and each
    answer token's character offsets relative to the answer text (what TRL scores as the completion)."""
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
    at = full.find(answer[0]["content"], len(prompt_text))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    first = next(i for i, (s, _) in enumerate(enc["offset_mapping"]) if s >= len(prompt_text))
    return enc["input_ids"], first, [(s - at, e - at) for s, e in enc["offset_mapping"][first:]]


class _EvalLogps:
    """Each eval pair's per-token log-probs of both answers under the reference (`ref`, the SFT adapter) and the
    policy (`default`), read from the forwards of TRL's own evaluation: a forward hook on the PeftModel keeps
    each call's `log_probs` by the adapter it ran with, and a row is matched to its pair by its tokens (so the
    evaluation's order and sharding do not matter). `rows` hold the last evaluation's, made at step `step`."""

    def __init__(self, tokenizer, pairs: list[dict]):
        self.pair_of: dict[tuple, int] = {}
        for k, p in enumerate(pairs):
            ids = [tuple(_answer_tokens(tokenizer, p["prompt"], p[side])[0]) for side in ("chosen", "rejected")]
            self.pair_of.setdefault(tuple(ids), k)
        self.step: int | None = None
        self.rows: dict[int, dict[str, dict[str, list[float]]]] = {}

    def start(self, step: int) -> None:
        self.step, self.rows = step, {}

    def gather(self) -> None:
        """Every process's rows: under DDP each evaluates its own share of the eval pairs."""
        from accelerate.utils import gather_object

        merged: dict[int, dict] = {}
        for rows in gather_object([self.rows]):
            for k, logps in rows.items():
                merged.setdefault(k, logps)
        self.rows = merged

    @contextlib.contextmanager
    def batch(self, model, inputs: dict):
        seen = {}

        def keep(module, args, kwargs, output):
            seen[module.active_adapter] = output.log_probs.detach()

        handle = model.register_forward_hook(keep, with_kwargs=True)
        try:
            yield seen
        finally:
            handle.remove()
        if {"default", "ref"} <= set(seen):
            self._keep(inputs, seen)

    def _keep(self, inputs: dict, seen: dict) -> None:
        ids, attention, completion = inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
        shift = ids.size(1) - 1          # log_probs[:, -shift:][:, t] is the log-prob of token t + 1
        half = ids.size(0) // 2          # rows are [chosen..., rejected...]
        for r in range(half):
            tokens, logps = [], {}
            for side, row in (("chosen", r), ("rejected", r + half)):
                tokens.append(tuple(ids[row][attention[row].bool()].tolist()))
                at = completion[row].nonzero()[:, 0] - 1
                logps[side] = {a: lp[row, -shift:][at].float().tolist() for a, lp in seen.items()}
            k = self.pair_of.get(tuple(tokens))
            if k is not None:
                self.rows.setdefault(k, logps)


def logp_by_token_class(tokenizer, pairs: list[dict], logps: dict[int, dict]) -> dict | None:
    """Log-prob of each pair's chosen and rejected answer under the SFT adapter (TRL's frozen `ref` copy) and
    the DPO policy (`default`), summed per token class: the field(s) where the two answers differ vs the
    shared fields, `null` values vs other values, structure. Aggregated per pair type (error tag). `logps`:
    pair index -> side -> adapter -> the completion's per-token log-probs (`_EvalLogps.rows`)."""
    from ..pairs import aggregate_logp_changes, char_classes, class_sums, differing_fields, token_classes

    rows = []
    for k, p in enumerate(pairs):
        if k not in logps:
            continue
        texts = {side: p[side][0]["content"] for side in ("chosen", "rejected")}
        differing = differing_fields(texts["chosen"], texts["rejected"])
        row = {"tags": list(p.get("tags") or [])}
        for side, text in texts.items():
            _, _, offsets = _answer_tokens(tokenizer, p["prompt"], p[side])
            n = len(offsets)   # a completion that starts before the answer text: its last n tokens are the answer's
            lp = logps[k][side]
            row[side] = class_sums(token_classes(offsets, char_classes(text, differing)), lp["ref"][-n:],
                                   lp["default"][-n:])
        rows.append(row)
    return aggregate_logp_changes(rows) if rows else None


def train_dpo(params: DPOParams, train_pairs: list[dict], eval_pairs: list[dict], base_dir: Path, sft_adapter: Path,
              quantization: str, out_dir: Path, live_dir: Path | None, value_names: Iterable[str] = ()) -> dict:
    """Train and save the policy adapter (only `default`) to out_dir; returns a summary incl. the ref check.
    `value_names`: the schema's fields, whose value tokens `params.value_weight` weighs in the `sft` term.

    Under DDP (torchrun / `accelerate launch --multi_gpu`) every process trains; rank 0 alone logs and saves."""
    from accelerate import PartialState

    state = PartialState()  # joins the process group when launched as several processes
    device = pick_device()
    torch.manual_seed(params.seed)
    tokenizer = load_tokenizer(base_dir)
    max_prompt, max_len = params.max_prompt_length, params.max_length
    train, dropped_train = select_pairs(tokenizer, train_pairs, max_prompt, max_len)
    val, dropped_val = select_pairs(tokenizer, eval_pairs, max_prompt, max_len)
    if params.max_pairs:
        train = train[: params.max_pairs]
    if not train:
        raise ValueError(f"dpo: no preference pair fits max_length={max_len} / max_prompt_length={max_prompt}")
    if (problem := params.value_weight_problem()) is not None:
        raise ValueError(f"dpo.value_weight: {problem}")
    model = load_policy(base_dir, sft_adapter, quantization, device, params.attn_implementation)
    sft_weights = adapter_state(model, "default")
    live = None
    if live_dir is not None and state.is_main_process:
        from dvclive import Live

        live = Live(dir=str(live_dir), report=None, save_dvc_exp=False,
                    dvcyaml=None)  # metrics and plots are declared in dvc.yaml; tests must not edit it
    trainer = build_dpo_trainer(model, tokenizer, params, train, val, out_dir, device, live, value_names)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    if live is not None:
        live.end()
    policy = trainer.model
    ref_diff = max_abs_diff(adapter_state(policy, "ref"), sft_weights)
    policy_change = max_abs_diff(adapter_state(policy, "default"), sft_weights)
    if state.num_processes > 1:
        print(f"dpo: DDP over {state.num_processes} processes")
    if val and trainer.eval_logps.step != trainer.state.global_step:
        trainer.evaluate()   # the trainer evaluates at the last step itself; should it not, the final policy still is
    by_class = None
    if state.is_main_process:
        policy.save_pretrained(str(out_dir), selected_adapters=["default"])
        if val:
            by_class = logp_by_token_class(tokenizer, val, trainer.eval_logps.rows)
    logs = [h for h in trainer.state.log_history if "rewards/margins" in h]
    last_eval = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), {})
    last = logs[-1] if logs else {}
    # Likelihood displacement: the margin can grow while the gold answer itself becomes less likely. Measured on
    # the eval pairs' whole gold answers whatever the completion (a field completion is one value); without eval
    # pairs, from the last step's chosen reward, beta * (policy - reference) log-prob of the chosen completion.
    if by_class:
        gold_logp, gold_on = by_class["all"]["chosen"]["answer"]["change_per_pair"], "eval"
    else:
        reward = last.get("rewards/chosen")
        gold_logp = None if reward is None else float(reward) / params.beta
        gold_on = "last train step" if params.completion == "answer" else "last train step, completions only"
    return {
        "device": device, "quantization": quantization, "train_pairs": len(train), "eval_pairs": len(val),
        "dropped_too_long": {"train": dropped_train, "eval": dropped_val},
        "steps": trainer.state.global_step, "train_loss": round(float(result.training_loss), 5),
        "last_step": {k: round(float(v), 5) for k, v in last.items() if k.startswith("rewards/") or k == "loss"},
        # the last evaluation, the final policy's (its step); the per-token classes come from its forwards
        "eval": {k: round(float(v), 5) if k != "step" else v for k, v in last_eval.items()
                 if k.startswith("eval_") or k == "step"},
        "train_seconds": round(seconds, 1), "peak_mem_gib": round(peak_memory_gib(device), 3),
        "tokens_per_s": round(sum(trainer.throughput.history) / max(len(trainer.throughput.history), 1), 2),
        # the reference is the SFT adapter, bit for bit; the policy moved away from it
        "ref_adapter_max_abs_diff_from_sft": ref_diff, "policy_max_abs_change": policy_change,
        "adapters_in_model": sorted(policy.peft_config),
        # with field completions, chosen and rejected are the contrasted field's value alone
        "completion": params.completion, "field_completion_pairs": trainer.field_completions,
        "gold_logp_change": None if gold_logp is None else round(gold_logp, 3),
        "gold_logp_change_on": gold_on,
        "logp_change_by_pair_type": by_class,
    }
