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


def source_digest(root: Path = Path(__file__).parent) -> str:
    """The source files under `root`, survlm's own package by default (code and bundled schemas): a training run
    recorded under other code is not resumed, since its checkpoints may have learnt from other tokens or another
    loss."""
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix in {".py", ".yaml", ".json"} and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(root)).encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()[:16]
