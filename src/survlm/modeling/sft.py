"""QLoRA / LoRA supervised fine-tuning with TRL's SFTTrainer on prompt/completion examples built from the
prepared records (system prompt from prompt.json, the note, the gold answer: artifacts.chat_messages).

The loss covers the assistant answer only (`completion_only_loss`): prompt tokens get label -100.
Checkpoints hold the adapter (plus optimizer state for resuming), never base weights, and each gets its run
record (adapter_run.json). A run whose params and data match the one recorded in `run.json` resumes from its
last checkpoint; anything else starts clean, so a stale checkpoint never leaks into a new experiment.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Iterable

import torch

from ..artifacts import (PROMPT_FILE, adapter_run, chat_messages, first_records, has_target, load_prompt, read_jsonl,
                         write_adapter_run)
from ..config import SFTParams, to_dict
from ..confidence import value_spans
from ..hashing import source_digest
from ..phases import Phases
from .loading import (is_main_process, load_base, load_tokenizer, lora_config, model_digest, pick_device,
                      resolve_quantization)
from .training import (TokenWeightCollator, callbacks, common_prefix, peak_memory_gib, trainer_config,
                       value_token_weights)

RUN_FILE = "run.json"


def prompt_completion(row: dict, system: str) -> dict:
    """A prepared record -> TRL's conversational prompt/completion format."""
    msgs = chat_messages(system, row)
    return {"id": row["id"], "prompt": msgs[:2], "completion": msgs[2:]}


def example_lengths(tokenizer, example: dict) -> tuple[int, int]:
    """(prompt tokens, all tokens) of one prompt/completion example, as sft trains on it."""
    mask = tokenized_example(tokenizer, example, [])["completion_mask"]
    return (mask.index(1) if 1 in mask else len(mask)), len(mask)


def tokenized_example(tokenizer, example: dict, spans: list, value_names: Iterable[str] = (),
                      value_weight: float = 1.0) -> dict:
    """One example as tokenized_examples tokenizes it."""
    return tokenized_examples(tokenizer, [example], [spans], value_names, value_weight)[0]


# examples per batched tokenizer call: the tokenizer spreads a batch over the CPU cores, and a bounded batch bounds
# the memory that the offsets of long notes take
TOKENIZE_BATCH = 256


def tokenized_examples(tokenizer, examples: list[dict], spans: list[list] | None = None,
                       value_names: Iterable[str] = (), value_weight: float = 1.0) -> list[dict]:
    """Prompt/completion examples tokenized as TRL tokenizes them: the chat template's text, the completion starting
    where the tokenized prompt and the tokenized prompt + answer part. Each note is tokenized once with its answer
    and once as the prompt, in batches. The answer's characters in `spans` (a user record's `loss_mask`:
    unlabelled fields, evidence that was not located) leave the loss.

    With `value_weight` other than 1, `value_weights` gives each loss token its weight: `value_weight` for the
    tokens of a field's value up to its evidence quote (`null`, or `{"value":...,"unit":...,` as
    confidence.value_spans reads it; its first token is where the answer decides between `null` and a value), 1
    for the rest of the answer (field names, the punctuation between fields, evidence quotes), scaled so that they
    average 1 over the example's loss tokens.
    The loss keeps its scale and its token count; only its spread over the answer changes."""
    spans = spans if spans is not None else [[] for _ in examples]
    names = list(value_names)
    out = []
    for lo in range(0, len(examples), TOKENIZE_BATCH):
        batch = examples[lo:lo + TOKENIZE_BATCH]
        prompts = [tokenizer.apply_chat_template(ex["prompt"], tokenize=False, add_generation_prompt=True)
                   for ex in batch]
        texts = [tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=False) for ex in batch]
        full = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        if lo == 0 and batch:   # TRL's ids come from apply_chat_template(tokenize=True): the same, or refuse
            ex = batch[0]
            ids = tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True,
                                                return_dict=True)["input_ids"]
            if list(ids) != list(full["input_ids"][0]):
                raise ValueError(f"record {ex['id']}: the chat template's text does not tokenize to its ids; "
                                 "cannot place the answer's masked spans")
        for k, ex in enumerate(batch):
            ids, offsets, text = list(full["input_ids"][k]), full["offset_mapping"][k], texts[k]
            n_prompt = common_prefix(prompt_ids[k], ids)
            answer = ex["completion"][0]["content"]
            at = text.rfind(answer)
            masked = [(at + a, at + b) for a, b in spans[lo + k]]
            mask = [0] * n_prompt + [1] * (len(ids) - n_prompt)
            if masked:
                for t, (s, e) in enumerate(offsets):
                    if t >= n_prompt and any(s < b and a < e for a, b in masked):
                        mask[t] = 0
            row = {"id": ex["id"], "input_ids": ids, "completion_mask": mask}
            if value_weight != 1.0:
                values = [(at + a, at + b) for a, b in value_spans(answer, names).values()]
                # prompt tokens weigh 0 either way; only the answer's tokens are looked at
                row["value_weights"] = [0.0] * n_prompt + value_token_weights(offsets[n_prompt:], values,
                                                                              mask[n_prompt:], value_weight)
            out.append(row)
    return out


