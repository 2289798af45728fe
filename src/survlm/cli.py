"""`survlm` command line: check a notes file, print a schema's prompt, extract covariates from new notes."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .artifacts import ArtifactError
from .data.userfile import UserDataError, load_user_records
from .schema import DEFAULT_SCHEMA, SchemaError, load_schema, system_prompt, target_json_schema

DEFAULT_PROMPT_FILE = "data/prepared/prompt.json"


def _validate(args) -> int:
    try:
        schema = load_schema(args.schema)
        records = load_user_records(args.file, schema)
    except (SchemaError, UserDataError) as exc:
        print(exc, file=sys.stderr)
        return 1
    labelled = sum(bool(r["labelled"]) for r in records)
    print(f"{args.file}: {len(records)} records OK ({labelled} with labels; schema {schema.name} v{schema.version})")
    extra = metadata_columns(records)
    if extra:
        print(f"{args.file}: metadata columns (kept and passed through to `survlm extract`): {', '.join(extra)}")
    if labelled:
        from collections import Counter

        from .evidence import STATUSES, locate

        found = Counter(loc.status for r in records
                        for loc in locate(schema, r["text"], {n: r["labels"][n] for n in r["labelled"]}).fields.values())
        print(f"{args.file}: labels in their notes: " + ", ".join(f"{found.get(s, 0)} {s.replace('_', ' ')}"
                                                                    for s in STATUSES))
    return 0


def metadata_columns(records: list[dict]) -> list[str]:
    """Columns that are neither id/text/time/event nor schema fields, in first-seen order."""
    seen: dict[str, None] = {}
    for r in records:
        seen.update(dict.fromkeys(r.get("metadata", {})))
    return list(seen)


def _schema(args) -> int:
    try:
        schema = load_schema(args.schema)
    except SchemaError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps(target_json_schema(schema), indent=2) if args.json_schema else system_prompt(schema))
    return 0


class _Refused(Exception):
    """A bad option or input for `extract`: one line, exit 1, nothing written."""


def _extract(args) -> int:
    """Notes file -> one CSV row per note: canonical values, per-field status (and evidence with --evidence).

    Everything that can be checked is checked before the model loads; a failed run removes what it created,
    except answers already given, which a rerun of the same command resumes from."""
    out = Path(args.out)
    created: list[Path] = []
    raw = out.with_name(out.name + ".predictions.jsonl")  # resumable record of every answer
    had_raw = raw.exists()
    try:
        return _extract_checked(args, out, raw, created)
    except (_Refused, SchemaError, UserDataError, ArtifactError) as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: answers so far are kept in {raw}; run the same command again to resume"
              if raw.is_file() else "interrupted: nothing was written", file=sys.stderr)
        return 130
    finally:
        _remove_leftovers(out, raw, had_raw, created)


def _remove_leftovers(out, raw, had_raw: bool, created: list) -> None:
    """A failed or interrupted run leaves only answers worth resuming from: no empty answer file, no run record
    without answers, no temp file, no directory it made and left empty."""
    from .artifacts import remove_stale_temps

    if out.parent.is_dir():
        out.with_name(f".{out.name}.tmp-{os.getpid()}").unlink(missing_ok=True)
        remove_stale_temps(out)
        if not had_raw and raw.is_file() and raw.stat().st_size == 0:
            raw.unlink()
        if not raw.exists():
            raw.with_name(raw.name + ".run.json").unlink(missing_ok=True)
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:   # not empty: it holds answers to resume from
            break


def _make_out_dir(out, created: list) -> None:
    """`--out`'s directory, made if missing (and noted, so that a failed run removes it), and writable."""
    import tempfile

    if out.is_dir():
        raise _Refused(f"--out {out}: is a directory; give a file name, e.g. {out / 'covariates.csv'}")
    missing = []
    parent = out.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except OSError as exc:
            raise _Refused(f"--out {out}: cannot create directory {d} ({exc.strerror})") from None
        created.append(d)
    try:
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as exc:
        raise _Refused(f"--out {out}: cannot write in {out.parent} ({exc.strerror})") from None
    for target in (out, out.with_name(out.name + ".predictions.jsonl")):
        if target.is_dir() or (target.exists() and not os.access(target, os.W_OK)):
            raise _Refused(f"--out {out}: {target} is a directory or not writable")


