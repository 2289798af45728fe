"""Notes longer than the model's context: overlapping chunks in, one answer per field out. Pure Python.

Split: whole lines, greedily packed up to `budget` tokens; each next chunk starts `overlap` tokens before
the previous one ended, so a value and its day heading a few lines above it are seen together at least
once. A single line longer than the budget is cut on whitespace (the only place text is ever cut).
Given where each token of the note starts (the tokenizer's offsets, from one pass over the whole note),
the token count of any span is two binary searches, so planning a note of megabytes takes seconds.

Merge rule, per field (documented in the README):
  1. Answers that passed every check (`ok`) win over nulls and failures.
  2. Among `ok` answers, the value given by the most chunks wins (numbers agree within the field's
     tolerance); a tie goes to the chunk that comes first in the note.
  3. Count fields (lists) take the union of the items listed in any chunk, de-duplicated case-insensitively.
  4. No `ok` answer: `null` if any chunk said null, else the first chunk's failure status.
Disagreements between `ok` answers are counted as conflicts and reported.
"""
from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from typing import Callable, Sequence

from .extraction import FieldResult
from .schema import Schema
from .units import values_match


@dataclass
class Chunk:
    text: str
    start: int   # character offset of the chunk in the note
    end: int


def _lines(text: str) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for line in text.splitlines(keepends=True):
        spans.append((pos, pos + len(line)))
        pos += len(line)
    return spans or [(0, 0)]


def _cut_long_line(text: str, start: int, end: int, span_tokens: Callable[[int, int], int],
                   budget: int) -> list[tuple[int, int]]:
    pieces, cur = [], start
    words = [m.end() for m in re.finditer(r"\S+\s*", text[start:end])]
    last = start
    for w_end in words:
        stop = start + w_end
        if span_tokens(cur, stop) > budget and last > cur:
            pieces.append((cur, last))
            cur = last
        last = stop
    pieces.append((cur, end))
    return pieces


def split_note(text: str, count_tokens: Callable[[str], int], budget: int, overlap: int,
               token_starts: Sequence[int] | None = None) -> list[Chunk]:
    """Chunks of at most ~`budget` tokens on line boundaries, consecutive chunks sharing ~`overlap` tokens.

    `token_starts`: the character offset where each token of `text` starts, ascending; without it every span
    is counted with `count_tokens` (fine for short notes, slow for long lines)."""
    if budget <= 0:
        raise ValueError("chunk budget must be positive")
    if token_starts is not None:
        def span_tokens(s: int, e: int) -> int:
            return bisect_left(token_starts, e) - bisect_left(token_starts, s)
        n_tokens = len(token_starts)
    else:
        def span_tokens(s: int, e: int) -> int:
            return count_tokens(text[s:e])
        n_tokens = count_tokens(text)
    if n_tokens <= budget:
        return [Chunk(text, 0, len(text))]
    units: list[tuple[int, int]] = []
    for s, e in _lines(text):
        units.extend(_cut_long_line(text, s, e, span_tokens, budget) if span_tokens(s, e) > budget else [(s, e)])
    sizes = [span_tokens(s, e) for s, e in units]
    chunks: list[Chunk] = []
    i = 0
    while i < len(units):
        j, total = i, 0
        while j < len(units) and (total + sizes[j] <= budget or j == i):
            total += sizes[j]
            j += 1
        chunks.append(Chunk(text[units[i][0]:units[j - 1][1]], units[i][0], units[j - 1][1]))
        if j >= len(units):
            break
        # step back over whole units worth ~overlap tokens, but always make progress
        k, back = j, 0
        while k - 1 > i and back + sizes[k - 1] <= overlap:
            k -= 1
            back += sizes[k]
        i = k
    return chunks


def merge_field(f, results: list[FieldResult], tolerance: float) -> tuple[FieldResult, bool]:
    """One field's answers from each chunk (note order) -> (merged result, conflict?)."""
    oks = [r for r in results if r.status == "ok"]
    if not oks:
        nulls = [r for r in results if r.status == "null"]
        return (nulls[0] if nulls else results[0]), False
    if f.type == "count":
        items: dict[str, str] = {}
        lists = set()
        for r in oks:
            written = r.written.get("value", []) if isinstance(r.written, dict) else []
            lists.add(frozenset(item.strip().lower() for item in written))
            for item in written:
                items.setdefault(item.strip().lower(), item)
        listed = list(items.values())
        conflict = len(lists) > 1
        return FieldResult("ok", value=len(listed), written={"value": listed}), conflict
    groups = agreeing_groups(f, oks, tolerance)
    best = max(groups, key=len)  # max keeps the first of equal-size groups: the earliest chunk wins ties
    return best[0], len(groups) > 1


def agreeing_groups(f, results: list[FieldResult], tolerance: float) -> list[list[FieldResult]]:
    """`ok` and `null` answers grouped by what they say, in order of first appearance: nulls together, numbers
    within tolerance together, other values when equal."""
    groups: list[list[FieldResult]] = []
    for r in results:
        for g in groups:
            if g[0].status != r.status:
                continue
            if r.status == "null" or (values_match(float(r.value), float(g[0].value), tolerance)
                                      if f.type == "number" else r.value == g[0].value):
                g.append(r)
                break
        else:
            groups.append([r])
    return groups


def vote_field(f, results: list[FieldResult], tolerance: float) -> tuple[FieldResult, float]:
    """Self-consistency: one field's answers from several samples of the same prompt -> the most frequent
    answer (null counts as an answer; equal numbers within tolerance agree; the earliest sample wins ties) and
    the share of samples that gave it. Failed answers do not vote unless nothing else was answered."""
    groups = agreeing_groups(f, [r for r in results if r.status in ("ok", "null")], tolerance)
    if not groups:
        return results[0], 0.0
    best = max(groups, key=len)
    return best[0], round(len(best) / len(results), 4)


def merge_chunks(schema: Schema, per_chunk: list[dict[str, FieldResult]], tolerance: Callable) -> tuple[
        dict[str, FieldResult], list[str]]:
    """Per-chunk parsed answers -> merged answer and the names of fields whose chunks disagreed."""
    merged, conflicts = {}, []
    for f in schema:
        merged[f.name], conflict = merge_field(f, [c[f.name] for c in per_chunk], tolerance(f))
        if conflict:
            conflicts.append(f.name)
    return merged, conflicts