def _fingerprint(params: SFTParams, quantization: str, files: list[Path], base_dir: Path) -> str:
    """Params, data, the base model's files and survlm's code: checkpoints of another base (even one with the same
    config.json) or of other code are never resumed."""
    h = hashlib.sha256(json.dumps({"params": to_dict(params), "quantization": quantization,
                                   "code": source_digest()}, sort_keys=True).encode())
    for f in files:
        h.update(hashlib.sha256(f.read_bytes()).digest())
    h.update(model_digest(base_dir).encode())
    return h.hexdigest()[:16]


def training_rows(prepared_dir: Path, limit: int | None) -> list[dict]:
    """The first `limit` training patients (train.jsonl), then prepare's further renderings of those same
    patients (train_renderings.jsonl, written when prepare.renderings_per_patient > 1)."""
    rows = first_records(prepared_dir / "train.jsonl", limit)
    extra = prepared_dir / "train_renderings.jsonl"
    if extra.is_file():
        ids = {r["id"] for r in rows}
        rows += [r for r in read_jsonl(extra) if r["patient"] in ids]
    return rows


def fitting_examples(examples: list[dict], max_length: int) -> tuple[list[dict], int]:
    """The tokenized examples that fit `max_length` whole; the rest are dropped and counted, never truncated."""
    kept = [ex for ex in examples if len(ex["input_ids"]) <= max_length]
    return kept, len(examples) - len(kept)


def sft_config(params: SFTParams, out_dir: Path, device: str, with_eval: bool):
    """TRL SFTConfig from the `sft` params (device settings and memory discipline: modeling.training)."""
    from trl import SFTConfig

    # the rows come with their labels (label_rows): TRL's dataset preparation has nothing left to do
    return trainer_config(SFTConfig, params, out_dir, device, with_eval, completion_only_loss=True, packing=False,
                          save_total_limit=None, dataset_kwargs={"skip_prepare_dataset": True})


