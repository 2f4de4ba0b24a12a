"""Reports over result files: markdown for pull requests, a normalized JSON summary, and the
entry point that also dispatches to the self-contained HTML page (racebench.output.report_html).

Reports read only result documents, through the typed model (racebench.result_model), never
live servers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from racebench.errors import ResultFileError
from racebench.output.results import read_result
from racebench.result_model import ResultDocument, RunEntry
from racebench.util.naming import UNEXPECTED, anomaly_examples_summary, client_bound_caption

FORMATS = ("markdown", "html", "json")
REPORT_SCHEMA = "racebench.report/1"


@dataclass
class LoadedResult:
    """One result document and the path it was read from."""

    path: Path
    document: ResultDocument

    @property
    def runs(self) -> list[RunEntry]:
        return self.document.runs


def load_result(path: Path) -> LoadedResult:
    """Read a result file into the typed model (one line naming the field if it does not fit)."""
    return LoadedResult(Path(path), read_result(path))


def trial_values(run: RunEntry, metric: str) -> list[float]:
    """Per-trial values of `throughput` or `p99`, the basis of every noise judgement."""
    return run.trial_values(metric)


def server_versions(document: ResultDocument) -> dict[str, str]:
    """Flatten environment.servers into {"sqlite store": "3.40.1", "redis lock": "7.0.15"}."""
    versions: dict[str, str] = {}
    for backend, roles in sorted(document.environment.servers.items()):
        for role, info in sorted(roles.items()):
            versions[f"{info.server or backend} ({role})"] = info.version or "?"
    return versions


def setup_summary(document: ResultDocument) -> str:
    """One line on where a result came from: version, commit, CPUs, servers, scenario hash."""
    commit = document.git_commit
    parts = [f"racebench {document.racebench_version or '?'}"]
    if commit:
        parts[0] += f" @ {commit[:10]}"
    parts.append(f"{document.host.cpu_count or '?'} CPUs")
    parts += [f"{name} {version}" for name, version in server_versions(document).items()]
    parts.append(f"scenario hash {document.scenario.hash or '?'}")
    parts.append(document.started_at or "")
    if document.partial:
        parts.append("PARTIAL (interrupted)")
    return ", ".join(p for p in parts if p)


def anomaly_names(runs: Iterable[RunEntry]) -> list[str]:
    """Anomaly kinds seen in these runs, in first-seen order."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.anomalies))
    return list(names)


def by_workload(results: list[LoadedResult]) -> dict[str, list[RunEntry]]:
    """All runs of all files grouped by workload, each group in file and run order."""
    groups: dict[str, list[RunEntry]] = {}
    for result in results:
        for run in result.runs:
            groups.setdefault(run.workload, []).append(run)
    return groups


def format_count(value: float) -> str:
    return f"{value:,.0f}"


def throughput_range(run: RunEntry) -> str:
    """min-max of per-trial throughput, or a note that one trial gives no spread."""
    values = trial_values(run, "throughput")
    if len(values) < 2:
        return "1 trial"
    return f"{format_count(min(values))} to {format_count(max(values))} ({len(values)} trials)"


def errors_of(run: RunEntry) -> int:
    return run.operations.failed


def verdict_text(run: RunEntry) -> str:
    verdict = run.verdict + (" (partial)" if run.interrupted else "")
    if run.faults_not_fired:
        verdict += " (fault did not fire)"
    if not run.passed:
        verdict += " ✗"
    return verdict


