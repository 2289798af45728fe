"""The renderer's data types and seeded helpers: mentions, rendered notes, day limits."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from .. import vocab

# A note covers days 1..n_days: at least a day before and after each field's day (Field.day; 3 in the bundled
# schema), which plan_days checks.
MIN_DAYS, MAX_DAYS = 4, 30
MAX_FILLER_PER_DAY = len(vocab.FILLER)


class RenderError(ValueError):
    pass


@dataclass
class Mention:
    field: str
    kind: str                 # "day" (hospital-day value), "static", "distractor"
    day: int | None           # hospital day (1 = admission day); 0 = before admission
    value: str                # as written
    unit: str | None          # as written (None when no unit was written)
    canonical: Any            # what survlm.units makes of (value, unit)
    start: int = 0
    end: int = 0
    text: str = ""            # the surface span (note[start:end]); dropped from stored metadata


@dataclass
class RenderedNote:
    text: str
    style: str
    labels: dict[str, Any]
    target: dict[str, Any]
    mentions: list[Mention]
    admission_date: str
    n_days: int
    filler_per_day: int
    source_out_of_range: list[str] = field(default_factory=list)

    MENTION_COLUMNS = ("field", "kind", "day", "value", "unit", "canonical", "start", "end")

    def metadata(self) -> dict:
        """Provenance without note text: mentions as rows of MENTION_COLUMNS (offsets point into the note)."""
        rows = [[getattr(m, c) for c in self.MENTION_COLUMNS] for m in self.mentions]
        return {"style": self.style, "admission_date": self.admission_date, "n_days": self.n_days,
                "filler_per_day": self.filler_per_day, "source_out_of_range": self.source_out_of_range,
                "mention_columns": list(self.MENTION_COLUMNS), "mentions": rows}


def _rng(seed: int, pid: Any, *purpose: Any) -> random.Random:
    return random.Random(":".join(str(p) for p in (seed, pid, *purpose)))


def _fmt(x: float, decimals: int) -> str:
    return f"{x:.{decimals}f}" if decimals > 0 else str(int(round(x)))


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))
