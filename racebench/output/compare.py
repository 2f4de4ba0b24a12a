"""Compare a candidate result with a baseline: speed changes judged against noise, and
correctness regressions, for gating CI.

Runs are matched by label (labels are keys: a file that repeats one is refused on load). For
throughput and p99, the decision rests on a bootstrap confidence interval of the ratio of
medians (racebench.analysis.gate_stats): from the within-run samples (per 100 ms bucket) of each
trial, so that one trial per side suffices, resampled by trial when there are several. With
the interval of "how much worse" (throughput drop, p99 rise):

- entirely above the allowed slowdown: `slower`, a regression;
- entirely at or below it: `within N%` (or `faster`, when the interval of "how much
  better" is entirely above the same bar);
- straddling it, or too few samples to build it: `undecided`. For throughput the gate never
  calls that a pass: `racebench compare` exits 4 unless told `--allow-undecided`. An
  undecided p99 is reported and warned about; a p99 decided slower is a regression.

A run that was "safe" in the baseline and shows any anomaly in the candidate always fails.
See docs/gate.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from racebench.analysis.gate_stats import CONFIDENCE, ratio_interval
from racebench.errors import ExitStatus, ResultFileError
from racebench.output.compare_warnings import load_difference, setting_changes, setup_differences
from racebench.output.report import LoadedResult, load_result
from racebench.result_model import RunEntry
from racebench.util.naming import INCONCLUSIVE, SAFE

METHOD = (
    f"{CONFIDENCE:.0%} circular block bootstrap interval of the ratio of medians "
    "(within-run 100 ms buckets; trials resampled when there are several)"
)
FASTER, SLOWER, WITHIN, UNDECIDED = "faster", "slower", "within", "undecided"
# The fewest buckets in every trial of a side for a within-run interval, and the fewest
# trials for an interval from per-trial figures alone (when a run was too short to bucket).
MIN_BUCKETS = 10
MIN_TRIALS = 3


@dataclass
class MetricChange:
    """One metric of one run, baseline against candidate."""

    metric: str
    unit: str
    higher_is_better: bool
    baseline: float  # the run's headline figure (median over trials)
    candidate: float
    baseline_trials: list[float]
    candidate_trials: list[float]
    basis: str  # what the interval was computed from, e.g. "buckets 20 vs 20, 1 vs 1 trials"
    ratio: float | None  # candidate/baseline ratio of medians of the samples
    interval: tuple[float, float] | None  # its confidence interval; None when undecidable
    verdict: str
    reason: str = ""  # why undecided

    @property
    def change(self) -> float | None:
        """Relative change of the headline figure, candidate against baseline."""
        if self.baseline == 0:
            return None
        return self.candidate / self.baseline - 1

    @property
    def worse_by(self) -> float:
        """Fraction worse in the metric's own sense by the ratio of medians (<0: better)."""
        if self.ratio is None:
            return 0.0
        return 1 - self.ratio if self.higher_is_better else self.ratio - 1

    def worse_interval(self) -> tuple[float, float] | None:
        """The interval of `worse_by`: (least worse, most worse)."""
        if self.interval is None:
            return None
        low, high = self.interval
        return (1 - high, 1 - low) if self.higher_is_better else (low - 1, high - 1)


@dataclass
class RunComparison:
    """One label present in both files."""

    label: str
    throughput: MetricChange
    p99: MetricChange
    baseline_verdict: str
    candidate_verdict: str
    baseline_anomalies: int
    candidate_anomalies: int
    new_anomalies: dict[str, int]
    setting_changes: list[str]
    trials: tuple[int, int] = (1, 1)
    regressions: list[str] = field(default_factory=list)

    @property
    def speed_undecided(self) -> bool:
        """No regression found, but the throughput could not be shown to be within the bar.

        Throughput is the speed the gate must decide. p99 is a tail alarm: decided slower,
        it is a regression; undecided (the tail of a short run is mostly its few slowest
        operations), it is reported and warned about but does not hold the gate.
        """
        return not self.regressions and self.throughput.verdict == UNDECIDED


