"""kill -9 in the middle of each long step (sft, make_pairs, dpo, infer, extract), then the same command again: the
outputs equal an uninterrupted run's, and nothing half-written is left behind. Real subprocesses, tiny models, CPU."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import (TINY_DPO, TINY_SFT, pair, pairs_args, pairs_workdir, record, run_module_here, run_stage,
                      run_stage_here, write_prepared)
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _start(args: list[str], cwd: Path, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # SIGINT as at a terminal even when the tests run in the background (where a shell ignores it)
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before it could be killed")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("the run never reached the point to kill it at")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "latency_s"} for x in path.read_text().splitlines()]


def _same_tensors(a: Path, b: Path, atol: float) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    assert max(float((ta[k] - tb[k]).abs().max()) for k in ta) <= atol


NOTES = [{"id": f"n{i}", "text": f"6{i} yo woman. HD3: HR 8{i}, T 37.{i} C. No diabetes."} for i in range(4)]


def test_extract_killed_then_rerun_equals_an_uninterrupted_run(tiny_lora_pair, tmp_path):
    base, lora = tiny_lora_pair
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps(n) + "\n" for n in NOTES))

    def cmd(out):
        return ["-m", "survlm.cli", "extract", "notes.jsonl", "--adapter", str(lora), "--base", str(base),
                "--out", out, "--backend", "hf", "--fields", "sex,heart_rate_bpm", "--max-new-tokens", "80",
                "--batch-size", "1", "--quiet"]

    # the uninterrupted reference, in this process; the interrupted runs and their reruns are real processes
    assert run_module_here("survlm.cli", cmd("clean.csv")[2:], tmp_path).returncode == 0
    proc = _start(cmd("cut.csv"), tmp_path)
    _kill_when(proc, lambda: _lines(tmp_path / "cut.csv.predictions.jsonl") >= 1)
    assert not (tmp_path / "cut.csv").exists()
    assert _start(cmd("cut.csv"), tmp_path).wait(300) == 0
    assert (tmp_path / "cut.csv").read_text() == (tmp_path / "clean.csv").read_text()
    assert _rows(tmp_path / "cut.csv.predictions.jsonl") == _rows(tmp_path / "clean.csv.predictions.jsonl")
    assert not list(tmp_path.glob(".*tmp*"))

    # Ctrl-C: one line that says how to resume, exit 130, no traceback; the same command then finishes the table
    with open(tmp_path / "int.err", "w") as err:
        proc = _start(cmd("int.csv"), tmp_path, stderr=err)
        while _lines(tmp_path / "int.csv.predictions.jsonl") < 1:
            assert proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 130
    said = (tmp_path / "int.err").read_text()
    assert "Traceback" not in said and said.strip().splitlines()[-1] == (
        "interrupted: answers so far are kept in int.csv.predictions.jsonl; run the same command again to resume")
    assert _start(cmd("int.csv"), tmp_path).wait(300) == 0
    assert (tmp_path / "int.csv").read_text() == (tmp_path / "clean.csv").read_text()


def _infer_workdir(root: Path, base: Path, lora: Path) -> Path:
    from survlm.schema import load_schema, system_prompt

    work = root
    splits = {split: [record(i, answer="{}", split=split, note=f"{split} {i}: 6{i} yo man, HD3 HR 8{i}.")
                      for i in range(n)] for split, n in (("test", 3), ("test_heldout", 2), ("val", 0))}
    # the prompt the adapter's run record says it was trained with
    write_prepared(work / "prepared", splits, system=system_prompt(load_schema(), "brief"))
    params = {"baselines": ["zero_shot"], "test_notes": 3, "heldout_notes": 2,
              "backend": "hf", "max_new_tokens": 64, "constrained": False, "chunk_overlap": 16,
              "seed": 0, "decoding_comparison": {"val_notes": 0}, "engine": {"max_model_len": 1024, "batch_size": 1}}
    (work / "params.yaml").write_text(yaml.safe_dump({"infer": params}))
    (work / "base").symlink_to(base)
    return work


def test_infer_killed_then_rerun_equals_an_uninterrupted_run(tiny_lora_pair, tmp_path):
    base, lora = tiny_lora_pair
    args = ["-m", "survlm.stages.infer", "--prepared", "prepared", "--base", "base", "--adapter", str(lora),
            "--sft", str(lora), "--out", "predictions", "--metrics", "infer.json"]
    clean, cut = _infer_workdir(tmp_path / "clean", base, lora), _infer_workdir(tmp_path / "cut", base, lora)
    run_stage_here("infer", args[2:], clean)        # the uninterrupted reference; the cut run is a real process
    proc = _start(args, cut)
    _kill_when(proc, lambda: _lines(cut / "predictions" / "test.jsonl") >= 2)
    assert _start(args, cut).wait(300) == 0
    files = sorted(p.relative_to(clean) for p in (clean / "predictions").rglob("*.jsonl"))
    assert files == sorted(p.relative_to(cut) for p in (cut / "predictions").rglob("*.jsonl")) and len(files) == 4
    for f in files:
        assert _rows(cut / f) == _rows(clean / f), f
    metrics = {name: json.loads((d / "infer.json").read_text())["tasks"] for name, d in (("clean", clean), ("cut", cut))}
    assert metrics["cut"]["dpo/test"]["resumed"] >= 2
    for task, m in metrics["clean"].items():
        assert {k: v for k, v in m.items() if k != "resumed"} == {k: v for k, v in metrics["cut"][task].items()
                                                                 if k != "resumed"}


def test_make_pairs_killed_then_rerun_equals_an_uninterrupted_run(tiny_lora_pair, schema, support2_rows, tmp_path):
    """The answers of finished notes survive the kill and are not asked again; the rerun writes the pairs an
    uninterrupted run writes (engine batch_size 1: every request is its own seeded batch, so a sampled answer does
    not depend on which other notes are asked with it)."""
    base, lora = tiny_lora_pair
    params = {"notes": 4, "engine": {"batch_size": 1}}
    clean = pairs_workdir(tmp_path / "clean", support2_rows[:4], schema, params)
    cut = pairs_workdir(tmp_path / "cut", support2_rows[:4], schema, params)
    args = pairs_args(base, lora)
    run_stage_here("make_pairs", args, clean)       # the uninterrupted reference; the cut run is a real process
    proc = _start(["-m", "survlm.stages.make_pairs", *args], cut)
    _kill_when(proc, lambda: _lines(cut / "answers" / "greedy.jsonl") >= 2)
    assert not (cut / "pairs").exists() and not (cut / "m.json").exists()
    assert _start(["-m", "survlm.stages.make_pairs", *args], cut).wait(300) == 0
    for f in ("train.jsonl", "eval.jsonl"):
        assert (cut / "pairs" / f).read_text() == (clean / "pairs" / f).read_text(), f
    for f in ("greedy.jsonl", "sampled.jsonl"):
        assert _rows(cut / "answers" / f) == _rows(clean / "answers" / f), f
    generation = json.loads((cut / "m.json").read_text())["generation"]
    assert generation["make_pairs/greedy"]["resumed"] >= 2
    assert generation["make_pairs/sampled"]["resumed"] < 4


def _sft_workdir(root: Path, base: Path) -> Path:
    write_prepared(root / "prepared", {"train": [record(i) for i in range(3)],
                                       "val": [record(i, split="val") for i in range(5, 7)]})
    (root / "base").symlink_to(base)
    params = {**TINY_SFT, "max_steps": 6, "save_steps": 2, "eval_steps": 2}
    (root / "params.yaml").write_text(yaml.safe_dump({"sft": params}))
    return root


def test_sft_killed_while_saving_then_rerun_equals_an_uninterrupted_run(tiny_llama_dir, tmp_path):
    args = ["--prepared", "prepared", "--base", "base", "--out", "sft", "--live", "live", "--metrics", "sft.json"]
    clean, cut = _sft_workdir(tmp_path / "clean", tiny_llama_dir), _sft_workdir(tmp_path / "cut", tiny_llama_dir)
    run_stage_here("sft", args, clean)              # the uninterrupted reference; the cut run is a real process
    proc = _start(["-m", "survlm.stages.sft", *args], cut)
    _kill_when(proc, lambda: (cut / "sft" / "checkpoint-4" / "trainer_state.json").is_file())
    # as a kill between the Trainer's writes leaves it: checkpoint-4 without its trainer_state.json (written last)
    (cut / "sft" / "checkpoint-4" / "trainer_state.json").unlink()
    shutil.rmtree(cut / "sft" / "checkpoint-6", ignore_errors=True)
    run_stage([], "sft", args, cut)
    summary = {d: json.loads((d / "sft.json").read_text()) for d in (clean, cut)}
    assert summary[cut]["resumed_from"] == "checkpoint-2"
    assert summary[cut]["checkpoints"] == summary[clean]["checkpoints"] == ["checkpoint-2", "checkpoint-4",
                                                                            "checkpoint-6"]
    assert summary[cut]["train_loss"] == pytest.approx(summary[clean]["train_loss"], abs=1e-4)
    for step in (4, 6):
        _same_tensors(clean / "sft" / f"checkpoint-{step}" / "adapter_model.safetensors",
                      cut / "sft" / f"checkpoint-{step}" / "adapter_model.safetensors", atol=1e-5)
    history = {d: [(h["step"], round(h["loss"], 3)) for h in json.loads(
        (d / "sft" / "checkpoint-6" / "trainer_state.json").read_text())["log_history"] if "loss" in h]
        for d in (clean, cut)}
    assert history[cut] == history[clean] and len(history[cut]) == 6
    for curve in ("loss.tsv", "eval/loss.tsv"):                 # the dvclive curves: no step logged twice
        rows = {d: [x.split("\t") for x in (d / "live" / "plots" / "metrics" / curve).read_text().splitlines()[1:]]
                for d in (clean, cut)}
        assert [r[0] for r in rows[cut]] == [r[0] for r in rows[clean]], curve
        assert [float(r[1]) for r in rows[cut]] == pytest.approx([float(r[1]) for r in rows[clean]], abs=1e-4)


def test_dpo_killed_then_rerun_equals_an_uninterrupted_run(tiny_llama_dir, sft_adapter, tmp_path):
    prepared, sft_adapter = sft_adapter
    args = ["--prepared", str(prepared), "--pairs", "pairs", "--base", str(tiny_llama_dir), "--sft", "sft_best",
            "--out", "dpo", "--live", "live", "--metrics", "dpo.json"]
    works = {}
    for name in ("clean", "cut"):
        work = works[name] = tmp_path / name
        (work / "pairs").mkdir(parents=True)
        (work / "pairs" / "train.jsonl").write_text("".join(json.dumps(pair(i, f"14{i}")) + "\n" for i in range(6)))
        (work / "pairs" / "eval.jsonl").write_text("")
        shutil.copytree(sft_adapter, work / "sft_best")
        (work / "params.yaml").write_text(yaml.safe_dump({"dpo": {**TINY_DPO, "max_steps": 6, "val_notes": 0}}))
    clean, cut = works["clean"], works["cut"]
    run_stage_here("dpo", args, clean)              # the uninterrupted reference; the cut run is a real process
    proc = _start(["-m", "survlm.stages.dpo", *args], cut)
    _kill_when(proc, lambda: _lines(cut / "live" / "plots" / "metrics" / "loss.tsv") >= 3)
    assert list(cut.glob(".dpo*.tmp-*"))                     # what the kill left: its training directory
    run_stage([], "dpo", args, cut)
    assert not list(cut.glob(".dpo*.tmp-*"))
    _same_tensors(clean / "dpo" / "adapter_model.safetensors", cut / "dpo" / "adapter_model.safetensors", atol=1e-6)
    train = {d: json.loads((d / "dpo.json").read_text())["train"] for d in (clean, cut)}
    for key in ("steps", "train_loss", "last_step", "policy_max_abs_change", "ref_adapter_max_abs_diff_from_sft"):
        assert train[cut][key] == train[clean][key], key
    curves = [(d / "live" / "plots" / "metrics" / "loss.tsv").read_text() for d in (clean, cut)]
    assert curves[0] == curves[1] and len(curves[0].splitlines()) == 1 + 6
