"""`racebench compare --format html`: one self-contained page, before and after per run.

It reads only the public fields of racebench.output.compare's result (Comparison, RunComparison,
MetricChange), so the statistics can change without this page changing: each metric shows
its decision as compare made it, with the decision's interval when compare gives one.
"""

from __future__ import annotations

import html
from typing import Any

from racebench.output.compare import (
    METHOD,
    Comparison,
    MetricChange,
    RunComparison,
    describe_change,
)
from racebench.output.plots import new_figure, to_svg
from racebench.output.report_html import CSS, VERDICT_CLASSES, figure_html

BASELINE_COLOR, CANDIDATE_COLOR = "#8c8c8c", "#4878a8"


def _e(text: object) -> str:
    return html.escape(str(text))


def _figure(value: float, unit: str) -> str:
    return f"{value:,.0f}" if unit == "ops/s" else f"{value:.2f}"


def ratio_interval(change: MetricChange) -> tuple[float, float] | None:
    """The confidence interval of the candidate/baseline ratio that compare decided from,
    when its method gives one (a bootstrap does; a rank test on trials does not)."""
    interval = getattr(change, "interval", None)
    if interval is None:
        return None
    low, high = interval
    return float(low), float(high)


def decision_text(change: MetricChange) -> str:
    """e.g. `slower, interval -52% to -41%`, `same within noise (p=0.412)`, `undecided (1 vs
    1 trials)`: compare's verdict and what it rests on."""
    text = change.verdict
    interval = ratio_interval(change)
    p_value = getattr(change, "p_value", None)
    if interval is not None:
        text += f", interval {interval[0] - 1:+.0%} to {interval[1] - 1:+.0%}"
    elif p_value is not None:
        text += f" (p={p_value:.3f})"
    elif reason := getattr(change, "reason", ""):
        text += f" ({reason})"
    else:
        text += f" ({len(change.baseline_trials)} vs {len(change.candidate_trials)} trials)"
    return text


def run_status(run: RunComparison) -> tuple[str, str]:
    """(text, css class) of a run's result: regression, undecided speed, or ok."""
    if run.regressions:
        return "REGRESSION: " + "; ".join(run.regressions), "v-unexpected"
    if getattr(run, "speed_undecided", False):
        return "UNDECIDED speed", "v-anomalies"
    return "ok", "v-safe"


def headline(comparison: Comparison) -> str:
    """The page's verdict: a regression, else undecided speed (never "passed"), else none."""
    if comparison.failed:
        return "REGRESSION"
    if getattr(comparison, "undecided", None):
        allowed = getattr(comparison, "allow_undecided", False)
        return "UNDECIDED speed" + (" (allowed)" if allowed else "")
    return "no regression"


def _metric_cells(change: MetricChange) -> str:
    before = _figure(change.baseline, change.unit)
    after = _figure(change.candidate, change.unit)
    return (
        f'<td class="num">{_e(before)}</td><td class="num">{_e(after)}</td>'
        f'<td class="num">{_e(describe_change(change))}</td><td>{_e(decision_text(change))}</td>'
    )


def _verdict_cell(verdict: str) -> str:
    return f'<span class="{VERDICT_CLASSES.get(verdict, "")}">{_e(verdict)}</span>'


def _row(run: RunComparison) -> str:
    status, css = run_status(run)
    verdicts = _verdict_cell(run.baseline_verdict)
    if run.candidate_verdict != run.baseline_verdict:
        verdicts += " → " + _verdict_cell(run.candidate_verdict)
    return (
        f'<tr><td class="label">{_e(run.label)}</td>{_metric_cells(run.throughput)}'
        f"{_metric_cells(run.p99)}"
        f'<td class="num">{run.baseline_anomalies} → {run.candidate_anomalies}</td>'
        f'<td>{verdicts}</td><td class="{css}">{_e(status)}</td></tr>'
    )


