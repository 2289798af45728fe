"""How long sft takes to turn its training notes into token rows, batched against one note per tokenizer call, and
the rows into the trainer's dataset, its own way against TRL's dataset preparation.

sft tokenizes each note twice (with its answer, and the prompt alone, as TRL does) and places the loss mask and the
value weights from the tokens' character offsets. The tokenizer spreads a batch over the CPU cores. It then builds
the trainer's columns (ids, labels, value weights) as Arrow arrays and tells TRL to skip its preparation, which
would otherwise map over every token three times. Run after `dvc repro prepare` with the params whose sft section
is to be measured:

  python benchmarks/sft_tokenization.py --out benchmarks/results/sft_tokenization_cpu.json

The result holds each way's seconds for `sft.max_train_notes` notes, whether the rows are the same, and whether
both trainers' first batches are the same.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from hf_kv_cache import cpu_description  # noqa: E402

from survlm.artifacts import ArtifactError, load_prompt, write_json  # noqa: E402
from survlm.config import load_config  # noqa: E402


def trainer_datasets(params, base: Path, tokenizer, rows: list[dict], batches: int = 8) -> dict:
    """Seconds from token rows to a trainer, with sft's prebuilt labels and with TRL's preparation of the same
    rows (the dataset_num_proc that sft gave it on a GPU machine, 8, where the cores allow), and whether the first
    `batches` training batches are the same."""
    import dataclasses
    import os
    import tempfile

    from datasets import Dataset
    from trl import SFTTrainer

    from survlm.modeling import sft
    from survlm.modeling.loading import load_base

    model = load_base(base, "none", "cpu")
    params = dataclasses.replace(params, quantization="none")
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ours = sft.build_trainer(model, tokenizer, params, rows, [], Path(tmp), "cpu")
        out["prebuilt_labels_s"] = round(time.perf_counter() - t0, 2)
        config = dataclasses.replace(sft.sft_config(params, Path(tmp), "cpu", False), dataset_kwargs=None,
                                     dataset_num_proc=min(8, os.cpu_count() or 1))
        t0 = time.perf_counter()
        theirs = SFTTrainer(model=load_base(base, "none", "cpu"), args=config, train_dataset=Dataset.from_list(rows),
                            processing_class=tokenizer, peft_config=sft.lora_config(params.lora))
        out["trl_preparation_s"] = round(time.perf_counter() - t0, 2)
        out["trl_dataset_num_proc"] = config.dataset_num_proc
        pairs = zip(ours.get_train_dataloader(), theirs.get_train_dataloader())
        # TRL's plain trainer drops the value weights (not a column it knows): the rest must agree
        out["same_batches"] = all(
            a.keys() - {"value_weights"} == b.keys() and all(a[k].tolist() == b[k].tolist() for k in b)
            for _, (a, b) in zip(range(batches), pairs))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--base", default="models/base")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from survlm.modeling import sft
    from survlm.modeling.loading import load_tokenizer

    params = load_config("sft")
    try:
        schema, system = load_prompt(Path(args.prepared))
    except ArtifactError as exc:
        sys.exit(str(exc))
    rows = sft.training_rows(Path(args.prepared), params.max_train_notes)
    examples = [sft.prompt_completion(r, system) for r in rows]
    spans = [r.get("loss_mask") or [] for r in rows]
    names = [f.name for f in schema]
    tokenizer = load_tokenizer(Path(args.base))
    runs, outputs = [], []
    for batch in (sft.TOKENIZE_BATCH, 1):
        sft.TOKENIZE_BATCH = batch
        t0 = time.perf_counter()
        outputs.append(sft.tokenized_examples(tokenizer, examples, spans, names, params.value_weight))
        runs.append({"notes_per_call": batch, "seconds": round(time.perf_counter() - t0, 2)})
    result = {"device": cpu_description(), "notes": len(rows), "value_weight": params.value_weight,
              "tokens": sum(len(r["input_ids"]) for r in outputs[0]), "runs": runs,
              "same_rows": outputs[0] == outputs[1],
              "speedup": round(runs[1]["seconds"] / runs[0]["seconds"], 2),
              "trainer_dataset": trainer_datasets(params, Path(args.base), tokenizer, outputs[0])}
    write_json(Path(args.out), result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
