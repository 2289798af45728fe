"""scripts/offline_gpu/quality_run.sh, the DVC-less runner for offline GPU machines: stage order from dvc.yaml,
params overrides, START_AT / STOP_AFTER, the throughput row and the export's adapter, and what lands in results/.
The runner is the unit here, so the stages are stand-ins that record that they ran and write a metric."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAND_IN = """import json, pathlib, sys
name = sys.argv[1]
pathlib.Path("metrics").mkdir(exist_ok=True)
pathlib.Path(f"metrics/{name}.json").write_text(json.dumps({"ran": name, "argv": sys.argv[2:]}))
with open("ran.txt", "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\\n")
"""


@pytest.fixture
def checkout(tmp_path):
    (tmp_path / "scripts" / "offline_gpu").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "offline_gpu" / "quality_run.sh", tmp_path / "scripts" / "offline_gpu")
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "infer_throughput.py").write_text(
        "import runpy, sys; sys.argv = ['stand_in.py', 'throughput', *sys.argv[1:]]; runpy.run_path('stand_in.py')")
    (tmp_path / "src" / "survlm").mkdir(parents=True)
    (tmp_path / "src" / "survlm" / "__init__.py").write_text("")
    for module in ("config.py", "artifacts.py", "hashing.py"):   # the real params writer: preset and overrides go through it
        shutil.copy(ROOT / "src" / "survlm" / module, tmp_path / "src" / "survlm")
    (tmp_path / "src" / "survlm" / "cli.py").write_text(
        "import runpy, sys; sys.argv = ['stand_in.py', 'export', *sys.argv[1:]]; runpy.run_path('stand_in.py')")
    stages = {name: {"cmd": f"python stand_in.py {name}"} for name in ("prepare", "sft", "select_ckpt", "dpo")}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump({"sft": {"learning_rate": 0.001, "lora": {"r": 8}}}))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "committed.json").write_text("{}")  # an older run's file: not this run's result
    return tmp_path


def run(checkout: Path, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    full_env = {**os.environ, "PATH": path, "PYTHONPATH": str(checkout / "src"), "CUDA_VISIBLE_DEVICES": "",
                "RESULTS": "results/run", **env}
    return subprocess.run(["bash", "scripts/offline_gpu/quality_run.sh", "preset.yaml", *overrides], cwd=checkout,
                          env=full_env, capture_output=True, text=True, timeout=300)


def ran(checkout: Path) -> list[str]:
    return (checkout / "ran.txt").read_text().splitlines()


def test_whole_run_in_dvc_order_with_overrides_and_export(checkout):
    done = run(checkout, "sft.lora.r=64", THROUGHPUT="0")
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in ran(checkout)] == ["prepare", "sft", "select_ckpt", "dpo", "export"]
    params = yaml.safe_load((checkout / "params.yaml").read_text())
    assert set(params) == set(yaml.safe_load((ROOT / "params.yaml").read_text()))   # every section, resolved
    assert params["sft"]["learning_rate"] == 0.001 and params["sft"]["lora"]["r"] == 64   # the preset, then the override
    assert params["sft"]["lora"]["alpha"] == 32                                       # the rest: the defaults
    results = checkout / "results" / "run"
    assert list(json.loads((results / "timings.json").read_text())) == ["prepare", "sft", "select_ckpt", "dpo",
                                                                        "export"]
    assert (results / "metrics" / "dpo.json").is_file() and (results / "params.yaml").is_file()
    assert not (results / "metrics" / "committed.json").exists()  # only files this run wrote
    # no DPO adapter was written (the stand-in makes none): the export merges the SFT one
    assert "--adapter models/sft_best" in ran(checkout)[-1]


def test_stop_after_with_throughput_then_start_at(checkout):
    done = run(checkout, STOP_AFTER="select_ckpt", THROUGHPUT="1", EXPORT="0")
    assert done.returncode == 0, done.stderr
    lines = ran(checkout)
    assert [line.split()[0] for line in lines] == ["prepare", "sft", "select_ckpt", "throughput"]
    assert "--adapter models/sft_best" in lines[-1] and "--out results/run/infer_throughput.json" in lines[-1]
    (checkout / "models" / "dpo").mkdir(parents=True)
    (checkout / "models" / "dpo" / "adapter_config.json").write_text("{}")
    done = run(checkout, START_AT="dpo")
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in ran(checkout)[4:]] == ["dpo", "export"]
    assert "--adapter models/dpo" in ran(checkout)[-1]
    # the restarted run adds to the first one's timings instead of starting them over
    assert list(json.loads((checkout / "results" / "run" / "timings.json").read_text())) == [
        "prepare", "sft", "select_ckpt", "infer_throughput", "dpo", "export"]


def test_unknown_override_key_stops_before_any_stage(checkout):
    done = run(checkout, "sft.lr=1e-4")                 # TRL's name is learning_rate
    assert done.returncode != 0
    assert done.stderr.startswith("override 'sft.lr=1e-4': sft.lr: unknown key (known: ")
    assert "Traceback" not in done.stderr and not (checkout / "params.yaml").exists()
    assert not (checkout / "ran.txt").exists()
