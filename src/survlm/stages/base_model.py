"""DVC stage `base_model`: materialise models/base from params `model.base`."""
from __future__ import annotations

import argparse

from ..modeling.base import BaseModelError, materialise_base
from .common import fail, stage_params


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="the base model dir to write (models/base)")
    args = ap.parse_args(argv)
    params = stage_params("model")
    try:
        manifest = materialise_base(params.base, args.out, allow_download=params.allow_download)
    except BaseModelError as exc:
        fail(str(exc))
    print(f"base model: {manifest['source']['spec']} ({manifest['parameters'] / 1e6:.0f}M parameters) -> {args.out}")


if __name__ == "__main__":
    main()
