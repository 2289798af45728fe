"""DVC stage `make_pairs`: the selected SFT adapter answers the pairs split (greedy + sampled), every answer is
scored against gold, and wrong ones become rejected answers next to the gold one; synthetic traps from the
render metadata fill in the failure modes the model did not show. -> data/pairs/{train,eval}.jsonl

The answers are an extraction run like infer's (data/pair_answers, kept between runs): an interrupted run resumes
with the notes it has not answered."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import random
from pathlib import Path

from ..artifacts import (ArtifactError, atomic_dir, first_records, has_target, load_prompt, note_of, read_jsonl,
                         render_meta, write_json, write_jsonl)
from ..config import MakePairsParams
from ..modeling.backends.openai import OpenAIBackendError
from ..pairs import balance_pairs, build_pairs, fill_untrained, pair_is_valid, summarize
from ..phases import Phases
from .common import fail, failing_on, path_arg, run_stage


def sample_completions(base: Path, adapter: Path, rows: list[dict], schema, system: str, params: MakePairsParams,
                       answers: Path, phases: Phases) -> tuple[list[list[str]], dict]:
    """Greedy plus `samples` sampled answers per note, in one extraction run (survlm.modeling.extractor): a note
    too long for the context is answered in chunks, merged; answers are kept in `answers` as each note finishes, so
    a killed run resumes there, and a note whose text changed is answered again. -> (answers per note, run_tasks'
    counters per task)."""
    from ..modeling.backends import Decoding, make_backend
    from ..modeling.extractor import Task, answer_texts, run_tasks

    args = {**params.decoding_args(), "temperature": params.temperature, "top_p": params.top_p}
    greedy = Decoding(strategy="greedy", **args)
    records = [{"id": r["id"], "note": note_of(r)} for r in rows]
    tasks = [Task("make_pairs/greedy", "sft", records, answers / "greedy.jsonl", greedy)]
    if params.samples > 0:
        tasks.append(Task("make_pairs/sampled", "sft", records, answers / "sampled.jsonl",
                          Decoding(strategy="sample", n=params.samples, **args)))
    with phases.time("engine_start"):
        backend = make_backend(params.backend, base, {"sft": adapter}, schema, params.engine)
    try:
        with phases.time("generation"):
            counts = run_tasks(backend, tasks, schema, system, greedy)
    finally:
        with phases.time("engine_close"):
            backend.close()
    found = [{row["id"]: answer_texts(row) for row in read_jsonl(task.out_path)} for task in tasks]
    return [[text for by_id in found for text in by_id[r["id"]]] for r in rows], counts


def _trained_labels(record: dict) -> dict:
    """A user's record judged on the labels its target trains (not unlabelled, unlocated or contradicted ones)."""
    untrained = set(record.get("untrained") or ())
    if not untrained:
        return record
    return {**record, "labels": {k: v for k, v in record["labels"].items() if k not in untrained}}


@dataclass(frozen=True)
class Paths:
    prepared: Path = path_arg("prepare's output dir")
    base: Path = path_arg("the base model dir")
    adapter: Path = path_arg("the selected SFT adapter")
    answers: Path = path_arg("the adapter's answers (kept between runs to resume)")
    out: Path = path_arg("where train.jsonl and eval.jsonl go")
    metrics: Path = path_arg("the summary JSON")


def main(cfg: MakePairsParams, paths: Paths) -> None:
    from ..modeling import extractor  # noqa: F401  the generation stack's imports, here so that startup holds them

    phases = Phases()
    prepared, adapter = paths.prepared, paths.adapter
    if not (adapter / "adapter_config.json").is_file():
        fail(f"{adapter}: no adapter (select_ckpt chose the zero-shot base); preference pairs need an SFT adapter")
    with failing_on(ArtifactError):
        schema, system = load_prompt(prepared)
    rows = first_records(prepared / "pairs.jsonl", cfg.notes)
    rows = [r for r in rows if has_target(r)]  # records without a gold answer cannot give a pair
    if not rows:
        fail(f"{prepared / 'pairs.jsonl'}: no record with a gold answer to build preference pairs from")
    meta = render_meta(prepared, {r["id"] for r in rows})
    completions, generation = sample_completions(paths.base, adapter, rows, schema, system, cfg, paths.answers,
                                                 phases)
    rates = dataclasses.asdict(cfg.synthetic)
    pairs, fully_correct, n_completions, unfilled = [], 0, 0, 0
    for r, texts in zip(rows, completions):
        r = _trained_labels(r)
        got, counters = build_pairs(schema, r, system, meta.get(r["id"]), texts, rates, cfg.seed,
                                    cfg.max_model_rejections, cfg.single_field)
        if r.get("untrained"):  # placeholders come from the model's answer, or the pair is dropped (counted)
            filled = [fill_untrained(p, r["untrained"], p["rejected"][0]["content"] if p["source"] == "model"
                                     else texts[0]) for p in got]
            unfilled += sum(q is None for q in filled)
            got = [q for q in filled if q is not None]
        assert all(pair_is_valid(schema, p, r["labels"], note_of(r)) for p in got)
        pairs.extend(got)
        fully_correct += counters["fully_correct"]
        n_completions += counters["completions"]
    pairs, balance = balance_pairs(pairs, cfg.max_type_ratio, cfg.max_direction_ratio, cfg.seed)
    # a seeded order, so that dpo.max_pairs takes a random sample and not the first notes
    random.Random(cfg.seed).shuffle(pairs)
    # eval pairs: whole notes held out, so no prompt is in both files
    ids = sorted({p["id"] for p in pairs})
    random.Random(cfg.seed).shuffle(ids)
    n_eval = max(1, round(len(ids) * cfg.eval_fraction)) if len(ids) > 1 else 0
    eval_ids = set(ids[:n_eval])
    with atomic_dir(paths.out) as tmp:
        write_jsonl(tmp / "train.jsonl", (p for p in pairs if p["id"] not in eval_ids))
        write_jsonl(tmp / "eval.jsonl", (p for p in pairs if p["id"] in eval_ids))
    summary = summarize(pairs)
    summary.update({"notes": len(rows), "completions": n_completions, "fully_correct_completions": fully_correct,
                    "dropped_unfilled_placeholders": unfilled,
                    "train_pairs": sum(p["id"] not in eval_ids for p in pairs),
                    "eval_pairs": sum(p["id"] in eval_ids for p in pairs), "balance": balance,
                    "single_field": cfg.single_field, "generation": generation,
                    "by_source_and_type": {src: summarize([p for p in pairs if p["source"] == src])["by_error_type"]
                                           for src in ("model", "synthetic")},
                    "phase_s": phases.as_dict()})
    write_json(paths.metrics, summary)
    print(f"make_pairs: {summary['pairs']} pairs from {len(rows)} notes ({summary['model_made']} model-made, "
          f"{summary['synthetic']} synthetic, {balance['dropped']} dropped to balance); by type "
          f"{summary['by_primary_type']}; by direction {summary['by_direction']}")


if __name__ == "__main__":
    run_stage(main, "make_pairs", Paths, errors=(OpenAIBackendError,))
