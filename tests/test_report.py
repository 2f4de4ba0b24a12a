"""`racebench report` over the golden result file (a real SQLite run committed as JSON).

tests/golden/contention.json was made by `racebench run tests/golden/contention.yaml`; to
refresh the expected outputs after a deliberate change of the report:
`racebench report tests/golden/contention.json > tests/golden/contention.md`.
tests/golden/gc-pause.json was made by `racebench run scenarios/faults/gc-pause.yaml` (Redis),
its timelines then cut to the sections shown around the fault (and marked truncated); it
predates the operation sample, as does contention.json, so both stand for older result files.
tests/golden/gc-pause-sampled.json and isolation.json were made the same way, uncut, by a
racebench that writes `history_sample` (`racebench run scenarios/isolation.yaml` on the local
PostgreSQL and MariaDB).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from racebench.output.plots import FAULT_COLOR, SECTION_COLOR, VIOLATION_COLOR, timeline_window
from racebench.output.report import render_report
from racebench.output.results import read_result
from racebench.result_model import Timeline
from tests.conftest import REPO, cli_in_process, run_cli

GOLDEN = REPO / "tests" / "golden"
RESULT = GOLDEN / "contention.json"
FAULTED = GOLDEN / "gc-pause.json"


def test_markdown_matches_golden() -> None:
    result = run_cli("report", str(RESULT), cwd=GOLDEN)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (GOLDEN / "contention.md").read_text()


def test_markdown_has_one_table_per_workload_with_verdicts() -> None:
    text = render_report([RESULT], "markdown")
    assert text.count("### ") == 1  # one workload: stock
    rows = [line for line in text.splitlines() if line.startswith("| ") and "sqlite" in line]
    assert len(rows) == 12
    none_8 = next(r for r in rows if r.startswith("| none | sqlite | 8 |"))
    assert none_8.endswith("| ANOMALIES |")
    assert sum(r.endswith("| safe |") for r in rows) == 9


def test_json_summary_is_normalized() -> None:
    summary = json.loads(render_report([RESULT], "json"))
    assert summary["schema"] == "racebench.report/1"
    assert summary["sources"][0]["servers"] == {"sqlite (store)": "3.40.1"}
    runs = summary["runs"]
    assert len(runs) == 12
    none_8 = next(r for r in runs if r["strategy"] == "none" and r["clients"] == 8)
    assert none_8["trials"] == 2 and len(none_8["throughput_ops_s"]["trials"]) == 2
    assert none_8["anomaly_total"] == none_8["anomalies"]["lost_updates"] > 0
    lo, mid, hi = (none_8["throughput_ops_s"][k] for k in ("min", "median", "max"))
    assert lo <= mid <= hi


def test_html_is_self_contained_with_plots(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = run_cli("report", str(RESULT), "--format", "html", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    page = out.read_text()
    assert page.count("<svg") == 3  # contention curves, anomalies, latency distribution
    assert "<script" not in page and "<link" not in page
    # The only URLs are XML namespaces inside the SVGs: nothing to fetch.
    assert not re.search(r'(src|href)="https?:', page)
    assert "throughput against clients" in page and "anomalies per strategy" in page
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temp file left


def test_html_timeline_draws_sections_faults_and_violations() -> None:
    document = read_result(FAULTED)
    page = render_report([FAULTED], "html")
    # Anomalies and latency distribution (one client count: no plot against clients), then
    # one timeline per run; no plots over time, since this older file has no sample.
    assert page.count("<svg") == 2 + 2
    assert "throughput against clients" not in page
    assert page.count("No operation sample in this result file") == 2
    timelines = re.findall(r'<figure class="timeline">(.*?)</figure>', page, re.S)
    assert len(timelines) == 2
    for svg, run in zip(timelines, document.runs, strict=True):
        lo, hi, _ = timeline_window(run)
        fault = run.faults[0]
        assert run.timeline is not None
        assert lo == max(0.0, fault.start_ms - 100) and hi == fault.end_ms + 300
        shown = [s for s in run.timeline.critical_sections if s[2] >= lo and s[1] <= hi]
        overlaps = [v for v in run.timeline.violations if v[1] >= lo and v[0] <= hi]
        assert len(overlaps) > 10  # the paused client overlapped the others, fenced or not
        # One path per bar, plus the legend's swatch of each colour.
        assert svg.count(f"fill: {SECTION_COLOR}") == len(shown) + 1
        assert svg.count(f"fill: {VIOLATION_COLOR}") == len(overlaps) + 1
        assert svg.count(f"fill: {FAULT_COLOR}; opacity: 0.25") == 1  # the shaded pause
        assert "pause_client c0: SIGSTOP for 400 ms" in svg
        assert f"{run.label}: {run.verdict}" in svg
    assert "100 ms before the first fault to 300 ms after the last one ends" in page
    assert page.count("Only the first") == 2  # the golden's timelines were cut


def test_timeline_without_faults_shows_the_start_of_the_run() -> None:
    golden = read_result(FAULTED).runs[0]
    for last, shown in ((2400.0, (0.0, 1000.0)), (250.0, (0.0, 250.0))):
        timeline = Timeline(critical_sections=[[0, 5.0, 9.0], [1, 9.5, last]])
        run = golden.model_copy(update={"faults": [], "timeline": timeline})
        assert timeline_window(run)[:2] == shown  # a short run is shown whole


def test_output_layer_never_imports_the_engine() -> None:
    """Reports and compare read result files: the runner, engine and checkers stay out."""
    code = (
        "import sys, racebench.output.report, racebench.output.report_html, racebench.output.plots,"
        " racebench.output.run_plots, racebench.output.compare, racebench.output.compare_render,"
        " racebench.output.compare_html;"
        "engine = {m for m in sys.modules"
        " if m.startswith(('racebench.engine', 'racebench.workloads'))"
        " or m in ('racebench.analysis.verdict', 'racebench.output.render')};"
        "assert not engine, engine"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_report_imports_nothing_heavy_until_needed() -> None:
    code = (
        "import sys, racebench.cli, racebench.output.report, racebench.output.compare;"
        "heavy = {'matplotlib', 'scipy'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json at all", "not a JSON file"),
        ('{"schema": "racebench.result/9", "runs": []}', "schema is 'racebench.result/9'"),
        ('{"schema": "racebench.result/1", "runs": [{"label": "x"}]}', "runs[0].workload: missing"),
    ],
)
def test_unusable_result_is_exit_2_and_one_line(tmp_path: Path, content: str, message: str):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    result = cli_in_process("report", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr and str(bad) in result.stderr
