"""DVC stage `dpo`: DPO of the selected SFT adapter on data/pairs (reference = frozen copy of the same adapter),
saving a checkpoint every `save_steps`; then every DPO checkpoint and the SFT adapter (as step 0) are scored on
validation notes in one generation pass, and models/dpo becomes the most accurate of them, ties to the earlier
step: the SFT adapter itself when no DPO checkpoint beats it. -> models/dpo, metrics/dpo.json.

Several GPUs: `python -m torch.distributed.run --nproc_per_node N -m survlm.stages.dpo` (DDP;
`dpo.per_device_train_batch_size` is per GPU); rank 0 saves the adapter and runs the selection."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import (ArtifactError, atomic_dir, check_adapter_runs, continued_run, copy_adapter, labelled_records,
                         load_prompt, read_jsonl, scratch_dir, write_adapter_run, write_json)
from ..config import DPOParams
from ..modeling.backends.openai import OpenAIBackendError
from ..phases import Phases
from ..selection import checkpoints, dpo_selection
from .common import fail, failing_on, path_arg, run_stage

REPORT_KEYS = ("field_accuracy", "fabrication_rate", "last_value_rate", "first_value_rate", "json_valid_rate")
CURVE_KEYS = ("field_accuracy", "fabrication_rate", "last_value_rate", "json_valid_rate")


def side_by_side(sft: dict, dpo: dict) -> dict:
    out = {"sft": {k: sft[k] for k in REPORT_KEYS + ("errors", "per_field")},
           "dpo": {k: dpo[k] for k in REPORT_KEYS + ("errors", "per_field")}}
    out["delta"] = {k: (None if sft[k] is None or dpo[k] is None else round(dpo[k] - sft[k], 4)) for k in REPORT_KEYS}
    out["delta"]["errors"] = {t: dpo["errors"][t] - sft["errors"][t] for t in sft["errors"]}
    return out


def candidates(train_dir: Path, final_step: int) -> list[tuple[int, Path]]:
    """Every saved DPO checkpoint, and the final policy where its step has no checkpoint of its own."""
    found = dict(checkpoints(train_dir))
    found.setdefault(final_step, train_dir)
    return sorted(found.items())


@dataclass(frozen=True)
class Paths:
    prepared: Path = path_arg("prepare's output dir (validation notes, prompt)")
    pairs: Path = path_arg("make_pairs' train.jsonl and eval.jsonl")
    base: Path = path_arg("the base model dir")
    sft: Path = path_arg("the selected SFT adapter to start from")
    out: Path = path_arg("where the shipped adapter goes")
    live: Path = path_arg("dvclive dir")
    metrics: Path = path_arg("the summary JSON")


def main(cfg: DPOParams, paths: Paths) -> None:
    sft, prepared = paths.sft, paths.prepared
    if (problem := cfg.value_weight_problem()) is not None:
        fail(f"params.yaml: dpo.value_weight: {problem}")
    if not (sft / "adapter_config.json").is_file():
        fail(f"{sft}: no SFT adapter to start DPO from")
    from ..modeling.dpo import train_dpo
    from ..modeling.extractor import score_adapters
    from ..modeling.loading import is_main_process, leave_process_group, model_digest

    phases = Phases()   # its startup: the interpreter and the imports above

    # the pairs' prompts are the prepared prompt's: the SFT adapter's must be it
    with failing_on(ArtifactError), phases.time("checks"):
        schema, system = load_prompt(prepared)
        sft_run = check_adapter_runs({"sft": sft}, paths.base, model_digest(paths.base), prepared, schema,
                                     system)["sft"]
    quantization = sft_run["quantization"]
    fields = [f.name for f in schema]

    train_pairs = list(read_jsonl(paths.pairs / "train.jsonl"))
    eval_pairs = list(read_jsonl(paths.pairs / "eval.jsonl"))
    if not is_main_process():  # DDP: the other ranks train alongside rank 0 and write nothing
        with tempfile.TemporaryDirectory() as scratch:
            train_dpo(cfg, train_pairs, eval_pairs, paths.base, sft, quantization, Path(scratch), None, fields)
        return
    out = paths.out
    out.parent.mkdir(parents=True, exist_ok=True)
    with scratch_dir(out.with_name(out.name + "-train")) as train_dir:   # a killed run's is removed next time
        with phases.time("train_dpo"):   # pairs' tokenization, loading, training, the log-prob report
            summary = train_dpo(cfg, train_pairs, eval_pairs, paths.base, sft, quantization, train_dir, paths.live,
                                fields)
        print(f"dpo: {summary['steps']} steps on {summary['train_pairs']} pairs in {summary['train_seconds']} s; "
              f"ref adapter max |diff| from SFT {summary['ref_adapter_max_abs_diff_from_sft']}, "
              f"policy moved {summary['policy_max_abs_change']:.3g}; gold answers' log-prob changed by "
              f"{summary['gold_logp_change']} nats ({summary['gold_logp_change_on']})")
        report = {"train": summary, "logp_change_by_pair_type": summary.pop("logp_change_by_pair_type")}
        leave_process_group()  # the selection's generation engine must not see the DDP job's ranks
        steps = candidates(train_dir, summary["steps"])
        for step, path in steps:
            write_adapter_run(path, continued_run(sft_run, "dpo", step))
        ship, selection = steps[-1][1], {"selected": "dpo", "selected_step": steps[-1][0], "guarded": False}
        if (cfg.val_notes or 0) > 0:
            rows = labelled_records(prepared / "val.jsonl", cfg.val_notes)
            names = {0: "sft", **{step: f"checkpoint-{step}" for step, _ in steps}}
            with tempfile.TemporaryDirectory() as work:
                m = score_adapters(paths.base, {"sft": sft, **{names[st]: p for st, p in steps}}, rows, schema,
                                   system, prepared, cfg.report, Path(work), phases)
            curve = [{"step": st, "checkpoint": names[st], **{k: m[names[st]][k] for k in CURVE_KEYS}}
                     for st in sorted(names)]
            selection = {**dpo_selection(curve), "guarded": True}
            ship = sft if selection["selected"] == "sft" else dict(steps)[selection["selected_step"]]
            best_dpo = names[selection["best_dpo_step"]]
            report["validation"] = {"notes": len(rows), "curve": curve, "dpo_step": selection["best_dpo_step"],
                                    **side_by_side(m["sft"], m[best_dpo])}
            for c in curve:
                print(f"dpo: validation field accuracy at step {c['step']} ({c['checkpoint']}): {c['field_accuracy']}")
            print(f"dpo: ships {selection['selected']} (step {selection['selected_step']}), field accuracy "
                  f"{selection['selected_field_accuracy']} vs SFT {selection['sft_field_accuracy']}")
        else:
            print("dpo: val_notes is 0, so no validation guard: the final DPO policy ships unchecked against SFT")
        with atomic_dir(out) as tmp:   # with its run record: the SFT adapter's own where that ships
            copy_adapter(ship, tmp)
    report.update(selection)
    report["phase_s"] = phases.as_dict()
    write_json(paths.metrics, report)


if __name__ == "__main__":
    run_stage(main, "dpo", Paths, errors=(OpenAIBackendError,))
