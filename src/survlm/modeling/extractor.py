"""Extraction runs: notes in, one parsed JSONL row per note out, for any backend and any adapter.

- Several tasks (adapter x note set) share one job queue, so vLLM serves different adapters in one batch.
- A note whose prompt would not leave `max_new_tokens` of room in the context is split into overlapping
  chunks (survlm.chunking) and the per-chunk answers are merged per field; such notes are counted. Nothing
  is ever silently truncated.
- Rows are appended as soon as a note's last chunk is answered; a rerun skips ids already in the output,
  provided the run's fingerprint (base, adapter files, decoding, prompt, schema) is unchanged. A different
  fingerprint starts the file over.
- Rows hold ids, raw answers, parsed fields, statuses, token counts and latency. Never the note text.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from ..chunking import merge_chunks, split_note
from ..extraction import FieldResult, answer_is_valid_json, parse_answer
from ..metrics import tolerance
from ..schema import Schema
from .backends import Backend, Decoding

CHUNK_MARGIN_TOKENS = 16   # chat-template tokens that the note-less prompt count can miss at the join


@dataclass
class Task:
    name: str                   # e.g. "dpo/test"
    adapter: str | None         # backend adapter name; None = base model
    records: list[dict]         # {"id", "note"}
    out_path: Path
    decoding: Decoding | None = None   # None: the run's default decoding


def result_to_json(r: FieldResult) -> dict:
    """Compact: absent keys mean None (and recovered=False). `is`, not `in`: 0.0 == False must survive."""
    d = asdict(r)
    return {k: v for k, v in d.items() if not (v is None or (k == "recovered" and v is False))}


def result_from_json(d: dict) -> FieldResult:
    return FieldResult(**d)


def row_results(row: dict) -> dict[str, FieldResult]:
    return {name: result_from_json(d) for name, d in row["fields"].items()}


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if f.is_file() and (f.name.startswith("adapter_") or f.name == "config.json"):
            h.update(f.name.encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def fingerprint(backend: Backend, adapter: str | None, decoding: Decoding, system_prompt: str, schema: Schema) -> str:
    parts = {"base": _file_digest(Path(backend.base_dir) / "config.json") if Path(backend.base_dir).exists()
             else backend.base_dir,
             "adapter": _file_digest(Path(backend.adapters[adapter])) if adapter else None,
             "decoding": asdict(decoding), "prompt": system_prompt, "schema": schema.names,
             "max_context": backend.max_context, "backend": backend.name}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".run.json")


def _done_ids(out: Path, fp: str, wanted: set[str]) -> set[str]:
    """Ids already answered by the same run; drops a torn last line left by a kill mid-write, and rows of
    records the task no longer has (fewer notes asked for, or another sample of them)."""
    meta = _meta_path(out)
    if not out.is_file() or not meta.is_file() or json.loads(meta.read_text()).get("fingerprint") != fp:
        out.unlink(missing_ok=True)
        return set()
    good, ids = [], set()
    with open(out, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:
                break
            if row["id"] in wanted:
                good.append(line if line.endswith("\n") else line + "\n")
                ids.add(row["id"])
    out.write_text("".join(good), encoding="utf-8")
    return ids


def plan_chunks(backend: Backend, system_prompt: str, note: str, decoding: Decoding, overlap: int) -> list[str]:
    """The note itself when it fits; else overlapping chunks that each fit with room for the answer."""
    bare = backend.count_tokens(backend.prompt_text([{"role": "system", "content": system_prompt},
                                                     {"role": "user", "content": ""}], decoding))
    budget = backend.max_context - decoding.max_new_tokens - bare - CHUNK_MARGIN_TOKENS
    if budget <= overlap:
        raise ValueError(f"context {backend.max_context} leaves no room for a note chunk: prompt {bare} tokens, "
                         f"answer {decoding.max_new_tokens}, overlap {overlap}")
    return [c.text for c in split_note(note, backend.count_tokens, budget, overlap)]


def run_tasks(backend: Backend, tasks: list[Task], schema: Schema, system_prompt: str, decoding: Decoding,
              batch_size: int = 32, chunk_overlap: int = 128, progress: bool = True) -> dict[str, dict]:
    """Run every task to completion (resuming where possible); returns per-task counters."""
    jobs: list[tuple[int, int, int, str]] = []          # (task, record, chunk index, chunk text)
    n_chunks: dict[tuple[int, int], int] = {}
    summary: dict[str, dict] = {}
    decodings = [task.decoding or decoding for task in tasks]
    for t, task in enumerate(tasks):
        fp = fingerprint(backend, task.adapter, decodings[t], system_prompt, schema)
        task.out_path.parent.mkdir(parents=True, exist_ok=True)
        done = _done_ids(task.out_path, fp, {r["id"] for r in task.records})
        _meta_path(task.out_path).write_text(json.dumps({"fingerprint": fp, "task": task.name}) + "\n")
        todo = [(i, r) for i, r in enumerate(task.records) if r["id"] not in done]
        chunked = 0
        for i, rec in todo:
            chunks = plan_chunks(backend, system_prompt, rec["note"], decodings[t], chunk_overlap)
            chunked += len(chunks) > 1
            n_chunks[(t, i)] = len(chunks)
            jobs.extend((t, i, c, text) for c, text in enumerate(chunks))
        summary[task.name] = {"notes": len(task.records), "resumed": len(done), "chunked_notes": chunked}
    answers: dict[tuple[int, int], dict[int, object]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        # moves as the backend answers each prompt (a note, or one chunk of a long note), not per batch
        bar = tqdm(total=len(jobs), desc="extract", unit="prompt")
        backend.progress = bar.update
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        prompts = [[{"role": "system", "content": system_prompt}, {"role": "user", "content": text}]
                   for _, _, _, text in batch]
        gens = backend.generate(prompts, [decodings[t] for t, _, _, _ in batch],
                                [tasks[t].adapter for t, _, _, _ in batch])
        for (t, i, c, text), g in zip(batch, gens):
            answers.setdefault((t, i), {})[c] = (g, text)
        finished = [key for key in dict.fromkeys((t, i) for t, i, _, _ in batch)
                    if len(answers.get(key, {})) == n_chunks[key]]
        by_task: dict[int, list[dict]] = {}
        for t, i in finished:
            by_task.setdefault(t, []).append(_row(tasks[t], i, answers.pop((t, i)), schema))
        for t, rows in by_task.items():
            with open(tasks[t].out_path, "a", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
    if bar is not None:
        backend.progress = None
        bar.close()
    return summary


def _row(task: Task, index: int, chunk_answers: dict, schema: Schema) -> dict:
    record = task.records[index]
    ordered = [chunk_answers[c] for c in sorted(chunk_answers)]
    gens = [g[0] if isinstance(g, list) else g for g, _ in ordered]   # first completion per chunk
    per_chunk = [parse_answer(g.text, schema, text) for g, (_, text) in zip(gens, ordered)]
    if len(per_chunk) == 1:
        merged, conflicts = per_chunk[0], []
    else:
        merged, conflicts = merge_chunks(schema, per_chunk, tolerance)
    return {
        "id": record["id"], "task": task.name, "adapter": task.adapter,
        "raw": [g.text for g in gens], "n_chunks": len(gens), "chunk_conflicts": conflicts,
        "json_valid": all(answer_is_valid_json(p) for p in per_chunk),
        "fields": {name: result_to_json(r) for name, r in merged.items()},
        "values": {name: (r.value if r.status == "ok" else None) for name, r in merged.items()},
        "prompt_tokens": sum(g.prompt_tokens for g in gens),
        "completion_tokens": sum(g.completion_tokens for g in gens),
        "latency_s": round(sum(g.latency_s for g in gens), 4),
        "finish_reasons": [g.finish_reason for g in gens],
    }


def read_rows(path: Path) -> Iterable[dict]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def score_adapters(base_dir: Path, adapters: dict[str, Path | None], rows: list[dict], schema: Schema,
                   system_prompt: str, prepared: Path, params: dict, work_dir: Path) -> dict[str, dict]:
    """Greedy extraction on prepared `rows` with every adapter (None = base model) in one batch -> metrics
    per name. Predictions are left in work_dir/<name>.jsonl. `params`: backend, engine and decoding keys."""
    from ..metrics import score
    from ..stages.common import note_of, render_meta
    from .backends import make_backend

    meta = render_meta(prepared, {r["id"] for r in rows})
    records = [{"id": r["id"], "note": note_of(r)} for r in rows]
    loaded = {name: path for name, path in adapters.items() if path is not None}
    decoding = Decoding.from_params(params, strategy="greedy", n=1)
    backend = make_backend(params.get("backend", "auto"), base_dir, loaded, schema, params.get("engine"))
    try:
        tasks = [Task(name, name if path is not None else None, records, work_dir / f"{name}.jsonl")
                 for name, path in adapters.items()]
        run_tasks(backend, tasks, schema, system_prompt, decoding, batch_size=max(1, len(tasks) * len(records)))
    finally:
        backend.close()
    labels = {r["id"]: r["labels"] for r in rows}
    return {name: score(schema, [(labels[p["id"]], row_results(p), meta.get(p["id"]))
                                 for p in read_rows(work_dir / f"{name}.jsonl")]) for name in adapters}
