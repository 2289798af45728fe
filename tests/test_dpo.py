"""DPO with TRL's real DPOTrainer on a tiny random Llama: the SFT adapter is the trainable policy and TRL's
frozen `ref` copy of it is the reference (one base model, nothing merged)."""
import json
from pathlib import Path

import pytest

from conftest import (SODIUM_SCHEMA, TINY_DPO, TORCHRUN_2, dpo_params, pair, record, run_stage, run_stage_here,
                      sft_params, write_prepared)


def test_dpo_policy_moves_reference_stays_sft(tiny_llama_dir, sft_adapter, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from survlm.modeling import dpo as dpo_mod

    _, sft_adapter = sft_adapter
    sft_tensors = load_file(str(sft_adapter / "adapter_model.safetensors"))

    loads = []
    real_load_base = dpo_mod.load_base
    monkeypatch.setattr(dpo_mod, "load_base", lambda *a, **k: loads.append(a) or real_load_base(*a, **k))
    too_long = pair(7, "14" * 300)  # longer than max_length: dropped and counted, never truncated
    # eval every 2 steps of 3: the final policy is evaluated too, and the log-probs by token class come from that
    # evaluation's forwards, the ones TRL's eval rewards are computed from
    summary = dpo_mod.train_dpo(dpo_params(eval_steps=2), [pair(i, f"14{i}") for i in range(3)] + [too_long],
                                [pair(5, "145")], tiny_llama_dir, sft_adapter, "none", tmp_path / "dpo", None)
    assert summary["eval"]["step"] == summary["steps"] == 3
    assert summary["logp_change_by_pair_type"]["all"]["pairs"] == 1
    assert summary["gold_logp_change"] == pytest.approx(summary["eval"]["eval_rewards/chosen"] / 0.1, abs=2e-3)
    assert len(loads) == 1                                   # one base model serves policy and reference
    assert summary["adapters_in_model"] == ["default", "ref"]
    assert summary["ref_adapter_max_abs_diff_from_sft"] == 0.0   # bit for bit the SFT adapter
    assert summary["policy_max_abs_change"] > 1e-4
    assert summary["dropped_too_long"] == {"train": 1, "eval": 0} and summary["train_pairs"] == 3
    assert summary["steps"] == 3 and "rewards/margins" in summary["last_step"]

    saved = load_file(str(tmp_path / "dpo" / "adapter_model.safetensors"))
    assert saved.keys() == sft_tensors.keys()                # only the policy adapter is saved, same layout
    assert max(float((saved[k].float() - sft_tensors[k].float()).abs().max()) for k in saved) > 1e-4
    assert not (tmp_path / "dpo" / "ref").exists()


def test_token_class_logps_with_precomputed_reference(tiny_llama_dir, sft_adapter, tmp_path):
    """precompute_ref_log_probs: TRL's evaluation then runs no reference forward, so the eval pairs' reference
    log-probs by token class come from one made for them; they still agree with TRL's eval reward."""
    from survlm.modeling.dpo import train_dpo

    _, sft_adapter = sft_adapter
    summary = train_dpo(dpo_params(precompute_ref_log_probs=True), [pair(i, f"14{i}") for i in range(2)],
                        [pair(5, "145")], tiny_llama_dir, sft_adapter, "none", tmp_path / "dpo", None)
    assert summary["logp_change_by_pair_type"]["all"]["pairs"] == 1 and summary["gold_logp_change_on"] == "eval"
    assert abs(summary["gold_logp_change"]) > 0.05
    assert summary["gold_logp_change"] == pytest.approx(summary["eval"]["eval_rewards/chosen"] / 0.1, abs=2e-3)


def test_dpo_pair_lengths_follow_chat_template(tiny_llama_dir):
    from survlm.modeling.dpo import pair_lengths, select_pairs
    from survlm.modeling.loading import load_tokenizer

    tok = load_tokenizer(tiny_llama_dir)
    p = pair(0, "141")
    n_prompt, n_full = pair_lengths(tok, p)
    assert 10 < n_prompt < n_full
    kept, dropped = select_pairs(tok, [p], max_prompt_length=n_prompt - 1, max_length=1000)
    assert (kept, dropped) == ([], 1)
    kept, dropped = select_pairs(tok, [p], max_prompt_length=n_prompt, max_length=n_full)
    assert dropped == 0 and kept == [p]


def test_dpo_stage_under_ddp_matches_one_process(tiny_llama_dir, sft_adapter, tmp_path):
    """torchrun with 2 processes (gloo on CPU, NCCL on GPUs), batch 1 each, against one process with batch 2."""
    import shutil

    import yaml

    from survlm.artifacts import read_adapter_run

    prepared, sft_adapter = sft_adapter
    curves, summaries, stdout = {}, {}, {}
    for name, per_device, launcher in (("one", 2, []), ("ddp", 1, TORCHRUN_2)):
        work = tmp_path / name
        (work / "pairs").mkdir(parents=True)
        (work / "pairs" / "train.jsonl").write_text("".join(json.dumps(pair(i, f"14{i}")) + "\n" for i in range(8)))
        # two eval pairs: under DDP each process evaluates one, and the log-probs by token class cover both
        (work / "pairs" / "eval.jsonl").write_text("".join(json.dumps(pair(i, f"14{i}")) + "\n" for i in (5, 6)))
        shutil.copytree(sft_adapter, work / "sft_best")
        params = {**TINY_DPO, "max_steps": 4, "per_device_train_batch_size": per_device, "val_notes": 0}
        (work / "params.yaml").write_text(yaml.safe_dump({"dpo": params}))
        args = ["--prepared", str(prepared), "--pairs", "pairs", "--base", str(tiny_llama_dir), "--sft", "sft_best",
                "--out", "dpo", "--live", "live", "--metrics", "dpo.json"]
        done = run_stage(launcher, "dpo", args, work) if launcher else run_stage_here("dpo", args, work)
        summaries[name], stdout[name] = json.loads((work / "dpo.json").read_text())["train"], done.stdout
        rows = (work / "live" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]
        curves[name] = [float(r.split("\t")[-1]) for r in rows]
        assert (work / "dpo" / "adapter_model.safetensors").is_file() and not list(work.glob(".dpo.tmp-*"))
        # the logged trainer params leave out the work directory, which is named by the process id
        logged = yaml.safe_load((work / "live" / "params.yaml").read_text())
        assert logged["max_steps"] == 4 and "output_dir" not in logged
        # unguarded (val_notes 0): the final policy ships, its record continuing the SFT adapter's
        run, source = read_adapter_run(work / "dpo"), read_adapter_run(work / "sft_best")
        assert run == {**source, "trained": {"stage": "dpo", "step": 4, "source": source["trained"]}}
    assert "DDP over 2 processes" in stdout["ddp"] and "DDP" not in stdout["one"]
    assert summaries["ddp"]["ref_adapter_max_abs_diff_from_sft"] == 0.0
    for summary in summaries.values():
        assert summary["eval_pairs"] == 2 and summary["gold_logp_change_on"] == "eval"
    by_type = {name: json.loads((tmp_path / name / "dpo.json").read_text())["logp_change_by_pair_type"]
               for name in summaries}
    assert by_type["one"]["all"]["pairs"] == by_type["ddp"]["all"]["pairs"] == 2
    assert len(curves["one"]) == len(curves["ddp"]) == 4
    assert curves["ddp"][0] - curves["ddp"][-1] > 0.1, curves  # measured: agreed to 1e-6, fell by 0.17
    for a, b in zip(curves["one"], curves["ddp"]):
        assert abs(a - b) <= 0.01, curves


def test_sft_term_keeps_the_gold_answer_likely(tiny_llama_dir, sft_adapter, tmp_path):
    """DPO alone can widen the margin while the gold answer itself gets less likely (measured on the H200:
    -59 nats, and the DPO model then filled every null field). `loss_type: [sigmoid, sft]` adds the gold
    answer's NLL; `gold_logp_change` reports the effect."""
    from survlm.modeling.dpo import train_dpo

    _, sft_adapter = sft_adapter
    pairs, eval_pairs = [pair(i, f"14{i}") for i in range(3)], [pair(5, "145")]

    def run(name, **params):
        return train_dpo(dpo_params(**{"max_steps": 6, **params}), pairs, eval_pairs, tiny_llama_dir, sft_adapter,
                         "none", tmp_path / name, None)

    plain = run("sigmoid")
    with_sft = run("sigmoid_sft", loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0])
    assert plain["gold_logp_change_on"] == with_sft["gold_logp_change_on"] == "eval"
    assert with_sft["gold_logp_change"] > plain["gold_logp_change"] + 1.0


