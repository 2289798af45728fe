"""DVC stage `base_model`: materialise models/base from params `model.base`."""
from __future__ import annotations

import argparse

from ..modeling.base import BaseModelError, materialise_base
from .common import fail, load_params


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="models/base")
    args = ap.parse_args(argv)
    params = load_params("model")
    try:
        manifest = materialise_base(str(params.get("base", "bundled:smollm2-135m-instruct")), args.out,
                                    allow_download=bool(params.get("allow_download", False)))
    except BaseModelError as exc:
        fail(str(exc))
    print(f"base model: {manifest['source']['spec']} ({manifest['parameters'] / 1e6:.0f}M parameters) -> {args.out}")


if __name__ == "__main__":
    main()
