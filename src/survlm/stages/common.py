"""Plumbing only stage modules need: their typed params from params.yaml and a one-line stage error."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

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
