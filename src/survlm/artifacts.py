"""The project's files: atomic outputs, JSON/JSONL reading and writing, and the prepared records' layout
(prompt.json, render_meta.jsonl, the chat records' note). Stages, modeling, the CLI and scripts share them."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, another user's
        return True
    return True


def remove_stale_temps(final: Path) -> None:
    """Temp siblings `.NAME.tmp-PID` of `final` left by a process that was killed (kill -9, power loss)."""
    for tmp in final.parent.glob(f".{final.name}.tmp-*") if final.parent.is_dir() else []:
        pid = tmp.name.rsplit("-", 1)[1]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def scratch_dir(final: str | Path) -> Iterator[Path]:
    """A work directory `.NAME.tmp-PID` beside `final`, removed when the block ends, however it ends; one left
    by a killed process is removed by the next run."""
    final = Path(final)
    remove_stale_temps(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Write into a sibling temp dir; it replaces `final` only if the block succeeds."""
    final = Path(final)
    with scratch_dir(final) as tmp:
        yield tmp
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)


def write_text(path: str | Path, text: str) -> None:
    """The whole file or none: written beside `path`, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def load_prompt(prepared: str | Path):
    """(schema, system prompt) exactly as prepare wrote them for training."""
    from .schema import load_schema

    info = json.loads((Path(prepared) / "prompt.json").read_text(encoding="utf-8"))
    return load_schema(info["schema_path"]), info["system_prompt"]


def note_of(record: dict) -> str:
    return record["messages"][1]["content"]


def render_meta(prepared: str | Path, ids: set[str]) -> dict[str, dict]:
    path = Path(prepared) / "render_meta.jsonl"
    if not path.is_file():
        return {}
    return {m["id"]: m for m in read_jsonl(path) if m["id"] in ids}


def first_records(path: str | Path, limit: int | None) -> list[dict]:
    rows = []
    for row in read_jsonl(path):
        if limit is not None and len(rows) >= int(limit):
            break
        rows.append(row)
    return rows


def labelled_records(path: str | Path, limit: int | None) -> list[dict]:
    """The first `limit` records that carry a label: a user's unlabelled notes cannot score a model."""
    rows = []
    for row in read_jsonl(path):
        if limit is not None and len(rows) >= int(limit):
            break
        if row.get("labels"):
            rows.append(row)
    return rows


def trained_quantization(adapter_dir: str | Path) -> str | None:
    """How the base was loaded when this adapter was trained (`nf4` or `none`), from the run record that the
    sft (`run.json`, beside its checkpoints), select_ckpt (`selected.json`) and dpo (`dpo_run.json`) stages
    write; None for an adapter with no record."""
    adapter_dir = Path(adapter_dir)
    for record in (adapter_dir / "dpo_run.json", adapter_dir / "selected.json", adapter_dir / "run.json",
                   adapter_dir.parent / "run.json"):
        if record.is_file():
            value = json.loads(record.read_text()).get("quantization")
            if value in ("nf4", "none"):
                return value
    return None
