"""The HTML report's content over golden result files, and the history sample behind its plots.

The golden files are real runs (see tests/test_report.py); isolation.json has mapping-valued
matrix values, gc-pause-sampled.json a lock, a fault and a fenced run.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from racebench.analysis.history_sample import MAX_SAMPLED_OPS, sample_history
from racebench.history import RECORD_DTYPE, Outcome, RunHistory
from racebench.output.plots import FAULT_COLOR, VIOLATION_COLOR
from racebench.output.report import render_report
from racebench.output.results import to_json
from racebench.util.naming import params_text, short_param
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden"
ISOLATION = GOLDEN / "isolation.json"
SAMPLED = GOLDEN / "gc-pause-sampled.json"
CONTENTION = GOLDEN / "contention.json"


@pytest.fixture(scope="module")
def page() -> str:
    """The report over three result files, as a reader would open it (rendered once: the
    plots of 28 runs take a while on a busy machine)."""
    return render_report([SAMPLED, ISOLATION, CONTENTION], "html")


def _section(page: str, scenario: str) -> str:
    start = page.index(f'<h2 id="scenario-{scenario}">')
    end = page.find("<h2 ", start + 1)
    return page[start : end if end > 0 else len(page)]


def _headers(section: str) -> list[str]:
    head = re.search(r"<thead>(.*?)</thead>", section, re.S)
    assert head is not None
    return [re.sub(r"<wbr>", "", h) for h in re.findall(r"<th>(.*?)</th>", head.group(1))]


def test_mapping_matrix_values_get_short_names(page: str) -> None:
    lock = {"service": "redis_lock", "ttl_ms": 10000}
    assert short_param("guard.lock", lock) == "lock=redis_lock(ttl_ms=10000)"
    params = {"store": {"backend": "postgres"}, "workload": {"type": "withdraw", "amount": 10}}
    assert params_text(params) == "store=postgres, workload=withdraw(amount=10)"
    isolation = _section(page, "isolation")
    # No dict repr or JSON object anywhere a reader looks: table, legends, titles.
    text = re.sub(r"<svg.*?</svg>", "", isolation, flags=re.S)
    legends = "".join(re.findall(r"<text[^>]*>([^<]*)</text>", isolation))
    for shown in (text, legends):
        assert "{'" not in shown and '{"' not in shown and "&#x27;" not in shown
    assert "read_committed [store=postgres, workload=stock(initial=1000)]" in legends


def test_one_section_per_scenario_with_the_columns_that_tell_runs_apart(page: str) -> None:
    assert re.findall(r'<h2 id="scenario-([^"]+)">', page) == [
        "gc-pause",
        "isolation",
        "contention",
    ]
    locked = _headers(_section(page, "gc-pause"))
    for header in ("run", "acquire p50 ms", "acquire p99 ms", "hold p99 ms", "fairness"):
        assert header in locked
    assert locked[-3:] == ["fenced", "faults", "verdict"]
    gc_pause = _section(page, "gc-pause")
    assert "yes, 1 rejected" in gc_pause and ">no<" in gc_pause
    assert "pause_<wbr>client c0" in gc_pause
    isolation = _headers(_section(page, "isolation"))
    assert "fairness" not in isolation  # no lock in these runs
    assert isolation[0] == "run" and isolation[-3:] == ["fenced", "faults", "verdict"]
    # Every run of isolation has 4 clients: said once above the table, not in a column.
    assert "clients" not in isolation
    assert "All runs: clients 4." in _section(page, "isolation")
    # The verdict legend, as in the markdown report.
    assert re.search(r'<dt class="v-unexpected">UNEXPECTED</dt><dd>a strategy that', page)


def test_a_plot_with_one_point_per_series_is_not_drawn(page: str) -> None:
    assert "throughput against clients" not in _section(page, "isolation")
    assert "throughput against clients" in _section(page, "contention")  # 1, 4, 8 clients


def test_each_run_gets_latency_and_throughput_over_time(page: str) -> None:
    document = json.loads(SAMPLED.read_text())
    section = _section(page, "gc-pause")
    plots = re.findall(r'<figure class="run-plot">(.*?)</figure>', section, re.S)
    assert len(plots) == len(document["runs"]) == 2
    for svg, run in zip(plots, document["runs"], strict=True):
        sample = run["history_sample"]
        assert "latency of each operation" in svg and "throughput per outcome" in svg
        assert svg.count("<image") == 1  # the scatter of operations, as one raster
        assert f"fill: {FAULT_COLOR}; opacity: 0.25" in svg  # the pause, shaded
        assert f"stroke: {VIOLATION_COLOR}" in svg  # overlaps marked where they happened
        assert f"{len(sample['ops']):,} of {sample['total_ops']:,} operations shown" in section
    fenced = plots[1]
    assert "fenced (stale token)" in fenced and "fenced (stale token)" not in plots[0]
    # The timelines stay for lock runs.
    assert section.count('<figure class="timeline">') == 2


def _history(outcomes: np.ndarray) -> RunHistory:
    """A history of back-to-back 1 ms operations on one client, with these outcomes."""
    records = np.zeros(len(outcomes), dtype=RECORD_DTYPE)
    records["start"] = np.arange(len(outcomes), dtype=np.int64) * 1_000_000
    records["end"] = records["start"] + 1_000_000
    records["outcome"] = outcomes
    records["error"] = -1
    count = len(outcomes)
    return RunHistory(records, np.zeros(count, np.int32), np.arange(count), [])


def test_history_sample_is_capped_and_keeps_what_went_wrong() -> None:
    outcomes = np.full(50_000, Outcome.OK, dtype=np.uint8)
    outcomes[::500] = Outcome.UNKNOWN  # 100 timeouts spread over the run
    outcomes[7] = Outcome.STALE
    sample = sample_history(_history(outcomes), t0_ns=0)
    assert sample is not None
    ops = sample["ops"]
    assert len(ops) == MAX_SAMPLED_OPS and sample["total_ops"] == 50_000
    names = sample["outcomes"]
    kept = [names[o] for _, _, o in ops]
    assert kept.count("unknown") == 100 and kept.count("stale") == 1  # every one of them
    assert [op[0] for op in ops] == sorted(op[0] for op in ops)
    assert all(op[1] == 1.0 for op in ops)
    # Completions count every operation, not the sample.
    completions = sample["completions"]
    assert sum(completions["ok"]) == 50_000 - 101 and sum(completions["unknown"]) == 100
    assert len(completions["ok"]) <= 200


def test_result_file_stays_small_and_readable() -> None:
    document = json.loads(SAMPLED.read_text())
    text = to_json(document)
    assert json.loads(text) == document
    # One line per sampled operation, not one per number.
    assert re.search(r"\n\s+\[\d+(\.\d+)?, \d+(\.\d+)?, \d\],?\n", text)
    assert len(text) < 60_000
    for run in document["runs"]:
        assert len(run["history_sample"]["ops"]) <= MAX_SAMPLED_OPS


def test_compare_html_shows_before_after_and_the_decision(tmp_path: Path) -> None:
    from tests.conftest import cli_in_process

    slower = json.loads(CONTENTION.read_text())
    for run in slower["runs"]:
        run["throughput_ops_s"] /= 2.5
        for trial in run["trials"]:
            trial["throughput_ops_s"] /= 2.5
    candidate = tmp_path / "candidate.json"
    candidate.write_text(json.dumps(slower))
    out = tmp_path / "compare.html"
    result = cli_in_process(
        "compare", str(CONTENTION), str(candidate), "--format", "html", "--output", str(out)
    )
    assert result.stdout == ""
    page = out.read_text()
    assert page.count("<svg") == 1 and "<script" not in page
    rows = re.findall(r"<tr><td class=\"label\">(.*?)</tr>", page, re.S)
    assert len(rows) == 12
    atomic_1 = next(r for r in rows if r.startswith("contention[guard.strategy=atomic,clients=1]"))
    assert "23,318" in atomic_1 and "9,327" in atomic_1 and "-60%" in atomic_1
    # The decision is compare's own, whatever its statistics say.
    from racebench.output.compare import compare_results
    from racebench.output.compare_html import decision_text

    comparison = compare_results(CONTENTION, candidate, 0.10)
    for run, row in zip(comparison.runs, rows, strict=True):
        assert decision_text(run.throughput) in row
        assert ("REGRESSION" in row) == bool(run.regressions)


# --- In a real browser: headless Chromium at 1280x800, driven by Playwright -------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (the system's, no download); under CI=true its absence fails."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        binary = None
    if binary is None:
        reason = (
            "chromium or playwright missing (scripts/install-servers.sh; pip install -e .[dev])"
        )
        if os.environ.get("CI", "").lower() in {"true", "1"}:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        # --no-sandbox: Chromium refuses to run as root without it.
        chromium = playwright.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _open(browser: Any, path: Path) -> tuple[Any, list[str]]:
    """The page at 1280x800, and every URL it requested besides itself."""
    tab = browser.new_page(viewport={"width": 1280, "height": 800})
    requests: list[str] = []
    tab.on("request", lambda request: requests.append(request.url))
    tab.goto(path.as_uri())
    tab.wait_for_load_state("load")
    return tab, [url for url in requests if url != path.as_uri()]


def _ink(png: bytes) -> tuple[int, float]:
    """(pixels darker than near-white, grey-level spread) of a screenshot."""
    from PIL import Image, ImageStat

    image = Image.open(io.BytesIO(png)).convert("L")
    return sum(image.histogram()[:200]), ImageStat.Stat(image).stddev[0]


def _check_in_browser(browser: Any, path: Path, figures: int) -> None:
    tab, requests = _open(browser, path)
    try:
        assert requests == []  # no font, script, image or stylesheet fetched
        scroll_width, inner_width = tab.evaluate(
            "[document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert inner_width == 1280
        assert scroll_width <= inner_width, f"page is {scroll_width} px wide"
        drawn = tab.locator("figure svg")
        assert drawn.count() == figures
        for i in range(figures):
            dark, spread = _ink(drawn.nth(i).screenshot())
            assert dark > 2_000 and spread > 20, f"figure {i}: {dark} dark pixels"
    finally:
        tab.close()


@pytest.mark.chromium
def test_report_fits_1280_and_every_plot_has_ink(browser: Any, page: str, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text(page)
    # gc-pause: anomalies, latency, 2 x (over time, timeline); isolation: anomalies, latency,
    # 12 x over time; contention: against clients, anomalies, latency.
    _check_in_browser(browser, path, figures=2 + 4 + 2 + 12 + 3)


@pytest.mark.chromium
def test_compare_page_fits_1280_and_has_ink(browser: Any, tmp_path: Path) -> None:
    from racebench.output.compare import compare_results
    from racebench.output.compare_html import render_compare_html

    path = tmp_path / "compare.html"
    path.write_text(render_compare_html(compare_results(ISOLATION, ISOLATION, 0.10)))
    _check_in_browser(browser, path, figures=1)


def test_compare_decision_shows_the_interval_when_compare_gives_one() -> None:
    from racebench.output.compare import compare_results
    from racebench.output.compare_html import decision_text

    change = compare_results(CONTENTION, CONTENTION, 0.10).runs[0].throughput
    assert decision_text(change).startswith(change.verdict)
    change.interval = (0.69, 0.88)  # type: ignore[attr-defined]  # of candidate/baseline
    assert decision_text(change) == f"{change.verdict}, interval -31% to -12%"


def test_a_broken_history_sample_is_one_line_and_exit_2(tmp_path: Path) -> None:
    from tests.conftest import cli_in_process

    document = json.loads(SAMPLED.read_text())
    document["runs"][1]["history_sample"]["ops"][3] = [12.5, "fast"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    result = cli_in_process("report", str(bad), "--format", "html")
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert "runs[1].history_sample.ops[3]" in line, line
