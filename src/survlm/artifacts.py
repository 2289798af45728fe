"""The project's files: atomic outputs, JSON/JSONL reading and writing, the prepared records' layout (plain
records, prompt.json, render_meta.jsonl) and the run record beside every adapter (adapter_run.json). Stages,
modeling, the CLI, benchmarks and scripts read and write them only through these functions."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

from .hashing import text_digest


class ArtifactError(ValueError):
    """A project file that does not fit what reads it: one line naming the file (and the record or field)."""


class MissingRunRecord(ArtifactError):
    """An adapter without adapter_run.json: trained elsewhere, or by an older version of the pipeline."""


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


# ---------------------------------------------------------------------------------------------------------------
# Prepared records: `<split>.jsonl` in the prepared dir, one plain record a line. No chat turns and no system
# prompt: prompt.json holds that once, and only `chat_prompt` / `chat_messages` turn a record into chat turns.
RECORD_LAYOUT = "plain-v1"     # prompt.json's `records`: the layout of the records beside it
PROMPT_FILE = "prompt.json"


def prepared_record(*, id: str, split: str, style: str, text: str, labels: dict, target: str | None, time: float,
                    event: int, n_tokens: int, **extra) -> dict:
    """One prepared record. `text` is the note; `labels` the gold values by field (a field a user left unlabelled is
    absent); `target` the gold answer as the compact JSON the model is trained to write (None: the record has
    none to train on); `time`, `event` the survival outcome; `n_tokens` the note's length in base-model tokens.
    `extra`: a user record's `loss_mask` (the target's placeholder character spans) and `untrained` (their
    fields), a further training rendering's `patient`."""
    return {"id": id, "split": split, "style": style, "text": text, "labels": labels, "target": target,
            "time": time, "event": event, "n_tokens": n_tokens, **extra}


def _not_plain(record: dict, key: str) -> ArtifactError:
    return ArtifactError(f"record {record.get('id')}: no {key!r}: not a prepared record of this layout "
                         f"({RECORD_LAYOUT}; chat turns are an older prepare's); rerun `dvc repro prepare`")


def note_of(record: dict) -> str:
    if "text" not in record:
        raise _not_plain(record, "text")
    return record["text"]


def target_of(record: dict) -> str | None:
    """The gold answer the model is trained to write; None for a record without one."""
    if "target" not in record:
        raise _not_plain(record, "target")
    return record["target"]


def has_target(record: dict) -> bool:
    return target_of(record) is not None


def chat_prompt(system: str, record: dict) -> list[dict]:
    """The turns a model answers a prepared record from: the system prompt, then the note. SFT trains on these,
    and they are the preference pairs' DPO prompt."""
    return [{"role": "system", "content": system}, {"role": "user", "content": note_of(record)}]


def chat_messages(system: str, record: dict) -> list[dict]:
    """The SFT example of a record: `chat_prompt`, then the gold answer as the assistant turn."""
    target = target_of(record)
    if target is None:
        raise ArtifactError(f"record {record.get('id')}: no target to train on")
    return chat_prompt(system, record) + [{"role": "assistant", "content": target}]


def write_prompt(prepared: str | Path, system: str, schema, schema_path: str) -> None:
    """prompt.json: the system prompt every record is answered under, its digest, and the schema's."""
    from .schema import target_json_schema

    write_json(Path(prepared) / PROMPT_FILE, {
        "records": RECORD_LAYOUT, "system_prompt": system, "prompt_digest": text_digest(system),
        "json_schema": target_json_schema(schema), "schema_path": schema_path,
        "schema": {"name": schema.name, "version": schema.version, "digest": schema.digest}})


def read_prompt_file(path: str | Path) -> dict:
    """A prompt.json as prepare wrote it: for records of this layout, its system prompt matching its digest."""
    path = Path(path)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    except ValueError:   # undecodable bytes too
        raise ArtifactError(f"{path}: not a prompt.json (not JSON)") from None
    system = info.get("system_prompt") if isinstance(info, dict) else None
    if not isinstance(system, str) or not system.strip():
        raise ArtifactError(f"{path}: not a prompt.json (JSON with a non-empty 'system_prompt' text)")
    if info.get("records") != RECORD_LAYOUT or not isinstance(info.get("schema"), dict):
        raise ArtifactError(f"{path}: written by an older prepare (records of another layout than {RECORD_LAYOUT}); "
                            "rerun `dvc repro prepare`")
    if info.get("prompt_digest") != text_digest(system):
        raise ArtifactError(f"{path}: system_prompt does not match its prompt_digest (edited after prepare?); "
                            "rerun `dvc repro prepare`")
    return info


def check_prompt_schema(path: str | Path, info: dict, schema, schema_source: str) -> None:
    """The schema loaded from `schema_source` is the one the prompt.json at `path` was prepared with."""
    if info["schema"].get("digest") != schema.digest:
        raise ArtifactError(f"{path}: prepared with schema digest {info['schema'].get('digest')}, but {schema_source} "
                            f"now has digest {schema.digest}; rerun `dvc repro prepare` (or use the schema it names)")


