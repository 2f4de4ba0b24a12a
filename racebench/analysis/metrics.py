"""Throughput and latency figures from a run's history, with HDR histograms."""

from __future__ import annotations

from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

# Event-loop lag beyond this at p99 means the loop, not the server, set the pace: the verdict's
# `client-bound` line, and the lag a worker's sampler asks the reason for (engine.worker).
LAG_LINE_MS = 1.0

# Latencies are recorded in microseconds, from 1 µs to one hour, 3 significant digits.
_MAX_US = 3_600_000_000


def new_histogram() -> HdrHistogram:
    """An empty latency histogram in microseconds (1 µs to 1 h, 3 significant digits)."""
    return HdrHistogram(1, _MAX_US, 3)


def record_durations(histogram: HdrHistogram, durations_ns: np.ndarray) -> None:
    """Add durations to a histogram; equal values are recorded once with their count."""
    if not len(durations_ns):
        return
    # Clipped, not dropped: HdrHistogram refuses a value outside its range, and a sub-µs
    # operation or one stuck for hours must still count.
    micros = np.clip(durations_ns // 1000, 1, _MAX_US)
    # A run records up to millions of operations; record_value is a Python call each, so
    # recording each distinct value once with its count is what keeps this fast.
    values, counts = np.unique(micros, return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        histogram.record_value(value, count)


def latency_summary(histogram: HdrHistogram) -> dict[str, float]:
    """p50/p90/p99/max and mean in milliseconds (zeros for an empty histogram)."""
    if histogram.get_total_count() == 0:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    ms = 1000.0
    return {
        "p50": histogram.get_value_at_percentile(50) / ms,
        "p90": histogram.get_value_at_percentile(90) / ms,
        "p99": histogram.get_value_at_percentile(99) / ms,
        "max": histogram.get_max_value() / ms,
        "mean": round(histogram.get_mean_value() / ms, 4),
    }


def spread(values: list[float]) -> dict[str, Any]:
    """Median and spread of per-trial figures."""
    arr = np.asarray(values, dtype=float)
    return {
        "median": float(np.median(arr)),
        "min": float(arr.min()),
        "max": float(arr.max()),
        # Sample standard deviation (ddof=1): the trials are a sample of possible runs.
        "stdev": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "values": [round(v, 3) for v in values],
    }


def share_range(counts: np.ndarray, clients: int) -> dict[str, float]:
    """Fairness: the smallest and largest share of grants any client got."""
    # Padded to every client: one that never got the lock has a share of 0, which a count
    # from bincount (as long as the highest client id seen) would leave out.
    full = np.zeros(clients, dtype=np.int64)
    full[: len(counts)] = counts
    total = max(1, int(full.sum()))
    return {
        "min_share": round(float(full.min()) / total, 4),
        "max_share": round(float(full.max()) / total, 4),
    }
