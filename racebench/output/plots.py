"""matplotlib figures for the HTML report, returned as inline SVG text.

matplotlib is imported lazily (it is in the `report` extra and slow to import) and used through
the Agg-family `Figure` API without pyplot: no GUI backend, no global figure state.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from racebench.result_model import FaultEntry, RunEntry, Timeline
from racebench.util.naming import params_text

PERCENTILES = ("p50", "p90", "p99", "max")


@dataclass
class Series:
    """The runs of one strategy on one backend (and one source file), ordered by clients."""

    name: str
    runs: list[RunEntry] = field(default_factory=list)


# Matrix keys that the strategy label already shows, left out of series names.
_IN_STRATEGY_LABEL = ("clients", "guard.strategy", "guard.fencing")


def group_series(sourced_runs: list[tuple[str, RunEntry]]) -> list[Series]:
    """One series per (source, strategy, backend, matrix values other than clients).

    Matrix values are named shortly (`lock=redis_lock(ttl_ms=100)`, never a dict repr). The
    source file's name only enters the name when the same strategy appears in more than one
    file (a baseline and a candidate), so that two curves never merge into a zigzag.
    """
    keyed: dict[tuple[str, str, str, str], Series] = {}
    sources_per_pair: dict[tuple[str, str], set[str]] = {}
    for source, run in sourced_runs:
        pair = (run.strategy_label, run.backend)
        sources_per_pair.setdefault(pair, set()).add(source)
    backends = {run.backend for _, run in sourced_runs}
    for source, run in sourced_runs:
        strategy, backend = run.strategy_label, run.backend
        params = run.params
        others = params_text(params, leave_out=_IN_STRATEGY_LABEL)
        key = (source, strategy, backend, others)
        if key not in keyed:
            name = strategy
            if len(backends) > 1 and "store" not in params:
                name += f" / {backend}"
            name += f" [{others}]" if others else ""
            if len(sources_per_pair[(strategy, backend)]) > 1:
                name += f" ({source})"
            keyed[key] = Series(name)
        keyed[key].runs.append(run)
    for series in keyed.values():
        series.runs.sort(key=lambda r: r.clients)
    return list(keyed.values())


def legend_below(figure: Any, axis: Any, entries: int) -> None:
    """The legend under the plot, in columns: long series names never squeeze the axes."""
    columns = 1 if entries > 8 else 2 if entries > 1 else 1
    figure.legend(
        *axis.get_legend_handles_labels(),
        fontsize="small",
        loc="outside lower center",
        ncols=columns,
    )


def _legend_height(entries: int) -> float:
    """Inches the legend below a plot takes."""
    rows = entries if entries > 8 else (entries + 1) // 2
    return 0.25 * rows + 0.3


def new_figure(
    width: float, height: float, columns: int = 1, constrained: bool = True
) -> tuple[Any, list[Any]]:
    """A figure with `columns` axes side by side; constrained layout unless the caller sets
    fixed margins (a figure drawn per run saves the layout's second drawing pass)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained" if constrained else None)
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, list(axes)


def to_svg(figure: Any, salt: str) -> str:
    """The figure as an <svg> element, ready to inline in HTML.

    Text stays text (smaller, searchable); the hash salt makes ids unique per figure, since
    several SVGs in one page share one id space, and keeps the output deterministic.
    """
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def _error_bars(values: list[list[float]], centres: list[float]) -> list[list[float]]:
    """Asymmetric error bars from the per-trial min and max around the plotted median."""
    lower = [max(0.0, c - min(v, default=c)) for v, c in zip(values, centres, strict=True)]
    upper = [max(0.0, max(v, default=c) - c) for v, c in zip(values, centres, strict=True)]
    return [lower, upper]


def contention_figure(series: list[Series]) -> Any:
    """Throughput and p99 against clients, one line per strategy; bars span the trials."""
    figure, (left, right) = new_figure(10, 3.4 + _legend_height(len(series)), columns=2)
    clients = sorted({r.clients for s in series for r in s.runs})
    for s in series:
        x = [r.clients for r in s.runs]
        tput = [r.throughput_ops_s for r in s.runs]
        p99 = [r.latency_ms.p99 for r in s.runs]
        tput_trials = [r.trial_values("throughput") for r in s.runs]
        p99_trials = [r.trial_values("p99") for r in s.runs]
        left.errorbar(x, tput, yerr=_error_bars(tput_trials, tput), marker="o", capsize=3)
        right.errorbar(
            x, p99, yerr=_error_bars(p99_trials, p99), marker="o", capsize=3, label=s.name
        )
    for axis, title, unit in ((left, "throughput", "ops/s"), (right, "p99 latency", "ms")):
        axis.set_title(f"{title} against clients")
        axis.set_xlabel("clients")
        axis.set_ylabel(unit)
        axis.set_xticks(clients)
        axis.grid(alpha=0.3)
    medians = [r.throughput_ops_s for s in series for r in s.runs]
    if medians and min(medians) > 0 and max(medians) / min(medians) > 20:
        left.set_yscale("log")  # one fast strategy would flatten every other curve
    else:
        left.set_ylim(bottom=0)
    right.set_yscale("log")
    legend_below(figure, right, len(series))
    return figure


def anomalies_figure(series: list[Series], names: list[str]) -> Any:
    """Anomalies per strategy, summed over its runs (all client counts and trials).

    Horizontal bars, one group per series, so that long series names read as row labels.
    """
    figure, (axis,) = new_figure(10, 1.2 + 0.45 * len(series) + _legend_height(len(names)))
    height = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        totals = [sum(r.anomalies.get(name, 0) for r in s.runs) for s in series]
        positions = [j + (i - (len(names) - 1) / 2) * height for j in range(len(series))]
        bars = axis.barh(positions, totals, height, label=name.replace("_", " "))
        axis.bar_label(bars, [f"{t}" if t else "" for t in totals], fontsize="x-small", padding=2)
    axis.set_yticks(range(len(series)), [s.name for s in series], fontsize="small")
    axis.invert_yaxis()  # first series on top, as in the table
    axis.set_xlabel("count (all runs and trials)")
    axis.set_title("anomalies per strategy")
    axis.grid(axis="x", alpha=0.3)
    axis.margins(x=0.08)
    if names:
        legend_below(figure, axis, len(names))
    return figure


def latency_figure(series: list[Series]) -> Any:
    """p50/p90/p99/max per strategy at its highest client count (merged over trials)."""
    figure, (axis,) = new_figure(10, 3.0 + _legend_height(len(series)))
    for s in series:
        run = s.runs[-1]
        values = [max(1e-3, getattr(run.latency_ms, p)) for p in PERCENTILES]
        axis.plot(PERCENTILES, values, marker="o", label=f"{s.name} ({run.clients} clients)")
    axis.set_yscale("log")
    axis.set_ylabel("ms")
    axis.set_title("latency distribution at the highest client count")
    axis.grid(alpha=0.3)
    legend_below(figure, axis, len(series))
    return figure


def scenario_figures(
    sourced_runs: list[tuple[str, RunEntry]], names: list[str], salt: str
) -> list[tuple[str, str]]:
    """(caption, svg) for the plots over all runs of one scenario.

    A plot against clients needs at least two client counts in one series: a single point
    per line says nothing about scaling, so that plot is left out.
    """
    series = group_series(sourced_runs)
    figures = []
    if any(len({r.clients for r in s.runs}) > 1 for s in series):
        figures.append(
            (
                "Throughput and p99 against clients (median of trials; bars: min to max over"
                " trials).",
                contention_figure(series),
            )
        )
    if names:
        figures.append(
            (
                "Anomalies per strategy, summed over client counts and trials.",
                anomalies_figure(series, names),
            )
        )
    figures.append(
        ("Latency distribution (p50, p90, p99, max over all trials).", latency_figure(series))
    )
    return [(caption, to_svg(fig, f"{salt}-{i}")) for i, (caption, fig) in enumerate(figures)]


# Around faults the timeline shows from shortly before the first one to a while after the last
# one ends (the queue drains, a lease runs out); without faults, the start of the run.
_BEFORE_FAULT_MS = 100.0
_AFTER_FAULT_MS = 300.0
_NO_FAULT_WINDOW_MS = 1000.0
SECTION_COLOR, FAULT_COLOR, VIOLATION_COLOR = "#4878a8", "#f0a030", "#d62728"


def timeline_window(run: RunEntry) -> tuple[float, float, str]:
    """The x range (ms since the run's start) of a run's timeline, and how it was chosen."""
    timeline = run.timeline or Timeline()
    faults = run.faults
    last_section = max((s[2] for s in timeline.critical_sections), default=0.0)
    if faults:
        lo = max(0.0, min(f.start_ms for f in faults) - _BEFORE_FAULT_MS)
        hi = max(f.end_ms for f in faults) + _AFTER_FAULT_MS
        why = f"{_BEFORE_FAULT_MS:g} ms before the first fault to {_AFTER_FAULT_MS:g} ms after"
        why += " the last one ends"
    else:
        lo, hi = 0.0, _NO_FAULT_WINDOW_MS
        why = f"the first {_NO_FAULT_WINDOW_MS:g} ms"
    if last_section and last_section < hi:
        hi = max(last_section, max((f.end_ms for f in faults), default=0.0))
        why += ", cut where the recorded sections end"
    return lo, hi, why


def _fault_label(fault: FaultEntry) -> str:
    note = fault.note if len(fault.note) <= 40 else fault.note[:39] + "…"
    label = f"{fault.kind} c{fault.client}: {note}"
    if fault.unavailable_ms is not None:
        label += f", unavailable {fault.unavailable_ms:.1f} ms"
    return label


def timeline_figure(run: RunEntry, title: str, window: tuple[float, float]) -> Any:
    """Critical sections per client (bars), faults (shaded spans), overlaps (red, top strip).

    Rows run top-down: a fault-label band, the overlap strip, then one row per client. Only the
    sections that intersect the window are drawn, which keeps a long run's SVG small.
    """
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    lo, hi = window
    timeline = run.timeline or Timeline()
    clients = run.clients
    figure, (axis,) = new_figure(10, min(8.0, 1.6 + 0.32 * (clients + 2)))
    rows: dict[int, list[tuple[float, float]]] = {}
    for client, start, end in timeline.critical_sections:
        if end >= lo and start <= hi:
            rows.setdefault(int(client), []).append((start, max(end - start, 0.05)))
    for client, bars in sorted(rows.items()):
        axis.broken_barh(bars, (client - 0.3, 0.6), facecolors=SECTION_COLOR)
    overlaps = [(s, max(e - s, 0.05)) for s, e in timeline.violations if e >= lo and s <= hi]
    if overlaps:
        axis.broken_barh(overlaps, (-1.35, 0.7), facecolors=VIOLATION_COLOR)
    top = blended_transform_factory(axis.transData, axis.transAxes)
    for fault in run.faults:
        start, end = fault.start_ms, fault.end_ms
        if end - start >= 1:
            axis.axvspan(start, end, color=FAULT_COLOR, alpha=0.25, linewidth=0, zorder=0)
        else:  # a kill or a reset is an instant: a line, since a span would not show
            axis.axvline(start, color=FAULT_COLOR, linewidth=2, zorder=0)
        axis.text(start, 0.98, " " + _fault_label(fault), transform=top, va="top", fontsize=8)
    axis.set_xlim(lo, hi)
    axis.set_ylim(clients - 0.5, -2.7)  # inverted: client 0 right under the overlap strip
    step = max(1, clients // 24)
    ticks = [-1, *range(0, clients, step)]
    axis.set_yticks(ticks, ["overlap", *(f"c{c}" for c in ticks[1:])])
    axis.set_xlabel("ms since the run's start")
    axis.set_title(title, fontsize="medium")
    axis.grid(axis="x", alpha=0.3)
    axis.set_axisbelow(True)
    handles = [
        Patch(color=SECTION_COLOR, label="critical section"),
        Patch(color=FAULT_COLOR, alpha=0.4, label="fault"),
        Patch(color=VIOLATION_COLOR, label="overlapping critical sections (ME violation)"),
    ]
    figure.legend(handles=handles, fontsize="small", loc="outside lower center", ncols=3)
    return figure


def _timeline_caption(run: RunEntry, window: tuple[float, float], why: str) -> str:
    timeline = run.timeline or Timeline()
    sections = timeline.critical_sections
    lo, hi = window
    parts = [
        f"Timeline of {run.label}: critical sections per client (blue bars), faults"
        " (shaded spans, a line for an instant fault), and intervals where two critical"
        " sections overlapped (red, top strip).",
        f"Shown: {lo:.0f} to {hi:.0f} ms of the run, {why};"
        f" {len(timeline.violations)} overlaps recorded in all.",
    ]
    if timeline.truncated:
        parts.append(f"Only the first {len(sections)} critical sections were recorded.")
    if len(run.trials) > 1:
        parts.append(f"Last of {len(run.trials)} trials.")
    return " ".join(parts)


def timeline_figures(sourced_runs: list[tuple[str, RunEntry]], salt: str) -> list[tuple[str, str]]:
    """(caption, svg) of one timeline per run that recorded critical sections or faults."""
    several_sources = len({source for source, _ in sourced_runs}) > 1
    out = []
    for i, (source, run) in enumerate(sourced_runs):
        sections = run.timeline.critical_sections if run.timeline else []
        if not sections and not run.faults:
            continue
        lo, hi, why = timeline_window(run)
        title = run.label + (f" ({source})" if several_sources else "")
        title += f": {run.verdict}"
        figure = timeline_figure(run, title, (lo, hi))
        out.append((_timeline_caption(run, (lo, hi), why), to_svg(figure, f"{salt}-t{i}")))
    return out
