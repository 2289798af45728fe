"""The real sft stage code (TRL SFTTrainer + PEFT LoRA) on a tiny random Llama, on CPU."""
import json
import math
from pathlib import Path

import pytest
from conftest import (SODIUM_PROMPT, TINY_SFT, TORCHRUN_2, record, run_stage, run_stage_here, sft_params,
                      write_prepared)

from survlm.stages.select_ckpt import choose_best

@pytest.fixture
def prepared(tmp_path):
    long = record(9, answer="x " * 400)  # longer than max_length: must be dropped, not truncated
    return write_prepared(tmp_path / "prepared", {"train": [record(i) for i in range(3)] + [long],
                                                  "val": [record(i, split="val") for i in range(5, 7)]})


def _crash_after_step_3(monkeypatch, train):
    """Runs `train` with sft's callbacks plus one that kills the process right after the step-3 update
    (checkpoint-2 is on disk), then gives sft its own callbacks back."""
    from transformers import TrainerCallback

    import survlm.modeling.sft as sft

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt

    real_callbacks = sft.callbacks
    monkeypatch.setattr(sft, "callbacks", lambda live, device: real_callbacks(live, device) + [Crash()])
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.setattr(sft, "callbacks", real_callbacks)


def test_prompt_tokens_are_masked(tiny_llama_dir, tmp_path):
    """The batch sft's own trainer gives the model: no loss on the system and user turns, loss on the whole answer
    (and its end token), which starts where the answer's JSON does."""
    from survlm.modeling.loading import load_base, load_tokenizer
    from survlm.modeling.sft import build_trainer, example_lengths, prompt_completion, tokenized_examples

    tok = load_tokenizer(tiny_llama_dir)
    ex = prompt_completion(record(0), SODIUM_PROMPT)
    n_prompt, n_full = example_lengths(tok, ex)
    rows = tokenized_examples(tok, [ex])
    trainer = build_trainer(load_base(tiny_llama_dir, "none", "cpu"), tok, sft_params(), rows, rows, tmp_path / "x",
                            "cpu")
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"][0]
    assert labels.shape[0] == n_full
    assert (labels[:n_prompt] == -100).all()          # system + user turns carry no loss
    assert (labels[n_prompt:] != -100).all()          # the whole answer (and its end token) does
    answer = tok.decode(batch["input_ids"][0, n_prompt:])
    assert answer.startswith('{"sodium_meq_l"')


def test_sft_stage_trains_saves_and_resumes(tiny_llama_dir, prepared, tmp_path, monkeypatch):
    import survlm.modeling.sft as sft

    out, live = tmp_path / "sft", tmp_path / "live"
    _crash_after_step_3(monkeypatch, lambda: sft.train_sft(sft_params(), prepared, tiny_llama_dir, out, live))
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert not (out / "checkpoint-2" / "model.safetensors").exists()  # adapter only, never base weights
    assert json.loads((out / "run.json").read_text())["complete"] is False

    summary = sft.train_sft(sft_params(), prepared, tiny_llama_dir, out, live)
    assert summary["resumed_from"] == "checkpoint-2" and summary["steps"] == 6
    assert summary["checkpoints"] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert summary["train_examples"] == 3 and summary["dropped_too_long"] == {"train": 1, "val": 0}
    from survlm.artifacts import read_adapter_run
    from survlm.hashing import text_digest
    from survlm.modeling.loading import model_digest

    for step in (2, 4, 6):   # each checkpoint, the one from before the crash too, has its run record
        run = read_adapter_run(out / f"checkpoint-{step}")
        assert run["trained"] == {"stage": "sft", "step": step, "source": None} and run["quantization"] == "none"
        assert run["base_digest"] == model_digest(tiny_llama_dir) and run["prompt_digest"] == text_digest(SODIUM_PROMPT)
    assert math.isfinite(summary["train_loss"]) and summary["quantization"] == "none"
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert losses[-1] < losses[0]  # the same three notes over and over: the loss must fall
    assert any("eval_loss" in h for h in state["log_history"])
    assert (live / "metrics.json").is_file()
    logged = json.loads((live / "metrics.json").read_text())
    assert {"loss", "grad_norm", "learning_rate", "tokens_per_s", "peak_mem_gib"} <= set(logged)
    assert logged["tokens_per_s"] > 0 and "loss" in logged["eval"]
    assert len((live / "plots" / "metrics" / "loss.tsv").read_text().splitlines()) >= 1 + 6

    # The same run once more (a forced repro): it finished, so it trains anew, keeping a whole summary and curves.
    again = sft.train_sft(sft_params(), prepared, tiny_llama_dir, out, live)
    assert again["resumed_from"] is None and again["steps"] == 6 and again["train_seconds"] > 0
    assert list(again["phase_s"]) == ["startup", "fingerprint", "tokenize", "load_base", "build_trainer", "train",
                                      "write_records", "other"]
    assert len((live / "plots" / "metrics" / "loss.tsv").read_text().splitlines()) >= 1 + 6

    # Different params (here the value-weighted loss too): the stale checkpoints are not resumed.
    summary2 = sft.train_sft(sft_params(max_steps=2, value_weight=3.0), prepared, tiny_llama_dir, out, live)
    assert summary2["resumed_from"] is None and summary2["checkpoints"] == ["checkpoint-2"]
    assert math.isfinite(summary2["train_loss"]) and summary2["train_examples"] == 3


