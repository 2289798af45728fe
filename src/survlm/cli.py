"""`survlm` command line: check a notes file, print a schema's prompt, extract covariates from new notes."""
from __future__ import annotations

import argparse
import json
import sys

from .data.userfile import UserDataError, load_user_records
from .schema import DEFAULT_SCHEMA, SchemaError, load_schema, system_prompt, target_json_schema


def _validate(args) -> int:
    try:
        schema = load_schema(args.schema)
        records = load_user_records(args.file, schema)
    except (SchemaError, UserDataError) as exc:
        print(exc, file=sys.stderr)
        return 1
    labelled = sum(bool(r["labelled"]) for r in records)
    print(f"{args.file}: {len(records)} records OK ({labelled} with labels; schema {schema.name} v{schema.version})")
    return 0


def _schema(args) -> int:
    try:
        schema = load_schema(args.schema)
    except SchemaError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps(target_json_schema(schema), indent=2) if args.json_schema else system_prompt(schema))
    return 0


def _extract(args) -> int:
    """Notes file -> one CSV row per note: canonical values, per-field status (and evidence with --evidence)."""
    import csv
    import os
    from collections import Counter
    from pathlib import Path

    try:
        schema = load_schema(args.schema)
        records = load_user_records(args.notes, schema, require_outcome=False)
    except (SchemaError, UserDataError) as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.fields:
        wanted = [f.strip() for f in args.fields.split(",") if f.strip()]
        unknown = [f for f in wanted if f not in schema.names]
        if unknown:
            print(f"--fields: not in schema {schema.name}: {', '.join(unknown)}", file=sys.stderr)
            return 1
        schema = schema.subset(wanted)
    prompt_file = Path(args.prompt_file)
    if prompt_file.is_file():  # the exact instruction the adapter was trained with
        system = json.loads(prompt_file.read_text(encoding="utf-8"))["system_prompt"]
    else:
        system = system_prompt(load_schema(args.schema), args.prompt)
    adapter = None if args.adapter in (None, "none") else Path(args.adapter)
    served = adapter.name if adapter is not None else None   # openai: the server's --lora-modules name
    if adapter is not None and args.backend != "openai" and not (adapter / "adapter_config.json").is_file():
        print(f"{adapter}: no adapter_config.json (train one with `dvc repro`, or pass --adapter none)",
              file=sys.stderr)
        return 1
    from .modeling.backends import Decoding, make_backend
    from .modeling.extractor import Task, read_rows, run_tasks

    out = Path(args.out)
    raw = out.with_name(out.name + ".predictions.jsonl")  # resumable record of every answer
    engine = {"max_model_len": args.max_model_len, "batch_size": args.batch_size}
    if args.backend == "openai":
        engine.update(openai_base_url=args.openai_url, openai_model=args.openai_model)
    backend = make_backend(args.backend, args.base, {served: adapter} if adapter else {}, schema, engine)
    try:
        run_tasks(backend, [Task("extract", served,
                                 [{"id": r["id"], "note": r["text"]} for r in records], raw)],
                  schema, system, Decoding(max_new_tokens=args.max_new_tokens, constrained=True),
                  batch_size=args.batch_size, progress=not args.quiet)
    finally:
        backend.close()
    rows = {row["id"]: row for row in read_rows(raw)}
    statuses: Counter = Counter()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        cols = ["id"] + schema.names + [f"{n}_status" for n in schema.names]
        cols += [f"{n}_evidence" for n in schema.names] if args.evidence else []
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        for r in records:
            fields = rows[r["id"]]["fields"]
            line = {"id": r["id"]}
            for name in schema.names:
                f = fields[name]
                statuses[f["status"]] += 1
                line[name] = f.get("value") if f["status"] == "ok" else None
                line[f"{name}_status"] = f["status"]
                if args.evidence:
                    written = f.get("written") if isinstance(f.get("written"), dict) else {}
                    line[f"{name}_evidence"] = written.get("evidence")
            writer.writerow(line)
    tmp.replace(out)
    if args.review_html:  # opt-in: the page shows note text
        from .review import write_review_html

        write_review_html(args.review_html, records, rows, schema.names)
    print(f"{out}: {len(records)} notes x {len(schema.names)} fields; statuses: "
          + ", ".join(f"{k} {v}" for k, v in statuses.most_common()))
    return 0


def _export(args) -> int:
    """Faithful merge of a QLoRA adapter (dequantized NF4 base + LoRA), with the logit comparison as proof."""
    from pathlib import Path

    from .modeling.export import ROUTES, adapter_quantization, compare_routes, export_merged
    from .modeling.loading import compute_dtype, load_tokenizer, pick_device
    from .stages.common import first_records, write_json

    adapter, base = Path(args.adapter), Path(args.base)
    if not (adapter / "adapter_config.json").is_file():
        print(f"{adapter}: no adapter_config.json", file=sys.stderr)
        return 1
    device = pick_device()
    if args.dtype == "auto":
        # a bf16 copy of a model that ran in fp32 is not the model that was checked (SmolLM2 QLoRA on CPU:
        # max |logit diff| 0.63 and 1 of 4 greedy answers changed)
        args.dtype = str(compute_dtype(device)).removeprefix("torch.")
    quantization = args.quantization or adapter_quantization(adapter)
    tok = load_tokenizer(base)
    rows = first_records(Path(args.prepared) / "val.jsonl", args.notes)
    prompts = [tok.apply_chat_template(r["messages"][:2], tokenize=False, add_generation_prompt=True) for r in rows]
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
    e.add_argument("--prompt-file", default="data/prepared/prompt.json",
                   help="prompt.json written by prepare (the adapter's training instruction)")
    e.add_argument("--prompt", default="brief", choices=["brief", "full"], help="used when --prompt-file is absent")
    e.add_argument("--batch-size", type=int, default=32, help="notes per generate call (openai: concurrency)")
    e.add_argument("--max-new-tokens", type=int, default=640)
    e.add_argument("--max-model-len", type=int, default=4096)
    e.add_argument("--openai-url", default="http://localhost:8000/v1")
    e.add_argument("--openai-model", default=None, help="served base model name (openai backend)")
    e.add_argument("--evidence", action="store_true", help="add <field>_evidence columns (text copied from notes)")
    e.add_argument("--review-html", metavar="FILE", help="also write an evidence review page (contains note text)")
    e.add_argument("--quiet", action="store_true")
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
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
