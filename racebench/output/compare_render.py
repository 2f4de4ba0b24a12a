"""Output formats of `racebench compare`: text, markdown, github, json, benchmark-json and
junit."""

from __future__ import annotations

import json
from typing import Any

from racebench.analysis.gate_stats import CONFIDENCE
from racebench.output.compare import (
    METHOD,
    SLOWER,
    UNDECIDED,
    Comparison,
    MetricChange,
    RunComparison,
    describe_change,
    describe_interval,
)
from racebench.output.report import markdown_table
from racebench.result_model import ResultDocument

FORMATS = ("text", "markdown", "github", "json", "benchmark-json", "junit", "html")
COMPARE_SCHEMA = "racebench.compare/1"


def _figure(value: float, unit: str) -> str:
    return f"{value:,.0f}" if unit == "ops/s" else f"{value:.2f}"


def _metric_cell(change: MetricChange) -> str:
    """ "3,239 -> 1,020 ops/s (-69%)"."""
    return (
        f"{_figure(change.baseline, change.unit)} -> {_figure(change.candidate, change.unit)} "
        f"{change.unit} ({describe_change(change)})"
    )


def _verdict_cell(change: MetricChange) -> str:
    """ "slower (95% CI -52%..-41%)"; "undecided (no interval)" names the short reason."""
    if change.interval is None:
        return f"{change.verdict} (too few samples)"
    return f"{change.verdict} ({describe_interval(change)})"


def _status(run: RunComparison) -> str:
    if run.regressions:
        return "REGRESSION: " + "; ".join(run.regressions)
    return "UNDECIDED speed" if run.speed_undecided else "ok"


# GitHub renders these as coloured marks in a step summary or a pull-request comment.
_MARKS = {"ok": "✅", "regression": "❌", "undecided": "⚠️", "faster": "🚀"}


def _mark_verdict(change: MetricChange) -> str:
    if change.verdict == SLOWER:
        mark = _MARKS["regression"]
    elif change.verdict == UNDECIDED:
        mark = _MARKS["undecided"]
    else:
        mark = _MARKS["faster"] if change.verdict == "faster" else _MARKS["ok"]
    return f"{mark} {_verdict_cell(change)}"


def _mark_status(run: RunComparison) -> str:
    if run.regressions:
        return f"{_MARKS['regression']} {_status(run)}"
    return f"{_MARKS['undecided' if run.speed_undecided else 'ok']} {_status(run)}"


def _verdicts(run: RunComparison) -> str:
    if run.baseline_verdict == run.candidate_verdict:
        return run.baseline_verdict
    return f"{run.baseline_verdict} -> {run.candidate_verdict}"


_HEADERS = ["run", "throughput", "verdict", "p99", "verdict", "anomalies", "result"]


def _trials(run: RunComparison) -> str:
    n_b, n_c = run.trials
    return f"{n_b} vs {n_c} trial" + ("s" if (n_b, n_c) != (1, 1) else "")


def _rows(comparison: Comparison, marks: bool = False) -> list[list[str]]:
    verdict_cell = _mark_verdict if marks else _verdict_cell
    status = _mark_status if marks else _status
    return [
        [
            f"{run.label} ({_trials(run)})",
            _metric_cell(run.throughput),
            verdict_cell(run.throughput),
            _metric_cell(run.p99),
            verdict_cell(run.p99),
            f"{run.baseline_anomalies} -> {run.candidate_anomalies} ({_verdicts(run)})",
            status(run),
        ]
        for run in comparison.runs
    ]


def summary_line(comparison: Comparison) -> str:
    """The last line: passed only when every run's speed was decided and nothing regressed."""
    n, undecided = len(comparison.regressions), len(comparison.undecided)
    if n:
        return f"result: FAILED, {n} regression(s)"
    if undecided and comparison.allow_undecided:
        return (
            f"result: no regression found, but the speed of {undecided} run(s) is undecided "
            "(accepted by --allow-undecided)"
        )
    if undecided:
        return (
            f"result: UNDECIDED, the speed of {undecided} run(s) could not be decided "
            "(exit 4; --allow-undecided accepts this)"
        )
    return "result: passed, no regression"


def _footer(comparison: Comparison) -> list[str]:
    lines = [
        f"figures: medians over trials (change: ratio of medians of the within-run samples); "
        f"anomalies: totals over all trials. noise: {METHOD}; allowed slowdown "
        f"{comparison.max_slowdown:.0%} (throughput drop or p99 rise, beyond noise); a run "
        "safe in the baseline must stay safe, with no kind of anomaly it did not have."
    ]
    if comparison.only_in_baseline:
        lines.append("only in baseline (not compared): " + ", ".join(comparison.only_in_baseline))
    if comparison.only_in_candidate:
        lines.append("only in candidate (new): " + ", ".join(comparison.only_in_candidate))
    lines += [f"warning: {w}" for w in comparison.warnings]
    lines.append(summary_line(comparison))
    return lines