def _prompt(args, schema) -> tuple[str, str]:
    """(system prompt, where it is from): the instruction the adapter was trained with, from a prompt.json
    (`--prompt-file`, else the prepared one where it exists) prepared with this schema, else the schema's own."""
    from .artifacts import check_prompt_schema, read_prompt_file

    path = args.prompt_file or (DEFAULT_PROMPT_FILE if Path(DEFAULT_PROMPT_FILE).is_file() else None)
    if path is None:   # the whole schema's, whatever --fields asks for
        return system_prompt(load_schema(args.schema), args.prompt), f"the schema's --prompt {args.prompt}"
    info = read_prompt_file(path)
    check_prompt_schema(path, info, schema, args.schema)
    return info["system_prompt"], str(path)


def _adapter_run(args, adapter: Path, base: str, schema, system: str, prompt_source: str) -> dict | None:
    """The adapter's run record, checked against the base, prompt and schema it is about to be used with. None for
    an adapter without one (trained elsewhere) when `--quantization` says how its base was loaded."""
    from .artifacts import ADAPTER_RUN_FILE, MissingRunRecord, check_adapter_run
    from .modeling.loading import model_digest

    if args.quantization and not (adapter / ADAPTER_RUN_FILE).is_file():
        return None
    try:
        return check_adapter_run(adapter, base_digest=model_digest(Path(base)), base_source=f"--base {args.base}",
                                 system=system, schema=schema, prompt_source=prompt_source)
    except MissingRunRecord as exc:
        raise _Refused(f"{exc}; for an adapter trained elsewhere, pass --quantization nf4|none") from None