def test_checkpoints_of_other_code_are_not_resumed(prepared, tiny_llama_dir, tmp_path, monkeypatch):
    """An interrupted run resumes only under the same survlm code: the source digest (byte code aside) is part of
    the run's fingerprint, and a run whose code changed trains anew."""
    from survlm.hashing import source_digest
    from survlm.modeling import sft

    package = tmp_path / "package"
    (package / "__pycache__").mkdir(parents=True)
    (package / "loss.py").write_text("WEIGHT = 1\n")
    before = source_digest(package)
    (package / "__pycache__" / "loss.cpython-311.pyc").write_bytes(b"compiled")
    assert source_digest(package) == before                   # byte code is not source
    (package / "loss.py").write_text("WEIGHT = 2\n")
    assert source_digest(package) != before

    out = tmp_path / "sft"
    _crash_after_step_3(monkeypatch, lambda: sft.train_sft(sft_params(max_steps=4), prepared, tiny_llama_dir, out,
                                                           None))
    assert (out / "checkpoint-2").is_dir()
    monkeypatch.setattr(sft, "source_digest", lambda: "other code")
    summary = sft.train_sft(sft_params(max_steps=4), prepared, tiny_llama_dir, out, None)
    assert summary["resumed_from"] is None and summary["steps"] == 4


def test_batched_tokenization_is_trls_per_example(tiny_llama_dir, monkeypatch):
    """Notes of different lengths in batches of 2: each row has TRL's own ids and completion mask (its tokenizer
    through the chat template, per example), with that example's masked characters and value weights; a long
    example is dropped, not truncated."""
    from trl.data_utils import _tokenize, common_prefix_length

    from survlm.modeling import sft
    from survlm.modeling.loading import load_tokenizer

    monkeypatch.setattr(sft, "TOKENIZE_BATCH", 2)
    tok = load_tokenizer(tiny_llama_dir)
    rows = [record(i, note="HD1 Na 131. " * (1 + 7 * i) + "HD3 Na 138.") for i in range(5)]
    examples = [sft.prompt_completion(r, SODIUM_PROMPT) for r in rows]
    answer = examples[0]["completion"][0]["content"]
    evidence = (answer.index("Na 138"), answer.index("Na 138") + 6)
    spans = [[], [evidence], [], [], [evidence]]   # examples 1 and 4, in the first and the last batch
    out = sft.tokenized_examples(tok, examples, spans, ["sodium_meq_l"], 3.0)
    for ex, row, masked in zip(examples, out, spans):
        prompt = _tokenize(tok, ex["prompt"], add_generation_prompt=True)["input_ids"]
        ids = _tokenize(tok, ex["prompt"] + ex["completion"])["input_ids"]
        n = common_prefix_length(prompt, ids)
        assert row["id"] == ex["id"] and row["input_ids"] == list(ids)
        trained = tok.decode([t for t, m in zip(ids, row["completion_mask"]) if m])
        assert row["completion_mask"][:n] == [0] * n and ("Na 138" in trained) == (not masked)
        assert (0 in row["completion_mask"][n:]) == bool(masked)   # else every answer token is trained
        assert math.isclose(sum(row["value_weights"]), sum(row["completion_mask"]))
        assert all(w == 0 for w, m in zip(row["value_weights"], row["completion_mask"]) if not m)
    lengths = [len(r["input_ids"]) for r in out]
    kept, dropped = sft.fitting_examples(out, lengths[3])
    assert [r["id"] for r in kept] == ["n0", "n1", "n2", "n3"] and dropped == 1
    assert [len(r["input_ids"]) for r in kept] == lengths[:4]