def test_value_weighted_rows_weigh_the_chosen_answers_values(tiny_llama_dir):
    """dpo.value_weight: the rows are TRL's whole-answer rows, and each chosen completion token gets its weight in
    the sft term: `value_weight` on the field's value up to its evidence quote, 1 elsewhere, averaging 1."""
    from survlm.modeling.dpo import _tokenized_row, dataset_rows, value_weighted_row
    from survlm.modeling.loading import load_tokenizer

    tok = load_tokenizer(tiny_llama_dir)
    p = pair(0, "150")
    row = value_weighted_row(tok, p, ["sodium_meq_l"], 5.0)
    weights = row.pop("chosen_value_weights")
    assert row == _tokenized_row(tok, p)
    assert len(weights) == len(row["chosen_ids"]) and abs(sum(weights) - len(weights)) < 1e-9
    heavy = [i for i, w in enumerate(weights) if w > 1]
    assert heavy == list(range(heavy[0], heavy[-1] + 1))            # one span: the value
    assert len(set(weights[i] for i in heavy)) == 1 and abs(weights[heavy[0]] / weights[0] - 5.0) < 1e-9
    value = tok.decode([row["chosen_ids"][i] for i in heavy])
    assert "value" in value and "evidence" not in value and "sodium" not in value
    with pytest.raises(ValueError, match="no field names"):            # else every weight would be 1
        dataset_rows(tok, [p], "answer", (), 5.0)