class _WeightedLogProbs:
    """The model as compute_loss calls it, with its fused LM head's per-token log-probabilities scaled by the
    batch's answer-token weights: SFTTrainer's loss (their negated sum over the token count) becomes the weighted
    one, while its entropy and token-accuracy metrics stay unweighted."""

    def __init__(self, model, weights: torch.Tensor):
        self.model, self.weights = model, weights

    def __call__(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        if kwargs.get("fused_lm_head") and getattr(out, "log_probs", None) is not None:
            out.log_probs = out.log_probs * self.weights[:, 1:].to(out.log_probs.dtype)   # labels are shifted by one
        return out


def _trainer_class(value_weighted: bool):
    from trl import SFTTrainer

    if not value_weighted:
        return SFTTrainer

    class ValueWeightedSFTTrainer(SFTTrainer):
        """SFTTrainer whose training loss weighs each answer token by the example's `value_weights`."""

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "value_weights" not in self._signature_columns:   # else the Trainer drops the column unread
                self._signature_columns = [*self._signature_columns, "value_weights"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weights = inputs.pop("value_weights", None)
            if weights is not None:
                model = _WeightedLogProbs(model, weights)
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return ValueWeightedSFTTrainer


def label_rows(examples: list[dict]):
    """Tokenized examples as the Dataset SFTTrainer trains on: `input_ids`, `labels` (-100 outside the loss, as
    TRL's own preparation sets them from `completion_mask`) and `value_weights` where the examples have them.
    Examples without a loss token are left out, as TRL leaves them out. The columns are built as Arrow arrays at
    once: TRL's preparation maps over every token of every note three times, and Dataset.from_list infers each
    row's types, which took longer than tokenizing on a few thousand 3k-token notes (BENCHMARKS.md)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset

    examples = [ex for ex in examples if 1 in ex["completion_mask"]]
    ids = pa.array([ex["input_ids"] for ex in examples], pa.list_(pa.int32()))
    in_loss = pa.array([ex["completion_mask"] for ex in examples], pa.list_(pa.int8())).values.cast(pa.bool_())
    labels = pc.if_else(in_loss, ids.values, pa.scalar(-100, pa.int32()))
    columns = {"input_ids": ids, "labels": pa.ListArray.from_arrays(ids.offsets, labels)}
    if examples and "value_weights" in examples[0]:
        columns["value_weights"] = pa.array([ex["value_weights"] for ex in examples], pa.list_(pa.float32()))
    return Dataset(pa.table(columns))


def build_trainer(model, tokenizer, params: SFTParams, train: list[dict], val: list[dict], out_dir: Path, device: str,
                  live=None):
    """SFTTrainer over `model` (wrapped with a fresh LoRA adapter) and tokenized examples (tokenized_examples);
    `trainer.throughput` has tokens/s per step. Training examples with `value_weights` train on the weighted loss."""
    weighted = any("value_weights" in ex for ex in train)
    hooks = callbacks(live, device)
    trainer = _trainer_class(weighted)(
        model=model, args=sft_config(params, out_dir, device, bool(val)), train_dataset=label_rows(train),
        eval_dataset=label_rows(val) if val else None, processing_class=tokenizer,
        peft_config=lora_config(params.lora), callbacks=hooks)
    if weighted:
        trainer.data_collator = TokenWeightCollator(trainer.data_collator, "value_weights", "input_ids", "input_ids")
    trainer.throughput = hooks[0]
    return trainer


def _mean_logged_loss(history: list[dict], result) -> float:
    losses = [h["loss"] for h in history if "loss" in h]
    return round(sum(losses) / len(losses) if losses else float(result.training_loss), 5)


def last_complete_checkpoint(out_dir: Path) -> str | None:
    """The newest checkpoint that was written to the end, i.e. whose trainer_state.json (the Trainer writes it
    last) reads back. A process killed while saving leaves a checkpoint without it: that one is deleted, and
    the run resumes from the one before."""
    steps = sorted((p for p in out_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[1].isdigit()),
                   key=lambda p: int(p.name.split("-")[1]), reverse=True)
    for ckpt in steps:
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            return str(ckpt)
        except (OSError, ValueError):
            if is_main_process():
                shutil.rmtree(ckpt, ignore_errors=True)
    return None


def _logged_before(row: str, step: int) -> bool:
    """A whole `step<TAB>value` row (not one torn by the kill) of a step before `step`."""
    head = row.split("\t", 1)[0]
    return row.endswith("\n") and "\t" in row and head.isdigit() and int(head) < step


def rewind_live(live_dir: Path, checkpoint: str) -> None:
    """dvclive's curves as they stood at `checkpoint`: the run that was cut off logged steps past it, which the
    resumed run logs again. The Trainer calls the dvclive callback once per log_history entry, and dvclive counts
    its own steps from 0, so the checkpoint's history length is where the curves end."""
    logged = len(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["log_history"])
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines(keepends=True)
        tsv.write_text("".join(lines[:1] + [x for x in lines[1:] if _logged_before(x, logged)]))
    summary = live_dir / "metrics.json"
    if summary.is_file():
        summary.write_text(json.dumps({**json.loads(summary.read_text()), "step": logged - 1}, indent=4) + "\n")


def train_sft(params: SFTParams, prepared_dir: Path, base_dir: Path, out_dir: Path, live_dir: Path | None) -> dict:
    """Train (or resume) and return a summary; `live_dir` None skips dvclive."""
    from accelerate import PartialState

    phases = Phases()
    device = pick_device()
    quantization = resolve_quantization(params.quantization, device)
    schema, system = load_prompt(prepared_dir)
    train_path, val_path = prepared_dir / "train.jsonl", prepared_dir / "val.jsonl"
    renderings = prepared_dir / "train_renderings.jsonl"
    with phases.time("fingerprint"):
        fingerprint = _fingerprint(params, quantization, [train_path, val_path, prepared_dir / PROMPT_FILE]
                                   + ([renderings] if renderings.is_file() else []), base_dir)
    run_file = out_dir / RUN_FILE
    previous = json.loads(run_file.read_text()) if run_file.is_file() else {}
    resume = None
    # a run that finished is trained anew (a forced repro): "resuming" at its end would train nothing and log
    # a summary and curves of nothing
    if previous.get("fingerprint") == fingerprint and not previous.get("complete") and out_dir.is_dir():
        resume = last_complete_checkpoint(out_dir)
    state = PartialState()  # joins the process group when launched on several GPUs (DDP); else one process
    # the launcher's RANK as well: a worker whose process group is not up must still not write rank 0's files
    main_process = state.is_main_process and is_main_process()
    if main_process:
        if resume is None:
            shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps({"fingerprint": fingerprint, "quantization": quantization, "device": device,
                                        "base": str(base_dir), "complete": False}, indent=2) + "\n")
    state.wait_for_everyone()

    torch.manual_seed(params.seed)
    max_length = params.max_length
    with phases.time("tokenize"):
        tokenizer = load_tokenizer(base_dir)
        # A user's record without a target (prepare.unlocated: drop_record) teaches nothing; it is counted.
        train_rows = training_rows(prepared_dir, params.max_train_notes)
        val_rows = first_records(val_path, params.eval_notes)
        no_target = sum(not has_target(r) for r in train_rows)
        train_rows = [r for r in train_rows if has_target(r)]
        val_rows = [r for r in val_rows if has_target(r)]
        # value weights shape the training loss only: the eval loss stays the plain token mean, comparable across runs
        train, dropped_train = fitting_examples(tokenized_examples(
            tokenizer, [prompt_completion(r, system) for r in train_rows],
            [r.get("loss_mask") or [] for r in train_rows], [f.name for f in schema], params.value_weight), max_length)
        val, dropped_val = fitting_examples(tokenized_examples(
            tokenizer, [prompt_completion(r, system) for r in val_rows], [r.get("loss_mask") or [] for r in val_rows]),
            max_length)
    if not train:
        raise ValueError(f"sft: no training example fits max_length={max_length} tokens")

    with phases.time("load_base"):
        model = load_base(base_dir, quantization, device, params.attn_implementation)
    live = None
    with phases.time("build_trainer"):
        if live_dir is not None and main_process:
            from dvclive import Live

            if resume is not None and live_dir.is_dir():
                rewind_live(live_dir, resume)
            live = Live(dir=str(live_dir), resume=resume is not None, report=None, save_dvc_exp=False,
                        dvcyaml=None)  # metrics and plots are declared in dvc.yaml; tests must not edit it
        trainer = build_trainer(model, tokenizer, params, train, val, out_dir, device, live)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with phases.time("train"):   # evaluations and checkpoint saves included
        result = trainer.train(resume_from_checkpoint=resume)
        if live is not None:
            live.end()
    summary = {
        "device": device, "quantization": quantization, "liger": trainer.args.use_liger_kernel,
        "resumed_from": resume and Path(resume).name,
        "train_examples": len(train), "dropped_too_long": {"train": dropped_train, "val": dropped_val},
        "without_target": no_target,
        # from the per-step log, which a resumed run restores: the Trainer's own `training_loss` averages only
        # the steps this process ran over all steps
        "steps": trainer.state.global_step, "train_loss": _mean_logged_loss(trainer.state.log_history, result),
        "final_eval_loss": next((round(h["eval_loss"], 5) for h in reversed(trainer.state.log_history)
                                 if "eval_loss" in h), None),
        "train_seconds": round(phases.seconds["train"], 1), "peak_mem_gib": round(peak_memory_gib(device), 3),
        "checkpoints": sorted((p.name for p in out_dir.glob("checkpoint-*")), key=lambda n: int(n.split("-")[1])),
    }
    if state.num_processes > 1:
        print(f"sft: DDP over {state.num_processes} processes")
    if main_process:
        with phases.time("write_records"):
            for name in summary["checkpoints"]:   # a resumed run's earlier checkpoints too: same base, prompt, schema
                write_adapter_run(out_dir / name, adapter_run(
                    base_digest=model_digest(base_dir), quantization=quantization, system=system, schema=schema,
                    stage="sft", step=int(name.split("-")[1])))
    summary["phase_s"] = phases.as_dict()
    if main_process:
        info = json.loads(run_file.read_text())
        info.update({"complete": True, "summary": summary})
        run_file.write_text(json.dumps(info, indent=2) + "\n")
    return summary
