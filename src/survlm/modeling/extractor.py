"""Extraction runs: notes in, one parsed JSONL row per note out, for any backend and any adapter.

- Several tasks (adapter x note set) share one job queue, so vLLM serves different adapters in one batch.
- A note whose prompt would not leave `max_new_tokens` of room in the context is split into overlapping
  chunks (survlm.chunking) and the per-chunk answers are merged per field; such notes are counted. Nothing
  is ever silently truncated.
- Rows are appended as soon as a note's last chunk is answered; a rerun skips a note only when a row with
  its id *and* the SHA-256 of its text is in the output, and the run's fingerprint (the base model's
  weights, tokenizer and config and how they are quantized, the adapter's files, decoding, prompt, schema,
  context, chunk overlap, the code that scores field confidences) is unchanged. A different fingerprint starts
  the file over; an edited note is asked again.
- Each row records the digest of the code that read its answer (`parser`). A resumed row read by other code is
  read again from its stored raw answer where it holds the whole of it (one chunk, one completion); a chunked or
  voted row is asked again, since its merge would need answers the row does not keep.
- Rows hold ids, the note text's digest, raw answers, parsed fields, statuses, token counts and latency; where a
  note was chunked or the decoding gives several completions, also each completion's answer to the whole note
  (`answer_texts`). Never the note text.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import confidence
from ..chunking import merge_chunks, split_note, vote_field
from ..config import ScoringParams
from ..confidence import field_confidences
from ..extraction import FieldResult, answer_is_valid_json, answer_text, as_written, parse_answer
from ..hashing import sha256_file, text_digest
from ..metrics import tolerance
from ..phases import Phases
from ..predictions import holds_whole_answer, parser_digest, reparsed_row, result_to_json, row_results
from ..schema import Schema
from .backends import Backend, Decoding
from .loading import adapter_digest, model_digest

CHUNK_MARGIN_TOKENS = 16   # chat-template tokens that the note-less prompt count can miss at the join
ROW_FORMAT = 2             # what a row holds; rows written in another format are answered again


class ContextTooSmall(ValueError):
    """The model context cannot hold the prompt, the answer and any part of a note."""


@dataclass
class Task:
    name: str                   # e.g. "dpo/test"
    adapter: str | None         # backend adapter name; None = base model
    records: list[dict]         # {"id", "note"}
    out_path: Path
    decoding: Decoding | None = None   # None: the run's default decoding
    vote: bool = False          # self-consistency: each field is the majority of the decoding's n samples


def note_digest(text: str) -> str:
    """What a row remembers of its note: enough to tell an edited note (or another file's) from the one answered."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def base_digest(base_dir: str) -> str:
    """Every file of the base model's directory (weights, config, tokenizer); a name that is no directory (an
    openai backend's served model) stands for itself."""
    path = Path(base_dir)
    return model_digest(path) if path.exists() else base_dir


def _confidence_code() -> str:
    """The code that scores field confidences: they come from the generated tokens, which a kept row no longer
    has, so other code means answering again."""
    return sha256_file(confidence.__file__)[:16]


def fingerprint(backend: Backend, adapter: str | None, decoding: Decoding, system_prompt: str, schema: Schema,
                chunk_overlap: int = 128, vote: bool = False) -> str:
    parts = {"base": base_digest(backend.base_dir),
             "adapter": adapter_digest(backend.adapters[adapter]) if adapter else None,
             "decoding": asdict(decoding), "prompt": system_prompt, "schema": schema.names,
             # the tokens a constrained answer may use: the schema's grammar, as the code writing it made it
             "grammar": text_digest(backend.grammar_text) if decoding.uses_constraint else None,
             "schema_digest": schema.digest, "max_context": backend.max_context, "backend": backend.name,
             # the base as served: `auto` resolved from the adapters' run records where the backend did so
             "quantization": getattr(backend, "quantization", backend.settings.quantization),
             "chunk_overlap": chunk_overlap, "row_format": ROW_FORMAT, "vote": vote,
             "confidence_code": _confidence_code()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".run.json")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _run_fingerprint(out: Path) -> str | None:
    try:
        return json.loads(_meta_path(out).read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError, AttributeError):   # absent, or torn by a kill mid-write
        return None


def _answered(out: Path, fp: str, wanted: dict[str, tuple[str, str]], schema: Schema) -> tuple[list[str], int]:
    """Lines of `out` answered by the same run for a note still wanted with the same text, and how many of them
    were read again. `wanted`: id -> (note digest, note text). Reads only. Stops at a torn last line left by a
    kill mid-write; drops rows of records the task no longer has (fewer notes asked for, another sample of them)
    or whose text changed; a row read by other parsing code is read again from its raw answer, or dropped where
    the row does not hold its whole answer."""
    if not out.is_file() or _run_fingerprint(out) != fp:
        return [], 0
    good, seen, reread = [], set(), 0
    with open(out, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:
                break
            rid = row.get("id") if isinstance(row, dict) else None
            if rid not in wanted or rid in seen or row.get("note_sha256") != wanted[rid][0]:
                continue
            if row.get("parser") != parser_digest():
                if not holds_whole_answer(row):
                    continue
                row = reparsed_row(row, wanted[rid][1], schema)
                line = json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"
                reread += 1
            good.append(line if line.endswith("\n") else line + "\n")
            seen.add(rid)
    return good, reread


def _start_file(out: Path, kept: list[str]) -> None:
    """Make `out` hold exactly the kept rows of this run, and its run record say so."""
    if not kept:
        out.unlink(missing_ok=True)
        _meta_path(out).unlink(missing_ok=True)
        return
    text = "".join(kept)
    if out.read_text(encoding="utf-8") != text:
        _write_atomic(out, text)


def _open_rows(out: Path, fp: str, task_name: str):
    """Append handle for `out`; its run record is written first, so rows never exist without one."""
    if _run_fingerprint(out) != fp:
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(_meta_path(out), json.dumps({"fingerprint": fp, "task": task_name}) + "\n")
    return open(out, "a", encoding="utf-8")


def plan_chunks(backend: Backend, system_prompt: str, note: str, decoding: Decoding, overlap: int) -> list[str]:
    """The note itself when it fits; else overlapping chunks that each fit with room for the answer."""
    bare = backend.count_tokens(backend.prompt_text([{"role": "system", "content": system_prompt},
                                                     {"role": "user", "content": ""}], decoding))
    budget = backend.max_context - decoding.max_new_tokens - bare - CHUNK_MARGIN_TOKENS
    if budget <= overlap:
        raise ContextTooSmall(f"context {backend.max_context} leaves no room for a note chunk: prompt {bare} "
                              f"tokens, answer {decoding.max_new_tokens}, overlap {overlap}")
    return [c.text for c in split_note(note, backend.count_tokens, budget, overlap, _token_starts(backend, note))]


def _token_starts(backend: Backend, note: str) -> list[int] | None:
    """Where each token of the note starts, from one tokenizer pass (None for a tokenizer without offsets)."""
    tok = backend.tokenizer
    if not getattr(tok, "is_fast", False):
        return None
    offsets = tok(note, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return sorted(start for start, _ in offsets)


def run_tasks(backend: Backend, tasks: list[Task], schema: Schema, system_prompt: str, decoding: Decoding,
              chunk_overlap: int = 128, progress: bool = True) -> dict[str, dict]:
    """Run every task to completion (resuming where possible); returns per-task counters.

    Every note is planned (digested, chunked) before any file is touched, so a note that cannot be planned
    changes nothing on disk."""
    jobs: list[tuple[int, int, int, str]] = []          # (task, record, chunk index, chunk text)
    n_chunks: dict[tuple[int, int], int] = {}
    summary: dict[str, dict] = {}
    decodings = [task.decoding or decoding for task in tasks]
    fps = [fingerprint(backend, task.adapter, decodings[t], system_prompt, schema, chunk_overlap, task.vote)
           for t, task in enumerate(tasks)]
    digests = [[note_digest(r["note"]) for r in task.records] for task in tasks]
    kept: list[list[str]] = []
    for t, task in enumerate(tasks):
        lines, reread = _answered(task.out_path, fps[t], {r["id"]: (d, r["note"])
                                                          for r, d in zip(task.records, digests[t])}, schema)
        kept.append(lines)
        done = {json.loads(line)["id"] for line in lines}
        chunked = 0
        for i, rec in enumerate(task.records):
            if rec["id"] in done:
                continue
            chunks = plan_chunks(backend, system_prompt, rec["note"], decodings[t], chunk_overlap)
            chunked += len(chunks) > 1
            n_chunks[(t, i)] = len(chunks)
            jobs.extend((t, i, c, text) for c, text in enumerate(chunks))
        summary[task.name] = {"notes": len(task.records), "resumed": len(done), "chunked_notes": chunked}
        if reread:
            summary[task.name]["resumed_reread"] = reread
    for t, task in enumerate(tasks):
        _start_file(task.out_path, kept[t])
    answers: dict[tuple[int, int], dict[int, object]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(task.records) for task in tasks), initial=sum(s["resumed"] for s in summary.values()),
                   desc="extract", unit="note")
    asked, sharers = _shared_requests(jobs, fps, decodings)
    for k in (k for group in sharers for k in group[1:]):
        counter = summary[tasks[jobs[k][0]].name]
        counter["shared_answers"] = counter.get("shared_answers", 0) + 1
    prompts = [[{"role": "system", "content": system_prompt}, {"role": "user", "content": jobs[k][3]}]
               for k in asked]
    # The backend answers in its own order (vLLM: as each request finishes); a note's row is written and
    # synced as soon as its last chunk is answered, so an interrupted run loses at most the notes in flight.
    answered = backend.stream(prompts, [decodings[jobs[k][0]] for k in asked], [tasks[jobs[k][0]].adapter for k in asked])
    for a, gens in answered:
        for k in sharers[a]:
            t, i, c, text = jobs[k]
            answers.setdefault((t, i), {})[c] = (gens, text)
            if len(answers[(t, i)]) < n_chunks[(t, i)]:
                continue
            row = {**_row(tasks[t], i, answers.pop((t, i)), schema), "note_sha256": digests[t][i]}
            with _open_rows(tasks[t].out_path, fps[t], tasks[t].name) as fh:
                fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    for t, task in enumerate(tasks):   # a task with nothing to answer still leaves its (empty) file
        _open_rows(task.out_path, fps[t], task.name).close()
    return summary


def _shared_requests(jobs: list[tuple[int, int, int, str]], fps: list[str],
                     decodings: list[Decoding]) -> tuple[list[int], list[list[int]]]:
    """The jobs to ask, and for each the jobs its answer serves. Deterministic decodings of one chunk under one
    fingerprint (the same adapter weights, as where dpo ships the SFT adapter itself) are asked once: asked
    twice, a batched engine can answer them differently, as its batches differ, and two models that are one
    would score apart."""
    asked: list[int] = []
    sharers: list[list[int]] = []
    first: dict[tuple[str, str], int] = {}
    for k, (t, _, _, text) in enumerate(jobs):
        key = (fps[t], text)
        if decodings[t].strategy != "sample" and key in first:
            sharers[first[key]].append(k)
            continue
        first.setdefault(key, len(asked))
        asked.append(k)
        sharers.append([k])
    return asked, sharers


def _row(task: Task, index: int, chunk_answers: dict, schema: Schema) -> dict:
    record = task.records[index]
    ordered = [chunk_answers[c] for c in sorted(chunk_answers)]   # per chunk: (completions, chunk text)
    parsed = [[parse_answer(g.text, schema, text) for g in samples] for samples, text in ordered]
    gens = [samples[0] for samples, _ in ordered]   # first completion per chunk
    if task.vote:   # each chunk's answer: per field, the majority of its samples; confidence, their agreement
        per_chunk, chunk_confidence = [], []
        for answers in parsed:
            voted = {f.name: vote_field(f, [a[f.name] for a in answers], tolerance(f)) for f in schema}
            per_chunk.append({name: r for name, (r, _) in voted.items()})
            chunk_confidence.append({name: share for name, (_, share) in voted.items()})
    else:
        per_chunk = [answers[0] for answers in parsed]
        chunk_confidence = [field_confidences(g.text, g.token_texts, g.token_logprobs, schema.names)
                            if g.token_logprobs is not None else {} for g in gens]
    merged, conflicts = _merged(schema, per_chunk)
    row = {
        "id": record["id"], "task": task.name, "adapter": task.adapter,
        "raw": [g.text for g in gens], "n_chunks": len(gens), "chunk_conflicts": conflicts,
        "json_valid": all(answer_is_valid_json(p) for p in per_chunk),
        "fields": {name: result_to_json(r) for name, r in merged.items()},
        "values": {name: (r.value if r.status == "ok" else None) for name, r in merged.items()},
        "confidence": _merged_confidence(merged, per_chunk, chunk_confidence),
        "prompt_tokens": sum(g.prompt_tokens for g in gens),
        "completion_tokens": sum(g.completion_tokens for g in gens),
        "latency_s": round(sum(g.latency_s for g in gens), 4),
        "finish_reasons": [g.finish_reason for g in gens],
        "parser": parser_digest(),
    }
    completions = len(ordered[0][0])
    if len(ordered) > 1 or completions > 1:   # more than `raw` holds: every completion's answer to the whole note
        row["answers"] = ([g.text for g in ordered[0][0]] if len(ordered) == 1 else
                          [answer_text(_merged(schema, [answers[k] for answers in parsed])[0])
                           for k in range(completions)])
    return row


def answer_texts(row: dict) -> list[str]:
    """A row's answers to its whole note, one per completion: each as generated where the note was answered in one
    chunk, else the merge of its chunks' answers written out (survlm.extraction.answer_text)."""
    return row.get("answers", row["raw"])


def _merged(schema: Schema, per_chunk: list[dict[str, FieldResult]]) -> tuple[dict[str, FieldResult], list]:
    """One answer from the chunks' answers, and the fields where they disagreed."""
    return (per_chunk[0], []) if len(per_chunk) == 1 else merge_chunks(schema, per_chunk, tolerance)


def _merged_confidence(merged: dict[str, FieldResult], per_chunk: list[dict[str, FieldResult]],
                       chunk_confidence: list[dict[str, float]]) -> dict[str, float]:
    """Raw confidence per field of the chunk whose answer the merge kept; a merged count list (no single chunk's)
    takes its chunks' lowest. A value that code put in place of the model's answer has none."""
    out = {}
    for name, r in merged.items():
        if not as_written(r):
            continue
        kept = [conf[name] for answer, conf in zip(per_chunk, chunk_confidence) if answer[name] is r and name in conf]
        if not kept:
            kept = [conf[name] for answer, conf in zip(per_chunk, chunk_confidence)
                    if answer[name].status == r.status and name in conf]
            kept = [min(kept)] if kept else []
        if kept:
            out[name] = kept[0]
    return out


def score_adapters(base_dir: Path, adapters: dict[str, Path | None], rows: list[dict], schema: Schema,
                   system_prompt: str, prepared: Path, params: ScoringParams, work_dir: Path,
                   phases: Phases | None = None) -> dict[str, dict]:
    """Greedy extraction on prepared `rows` with every adapter (None = base model) in one batch -> metrics
    per name. Predictions are left in work_dir/<name>.jsonl. `params`: backend, engine and decoding limits;
    `phases` gets the engine's start and the generation timed."""
    from ..artifacts import note_of, read_jsonl, render_meta
    from ..metrics import score
    from .backends import make_backend

    meta = render_meta(prepared, {r["id"] for r in rows})
    records = [{"id": r["id"], "note": note_of(r)} for r in rows]
    loaded = {name: path for name, path in adapters.items() if path is not None}
    decoding = Decoding(strategy="greedy", **params.decoding_args())
    phases = phases or Phases(startup=False)
    with phases.time("engine_start"):
        backend = make_backend(params.backend, base_dir, loaded, schema, params.engine)
    try:
        tasks = [Task(name, name if path is not None else None, records, work_dir / f"{name}.jsonl")
                 for name, path in adapters.items()]
        with phases.time("generation"):
            run_tasks(backend, tasks, schema, system_prompt, decoding)
    finally:
        with phases.time("engine_close"):
            backend.close()
    labels = {r["id"]: r["labels"] for r in rows}
    return {name: score(schema, [(labels[p["id"]], row_results(p), meta.get(p["id"]))
                                 for p in read_jsonl(work_dir / f"{name}.jsonl")]) for name in adapters}
