"""What `prepare` reports about the notes it made: splits, event rates, styles, note length, how often each
field is null or labelled, how tempting the trap mentions are, and where a user's labels were found."""
from __future__ import annotations

import statistics
from collections import Counter, defaultdict

from .evidence import STATUSES
from .metrics import rate


def cohort_metrics(records: list[dict], schema, params, info: dict, splits: tuple[str, ...]) -> dict:
    """The summary of one prepared cohort, one record per patient. `params`: the prepare config; `info`: the
    styles used and, for a user's file, the policy for labels the note does not show (`unlocated`)."""
    by_split = Counter(r["split"] for r in records)
    tokens = sorted(r["n_tokens"] for r in records)
    styles = defaultdict(Counter)
    for r in records:
        styles[r["split"]][r["style"]] += 1
    traps = [t for r in records for t in r["traps"].values()]
    out_of_range = Counter(f for r in records for f in r["meta"].get("source_out_of_range", []))

    def pct(q: float) -> int:
        return tokens[min(len(tokens) - 1, int(q * len(tokens)))]

    return {
        "source": params.source,
        "schema": {"name": schema.name, "version": schema.version, "digest": schema.digest},
        "patients": len(records),
        "splits": {s: by_split.get(s, 0) for s in splits},
        "event_rate": {s: round(statistics.fmean([r["event"] for r in records if r["split"] == s]), 4)
                       for s in splits if by_split.get(s)},
        "styles": {s: dict(sorted(c.items())) for s, c in sorted(styles.items())},
        "heldout_styles": info["heldout_styles"],
        "note_tokens": {"budget": params.note_tokens, "mean": round(statistics.fmean(tokens), 1),
                        "p50": pct(0.5), "p95": pct(0.95), "max": tokens[-1],
                        "over_budget": sum(t > params.note_tokens for t in tokens)},
        # over the notes that label the field; an unlabelled field is unknown, not null
        "null_rate": {f.name: rate(sum(r["labels"][f.name] is None for r in records if f.name in r["labels"]),
                                   sum(f.name in r["labels"] for r in records)) for f in schema},
        "labelled_rate": {f.name: round(sum(f.name in r["labels"] for r in records) / len(records), 4)
                          for f in schema},
        "first_mention_wrong_rate": round(statistics.fmean([t["first_wrong"] for t in traps]), 4) if traps else None,
        "last_mention_wrong_rate": round(statistics.fmean([t["last_wrong"] for t in traps]), 4) if traps else None,
        "source_out_of_range": dict(sorted(out_of_range.items())),
        **({"evidence": evidence_metrics(records, schema, info["unlocated"])} if "unlocated" in info else {}),
    }


def evidence_metrics(records: list[dict], schema, policy: str) -> dict:
    """Per field: how many labels were located, null, ambiguous, not found, contradicted."""
    by_field = {f.name: Counter(r["meta"]["status"][f.name] for r in records if f.name in r["meta"]["status"])
                for f in schema}
    return {"unlocated": policy,
            "by_field": {n: {s: c.get(s, 0) for s in STATUSES} for n, c in by_field.items() if c},
            "totals": {s: sum(c.get(s, 0) for c in by_field.values()) for s in STATUSES},
            "records_dropped": sum(r["answer"] is None for r in records),
            "contradicted": [{"id": r["id"], "field": n} for r in records
                             for n, st in r["meta"]["status"].items() if st == "contradicted"]}
