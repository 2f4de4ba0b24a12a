"""The noise model of `racebench compare`: a bootstrap confidence interval of the ratio of
medians, honest about autocorrelated time buckets and about variance between trials.

Each side of a comparison is a list of trials, each trial a series of samples in time order
(throughput or p99 per 100 ms bucket, see racebench.analysis.samples). One bootstrap replicate of a
side is drawn in two levels:

1. the trials are resampled with replacement (with one trial this changes nothing; with
   several it carries the between-trial variance, the noise that matters across CI runs);
2. each drawn trial's series is resampled by the *circular block bootstrap* (Politis &
   Romano 1992): blocks of `block_length(series)` consecutive buckets, starting anywhere and
   wrapping around, are concatenated to the series' length. Blocks keep the short-range
   autocorrelation of neighbouring buckets (a GC pause or a checkpoint spans several), which
   an i.i.d. bootstrap would ignore and so report intervals that are too narrow.

The side's statistic is the median over its trials of the median of each trial's series.
The interval of candidate/baseline is the percentile interval of the ratio of replicates.
Resampling at both levels over-states the between-trial variance a little, which errs on
the side of "undecided"; a short series of strongly correlated buckets errs the other way
(docs/gate.md, Calibration). The random generator is seeded: the same two files
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


def lag1_autocorrelation(series: np.ndarray) -> float:
    """The lag-1 autocorrelation of a series (0 for a constant one)."""
    centred = series - series.mean()
    denominator = float((centred * centred).sum())
    return 0.0 if denominator == 0 else float((centred[1:] * centred[:-1]).sum() / denominator)


def block_length(series: np.ndarray) -> int:
    """Block length from the series' own autocorrelation: the AR(1) plug-in rule
    (2 rho / (1 - rho^2))^(2/3) · n^(1/3) (Politis & White, 2004), between n^(1/3) and n/2.

    Longer-lived correlation (a slow drift, a long stall) needs longer blocks to survive
    resampling. Simulated AR(1) buckets (n = 19, rho = 0.5; docs/gate.md) missed the true
    ratio in ~18% of 95% intervals with n^(1/3) blocks, ~13% with this rule.
    """
    n = len(series)
    rho = min(0.95, max(0.0, lag1_autocorrelation(series)))
    factor = max(1.0, (2 * rho / (1 - rho**2)) ** (2 / 3))
    return max(1, min(n // 2, math.ceil(factor * n ** (1 / 3))))


def block_bootstrap_medians(
    series: np.ndarray, replicates: int, rng: np.random.Generator
) -> np.ndarray:
    """Medians of `replicates` circular-block-bootstrap resamples of one series."""
    n = len(series)
    if n == 1:
        return np.full(replicates, float(series[0]))
    length = block_length(series)
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
