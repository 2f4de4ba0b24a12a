"""The noise model of `racebench compare`: a bootstrap confidence interval of the ratio of
medians, honest about autocorrelated time buckets and about variance between trials.

Each side of a comparison is a list of trials, each trial a series of samples in time order
(throughput or p99 per 100 ms bucket, see racebench.samples). One bootstrap replicate of a
side is drawn in two levels:

1. the trials are resampled with replacement (with one trial this changes nothing; with
   several it carries the between-trial variance, the noise that matters across CI runs);
2. each drawn trial's series is resampled by the *circular block bootstrap* (Politis &
   Romano 1992): blocks of `block_length(n)` consecutive buckets, starting anywhere and
   wrapping around, are concatenated to the series' length. Blocks keep the short-range
   autocorrelation of neighbouring buckets (a GC pause or a checkpoint spans several), which
   an i.i.d. bootstrap would ignore and so report intervals that are too narrow.

The side's statistic is the median over its trials of the median of each trial's series.
The interval of candidate/baseline is the percentile interval of the ratio of replicates.
Resampling at both levels over-states the variance a little, which errs on the side of
"undecided", never of a false verdict. The random generator is seeded: the same two files
always give the same decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

REPLICATES = 2000
CONFIDENCE = 0.95
SEED = 20260101


@dataclass(frozen=True)
class RatioInterval:
    """Candidate/baseline ratio of medians with its bootstrap confidence interval."""

    ratio: float
    low: float
    high: float


def block_length(n: int) -> int:
    """Block length for a series of n buckets: n^(1/3), the usual rate for the median."""
    return max(1, math.ceil(n ** (1 / 3)))


def block_bootstrap_medians(
    series: np.ndarray, replicates: int, rng: np.random.Generator
) -> np.ndarray:
    """Medians of `replicates` circular-block-bootstrap resamples of one series."""
    n = len(series)
    if n == 1:
        return np.full(replicates, float(series[0]))
    length = block_length(n)
    blocks = math.ceil(n / length)
    starts = rng.integers(0, n, size=(replicates, blocks))
    index = (starts[:, :, None] + np.arange(length)) % n
    resampled = series[index.reshape(replicates, blocks * length)[:, :n]]
    return np.median(resampled, axis=1)


def side_statistic(trials: list[np.ndarray]) -> float:
    """Median over trials of each trial's median sample."""
    return float(np.median([np.median(t) for t in trials]))


def side_replicates(
    trials: list[np.ndarray], replicates: int, rng: np.random.Generator
) -> np.ndarray:
    """Bootstrap replicates of `side_statistic`: trials resampled, then blocks within each."""
    per_trial = np.stack([block_bootstrap_medians(t, replicates, rng) for t in trials])
    chosen = rng.integers(0, len(trials), size=(replicates, len(trials)))
    return np.median(per_trial[chosen, np.arange(replicates)[:, None]], axis=1)


def ratio_interval(
    baseline: list[np.ndarray], candidate: list[np.ndarray], replicates: int = REPLICATES
) -> RatioInterval:
    """Candidate/baseline ratio of medians and its CONFIDENCE percentile interval."""
    rng = np.random.default_rng(SEED)
    base = side_replicates(baseline, replicates, rng)
    cand = side_replicates(candidate, replicates, rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(base > 0, cand / base, np.inf)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    b = side_statistic(baseline)
    ratio = side_statistic(candidate) / b if b > 0 else math.inf
    return RatioInterval(ratio, float(low), float(high))
