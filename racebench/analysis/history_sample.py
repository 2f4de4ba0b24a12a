"""A compact picture of a trial's history for the reports' Jepsen-style plots.

The result file cannot hold every operation (a 10 s run on Redis makes ~100k), so it keeps:
- `ops`: at most MAX_SAMPLED_OPS operations as [start ms, latency ms, outcome index]. Every
  operation that did not end `ok` is kept (up to half the cap, evenly spread), since those
  are what a reader looks for; the `ok` ones fill the rest, evenly spread over the run.
- `completions`: how many operations ended in each outcome per time bucket, counted over the
  whole history (not the sample), so throughput over time is exact.

Times are ms since the run's start (the same origin as faults and the critical-section
timeline). Built from the recorded history after the run, never in the clients' loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from racebench.history import OUTCOME_NAMES, Outcome, RunHistory

MAX_SAMPLED_OPS = 1000
MAX_BUCKETS = 200
MIN_BUCKETS = 24
# Buckets with ~8 completions each on average: fewer, and the line is mostly counting noise.
_COMPLETIONS_PER_BUCKET = 8
_BUCKET_STEPS_MS = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)


def _evenly(indices: np.ndarray, count: int) -> np.ndarray:
    """`count` of `indices`, evenly spread (all of them when there are no more)."""
    if len(indices) <= count:
        return indices
    return indices[np.linspace(0, len(indices) - 1, count).round().astype(np.int64)]


def bucket_ms(duration_ms: float, operations: int) -> int:
    """The smallest round bucket width giving at most ~operations/8 buckets (between
    MIN_BUCKETS and MAX_BUCKETS)."""
    wanted = min(MAX_BUCKETS, max(MIN_BUCKETS, operations // _COMPLETIONS_PER_BUCKET))
    return next((b for b in _BUCKET_STEPS_MS if duration_ms / b <= wanted), 60000)


def sample_history(history: RunHistory, t0_ns: int) -> dict[str, Any] | None:
    """The sampled operations and per-bucket completions of one trial (None if it has none).

    Written to hold little beside the history (1M operations: ~25 MB at its peak): columns
    are read in place and only the kept operations become floats.
    """
    records = history.records
    if not len(records):
        return None
    outcome = records["outcome"]
    order = np.argsort(records["start"], kind="stable")
    ordered_ok = outcome[order] == Outcome.OK
    kept_not_ok = _evenly(order[~ordered_ok], MAX_SAMPLED_OPS // 2)
    ok = order[ordered_ok]
    del order, ordered_ok
    kept = np.sort(np.concatenate([kept_not_ok, _evenly(ok, MAX_SAMPLED_OPS - len(kept_not_ok))]))
    del ok
    start_ms = (records["start"][kept] - t0_ns) / 1e6
    kept_order = np.argsort(start_ms, kind="stable")
    kept, start_ms = kept[kept_order], start_ms[kept_order]
    latency_ms = (records["end"][kept] - records["start"][kept]) / 1e6
    ops = [
        [round(float(s), 2), round(float(lat), 3), int(o)]
        for s, lat, o in zip(start_ms, latency_ms, outcome[kept], strict=True)
    ]
    end = records["end"]
    width = bucket_ms(float(end.max() - t0_ns) / 1e6, len(records))
    # Bucket of each completion, from integer nanoseconds (no float copy of the column).
    bucket = np.maximum(end - t0_ns, 0) // (width * 1_000_000)
    buckets = int(bucket.max()) + 1
    completions = {}
    for o in Outcome:
        mine = outcome == o
        if mine.any():
            counts = np.bincount(bucket[mine], minlength=buckets)
            completions[OUTCOME_NAMES[o]] = counts.astype(int).tolist()
    return {
        "outcomes": [OUTCOME_NAMES[o] for o in Outcome],
        "total_ops": len(records),
        "ops": ops,
        "bucket_ms": width,
        "completions": completions,
    }