@dataclass
class Comparison:
    """The whole comparison: `failed` decides exit status 1, `undecided` exit status 4."""

    baseline: LoadedResult
    candidate: LoadedResult
    max_slowdown: float
    runs: list[RunComparison]
    only_in_baseline: list[str]
    only_in_candidate: list[str]
    warnings: list[str]
    allow_undecided: bool = False

    @property
    def regressions(self) -> list[tuple[str, str]]:
        return [(r.label, reason) for r in self.runs for reason in r.regressions]

    @property
    def failed(self) -> bool:
        return bool(self.regressions)

    @property
    def undecided(self) -> list[str]:
        """Labels whose speed could not be decided (and that did not regress otherwise)."""
        return [r.label for r in self.runs if r.speed_undecided]

    @property
    def exit_status(self) -> ExitStatus:
        """1 for a regression; 4 when a run's speed is undecided (unless allowed); else 0."""
        if self.failed:
            return ExitStatus.EXPECTATION_FAILED
        if self.undecided and not self.allow_undecided:
            return ExitStatus.UNDECIDED
        return ExitStatus.OK


def _sample_series(run: RunEntry, metric: str) -> list[np.ndarray] | None:
    """Each trial's within-run series of `metric`, or None if a trial has too few buckets."""
    series = []
    for trial in run.trials:
        samples = trial.samples
        values: list[float] = []
        if samples is not None:
            values = samples.throughput_ops_s if metric == "throughput" else samples.p99_ms
        if len(values) < MIN_BUCKETS:
            return None
        series.append(np.asarray(values, dtype=float))
    return series


def _basis(
    base: RunEntry, cand: RunEntry, metric: str
) -> tuple[str, list[np.ndarray], list[np.ndarray]] | str:
    """(description, baseline series, candidate series), or the reason there are none.

    Both sides must rest on the same kind of sample: buckets when every trial of both has
    enough, otherwise per-trial figures when both have MIN_TRIALS trials.
    """
    n_b, n_c = len(base.trials), len(cand.trials)
    b_series, c_series = _sample_series(base, metric), _sample_series(cand, metric)
    if b_series is not None and c_series is not None:
        buckets = f"{sum(map(len, b_series))} vs {sum(map(len, c_series))} buckets"
        return f"{buckets}, {n_b} vs {n_c} trials", b_series, c_series
    if min(n_b, n_c) >= MIN_TRIALS:
        key = "throughput" if metric == "throughput" else "p99"
        return (
            f"per-trial figures, {n_b} vs {n_c} trials",
            [np.array([v]) for v in base.trial_values(key)],
            [np.array([v]) for v in cand.trial_values(key)],
        )
    return (
        f"too few samples: each trial needs {MIN_BUCKETS} buckets of 100 ms after warmup "
        f"(run longer, e.g. --duration 2s) or each side {MIN_TRIALS} trials "
        f"(have {n_b} vs {n_c})"
    )


def compare_metric(
    metric: str,
    unit: str,
    higher_is_better: bool,
    base: RunEntry,
    cand: RunEntry,
    max_slowdown: float,
) -> MetricChange:
    """The change of one metric and its verdict, from the confidence interval of the ratio."""
    key = "throughput" if metric == "throughput" else "p99"
    if metric == "throughput":
        b, c = base.throughput_ops_s, cand.throughput_ops_s
    else:
        b, c = base.latency_ms.p99, cand.latency_ms.p99
    change = MetricChange(
        metric,
        unit,
        higher_is_better,
        b,
        c,
        base.trial_values(key),
        cand.trial_values(key),
        basis="",
        ratio=None,
        interval=None,
        verdict=UNDECIDED,
    )
    basis = _basis(base, cand, metric)
    if isinstance(basis, str):
        change.reason = basis
        return change
    change.basis, b_series, c_series = basis
    estimate = ratio_interval(b_series, c_series)
    if not all(map(math.isfinite, (estimate.ratio, estimate.low, estimate.high))):
        change.reason = "a side's median is 0: no ratio"
        return change
    change.ratio, change.interval = estimate.ratio, (estimate.low, estimate.high)
    worse = change.worse_interval()
    assert worse is not None  # the interval was set just above
    least_worse, most_worse = worse
    if least_worse > max_slowdown:
        change.verdict = SLOWER
    elif most_worse > max_slowdown:
        change.reason = (
            f"the interval of the change straddles the allowed {max_slowdown:.0%}: "
            "more samples (a longer run or more trials) can decide"
        )
    elif -most_worse > max_slowdown:  # even the least improvement beats the same bar
        change.verdict = FASTER
    else:
        change.verdict = f"{WITHIN} {max_slowdown:.0%}"  # no worse than the bar allows
    return change


def _new_anomalies(
    base: RunEntry, b_anomalies: dict[str, int], cand: RunEntry, c: dict[str, int]
) -> dict[str, int]:
    """What makes a run that was safe in the baseline a correctness regression.

    A safe run may carry anomalies its claim allows: a fenced lock keeps the data safe while
    critical sections still overlap (mutual_exclusion_violations). Those stay, and may vary,
    without breaking the claim; a kind of anomaly the baseline did not have, or a verdict that
    is no longer safe, is a regression.
    """
    if base.verdict != SAFE:
        return {}
    if cand.verdict not in (SAFE, INCONCLUSIVE):  # inconclusive is reported on its own
        return c
    return {k: v for k, v in c.items() if k not in b_anomalies}