def _extract_checked(args, out, raw, created: list) -> int:
    import csv
    from collections import Counter

    for option, value in (("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens),
                          ("--max-model-len", args.max_model_len)):
        if value < 1:
            raise _Refused(f"{option}: must be at least 1 (got {value})")
    schema = load_schema(args.schema)
    calibration = None
    if args.calibration is not None:
        from .confidence import Calibration

        try:
            calibration = Calibration.from_json(json.loads(Path(args.calibration).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _Refused(f"--calibration {args.calibration}: not a calibration file written by infer "
                           f"({type(exc).__name__})") from None
    if args.fields is not None:
        wanted = [f.strip() for f in args.fields.split(",") if f.strip()]
        if not wanted:
            raise _Refused(f"--fields {args.fields!r}: no field names (give e.g. --fields age,sex)")
        unknown = [f for f in wanted if f not in schema.names]
        if unknown:
            raise _Refused(f"--fields: not in schema {schema.name}: {', '.join(unknown)}")
        if len(set(wanted)) != len(wanted):
            raise _Refused(f"--fields: a field is named twice ({args.fields})")
        schema = schema.subset(wanted)
    records = load_user_records(args.notes, schema, require_outcome=False)
    system, prompt_source = _prompt(args, schema)
    adapter = None if args.adapter in (None, "none") else Path(args.adapter)
    served = adapter.name if adapter is not None else None   # openai: the server's --lora-modules name
    if adapter is not None and args.backend != "openai" and not (adapter / "adapter_config.json").is_file():
        raise _Refused(f"{adapter}: no adapter_config.json (train one with `dvc repro`, or pass --adapter none)")
    from .confidence import abstained_row
    from .modeling.backends import Decoding, OpenAIBackendError, make_backend, resolve_backend
    from .artifacts import read_jsonl
    from .modeling.extractor import ContextTooSmall, Task, run_tasks
    from .modeling.loading import ModelNotFound, local_model

    backend_name = resolve_backend(args.backend)
    try:
        base = local_model(args.base)
    except ModelNotFound as exc:
        raise _Refused(f"--base {exc}") from None
    if adapter is not None and backend_name != "openai":   # an openai server holds its own adapters
        _adapter_run(args, adapter, base, schema, system, prompt_source)
    _make_out_dir(out, created)
    engine = {"max_model_len": args.max_model_len, "batch_size": args.batch_size}
    if backend_name == "openai":
        engine.update(openai_base_url=args.openai_url, openai_model=args.openai_model or args.base)
    elif args.quantization:   # else the engine reads the adapter's run record (engine quantization: auto)
        engine["quantization"] = args.quantization
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()   # the weight loader's bars would interleave with ours, and with errors
    backend = make_backend(backend_name, base, {served: adapter} if adapter else {}, schema, engine)
    try:
        run_tasks(backend, [Task("extract", served,
                                 [{"id": r["id"], "note": r["text"]} for r in records], raw)],
                  schema, system, Decoding(max_new_tokens=args.max_new_tokens, constrained=True),
                  progress=not args.quiet)
    except ContextTooSmall as exc:
        raise _Refused(f"--max-model-len {args.max_model_len}: {exc}") from None
    except OpenAIBackendError as exc:
        raise _Refused(str(exc)) from None
    finally:
        backend.close()
    rows = {row["id"]: row for row in read_jsonl(raw)}
    statuses: Counter = Counter()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        cols = ["id"] + schema.names + [f"{n}_status" for n in schema.names] + [f"{n}_confidence" for n in schema.names]
        cols += [f"{n}_evidence" for n in schema.names] if args.evidence else []
        meta_cols = [c for c in metadata_columns(records) if c not in cols]
        cols[1:1] = meta_cols   # the user's own columns (MRN, note date) right after id
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        for r in records:
            row = answered = rows[r["id"]]
            abstained = set()
            if calibration is not None:
                row = abstained_row(row, calibration)
                abstained = set(row["abstained"])
            fields = row["fields"]
            line = {"id": r["id"], **{c: r.get("metadata", {}).get(c) for c in meta_cols}}
            for name in schema.names:
                f = fields[name]
                # a refused value is empty either way; its status says which check refused it
                status = "abstained" if name in abstained else answered["fields"][name]["status"]
                statuses[status] += 1
                line[name] = f.get("value") if f["status"] == "ok" else None
                line[f"{name}_status"] = status
                line[f"{name}_confidence"] = (row.get("confidence") or {}).get(name)
                if args.evidence:
                    written = f.get("written") if isinstance(f.get("written"), dict) else {}
                    line[f"{name}_evidence"] = written.get("evidence")
            writer.writerow(line)
    tmp.replace(out)
    if args.review_html:  # opt-in: the page shows note text
        from .review import write_review_html

        write_review_html(args.review_html, records, rows, schema.names)
    created.clear()   # a finished run keeps its directories
    print(f"{out}: {len(records)} notes x {len(schema.names)} fields; statuses: "
          + ", ".join(f"{k} {v}" for k, v in statuses.most_common()))
    return 0


def _serve(args) -> int:
    """Start (or with --dry-run print) a vLLM server for the generating stages to share: the engine block of
    --stage's params, the base as the adapters will have been trained on (sft.quantization on this machine)."""
    import shlex

    from .config import ConfigError, load_config
    from .modeling.backends.vllm import server_command
    from .modeling.loading import pick_device, resolve_quantization

    try:
        stage = load_config(args.stage, args.params)
        sft = load_config("sft", args.params)
    except (ConfigError, OSError) as exc:
        print(exc, file=sys.stderr)
        return 1
    engine = stage.report.engine if args.stage == "dpo" else stage.engine
    quantization = args.quantization or resolve_quantization(sft.quantization, pick_device())
    cmd, env = server_command(engine, args.base, quantization, engine.max_lora_rank or sft.lora.r,
                              make=not args.dry_run)
    cmd += args.vllm_args
    print(shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    os.execvpe(cmd[0], cmd, env)


def _export(args) -> int:
    """Faithful merge of a QLoRA adapter (dequantized NF4 base + LoRA), with the logit comparison as proof."""
    from .modeling.export import ROUTES, compare_routes, export_merged
    from .modeling.loading import compute_dtype, load_tokenizer, pick_device
    from .artifacts import PROMPT_FILE, chat_prompt, first_records, load_prompt, write_json

    adapter, base = Path(args.adapter), Path(args.base)
    if not (adapter / "adapter_config.json").is_file():
        print(f"{adapter}: no adapter_config.json", file=sys.stderr)
        return 1
    try:   # merged into the base it was trained on, as it was loaded then: its run record says
        schema, system = load_prompt(args.prepared)
        run = _adapter_run(args, adapter, str(base), schema, system, str(Path(args.prepared) / PROMPT_FILE))
    except (_Refused, ArtifactError) as exc:
        print(exc, file=sys.stderr)
        return 1
    quantization = args.quantization or run["quantization"]
    device = pick_device()
    if args.dtype == "auto":
        # a bf16 copy of a model that ran in fp32 is not the model that was checked (SmolLM2 QLoRA on CPU:
        # max |logit diff| 0.63 and 1 of 4 greedy answers changed)
        args.dtype = str(compute_dtype(device)).removeprefix("torch.")
    tok = load_tokenizer(base)
    rows = first_records(Path(args.prepared) / "val.jsonl", args.notes)
    prompts = [tok.apply_chat_template(chat_prompt(system, r), tokenize=False, add_generation_prompt=True)
               for r in rows]
    export_merged(base, adapter, Path(args.out), device, args.dtype, quantization)
    report = {"adapter": str(adapter), "device": device, "trained_on": quantization,
              "reference": f"{ROUTES[quantization][0]} (base as trained + adapter, not merged)",
              "max_new_tokens": args.max_new_tokens, "exported": {"dir": args.out, "dtype": args.dtype},
              # saved_export: the file written above, reloaded (its dtype's rounding included)
              "routes": compare_routes(base, adapter, prompts, device, args.max_new_tokens, quantization,
                                       exported=Path(args.out))}
    write_json(args.report, report)
    for route, r in report["routes"].items():
        print(f"{route:18s} max |logit diff| {r['max_abs_logit_diff']:.3g}; greedy identical "
              f"{r['greedy_identical']}/{r['prompts']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="survlm", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check a notes file (.jsonl/.csv/.parquet) the way `prepare` will")
    v.add_argument("file")
    v.add_argument("--schema", default=DEFAULT_SCHEMA)
    v.set_defaults(func=_validate)
    s = sub.add_parser("schema", help="print the system prompt (or --json-schema) a schema generates")
    s.add_argument("--schema", default=DEFAULT_SCHEMA)
    s.add_argument("--json-schema", action="store_true")
    s.set_defaults(func=_schema)
    e = sub.add_parser("extract", help="extract covariates from a notes file (.jsonl/.csv/.parquet with id, text)")
    e.add_argument("notes")
    e.add_argument("--adapter", default="models/dpo", help="LoRA adapter dir (unmerged), or `none` for the base")
    e.add_argument("--base", default="models/base")
    e.add_argument("--out", default="covariates.csv")
    e.add_argument("--backend", default="auto", choices=["auto", "vllm", "hf", "openai"])
    e.add_argument("--schema", default=DEFAULT_SCHEMA)
    e.add_argument("--fields", help="comma-separated subset of schema fields")
    e.add_argument("--prompt-file", default=None,
                   help=f"prompt.json written by prepare (the adapter's training instruction; default "
                        f"{DEFAULT_PROMPT_FILE} where it exists, else the schema's --prompt)")
    e.add_argument("--prompt", default="brief", choices=["brief", "full"], help="used when --prompt-file is absent")
    e.add_argument("--batch-size", type=int, default=32, help="notes per generate call (openai: concurrency)")
    e.add_argument("--max-new-tokens", type=int, default=640)
    e.add_argument("--max-model-len", type=int, default=4096)
    e.add_argument("--openai-url", default="http://localhost:8000/v1")
    e.add_argument("--openai-model", default=None, help="served base model name (openai backend)")
    e.add_argument("--evidence", action="store_true", help="add <field>_evidence columns (text copied from notes)")
    e.add_argument("--review-html", metavar="FILE", help="also write an evidence review page (contains note text)")
    e.add_argument("--calibration", metavar="FILE",
                   help="infer's data/predictions/calibration.json for this adapter: <field>_confidence becomes the "
                        "calibrated chance the answer is right, and values below its threshold are written empty "
                        "(status abstained)")
    e.add_argument("--quiet", action="store_true")
    e.add_argument("--quantization", choices=["nf4", "none"], default=None,
                   help="how the adapter's base was loaded in training (default: read from the adapter's run record)")
    e.set_defaults(func=_extract)
    x = sub.add_parser("export", help="merge an adapter into the dequantized NF4 base it was trained on, with proof")
    x.add_argument("--adapter", default="models/dpo")
    x.add_argument("--base", default="models/base")
    x.add_argument("--out", default="models/merged")
    x.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="saved weights; auto: the dtype the adapter computed in (bf16 on CUDA, fp32 on CPU)")
    x.add_argument("--prepared", default="data/prepared")
    x.add_argument("--notes", type=int, default=4, help="validation notes for the logit comparison")
    x.add_argument("--max-new-tokens", type=int, default=64)
    x.add_argument("--quantization", choices=["nf4", "none"], default=None,
                   help="how the adapter's base was loaded in training (default: read from the adapter's run record)")
    x.add_argument("--report", default="metrics/export.json")
    x.set_defaults(func=_export)
    sv = sub.add_parser("serve", help="start a vLLM server that generating stages share (engine.backend openai, "
                                      "openai_load_adapters true): one engine start for the whole pipeline")
    sv.add_argument("--base", default="models/base")
    sv.add_argument("--params", default="params.yaml")
    sv.add_argument("--stage", default="infer", choices=["select_ckpt", "make_pairs", "dpo", "infer"],
                    help="whose engine block sets the server's engine (dpo: dpo.report.engine)")
    sv.add_argument("--quantization", choices=["nf4", "none"], default=None,
                    help="the base the adapters are trained on (default: params sft.quantization on this machine)")
    sv.add_argument("--dry-run", action="store_true", help="print the server's command and exit")
    sv.add_argument("vllm_args", nargs="*", metavar="-- VLLM_FLAG", help="more flags for vLLM's server, after `--`")
    sv.set_defaults(func=_serve)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
