"""Leave-one-style-out: how well does the SFT adapter read a note style it was never trained on?

For each style F in --families, in its own work directory (WORK/F) and with its own params.yaml (the preset,
resolved over params.yaml's defaults as `python -m survlm.config apply` does, then
--set overrides, then prepare.heldout_styles: [F] with F added to prepare.styles if missing, so F is
rendered only for test patients):

  prepare -> sft -> select_ckpt -> infer (the selected SFT adapter alone, no baselines, no decoding comparison)

each stage run as `dvc.yaml` runs it (its `cmd`, in the work directory, with the stage's default paths), then
scored here with survlm.metrics on the render metadata: the test split (the training styles) and the
test_heldout split (F). The regex baseline is scored on the same left-out notes, for reference.

The result file (--out) is written after every style and merged with what is already there, so the styles can
be run a few per invocation (one GPU machine at a time) and gathered in one file. Runs merge only when their
recipe is the same: the resolved params, leaving out the keys that only place the work (processes, an engine's
memory share and batch, activation memory, the split of a training batch into accumulation steps). A file
written with another recipe or styles is refused rather than mixed. Each run records its preset and overrides.

  in_distribution_accuracy   test-split field accuracy (training styles), mean over the runs
  left_out                   per style: accuracy, fabrication_rate, last_value_rate, notes (left-out notes
                             scored), and the run's in-distribution numbers, regex accuracy, stage seconds
  min_left_out_accuracy      the lowest left-out accuracy

  python benchmarks/style_transfer.py --preset params/gpu-smollm2-h200-style-transfer.yaml \\
      --families labsheet datagrid --out metrics/style_transfer.json
  python benchmarks/style_transfer.py --preset params/gpu-smollm2-h200-style-transfer.yaml \\
      --families handoff narrative --out metrics/style_transfer.json          # merges into the same file

Without --base, the preset's base model is built once by the base_model stage in WORK/_base.

--parallel N runs N styles at once, each in its own processes: a small model leaves most of a large GPU idle
(its stages spend much of their time on the CPU, loading, rendering and starting engines), so styles sharing one
GPU finish sooner together than one after another. The preset's engines must then leave room for each other
(gpu_memory_utilization). A stage that fails while other styles share the machine is run once more: an engine
measures free GPU memory while it starts and stops if another process frees memory meanwhile. Stage seconds are
then those of a shared machine; each style records how many ran at once. --attempts sets the tries per stage
when the GPU is shared with other work than these styles.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from survlm.config import ConfigError, resolve_params, write_params  # noqa: E402  (after the path)
from survlm.predictions import HELDOUT_SPLIT, TEST_SPLIT  # noqa: E402

STAGES = ("prepare", "sft", "select_ckpt", "infer")


def run_params(params: dict, family: str) -> dict:
    """The params of one leave-one-out run: F held out of training, the SFT adapter scored alone."""
    p = copy.deepcopy(params)
    styles = list(p["prepare"]["styles"])
    p["prepare"]["styles"] = styles if family in styles else styles + [family]
    p["prepare"]["heldout_styles"] = [family]
    p["infer"]["baselines"] = []
    p["infer"]["decoding_comparison"]["val_notes"] = 0
    p["infer"]["abstention"]["enabled"] = False
    return p


# Keys that decide only where and in what pieces the work runs, not what is computed: processes, an engine's
# memory share and batch, activation memory, and how a training batch is split into accumulation steps.
PLACEMENT_KEYS = {"workers", "n_jobs", "gpu_memory_utilization", "batch_size", "tensor_parallel_size",
                  "gradient_checkpointing", "activation_offloading"}


def recipe_digest(params: dict) -> str:
    """A digest of the resolved params without PLACEMENT_KEYS, with each training batch as its size (per device x
    accumulation steps): runs of one recipe placed differently on a machine share it."""
    from survlm.hashing import text_digest

    def strip(node):
        if not isinstance(node, dict):
            return node
        kept = {k: strip(v) for k, v in node.items() if k not in PLACEMENT_KEYS}
        if "per_device_train_batch_size" in kept:
            kept["train_batch"] = kept.pop("per_device_train_batch_size") * kept.pop("gradient_accumulation_steps")
        return kept

    return text_digest(json.dumps(strip(params), sort_keys=True))


def stage_command(stage: str) -> list[str]:
    """The stage's dvc.yaml command; infer serves the selected SFT adapter as the model under evaluation."""
    cmd = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["cmd"].split()
    if stage == "infer":
        cmd[cmd.index("--adapter") + 1] = cmd[cmd.index("--sft") + 1]
    return [sys.executable if cmd[0] == "python" else cmd[0], *cmd[1:]]


