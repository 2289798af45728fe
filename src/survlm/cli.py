"""`survlm` command line: checks a researcher can run before committing to a pipeline run."""
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
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
