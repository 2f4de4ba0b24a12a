"""Terminal output: the progress display while running and the results table at the end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from racebench.config.scenario import RunSpec
from racebench.protocol import ProgressCallback
from racebench.result_model import RunEntry
from racebench.util.naming import (
    ANOMALIES,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    SAFE,
    UNEXPECTED,
    anomaly_examples_summary,
    client_bound_caption,
    fault_summary,
)

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


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def short_params(params: dict[str, Any]) -> list[str]:
    """Matrix values legibly, one per line: `fencing=true`, `lock=redis_lock ttl_ms=100`.

    A key is shortened to its last part unless two keys share it; a mapping value is its
    `key=value` pairs. `guard.strategy` is left out: the strategy column shows it.
    """
    keys = [k for k in params if k != "guard.strategy"]
    last = [k.rsplit(".", 1)[-1] for k in keys]
    lines = []
    for key, short in zip(keys, last, strict=True):
        name = short if last.count(short) == 1 else key
        value = params[key]
        if isinstance(value, dict):
            text = " ".join(f"{k}={_scalar(v)}" for k, v in value.items())
        else:
            text = _scalar(value)
        lines.append(f"{name}={text}")
    return lines


def _trial_counts(runs: list[RunEntry]) -> set[int]:
    return {len(r.trials) or 1 for r in runs}


def table_caption(runs: list[RunEntry]) -> str | None:
    """What the figures are when runs had several trials."""
    counts = _trial_counts(runs)
    if counts == {1}:
        return None
    n = f"{counts.pop()} trials" if len(counts) == 1 else "the trials of each run"
    return (
        f"ops/s: median over {n} (range min-max below); latency: percentiles of all "
        f"{n}' operations together; retries, errors and anomalies: totals over {n}"
    )


def _throughput_cell(run: RunEntry) -> str:
    cell = f"{run.throughput_ops_s:,.0f}"
    values = run.trial_values("throughput")
    if len(values) > 1:
        cell += f"\n[dim]{min(values):,.0f}-{max(values):,.0f}[/]"
    return cell


def results_table(
    runs: list[RunEntry], title: str | None = None, width: int | None = None
) -> Table:
    """One row per run: figures, anomaly counts and the verdict, fitted to `width` columns.

    What tells runs apart (strategy, matrix values, faults) and the verdict wrap but are
    never cut; workload and backend move to the title when all runs share them. When the
    full table cannot fit `width` even wrapped, a compact one moves matrix values and faults
    under the strategy and lists the anomalies of each run in one column.
    """
    shared = {
        k: getattr(runs[0], k)
        for k in ("workload", "backend")
        if len({getattr(r, k) for r in runs}) == 1
    }
    if title is None and shared:
        title = " on ".join(shared.values())
    wide = _wide_table(runs, title, shared)
    if width is None or _unbroken_width(wide) <= width:
        return wide
    return _compact_table(runs, title, shared)


def anomaly_example_lines(runs: list[RunEntry]) -> list[str]:
    """Under the table: each run's first attributed anomaly (the result file lists up to 20)."""
    lines = []
    for run in runs:
        shown, more = anomaly_examples_summary(run, 1)
        if shown:
            extra = f" (+{more} more in the result file)" if more else ""
            lines.append(f"{run.label}: {shown[0]}{extra}")
    return lines


def _unbroken_width(table: Table) -> int:
    """The narrowest the table can be with every cell wrapped only between words.

    rich measures a column's minimum as 1 when it may fold, so a narrow console would cut
    words instead of wrapping them; this is the width below which that happens.
    """
    widths = []
    for column in table.columns:
        texts = [str(column.header), *(str(cell) for cell in column.cells)]
        words = [w for t in texts for w in Text.from_markup(t).plain.split()]
        widths.append(max((cell_len(w) for w in words), default=1))
    return sum(widths) + 3 * (len(widths) - 1)


def _new_table(runs: list[RunEntry], title: str | None) -> Table:
    # Every string from a scenario or result is escaped: rich would swallow `[emulated]`.
    captions = [c for c in (table_caption(runs), client_bound_caption(runs)) if c]
    return Table(
        title=escape(title) if title else None,
        caption=escape("\n".join(captions)) if captions else None,
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )


def _strategy_cell(run: RunEntry) -> str:
    # A space before "+fencing" lets a narrow column wrap there instead of mid-word.
    return run.strategy_label.replace("+fencing", " +fencing")


def _verdict_cell(run: RunEntry) -> str:
    verdict = run.verdict + (" (partial)" if run.interrupted else "")
    if not run.passed:
        verdict += " ✗"
    return f"[{VERDICT_STYLES.get(run.verdict, 'none')}]{escape(verdict)}[/]"


def _anomaly_names(runs: list[RunEntry]) -> list[str]:
    names = [n for n in ANOMALY_TITLES if any(n in r.anomalies for r in runs)]
    return names + sorted({n for r in runs for n in r.anomalies} - set(names))


