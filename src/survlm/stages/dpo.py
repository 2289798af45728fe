"""DVC stage `dpo`: DPO of the selected SFT adapter on data/pairs (reference = frozen copy of the same adapter),
-> models/dpo; then SFT and DPO side by side on validation notes in one generation pass -> metrics/dpo.json.

Several GPUs: `python -m torch.distributed.run --nproc_per_node N -m survlm.stages.dpo` (DDP; `dpo.batch_size` is
per GPU); rank 0 saves the adapter and runs the report."""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from .common import atomic_dir, fail, first_records, load_params, load_prompt, read_jsonl, write_json

REPORT_KEYS = ("field_accuracy", "fabrication_rate", "last_value_rate", "first_value_rate", "json_valid_rate")


def side_by_side(sft: dict, dpo: dict) -> dict:
    out = {"sft": {k: sft[k] for k in REPORT_KEYS + ("errors", "per_field")},
           "dpo": {k: dpo[k] for k in REPORT_KEYS + ("errors", "per_field")}}
    out["delta"] = {k: (None if sft[k] is None or dpo[k] is None else round(dpo[k] - sft[k], 4)) for k in REPORT_KEYS}
    out["delta"]["errors"] = {t: dpo["errors"][t] - sft["errors"][t] for t in sft["errors"]}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--pairs", default="data/pairs")
    ap.add_argument("--base", default="models/base")
    ap.add_argument("--sft", default="models/sft_best")
    ap.add_argument("--out", default="models/dpo")
    ap.add_argument("--live", default="dvclive/dpo")
    ap.add_argument("--metrics", default="metrics/dpo.json")
    args = ap.parse_args(argv)
    params = load_params("dpo")
    sft, prepared = Path(args.sft), Path(args.prepared)
    if not (sft / "adapter_config.json").is_file():
        fail(f"{sft}: no SFT adapter to start DPO from")
    quantization = json.loads((sft / "selected.json").read_text())["quantization"]
    from ..modeling.dpo import train_dpo
    from ..modeling.extractor import score_adapters
    from ..modeling.loading import is_main_process, leave_process_group

    train_pairs = list(read_jsonl(Path(args.pairs) / "train.jsonl"))
    eval_pairs = list(read_jsonl(Path(args.pairs) / "eval.jsonl"))
    if not is_main_process():  # DDP: the other ranks train alongside rank 0 and write nothing
        with tempfile.TemporaryDirectory() as scratch:
            train_dpo(params, train_pairs, eval_pairs, Path(args.base), sft, quantization, Path(scratch), None)
        return
    with atomic_dir(args.out) as tmp:
        summary = train_dpo(params, train_pairs, eval_pairs, Path(args.base), sft, quantization, tmp,
                            Path(args.live))
        (tmp / "dpo_run.json").write_text(json.dumps({**summary, "sft_adapter": str(sft)}, indent=2) + "\n")
    print(f"dpo: {summary['steps']} steps on {summary['train_pairs']} pairs in {summary['train_seconds']} s; "
          f"ref adapter max |diff| from SFT {summary['ref_adapter_max_abs_diff_from_sft']}, "
          f"policy moved {summary['policy_max_abs_change']:.3g}; gold answers' log-prob changed by "
          f"{summary['gold_logp_change']} nats ({summary['gold_logp_change_on']})")
    report = {"train": summary}
    leave_process_group()  # the report's generation engine must not see the DDP job's ranks
    if int(params.get("val_notes") or 0) > 0:
        schema, system = load_prompt(prepared)
        rows = first_records(prepared / "val.jsonl", params["val_notes"])
        with tempfile.TemporaryDirectory() as work:
            m = score_adapters(Path(args.base), {"sft": sft, "dpo": Path(args.out)}, rows, schema, system, prepared,
                               params.get("report", {}), Path(work))
        report["validation"] = {"notes": len(rows), **side_by_side(m["sft"], m["dpo"])}
        print(f"dpo: validation field accuracy SFT {m['sft']['field_accuracy']} -> DPO {m['dpo']['field_accuracy']}")
    write_json(args.metrics, report)


if __name__ == "__main__":
    main()
