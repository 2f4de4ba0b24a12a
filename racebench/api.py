"""The Python API: run a scenario from Python and get a typed result, without printing.

    import racebench
    result = racebench.run("scenario.yaml", clients=8)
    assert result.safe, result.explain()

The command line's `racebench run` is a thin layer over `run_paths` below: it loads the
files, calls it, and renders what it returns. Errors are raised as `racebench.errors`
exceptions (`ScenarioError` for a bad scenario, `BackendUnavailable` for a server that
cannot be reached), never printed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from racebench.result_model import Invariant, RunEntry

# The name this API gave an invariant before the result model had one (same fields).
InvariantResult = Invariant

if TYPE_CHECKING:
    from racebench.engine.cluster import ClusterOptions
    from racebench.engine.trials import ProgressFactory


@dataclass(frozen=True)
class RunResult:
    """One run (one matrix cell) of a scenario: its verdict, anomalies and figures.

    `summary` is the run entry as written to the result file (racebench.result_model's
    `RunEntry`, read through attributes); `operations` and `latency_ms` are plain mappings
    of it, `invariants` its `Invariant(name, holds, detail)` entries.
    """

    label: str
    workload: str
    backend: str
    strategy: str
    verdict: str
    anomalies: dict[str, int]
    invariants: list[Invariant]
    operations: dict[str, int]
    throughput_ops_s: float
    latency_ms: dict[str, float]
    expectation_failures: list[str]
    errors_sample: dict[str, int]
    summary: RunEntry = field(repr=False)  # the run as written to the result file

    @property
    def safe(self) -> bool:
        """The strategy claims safety and the run showed no anomaly (verdict `safe`)."""
        from racebench.util.naming import SAFE

        return self.verdict == SAFE

    @property
    def passed(self) -> bool:
        """Every expectation of the scenario held for this run."""
        return not self.expectation_failures

    @classmethod
    def from_summary(cls, run: RunEntry) -> RunResult:
        """The run entry of a result document, as the API hands it out."""
        return cls(
            label=run.label,
            workload=run.workload,
            backend=run.backend,
            strategy=run.strategy,
            verdict=run.verdict,
            anomalies=dict(run.anomalies),
            invariants=list(run.invariants),
            operations=run.operations.model_dump(),
            throughput_ops_s=run.throughput_ops_s,
            latency_ms=run.latency_ms.model_dump(),
            expectation_failures=list(run.expectation_failures),
            errors_sample=dict(run.errors_sample),
            summary=run,
        )

    def explain(self) -> str:
        """A few lines saying what happened and why the verdict is what it is."""
        from racebench.util.naming import NOT_REPRODUCED, UNEXPECTED

        ops = self.operations
        lines = [
            f"{self.label}: {self.verdict} ({ops['attempted']} operations: {ops['ok']} ok, "
            f"{ops['rejected']} rejected, {ops['errors']} errors; "
            f"{self.throughput_ops_s:,.0f} ops/s)"
        ]
        for inv in self.invariants:
            mark = "held" if inv.holds else "BROKEN"
            lines.append(f"  invariant {mark}: {inv.name}: {inv.detail}")
        seen = {k: v for k, v in self.anomalies.items() if v}
        if seen:
            lines.append("  anomalies: " + ", ".join(f"{k}={v}" for k, v in seen.items()))
        if self.verdict == UNEXPECTED:
            lines.append("  the strategy claims safety, yet the run showed anomalies")
        elif self.verdict == NOT_REPRODUCED:
            lines.append(
                "  no anomaly, but nothing claims safety here: the race was not reproduced "
                "(more clients or operations, a race window, or claims_safe for a fix)"
            )
        lines += [f"  expectation failed: {f}" for f in self.expectation_failures]
        lines += [f"  error ({n}x): {message}" for message, n in self.errors_sample.items()]
        return "\n".join(lines)


@dataclass(frozen=True)
class Result:
    """Every run of one scenario, and where its result file went (None: not written)."""

    source: str
    runs: list[RunResult]
    interrupted: bool
    result_path: Path | None

    @property
    def safe(self) -> bool:
        """Every run ended `safe`: no anomaly where the strategy claims there can be none."""
        return bool(self.runs) and not self.interrupted and all(r.safe for r in self.runs)

    @property
    def passed(self) -> bool:
        """Every run completed and met the scenario's expectations."""
        return bool(self.runs) and not self.interrupted and all(r.passed for r in self.runs)

    @property
    def anomalies(self) -> dict[str, int]:
        """Anomaly counts summed over the runs."""
        total: dict[str, int] = {}
        for r in self.runs:
            for name, count in r.anomalies.items():
                total[name] = total.get(name, 0) + count
        return total

    def run(self, label: str) -> RunResult:
        """The run with this label (KeyError if none)."""
        for r in self.runs:
            if r.label == label:
                return r
        raise KeyError(label)

    def explain(self) -> str:
        """Every run's explanation, one block per run."""
        head = f"{self.source}" + (" (interrupted)" if self.interrupted else "")
        return "\n".join([head, *(r.explain() for r in self.runs)])


