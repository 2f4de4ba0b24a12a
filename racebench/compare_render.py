"""Output formats of `racebench compare`: text, markdown, json and benchmark-json."""

from __future__ import annotations

import json
from typing import Any

from racebench.compare import (
    ALPHA,
    METHOD,
    Comparison,
    MetricChange,
    RunComparison,
    describe_change,
)
from racebench.report import markdown_table

FORMATS = ("text", "markdown", "json", "benchmark-json", "html")
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
    if change.p_value is None:
        n_b, n_c = len(change.baseline_trials), len(change.candidate_trials)
        return f"{change.verdict} ({n_b} vs {n_c} trials)"
    return f"{change.verdict} (p={change.p_value:.3f})"


def _status(run: RunComparison) -> str:
    return "REGRESSION: " + "; ".join(run.regressions) if run.regressions else "ok"


def _verdicts(run: RunComparison) -> str:
    if run.baseline_verdict == run.candidate_verdict:
        return run.baseline_verdict
    return f"{run.baseline_verdict} -> {run.candidate_verdict}"


_HEADERS = ["run", "throughput", "verdict", "p99", "verdict", "anomalies", "result"]


def _rows(comparison: Comparison) -> list[list[str]]:
    return [
        [
            run.label,
            _metric_cell(run.throughput),
            _verdict_cell(run.throughput),
            _metric_cell(run.p99),
            _verdict_cell(run.p99),
            f"{run.baseline_anomalies} -> {run.candidate_anomalies} ({_verdicts(run)})",
            _status(run),
        ]
        for run in comparison.runs
    ]


def _footer(comparison: Comparison) -> list[str]:
    lines = [
        f"noise: {METHOD}; allowed slowdown {comparison.max_slowdown:.0%} "
        "(throughput drop or p99 rise, beyond noise); a run safe in the baseline must stay "
        "free of anomalies."
    ]
    if comparison.only_in_baseline:
        lines.append("only in baseline (not compared): " + ", ".join(comparison.only_in_baseline))
    if comparison.only_in_candidate:
        lines.append("only in candidate (new): " + ", ".join(comparison.only_in_candidate))
    lines += [f"warning: {w}" for w in comparison.warnings]
    n = len(comparison.regressions)
    lines.append(f"result: FAILED, {n} regression(s)" if n else "result: passed, no regression")
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
    def describe_source(document: dict[str, Any]) -> str:
        commit = (document.get("git_commit") or "no commit")[:10]
        version, started = document.get("racebench_version"), document.get("started_at")
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


def render_markdown(comparison: Comparison) -> str:
    """A pull-request comment / $GITHUB_STEP_SUMMARY section."""
    status = "❌ regression" if comparison.failed else "✅ no regression"
    lines = [f"## racebench compare: {status}", ""]
    lines += [f"- {name}: `{text}`" for name, text in _sources(comparison)]
    lines += ["", markdown_table(_HEADERS, _rows(comparison), set()), ""]
    lines += [f"- {line}" for line in _footer(comparison)]
    return "\n".join(lines) + "\n\n"  # blank line: other sections may be appended


def _metric_json(change: MetricChange) -> dict[str, Any]:
    return {
        "unit": change.unit,
        "baseline": change.baseline,
        "candidate": change.candidate,
        "change": change.change,
        "baseline_trials": change.baseline_trials,
        "candidate_trials": change.candidate_trials,
        "p_value": change.p_value,
        "verdict": change.verdict,
    }


def render_json(comparison: Comparison) -> str:
    document = {
        "schema": COMPARE_SCHEMA,
        "method": METHOD,
        "alpha": ALPHA,
        "max_slowdown": comparison.max_slowdown,
        "baseline": str(comparison.baseline.path),
        "candidate": str(comparison.candidate.path),
        "runs": [
            {
                "label": run.label,
                "throughput": _metric_json(run.throughput),
                "p99": _metric_json(run.p99),
                "baseline_verdict": run.baseline_verdict,
                "candidate_verdict": run.candidate_verdict,
                "new_anomalies": run.new_anomalies,
                "regressions": run.regressions,
            }
            for run in comparison.runs
        ],
        "only_in_baseline": comparison.only_in_baseline,
        "only_in_candidate": comparison.only_in_candidate,
        "warnings": comparison.warnings,
        "passed": not comparison.failed,
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
        from racebench.compare_html import render_compare_html

        return render_compare_html(comparison)
    renderers = {
        "text": render_text,
        "markdown": render_markdown,
        "json": render_json,
        "benchmark-json": render_benchmark_json,
    }
    return renderers[fmt](comparison)
