"""Within-run samples: throughput and p99 per time bucket, and the encoded latency histogram.

A trial's headline figures are one number each; `compare` needs the noise around them to
decide from a single trial. It gets it from the trial's own time series: operations are
counted per bucket (100 ms) over the window where every client was running, so the ramp-up
and the tail of an operation-bounded run (clients finishing one by one) do not enter it.
Computed from the recorded history, after the run, so the client loop pays nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from racebench.history import RunHistory

BUCKET_MS = 100


def steady_window(history: RunHistory, measured_from_ns: int) -> tuple[int, int]:
    """(start, end) in ns: after warmup, until the first client finished its last operation."""
    if not len(history):
        return measured_from_ns, measured_from_ns
    ends = history.records["end"]
    last_end_per_client = [int(ends[history.client == c].max()) for c in np.unique(history.client)]
    return measured_from_ns, min(last_end_per_client)


def bucket_series(
    history: RunHistory, measured_from_ns: int, bucket_ms: int = BUCKET_MS
) -> tuple[list[float], list[float]]:
    """Throughput (ops/s) and p99 latency (ms) of each full bucket of the steady window.

    An operation belongs to the bucket in which it completed; a bucket where nothing
    completed (a stall) has throughput 0 and no p99, so the p99 series skips it.
    """
    start, end = steady_window(history, measured_from_ns)
    bucket_ns = bucket_ms * 1_000_000
    n_buckets = max(0, (end - start) // bucket_ns)
    if n_buckets == 0:
        return [], []
    ends = history.records["end"]
    latency_ms = (ends - history.records["start"]) / 1e6
    inside = (ends >= start) & (ends < start + n_buckets * bucket_ns)
    index = (ends[inside] - start) // bucket_ns
    counts = np.bincount(index, minlength=n_buckets)
    throughput = (counts / (bucket_ms / 1000)).round(2).tolist()
    order = np.argsort(index, kind="stable")
    groups = np.split(latency_ms[inside][order], np.cumsum(counts)[:-1])
    p99 = [round(float(np.percentile(g, 99, method="higher")), 4) for g in groups if len(g)]
    return throughput, p99


def within_run_samples(
    history: RunHistory, measured_from_ns: int, histogram: HdrHistogram
) -> dict[str, Any]:
    """A trial's `samples` entry in the result file."""
    throughput, p99 = bucket_series(history, measured_from_ns)
    return {
        "bucket_ms": BUCKET_MS,
        "throughput_ops_s": throughput,
        "p99_ms": p99,
        # HdrHistogram's compressed base64 form, in µs: merge or re-read percentiles later.
        "latency_hdr": histogram.encode().decode("ascii"),
    }


def decode_histogram(encoded: str) -> HdrHistogram:
    """The latency histogram (µs) of a trial's `samples.latency_hdr`."""
    return HdrHistogram.decode(encoded.encode("ascii"))
