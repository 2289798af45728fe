"""DVC stage `base_model`: materialise models/base from params `model.base`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ModelParams
from ..modeling.base import BaseModelError, materialise_base
from .common import fail, path_arg, run_stage


@dataclass(frozen=True)
class Paths:
    out: Path = path_arg("the base model dir to write (models/base)")


def main(cfg: ModelParams, paths: Paths) -> None:
    try:
        manifest = materialise_base(cfg.base, paths.out, allow_download=cfg.allow_download)
    except BaseModelError as exc:
        fail(str(exc))
    print(f"base model: {manifest['source']['spec']} ({manifest['parameters'] / 1e6:.0f}M parameters) -> {paths.out}")


if __name__ == "__main__":
    run_stage(main, "model", Paths)
