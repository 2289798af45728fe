"""benchmarks/style_transfer.py end to end on CPU: one left-out style through the real prepare, sft, select_ckpt
and infer stages on a tiny random Llama, the result file's shape, and merging rules."""
import importlib.util
import json
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["prepare.max_patients=200", "prepare.note_tokens=400", "prepare.workers=1",
        "prepare.styles=[flowsheet, discharge, signout, progress, nursing, labsheet, datagrid, handoff, narrative]",
        "sft.max_train_notes=4", "sft.max_steps=2", "sft.save_steps=2", "sft.eval_steps=2", "sft.eval_notes=1",
        "select_ckpt.val_notes=1", "select_ckpt.max_new_tokens=8", "infer.test_notes=2", "infer.heldout_notes=2",
        "infer.max_new_tokens=8"]


def _benchmark():
    spec = importlib.util.spec_from_file_location("style_transfer", REPO / "benchmarks" / "style_transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_one_left_out_style_end_to_end(tiny_llama_dir, tmp_path):
    bench = _benchmark()
    out = tmp_path / "style_transfer.json"
    argv = ["--preset", str(REPO / "params.yaml"), "--base", str(tiny_llama_dir), "--families", "handoff",
            "--work", str(tmp_path / "work"), "--out", str(out), "--set", *TINY]
    bench.main(argv)
    result = json.loads(out.read_text())
    assert set(result) == {"setup", "left_out", "in_distribution_accuracy", "min_left_out_accuracy", "runs"}
    assert list(result["left_out"]) == ["handoff"] and result["runs"] == 1
    r = result["left_out"]["handoff"]
    assert r["notes"] == 2 and r["in_distribution"]["notes"] == 2
    for key in ("accuracy", "last_value_rate", "regex_accuracy"):
        assert 0.0 <= r[key] <= 1.0, key
    assert r["fabrication_rate"] is None or 0.0 <= r["fabrication_rate"] <= 1.0
    assert result["in_distribution_accuracy"] == r["in_distribution"]["accuracy"]
    assert result["min_left_out_accuracy"] == r["accuracy"]
    assert "handoff" not in r["train_styles"] and len(r["train_styles"]) == 8
    assert set(r["seconds"]) == {"prepare", "sft", "select_ckpt", "infer", "total"}
    assert set(result["setup"]) == {"recipe", "styles"} and r["overrides"] == TINY    # each run's own settings
    # the run's own prepare held the style out of training and scored only its notes as left out
    prepared = tmp_path / "work" / "handoff" / "data" / "prepared"
    styles = json.loads((tmp_path / "work" / "handoff" / "metrics" / "prepare.json").read_text())["styles"]
    assert set(styles["test_heldout"]) == {"handoff"} and "handoff" not in styles["train"]
    assert all(json.loads(line)["style"] == "handoff" for line in (prepared / "test_heldout.jsonl").open())

    # another setup must not be merged into this file; nothing runs and the file stays as it was
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="another recipe or styles"):
        bench.main([*argv[:-len(TINY)], *TINY[:-1], "infer.max_new_tokens=16"])
    assert out.read_bytes() == before

    # merging: the summary is over every style in the file
    merged = {"left_out": {"handoff": r, "labsheet": {**r, "accuracy": 0.25,
                                                      "in_distribution": {**r["in_distribution"], "accuracy": 0.5}}}}
    summary = bench.summarise(merged)
    assert summary["runs"] == 2 and summary["min_left_out_accuracy"] == min(0.25, r["accuracy"])
    assert summary["in_distribution_accuracy"] == round((r["in_distribution"]["accuracy"] + 0.5) / 2, 4)


def test_runs_placed_differently_share_a_recipe_and_other_recipes_do_not():
    from survlm.config import resolve_params

    bench = _benchmark()
    preset = REPO / "params" / "gpu-smollm2-h200-style-transfer.yaml"
    recipe = bench.recipe_digest(resolve_params(preset))
    placed = ["sft.per_device_train_batch_size=8", "sft.gradient_accumulation_steps=1", "prepare.workers=2",
              "select_ckpt.engine.gpu_memory_utilization=0.5", "infer.engine.batch_size=64",
              "sft.gradient_checkpointing=true"]
    assert bench.recipe_digest(resolve_params(preset, placed)) == recipe
    for other in ("sft.per_device_train_batch_size=2", "sft.learning_rate=1e-4", "infer.max_new_tokens=512",
                  "prepare.note_tokens=3072"):
        assert bench.recipe_digest(resolve_params(preset, [other])) != recipe, other


