"""DPO with TRL's real DPOTrainer on a tiny random Llama: the SFT adapter is the trainable policy and TRL's
frozen `ref` copy of it is the reference (one base model, nothing merged)."""
import json


from test_sft import BASE_PARAMS, TORCHRUN_2, _record, run_stage

DPO_PARAMS = {"beta": 0.1, "loss_type": "sigmoid", "lr": 5e-3, "epochs": 1, "max_steps": 3, "batch_size": 1,
              "grad_accum": 1, "warmup_steps": 0, "lr_scheduler": "constant", "max_grad_norm": 1.0,
              "max_length": 256, "max_prompt_length": 200, "precompute_ref_log_probs": False, "seed": 0,
              "gradient_checkpointing": False, "optim": "auto", "max_pairs": None}


def _pair(i, rejected_value):
    r = _record(i)
    bad = '{"sodium_meq_l":{"value":"%s","unit":null,"evidence":"Na %s"}}' % (rejected_value, rejected_value)
    return {"id": r["id"], "source": "synthetic", "tags": ["last_value"], "prompt": r["messages"][:2],
            "chosen": r["messages"][2:], "rejected": [{"role": "assistant", "content": bad}]}


def _sft_adapter(tiny_llama_dir, tmp_path):
    """A 2-step SFT adapter to start DPO from; returns (prepared dir, adapter dir)."""
    from survlm.modeling.sft import train_sft

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "train.jsonl").write_text("".join(json.dumps(_record(i)) + "\n" for i in range(2)))
    (prepared / "val.jsonl").write_text("")
    train_sft({**BASE_PARAMS, "max_steps": 2, "save_steps": 2, "eval_notes": 0}, prepared, tiny_llama_dir,
              tmp_path / "sft", None)
    return prepared, tmp_path / "sft" / "checkpoint-2"


def test_dpo_policy_moves_reference_stays_sft(tiny_llama_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from survlm.modeling import dpo as dpo_mod

    _, sft_adapter = _sft_adapter(tiny_llama_dir, tmp_path)
    sft_tensors = load_file(str(sft_adapter / "adapter_model.safetensors"))

    loads = []
    real_load_base = dpo_mod.load_base
    monkeypatch.setattr(dpo_mod, "load_base", lambda *a, **k: loads.append(a) or real_load_base(*a, **k))
    too_long = _pair(7, "14" * 300)  # longer than max_length: dropped and counted, never truncated
    summary = dpo_mod.train_dpo(DPO_PARAMS, [_pair(i, f"14{i}") for i in range(3)] + [too_long],
                                [_pair(5, "145")], tiny_llama_dir, sft_adapter, "none", tmp_path / "dpo", None)
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


def test_dpo_pair_lengths_follow_chat_template(tiny_llama_dir):
    from survlm.modeling.dpo import pair_lengths, select_pairs
    from survlm.modeling.loading import load_tokenizer

    tok = load_tokenizer(tiny_llama_dir)
    p = _pair(0, "141")
    n_prompt, n_full = pair_lengths(tok, p)
    assert 10 < n_prompt < n_full
    kept, dropped = select_pairs(tok, [p], max_prompt_length=n_prompt - 1, max_length=1000)
    assert (kept, dropped) == ([], 1)
    kept, dropped = select_pairs(tok, [p], max_prompt_length=n_prompt, max_length=n_full)
    assert dropped == 0 and set(kept[0]) == {"prompt", "chosen", "rejected"}


def test_dpo_stage_under_ddp_matches_one_process(tiny_llama_dir, tmp_path):
    """torchrun with 2 processes (gloo on CPU, NCCL on GPUs), batch 1 each, against one process with batch 2."""
    import shutil

    import yaml

    prepared, sft_adapter = _sft_adapter(tiny_llama_dir, tmp_path)
    curves, summaries, stdout = {}, {}, {}
    for name, per_device, launcher in (("one", 2, []), ("ddp", 1, TORCHRUN_2)):
        work = tmp_path / name
        (work / "pairs").mkdir(parents=True)
        (work / "pairs" / "train.jsonl").write_text("".join(json.dumps(_pair(i, f"14{i}")) + "\n" for i in range(8)))
        (work / "pairs" / "eval.jsonl").write_text("")
        shutil.copytree(sft_adapter, work / "sft_best")
        (work / "sft_best" / "selected.json").write_text(json.dumps({"quantization": "none"}))
        params = {**DPO_PARAMS, "max_steps": 4, "batch_size": per_device, "val_notes": 0}
        (work / "params.yaml").write_text(yaml.safe_dump({"dpo": params}))
        done = run_stage(launcher, "dpo", ["--prepared", str(prepared), "--pairs", "pairs", "--base",
                                           str(tiny_llama_dir), "--sft", "sft_best", "--out", "dpo", "--live", "live",
                                           "--metrics", "dpo.json"], work)
        summaries[name], stdout[name] = json.loads((work / "dpo.json").read_text())["train"], done.stdout
        rows = (work / "live" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]
        curves[name] = [float(r.split("\t")[-1]) for r in rows]
        assert (work / "dpo" / "adapter_model.safetensors").is_file() and not list(work.glob(".dpo.tmp-*"))
    assert "DDP over 2 processes" in stdout["ddp"] and "DDP" not in stdout["one"]
    assert summaries["ddp"]["ref_adapter_max_abs_diff_from_sft"] == 0.0
    assert len(curves["one"]) == len(curves["ddp"]) == 4
    assert curves["ddp"][0] - curves["ddp"][-1] > 0.1, curves  # 2026-11-28: agreed to 1e-6, fell by 0.17
    for a, b in zip(curves["one"], curves["ddp"]):
        assert abs(a - b) <= 0.01, curves


def test_sft_term_keeps_the_gold_answer_likely(tiny_llama_dir, tmp_path):
    """DPO alone can widen the margin while the gold answer itself gets less likely (on the H200, 2026-11-28:
    -59 nats, and the DPO model then filled every null field). `loss_type: [sigmoid, sft]` adds the gold
    answer's NLL; `gold_logp_change` reports the effect."""
    from survlm.modeling.dpo import train_dpo

    _, sft_adapter = _sft_adapter(tiny_llama_dir, tmp_path)
    pairs, eval_pairs = [_pair(i, f"14{i}") for i in range(3)], [_pair(5, "145")]

    def run(name, **params):
        return train_dpo({**DPO_PARAMS, "max_steps": 6, **params}, pairs, eval_pairs, tiny_llama_dir, sft_adapter,
                         "none", tmp_path / name, None)

    plain = run("sigmoid")
    with_sft = run("sigmoid_sft", loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0])
    assert plain["gold_logp_change_on"] == with_sft["gold_logp_change_on"] == "eval"
    assert with_sft["gold_logp_change"] > plain["gold_logp_change"] + 1.0