def load_prompt(prepared: str | Path):
    """(schema, system prompt) exactly as prepare wrote them for training, the schema checked against its digest."""
    from .schema import SchemaError, load_schema

    path = Path(prepared) / PROMPT_FILE
    info = read_prompt_file(path)
    try:
        schema = load_schema(info["schema_path"])
    except SchemaError as exc:   # its message names the schema file
        raise ArtifactError(str(exc)) from None
    check_prompt_schema(path, info, schema, info["schema_path"])
    return schema, info["system_prompt"]


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


# ---------------------------------------------------------------------------------------------------------------
# The run record beside every adapter that leaves a stage (each SFT and DPO checkpoint, models/sft_best,
# models/dpo): the one account of how it was trained, which whatever serves, continues or merges it reads.
ADAPTER_RUN_FILE = "adapter_run.json"
TRAINED_QUANTIZATIONS = ("nf4", "none")   # the base as loaded in training: NF4 (QLoRA) or full precision (LoRA)
_RUN_KEYS = ("base_digest", "quantization", "prompt_digest", "schema_digest", "trained")


def adapter_run(*, base_digest: str, quantization: str, system: str, schema, stage: str, step: int) -> dict:
    """The record of an adapter trained from scratch: the digest of the base model's files and how the base was
    loaded, the digests of the system prompt and schema it learned to answer, and its training (stage, optimizer
    step, and `source`: the training record of the adapter it started from, None here)."""
    return {"base_digest": base_digest, "quantization": quantization, "prompt_digest": text_digest(system),
            "schema_digest": schema.digest, "trained": {"stage": stage, "step": step, "source": None}}


def continued_run(source: dict, stage: str, step: int) -> dict:
    """The record of an adapter trained further from one whose record is `source`: same base, prompt and schema."""
    return {**source, "trained": {"stage": stage, "step": step, "source": source["trained"]}}


def write_adapter_run(adapter_dir: str | Path, run: dict) -> None:
    write_json(Path(adapter_dir) / ADAPTER_RUN_FILE, run)


def read_adapter_run(adapter_dir: str | Path) -> dict:
    """The adapter's run record; a missing or malformed one is an ArtifactError naming the file."""
    path = Path(adapter_dir) / ADAPTER_RUN_FILE
    if not path.is_file():
        raise MissingRunRecord(f"{path}: missing: no record of how this adapter was trained (base, quantization, "
                               "prompt, schema)")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: not readable as JSON ({type(exc).__name__})") from None
    missing = [k for k in _RUN_KEYS if not isinstance(run, dict) or k not in run]
    if missing:
        raise ArtifactError(f"{path}: {missing[0]}: missing")
    if run["quantization"] not in TRAINED_QUANTIZATIONS:
        raise ArtifactError(f"{path}: quantization: must be one of {', '.join(TRAINED_QUANTIZATIONS)} "
                            f"(got {run['quantization']!r})")
    return run


def check_adapter_run(adapter_dir: str | Path, *, base_digest: str | None, base_source: str, system: str, schema,
                      prompt_source: str) -> dict:
    """The adapter's run record, checked against what it is about to be served or trained further with: the base
    model's files (`base_digest`, from `base_source`; None: a base not on this machine, unchecked), and the system
    prompt and schema (from `prompt_source`). A difference is an ArtifactError naming the record and the key."""
    run = read_adapter_run(adapter_dir)
    for key, now, source in (("base_digest", base_digest, base_source),
                             ("prompt_digest", text_digest(system), prompt_source),
                             ("schema_digest", schema.digest, prompt_source)):
        if now is not None and run[key] != now:
            raise ArtifactError(f"{Path(adapter_dir) / ADAPTER_RUN_FILE}: {key}: the adapter was trained with "
                                f"{run[key]}, but {source} has {now}")
    return run


def check_adapter_runs(adapters: dict[str, str | Path | None], base_dir: str | Path, base_digest: str | None,
                       prepared: str | Path, schema, system: str) -> dict[str, dict]:
    """`check_adapter_run` for each adapter (None = the base itself, which has no record) against the base it is
    served on and the prepared prompt and schema."""
    return {name: check_adapter_run(path, base_digest=base_digest, base_source=str(base_dir), system=system,
                                    schema=schema, prompt_source=str(Path(prepared) / PROMPT_FILE))
            for name, path in adapters.items() if path is not None}


def copy_adapter(src: str | Path, dst: str | Path) -> None:
    """An adapter's weights, config and run record (not a checkpoint's optimizer or trainer state)."""
    for f in Path(src).iterdir():
        if f.is_file() and (f.name.startswith("adapter_") or f.name == "README.md"):
            shutil.copy2(f, Path(dst) / f.name)
