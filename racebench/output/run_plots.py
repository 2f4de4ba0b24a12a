"""Per-run plots in the manner of Jepsen's: latency over time and throughput over time.

They read a run's `history_sample` (racebench.analysis.history_sample): sampled operations for the
latency scatter and exact per-bucket completions for throughput. Fault spans are shaded, and
anomalies that carry a time are marked where they happened: overlapping critical sections
along the top, anomalies attributed to operations (`anomaly_examples`) along the bottom.
"""

from __future__ import annotations

from typing import Any

from racebench.output.plots import FAULT_COLOR, VIOLATION_COLOR, new_figure, to_svg
from racebench.result_model import FaultEntry, HistorySample, RunEntry

ATTRIBUTED_COLOR = "#6f42c1"

# Jepsen colours its outcomes ok / fail / info; racebench has more outcomes, named here as a
# reader knows them (a "stale" write is one that fencing refused).
OUTCOME_STYLES = {
    "ok": ("ok", "#4878a8"),
    "rejected": ("rejected", "#8c8c8c"),
    "conflict": ("conflict (gave up)", "#9467bd"),
    "error": ("error", "#d62728"),
    "unknown": ("unknown (timeout)", "#e6b800"),
    "stale": ("fenced (stale token)", "#2ca02c"),
    "lock_timeout": ("lock timeout", "#8c564b"),
}


def outcome_style(name: str) -> tuple[str, str]:
    """(legend label, colour) of an outcome; one this racebench does not know is drawn grey."""
    return OUTCOME_STYLES.get(name, (name, "#444444"))


def _shade_faults(axis: Any, faults: list[FaultEntry]) -> None:
    for fault in faults:
        start, end = fault.start_ms / 1000, fault.end_ms / 1000
        if end - start >= 0.001:
            axis.axvspan(start, end, color=FAULT_COLOR, alpha=0.25, linewidth=0, zorder=0)
        else:  # an instant fault (a kill, a reset): a line, since a span would not show
            axis.axvline(start, color=FAULT_COLOR, linewidth=2, zorder=0)


def anomaly_times_ms(run: RunEntry) -> list[float]:
    """When the anomalies that carry a time happened: starts of overlapping sections."""
    return [v[0] for v in run.timeline.violations] if run.timeline else []


def attributed_times_ms(run: RunEntry) -> list[float]:
    """When each attributed anomaly of the plotted (last) trial completed: the end of the
    last of its operations."""
    last = run.trials[-1].trial if run.trials else 0
    return [e.end_ms for e in run.anomaly_examples if e.end_ms is not None and e.trial == last]


def _rug(axis: Any, times_ms: list[float], height: float, color: str) -> None:
    """Ticks at `times_ms` along the axes at `height` (a fraction of the axes' height)."""
    axis.plot(
        [t / 1000 for t in times_ms],
        [height] * len(times_ms),
        "|",
        color=color,
        markersize=10,
        transform=axis.get_xaxis_transform(),
    )


def run_figure(run: RunEntry, sample: HistorySample) -> Any:
    """Left: each sampled operation's latency at its start time, coloured by outcome.
    Right: operations completed per second in each bucket, one line per outcome."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, NullFormatter

    names = sample.outcomes
    faults = run.faults
    figure, (scatter, rate) = new_figure(10, 3.6, columns=2, constrained=False)
    # Fixed margins: the labels of this figure have a known size, and there is one per run.
    figure.subplots_adjust(left=0.08, right=0.98, top=0.92, bottom=0.25, wspace=0.22)
    for index, name in enumerate(names):
        points = [op for op in sample.ops if op[2] == index]
        if points:
            scatter.scatter(
                [op[0] / 1000 for op in points],
                [max(op[1], 1e-3) for op in points],
                s=6,
                color=outcome_style(name)[1],
                linewidths=0,
                rasterized=True,  # thousands of points: an image inside the SVG, not paths
            )
    width_s = sample.bucket_ms / 1000
    for name, counts in sample.completions.items():
        x = [(i + 0.5) * width_s for i in range(len(counts))]
        rate.plot(x, [c / width_s for c in counts], color=outcome_style(name)[1], linewidth=1.2)
    anomalies = anomaly_times_ms(run)
    attributed = attributed_times_ms(run)
    for axis in (scatter, rate):
        _shade_faults(axis, faults)
        if anomalies:
            _rug(axis, anomalies, 0.96, VIOLATION_COLOR)  # along the top, inside the axes
        if attributed:
            _rug(axis, attributed, 0.04, ATTRIBUTED_COLOR)  # along the bottom
        axis.set_xlabel("s since the run's start")
        axis.grid(alpha=0.3)
        axis.set_xlim(left=0)
    scatter.set_yscale("log")
    # Plain numbers (5, 10, 200): a log axis's "4x10^1" minor labels collide on short spans.
    scatter.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    scatter.yaxis.set_minor_formatter(NullFormatter())
    scatter.set_ylabel("latency (ms)")
    scatter.set_title("latency of each operation", fontsize="medium")
    rate.set_ylabel("ops/s")
    rate.set_ylim(bottom=0)
    rate.set_title(f"throughput per outcome ({sample.bucket_ms} ms buckets)", fontsize="medium")
    handles: list[Any] = [
        Line2D([], [], marker="o", linestyle="-", color=color, label=label)
        for label, color in map(outcome_style, sample.completions)
    ]
    if faults:
        handles.append(Patch(color=FAULT_COLOR, alpha=0.4, label="fault"))
    if anomalies:
        handles.append(
            Line2D([], [], marker="|", linestyle="", color=VIOLATION_COLOR, label="ME violation")
        )
    if attributed:
        handles.append(
            Line2D(
                [], [], marker="|", linestyle="", color=ATTRIBUTED_COLOR, label="anomaly (by op)"
            )
        )
    figure.legend(handles=handles, fontsize="small", loc="lower center", ncols=4)
    return figure


def _caption(run: RunEntry, sample: HistorySample) -> str:
    parts = [
        f"Each point is one operation (x: when it started; y: its latency), coloured by"
        f" outcome: {len(sample.ops):,} of {sample.total_ops:,} operations shown (every"
        " one that did not end ok, up to half the sample, and ok ones evenly spread)."
        " Right: operations completed per second, per outcome, counted over all operations.",
    ]
    if run.faults:
        parts.append("Shaded: faults.")
    if anomaly_times_ms(run):
        parts.append("Red ticks on top: where two critical sections overlapped (ME violations).")
    if attributed_times_ms(run):
        parts.append(
            "Purple ticks at the bottom: when each anomaly listed above by operation completed"
            " (the end of the last operation it involves)."
        )
    elif not anomaly_times_ms(run) and any(run.anomalies.values()):
        parts.append(
            "The anomalies of this run are found in the final state and carry no time"
            " (no operation recorded the values that would name them)."
        )
    if len(run.trials) > 1:
        parts.append(f"Last of {len(run.trials)} trials.")
    return " ".join(parts)


def run_figures(run: RunEntry, salt: str) -> list[tuple[str, str]]:
    """(caption, svg) of a run's latency and throughput over time; none without a sample."""
    sample = run.history_sample
    if sample is None:
        return []
    return [(_caption(run, sample), to_svg(run_figure(run, sample), salt))]