def test_dpo_trains_on_the_value_weighted_sft_term(tiny_llama_dir, sft_adapter):
    """The training batch carries each pair's weights through TRL's column filter and collator to its own chosen
    completion (pairs of different prompt and answer lengths); the loss is the sigmoid term plus the weighted sft
    term computed by hand from the policy's log-probs, with a gradient of its own; the eval batches stay TRL's."""
    import torch

    from survlm.modeling.dpo import build_dpo_trainer, load_policy, value_weighted_row
    from survlm.modeling.loading import load_tokenizer

    _, sft_adapter = sft_adapter
    tok = load_tokenizer(tiny_llama_dir)
    longer = pair(1, "1499")
    longer["prompt"] = [longer["prompt"][0], {**longer["prompt"][1],
                                              "content": longer["prompt"][1]["content"] + " HD5 Na 139. HD6 Na 140."}]
    longer["chosen"] = [{"role": "assistant",
                         "content": '{"sodium_meq_l":{"value":"1380","unit":"mEq/L","evidence":"HD3 Na 1380 mEq/L"}}'}]
    pairs = [pair(0, "150"), longer]
    params = dpo_params(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 2.0], value_weight=5.0,
                        per_device_train_batch_size=2)
    trainer = build_dpo_trainer(load_policy(tiny_llama_dir, sft_adapter, "none", "cpu"), tok, params, pairs,
                                [pair(5, "145")], Path("unused"), "cpu", value_names=["sodium_meq_l"])
    batch = next(iter(trainer.get_train_dataloader()))
    weights = batch["chosen_value_weights"].clone()
    assert weights.shape == batch["completion_mask"].shape and weights[2:].abs().sum() == 0   # rejected rows: 0
    rows = {len(r["chosen_ids"]): r for r in (value_weighted_row(tok, p, ["sodium_meq_l"], 5.0) for p in pairs)}
    assert len(rows) == 2                                                # the two chosen answers differ in length
    for i in range(2):                                                   # each row's weights sit on its own answer
        row = rows[int(batch["completion_mask"][i].sum())]
        start = len(row["prompt_ids"])
        assert weights[i, start:start + len(row["chosen_ids"])].tolist() == pytest.approx(row["chosen_value_weights"])
        assert weights[i, :start].abs().sum() == 0 and weights[i, start + len(row["chosen_ids"]):].abs().sum() == 0
    model = trainer.model
    model.eval()                                                       # no dropout: the losses see one model
    weighted = trainer.compute_loss(model, dict(batch))
    plain = trainer.compute_loss(model, {k: v for k, v in batch.items() if k != "chosen_value_weights"})
    lora = [p for p in model.parameters() if p.requires_grad]
    gap = torch.autograd.grad(weighted - plain, lora)                     # the weighted term trains the adapter
    assert max(float(g.abs().max()) for g in gap) > 0
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:2, :-1]
        labels, mask = batch["input_ids"][:2, 1:], batch["completion_mask"][:2, 1:].float()
        logps = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None])[..., 0]
        nll_plain = -(logps * mask).sum() / mask.sum()
        nll_weighted = -(logps * mask * weights[:2, 1:]).sum() / mask.sum()
    # the two losses share every term but the sft one: their gap is that term's, weighted minus plain (a random
    # model's NLL is near ln(vocab) on every token, so the gap is small and compared absolutely)
    gap, by_hand = weighted.item() - plain.item(), 2.0 * (nll_weighted.item() - nll_plain.item())
    assert abs(by_hand) > 2e-4 and abs(gap - by_hand) < 2e-5, (gap, by_hand)
    assert "chosen_value_weights" not in next(iter(trainer.get_eval_dataloader()))


