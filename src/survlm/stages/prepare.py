"""DVC stage `prepare`: notes + gold labels + splits -> data/prepared/, metrics/prepare.json.

Source `support2` renders every SUPPORT2 patient as a long note (survlm.notes) and checks the
renderer's invariants on each one; source `path` validates a user's file. Nothing is written
unless everything succeeded.
"""
from __future__ import annotations

import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..data.support2 import CohortError, load_support2
from ..data.userfile import UserDataError, load_user_records
from ..cohort_metrics import cohort_metrics
from ..evidence import UNLOCATED_POLICIES, locate, target_text, value_only_item
from ..extraction import compact_json
from ..notes.cohort import render_all, rendering_jobs, token_counter
from ..notes.render import STYLES, RenderError
from ..schema import SchemaError, load_schema, system_prompt
from ..split import SPLITS, assign_splits, record_order
from ..artifacts import atomic_dir, prepared_record, write_json, write_jsonl, write_prompt
from ..config import PrepareParams
from ..predictions import HELDOUT_SPLIT
from .common import fail, path_arg, run_stage

OUTPUT_SPLITS = (*SPLITS, HELDOUT_SPLIT)

def _styles_for(params: PrepareParams) -> tuple[list[str], list[str]]:
    styles = list(params.styles)
    heldout = list(params.heldout_styles or [])
    unknown = [s for s in styles + heldout if s not in STYLES]
    if unknown:
        fail(f"params.yaml: prepare.styles: unknown style(s) {', '.join(unknown)}; known: {', '.join(STYLES)}")
    if [s for s in heldout if s not in styles]:
        fail("params.yaml: prepare.heldout_styles: each held-out style must also be listed in prepare.styles")
    if not [s for s in styles if s not in heldout]:
        fail("params.yaml: prepare.heldout_styles: at least one style must remain for training")
    return styles, heldout


def _support2_records(params: PrepareParams, schema_path: str, base_dir: str, workers: int) -> tuple[list[dict], dict]:
    try:
        rows = load_support2()
    except CohortError as exc:
        fail(str(exc))
    seed = params.seed
    max_patients = params.max_patients
    if max_patients:
        rows = sorted(random.Random(f"{seed}:subset").sample(rows, min(max_patients, len(rows))),
                      key=lambda r: r["id"])
    split_of = assign_splits([r["id"] for r in rows], [r["event"] for r in rows], params.split, seed)
    styles, heldout = _styles_for(params)
    renderings = params.renderings_per_patient or 1
    if renderings < 1:
        fail("params.yaml: prepare.renderings_per_patient: must be 1 or more")
    jobs = rendering_jobs(rows, split_of, styles, heldout, renderings, seed)
    kwargs = {"note_tokens": params.note_tokens, "alt_unit_rate": params.alt_unit_rate,
              "derived_rate": params.derived_rate}
    problems: list[str] = []
    records = []
    for (r, style, _, k), (out, violations) in zip(jobs, render_all(jobs, schema_path, base_dir, kwargs, workers)):
        rid = r["id"]
        note_id = rid if k == 0 else f"{rid}/r{k}"
        problems += [f"support2:{note_id}: {v}" for v in violations]
        split = split_of[rid]
        if split == "test" and style in heldout:
            split = HELDOUT_SPLIT
        records.append({"id": note_id, "patient": rid, "rendering": k, "split": split, "style": style,
                        "time": r["time"], "event": r["event"], "text": out["text"], "labels": out["labels"],
                        "target": out["target"], "n_tokens": out["n_tokens"], "meta": out["meta"],
                        "traps": out["traps"]})
    if problems:
        shown = "\n".join(problems[:20])
        fail(f"renderer invariants violated in {len(problems)} place(s); nothing written:\n{shown}")
    return records, {"styles": styles, "heldout_styles": heldout}


def user_target(schema, labels: dict, text: str, policy: str) -> tuple[dict, object]:
    """One user note: where each label is written, and the answer target built from it.

    Returns (evidence summary for metrics and render_meta, TargetText or None when the record is dropped).
    Unlabelled fields, labels the note contradicts, and (by `policy`) labels without a located span are
    placeholders in the target that no loss covers."""
    ev = locate(schema, text, labels)
    items, masked, drop = {}, {}, False
    for f in schema:
        loc = ev.fields.get(f.name)
        if loc is None or loc.status == "contradicted":
            items[f.name], masked[f.name] = None, "value"
        elif loc.status in ("located", "null"):
            items[f.name] = loc.item
        elif policy == "value_only":
            items[f.name], masked[f.name] = value_only_item(f, labels[f.name]), "evidence"
        elif policy == "drop_field":
            items[f.name], masked[f.name] = None, "value"
        else:
            drop = True
    summary = {"status": {n: loc.status for n, loc in ev.fields.items()},
               "located": {n: list(loc.span) for n, loc in ev.fields.items() if loc.span},
               "conflict": {n: list(loc.conflict) for n, loc in ev.fields.items() if loc.conflict},
               "untrained": sorted(masked), **ev.meta()}
    return summary, None if drop else target_text(schema, items, masked)


