"""The HTML report: one self-contained file (inline CSS and SVG plots, no script, no CDN) that
opens offline and can be attached to a CI run as a single artifact."""

from __future__ import annotations

import html

from racebench.plots import timeline_figures, workload_figures
from racebench.report import (
    LoadedResult,
    anomaly_names,
    by_workload,
    setup_summary,
    table_rows,
)
from racebench.verdict import ANOMALIES, INCONCLUSIVE, SAFE, UNEXPECTED

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1200px; }
h1 { font-size: 1.5rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.v-safe { color: #1a7f37; font-weight: bold; } td.v-anomalies { color: #9a6700; }
td.v-unexpected { color: #fff; background: #cf222e; font-weight: bold; }
td.v-inconclusive { color: #8250df; font-weight: bold; }
figure { margin: 1.5rem 0; } figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.85rem; } .setup { color: #555; font-size: 0.85rem; }
"""

_VERDICT_CLASSES = {
    SAFE: "v-safe",
    ANOMALIES: "v-anomalies",
    UNEXPECTED: "v-unexpected",
    INCONCLUSIVE: "v-inconclusive",
}


def _table(headers: list[str], rows: list[list[str]], verdicts: list[str]) -> str:
    numeric = set(range(2, len(headers) - 1)) - {4}
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row, verdict in zip(rows, verdicts, strict=True):
        cells = []
        for i, text in enumerate(row):
            css = "num" if i in numeric else ""
            if i == len(row) - 1:
                css = _VERDICT_CLASSES.get(verdict, "")
            cells.append(f'<td class="{css}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(css_class: str, svg: str, caption: str) -> str:
    return (
        f'<figure class="{css_class}">{svg}<figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def render_html(results: list[LoadedResult]) -> str:
    """The whole page: setup of each source, then per workload its table and plots."""
    parts = ["<h1>racebench report</h1>", '<ul class="setup">']
    for result in results:
        source = result.document.get("scenario", {}).get("source", "?")
        parts.append(
            f"<li><code>{html.escape(result.path.name)}</code> ({html.escape(str(source))}): "
            f"{html.escape(setup_summary(result.document))}</li>"
        )
    parts.append("</ul>")
    groups = by_workload(results)
    for index, (workload, runs) in enumerate(groups.items()):
        headers, rows = table_rows(runs)
        parts.append(f'<h2 id="workload-{html.escape(workload)}">{html.escape(workload)}</h2>')
        parts.append(_table(headers, rows, [r["verdict"] for r in runs]))
        sourced = [
            (res.path.stem, run)
            for res in results
            for run in res.runs
            if run["workload"] == workload
        ]
        for caption, svg in workload_figures(sourced, anomaly_names(runs), f"w{index}"):
            parts.append(_figure("plot", svg, caption))
        timelines = timeline_figures(sourced, f"w{index}")
        if timelines:
            parts.append(f'<h3 id="timelines-{html.escape(workload)}">Timelines</h3>')
        parts.extend(_figure("timeline", svg, caption) for caption, svg in timelines)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>racebench report</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
