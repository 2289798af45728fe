"""Where a generating stage spends its time: py-spy's sampled stacks of `generate`, split into prefill and decode
and, within decode, into what each sample was doing.

Record a stage while it generates (py-spy is not a survlm dependency; `--native` shows the BLAS and attention
kernels under the Python frames), then bucket the samples:

  python -m survlm.stages.infer ... &
  py-spy record --pid $! --duration 100 --rate 20 --native --format raw -o stacks.txt
  python benchmarks/profile_stacks.py stacks.txt --out benchmarks/results/infer_profile_cpu.json

A sample counts once, in the first bucket its stack matches (the order below); samples outside `generate`
(loading, progress-bar threads) are counted apart.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

# (bucket, test on the stack's frame names); first match wins
DECODE_BUCKETS = (
    ("logits processors (grammar mask, chosen-token log-prob)", lambda s: "LogitsProcessorList.__call__" in s),
    ("attention (SDPA over the KV cache)", lambda s: "sdpa_attention_forward" in s),
    ("linear layers: GEMM", lambda s: "Linear.forward" in s and any("gemm" in f for f in s)),
    ("linear layers: per-row adapter routing (index, gather, scatter)",
     lambda s: "LoraLayer._mixed_batch_forward" in s),
    ("linear layers: other", lambda s: "Linear.forward" in s),
    ("rest of the decoder layers (norms, rotary, residuals)", lambda s: "LlamaModel.forward" in s),
    ("lm head and logits", lambda s: "LlamaForCausalLM.forward" in s),
    ("generate loop (sampling, stopping, cache bookkeeping)", lambda s: True),
)


def frames(stack: str) -> list[str]:
    """Frame names without their file and line: 'LlamaMLP.forward (modeling_llama.py:...)' -> 'LlamaMLP.forward'."""
    return [re.sub(r" \(.*", "", f) for f in stack.split(";")]


def bucket_stacks(lines) -> dict:
    total = prefill = outside = 0
    decode: Counter = Counter()
    for line in lines:
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        n = int(count)
        total += n
        names = frames(stack)
        if "GenerationMixin.generate" not in names:
            outside += n
        elif any("_prefill" in f for f in names):
            prefill += n
        else:
            decode[next(b for b, hit in DECODE_BUCKETS if hit(names))] += n
    steps = sum(decode.values())
    return {"samples": total, "outside_generate": outside, "prefill": prefill, "decode": steps,
            "decode_share": {b: round(decode[b] / steps, 3) for b, _ in DECODE_BUCKETS if decode[b]} if steps else {}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stacks", help="py-spy record --format raw output")
    ap.add_argument("--out", help="write the buckets here (JSON)")
    ap.add_argument("--note", default="", help="what was recorded (kept in the JSON as `what`)")
    args = ap.parse_args(argv)
    result = bucket_stacks(Path(args.stacks).read_text().splitlines())
    if args.note:
        result = {"what": args.note, **result}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