def comparison_table(comparison: Comparison) -> str:
    groups = '<th rowspan="2">run</th><th colspan="4">throughput (ops/s)</th>'
    groups += '<th colspan="4">p99 latency (ms)</th><th rowspan="2">anomalies</th>'
    groups += '<th rowspan="2">verdict</th><th rowspan="2">result</th>'
    metric = "<th>before</th><th>after</th><th>change</th><th>decision</th>"
    body = "".join(_row(run) for run in comparison.runs)
    return (
        f"<table><thead><tr>{groups}</tr><tr>{metric}{metric}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _ratio(values: list[float], base: float) -> list[float]:
    """Values relative to the baseline median (1.0: no change)."""
    return [v / base if base > 0 else 1.0 for v in values]


def before_after_figure(runs: list[RunComparison], max_slowdown: float) -> Any:
    """Per run, baseline and candidate trials (dots) and medians (bars) relative to the
    baseline median, both metrics; the allowed slowdown dashed, compare's interval as a line.

    Relative: runs whose speeds differ by 100x share one readable scale.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    figure, axes = new_figure(10, 1.4 + 0.5 * len(runs), columns=2)
    for axis, metric in zip(axes, ("throughput", "p99"), strict=True):
        for row, run in enumerate(runs):
            change: MetricChange = getattr(run, metric)
            base = change.baseline
            for offset, trials, median, color in (
                (-0.15, change.baseline_trials, change.baseline, BASELINE_COLOR),
                (0.15, change.candidate_trials, change.candidate, CANDIDATE_COLOR),
            ):
                y = row + offset
                axis.scatter(_ratio(trials, base), [y] * len(trials), s=14, color=color, alpha=0.6)
                axis.plot(_ratio([median] * 2, base), [y - 0.12, y + 0.12], color=color, lw=2)
            interval = ratio_interval(change)
            if interval is not None:
                axis.plot(list(interval), [row + 0.15] * 2, color="#222")
            axis.annotate(
                f"{describe_change(change)}, {change.verdict}",
                (max(_ratio([base, change.candidate], base)), row),
                xytext=(6, 0),
                textcoords="offset points",
                va="center",
                fontsize="x-small",
            )
        limit = 1 - max_slowdown if metric == "throughput" else 1 + max_slowdown
        axis.axvline(1.0, color=BASELINE_COLOR, linewidth=0.8)
        axis.axvline(limit, color="#cf222e", linewidth=0.8, linestyle="--")
        axis.xaxis.set_major_locator(MaxNLocator(5))
        axis.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x - 1:+.0%}"))
        axis.set_yticks(range(len(runs)), [run.label for run in runs], fontsize="small")
        axis.set_ylim(len(runs) - 0.5, -0.5)
        axis.set_xlabel("change against the baseline median")
        axis.set_title("throughput" if metric == "throughput" else "p99 latency")
        axis.grid(axis="x", alpha=0.3)
        axis.margins(x=0.3)
    axes[1].tick_params(labelleft=False)  # the run names once, on the left
    handles = [
        Line2D([], [], marker="o", color=BASELINE_COLOR, label="baseline: trials, median"),
        Line2D([], [], marker="o", color=CANDIDATE_COLOR, label="candidate: trials, median"),
        Line2D([], [], color="#cf222e", linestyle="--", label="allowed slowdown"),
    ]
    figure.legend(handles=handles, fontsize="small", loc="outside lower center", ncols=3)
    return figure


def render_compare_html(comparison: Comparison) -> str:
    """The whole comparison page: sources, decision, table and the before/after plot."""
    parts = [f"<h1>racebench compare: {_e(headline(comparison))}</h1>", '<ul class="setup">']
    for name, loaded in (("baseline", comparison.baseline), ("candidate", comparison.candidate)):
        document = loaded.document
        commit = (document.git_commit or "no commit")[:10]
        parts.append(
            f"<li>{name}: <code>{_e(loaded.path)}</code> (racebench "
            f"{_e(document.racebench_version)} @ {_e(commit)}, "
            f"{_e(document.started_at)})</li>"
        )
    parts.append("</ul>")
    parts.append(
        f'<p class="note">Decision: {_e(METHOD)}; allowed slowdown '
        f"{comparison.max_slowdown:.0%} (throughput drop or p99 rise, beyond noise); a run safe"
        " in the baseline must stay safe, with no kind of anomaly it did not have.</p>"
    )
    parts += [f'<p class="note">warning: {_e(w)}</p>' for w in comparison.warnings]
    parts.append(comparison_table(comparison))
    for title, labels in (
        ("Only in baseline (not compared)", comparison.only_in_baseline),
        ("Only in candidate (new)", comparison.only_in_candidate),
    ):
        if labels:
            parts.append(f'<p class="note">{title}: {_e(", ".join(labels))}</p>')
    if comparison.runs:
        svg = to_svg(before_after_figure(comparison.runs, comparison.max_slowdown), "compare")
        caption = (
            "Before (grey) and after (blue) per run, relative to the baseline's median: dots"
            " are trials, bars the medians compared; the label is the change of the median"
            " and compare's decision; dashed red: the allowed slowdown; a black line: the"
            " interval compare decided from, when it gives one."
        )
        parts.append(figure_html("plot", svg, caption))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>racebench compare</title><style>{CSS}</style></head>\n<body><main>\n"
        + "\n".join(parts)
        + "\n</main></body></html>\n"
    )
