"""DVC stage `sft`: LoRA/QLoRA SFT of models/base on data/prepared -> models/sft (checkpoints, each with its
adapter_run.json; run.json, the resume state).

Several GPUs: `python -m torch.distributed.run --nproc_per_node N -m survlm.stages.sft`, or `accelerate launch
--multi_gpu` (DDP; `sft.per_device_train_batch_size` is per GPU)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..artifacts import ArtifactError, write_json
from ..config import SFTParams, value_weight_problem
from .common import fail, failing_on, path_arg, run_stage


@dataclass(frozen=True)
class Paths:
    prepared: Path = path_arg("prepare's output dir")
    base: Path = path_arg("the base model dir")
    out: Path = path_arg("checkpoints and run.json (kept between runs to resume)")
    live: Path = path_arg("dvclive dir")
    metrics: Path = path_arg("the summary JSON")


def main(cfg: SFTParams, paths: Paths) -> None:
    if (problem := value_weight_problem(cfg.value_weight)) is not None:
        fail(f"params.yaml: sft.value_weight: {problem}")
    from ..modeling.loading import is_main_process
    from ..modeling.sft import train_sft

    with failing_on(ArtifactError):   # a prompt.json of an older prepare, or one whose schema changed since
        summary = train_sft(cfg, paths.prepared, paths.base, paths.out, paths.live)
    if not is_main_process():  # DDP: rank 0 writes
        return
    write_json(paths.metrics, summary)
    print(f"sft: {summary['steps']} steps on {summary['train_examples']} notes ({summary['quantization']}, "
          f"{summary['device']}) in {summary['train_seconds']} s; checkpoints: {', '.join(summary['checkpoints'])}")


if __name__ == "__main__":
    run_stage(main, "sft", Paths)
