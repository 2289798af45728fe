"""Digests, for anything that pins or records the exact bytes it read (the cohort pickle, a base model, a prompt)."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def text_digest(text: str) -> str:
    """A text's digest (a system prompt's), as short as a schema's."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