def test_dpo_stage_rejects_a_value_weight_it_cannot_apply(tmp_path, capsys):
    from survlm.stages.dpo import Paths, main

    paths = Paths(*(tmp_path / n for n in ("p", "pairs", "b", "s", "o", "l", "m.json")))
    for params, problem in (
            (dpo_params(value_weight=0.0), "must be a number above 0 (1: every answer token alike), got 0.0"),
            (dpo_params(value_weight=4.0, loss_type="sigmoid"),
             "weighs the sft term's tokens, but loss_type ['sigmoid'] has no sft term"),
            (dpo_params(value_weight=4.0, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0], completion="field"),
             "weighs whole answers' value tokens: it needs completion: answer")):
        with pytest.raises(SystemExit):
            main(params, paths)
        assert capsys.readouterr().err.strip() == f"params.yaml: dpo.value_weight: {problem}"
    assert not any(tmp_path.iterdir())


def _with_age(p, chosen_age, rejected_age):
    """The pair with an age field after sodium in both answers."""
    out = dict(p)
    for side, age in (("chosen", chosen_age), ("rejected", rejected_age)):
        answer = json.loads(p[side][0]["content"])
        answer["age_years"] = {"value": age, "unit": None, "evidence": f"age {age}"}
        out[side] = [{"role": "assistant", "content": json.dumps(answer, separators=(",", ":"))}]
    return out


def test_field_completions_hold_the_contrasted_value_alone(tiny_llama_dir, sft_adapter, tmp_path):
    """dpo.completion: field. A pair that differs in one field trains on that value's tokens as the model writes
    them inside the whole answer: the gold answer up to it is prompt, the field after it and the end of turn
    are in neither completion. A pair that differs in more fields is trained whole, tokenized as TRL does."""
    from types import SimpleNamespace

    from datasets import Dataset
    from trl import DPOTrainer

    from survlm.modeling.dpo import _answer_tokens, _trl_rows, dataset_rows, train_dpo
    from survlm.modeling.loading import load_tokenizer

    tok = load_tokenizer(tiny_llama_dir)
    one, two = _with_age(pair(0, "147"), 70, 70), _with_age(pair(1, "147"), 70, 45)
    rows, fields = dataset_rows(tok, [one, two], "field")
    assert fields == 1
    row = rows[0]
    full, first, _ = _answer_tokens(tok, one["prompt"], one["chosen"])
    assert full[:len(row["prompt_ids"]) + len(row["chosen_ids"])] == row["prompt_ids"] + row["chosen_ids"]
    assert len(row["prompt_ids"]) > first                                 # the gold answer's start is context
    assert "sodium_meq_l" in tok.decode(row["prompt_ids"][first:]) and "age" not in tok.decode(row["prompt_ids"])
    chosen, rejected = tok.decode(row["chosen_ids"]), tok.decode(row["rejected_ids"])
    assert "138" in chosen and "147" in rejected and "147" not in chosen
    assert "age" not in chosen + rejected and len(row["chosen_ids"]) < len(full) - len(row["prompt_ids"]) - 4

    trl_args = SimpleNamespace(dataset_num_proc=None, max_length=None, truncation_mode="keep_start")
    trl_row = DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tok), Dataset.from_list(_trl_rows([two])),
                                          tok, trl_args, "train")[0]
    assert {k: trl_row[k] for k in row} == rows[1]                        # two fields differ: TRL's own row

    pairs = [_with_age(pair(i, f"14{i}"), 70, 70) for i in range(3)]
    _, sft_adapter = sft_adapter
    summary = train_dpo(dpo_params(completion="field", loss_type=["apo_zero", "sft"], loss_weights=[1.0, 1.0]),
                        pairs, [_with_age(pair(5, "145"), 70, 70)], tiny_llama_dir, sft_adapter, "none",
                        tmp_path / "dpo", None)
    assert summary["completion"] == "field" and summary["field_completion_pairs"] == 3
    assert summary["steps"] == 3 and summary["policy_max_abs_change"] > 1e-4
    # the gold answer's change is the whole answer's, not the one value the loss saw: the eval pairs are whole
    # answers, and the per-token log-probs come from the very forwards of TRL's evaluation
    whole = summary["logp_change_by_pair_type"]["all"]["chosen"]["answer"]["change_per_pair"]
    assert summary["gold_logp_change_on"] == "eval" and summary["gold_logp_change"] == round(whole, 3)
    assert abs(summary["gold_logp_change"]) > 0.05
    assert summary["gold_logp_change"] == pytest.approx(summary["eval"]["eval_rewards/chosen"] / 0.1, abs=2e-3)


