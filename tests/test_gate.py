"""The CI gate on real SQLite runs: within-run samples, one-trial compares, exit 4 for an
undecided speed, labels as keys, interleaved trials, JUnit and GitHub outputs, and a terminal
table that never cuts what tells runs apart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from junitparser import Failure, JUnitXml, Properties, Property, TestCase
from rich.console import Console

from racebench.analysis.gate_stats import block_bootstrap_medians, ratio_interval
from racebench.analysis.samples import decode_histogram
from racebench.output.compare import compare_results
from racebench.output.render import results_table
from racebench.output.results import read_result
from tests.conftest import REPO, cli_in_process, run_cli

GOLDEN = REPO / "tests" / "golden"

# Sleep-dominated runs (each optimistic attempt sleeps race_window_ms inside its
# read-modify-write): their speed follows the window, not the CPU the machine has left.
TIMED = {
    "name": "timed",
    "workload": {"type": "stock", "initial": 10_000_000, "quantity": 1},
    "store": {"backend": "sqlite"},
    "guard": {"strategy": "optimistic"},
    "clients": 4,
    "duration": "1.5s",
    "race_window_ms": 2,
}


def _run(directory: Path, name: str, data: dict, *args: str) -> Path:
    source = directory / f"{name}.yaml"
    source.write_text(yaml.safe_dump(data, sort_keys=False))
    out = directory / f"{name}.json"
    result = run_cli("run", str(source), "-q", "-o", str(out), *args, timeout=120)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One trial each: a baseline and a candidate whose race window is 4x (truly slower)."""
    d = tmp_path_factory.mktemp("gate")
    return {
        "baseline": _run(d, "baseline", TIMED),
        "slower": _run(d, "slower", {**TIMED, "race_window_ms": 8}),
    }


def test_each_trial_keeps_its_buckets_and_histogram(timed: dict[str, Path]) -> None:
    run = json.loads(timed["baseline"].read_text())["runs"][0]
    samples = run["trials"][0]["samples"]
    assert samples["bucket_ms"] == 100
    # 1.5 s with every client running: about 14 full buckets (startup and tail excluded).
    assert 10 <= len(samples["throughput_ops_s"]) <= 15
    assert all(v > 0 for v in samples["throughput_ops_s"])
    histogram = decode_histogram(samples["latency_hdr"])
    assert histogram.get_total_count() == run["operations"]["attempted"]
    assert histogram.get_value_at_percentile(99) / 1000 == run["latency_ms"]["p99"]


def test_one_trial_per_side_catches_a_slower_candidate(timed: dict[str, Path]) -> None:
    result = cli_in_process("compare", str(timed["baseline"]), str(timed["slower"]))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "regression: timed: throughput -" in result.stderr
    change = compare_results(timed["baseline"], timed["slower"], 0.10).runs[0].throughput
    assert change.basis.endswith("buckets, 1 vs 1 trials")
    assert change.interval is not None and change.interval[1] < 0.9


def test_undecided_speed_is_exit_4_and_never_passed(tmp_path: Path, timed: dict[str, Path]):
    # 40 operations: no 100 ms bucket, one trial: nothing to tell speed from noise.
    short = {**TIMED, "duration": None, "operations": 40}
    base, cand = _run(tmp_path, "b", short), _run(tmp_path, "c", short)
    result = cli_in_process("compare", str(base), str(cand))
    assert result.returncode == 4, result.stdout + result.stderr
    assert "result: UNDECIDED, the speed of 1 run(s) could not be decided" in result.stdout
    assert "passed" not in result.stdout
    assert "timed: throughput undecided: too few samples" in result.stderr
    allowed = cli_in_process("compare", str(base), str(cand), "--allow-undecided")
    assert allowed.returncode == 0
    assert "no regression found, but the speed of 1 run(s) is undecided" in allowed.stdout
    assert "passed" not in allowed.stdout
    document = json.loads(
        cli_in_process("compare", str(base), str(cand), "--format", "json").stdout
    )
    assert document["passed"] is False and document["exit_status"] == 4
    assert document["undecided"] == ["timed"]


def test_repeated_labels_are_refused(tmp_path: Path, timed: dict[str, Path]) -> None:
    document = json.loads(timed["baseline"].read_text())
    document["runs"].append(document["runs"][0])
    doubled = tmp_path / "doubled.json"
    doubled.write_text(json.dumps(document))
    result = cli_in_process("compare", str(doubled), str(timed["slower"]))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"racebench: {doubled}: runs[0] and runs[1] share the label 'timed': runs are matched "
        "by label, so this file cannot be reported or compared"
    )


def test_every_differing_setting_is_warned(tmp_path: Path, timed: dict[str, Path]) -> None:
    other = _run(tmp_path, "other", TIMED, "--clients", "3", "--duration", "1.2s")
    result = cli_in_process("compare", str(timed["baseline"]), str(other), "--allow-undecided")
    assert "settings differ: clients 4 -> 3; duration 1.5 -> 1.2" in result.stderr


def _properties(case: TestCase) -> dict[str, str]:
    """A testcase's <properties> (junitparser reads them per suite; we write them per case)."""
    return {
        prop.name: prop.value
        for props in case.iterchildren(Properties)
        for prop in props.iterchildren(Property)
    }


