"""Terminal output: the progress display while running and the results table at the end."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from racebench.naming import (
    ANOMALIES,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    SAFE,
    UNEXPECTED,
    client_bound_caption,
    fault_summary,
    strategy_label,
)
from racebench.runner import ProgressCallback
from racebench.scenario import RunSpec

ANOMALY_TITLES = {
    "lost_updates": "lost\nupdates",
    "oversold_units": "oversold",
    "overdrafts": "over-\ndrafts",
    "overdrawn_amount": "over-\ndrawn",
    "lost_withdrawals": "lost\nwithdr.",
    "mutual_exclusion_violations": "ME\nviol.",
}
VERDICT_STYLES = {
    SAFE: "bold green",
    ANOMALIES: "bold yellow",
    UNEXPECTED: "bold red",
    NOT_REPRODUCED: "dim",
    INCONCLUSIVE: "bold magenta",
}


def results_table(runs: list[dict[str, Any]], title: str | None = None) -> Table:
    """One row per run: figures, anomaly counts and the verdict."""
    names = [n for n in ANOMALY_TITLES if any(n in r["anomalies"] for r in runs)]
    names += sorted({n for r in runs for n in r["anomalies"]} - set(names))
    fenced = any(r.get("lock") for r in runs)
    faulted = any(r.get("faults") or r.get("faults_not_fired") for r in runs)
    open_loop = any(r.get("service_time_ms") for r in runs)
    table = Table(
        title=escape(title) if title else None,
        header_style="bold",
        caption=escape(caption) if (caption := client_bound_caption(runs)) else None,
    )
    for header in ("workload", "backend", "strategy", "clients"):
        table.add_column(header)
    for header in ("ops/s", "p50\nms", "p99\nms"):
        table.add_column(header, justify="right")
    if open_loop:
        # Response time counts from the intended start; service time from the actual one.
        for header in ("service\np99 ms", "late", "dropped"):
            table.add_column(header, justify="right")
    for header in ("retries", "errors"):
        table.add_column(header, justify="right")
    for name in names:
        table.add_column(ANOMALY_TITLES.get(name, name), justify="right")
    if fenced:
        table.add_column("fenced", justify="right")
    if faulted:
        table.add_column("faults")
    table.add_column("verdict")
    for run in runs:
        ops = run["operations"]
        # Every string from a scenario or result is escaped: rich would swallow `[emulated]`.
        cells = [
            escape(str(run["workload"])),
            escape(str(run["backend"])),
            escape(strategy_label(run)),
            str(run["clients"]),
            f"{run['throughput_ops_s']:,.0f}",
            f"{run['latency_ms']['p50']:.2f}",
            f"{run['latency_ms']['p99']:.2f}",
        ]
        if open_loop:
            cells += _open_loop_cells(run)
        cells += [
            str(ops["retries"]),
            str(ops["errors"] + ops["unknown"] + ops["conflicts"] + ops["lock_timeouts"]),
        ]
        for name in names:
            count = run["anomalies"].get(name)
            cells.append("-" if count is None else (f"[red]{count}[/]" if count else "0"))
        if fenced:
            lock = run.get("lock") or {}
            cells.append(str(lock.get("stale_writes_rejected", "-")))
        if faulted:
            cells.append(
                escape(fault_summary(run.get("faults") or [], run.get("faults_not_fired") or []))
            )
        verdict = run["verdict"] + (" (partial)" if run.get("interrupted") else "")
        if not run.get("passed", True):
            verdict += " ✗"
        style = VERDICT_STYLES.get(run["verdict"], "none")
        cells.append(f"[{style}]{escape(verdict)}[/]")
        table.add_row(*cells)
    return table


def _open_loop_cells(run: dict[str, Any]) -> list[str]:
    service = run.get("service_time_ms")
    figures = (run.get("load") or {}).get("open_loop")
    if not service or not figures:
        return ["-", "-", "-"]
    return [f"{service['p99']:.2f}", str(figures["late"]), str(figures["dropped"])]


@contextmanager
def progress_display(console: Console, enabled: bool) -> Iterator[Any]:
    """Yield a factory of per-trial progress callbacks (None when disabled)."""
    if not enabled:
        yield None
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:>8.0f} ops"),
        TextColumn("{task.fields[rate]:>9} ops/s"),
        TextColumn("{task.fields[errors]} errors"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )

    def factory(spec: RunSpec, trial: int) -> ProgressCallback:
        # Started with the first trial: an empty display would print a blank line before an
        # error that stops the run at setup.
        if not started_display:
            started_display.append(True)
            progress.start()
        s = spec.scenario
        description = spec.label + (f" #{trial + 1}" if s.trials > 1 else "")
        task = progress.add_task(escape(description), total=s.operations, rate="-", errors=0)
        started: list[float] = []

        def update(done: int, errors: int) -> None:
            now = progress.get_time()
            if not started:
                started.append(now)
            elapsed = now - started[0]
            rate = f"{done / elapsed:,.0f}" if elapsed > 0.2 else "-"
            progress.update(task, completed=done, rate=rate, errors=errors)

        return update

    started_display: list[bool] = []
    try:
        yield factory
    finally:
        if started_display:
            progress.stop()