def test_the_trainer_gets_the_batches_trls_own_preparation_makes(tiny_llama_dir, tmp_path):
    """label_rows replaces TRL's dataset preparation: the same examples (one with masked answer characters, one
    with no loss token at all) give the trainer the same batches, in the same order, with TRL's labels."""
    import dataclasses

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from survlm.modeling import sft
    from survlm.modeling.loading import load_base, load_tokenizer

    tok = load_tokenizer(tiny_llama_dir)
    rows = [record(i, note="HD1 Na 131. " * (1 + 3 * i) + "HD3 Na 138.") for i in range(5)]
    examples = [sft.prompt_completion(r, SODIUM_PROMPT) for r in rows]
    answer = examples[0]["completion"][0]["content"]
    spans = [[], [(answer.index("Na 138"), answer.index("Na 138") + 6)], [], [(0, len(answer) + 20)], []]
    tokenized = sft.tokenized_examples(tok, examples, spans)
    assert 1 not in tokenized[3]["completion_mask"]     # its whole answer (and end token) is left out of the loss
    params = sft_params(per_device_train_batch_size=2)
    ours = sft.build_trainer(load_base(tiny_llama_dir, "none", "cpu"), tok, params, tokenized, tokenized[:2],
                             tmp_path / "ours", "cpu")
    config = sft.sft_config(params, tmp_path / "trl", "cpu", True)
    theirs = SFTTrainer(model=load_base(tiny_llama_dir, "none", "cpu"),
                        args=dataclasses.replace(config, dataset_kwargs=None),
                        train_dataset=Dataset.from_list(tokenized), eval_dataset=Dataset.from_list(tokenized[:2]),
                        processing_class=tok, peft_config=sft.lora_config(params.lora))
    assert len(ours.train_dataset) == len(theirs.train_dataset) == 4
    for a, b in [(ours.get_train_dataloader(), theirs.get_train_dataloader()),
                 (ours.get_eval_dataloader(), theirs.get_eval_dataloader())]:
        batches = list(zip(a, b, strict=True))
        assert batches
        for x, y in batches:
            assert x.keys() == y.keys() and all(x[k].tolist() == y[k].tolist() for k in x)
            assert (x["labels"] == -100).any() and (x["labels"] != -100).any()


def test_value_token_weights_match_the_overlap_rule():
    """The one-sweep weights are exactly 'a loss token that overlaps any value span', for overlapping, touching
    and unsorted spans and for tokens of zero width."""
    import random

    from survlm.modeling.training import value_token_weights

    rng = random.Random(7)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, 200), rng.randint(2, 40)))
        offsets = [(a, b if rng.random() > 0.1 else a) for a, b in zip(cuts, cuts[1:])]
        values = [(a, a + rng.randint(1, 12)) for a in rng.sample(range(0, 200), rng.randint(0, 6))]
        in_loss = [rng.choice([0, 1, 1]) for _ in offsets]
        raw = [0.0 if not m else 5.0 if any(s < b and a < e for a, b in values) else 1.0
               for m, (s, e) in zip(in_loss, offsets)]
        scale = sum(in_loss) / sum(raw) if sum(raw) else 1.0
        assert value_token_weights(offsets, values, in_loss, 5.0) == [w * scale for w in raw]


def test_value_weights_move_the_loss_onto_field_values(tiny_llama_dir):
    from survlm.modeling.loading import load_tokenizer
    from survlm.modeling.sft import tokenized_example, prompt_completion

    tok = load_tokenizer(tiny_llama_dir)
    ex = prompt_completion(record(0), SODIUM_PROMPT)
    assert "value_weights" not in tokenized_example(tok, ex, [], ["sodium_meq_l"], 1.0)   # plain loss: no column
    out = tokenized_example(tok, ex, [], ["sodium_meq_l"], 4.0)
    mask, weights = out["completion_mask"], out["value_weights"]
    assert len(weights) == len(out["input_ids"]) and all(w == 0 for w, m in zip(weights, mask) if not m)
    loss_weights = [w for w, m in zip(weights, mask) if m]
    assert math.isclose(sum(loss_weights), len(loss_weights))   # averages 1: the loss keeps its scale
    high, low = max(loss_weights), min(loss_weights)
    assert math.isclose(high / low, 4.0)
    heavy = tok.decode([t for t, w in zip(out["input_ids"], weights) if w == high])
    # the value and unit, where the answer decides null or a value; never the key, the evidence or the end
    assert heavy.startswith('{"value":"138"') and "unit" in heavy and "Na 138" not in heavy and "sodium" not in heavy