def _text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _sources(comparison: Comparison) -> list[tuple[str, str]]:
    def describe_source(document: ResultDocument) -> str:
        commit = (document.git_commit or "no commit")[:10]
        version, started = document.racebench_version, document.started_at
        return f"racebench {version} @ {commit}, {started}"

    return [
        (
            "baseline",
            f"{comparison.baseline.path} ({describe_source(comparison.baseline.document)})",
        ),
        (
            "candidate",
            f"{comparison.candidate.path} ({describe_source(comparison.candidate.document)})",
        ),
    ]


def render_text(comparison: Comparison) -> str:
    lines = [f"{name}: {text}" for name, text in _sources(comparison)]
    lines += ["", _text_table(_HEADERS, _rows(comparison)), ""]
    return "\n".join(lines + _footer(comparison)) + "\n"


def _headline(comparison: Comparison) -> str:
    if comparison.failed:
        return "❌ regression"
    if comparison.undecided:
        return "⚠️ undecided" + (" (allowed)" if comparison.allow_undecided else "")
    return "✅ no regression"


def render_markdown(comparison: Comparison, marks: bool = False) -> str:
    """A pull-request comment; with `marks` (--format github) every verdict gets its mark."""
    lines = [f"## racebench compare: {_headline(comparison)}", ""]
    lines += [f"- {name}: `{text}`" for name, text in _sources(comparison)]
    lines += ["", markdown_table(_HEADERS, _rows(comparison, marks), set()), ""]
    lines += [f"- {line}" for line in _footer(comparison)]
    return "\n".join(lines) + "\n\n"  # blank line: other sections may be appended


def render_github(comparison: Comparison) -> str:
    """Markdown with verdict marks, for $GITHUB_STEP_SUMMARY (written there automatically)."""
    return render_markdown(comparison, marks=True)


def _metric_json(change: MetricChange) -> dict[str, Any]:
    return {
        "unit": change.unit,
        "baseline": change.baseline,
        "candidate": change.candidate,
        "change": change.change,
        "baseline_trials": change.baseline_trials,
        "candidate_trials": change.candidate_trials,
        "figures": "median over trials",
        "basis": change.basis,
        "ratio_of_medians": change.ratio,
        "interval": list(change.interval) if change.interval else None,
        "verdict": change.verdict,
        "reason": change.reason or None,
    }


def render_json(comparison: Comparison) -> str:
    document = {
        "schema": COMPARE_SCHEMA,
        "method": METHOD,
        "confidence": CONFIDENCE,
        "max_slowdown": comparison.max_slowdown,
        "baseline": str(comparison.baseline.path),
        "candidate": str(comparison.candidate.path),
        "runs": [
            {
                "label": run.label,
                "trials": {"baseline": run.trials[0], "candidate": run.trials[1]},
                "throughput": _metric_json(run.throughput),
                "p99": _metric_json(run.p99),
                "baseline_verdict": run.baseline_verdict,
                "candidate_verdict": run.candidate_verdict,
                "anomaly_totals": {
                    "baseline": run.baseline_anomalies,
                    "candidate": run.candidate_anomalies,
                    "over": "all trials",
                },
                "new_anomalies": run.new_anomalies,
                "regressions": run.regressions,
                "speed_undecided": run.speed_undecided,
            }
            for run in comparison.runs
        ],
        "only_in_baseline": comparison.only_in_baseline,
        "only_in_candidate": comparison.only_in_candidate,
        "warnings": comparison.warnings,
        "undecided": comparison.undecided,
        "allow_undecided": comparison.allow_undecided,
        "summary": summary_line(comparison),
        "passed": not comparison.failed and not comparison.undecided,
        "exit_status": int(comparison.exit_status),
    }
    return json.dumps(document, indent=2) + "\n"


def render_benchmark_json(comparison: Comparison) -> str:
    """The candidate's throughput in github-action-benchmark's `customBiggerIsBetter` shape.

    One entry per compared run: name, unit, value (median over trials), range (± stdev over
    trials), extra (p99 and verdicts). Throughput only, because a tracker reads one direction
    (bigger or smaller is better) per file.
    """
    entries = []
    for run in comparison.runs:
        trials = run.throughput.candidate_trials
        mean = sum(trials) / len(trials) if trials else 0.0
        stdev = (
            (sum((v - mean) ** 2 for v in trials) / (len(trials) - 1)) ** 0.5
            if len(trials) > 1
            else 0.0
        )
        entries.append(
            {
                "name": run.label,
                "unit": "ops/s",
                "value": run.throughput.candidate,
                "range": f"± {stdev:.1f}",
                "extra": (
                    f"p99 {run.p99.candidate:.2f} ms; {len(trials)} trials; "
                    f"throughput {run.throughput.verdict}; {_status(run)}"
                ),
            }
        )
    return json.dumps(entries, indent=2, ensure_ascii=False) + "\n"


def render_comparison(comparison: Comparison, fmt: str) -> str:
    """`comparison` as text in one of FORMATS."""
    if fmt == "html":  # matplotlib is only imported for this format
        from racebench.output.compare_html import render_compare_html

        return render_compare_html(comparison)

    from racebench.output.junit import comparison_junit

    renderers = {
        "text": render_text,
        "markdown": render_markdown,
        "github": render_github,
        "json": render_json,
        "benchmark-json": render_benchmark_json,
        "junit": comparison_junit,
    }
    return renderers[fmt](comparison)
