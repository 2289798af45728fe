"""Rewrite a wheel without the members an offline GPU image will never load, to fit fewer 64 MiB transfers.

  python scripts/offline_gpu/trim_wheel.py WHEEL OUT_DIR --drop 'GLOB' [--drop ...] [--keep 'GLOB' ...] [--stored]

A member matching a --keep glob stays whatever --drop says. Dropped members also leave the wheel's RECORD,
so pip installs the rest as a consistent wheel. `--stored` writes the members uncompressed, for a bundle that
is compressed as a whole afterwards (xz beats deflate on shared libraries). What build_bundle.sh drops, and why it is safe:
  bitsandbytes: the libraries for CUDA versions other than the image's (it loads one, chosen by torch's CUDA).
  survset: every cohort pickle except SUPPORT2's (survlm reads only that file, after checking its SHA-256).
  vllm: the FlashAttention-2 build (Hopper uses FA3; vLLM imports FA2 in a try block), the MoE kernels and the
  Rust front end (imported in try blocks / only on request), and the CUDA headers for JIT-built kernels that
  only FP8-MoE and sm100 models use.
"""
from __future__ import annotations

import argparse
import fnmatch
import zipfile
from pathlib import Path


def trim(wheel: Path, out_dir: Path, drop: list[str], stored: bool, keep: list[str] = ()) -> tuple[Path, int]:
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / wheel.name
    compression = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    dropped = 0

    def dropping(name: str) -> bool:
        return (any(fnmatch.fnmatch(name, p) for p in drop) and not any(fnmatch.fnmatch(name, p) for p in keep))

    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", compression) as dst:
        for info in src.infolist():
            if dropping(info.filename):
                dropped += 1
                continue
            data = src.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(line for line in lines if not dropping(line.split(",", 1)[0])) + "\n").encode()
            info.compress_type = compression
            dst.writestr(info, data)
    if dropped == 0:
        raise SystemExit(f"{wheel}: no member matched {drop} (has the wheel's layout changed?)")
    return out, dropped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--drop", action="append", required=True, help="glob of member paths to leave out")
    ap.add_argument("--keep", action="append", default=[], help="glob of member paths to keep regardless")
    ap.add_argument("--stored", action="store_true", help="no per-member compression")
    args = ap.parse_args()
    out, dropped = trim(args.wheel, args.out_dir, args.drop, args.stored, args.keep)
    print(f"{out.name}: {dropped} members dropped, {args.wheel.stat().st_size >> 20} -> {out.stat().st_size >> 20} MiB")


if __name__ == "__main__":
    main()