def _wide_table(runs: list[RunEntry], title: str | None, shared: dict[str, str]) -> Table:
    names = _anomaly_names(runs)
    fenced = any(r.lock for r in runs)
    faulted = any(r.faults or r.faults_not_fired for r in runs)
    open_loop = any(r.service_time_ms for r in runs)
    params = [short_params(r.params) for r in runs]
    counts = _trial_counts(runs)
    table = _new_table(runs, title)
    for key in ("workload", "backend"):
        if key not in shared:
            table.add_column(key)
    table.add_column("strategy")
    if any(params):
        table.add_column("run")
    table.add_column("clients", justify="right", no_wrap=True)
    if len(counts) > 1:
        table.add_column("trials", justify="right", no_wrap=True)
    for header in ("ops/s", "p50\nms", "p99\nms"):
        table.add_column(header, justify="right", no_wrap=True)
    if open_loop:
        # Response time counts from the intended start; service time from the actual one.
        for header in ("service\np99 ms", "late", "dropped"):
            table.add_column(header, justify="right", no_wrap=True)
    for header in ("retries", "errors"):
        table.add_column(header, justify="right", no_wrap=True)
    for name in names:
        table.add_column(ANOMALY_TITLES.get(name, name), justify="right")
    if fenced:
        table.add_column("fenced", justify="right", no_wrap=True)
    if faulted:
        table.add_column("faults")
    table.add_column("verdict")
    for run, run_params in zip(runs, params, strict=True):
        cells = [escape(str(getattr(run, k))) for k in ("workload", "backend") if k not in shared]
        cells.append(escape(_strategy_cell(run)))
        if any(params):
            cells.append(escape("\n".join(run_params)) or "-")
        cells.append(str(run.clients))
        if len(counts) > 1:
            cells.append(str(len(run.trials) or 1))
        cells += [
            _throughput_cell(run),
            f"{run.latency_ms.p50:.2f}",
            f"{run.latency_ms.p99:.2f}",
        ]
        if open_loop:
            cells += _open_loop_cells(run)
        cells += [
            str(run.operations.retries),
            str(run.operations.failed),
        ]
        for name in names:
            count = run.anomalies.get(name)
            cells.append("-" if count is None else (f"[red]{count}[/]" if count else "0"))
        if fenced:
            rejected = run.lock.stale_writes_rejected if run.lock else None
            cells.append("-" if rejected is None else str(rejected))
        if faulted:
            cells.append(escape(fault_summary(run.faults, run.faults_not_fired)))
        cells.append(_verdict_cell(run))
        table.add_row(*cells)
    return table


def _compact_table(runs: list[RunEntry], title: str | None, shared: dict[str, str]) -> Table:
    """Five columns: the run (strategy, then its matrix values, faults, clients), speed,
    retries/errors, anomalies found (and fenced writes), verdict."""
    table = _new_table(runs, title)
    table.add_column("run")
    table.add_column("ops/s", justify="right", no_wrap=True)
    table.add_column("p99\nms", justify="right", no_wrap=True)
    table.add_column("retries\n/errors", justify="right", no_wrap=True)
    table.add_column("anomalies")
    table.add_column("verdict")
    for run in runs:
        lines = [f"[bold]{escape(_strategy_cell(run))}[/]"]
        lines += [escape(str(getattr(run, k))) for k in ("workload", "backend") if k not in shared]
        lines += [escape(p) for p in short_params(run.params)]
        if run.faults:
            lines.append(escape(fault_summary(run.faults, run.faults_not_fired)))
        lines.append(f"{run.clients} clients")
        if run.service_time_ms:
            service, late, dropped = _open_loop_cells(run)
            lines.append(f"service p99 {service} ms, late {late}, dropped {dropped}")
        found = [
            f"{ANOMALY_TITLES.get(name, name).replace(chr(10), ' ')} {count}"
            for name, count in run.anomalies.items()
            if count
        ]
        if run.lock:
            found.append(f"fenced {run.lock.stale_writes_rejected or 0}")
        table.add_row(
            "\n".join(lines),
            _throughput_cell(run),
            f"{run.latency_ms.p99:.2f}",
            f"{run.operations.retries}/{run.operations.failed}",
            "[red]" + escape("\n".join(found)) + "[/]" if found else "none",
            _verdict_cell(run),
        )
    return table


def _open_loop_cells(run: RunEntry) -> list[str]:
    service = run.service_time_ms
    figures = run.load.open_loop if run.load else None
    if not service or not figures:
        return ["-", "-", "-"]
    return [f"{service.p99:.2f}", str(figures.late), str(figures.dropped)]


@contextmanager
def progress_display(console: Console, enabled: bool, live: bool = True) -> Iterator[Any]:
    """Yield a factory of per-trial progress callbacks (None when disabled).

    `live`: a progress bar, for a terminal. Otherwise (CI logs, a file) one plain line per
    finished trial, since a redrawn bar degrades into cut-off fragments there.
    """
    if not enabled:
        yield None
        return
    if not live:
        with _plain_progress(console) as plain_factory:
            yield plain_factory
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


@contextmanager
def _plain_progress(console: Console) -> Iterator[Any]:
    """Progress as one plain line per finished trial: printed when the next trial starts,
    and for the last one when the session ends."""
    pending: list[str] = []

    def flush() -> None:
        if pending:
            console.print(pending.pop(), markup=False, highlight=False, soft_wrap=True)

    def factory(spec: RunSpec, trial: int) -> ProgressCallback:
        flush()
        name = spec.label + (f" trial {trial + 1}/{spec.scenario.trials}")
        started = time.monotonic()

        def update(done: int, errors: int) -> None:
            elapsed = time.monotonic() - started
            pending[:] = [f"done: {name}: {done:,} ops in {elapsed:.1f}s, {errors} errors"]

        return update

    try:
        yield factory
    finally:
        flush()
