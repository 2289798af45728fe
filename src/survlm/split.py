"""Patient-level, event-stratified, seeded assignment to splits."""
from __future__ import annotations

import random
from typing import Sequence

SPLITS = ("train", "val", "pairs", "test")


def assign_splits(ids: Sequence[str], events: Sequence[int], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """id -> split. Within each event stratum ids are shuffled with `seed` and cut by `fractions`."""
    unknown = set(fractions) - set(SPLITS)
    if unknown or abs(sum(fractions.values()) - 1.0) > 1e-6 or any(v < 0 for v in fractions.values()):
        raise ValueError(f"split fractions must use {', '.join(SPLITS)} and sum to 1 (got {fractions})")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    out: dict[str, str] = {}
    for event in sorted(set(events)):
        stratum = sorted(i for i, e in zip(ids, events) if e == event)
        random.Random(f"{seed}:split:{event}").shuffle(stratum)
        start = 0
        for k, name in enumerate(SPLITS):
            n = round(fractions.get(name, 0.0) * len(stratum)) if k < len(SPLITS) - 1 else len(stratum) - start
            n = min(n, len(stratum) - start)
            for i in stratum[start:start + n]:
                out[i] = name
            start += n
    return out


def record_order(ids: Sequence[str], seed: int) -> list[str]:
    """The order a split file is written in: seeded and random, so that the first N records of any split are a
    random sample of it. Stages take heads (`sft.max_train_notes`, `select_ckpt.val_notes`, `infer.test_notes`,
    ...), and a source's own order is rarely random: SUPPORT2's rows follow its study phases, and glucose, BUN
    and urine output are missing for every one of its first ~800 patients."""
    order = sorted(ids)
    random.Random(f"{seed}:order").shuffle(order)
    return order
