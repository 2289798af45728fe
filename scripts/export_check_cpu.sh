#!/usr/bin/env bash
# The faithful-merge proof on CPU for a *QLoRA* adapter of the embedded model (the CPU defaults train plain
# LoRA, whose merge is trivially exact): a short NF4 SFT run with the pipeline's sft code, then
# `survlm export` on validation notes -> metrics/export.json. Needs `dvc repro prepare` first. ~10 min.
#   bash scripts/export_check_cpu.sh [NOTES]
set -euo pipefail
cd "$(dirname "$0")/.."
NOTES=${1:-4}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} python - <<'PY'
from dataclasses import replace
from pathlib import Path

from survlm.config import load_config
from survlm.modeling.sft import train_sft

params = replace(load_config("sft"), quantization="nf4", max_train_notes=8, per_device_train_batch_size=1,
                 gradient_accumulation_steps=1, max_steps=8, eval_notes=0, save_steps=8, eval_steps=8)
summary = train_sft(params, Path("data/prepared"), Path("models/base"), Path("models/sft_qlora_cpu"), None)
print(f"QLoRA adapter: {summary['steps']} steps on {summary['train_examples']} notes ({summary['quantization']})")
PY
python -m survlm.cli export --adapter models/sft_qlora_cpu/checkpoint-8 --quantization nf4 --notes "$NOTES" \
    --out models/merged_qlora_cpu --report metrics/export.json
