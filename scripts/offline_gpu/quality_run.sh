#!/usr/bin/env bash
# The seven DVC stages (plus base_model and a merged export) on a GPU machine that has no DVC, in dvc.yaml's
# order, with one params preset and optional dotted overrides (written to params.yaml by
# `python -m survlm.config apply`, which rejects an unknown key); results land in results/<date>-<gpu>/.
#   bash scripts/offline_gpu/quality_run.sh PRESET [section.key=value ...]
# e.g. bash scripts/offline_gpu/quality_run.sh params/gpu-smollm2-h200.yaml infer.test_notes=1472
# Needs the offline bundle installed (install_bundle.sh) and PYTHONPATH=$PWD/src:<bundle target>.
# START_AT=<stage> skips the stages before it (their outputs must be there already); EXPORT=0 skips the export;
# STOP_AFTER=<stage> ends the stages there; THROUGHPUT=1 then runs benchmarks/infer_throughput.py (128 test
# notes through each serving variant, 64 through HF; the selected SFT adapter) into $RESULTS/infer_throughput.json;
# GPUS=N trains sft and dpo with DDP over N GPUs (torchrun; batch sizes are per GPU).
# SERVE=1 starts one vLLM server (`survlm serve`, infer's engine block at SERVE_GPU_FRACTION of the GPU, at
# SERVE_URL) once models/base is there, and every generating stage loads its adapters into it (backend openai,
# openai_load_adapters) instead of starting an engine of its own; the server compiles while prepare and sft
# run, and timings.json's serve_wait is how long the first generating stage then still waited for it. Its KV
# cache has a stated size (SERVE_KV_CACHE_GIB; by default a fifth of the GPU's memory, 28 GiB on an H200 and 16
# on an 80 GB H100, beside sft's peak of 39 GiB on the SmolLM2 preset): sized from free memory, it came out
# negative when sft's training allocated while the server profiled, and the server stopped. A server that ends
# before it answers is reported with its log's end, and the generating stages then start engines of their own.
# Where DVC is installed, `python -m survlm.config apply PRESET && dvc repro` does the same and records
# dvc.lock.
set -euo pipefail
cd "$(dirname "$0")/../.."
PRESET=${1:?params preset}
shift
SERVE_URL=${SERVE_URL:-http://127.0.0.1:8000/v1}
OVERRIDES=("$@")   # without the server's: what the stages run with if the server ends before it answers
if [ "${SERVE:-0}" = 1 ]; then
    SERVE_KV_CACHE_GIB=${SERVE_KV_CACHE_GIB:-$(python -c "import torch; print(round(torch.cuda.get_device_properties(0)
        .total_memory / 5 / 2**30, 1) if torch.cuda.is_available() else 1)")}
    for stage in select_ckpt make_pairs dpo.report infer; do
        set -- "$@" "$stage.backend=openai" "$stage.engine.openai_load_adapters=true" \
            "$stage.engine.openai_constraint=vllm_grammar" "$stage.engine.openai_base_url=$SERVE_URL" \
            "$stage.engine.gpu_memory_utilization=${SERVE_GPU_FRACTION:-0.3}" \
            "$stage.engine.kv_cache_gib=$SERVE_KV_CACHE_GIB"
    done
fi
python -m survlm.config apply "$PRESET" "$@"
GPU=$(python -c "import torch; print(torch.cuda.get_device_name(0).split()[-1].lower() if torch.cuda.is_available() else 'cpu')")
RESULTS=${RESULTS:-results/$(date -u +%F)-$GPU}
mkdir -p "$RESULTS" metrics
STAGES=$(python -c "import yaml; print(' '.join(yaml.safe_load(open('dvc.yaml'))['stages']))")
collect() {  # after every stage, so a run cut short still leaves its metrics and curves so far
    cp params.yaml "$RESULTS/params.yaml"
    # only files this run wrote: the checkout's committed CPU metrics are not results of this run
    { find metrics dvclive -type f -newer "$RESULTS/.started" 2>/dev/null || true; } | while read -r f; do
        mkdir -p "$RESULTS/$(dirname "$f")" && cp "$f" "$RESULTS/$f"
    done
}
timed() {  # name, command...: run and append its wall seconds to timings.json
    local name=$1 t0
    shift
    echo "=== $name: $* ($(date -u +%T))"
    t0=$(date +%s)
    "$@"
    python - "$RESULTS/timings.json" "$name" $(( $(date +%s) - t0 )) <<'PY'
import json, pathlib, sys
path = pathlib.Path(sys.argv[1])
timings = json.loads(path.read_text()) if path.is_file() else {}
timings[sys.argv[2]] = int(sys.argv[3])
path.write_text(json.dumps(timings, indent=2) + "\n")
PY
    collect
}
GENERATING="select_ckpt make_pairs dpo infer"   # the stages that generate (through the server, with SERVE=1)
SERVER_PID=
start_server() {  # in the background: its engine starts while the stages before the first generating one run
    python -m survlm.cli serve --base models/base --stage infer > "$RESULTS/server.log" 2>&1 &
    SERVER_PID=$!
    trap 'kill $SERVER_PID 2>/dev/null || true' EXIT
}
wait_server() {  # until the server answers; if it ended first, the stages go on with their own engines
    until python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/models', timeout=2)" \
            "$SERVE_URL" 2>/dev/null; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            tail -n 20 "$RESULTS/server.log" >&2
            echo "quality_run.sh: the vLLM server ended before it answered (log: $RESULTS/server.log);" \
                "the generating stages start their own engines" >&2
            python -m survlm.config apply "$PRESET" "${OVERRIDES[@]}"
            SERVER_PID=
            return
        fi
        sleep 2
    done
}
[ -z "${START_AT:-}" ] && rm -f "$RESULTS/timings.json" && touch "$RESULTS/.started"
for stage in $STAGES; do
    if [ -n "${START_AT:-}" ]; then
        [ "$stage" = "$START_AT" ] && START_AT= || continue
    fi
    if [ "${SERVE:-0}" = 1 ] && [ "$stage" != base_model ] && [ -z "$SERVER_PID" ] && [ -z "${SERVER_READY:-}" ]; then
        start_server
    fi
    if [ -n "$SERVER_PID" ] && [ -z "${SERVER_READY:-}" ] && [[ " $GENERATING " == *" $stage "* ]]; then
        timed serve_wait wait_server
        SERVER_READY=1
    fi
    cmd=$(python -c "import sys, yaml; print(yaml.safe_load(open('dvc.yaml'))['stages'][sys.argv[1]]['cmd'])" "$stage")
    if [ "${GPUS:-1}" -gt 1 ] && { [ "$stage" = sft ] || [ "$stage" = dpo ]; }; then
        cmd=${cmd/python -m/python -m torch.distributed.run --nproc_per_node $GPUS -m}
    fi
    timed "$stage" $cmd
    [ "$stage" = "${STOP_AFTER:-}" ] && break
done
if [ -n "$SERVER_PID" ]; then  # its GPU memory back before the benchmark's and the export's own engines
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
fi
if [ "${THROUGHPUT:-0}" = 1 ]; then
    timed infer_throughput python benchmarks/infer_throughput.py --notes 128 --hf-notes 64 --adapter models/sft_best \
        --max-new-tokens 768 --out "$RESULTS/infer_throughput.json"
fi
EXPORT_ADAPTER=models/dpo  # the served adapter; the SFT one where the run stopped before dpo
[ -f models/dpo/adapter_config.json ] || EXPORT_ADAPTER=models/sft_best
[ "${EXPORT:-1}" = 1 ] && timed export python -m survlm.cli export --adapter $EXPORT_ADAPTER --notes 8 --out models/merged --report metrics/export.json
echo "=== done: $RESULTS"
