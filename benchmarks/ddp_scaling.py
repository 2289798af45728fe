"""Data-parallel scaling of the `sft` or `dpo` stage: the stage itself, once in one process and once under
`torch.distributed.run` with N processes (DDP; one GPU each), with the same global batch.

The one-process run accumulates N micro-batches per optimizer step, and the N-process run does one micro-batch
on each GPU. So both runs take the same optimizer steps on the same examples, and their loss curves should
agree within noise. speedup = one-process training seconds / N-process training seconds; the target is
>= 1.8 on 2 GPUs. Params come from ./params.yaml (the stage's section), with max_steps, batch
and checkpointing overridden here; the inputs are the pipeline's own (data/prepared, models/base, and for
dpo data/pairs and models/sft_best).

  python benchmarks/ddp_scaling.py --stage sft --gpus 2 --steps 48 --out benchmarks/results/ddp_scaling_sft.json
  python benchmarks/ddp_scaling.py --stage dpo --gpus 2 --steps 16 --out benchmarks/results/ddp_scaling_dpo.json
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def read_curve(live: Path, name: str) -> list[float]:
    path = live / "plots" / "metrics" / f"{name}.tsv"
    if not path.is_file():
        return []
    with open(path) as fh:
        return [float(row[name]) for row in csv.DictReader(fh, delimiter="\t")]


def run_stage(stage: str, processes: int, params: dict, work: Path, args) -> dict:
    work.mkdir(parents=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    inputs = {"sft": ["--prepared", str(Path(args.prepared).resolve())],
              "dpo": ["--prepared", str(Path(args.prepared).resolve()), "--pairs", str(Path(args.pairs).resolve()),
                      "--sft", str(Path(args.sft).resolve())]}[stage]
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)] if processes > 1 else []
    cmd = [sys.executable, *launcher, "-m", f"survlm.stages.{stage}", *inputs, "--base", str(Path(args.base).resolve()),
           "--out", "out", "--live", "live", "--metrics", "metrics.json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{stage} with {processes} process(es) failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((work / "metrics.json").read_text())
    summary = metrics.get("train", metrics)  # dpo nests its training summary under "train"
    tokens = read_curve(work / "live", "num_tokens")
    seconds = float(summary["train_seconds"])
    return {"processes": processes, "per_device_batch": params[stage]["per_device_train_batch_size"],
            "grad_accum": params[stage]["gradient_accumulation_steps"], "steps": summary["steps"],
            "train_seconds": seconds,
            "tokens": int(tokens[-1]) if tokens else None,
            "tokens_per_s": round(tokens[-1] / seconds, 1) if tokens else None,
            "peak_mem_gib_rank0": summary.get("peak_mem_gib"), "losses": read_curve(work / "live", "loss")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["sft", "dpo"], default="sft")
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--per-device-batch", type=int, default=None, help="default: the stage's batch_size")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--pairs", default="data/pairs")
    ap.add_argument("--base", default="models/base")
    ap.add_argument("--sft", default="models/sft_best")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    base_params = yaml.safe_load(open(args.params))
    stage = dict(base_params[args.stage])
    per_device = args.per_device_batch or int(stage["per_device_train_batch_size"])
    stage.update(max_steps=args.steps, per_device_train_batch_size=per_device)
    if args.stage == "sft":
        stage.update(save_steps=args.steps, eval_steps=args.steps, eval_notes=0)  # no eval pass: training only
    else:
        stage.update(eval_steps=None, val_notes=0)  # no eval pass and no generation report: training only
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for processes in (1, args.gpus):
            accum = int(stage["gradient_accumulation_steps"]) * args.gpus // processes
            params = {args.stage: {**stage, "gradient_accumulation_steps": accum}}
            runs.append(run_stage(args.stage, processes, params, Path(tmp) / f"p{processes}", args))
            print(f"{args.stage}: {processes} process(es): {runs[-1]['train_seconds']} s, "
                  f"{runs[-1]['tokens_per_s']} tokens/s", flush=True)
    one, many = runs
    pairs = list(zip(one["losses"], many["losses"]))
    result = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)",
        "date": dt.date.today().isoformat(), "stage": args.stage, "gpus": args.gpus, "steps": args.steps,
        "global_batch": per_device * int(stage["gradient_accumulation_steps"]) * args.gpus, "runs": runs,
        "speedup": round(one["train_seconds"] / many["train_seconds"], 3),
        "loss_max_abs_diff": round(max(abs(a - b) for a, b in pairs), 5) if pairs else None,
        "loss_drop_one_process": round(one["losses"][0] - one["losses"][-1], 5) if one["losses"] else None,
    }
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