def say(line: str) -> None:
    """One progress line in a single write, so that styles running at once do not interleave their lines."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_stage(stage: str, cwd: Path, log, attempts: int = 1) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    for attempt in range(1, attempts + 1):
        say(f"=== {cwd.name}: {stage}" + (f" (attempt {attempt})" if attempt > 1 else ""))
        log.flush()
        done = subprocess.run(stage_command(stage), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode == 0:
            return round(time.perf_counter() - t0, 1)
    sys.exit(f"{cwd.name}: stage {stage} failed (exit {done.returncode}); its output: {log.name}")


def ensure_base(params: dict, base: str | None, work: Path) -> Path:
    if base:
        path = Path(base).resolve()
        if not (path / "config.json").is_file():
            sys.exit(f"--base {base}: not a model directory")
        return path
    root = work / "_base"
    if not (root / "models" / "base" / "config.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        write_params(params, root / "params.yaml", "benchmarks/style_transfer.py: the base model's params")
        with open(root / "stages.log", "w") as log:
            run_stage("base_model", root, log)
    return (root / "models" / "base").resolve()


def score_split(prepared: Path, predictions: Path, split: str) -> tuple[dict, dict]:
    """(model scores, regex baseline scores) on the notes of `split` the model answered."""
    from survlm.baselines import regex_answer
    from survlm.extraction import parse_answer
    from survlm.metrics import score
    from survlm.artifacts import load_prompt, note_of, read_jsonl, render_meta
    from survlm.predictions import row_results

    schema, _ = load_prompt(prepared)
    rows = {r["id"]: r for r in read_jsonl(prepared / f"{split}.jsonl")}
    path = predictions / f"{split}.jsonl"
    answered = list(read_jsonl(path)) if path.is_file() else []
    meta = render_meta(prepared, {p["id"] for p in answered})
    model = score(schema, [(rows[p["id"]]["labels"], row_results(p), meta.get(p["id"])) for p in answered])
    regex = score(schema, [(rows[p["id"]]["labels"], parse_answer(regex_answer(schema, note_of(rows[p["id"]])), schema,
                                                                   note_of(rows[p["id"]])), meta.get(p["id"]))
                           for p in answered])
    return model, regex


def run_family(family: str, params: dict, base: Path, work: Path, attempts: int = 1) -> dict:
    wd = work / family
    shutil.rmtree(wd, ignore_errors=True)
    (wd / "models").mkdir(parents=True)
    (wd / "models" / "base").symlink_to(base, target_is_directory=True)
    p = run_params(params, family)
    write_params(p, wd / "params.yaml", f"benchmarks/style_transfer.py: {family} left out")
    seconds = {}
    with open(wd / "stages.log", "w") as log:
        for stage in STAGES:
            seconds[stage] = run_stage(stage, wd, log, attempts)
    prepared, predictions = wd / "data" / "prepared", wd / "data" / "predictions"
    test, _ = score_split(prepared, predictions, TEST_SPLIT)
    left, regex = score_split(prepared, predictions, HELDOUT_SPLIT)
    if not left["notes"]:
        sys.exit(f"{family}: no left-out notes were scored (infer.heldout_notes, or too few test patients)")
    return {"accuracy": left["field_accuracy"], "fabrication_rate": left["fabrication_rate"],
            "last_value_rate": left["last_value_rate"], "notes": left["notes"],
            "first_value_rate": left["first_value_rate"], "json_valid_rate": left["json_valid_rate"],
            "errors": left["errors"], "per_field": left["per_field"],
            "regex_accuracy": regex["field_accuracy"],
            "in_distribution": {"accuracy": test["field_accuracy"], "notes": test["notes"],
                                "fabrication_rate": test["fabrication_rate"],
                                "last_value_rate": test["last_value_rate"]},
            "train_styles": [s for s in p["prepare"]["styles"] if s != family], "seconds": seconds}


def summarise(result: dict) -> dict:
    left = result["left_out"]
    ind = [r["in_distribution"]["accuracy"] for r in left.values() if r["in_distribution"]["accuracy"] is not None]
    acc = [r["accuracy"] for r in left.values() if r["accuracy"] is not None]
    result["in_distribution_accuracy"] = round(statistics.fmean(ind), 4) if ind else None
    result["min_left_out_accuracy"] = min(acc) if acc else None
    result["runs"] = len(left)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="params/gpu-smollm2-h200-style-transfer.yaml")
    ap.add_argument("--families", nargs="+", help="styles to leave out, one run each (default: the preset's styles)")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--base", help="base model dir (default: built from the preset's model section)")
    ap.add_argument("--work", default="runs/style_transfer", help="one work directory per style under it")
    ap.add_argument("--out", default="metrics/style_transfer.json")
    ap.add_argument("--parallel", type=int, default=1, metavar="N", help="styles run at once (default 1)")
    ap.add_argument("--attempts", type=int, metavar="N",
                    help="tries per stage (default: 2 when styles run at once, else 1)")
    args = ap.parse_args(argv)
    if args.parallel < 1:
        sys.exit(f"--parallel {args.parallel}: at least 1 style at a time")
    attempts = args.attempts if args.attempts is not None else (2 if args.parallel > 1 else 1)
    if attempts < 1:
        sys.exit(f"--attempts {args.attempts}: at least 1 try per stage")
    from survlm.artifacts import write_json
    from survlm.notes.render import STYLES

    try:
        params = resolve_params(args.preset, args.overrides)
    except ConfigError as exc:
        sys.exit(str(exc))
    families = args.families or list(params["prepare"]["styles"])
    unknown = [f for f in families if f not in STYLES]
    if unknown:
        sys.exit(f"--families: unknown style(s) {', '.join(unknown)}; known: {', '.join(STYLES)}")
    setup = {"recipe": recipe_digest(params), "styles": params["prepare"]["styles"]}
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {"setup": setup, "left_out": {}}
    if result.get("setup") != setup:
        sys.exit(f"{out}: written with another recipe or styles ({result.get('setup')}, this run {setup}); "
                 "use another --out")
    work = Path(args.work).resolve()
    base = ensure_base(params, args.base, work)
    lock, failed = threading.Lock(), threading.Event()

    def one(family: str) -> None:
        if failed.is_set():                 # a style failed: start no further one
            return
        t0 = time.perf_counter()
        try:
            r = run_family(family, params, base, work, attempts=attempts)
        except BaseException:
            failed.set()
            raise
        r["seconds"]["total"] = round(time.perf_counter() - t0, 1)
        r.update(styles_at_once=args.parallel, preset=str(args.preset), overrides=list(args.overrides))
        with lock:                          # one writer of the merged file at a time
            result["left_out"][family] = r
            write_json(out, summarise(result))
        say(f"{family}: left-out accuracy {r['accuracy']} on {r['notes']} notes (regex {r['regex_accuracy']}), "
            f"in-distribution {r['in_distribution']['accuracy']}; {r['seconds']['total']} s")

    # the styles already running when one fails finish and are written before the failure is reported
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        runs = [pool.submit(one, f) for f in families]
    for run in runs:
        run.result()
    print(f"{out}: {result['runs']} styles left out; min left-out accuracy {result['min_left_out_accuracy']}, "
          f"in-distribution {result['in_distribution_accuracy']}")


if __name__ == "__main__":
    main()
