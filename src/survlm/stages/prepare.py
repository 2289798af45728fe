"""DVC stage `prepare`: notes + gold labels + splits -> data/prepared/, metrics/prepare.json.

Source `support2` renders every SUPPORT2 patient as a long note (survlm.notes) and checks the
renderer's invariants on each one; source `path` validates a user's file. Nothing is written
unless everything succeeded.
"""
from __future__ import annotations

import random
import statistics
import sys
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..data.support2 import CohortError, load_support2
from ..data.userfile import UserDataError, load_user_records
from ..evidence import STATUSES, UNLOCATED_POLICIES, locate, target_text, value_only_item
from ..extraction import compact_json
from ..notes.checks import check_note, trap_stats
from ..notes.render import STYLES, RenderError, render_to_budget
from ..schema import SchemaError, load_schema, system_prompt
from ..split import SPLITS, assign_splits, record_order
from ..artifacts import atomic_dir, prepared_record, write_json, write_jsonl, write_prompt
from ..config import PrepareParams
from ..predictions import HELDOUT_SPLIT
from .common import fail, path_arg, run_stage

OUTPUT_SPLITS = (*SPLITS, HELDOUT_SPLIT)

_worker: dict = {}


def _token_counter(base_dir: str):
    from tokenizers import Tokenizer  # the fast tokenizer alone: no model, no torch

    tok = Tokenizer.from_file(str(Path(base_dir) / "tokenizer.json"))
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


def _init_worker(schema_path: str, base_dir: str, render_kwargs: dict) -> None:
    _worker["schema"] = load_schema(schema_path)
    _worker["count"] = _token_counter(base_dir)
    _worker["kwargs"] = render_kwargs


def _render_one(job: tuple[dict, str, int]) -> tuple[str, dict, list[str]]:
    row, style, seed = job
    schema, kw = _worker["schema"], _worker["kwargs"]
    note, n_tokens = render_to_budget(row, schema, style, seed, row["id"], kw["note_tokens"], _worker["count"],
                                      alt_unit_rate=kw["alt_unit_rate"], derived_rate=kw["derived_rate"])
    violations = check_note(note, schema, row)
    out = {"text": note.text, "labels": note.labels, "target": note.target, "meta": note.metadata(),
           "n_tokens": n_tokens, "traps": trap_stats(note, schema)}
    return row["id"], out, violations


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
    train_styles = [s for s in styles if s not in heldout]
    renderings = params.renderings_per_patient or 1
    if renderings < 1:
        fail("params.yaml: prepare.renderings_per_patient: must be 1 or more")
    jobs = []       # (row, style, render seed, rendering index)
    for r in rows:
        pool = styles if split_of[r["id"]] == "test" else train_styles
        first = random.Random(f"{seed}:style:{r['id']}").choice(pool)
        jobs.append((r, first, seed, 0))
        if split_of[r["id"]] == "train" and renderings > 1:
            # further renderings of a training patient: the other training styles first, each with its own
            # render seed (other days charted, other distractors, other order); the labels stay the patient's
            others = [st for st in train_styles if st != first]
            random.Random(f"{seed}:renderings:{r['id']}").shuffle(others)
            cycle = others + [first]
            jobs += [(r, cycle[(k - 1) % len(cycle)], seed + k, k) for k in range(1, renderings)]
    kwargs = {"note_tokens": params.note_tokens, "alt_unit_rate": params.alt_unit_rate,
              "derived_rate": params.derived_rate}
    problems: list[str] = []
    records = []
    with ProcessPoolExecutor(max_workers=max(1, workers), initializer=_init_worker,
                             initargs=(schema_path, base_dir, kwargs)) as pool_:
        results = pool_.map(_render_one, [job[:3] for job in jobs], chunksize=64)
        for (r, style, _, k), (rid, out, violations) in zip(jobs, results):
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
    count = _token_counter(base_dir)
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


def _evidence_metrics(records: list[dict], schema, policy: str) -> dict:
    """Per field: how many labels were located, null, ambiguous, not found, contradicted."""
    by_field = {f.name: Counter(r["meta"]["status"][f.name] for r in records if f.name in r["meta"]["status"])
                for f in schema}
    return {"unlocated": policy,
            "by_field": {n: {s: c.get(s, 0) for s in STATUSES} for n, c in by_field.items() if c},
            "totals": {s: sum(c.get(s, 0) for c in by_field.values()) for s in STATUSES},
            "records_dropped": sum(r["answer"] is None for r in records),
            "contradicted": [{"id": r["id"], "field": n} for r in records
                             for n, st in r["meta"]["status"].items() if st == "contradicted"]}


def _metrics(records: list[dict], schema, params: PrepareParams, info: dict) -> dict:
    by_split = Counter(r["split"] for r in records)
    tokens = sorted(r["n_tokens"] for r in records)
    styles = defaultdict(Counter)
    for r in records:
        styles[r["split"]][r["style"]] += 1
    traps = [t for r in records for t in r["traps"].values()]
    out_of_range = Counter(f for r in records for f in r["meta"].get("source_out_of_range", []))

    def pct(q: float) -> int:
        return tokens[min(len(tokens) - 1, int(q * len(tokens)))]

    return {
        "source": params.source,
        "schema": {"name": schema.name, "version": schema.version, "digest": schema.digest},
        "patients": len(records),
        "splits": {s: by_split.get(s, 0) for s in OUTPUT_SPLITS},
        "event_rate": {s: round(statistics.fmean([r["event"] for r in records if r["split"] == s]), 4)
                       for s in OUTPUT_SPLITS if by_split.get(s)},
        "styles": {s: dict(sorted(c.items())) for s, c in sorted(styles.items())},
        "heldout_styles": info["heldout_styles"],
        "note_tokens": {"budget": params.note_tokens, "mean": round(statistics.fmean(tokens), 1),
                        "p50": pct(0.5), "p95": pct(0.95), "max": tokens[-1],
                        "over_budget": sum(t > params.note_tokens for t in tokens)},
        # over the notes that label the field; an unlabelled field is unknown, not null
        "null_rate": {f.name: _rate(sum(r["labels"][f.name] is None for r in records if f.name in r["labels"]),
                                    sum(f.name in r["labels"] for r in records)) for f in schema},
        "labelled_rate": {f.name: round(sum(f.name in r["labels"] for r in records) / len(records), 4)
                          for f in schema},
        "first_mention_wrong_rate": round(statistics.fmean([t["first_wrong"] for t in traps]), 4) if traps else None,
        "last_mention_wrong_rate": round(statistics.fmean([t["last_wrong"] for t in traps]), 4) if traps else None,
        "source_out_of_range": dict(sorted(out_of_range.items())),
        "with_target": sum(_answer(r) is not None for r in records),
        **({"evidence": _evidence_metrics(records, schema, info["unlocated"])} if "unlocated" in info else {}),
    }


def _rate(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


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
    metrics = _metrics(primary, schema, params, info)
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