def overrides_of(
    clients: int | None = None,
    operations: int | None = None,
    duration: str | float | None = None,
    trials: int | None = None,
    workers: int | str | None = None,
    rate: str | float | None = None,
) -> dict[str, Any]:
    """Command-line style overrides: `duration` alone runs until the deadline."""
    if isinstance(workers, str) and workers.isdigit():
        workers = int(workers)
    values = {
        "clients": clients,
        "operations": operations,
        "duration": duration,
        "trials": trials,
        "workers": workers,
        "rate": rate,
    }
    overrides: dict[str, Any] = {k: v for k, v in values.items() if v is not None}
    if duration is not None and operations is None:
        overrides["operations"] = None
    return overrides


def load(
    scenario: str | Path | Mapping[str, Any], overrides: dict[str, Any]
) -> tuple[Path, dict[str, Any], list[Any]]:
    """A scenario file or mapping, validated and expanded into runs."""
    from racebench.config.scenario import expand, load_raw

    if isinstance(scenario, Mapping):
        raw = copy.deepcopy(dict(scenario))
        raw.setdefault("name", "scenario")
        source = f"<{raw['name']}>"
        return Path(source), raw, expand(copy.deepcopy(raw), source, overrides)
    path = Path(scenario)
    raw = load_raw(path)
    return path, raw, expand(dict(raw), str(path), overrides)


def run_paths(
    loaded: list[tuple[Path, dict[str, Any], list[Any]]],
    *,
    output: Path | None = None,
    results_dir: Path | None = None,
    history: Path | None = None,
    history_format: str = "json",
    progress: ProgressFactory | None = None,
    clusters: ClusterOptions | None = None,
) -> list[Result]:
    """Run loaded scenarios in order; one Result per scenario (the CLI's `run`)."""
    from racebench.engine.trials import run_files  # the engine's imports wait until something runs

    outcomes = run_files(
        loaded,
        output=output,
        results_dir=results_dir,
        history=history,
        history_format=history_format,
        progress=progress,
        clusters=clusters,
    )
    return [
        Result(
            source=o.source,
            runs=[RunResult.from_summary(r) for r in o.runs],
            interrupted=o.interrupted,
            result_path=o.result_path,
        )
        for o in outcomes
    ]


def run(
    scenario: str | Path | Mapping[str, Any],
    *,
    clients: int | None = None,
    operations: int | None = None,
    duration: str | float | None = None,
    trials: int | None = None,
    workers: int | str | None = None,
    rate: str | float | None = None,
    output: str | Path | None = None,
    history: str | Path | None = None,
    history_format: str = "json",
) -> Result:
    """Run one scenario (a YAML file or the same content as a dict) and return its result.

    The keyword arguments override the scenario like the command-line flags do. A result
    file is written only when `output` is given; `history` (JSON lines, or Jepsen EDN with
    `history_format="jepsen"`) only when asked. Nothing is printed.
    """
    loaded = load(scenario, overrides_of(clients, operations, duration, trials, workers, rate))
    (result,) = run_paths(
        [loaded],
        output=Path(output) if output is not None else None,
        history=Path(history) if history is not None else None,
        history_format=history_format,
    )
    return result