def test_run_params_hold_one_style_out(tmp_path):
    from survlm.config import resolve_params

    bench = _benchmark()
    preset = REPO / "params" / "gpu-smollm2-h200-style-transfer.yaml"
    params = resolve_params(preset)
    p = bench.run_params(params, "datagrid")
    assert p["prepare"]["heldout_styles"] == ["datagrid"] and "datagrid" in p["prepare"]["styles"]
    assert p["infer"]["baselines"] == [] and p["infer"]["decoding_comparison"]["val_notes"] == 0
    assert not p["infer"]["abstention"]["enabled"]
    infer = bench.stage_command("infer")                       # the SFT adapter is the one under evaluation
    assert infer[infer.index("--adapter") + 1] == infer[infer.index("--sft") + 1] == "models/sft_best"
    assert params["prepare"]["heldout_styles"] == ["nursing"]                  # the preset itself is not changed
    # an unknown override key stops the benchmark before anything runs or is written
    out = tmp_path / "out.json"
    with pytest.raises(SystemExit, match=r"^override 'sft.lr=1e-4': .*sft\.lr: unknown key"):
        bench.main(["--preset", str(preset), "--work", str(tmp_path / "work"), "--out", str(out),
                    "--set", "sft.lr=1e-4"])
    assert not out.exists() and not (tmp_path / "work").exists()


def test_a_failed_stage_runs_again_when_attempts_allow(tmp_path, monkeypatch):
    bench = _benchmark()
    marker = tmp_path / "failed_once"
    # fails the first time it runs, succeeds after: what an engine start upset by another process looks like
    script = (f"import pathlib, sys; m = pathlib.Path({str(marker)!r}); ok = m.exists(); m.touch(); "
              "sys.exit(0 if ok else 3)")
    monkeypatch.setattr(bench, "stage_command", lambda stage: [sys.executable, "-c", script])
    with open(tmp_path / "stages.log", "w") as log:
        with pytest.raises(SystemExit, match=r"stage infer failed \(exit 3\)"):
            bench.run_stage("infer", tmp_path, log, attempts=1)
        marker.unlink()
        assert bench.run_stage("infer", tmp_path, log, attempts=2) >= 0.0
    assert marker.exists()


def test_a_failed_style_starts_no_further_style(tmp_path, monkeypatch):
    bench = _benchmark()
    ran = []

    def run_family(family, params, base, work, attempts=1):
        ran.append((family, attempts))
        if family == "datagrid":
            sys.exit(f"{family}: stage sft failed (exit 1)")
        return {"accuracy": 0.5, "notes": 4, "regex_accuracy": 0.25, "seconds": {},
                "in_distribution": {"accuracy": 0.75}}

    monkeypatch.setattr(bench, "run_family", run_family)
    monkeypatch.setattr(bench, "ensure_base", lambda params, base, work: work / "base")
    out = tmp_path / "out.json"
    with pytest.raises(SystemExit, match="datagrid: stage sft failed"):
        bench.main(["--preset", str(REPO / "params.yaml"), "--families", "handoff", "datagrid", "labsheet",
                    "--work", str(tmp_path / "work"), "--out", str(out)])
    assert ran == [("handoff", 1), ("datagrid", 1)]                 # labsheet never started
    assert list(json.loads(out.read_text())["left_out"]) == ["handoff"]   # the finished style was written
    with pytest.raises(SystemExit, match="^--parallel 0: at least 1"):
        bench.main(["--preset", str(REPO / "params.yaml"), "--parallel", "0", "--work", str(tmp_path / "w2"),
                    "--out", str(tmp_path / "out2.json")])
    assert not (tmp_path / "w2").exists() and len(ran) == 2


def test_styles_run_at_once_with_parallel(tmp_path, monkeypatch):
    bench = _benchmark()
    both_running = threading.Barrier(2, timeout=20)     # broken unless two styles run at the same time

    def run_family(family, params, base, work, attempts=1):
        both_running.wait()
        return {"accuracy": 0.5 if family == "handoff" else 0.25, "notes": 4, "regex_accuracy": 0.25, "seconds": {},
                "in_distribution": {"accuracy": 0.75}, "attempts": attempts}

    monkeypatch.setattr(bench, "run_family", run_family)
    monkeypatch.setattr(bench, "ensure_base", lambda params, base, work: work / "base")
    out = tmp_path / "out.json"
    bench.main(["--preset", str(REPO / "params.yaml"), "--families", "handoff", "labsheet", "--parallel", "2",
                "--work", str(tmp_path / "work"), "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["left_out"]) == {"handoff", "labsheet"} and result["min_left_out_accuracy"] == 0.25
    # a stage gets a second attempt only while styles share the machine
    assert all(r["styles_at_once"] == 2 and r["attempts"] == 2 for r in result["left_out"].values())
