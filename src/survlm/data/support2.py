"""The real SUPPORT2 cohort (9,105 patients) as shipped inside the pinned `SurvSet` package.

A pickle can run arbitrary code when loaded, so its SHA-256 is checked before unpickling.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import pickle
from pathlib import Path

from ..hashing import sha256_file

SURVSET_VERSION = "0.2.11"
PICKLE = "resources/pickles/support2.pickle"
PICKLE_SHA256 = "07d0545efecdc168ecefc7f43bcf1b1f58d9dd9b28f38213ac176d2b7f3ab3bb"


class CohortError(RuntimeError):
    pass


def support2_pickle_path() -> Path:
    spec = importlib.util.find_spec("SurvSet")
    if spec is None or spec.origin is None:
        raise CohortError(f"SUPPORT2 needs the package survset=={SURVSET_VERSION} (pip install 'survset=={SURVSET_VERSION}')")
    return Path(spec.origin).parent / PICKLE


def load_support2(path: Path | None = None, expected_sha256: str = PICKLE_SHA256) -> list[dict]:
    """One dict per patient: survset's column names plus `id`, `time` (days) and `event` (0/1)."""
    if path is None:
        installed = importlib.metadata.version("survset")
        if installed != SURVSET_VERSION:
            raise CohortError(f"survset {installed} is installed; survlm is pinned to {SURVSET_VERSION}")
        path = support2_pickle_path()
    digest = sha256_file(path)
    if digest != expected_sha256:
        raise CohortError(f"{path}: SHA-256 {digest} does not match the pinned {expected_sha256}; refusing to unpickle")
    with open(path, "rb") as fh:
        frame = pickle.load(fh)  # noqa: S301 - checked against the pinned digest above
    records = []
    for row in frame.to_dict(orient="records"):
        rec = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        rec["id"] = f"support2-{int(rec['pid']):05d}"
        rec["time"] = float(rec["time"])
        rec["event"] = int(rec["event"])
        records.append(rec)
    return records
