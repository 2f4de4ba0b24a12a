"""Compare a candidate result with a baseline: speed changes judged against noise, and
correctness regressions, for gating CI.

Runs are matched by label. For throughput and p99, "within noise" is decided from the trials
of both sides with a two-sided Mann-Whitney U test (scipy.stats.mannwhitneyu, p < 0.05); a
change counts as slower only when the test separates the two sides *and* the medians differ
by more than the allowed slowdown (the rule asv uses). With too few trials the test cannot
reach p < 0.05 at all (3 vs 3 trials: the smallest possible p is 0.1), and the speed is then
reported as undecided and never gated: one trial is not a basis for a verdict. A run that
was "safe" in the baseline and shows any anomaly in the candidate always fails, and so does
a candidate run that is inconclusive (it did too little to show the race).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from racebench.errors import ResultFileError
from racebench.naming import INCONCLUSIVE, SAFE
from racebench.report import LoadedResult, load_result, server_versions, trial_values

ALPHA = 0.05
METHOD = "Mann-Whitney U (two-sided, p < 0.05) on per-trial values"
FASTER, SLOWER, SAME, UNDECIDED = "faster", "slower", "same within noise", "undecided"
# Per-run settings that change what a label measures; a difference is worth a warning, since
# command-line overrides (--clients, --trials) do not enter the scenario hash.
_RUN_SETTINGS = (
    "workload",
    "backend",
    "strategy",
    "lock_service",
    "fencing",
    "clients",
    "race_window_ms",
)


@dataclass
class MetricChange:
    """One metric of one run, baseline against candidate."""

    metric: str
    unit: str
    higher_is_better: bool
    baseline: float
    candidate: float
    baseline_trials: list[float]
    candidate_trials: list[float]
    p_value: float | None
    verdict: str
    worse_by: float  # fraction worse in the metric's own sense (0.25 = 25 % worse); <0: better

    @property
    def change(self) -> float | None:
        """Relative change of the median, candidate against baseline."""
        if self.baseline == 0:
            return None
        return self.candidate / self.baseline - 1


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
    regressions: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    """The whole comparison; `failed` decides exit status 1."""

    baseline: LoadedResult
    candidate: LoadedResult
    max_slowdown: float
    runs: list[RunComparison]
    only_in_baseline: list[str]
    only_in_candidate: list[str]
    warnings: list[str]

    @property
    def regressions(self) -> list[tuple[str, str]]:
        return [(r.label, reason) for r in self.runs for reason in r.regressions]

    @property
    def failed(self) -> bool:
        return bool(self.regressions)


def smallest_p(n_baseline: int, n_candidate: int) -> float:
    """The smallest two-sided exact Mann-Whitney p-value these trial counts can produce."""
    if not n_baseline or not n_candidate:
        return 1.0
    return min(1.0, 2 / math.comb(n_baseline + n_candidate, n_baseline))


def noise_p_value(baseline: list[float], candidate: list[float]) -> float | None:
    """p-value that both trial sets come from one distribution; None when too few trials."""
    if smallest_p(len(baseline), len(candidate)) >= ALPHA:
        return None
    if len(set(baseline) | set(candidate)) == 1:
        return 1.0  # every trial identical: nothing to separate (the test would divide by 0)
    from scipy.stats import mannwhitneyu

    p = float(mannwhitneyu(baseline, candidate, alternative="two-sided").pvalue)
    return 1.0 if math.isnan(p) else p


def compare_metric(
    metric: str,
    unit: str,
    higher_is_better: bool,
    base: dict[str, Any],
    cand: dict[str, Any],
    max_slowdown: float,
) -> MetricChange:
    """Median change of one metric and its verdict.

    faster/slower need both: the trials separate (p < ALPHA) and the medians differ by more
    than `max_slowdown`. A separated but smaller change is "same within N%": with steady
    per-trial figures even a 0.3 % shift separates, and is no news.
    """
    key = "throughput" if metric == "throughput" else "p99"
    b_trials, c_trials = trial_values(base, key), trial_values(cand, key)
    if metric == "throughput":
        b, c = float(base["throughput_ops_s"]), float(cand["throughput_ops_s"])
    else:
        b, c = float(base["latency_ms"]["p99"]), float(cand["latency_ms"]["p99"])
    if higher_is_better:
        worse_by = (1 - c / b) if b > 0 else 0.0
    else:
        worse_by = (c / b - 1) if b > 0 else (math.inf if c > 0 else 0.0)
    # Symmetric bar for "faster": the same relative size, in the better direction.
    better_by = (c / b - 1) if higher_is_better and b > 0 else -worse_by
    p = noise_p_value(b_trials, c_trials)
    if p is None:
        verdict = UNDECIDED
    elif p >= ALPHA:
        verdict = SAME
    elif worse_by > max_slowdown:
        verdict = SLOWER
    elif better_by > max_slowdown:
        verdict = FASTER
    else:
        verdict = f"same within {max_slowdown:.0%}"
    return MetricChange(
        metric, unit, higher_is_better, b, c, b_trials, c_trials, p, verdict, worse_by
    )


def compare_run(base: dict[str, Any], cand: dict[str, Any], max_slowdown: float) -> RunComparison:
    """Speed and correctness of one label; fills `regressions` with the reasons to fail."""
    b_anomalies = {k: v for k, v in base["anomalies"].items() if v}
    c_anomalies = {k: v for k, v in cand["anomalies"].items() if v}
    comparison = RunComparison(
        label=base["label"],
        throughput=compare_metric("throughput", "ops/s", True, base, cand, max_slowdown),
        p99=compare_metric("p99", "ms", False, base, cand, max_slowdown),
        baseline_verdict=base["verdict"],
        candidate_verdict=cand["verdict"],
        baseline_anomalies=sum(b_anomalies.values()),
        candidate_anomalies=sum(c_anomalies.values()),
        new_anomalies=c_anomalies if base["verdict"] == SAFE else {},
        setting_changes=[
            f"{k} {base.get(k)!r} -> {cand.get(k)!r}"
            for k in _RUN_SETTINGS
            if base.get(k) != cand.get(k)
        ],
    )
    if comparison.new_anomalies:
        found = ", ".join(f"{k}={v}" for k, v in comparison.new_anomalies.items())
        comparison.regressions.append(f"correctness: safe in the baseline, now {found}")
    if cand["verdict"] == INCONCLUSIVE:
        # Not a pass: the candidate did too little to show whether the race is still fixed.
        reason = cand.get("evidence_missing") or "too few acknowledged operations"
        comparison.regressions.append(f"inconclusive in the candidate: {reason}")
    for change in (comparison.throughput, comparison.p99):
        if change.verdict == SLOWER:
            comparison.regressions.append(
                f"{change.metric} {describe_change(change)} "
                f"(allowed slowdown {max_slowdown:.0%}, p={change.p_value:.3f})"
            )
    return comparison


def describe_change(change: MetricChange) -> str:
    """The signed relative change of the median: "-45%", "+12%"."""
    relative = change.change
    return "n/a" if relative is None else f"{relative:+.0%}"


def setup_differences(base: dict[str, Any], cand: dict[str, Any]) -> list[str]:
    """Warnings for results made on different setups, where speed is not comparable."""
    warnings = []

    def differs(what: str, b: Any, c: Any) -> None:
        if b != c:
            warnings.append(f"different {what}: baseline {b}, candidate {c}")

    differs(
        "CPU count", base.get("host", {}).get("cpu_count"), cand.get("host", {}).get("cpu_count")
    )
    differs("racebench version", base.get("racebench_version"), cand.get("racebench_version"))
    differs(
        "scenario hash", base.get("scenario", {}).get("hash"), cand.get("scenario", {}).get("hash")
    )
    b_servers, c_servers = server_versions(base), server_versions(cand)
    for name in sorted(set(b_servers) & set(c_servers)):
        differs(f"{name} server version", b_servers[name], c_servers[name])
    b_drivers = base.get("environment", {}).get("drivers") or {}
    c_drivers = cand.get("environment", {}).get("drivers") or {}
    for name in sorted(set(b_drivers) & set(c_drivers)):
        differs(f"{name} driver version", b_drivers[name], c_drivers[name])
    return warnings


def compare_results(baseline: Path, candidate: Path, max_slowdown: float) -> Comparison:
    """Read two result files and compare every label they share.

    Raises ResultFileError (exit 2) when a file is unusable or no label is in both.
    """
    base, cand = load_result(baseline), load_result(candidate)
    base_runs = {r["label"]: r for r in base.runs}
    cand_runs = {r["label"]: r for r in cand.runs}
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
        if document.get("partial"):
            warnings.append(f"the {name} is a partial (interrupted) result")
    for run in runs:
        if run.setting_changes:
            warnings.append(f"{run.label}: settings differ: {'; '.join(run.setting_changes)}")
    undecided = [r.label for r in runs if r.throughput.verdict == UNDECIDED]
    if undecided:
        n_b = len(base_runs[undecided[0]]["trials"])
        n_c = len(cand_runs[undecided[0]]["trials"])
        warnings.append(
            f"{len(undecided)} run(s) with too few trials to separate speed from noise "
            f"(e.g. {n_b} vs {n_c}; Mann-Whitney U needs 4 per side to reach p < {ALPHA}): "
            "their speed is not gated; run with --trials 5"
        )
    return Comparison(
        baseline=base,
        candidate=cand,
        max_slowdown=max_slowdown,
        runs=runs,
        only_in_baseline=[label for label in base_runs if label not in cand_runs],
        only_in_candidate=[label for label in cand_runs if label not in base_runs],
        warnings=warnings,
    )
