"""Plumbing only stage modules need: the command line that dvc.yaml's `cmd` gives each stage, its typed params
from params.yaml, and a one-line stage error.

Every stage is `main(cfg, paths)`: `cfg` its params section (survlm.config), `paths` a frozen dataclass of the
files and folders it reads and writes, each given on the command line by dvc.yaml (the one place paths live).
`report`, which has no params section, is `main(paths)`."""
from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import field, fields
from pathlib import Path
from typing import Callable, Iterator

from ..config import ConfigError, load_config


def fail(message: str, code: int = 1) -> None:
    """Stage-level error: the message only (already `file:line: field: problem` shaped), no traceback."""
    print(message, file=sys.stderr)
    raise SystemExit(code)


@contextlib.contextmanager
def failing_on(*errors: type[Exception]) -> Iterator[None]:
    """Inside the block, an error of these kinds (whose messages are one line naming the file) stops the stage."""
    try:
        yield
    except errors as exc:
        fail(str(exc))


def stage_params(section: str):
    """The stage's typed params (survlm.config); a section that does not fit them stops the stage with one line
    naming the section and key."""
    try:
        return load_config(section)
    except ConfigError as exc:
        fail(str(exc))


def path_arg(help: str):
    """A field of a stage's paths: required on the command line as `--name` (underscores as dashes)."""
    return field(metadata={"help": help})


def parse_paths(paths_cls: type, description: str | None, argv: list[str] | None = None):
    """`paths_cls` filled from the command line, one required `--option` per field."""
    ap = argparse.ArgumentParser(description=description)
    for f in fields(paths_cls):
        ap.add_argument("--" + f.name.replace("_", "-"), required=True, type=Path, help=f.metadata["help"])
    return paths_cls(**vars(ap.parse_args(argv)))


def run_stage(main: Callable, section: str, paths_cls: type, argv: list[str] | None = None,
              errors: tuple[type[Exception], ...] = ()) -> None:
    """The stage's entry point: its paths from the command line, then `main(cfg, paths)` with params.yaml's
    `section` (paths first, so that `--help` needs no params.yaml). An error of the kinds in `errors` (one-line
    messages, such as a server that cannot be reached) stops the stage with its message alone."""
    paths = parse_paths(paths_cls, sys.modules[main.__module__].__doc__, argv)
    cfg = stage_params(section)
    with failing_on(*errors):
        main(cfg, paths)
