"""DVC stage `sft`: LoRA/QLoRA SFT of models/base on data/prepared -> models/sft (checkpoints, each with its
adapter_run.json; run.json, the resume state).

Several GPUs: `python -m torch.distributed.run --nproc_per_node N -m survlm.stages.sft`, or `accelerate launch
--multi_gpu` (DDP; `sft.batch_size` is per GPU)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..artifacts import ArtifactError, write_json
from .common import failing_on, stage_params


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prepared", required=True, help="prepare's output dir")
    ap.add_argument("--base", required=True, help="the base model dir")
    ap.add_argument("--out", required=True, help="checkpoints and run.json (kept between runs to resume)")
    ap.add_argument("--live", required=True, help="dvclive dir")
    ap.add_argument("--metrics", required=True, help="the summary JSON")
    args = ap.parse_args(argv)
    from ..modeling.loading import is_main_process
    from ..modeling.sft import train_sft

    with failing_on(ArtifactError):   # a prompt.json of an older prepare, or one whose schema changed since
        summary = train_sft(stage_params("sft"), Path(args.prepared), Path(args.base), Path(args.out), Path(args.live))
    if not is_main_process():  # DDP: rank 0 writes
        return
    write_json(args.metrics, summary)
    print(f"sft: {summary['steps']} steps on {summary['train_examples']} notes ({summary['quantization']}, "
          f"{summary['device']}) in {summary['train_seconds']} s; checkpoints: {', '.join(summary['checkpoints'])}")


if __name__ == "__main__":
    main()