def table_rows(runs: list[RunEntry]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells shared by the markdown and HTML tables of one workload."""
    names = anomaly_names(runs)
    headers = ["strategy", "backend", "clients", "ops/s", "ops/s range", "p99 ms"]
    headers += ["retries", "errors", *names, "verdict"]
    rows = []
    for run in runs:
        cells = [
            run.strategy_label,
            run.backend,
            str(run.clients),
            format_count(run.throughput_ops_s),
            throughput_range(run),
            f"{run.latency_ms.p99:.2f}",
            str(run.operations.retries),
            str(errors_of(run)),
        ]
        cells += [str(run.anomalies.get(n, "-")) for n in names]
        cells.append(verdict_text(run))
        rows.append(cells)
    return headers, rows


def markdown_table(headers: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    """A GitHub-flavoured markdown table; columns in `numeric` are right-aligned."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    align = ["---:" if i in numeric else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(results: list[LoadedResult]) -> str:
    """Tables fit for a pull-request comment or $GITHUB_STEP_SUMMARY, one per workload."""
    out = ["## racebench report", ""]
    for result in results:
        scenario = result.document.scenario.source or "?"
        out.append(f"- `{result.path.name}` ({scenario}): {setup_summary(result.document)}")
    for workload, runs in by_workload(results).items():
        headers, rows = table_rows(runs)
        for row, run in zip(rows, runs, strict=True):
            if run.verdict == UNEXPECTED:
                row[-1] = f"**{row[-1]}**"
        numeric = set(range(2, len(headers) - 1)) - {4}
        out += ["", f"### {workload}", "", markdown_table(headers, rows, numeric)]
        if any(len(run.trials) > 1 for run in runs):
            out += ["", _TRIALS_NOTE]
        out += _markdown_examples(runs)
    bound = client_bound_caption([r for res in results for r in res.runs])
    if bound:
        out += [""] + [f"- **{line}**" for line in bound.splitlines()]
    unexpected = sum(r.verdict == UNEXPECTED for res in results for r in res.runs)
    out += ["", _verdict_note(unexpected)]
    # A trailing blank line keeps sections apart when CI appends several to one summary.
    return "\n".join(out) + "\n\n"


# Examples per run in markdown (a pull-request comment); the result file and HTML keep 20.
MARKDOWN_EXAMPLES = 5


def _markdown_examples(runs: list[RunEntry]) -> list[str]:
    """Each run's first attributed anomalies, as nested bullets."""
    lines = []
    for run in runs:
        shown, more = anomaly_examples_summary(run, MARKDOWN_EXAMPLES)
        if not shown:
            continue
        lines.append(f"- `{run.label}`")
        lines += [f"  - {' '.join(text.split())}" for text in shown]  # one line each
        if more:
            lines.append(f"  - … {more} more in the result file")
    if not lines:
        return []
    return ["", "Anomalies by operation (`cN#S`: client N's operation S):", "", *lines]


_TRIALS_NOTE = (
    "With several trials: ops/s is the median over the trials (range: min to max); p99 is "
    "over all trials' operations together; retries, errors and anomalies are totals over "
    "the trials."
)


def _verdict_note(unexpected: int) -> str:
    note = (
        "Verdicts: **safe** = the strategy claims safety and no anomaly happened; ANOMALIES = "
        "an unguarded or weaker strategy showed what it allows; UNEXPECTED = a strategy that "
        "claims safety showed an anomaly; race not reproduced = no anomaly, but no claim either."
    )
    if unexpected:
        note = f"**{unexpected} run(s) UNEXPECTED.** " + note
    return note


def report_summary(results: list[LoadedResult]) -> dict[str, Any]:
    """A normalized machine-readable summary: one flat entry per run, sources described."""
    sources = [
        {
            "path": str(r.path),
            "scenario": r.document.scenario.source,
            "scenario_hash": r.document.scenario.hash,
            "racebench_version": r.document.racebench_version,
            "git_commit": r.document.git_commit,
            "started_at": r.document.started_at,
            "partial": r.document.partial,
            "cpu_count": r.document.host.cpu_count,
            "servers": server_versions(r.document),
        }
        for r in results
    ]
    runs = []
    for index, result in enumerate(results):
        for run in result.runs:
            throughput = trial_values(run, "throughput")
            runs.append(
                {
                    "source": index,
                    "label": run.label,
                    "workload": run.workload,
                    "backend": run.backend,
                    "strategy": run.strategy_label,
                    "clients": run.clients,
                    "trials": len(run.trials),
                    "throughput_ops_s": {
                        "median": run.throughput_ops_s,
                        "min": min(throughput, default=None),
                        "max": max(throughput, default=None),
                        "trials": throughput,
                    },
                    "latency_ms": run.latency_ms.model_dump(),
                    "p99_ms_trials": trial_values(run, "p99"),
                    "retries": run.operations.retries,
                    "errors": errors_of(run),
                    "anomalies": run.anomalies,
                    "anomaly_total": sum(run.anomalies.values()),
                    "verdict": run.verdict,
                    "passed": run.passed,
                }
            )
    return {"schema": REPORT_SCHEMA, "sources": sources, "runs": runs}


def render_report(paths: list[Path], fmt: str) -> str:
    """Read result files and render them as `markdown`, `html` or `json` text."""
    if fmt not in FORMATS:
        raise ResultFileError(f"unknown report format {fmt!r} (known: {', '.join(FORMATS)})")
    results = [load_result(p) for p in paths]
    if fmt == "markdown":
        return render_markdown(results)
    if fmt == "json":
        return json.dumps(report_summary(results), indent=2) + "\n"
    from racebench.output.report_html import render_html

    return render_html(results)
