"""select_ckpt end to end on a tiny random Llama with two real SFT checkpoints, and HF generation."""
import json
from pathlib import Path

import yaml

from conftest import SODIUM_PROMPT, record, sft_params, write_prepared


def test_select_ckpt_stage(tiny_llama_dir, tmp_path, monkeypatch):
    from survlm.modeling.sft import train_sft
    from survlm.config import load_config
    from survlm.stages import select_ckpt

    prepared = write_prepared(tmp_path / "prepared", {"train": [record(i) for i in range(2)],
                                                      "val": [record(i, split="val") for i in range(3)]})
    (prepared / "render_meta.jsonl").write_text("")
    train_sft(sft_params(max_steps=4), prepared, tiny_llama_dir, tmp_path / "sft", None)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"select_ckpt": {
        "val_notes": 2, "max_new_tokens": 12, "engine": {"batch_size": 2}, "include_zero_shot": True}}))
    select_ckpt.main(load_config("select_ckpt"), select_ckpt.Paths(
        prepared=prepared, base=tiny_llama_dir, sft=tmp_path / "sft", out=tmp_path / "best", metrics=Path("m.json"),
        curve=Path("curve.json")))
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert [c["step"] for c in curve] == [0, 2, 4]
    assert all(0.0 <= c["field_accuracy"] <= 1.0 for c in curve)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["val_notes"] == 2 and metrics["zero_shot"]["step"] == 0
    assert set(metrics["phase_s"]) == {"startup", "checks", "engine_start", "generation", "engine_close", "other"}
    assert metrics["phase_s"]["generation"] > 0
    from survlm.artifacts import read_adapter_run

    # the most accurate checkpoint, ties to the earlier step; the zero-shot base (step 0) is on the curve only
    scored = [c for c in curve if c["step"] > 0]
    chosen = max(scored, key=lambda c: (c["field_accuracy"] is not None, c["field_accuracy"] or 0.0, -c["step"]))
    assert metrics["best"]["step"] == chosen["step"]
    best = read_adapter_run(tmp_path / "best")   # the chosen checkpoint's own record, copied with its adapter
    source = tmp_path / "sft" / f"checkpoint-{chosen['step']}"
    assert best == read_adapter_run(source) and best["trained"]["step"] == chosen["step"]
    assert best["quantization"] == "none"
    weights = "adapter_model.safetensors"
    assert (tmp_path / "best" / weights).read_bytes() == (source / weights).read_bytes()


def test_hf_greedy_is_batch_independent_and_primed(tiny_llama_dir, schema):
    from survlm.modeling.backends import BackendSettings, Decoding, HFBackend

    from survlm.artifacts import chat_prompt

    prompts = [chat_prompt(SODIUM_PROMPT, record(i)) for i in range(3)]
    free = Decoding(max_new_tokens=24, constrained=False)
    two = HFBackend(tiny_llama_dir, {}, schema, BackendSettings(batch_size=2)).generate(prompts, free)
    three = HFBackend(tiny_llama_dir, {}, schema, BackendSettings(batch_size=3)).generate(prompts, free)
    assert [g[0].text for g in two] == [g[0].text for g in three]      # greedy, batch-size independent
    assert all(g[0].text.startswith('{"age":') and g[0].completion_tokens <= 24 for g in two)  # forced opening
    assert all(g[0].prompt_tokens > 10 for g in two)


def test_infer_stage_decoding_comparison_alone(tiny_llama_dir, tmp_path, monkeypatch):
    """test_notes/heldout_notes 0: infer runs only the decoding comparison (greedy, sample, beam) on validation."""
    from survlm.modeling.sft import train_sft
    from survlm.stages import infer
    from survlm.stages.common import run_stage

    prepared = write_prepared(tmp_path / "prepared", {
        "train": [record(i) for i in range(2)], "val": [record(i, split="val") for i in range(2)],
        **{split: [record(9, split=split)] for split in ("test", "test_heldout")}})
    (prepared / "render_meta.jsonl").write_text("")
    train_sft(sft_params(max_steps=2, save_steps=2), prepared, tiny_llama_dir, tmp_path / "sft", None)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"infer": {
        "baselines": [], "test_notes": 0, "heldout_notes": 0, "backend": "hf", "max_new_tokens": 12,
        "constrained": True, "engine": {"batch_size": 8}, "chunk_overlap": 16, "seed": 0,
        "decoding_comparison": {"val_notes": 2, "strategies": ["greedy", "sample", "beam"], "temperature": 0.7,
                                "top_p": 0.95, "beam_width": 2}}}))
    adapter = str(tmp_path / "sft" / "checkpoint-2")   # no baselines: --sft is not read
    run_stage(infer.main, "infer", infer.Paths, ["--prepared", str(prepared), "--base", str(tiny_llama_dir),
                                                 "--adapter", adapter, "--sft", adapter, "--out", "pred",
                                                 "--metrics", "m.json"])
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert sorted(metrics["tasks"]) == ["decoding/beam", "decoding/greedy", "decoding/sample"]
    assert 0 < metrics["beam_search_s"] < metrics["generation_s"]  # beam is timed apart from the batched tasks
    assert metrics["startup_s"] > 0
    assert not (tmp_path / "pred" / "test.jsonl").exists()
    comparison = metrics["decoding_comparison"]
    assert sorted(comparison) == ["beam", "greedy", "sample"]
    assert all(c["notes"] == 2 and 0.0 <= c["field_accuracy"] <= 1.0 for c in comparison.values())
