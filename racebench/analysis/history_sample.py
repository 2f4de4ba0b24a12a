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
    """The sampled operations and per-bucket completions of one trial (None if it has none)."""
    records = history.records
    if not len(records):
        return None
    outcome = records["outcome"].astype(np.int64)
    start_ms = (records["start"] - t0_ns) / 1e6
    end_ms = (records["end"] - t0_ns) / 1e6
    order = np.argsort(start_ms, kind="stable")
    not_ok = order[outcome[order] != Outcome.OK]
    kept_not_ok = _evenly(not_ok, MAX_SAMPLED_OPS // 2)
    ok = order[outcome[order] == Outcome.OK]
    kept = np.sort(np.concatenate([kept_not_ok, _evenly(ok, MAX_SAMPLED_OPS - len(kept_not_ok))]))
    kept = kept[np.argsort(start_ms[kept], kind="stable")]
    ops = [
        [round(float(s), 2), round(float(lat), 3), int(o)]
        for s, lat, o in zip(start_ms[kept], (end_ms - start_ms)[kept], outcome[kept], strict=True)
    ]
    width = bucket_ms(float(end_ms.max()), len(records))
    bucket = np.maximum(end_ms, 0) // width
    buckets = int(bucket.max()) + 1
    completions = {
        OUTCOME_NAMES[o]: np.bincount(bucket[outcome == o].astype(np.int64), minlength=buckets)
        .astype(int)
        .tolist()
        for o in Outcome
        if np.any(outcome == o)
    }
    return {
        "outcomes": [OUTCOME_NAMES[o] for o in Outcome],
        "total_ops": len(records),
        "ops": ops,
        "bucket_ms": width,
        "completions": completions,
    }
