"""A researcher's own notes: JSONL, CSV or Parquet with id, text, time, event (+ optional labels).

A column named after a schema field is a label: an empty cell (or a missing key) leaves the field
unlabelled, the word `null` says the note has no value for it. Any other column is metadata, kept
with the record and passed through to extraction output.

Every problem becomes one line `file:line: field: problem`; all problems are collected and
reported together, and nothing is written when there is any.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Iterator

from ..schema import Schema

REQUIRED = ("id", "text", "time", "event")
TRUE_WORDS, FALSE_WORDS = {"1", "true", "yes"}, {"0", "false", "no"}
NULL_WORD = "null"   # a label saying the note has no value for the field (an empty cell is no label)


class UserDataError(ValueError):
    """Carries every problem found; str() is one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """json object hook: a key given twice is an error, not a silent last-one-wins."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _parse_json_line(text: str) -> tuple[Any, str | None]:
    """(object, problem) for one JSONL line; every way `json` can fail becomes a problem, never a traceback."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys), None
    except json.JSONDecodeError as exc:
        return None, f"bad JSON ({exc.msg} at column {exc.colno})"
    except _DuplicateKey as exc:
        return None, f"duplicate key {_show(exc.args[0])}"
    except RecursionError:
        return None, "bad JSON (nested too deeply)"
    except ValueError:   # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        return None, "bad JSON (a number with too many digits)"


def _lone_surrogate(value: Any) -> int | None:
    """Position of the first character that is no valid Unicode (a lone surrogate from a JSON \\ud800 escape)."""
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start + 1
    return None


def _unicode_problems(rec: dict) -> list[str]:
    items = list(rec.items()) + (list(rec["labels"].items()) if isinstance(rec.get("labels"), dict) else [])
    out = []
    for k, v in items:
        if _lone_surrogate(k) is not None:
            out.append("record: a key is not valid Unicode (a lone surrogate)")
        elif (at := _lone_surrogate(v)) is not None:
            out.append(f"{k}: not valid Unicode (a lone surrogate at character {at})")
    return out