def test_sft_trains_on_the_value_weighted_loss(tiny_llama_dir, prepared):
    """The training batch carries the weights through TRL's column filter and collator, and the trainer's loss is
    the weighted mean of the answer tokens' negative log-likelihoods; the eval set keeps the plain loss."""
    import torch

    from survlm.modeling.loading import load_base, load_tokenizer
    from survlm.modeling.sft import build_trainer, tokenized_example, prompt_completion

    tok = load_tokenizer(tiny_llama_dir)
    rows = [record(i) for i in range(2)]
    train = [tokenized_example(tok, prompt_completion(r, SODIUM_PROMPT), [], ["sodium_meq_l"], 5.0) for r in rows]
    val = [tokenized_example(tok, prompt_completion(r, SODIUM_PROMPT), []) for r in rows]
    params = sft_params(value_weight=5.0, per_device_train_batch_size=2)
    trainer = build_trainer(load_base(tiny_llama_dir, "none", "cpu"), tok, params, train, val, prepared / "w", "cpu")
    batch = next(iter(trainer.get_train_dataloader()))
    weights = batch["value_weights"].clone()
    assert weights.shape == batch["input_ids"].shape and weights.max() > 1 > weights[weights > 0].min()
    model = trainer.model
    with torch.no_grad():
        weighted = trainer.compute_loss(model, dict(batch)).item()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
        nll = nll * (labels != -100)
        plain = trainer.compute_loss(model, {k: v for k, v in batch.items() if k != "value_weights"}).item()
    assert math.isclose(weighted, (nll * weights[:, 1:]).sum().item() / (labels != -100).sum().item(), rel_tol=1e-4)
    assert math.isclose(plain, nll.sum().item() / (labels != -100).sum().item(), rel_tol=1e-4)
    assert abs(weighted - plain) > 1e-3        # a random model's NLL is near ln(vocab) on every token: the gap is small
    assert "value_weights" not in next(iter(trainer.get_eval_dataloader()))


def test_sft_stage_rejects_a_value_weight_that_is_not_positive(tmp_path, capsys):
    from survlm.stages.sft import Paths, main

    with pytest.raises(SystemExit):
        main(sft_params(value_weight=0), Paths(*(tmp_path / n for n in ("p", "b", "o", "l", "m.json"))))
    assert capsys.readouterr().err.strip() == ("params.yaml: sft.value_weight: must be a number above 0 "
                                               "(1: every answer token alike), got 0.0")
    with pytest.raises(SystemExit):           # an infinite weight would make every other token's weight 0 * inf
        main(sft_params(value_weight=float("inf")), Paths(*(tmp_path / n for n in ("p", "b", "o", "l", "m.json"))))
    assert capsys.readouterr().err.strip() == ("params.yaml: sft.value_weight: must be a number above 0 "
                                               "(1: every answer token alike), got inf")


def test_choose_best_prefers_accuracy_then_earlier_step():
    curve = [{"step": 0, "field_accuracy": 0.1}, {"step": 10, "field_accuracy": 0.8},
             {"step": 20, "field_accuracy": 0.8}, {"step": 30, "field_accuracy": 0.7}]
    assert choose_best(curve)["step"] == 10
    assert choose_best([{"step": 5, "field_accuracy": 0.2}, {"step": 9, "field_accuracy": 0.3}])["step"] == 9


def _run_sft_stage(launcher: list[str], cwd: Path) -> dict:
    args = ["--prepared", "prepared", "--base", "base", "--out", "sft", "--live", "live", "--metrics", "sft.json"]
    done = run_stage(launcher, "sft", args, cwd) if launcher else run_stage_here("sft", args, cwd)
    state = json.loads((cwd / "sft" / "checkpoint-4" / "trainer_state.json").read_text())
    return {"summary": json.loads((cwd / "sft.json").read_text()), "stdout": done.stdout,
            "losses": [h["loss"] for h in state["log_history"] if "loss" in h]}


def test_sft_stage_under_ddp_matches_one_process(tiny_llama_dir, prepared, tmp_path):
    """torchrun with 2 processes (DDP over gloo on CPU; on GPUs the same code runs over NCCL, e.g. from
    `accelerate launch --multi_gpu`), batch 1 each, against one process with batch 2: the same global batch, so
    the loss curve must agree."""
    import shutil

    import yaml

    runs = {}
    for name, per_device, launcher in (("one", 2, []),
                                        ("ddp", 1, TORCHRUN_2)):
        work = tmp_path / name
        work.mkdir()
        shutil.copytree(prepared, work / "prepared")
        (work / "base").symlink_to(tiny_llama_dir)
        params = {**TINY_SFT, "max_steps": 4, "per_device_train_batch_size": per_device, "save_steps": 4, "eval_steps": 4}
        (work / "params.yaml").write_text(yaml.safe_dump({"sft": params}))
        runs[name] = _run_sft_stage(launcher, work)
    one, ddp = runs["one"], runs["ddp"]
    assert "DDP over 2 processes" in ddp["stdout"] and "DDP" not in one["stdout"]
    assert ddp["summary"]["steps"] == one["summary"]["steps"] == 4
    assert len(ddp["losses"]) == len(one["losses"]) == 4
    # measured: the curves agreed to 4e-4 while falling by 0.16 over the 4 steps
    assert ddp["losses"][0] - ddp["losses"][-1] > 0.1
    for a, b in zip(one["losses"], ddp["losses"]):
        assert abs(a - b) <= 0.01, (one["losses"], ddp["losses"])