def _path_records(params: PrepareParams, schema, base_dir: str) -> tuple[list[dict], dict]:
    path = params.path
    if not path:
        fail("params.yaml: prepare.path: required when prepare.source is 'path'")
    policy = params.unlocated
    if policy not in UNLOCATED_POLICIES:
        fail(f"params.yaml: prepare.unlocated: must be one of {', '.join(UNLOCATED_POLICIES)} (got {policy!r})")
    try:
        users = load_user_records(path, schema)
    except UserDataError as exc:
        fail(str(exc))
    count = token_counter(base_dir)
    seed = params.seed
    split_of = assign_splits([u["id"] for u in users], [u["event"] for u in users], params.split, seed)
    records = []
    for u in users:
        labels = {n: u["labels"][n] for n in u["labelled"]}  # an unlabelled field is unknown, not null
        evidence, target = user_target(schema, labels, u["text"], policy)
        records.append({"id": u["id"], "patient": u["id"], "rendering": 0, "split": split_of[u["id"]],
                        "style": "user", "time": u["time"], "event": u["event"], "text": u["text"], "labels": labels,
                        "target": None,
                        "answer": None if target is None else target.text,
                        "loss_mask": [] if target is None else target.masked,
                        "n_tokens": count(u["text"]), "meta": {"labelled": u["labelled"], **evidence}, "traps": {}})
    contradicted = [(r, n) for r in records for n, st in r["meta"]["status"].items() if st == "contradicted"]
    for r, name in contradicted[:20]:  # offsets, never the note's words
        start, end = r["meta"]["conflict"][name]
        print(f"prepare: {path}: record {r['id']}: {name}: the note contradicts the label (characters {start}-{end}); "
              "not trained", file=sys.stderr)
    if len(contradicted) > 20:
        print(f"prepare: {len(contradicted) - 20} more contradicted labels (metrics/prepare.json lists all)",
              file=sys.stderr)
    return records, {"styles": ["user"], "heldout_styles": [], "unlocated": policy}


def _answer(r: dict) -> str | None:
    """The gold answer: the rendered note's target, or the one built from a user's located labels."""
    if r.get("answer") is not None:
        return r["answer"]
    return None if r["target"] is None else compact_json(r["target"])


def _record(r: dict, split: str) -> dict:
    """The prepared record of a note (artifacts.prepared_record)."""
    extra = {"loss_mask": r["loss_mask"], "untrained": r["meta"]["untrained"]} if r.get("loss_mask") else {}
    return prepared_record(id=r["id"], split=split, style=r["style"], text=r["text"], labels=r["labels"],
                           target=_answer(r), time=r["time"], event=r["event"], n_tokens=r["n_tokens"], **extra)


def prepare(params: PrepareParams, base_dir: Path, out_dir: Path, metrics_path: Path) -> dict:
    schema_path = params.schema
    try:
        schema = load_schema(schema_path)
    except SchemaError as exc:
        fail(str(exc))
    source = params.source
    if source == "support2":
        try:
            records, info = _support2_records(params, schema_path, base_dir, params.workers)
        except RenderError as exc:
            fail(f"{schema_path}: {exc}")
    elif source == "path":
        records, info = _path_records(params, schema, base_dir)
    else:
        fail(f"params.yaml: prepare.source: must be 'support2' or 'path' (got {source!r})")
    try:
        prompt = system_prompt(schema, params.prompt)
    except SchemaError as exc:
        fail(f"params.yaml: prepare.prompt: {exc}")
    primary = [r for r in records if r["rendering"] == 0]
    metrics = cohort_metrics(primary, schema, params, info, OUTPUT_SPLITS)
    metrics["with_target"] = sum(_answer(r) is not None for r in primary)
    extra = [r for r in records if r["rendering"] > 0]
    metrics["train_renderings"] = {"notes": len(extra),
                                   "styles": dict(sorted(Counter(r["style"] for r in extra).items())),
                                   "over_budget": sum(r["n_tokens"] > params.note_tokens for r in extra)}
    rank = {i: k for k, i in enumerate(record_order([r["id"] for r in primary], params.seed))}
    ordered = sorted(records, key=lambda r: (rank[r["patient"]], r["rendering"]))  # any head: a random sample

    with atomic_dir(out_dir) as tmp:
        for split in OUTPUT_SPLITS:
            write_jsonl(tmp / f"{split}.jsonl", (_record(r, split) for r in ordered
                                                 if r["split"] == split and r["rendering"] == 0))
        # training-only renderings of the train patients, kept apart so that train.jsonl stays one row per
        # patient (the survival fit reads it); sft trains on both
        write_jsonl(tmp / "train_renderings.jsonl", ({**_record(r, "train"), "patient": r["patient"]}
                                                     for r in ordered if r["rendering"] > 0))
        write_jsonl(tmp / "render_meta.jsonl", ({"id": r["id"], **r["meta"]} for r in records))
        write_prompt(tmp, prompt, schema, schema_path)
    write_json(metrics_path, metrics)
    return metrics


@dataclass(frozen=True)
class Paths:
    base: Path = path_arg("base model dir (its tokenizer measures note length)")
    out: Path = path_arg("the prepared records dir")
    metrics: Path = path_arg("the summary JSON")


def main(cfg: PrepareParams, paths: Paths) -> None:
    m = prepare(cfg, paths.base, paths.out, paths.metrics)
    print(f"prepared {m['patients']} notes: " + ", ".join(f"{k}={v}" for k, v in m["splits"].items())
          + f"; tokens mean {m['note_tokens']['mean']}, max {m['note_tokens']['max']}")
    if "evidence" in m:
        e, t = m["evidence"], m["evidence"]["totals"]
        print(f"labels: {t['located']} located in their notes, {t['null']} null, {t['ambiguous']} ambiguous and "
              f"{t['not_found']} not found ({e['unlocated']}), {t['contradicted']} contradicted by the note (not "
              f"trained); {e['records_dropped']} records without a target")


if __name__ == "__main__":
    run_stage(main, "prepare", Paths)
