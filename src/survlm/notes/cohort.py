"""Rendering a whole cohort: which notes each patient gets, rendered in a pool of worker processes, each note
checked against the renderer's invariants where it is made."""
from __future__ import annotations

import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

from ..schema import load_schema
from .checks import check_note, trap_stats
from .render import render_to_budget

_worker: dict = {}


def token_counter(base_dir: str | Path) -> Callable[[str], int]:
    """Counts a text's tokens with the base model's own tokenizer, as training and serving will see them."""
    from tokenizers import Tokenizer  # the fast tokenizer alone: no model, no torch

    tok = Tokenizer.from_file(str(Path(base_dir) / "tokenizer.json"))
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


def rendering_jobs(rows: list[dict], split_of: dict[str, str], styles: list[str], heldout: list[str],
                   renderings: int, seed: int) -> list[tuple[dict, str, int, int]]:
    """(row, style, render seed, rendering index) for every note to render.

    Each patient gets one note in a style drawn from the training styles (test patients: from all styles, so
    that some land in a held-out one). A training patient with `renderings` > 1 gets more notes: the other
    training styles first, each with its own render seed (other days charted, other distractors, other order);
    the labels stay the patient's."""
    train_styles = [s for s in styles if s not in heldout]
    jobs = []
    for r in rows:
        pool = styles if split_of[r["id"]] == "test" else train_styles
        first = random.Random(f"{seed}:style:{r['id']}").choice(pool)
        jobs.append((r, first, seed, 0))
        if split_of[r["id"]] == "train" and renderings > 1:
            others = [st for st in train_styles if st != first]
            random.Random(f"{seed}:renderings:{r['id']}").shuffle(others)
            cycle = others + [first]
            jobs += [(r, cycle[(k - 1) % len(cycle)], seed + k, k) for k in range(1, renderings)]
    return jobs


def _init_worker(schema_path: str, base_dir: str, render_kwargs: dict) -> None:
    _worker["schema"] = load_schema(schema_path)
    _worker["count"] = token_counter(base_dir)
    _worker["kwargs"] = render_kwargs


def _render_one(job: tuple[dict, str, int]) -> tuple[dict, list[str]]:
    row, style, seed = job
    schema, kw = _worker["schema"], _worker["kwargs"]
    note, n_tokens = render_to_budget(row, schema, style, seed, row["id"], kw["note_tokens"], _worker["count"],
                                      alt_unit_rate=kw["alt_unit_rate"], derived_rate=kw["derived_rate"])
    out = {"text": note.text, "labels": note.labels, "target": note.target, "meta": note.metadata(),
           "n_tokens": n_tokens, "traps": trap_stats(note, schema)}
    return out, check_note(note, schema, row)


def render_all(jobs: list[tuple[dict, str, int, int]], schema_path: str, base_dir: str | Path,
               render_kwargs: dict, workers: int) -> list[tuple[dict, list[str]]]:
    """Renders every job, in order: (the note's text, labels, target, metadata, token count and trap stats; the
    invariants it violates). `render_kwargs`: note_tokens, alt_unit_rate, derived_rate."""
    with ProcessPoolExecutor(max_workers=max(1, workers), initializer=_init_worker,
                             initargs=(str(schema_path), str(base_dir), render_kwargs)) as pool:
        return list(pool.map(_render_one, [job[:3] for job in jobs], chunksize=64))