def test_dpo_stage_ships_sft_when_dpo_is_worse(tiny_llama_dir, tmp_path, monkeypatch):
    """A one-field schema and an SFT adapter that has learnt its answer; DPO with an absurd learning rate wrecks
    it. Every DPO checkpoint and the SFT adapter (step 0) are scored in one generation pass, and models/dpo is
    the SFT adapter, bit for bit, with the run record export and infer read."""
    import yaml

    from survlm.modeling.sft import train_sft
    from survlm.config import load_config
    from survlm.stages import dpo

    (tmp_path / "schema.yaml").write_text(SODIUM_SCHEMA)
    prepared = write_prepared(tmp_path / "prepared", {"train": [record(i) for i in range(3)],
                                                      "val": [record(i, split="val") for i in range(5, 7)]},
                              schema_path=str(tmp_path / "schema.yaml"))
    (prepared / "render_meta.jsonl").write_text("")
    # 100 steps on three notes: greedy then writes the right answer on the validation notes
    train_sft(sft_params(learning_rate=1e-2, max_steps=100, save_steps=100, eval_notes=0,
                         lora={"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}),
              prepared, tiny_llama_dir, tmp_path / "sft", None)
    sft = tmp_path / "sft_best"
    (tmp_path / "sft" / "checkpoint-100").rename(sft)
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "train.jsonl").write_text("".join(json.dumps(pair(i, f"14{i}")) + "\n" for i in range(4)))
    (tmp_path / "pairs" / "eval.jsonl").write_text(json.dumps(pair(5, "145")) + "\n")
    monkeypatch.chdir(tmp_path)
    params = {**TINY_DPO, "learning_rate": 1.0, "max_steps": 4, "save_steps": 2, "val_notes": 2,
              "report": {"backend": "hf", "max_new_tokens": 40, "constrained": True}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"dpo": params}))
    dpo.main(load_config("dpo"), dpo.Paths(prepared=prepared, pairs=Path("pairs"), base=tiny_llama_dir, sft=sft,
                                           out=Path("dpo"), live=Path("live"), metrics=Path("dpo.json")))
    m = json.loads((tmp_path / "dpo.json").read_text())
    assert [c["step"] for c in m["validation"]["curve"]] == [0, 2, 4]
    assert m["sft_field_accuracy"] == 1.0 and m["best_dpo_field_accuracy"] < 1.0
    assert m["selected"] == "sft" and m["selected_step"] == 0 and m["guarded"] is True
    assert m["margin_over_sft"] == 0.0 and m["best_dpo_margin_over_sft"] < 0
    assert set(m["phase_s"]) == {"startup", "checks", "train_dpo", "engine_start", "generation", "engine_close",
                                 "other"}
    for f in ("adapter_model.safetensors", "adapter_config.json", "adapter_run.json"):   # the SFT record too
        assert (tmp_path / "dpo" / f).read_bytes() == (sft / f).read_bytes()
    assert not list(tmp_path.glob(".dpo*"))
    # where DPO moved probability, on the eval pair: SFT (the frozen ref copy) against the final policy
    by_type = m["logp_change_by_pair_type"]
    assert list(by_type) == ["all", "last_value"] and by_type["all"]["pairs"] == 1
    rejected = by_type["last_value"]["rejected"]
    assert rejected["differing_field"]["tokens_per_pair"] > 0 and rejected["shared_fields"]["tokens_per_pair"] == 0
    assert rejected["answer"]["change_per_pair"] != 0.0