def compare_run(base: RunEntry, cand: RunEntry, max_slowdown: float) -> RunComparison:
    """Speed and correctness of one label; fills `regressions` with the reasons to fail."""
    b_anomalies = {k: v for k, v in base.anomalies.items() if v}
    c_anomalies = {k: v for k, v in cand.anomalies.items() if v}
    comparison = RunComparison(
        label=base.label,
        throughput=compare_metric("throughput", "ops/s", True, base, cand, max_slowdown),
        p99=compare_metric("p99", "ms", False, base, cand, max_slowdown),
        baseline_verdict=base.verdict,
        candidate_verdict=cand.verdict,
        baseline_anomalies=sum(b_anomalies.values()),
        candidate_anomalies=sum(c_anomalies.values()),
        new_anomalies=_new_anomalies(base, b_anomalies, cand, c_anomalies),
        setting_changes=setting_changes(base, cand),
        trials=(len(base.trials), len(cand.trials)),
    )
    if comparison.new_anomalies:
        found = ", ".join(f"{k}={v}" for k, v in comparison.new_anomalies.items())
        comparison.regressions.append(f"correctness: safe in the baseline, now {found}")
    if cand.verdict == INCONCLUSIVE:
        # Not a pass: the candidate did too little to show whether the race is still fixed.
        reason = cand.evidence_missing or "too few acknowledged operations"
        comparison.regressions.append(f"inconclusive in the candidate: {reason}")
    for change in (comparison.throughput, comparison.p99):
        if change.verdict == SLOWER:
            comparison.regressions.append(
                f"{change.metric} {describe_change(change)} "
                f"({describe_interval(change)}; allowed slowdown {max_slowdown:.0%})"
            )
    return comparison


def describe_change(change: MetricChange) -> str:
    """The signed relative change, by the ratio of medians of the samples: "-45%", "+12%"."""
    relative = change.change if change.ratio is None else change.ratio - 1
    return "n/a" if relative is None else f"{relative:+.0%}"


def describe_interval(change: MetricChange) -> str:
    """ "95% CI -52%..-41%", or why there is none."""
    if change.interval is None:
        return change.reason or "no interval"
    low, high = change.interval
    return f"{CONFIDENCE:.0%} CI {low - 1:+.0%}..{high - 1:+.0%}"


def compare_results(
    baseline: Path, candidate: Path, max_slowdown: float, allow_undecided: bool = False
) -> Comparison:
    """Read two result files and compare every label they share.

    Raises ResultFileError (exit 2) when a file is unusable or no label is in both.
    """
    base, cand = load_result(baseline), load_result(candidate)
    # Labels are keys: load_result refuses a file that repeats one (exit 2).
    base_runs = {r.label: r for r in base.runs}
    cand_runs = {r.label: r for r in cand.runs}
    shared = [label for label in base_runs if label in cand_runs]
    if not shared:
        raise ResultFileError(
            f"no run label in common between {baseline} ({len(base_runs)} runs, e.g. "
            f"{next(iter(base_runs), 'none')!r}) and {candidate} ({len(cand_runs)} runs, e.g. "
            f"{next(iter(cand_runs), 'none')!r})"
        )
    runs = [compare_run(base_runs[label], cand_runs[label], max_slowdown) for label in shared]
    warnings = setup_differences(base.document, cand.document)
    for document, name in ((base.document, "baseline"), (cand.document, "candidate")):
        if document.partial:
            warnings.append(f"the {name} is a partial (interrupted) result")
    busier = load_difference(base, cand)
    if busier:
        warnings.append(busier)
    for run in runs:
        if run.setting_changes:
            warnings.append(f"{run.label}: settings differ: {'; '.join(run.setting_changes)}")
    for run in runs:
        for change in (run.throughput, run.p99):
            if change.verdict == UNDECIDED:
                warnings.append(f"{run.label}: {change.metric} undecided: {change.reason}")
    return Comparison(
        baseline=base,
        candidate=cand,
        max_slowdown=max_slowdown,
        runs=runs,
        only_in_baseline=[label for label in base_runs if label not in cand_runs],
        only_in_candidate=[label for label in cand_runs if label not in base_runs],
        warnings=warnings,
        allow_undecided=allow_undecided,
    )
