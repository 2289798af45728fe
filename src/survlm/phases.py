"""Where a stage's wall time goes: named phases timed in order and written with the stage's metrics
(`phase_s`), so a slow run says which part was slow without a profiler. `startup` is the time from the process's
start to the clock's making: interpreter and imports."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator


def process_age_s() -> float | None:
    """Seconds since this process started (Linux's /proc), or None where that cannot be read (or reads as
    negative: a container may show the host's uptime beside its own start times)."""
    try:
        # field 22 of /proc/self/stat, counted after the parenthesised command name (which may hold spaces)
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return round(age, 2) if age >= 0 else None


class Phases:
    """Wall seconds per named phase; a phase timed twice adds up. `as_dict` adds `other`: the time since the
    clock was made that no phase covers (lazy imports, checks, writing outputs)."""

    def __init__(self, startup: bool = True):
        self._t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}
        if startup and (age := process_age_s()) is not None:
            self.seconds["startup"] = age

    @contextlib.contextmanager
    def time(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)

    def as_dict(self) -> dict[str, float]:
        timed = sum(v for k, v in self.seconds.items() if k != "startup")
        return {**self.seconds, "other": round(max(time.perf_counter() - self._t0 - timed, 0.0), 3)}
