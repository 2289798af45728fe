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

# `survlm export` records that it ran; `survlm serve` answers /v1/models where params.yaml says the server is
STAND_IN_CLI = """import http.server, os, pathlib, runpy, sys, urllib.parse
import yaml
if sys.argv[1] == "serve":
    pathlib.Path("serve.txt").write_text(" ".join(sys.argv[2:]))
    if os.environ.get("STAND_IN_SERVER_FAILS"):
        sys.exit("no GPU here")
    url = urllib.parse.urlsplit(yaml.safe_load(open("params.yaml"))["infer"]["engine"]["openai_base_url"])

    class Models(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    http.server.HTTPServer((url.hostname, url.port), Models).serve_forever()
sys.argv = ["stand_in.py", "export", *sys.argv[1:]]
runpy.run_path("stand_in.py")
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
    (tmp_path / "src" / "survlm" / "cli.py").write_text(STAND_IN_CLI)
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_starts_one_server_that_the_generating_stages_share_and_stops_it(checkout):
    import urllib.request

    url = f"http://127.0.0.1:{_free_port()}/v1"
    done = run(checkout, SERVE="1", SERVE_URL=url, SERVE_KV_CACHE_GIB="12", EXPORT="0")
    assert done.returncode == 0, done.stderr
    params = yaml.safe_load((checkout / "params.yaml").read_text())
    for block in (params["select_ckpt"], params["make_pairs"], params["dpo"]["report"], params["infer"]):
        assert block["backend"] == "openai"
        assert {k: block["engine"][k] for k in ("openai_load_adapters", "openai_constraint", "openai_base_url",
                                                "gpu_memory_utilization", "kv_cache_gib")} == {
            "openai_load_adapters": True, "openai_constraint": "vllm_grammar", "openai_base_url": url,
            "gpu_memory_utilization": 0.3, "kv_cache_gib": 12}
    assert (checkout / "serve.txt").read_text() == "--base models/base --stage infer"
    # the server starts with the first stage and is waited for before the first generating one
    assert list(json.loads((checkout / "results" / "run" / "timings.json").read_text())) == [
        "prepare", "sft", "serve_wait", "select_ckpt", "dpo"]
    with pytest.raises(OSError):   # and it is gone when the stages are done
        urllib.request.urlopen(f"{url}/models", timeout=2)


def test_a_server_that_ends_before_it_answers_leaves_the_stages_their_own_engines(checkout):
    done = run(checkout, "sft.lora.r=64", SERVE="1", SERVE_URL=f"http://127.0.0.1:{_free_port()}/v1",
               STAND_IN_SERVER_FAILS="1", EXPORT="0")
    assert done.returncode == 0, done.stderr
    assert "quality_run.sh: the vLLM server ended before it answered" in done.stderr
    assert "no GPU here" in done.stderr and "Traceback" not in done.stderr
    assert [line.split()[0] for line in ran(checkout)] == ["prepare", "sft", "select_ckpt", "dpo"]
    assert (checkout / "serve.txt").exists()                     # the server was started
    params = yaml.safe_load((checkout / "params.yaml").read_text())
    assert params["sft"]["lora"]["r"] == 64                      # the run's own overrides stay
    for stage in (params["select_ckpt"], params["dpo"]["report"], params["infer"]):
        assert stage["backend"] != "openai" and stage["engine"]["kv_cache_gib"] is None
    assert "serve_wait" in json.loads((checkout / "results" / "run" / "timings.json").read_text())