def _rows(path: Path, problems: list[str]) -> Iterator[tuple[str, dict]]:
    """(location, raw record) pairs; location is `line N` (JSONL/CSV) or `row N` (Parquet)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
            problems.append(f"{path}: file: not a readable Parquet file ({type(exc).__name__})")
            return
        for i, rec in enumerate(frame.to_dict(orient="records"), start=1):
            yield f"row {i}", rec
        return
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problems.append(f"{path}: file: cannot read it ({exc.strerror})")
        return
    if suffix == ".jsonl":
        for lineno, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(f"{path}:{lineno}: record: undecodable bytes at column {exc.start + 1} (not UTF-8)")
                continue
            rec, problem = _parse_json_line(text)
            if problem:
                problems.append(f"{path}:{lineno}: record: {problem}")
                continue
            if not isinstance(rec, dict):
                problems.append(f"{path}:{lineno}: record: a JSON object is required")
                continue
            yield str(lineno), rec
        return
    if suffix == ".csv":
        for lineno, line in enumerate(raw.split(b"\n"), start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(f"{path}:{lineno}: record: undecodable bytes at column {exc.start + 1} (not UTF-8)")
        if problems:
            return
        # strict: a quote that is never closed is an error, not a cell that swallows the rest of the file
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline=""), strict=True)
        rows = iter(reader)
        while True:
            start = reader.line_num + 1   # the line this record starts on
            try:
                if reader.line_num == 0:
                    header = reader.fieldnames or []
                    doubled = sorted({h for h in header if header.count(h) > 1})
                    if doubled:
                        problems.extend(f"{path}:1: header: duplicate column {_show(h)}" for h in doubled)
                        return
                    start = reader.line_num + 1
                rec = next(rows)
            except StopIteration:
                return
            except csv.Error as exc:
                problems.append(f"{path}:{start}: record: bad CSV ({exc}"
                                + ("; a quoted cell is never closed)" if "end of data" in str(exc) else ")"))
                return
            if None in rec:
                problems.append(f"{path}:{reader.line_num}: record: more cells than header columns")
                continue
            yield str(reader.line_num), {k: (None if v == "" else v) for k, v in rec.items()}
    problems.append(f"{path}: file: unsupported extension {suffix!r} (use .jsonl, .csv or .parquet)")


def _show(v: Any) -> str:
    """A short rendering of a bad cell (never a whole note)."""
    return repr(v[:20]) if isinstance(v, str) else repr(v)[:20]


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError, OverflowError):   # OverflowError: an integer beyond the float range
        return None
    return None if math.isnan(x) or math.isinf(x) else x


def _plain(v: Any) -> Any:
    """A metadata cell as a JSON scalar (Parquet dates and numpy numbers become text or numbers)."""
    if _blank(v):
        return None
    if isinstance(v, (str, bool, int, float)):
        return v
    if hasattr(v, "item"):
        try:
            x = v.item()
            if isinstance(x, (str, bool, int, float)):
                return x
        except (ValueError, TypeError):
            pass
    return str(v)


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _label(schema: Schema, name: str, v: Any) -> tuple[Any, str | None]:
    """Parse one label cell; returns (value, problem)."""
    if _blank(v) or (isinstance(v, str) and v.strip().lower() == NULL_WORD):
        return None, None
    f = schema[name]
    if f.type in ("number", "count"):
        x = _number(v)
        if x is None:
            return None, f"not a number ({_show(v)})"
        if f.type == "count" and x != int(x):
            return None, "not a whole number"
        if not f.in_range(x):
            return None, f"{x:g} is outside the plausible range {f.range[0]:g}-{f.range[1]:g} {f.unit or ''}".rstrip()
        return (int(x) if f.type == "count" else x), None
    if f.type == "bool":
        s = str(v).strip().lower()
        if s in TRUE_WORDS:
            return True, None
        if s in FALSE_WORDS:
            return False, None
        return None, f"not a boolean ({_show(v)})"
    match = next((c for c in f.categories if c.lower() == str(v).strip().lower()), None)
    if match is None:
        return None, f"{str(v)[:30]!r} is not one of {', '.join(f.categories)}"
    return match, None


def load_user_records(path: str | Path, schema: Schema, require_outcome: bool = True) -> list[dict]:
    """Validated records `{id, text, time, event, labels, labelled, metadata}`; raises UserDataError listing
    every problem. `labels` has every schema field (None: null or unlabelled); `labelled` names the fields
    that have a label; `metadata` holds the columns that are neither required nor schema fields."""
    path = Path(path)
    if path.is_dir():
        raise UserDataError([f"{path}: file: is a directory, not a notes file"])
    if not path.is_file():
        raise UserDataError([f"{path}: file: not found"])
    problems: list[str] = []
    seen: dict[str, str] = {}
    records = []
    for where, rec in _rows(path, problems):
        loc = f"{path}:{where}"
        bad_unicode = _unicode_problems(rec)
        if bad_unicode:   # the tokenizer and every file writer would fail on it later
            problems.extend(f"{loc}: {p}" for p in bad_unicode)
            continue
        labels_obj = rec.pop("labels", None) if isinstance(rec.get("labels"), dict) else None
        flat_labels = {k: rec[k] for k in list(rec) if k not in REQUIRED}
        if labels_obj:
            flat_labels.update(labels_obj)
        rid = rec.get("id")
        if rid is None or (isinstance(rid, float) and math.isnan(rid)) or str(rid).strip() == "":
            problems.append(f"{loc}: id: missing")
        elif not isinstance(rid, (str, int, float)) or isinstance(rid, bool):
            problems.append(f"{loc}: id: must be text or a number (got {type(rid).__name__})")
        else:
            rid = str(rid).strip()
            if rid in seen:
                problems.append(f"{loc}: id: duplicate id {rid!r} (first at {seen[rid]})")
            seen.setdefault(rid, where)
        text = rec.get("text")
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{loc}: text: missing or empty")
        time = event = None
        if require_outcome or rec.get("time") is not None:
            time = _number(rec.get("time"))
            if time is None:
                problems.append(f"{loc}: time: not a number ({_show(rec.get('time'))})")
            elif time < 0:
                problems.append(f"{loc}: time: negative ({time:g})")
        if require_outcome or rec.get("event") is not None:
            ev = rec.get("event")
            if isinstance(ev, str):
                ev = ev.strip()
            if ev in (0, 1, "0", "1") and not isinstance(ev, bool):
                event = int(ev)
            else:
                problems.append(f"{loc}: event: must be 0 or 1 (got {_show(ev)})")
        labels: dict[str, Any] = {}
        metadata = {k: _plain(v) for k, v in flat_labels.items() if k not in schema.fields and k not in (labels_obj or {})}
        for name, v in flat_labels.items():
            if name not in schema.fields:
                if name in (labels_obj or {}):
                    problems.append(f"{loc}: {name}: label of unknown field (schema {schema.name} v{schema.version})")
                continue
            value, problem = _label(schema, name, v)
            if problem:
                problems.append(f"{loc}: {name}: {problem}")
            labels[name] = value
        records.append({"id": rid, "text": text, "time": time, "event": event,
                        "labels": {n: labels.get(n) for n in schema.names},
                        "labelled": sorted(n for n, v in flat_labels.items() if n in schema.fields and not _blank(v)),
                        "metadata": metadata})
    if not records and not problems:
        problems.append(f"{path}: file: no records")
    if problems:
        raise UserDataError(problems)
    return records