def test_junit_from_compare_and_from_run(tmp_path: Path, timed: dict[str, Path]) -> None:
    out = tmp_path / "compare.xml"
    result = cli_in_process(
        "compare", str(timed["baseline"]), str(timed["slower"]), "--format", "junit", "-o", str(out)
    )
    assert result.returncode == 1
    suites = list(JUnitXml.fromfile(str(out)))
    (case,) = list(suites[0])
    assert (case.classname, case.name) == ("timed", "timed")
    failures = [r for r in case.result if isinstance(r, Failure)]
    assert failures and failures[0].message.startswith("regression: throughput -")
    properties = _properties(case)
    assert properties["throughput.verdict"] == "slower" and float(properties["p99_ms"]) > 0

    scenario = dict(TIMED, duration=None, operations=200, trials=2)
    scenario["matrix"] = {"guard.strategy": ["none", "atomic"]}
    scenario["expect"] = {"anomalies": "none"}  # fails for `none`, which loses sales
    source = tmp_path / "matrix.yaml"
    source.write_text(yaml.safe_dump(scenario))
    junit = tmp_path / "run.xml"
    run = run_cli("run", str(source), "-q", "-o", str(tmp_path / "m.json"), "--junit", str(junit))
    assert run.returncode == 1, run.stderr
    cases = {c.name: c for suite in JUnitXml.fromfile(str(junit)) for c in suite}
    assert set(cases) == {"timed[guard.strategy=none]", "timed[guard.strategy=atomic]"}
    unguarded, atomic = cases["timed[guard.strategy=none]"], cases["timed[guard.strategy=atomic]"]
    assert not atomic.result and atomic.classname == "timed"
    assert unguarded.result[0].message.startswith("expectation failed: expected no anomaly")
    properties = _properties(unguarded)
    assert int(properties["anomalies_total_over_2_trials"]) > 0 and properties["trials"] == "2"
    # The trials ran interleaved, and the result says so.
    order = json.loads((tmp_path / "m.json").read_text())["trial_order"]
    assert [(o["label"].split("=")[1], o["trial"]) for o in order] == [
        ("none]", 0),
        ("atomic]", 0),
        ("none]", 1),
        ("atomic]", 1),
    ]


def test_github_step_summary_gets_marked_markdown(tmp_path: Path, timed: dict[str, Path]):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    exe = Path(sys.executable).with_name("racebench")
    result = subprocess.run(
        [str(exe), "compare", str(timed["baseline"]), str(timed["slower"]), "--format", "github"],
        capture_output=True,
        text=True,
        env={**os.environ, "GITHUB_STEP_SUMMARY": str(summary)},
        timeout=60,
    )
    assert result.returncode == 1
    text = summary.read_text()
    assert text.startswith("earlier step\n## racebench compare: ❌ regression")
    assert "| timed (1 vs 1 trial) |" in text and "❌ slower (95% CI -" in text
    assert result.stdout in text


@pytest.mark.parametrize("width", [80, 120])
def test_table_never_cuts_verdict_strategy_or_run(width: int) -> None:
    runs = read_result(GOLDEN / "gc-pause.json").runs
    console = Console(width=width, record=True, color_system=None)
    console.print(results_table(runs, width=width))
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    cells = " ".join(text.split())
    assert "lock:redis_lock" in cells and "+fencing" in cells  # the fenced row is told apart
    assert "fencing=false" in cells and "fencing=true" in cells
    assert "ANOMALIES" in cells and "safe" in cells


def test_piped_run_prints_plain_lines_and_fills_the_step_summary(tmp_path: Path) -> None:
    source = tmp_path / "s.yaml"
    source.write_text(yaml.safe_dump({**TIMED, "duration": None, "operations": 40, "trials": 2}))
    summary = tmp_path / "summary.md"
    result = subprocess.run(
        [str(Path(sys.executable).with_name("racebench")), "run", str(source), "-o", "r.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "GITHUB_STEP_SUMMARY": str(summary)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert summary.read_text().startswith("## racebench report")
    assert "| optimistic | sqlite | 4 |" in summary.read_text()
    lines = [line for line in result.stderr.splitlines() if line.startswith("done: ")]
    assert [line.split(":")[1].strip() for line in lines] == ["timed trial 1/2", "timed trial 2/2"]
    assert all(" ops in " in line for line in lines)
    assert "━" not in result.stderr  # no progress bar


def test_block_bootstrap_keeps_level_and_widens_for_autocorrelation() -> None:
    rng = np.random.default_rng(1)
    # AR(1) with strong autocorrelation: an i.i.d. bootstrap would be too confident.
    noise = np.zeros(200)
    for i in range(1, 200):
        noise[i] = 0.8 * noise[i - 1] + rng.normal(0, 1)
    series = 100 + noise
    medians = block_bootstrap_medians(series, 2000, np.random.default_rng(2))
    iid = np.median(rng.choice(series, size=(2000, 200)), axis=1)
    assert abs(np.median(medians) - np.median(series)) < 1
    assert medians.std() > 1.3 * iid.std()
    half = ratio_interval([series], [series * 0.5])
    assert half.ratio == pytest.approx(0.5) and 0.45 < half.low <= 0.5 <= half.high < 0.55
    same = ratio_interval([series], [series[::-1]])
    assert same.low < 1 < same.high


def test_a_busier_machine_is_warned_about(tmp_path: Path, timed: dict[str, Path]) -> None:
    paths = []
    for name, load in (("quiet", 0.2), ("busy", 9.0)):
        document = json.loads(timed["baseline"].read_text())
        document["host"]["cpu_count"] = 2
        for trial in document["runs"][0]["trials"]:
            trial["host_load_1m"] = load
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(document))
    result = cli_in_process("compare", *map(str, paths))
    assert (
        "warning: the machine was not equally busy: load average 0.2 (baseline) vs 9.0 "
        "(candidate) on 2 CPUs" in result.stderr
    )
    assert "not equally busy" not in cli_in_process("compare", str(paths[0]), str(paths[0])).stderr
