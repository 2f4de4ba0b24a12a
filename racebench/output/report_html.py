"""The HTML report: one self-contained file (inline CSS and SVG plots, no script, no CDN) that
opens offline and can be attached to a CI run as a single artifact.

Laid out for a 1280 px wide window: tables wrap their long cells instead of scrolling, one
section per scenario, and under each scenario its runs with their plots over time.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

from racebench.output.plots import scenario_figures, timeline_figures
from racebench.output.report import (
    LoadedResult,
    anomaly_names,
    errors_of,
    format_count,
    setup_summary,
    throughput_range,
    verdict_text,
)
from racebench.output.run_plots import run_figures
from racebench.result_model import RunEntry
from racebench.util.naming import (
    ANOMALIES,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    SAFE,
    UNEXPECTED,
    VERDICT_MEANINGS,
    fault_summary,
    params_text,
)

CSS = """
* { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 0; color: #222; }
main { max-width: 1280px; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.5rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
h3 { margin-top: 2rem; } h4 { margin: 1.5rem 0 0.3rem; font-size: 0.95rem; }
code { overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.8rem; width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.35rem; vertical-align: top; }
td.label { overflow-wrap: anywhere; } td.label:first-child { min-width: 8rem; }
th { background: #f3f3f3; font-weight: 600; text-align: left; font-size: 0.72rem; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td .sub { display: block; color: #666; font-size: 0.7rem; white-space: normal; }
.v-safe { color: #1a7f37; font-weight: bold; } .v-anomalies { color: #9a6700; font-weight: bold; }
.v-unexpected { color: #fff; background: #cf222e; font-weight: bold; }
.v-not-reproduced { color: #666; } .v-inconclusive { color: #8250df; font-weight: bold; }
figure { margin: 1rem 0; } figure svg { display: block; max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.8rem; } .setup, .note { color: #555; font-size: 0.85rem; }
ul.anomalies { font-size: 0.8rem; margin: 0.3rem 0; padding-left: 1.2rem; }
ul.anomalies .mark { color: #cf222e; font-weight: 600; }
dl.verdicts { display: grid; grid-template-columns: max-content 1fr; gap: 0.2rem 0.8rem;
  font-size: 0.85rem; } dl.verdicts dd { margin: 0; }
"""

VERDICT_CLASSES = {
    SAFE: "v-safe",
    ANOMALIES: "v-anomalies",
    UNEXPECTED: "v-unexpected",
    NOT_REPRODUCED: "v-not-reproduced",
    INCONCLUSIVE: "v-inconclusive",
}

SourcedRun = tuple[str, RunEntry]


def _e(text: object) -> str:
    return html.escape(str(text))


def _breakable(text: object) -> str:
    """Escaped text with line-break opportunities after `_ : + , = /` (identifiers such as
    `lock:redis_lock+fencing` have no spaces, and would otherwise widen their column)."""
    return re.sub(r"([_:+,=/])", r"\1<wbr>", _e(text))


def _anchor(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _lock_cells(run: RunEntry) -> list[str]:
    """acquire p50/p99, hold p99, fairness (smallest to largest share of grants a client got)."""
    lock = run.lock
    if lock is None:
        return ["-"] * 4
    fairness = lock.fairness
    return [
        _ms(lock.acquire_ms.p50),
        _ms(lock.acquire_ms.p99),
        _ms(lock.hold_ms.p99),
        "-" if fairness is None else f"{fairness.min_share:.0%} to {fairness.max_share:.0%}",
    ]


def _fenced_cell(run: RunEntry) -> str:
    if not run.fencing:
        return "no"
    rejected = run.lock.stale_writes_rejected if run.lock else None
    if rejected is None:
        rejected = run.operations.stale
    return f"yes, {rejected} rejected"


# Columns that describe a run's setup; when every run of a section shares a value, it is
# said once above the table instead, which leaves the width to the columns that differ.
_SETUP_COLUMNS: dict[str, Callable[[RunEntry], str]] = {
    "strategy": lambda run: run.strategy_label,
    "backend": lambda run: run.backend,
    "workload": lambda run: run.workload,
    "clients": lambda run: str(run.clients),
}


_ANOMALY_HEADERS = {"mutual_exclusion_violations": "ME violations"}


def shared_setup(runs: list[RunEntry]) -> dict[str, str]:
    """The setup columns whose value is the same for every run (only with several runs)."""
    if len(runs) < 2:
        return {}
    shared = {}
    for header, value_of in _SETUP_COLUMNS.items():
        values = {value_of(run) for run in runs}
        if len(values) == 1:
            shared[header] = values.pop()
    return shared


def _speed_cell(run: RunEntry) -> str:
    text = _e(format_count(run.throughput_ops_s))
    if len(run.trials) > 1:
        text += f'<span class="sub">{_e(throughput_range(run))}</span>'
    return text


def scenario_table(sourced: list[SourcedRun]) -> str:
    """One row per run. Label, fenced and faults columns are always there (they tell runs
    apart); lock columns when a run used a lock; anomaly columns for every kind seen."""
    runs = [run for _, run in sourced]
    several_sources = len({source for source, _ in sourced}) > 1
    names = anomaly_names(runs)
    with_lock = any(run.lock for run in runs)
    shared = shared_setup(runs)
    setup = [h for h in _SETUP_COLUMNS if h not in shared]
    headers = ["run", *(["source"] if several_sources else []), *setup]
    headers += ["ops/s", "p50 ms", "p99 ms", "retries", "errors"]
    headers += [_ANOMALY_HEADERS.get(n, n.replace("_", " ")) for n in names]
    if with_lock:
        headers += ["acquire p50 ms", "acquire p99 ms", "hold p99 ms", "fairness"]
    headers += ["fenced", "faults", "verdict"]
    rows = []
    for source, run in sourced:
        label = params_text(run.params) or run.label
        anchor = _anchor(source + run.label)
        cells = [("label", f'<a href="#run-{anchor}">{_breakable(label)}</a>')]
        if several_sources:
            cells.append(("label", _breakable(source)))
        cells += [
            ("num" if h == "clients" else "", _breakable(_SETUP_COLUMNS[h](run))) for h in setup
        ]
        latency = run.latency_ms
        cells += [("num", _speed_cell(run))]
        cells += [("num", _ms(latency.p50)), ("num", _ms(latency.p99))]
        cells += [("num", str(run.operations.retries)), ("num", str(errors_of(run)))]
        cells += [("num", _e(run.anomalies.get(n, "-"))) for n in names]
        if with_lock:
            lock = _lock_cells(run)
            cells += [("num", c) for c in lock[:3]] + [("", lock[3])]
        cells.append(("", _e(_fenced_cell(run))))
        cells.append(("label", _breakable(fault_summary(run.faults, run.faults_not_fired))))
        cells.append((VERDICT_CLASSES.get(run.verdict, ""), _e(verdict_text(run))))
        rows.append("<tr>" + "".join(f'<td class="{c}">{t}</td>' for c, t in cells) + "</tr>")
    head = "".join(f"<th>{_breakable(h)}</th>" for h in headers)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    if not shared:
        return table
    said = ", ".join(f"{h} {_e(v)}" for h, v in shared.items())
    return f'<p class="note">All runs: {said}.</p>' + table


def verdict_legend() -> str:
    """What each verdict means, as in the markdown report's note."""
    items = "".join(
        f'<dt class="{VERDICT_CLASSES[v]}">{_e(v)}</dt><dd>{_e(meaning)}</dd>'
        for v, meaning in VERDICT_MEANINGS.items()
    )
    return f'<dl class="verdicts">{items}</dl>'


def figure_html(css_class: str, svg: str, caption: str) -> str:
    return f'<figure class="{css_class}">{svg}<figcaption>{_e(caption)}</figcaption></figure>'


def by_scenario(results: list[LoadedResult]) -> dict[str, list[SourcedRun]]:
    """All runs grouped by scenario name, each paired with its file's stem, in file order."""
    groups: dict[str, list[SourcedRun]] = {}
    for result in results:
        scenario = result.document.scenario
        name = scenario.name or scenario.source or "?"
        groups.setdefault(name, []).extend((result.path.stem, run) for run in result.runs)
    return groups


_NO_SAMPLE_NOTE = (
    '<p class="note">No operation sample in this result file (written by an older'
    " racebench): no latency or throughput over time.</p>"
)


def _has_plots_over_time(run: RunEntry) -> bool:
    sections = run.timeline.critical_sections if run.timeline else []
    return bool(run.history_sample or sections or run.faults)


def _examples_html(run: RunEntry) -> list[str]:
    """The run's attributed anomalies (up to 20, as the result file keeps them)."""
    examples = run.anomaly_examples
    if not examples:
        return []
    several = len(run.trials) > 1
    items = []
    for e in examples:
        where = f"at {e.end_ms / 1000:.3f}s" if e.end_ms is not None else ""
        if several:
            where += f", trial {e.trial + 1}"
        mark = f' <span class="mark">{_e(e.note)}</span>' if e.note else ""
        items.append(f'<li>{_e(e.text)} <span class="sub">{_e(where)}</span>{mark}</li>')
    intro = (
        f'<p class="note">The first {len(examples)} anomalies by operation (cN#S: client N\'s'
        " operation S; the table counts them all):</p>"
    )
    return [intro, f'<ul class="anomalies">{"".join(items)}</ul>']


def _run_section(source: str, run: RunEntry, several: bool, salt: str) -> list[str]:
    params = params_text(run.params)
    name = f"{run.label.split('[')[0]}[{params}]" if params else run.label
    title = name + (f" ({source})" if several else "") + f": {run.verdict}"
    parts = [f'<h4 id="run-{_anchor(source + run.label)}">{_e(title)}</h4>']
    parts += _examples_html(run)
    figures = run_figures(run, salt)
    parts += [figure_html("run-plot", svg, caption) for caption, svg in figures]
    if not figures:
        parts.append(_NO_SAMPLE_NOTE)
    parts += [
        figure_html("timeline", svg, caption)
        for caption, svg in timeline_figures([(source, run)], salt)
    ]
    return parts


def render_html(results: list[LoadedResult]) -> str:
    """The whole page: sources, verdict legend, then per scenario its table and plots."""
    parts = ["<h1>racebench report</h1>", '<ul class="setup">']
    for result in results:
        source = result.document.scenario.source or "?"
        parts.append(
            f"<li><code>{_e(result.path.name)}</code> ({_e(source)}): "
            f"{_e(setup_summary(result.document))}</li>"
        )
    parts += ["</ul>", verdict_legend()]
    for index, (scenario, sourced) in enumerate(by_scenario(results).items()):
        several = len({source for source, _ in sourced}) > 1
        parts.append(f'<h2 id="scenario-{_anchor(scenario)}">{_e(scenario)}</h2>')
        parts.append(scenario_table(sourced))
        names = anomaly_names(run for _, run in sourced)
        parts += [
            figure_html("plot", svg, caption)
            for caption, svg in scenario_figures(sourced, names, f"s{index}")
        ]
        parts.append("<h3>Runs over time</h3>")
        if not any(_has_plots_over_time(run) for _, run in sourced):
            parts.append(_NO_SAMPLE_NOTE)
            continue
        for i, (source, run) in enumerate(sourced):
            parts += _run_section(source, run, several, f"s{index}-r{i}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>racebench report</title><style>{CSS}</style></head>\n<body><main>\n"
        + "\n".join(parts)
        + "\n</main></body></html>\n"
    )
