"""Per-field confidence from the answer's token log-probabilities, calibrated on validation, and abstention.

A field's raw confidence is the probability the model gave to what it wrote for that field: the product of the
probabilities of the tokens from the field's value up to (not including) its evidence quote, i.e. the
null-or-object decision, the number and its unit, or the category. The quote is left out: it is copied text
whose length would decide the score.

Raw confidences are not probabilities of being right. `Calibration` maps them, separately for value answers
and null answers, onto the share that was correct on validation notes (isotonic regression, pool adjacent
violators), and picks an abstention threshold there: a value answer whose calibrated confidence is below it
becomes `null`. The threshold maximises validation field accuracy; 0 (never abstain) is always a candidate, so
abstention never scores below the raw answers on the notes it was chosen on. A value that a check against the note
refused becomes `null` as well: it scores as wrong either way when the note has a value, and as right when the note
has none, which is what the pipeline then hands on. Pure Python.
"""
from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

from .extraction import FieldResult, answer_members
from .predictions import result_from_json, result_to_json


def value_spans(text: str, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Character span of each named top-level field's value in a JSON answer, cut before its `"evidence"` key
    (extraction.answer_members reads the answer; a field that cannot be read is left out)."""
    wanted = set(names)
    spans = {}
    for key, (start, end, value) in answer_members(text).items():
        if key in wanted:
            cut = text.find('"evidence"', start, end) if isinstance(value, dict) else -1
            spans[key] = (start, cut if cut > start else end)
    return spans


def token_pieces(ids: list[int], text: str, decode_each: Callable[[list[int]], list[str]],
                 decode: Callable[[list[int]], str]) -> list[str]:
    """Each generated token as the text it adds to `text` (the decoded answer), from the tokenizer's `decode_each`
    (one text per token) and `decode` (a prefix's text). Decoding token by token is exact unless a token holds
    part of a multi-byte character; then each piece is the growth of the decoded prefix, and a character whose
    bytes run on into the next token (decoded as U+FFFD until complete) belongs to the token that completes it.
    A kept answer's confidences came from this, so it is part of what a resumed run must not have changed."""
    pieces = decode_each(ids)
    if text.endswith("".join(pieces)):
        return pieces
    pieces, before = [], ""
    for k in range(len(ids)):
        now = decode(ids[:k + 1])
        if k < len(ids) - 1:
            now = now.rstrip("\ufffd")
        grew = now.startswith(before)
        pieces.append(now[len(before):] if grew else "")
        before = now if grew else before
    return pieces


def field_confidences(text: str, token_texts: list[str], token_logprobs: list[float],
                      names: Iterable[str]) -> dict[str, float]:
    """Raw confidence per field: exp of the summed log-probabilities of the tokens overlapping its value span.

    `token_texts` are the generated tokens as text, in order; they must concatenate to the end of `text` (an
    answer may start with a forced prefix that was not generated). Fields with no generated token in their
    span get none."""
    generated = "".join(token_texts)
    if not text.endswith(generated) or len(token_texts) != len(token_logprobs):
        return {}
    offset = len(text) - len(generated)
    starts, pos = [], offset
    for piece in token_texts:
        starts.append(pos)
        pos += len(piece)
    out = {}
    for name, (a, b) in value_spans(text, names).items():
        first = max(bisect_right(starts, a) - 1, 0)
        total, seen = 0.0, False
        for k in range(first, len(starts)):
            t0, t1 = starts[k], starts[k] + len(token_texts[k])
            if t0 >= b:
                break
            if t1 > a and t1 > t0:
                total += token_logprobs[k]
                seen = True
        if seen:
            out[name] = round(math.exp(total), 6)
    return out


def _isotonic(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Pool adjacent violators: (x, y) -> increasing step function as (upper x of block, fitted y) pairs."""
    blocks: list[list[float]] = []          # [sum_y, count, max_x]
    for x, y in sorted(points):
        blocks.append([y, 1.0, x])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            y2, c2, x2 = blocks.pop()
            blocks[-1][0] += y2
            blocks[-1][1] += c2
            blocks[-1][2] = x2
    return [(b[2], round(b[0] / b[1], 6)) for b in blocks]


@dataclass(frozen=True)
class Curve:
    """An isotonic step function; x beyond the last step takes the last value."""
    upper: tuple[float, ...] = ()
    value: tuple[float, ...] = ()

    @classmethod
    def fit(cls, points: list[tuple[float, float]]) -> "Curve":
        steps = _isotonic(points)
        return cls(tuple(u for u, _ in steps), tuple(v for _, v in steps))

    def __call__(self, x: float) -> float | None:
        if not self.upper:
            return None
        # the first block whose upper bound reaches x
        return self.value[min(bisect_left(self.upper, x), len(self.upper) - 1)]


@dataclass(frozen=True)
class Calibration:
    """Calibrated confidence for value answers and for null answers, and the abstention threshold."""
    value_curve: Curve = field(default_factory=Curve)
    null_curve: Curve = field(default_factory=Curve)
    threshold: float = 0.0
    fitted_on: int = 0                       # validation field answers (notes x fields) with a raw confidence

    def calibrated(self, r: FieldResult, raw: float | None) -> float | None:
        if raw is None:
            return None
        if r.status == "ok":
            return self.value_curve(raw)
        if r.status == "null":
            return self.null_curve(raw)
        return None

    def abstain(self, r: FieldResult, calibrated: float | None) -> FieldResult:
        """A value answer below the threshold becomes null; the value it had stays as `candidate`."""
        if r.status != "ok" or calibrated is None or calibrated >= self.threshold:
            return r
        return replace(r, status="null", value=None, candidate=r.value)

    def to_json(self) -> dict:
        return {"threshold": self.threshold, "fitted_on": self.fitted_on,
                "value_curve": {"upper": list(self.value_curve.upper), "value": list(self.value_curve.value)},
                "null_curve": {"upper": list(self.null_curve.upper), "value": list(self.null_curve.value)}}

    @classmethod
    def from_json(cls, d: dict) -> "Calibration":
        curve = lambda c: Curve(tuple(c["upper"]), tuple(c["value"]))  # noqa: E731
        return cls(curve(d["value_curve"]), curve(d["null_curve"]), float(d["threshold"]), int(d["fitted_on"]))


@dataclass(frozen=True)
class Answered:
    """One validation field answer: what the model said, its raw confidence, and whether gold agrees."""
    result: FieldResult
    raw: float
    correct: bool
    correct_if_null: bool            # would `null` have been right (the gold is null)


def fit_calibration(answers: list[Answered]) -> Calibration:
    """Isotonic curves per answer kind, then the threshold that maximises validation accuracy."""
    values = [a for a in answers if a.result.status == "ok"]
    nulls = [a for a in answers if a.result.status == "null"]
    value_curve = Curve.fit([(a.raw, float(a.correct)) for a in values])
    null_curve = Curve.fit([(a.raw, float(a.correct)) for a in nulls])
    # Abstaining on a value answer with calibrated confidence c changes the score by correct_if_null - correct;
    # sweep thresholds over the distinct calibrated values, lowest first, and keep the best (the lowest on ties).
    gains: dict[float, int] = {}
    for a in values:
        c = value_curve(a.raw)
        gains[c] = gains.get(c, 0) + int(a.correct_if_null) - int(a.correct)
    best_t, best, running = 0.0, 0, 0
    levels = sorted(gains)
    for k, c in enumerate(levels):
        running += gains[c]          # abstaining on every answer with calibrated confidence <= c
        if running > best:
            best = running
            best_t = levels[k + 1] if k + 1 < len(levels) else math.nextafter(c, math.inf)
    return Calibration(value_curve, null_curve, best_t, len(answers))


def validation_answers(schema, rows: Iterable[dict], labels: dict[str, dict]) -> list[Answered]:
    """Every labelled field answer with a raw confidence in prediction rows of validation notes."""
    from .metrics import is_correct

    out = []
    for row in rows:
        gold = labels.get(row["id"])
        if gold is None:
            continue
        confidence = row.get("confidence") or {}
        for f in schema:
            if f.name not in gold or f.name not in confidence:
                continue
            r = result_from_json(row["fields"][f.name])
            out.append(Answered(r, float(confidence[f.name]), is_correct(f, gold[f.name], r), gold[f.name] is None))
    return out


# a value the model wrote that a check against the note refused (survlm.extraction); it is kept as `candidate`
REFUSED = ("out_of_range", "ungrounded", "other_day", "other_field")


def abstained_row(row: dict, calibration: Calibration) -> dict:
    """A prediction row with calibrated confidences (`confidence`; the raw ones in `raw_confidence`), every value
    answer below the threshold turned into null (`abstained` names those fields), and every value a check refused
    turned into null too (`refused`): abstaining, the pipeline answers null wherever it gives no value, which is
    what the survival model and `survlm extract`'s CSV already receive for a refused one."""
    raw = row.get("confidence") or {}
    fields, values, calibrated, abstained, refused = {}, {}, {}, [], []
    for name, d in row["fields"].items():
        r = result_from_json(d)
        c = calibration.calibrated(r, raw.get(name))
        if r.status in REFUSED:
            kept = replace(r, status="null", value=None)
            refused.append(name)
        else:
            kept = calibration.abstain(r, c)
            if kept is not r:
                abstained.append(name)
        if c is not None:
            calibrated[name] = c
        fields[name] = result_to_json(kept)
        values[name] = kept.value if kept.status == "ok" else None
    return {**row, "fields": fields, "values": values, "confidence": calibrated, "raw_confidence": raw,
            "abstained": abstained, "refused": refused}
