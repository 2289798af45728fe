"""benchmarks/dpo_recipes.py: recipe files, the pairs each recipe trains on, and two recipes end to end on a tiny
random Llama (TRL's real DPOTrainer, a generation pass after each recipe scoring its checkpoints)."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY_DPO, pair, record, write_prepared

REPO = Path(__file__).resolve().parents[1]


def _benchmark():
    spec = importlib.util.spec_from_file_location("dpo_recipes", REPO / "benchmarks" / "dpo_recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pair(i, direction, source="model"):
    return {**pair(i, f"14{i}"), "direction": direction, "source": source, "type": "wrong_day"}


def test_recipe_file_errors_name_the_recipe_and_key(tmp_path):
    from survlm.config import ConfigError

    bench = _benchmark()
    path = tmp_path / "r.yaml"
    for text, message in (("- name: a\n  dpo: {betta: 0.2}\n", "(a): dpo.betta: unknown key"),
                          ("- name: a\n  directions: [sideways]\n", "recipe 1.directions: sideways is no pair"),
                          ("- name: a\n- name: a\n", "recipe 2: name a is used twice"),
                          ("- name: a\n  loss: ipo\n", "recipe 1: unknown key loss"),
                          ("- name: a\n  dpo: {value_weight: 4.0}\n",     # TINY_DPO's loss is sigmoid alone
                           "recipe 1.dpo.value_weight: weighs the sft term's tokens, but loss_type ['sigmoid']")):
        path.write_text(text)
        with pytest.raises(ConfigError) as exc:
            bench.load_recipes(path, dict(TINY_DPO))
        assert message in str(exc.value) and str(path) in str(exc.value)
    path.write_text("- name: a\n  dpo: {loss_type: [apo_zero, sft], beta: 0.3}\n")
    (recipe,) = bench.load_recipes(path, dict(TINY_DPO))
    assert recipe["params"].loss_type == ("apo_zero", "sft") and recipe["params"].beta == 0.3
    assert recipe["params"].learning_rate == TINY_DPO["learning_rate"]        # the rest is the dpo block's


def test_recipe_pairs_keep_their_directions_and_balance_only_when_both_null_directions_are_kept(tmp_path):
    bench = _benchmark()
    pairs = ([_pair(i, "value_to_null") for i in range(6)] + [_pair(i, "null_to_value") for i in range(6, 8)]
             + [_pair(i, "value_to_value") for i in range(8, 11)])
    path = tmp_path / "r.yaml"
    path.write_text("- name: all\n  max_direction_ratio: 1.0\n"
                    "- name: no_omission\n  directions: [null_to_value, value_to_value]\n  max_direction_ratio: 1.0\n"
                    "- name: capped\n  dpo: {max_pairs: 4}\n")
    every, no_omission, capped = bench.load_recipes(path, dict(TINY_DPO))

    def directions(kept):
        return [p["direction"] for p in kept]
    kept = bench.recipe_pairs(pairs, every, seed=0)
    assert directions(kept).count("value_to_null") == 2 and directions(kept).count("null_to_value") == 2
    assert directions(kept).count("value_to_value") == 3
    kept = bench.recipe_pairs(pairs, no_omission, seed=0)
    assert directions(kept) == ["null_to_value"] * 2 + ["value_to_value"] * 3   # no cap against an absent side
    assert [p["id"] for p in bench.recipe_pairs(pairs, capped, seed=0)] == [p["id"] for p in pairs[:4]]


@pytest.mark.slow
def test_two_recipes_end_to_end(tiny_llama_dir, sft_adapter, tmp_path, monkeypatch):
    import yaml

    bench = _benchmark()
    _, adapter = sft_adapter
    # the SFT adapter's prompt and schema (its run record is checked against them)
    prepared = write_prepared(tmp_path / "prepared", {"val": [record(i, split="val") for i in range(5, 7)]})
    (prepared / "render_meta.jsonl").write_text("")
    sft = tmp_path / "sft"
    shutil.copytree(adapter, sft)
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "train.jsonl").write_text(
        "".join(json.dumps(_pair(i, "value_to_value")) + "\n" for i in range(4)))
    (tmp_path / "pairs" / "eval.jsonl").write_text(json.dumps(_pair(5, "value_to_value")) + "\n")
    params = {**TINY_DPO, "max_steps": 2, "save_steps": 1, "val_notes": 2,
              "report": {"backend": "hf", "max_new_tokens": 30, "constrained": True}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"dpo": params}))
    (tmp_path / "recipes.yaml").write_text("- name: sigmoid\n"
                                           "- name: apo\n  dpo: {loss_type: [apo_zero, sft], loss_weights: [1, 1]}\n")
    monkeypatch.chdir(tmp_path)
    import survlm.modeling.extractor as extractor

    passes, score_adapters = [], extractor.score_adapters

    def recorded(base, adapters, *args):
        passes.append(list(adapters))
        return score_adapters(base, adapters, *args)
    monkeypatch.setattr(extractor, "score_adapters", recorded)
    bench.main(["--prepared", "prepared", "--pairs", "pairs", "--base", str(tiny_llama_dir), "--sft", "sft",
                "--recipes", "recipes.yaml", "--work", "work", "--out", "out.json", "--only", "apo", "sigmoid",
                "--score", "each"])
    # one pass per recipe, in --only's order, the SFT adapter scored once, in the first
    assert passes == [["sft", "apo@1", "apo@2"], ["sigmoid@1", "sigmoid@2"]]
    result = json.loads((tmp_path / "out.json").read_text())
    assert sorted(result["recipes"]) == ["apo", "sigmoid"] and result["validation"]["notes"] == 2
    sigmoid, apo = result["recipes"]["sigmoid"], result["recipes"]["apo"]
    for block in (sigmoid, apo):
        assert [c["step"] for c in block["curve"]] == [0, 1, 2]
        assert block["curve"][0]["field_accuracy"] == result["validation"]["sft"]["field_accuracy"]
        assert block["pairs"]["pairs"] == 4 and block["train"]["steps"] == 2
        assert block["selection"]["selected"] in ("sft", "dpo")
    assert apo["train"]["train_loss"] != sigmoid["train"]["train_loss"]   # another loss, not the same run twice
    run = json.loads((tmp_path / "work" / "apo" / "checkpoint-1" / "adapter_run.json").read_text())
    assert run["trained"]["stage"] == "dpo" and run["trained"]["step"] == 1
    assert (tmp_path / "work" / "apo" / "checkpoint-1" / "adapter_model.safetensors").is_file()
