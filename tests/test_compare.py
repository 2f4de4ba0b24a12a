"""`racebench compare` on real SQLite runs: an injected slowdown and a new anomaly fail the
gate, two runs of the same code pass, an undecidable speed is exit 4 (never "passed"),
unusable input is exit 2 with one line."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from racebench.output.compare import compare_results
from tests.conftest import REPO, cli_in_process, run_cli
from tests.race import until_shown

# One label ("gate"), five short trials: too short for within-run buckets, so compare
# decides from the per-trial figures (at least 3 per side).
GATE = {
    "name": "gate",
    "workload": {"type": "stock", "initial": 1000, "quantity": 1},
    "store": {"backend": "sqlite"},
    "guard": {"strategy": "exclusive"},
    "clients": 2,
    "operations": 60,
    "race_window_ms": 1,
    "trials": 5,
}


def _run(directory: Path, name: str, **changes) -> Path:
    scenario = {**GATE, **changes}
    source = directory / f"{name}.yaml"
    source.write_text(yaml.safe_dump(scenario, sort_keys=False))
    out = directory / f"{name}.json"
    result = run_cli("run", str(source), "-q", "-o", str(out), timeout=120)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real result files: a baseline, the same code again, a slower one, an unsafe one."""
    d = tmp_path_factory.mktemp("compare")
    variants = {
        "baseline": {},
        "same": {},
        # The injected regression: every sale now holds the write lock 10x longer (a margin
        # over the per-operation cost that a loaded host adds to both sides).
        "slower": {"race_window_ms": 10},
        # The injected correctness regression: the guard is gone under the same label.
        "unsafe": {"guard": {"strategy": "none"}, "trials": 1},
    }
    # All side by side, their trials interleaved in time: run one after another, a change in
    # the host's load between them (other work on a shared runner) would separate their
    # trials, and the same code would look slower, or the slower code not.
    with ThreadPoolExecutor(max_workers=len(variants)) as pool:
        paths = pool.map(lambda item: _run(d, item[0], **item[1]), variants.items())
        return dict(zip(variants, paths, strict=True))


def test_same_code_passes(results: dict[str, Path], tmp_path: Path) -> None:
    # Timings on this kind of machine differ by up to 2x between sessions; the gate's job
    # here is to not cry wolf, so the allowed slowdown is set for such a runner. On a loaded
    # host five short trials a side may leave the speed undecided (exit 4, the honest
    # answer): then both sides run again with more trials, bounded, until the gate decides.
    # A false alarm (exit 1) fails at once, on any attempt.
    def attempt(number: int) -> subprocess.CompletedProcess:
        if number == 0:
            baseline, same = results["baseline"], results["same"]
        else:
            more = {"trials": GATE["trials"] * 2**number}
            with ThreadPoolExecutor(max_workers=2) as pool:
                baseline, same = pool.map(
                    lambda name: _run(tmp_path, f"{name}{number}", **more), ("baseline", "same")
                )
        result = run_cli("compare", str(baseline), str(same), "--max-slowdown", "50%")
        assert result.returncode != 1 and "REGRESSION" not in result.stdout, result.stdout
        return result

    result = until_shown(attempt, lambda result: result.returncode != 4, attempts=3)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "result: passed, no regression" in result.stdout
    assert "block bootstrap" in result.stdout and "per-trial figures" not in result.stderr


def test_injected_slowdown_fails(results: dict[str, Path]) -> None:
    result = run_cli("compare", str(results["baseline"]), str(results["slower"]))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "regression: gate: throughput -" in result.stderr
    assert "slower (95% CI -" in result.stdout
    # The setup changed under the same label: said, not hidden.
    assert "gate: settings differ: race_window_ms 1.0 -> 10.0" in result.stderr
    comparison = compare_results(results["baseline"], results["slower"], 0.10)
    change = comparison.runs[0].throughput
    assert change.basis == "per-trial figures, 5 vs 5 trials"
    assert change.worse_by > 0.2 and change.worse_interval()[0] > 0.10


def test_new_anomaly_fails_whatever_the_speed(results: dict[str, Path]) -> None:
    # Unguarded is faster; the allowed slowdown is huge: a correctness regression still fails.
    result = cli_in_process(
        "compare", str(results["baseline"]), str(results["unsafe"]), "--max-slowdown", "1000%"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "regression: gate: correctness: safe in the baseline, now lost_updates=" in result.stderr
    # 5 vs 1 short trials: the speed cannot be judged, and the output says why.
    assert "undecided (too few samples)" in result.stdout
    assert "gate: throughput undecided: too few samples" in result.stderr


def test_markdown_and_json_formats(results: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "summary.md"
    args = (str(results["baseline"]), str(results["slower"]))
    result = cli_in_process("compare", *args, "--format", "markdown", "--output", str(out))
    assert result.returncode == 1
    text = out.read_text()
    assert text.startswith("## racebench compare: ❌ regression")
    assert "| gate (5 vs 5 trials) |" in text and "REGRESSION" in text
    document = json.loads(cli_in_process("compare", *args, "--format", "json").stdout)
    assert document["schema"] == "racebench.compare/1" and document["passed"] is False
    assert document["runs"][0]["throughput"]["verdict"] == "slower"
    assert len(document["runs"][0]["throughput"]["candidate_trials"]) == 5


def test_benchmark_json_is_what_trackers_read(results: dict[str, Path]) -> None:
    result = cli_in_process(
        "compare", str(results["baseline"]), str(results["same"]), "--format", "benchmark-json"
    )
    entries = json.loads(result.stdout)
    assert [e["name"] for e in entries] == ["gate"]
    entry = entries[0]
    assert set(entry) == {"name", "unit", "value", "range", "extra"}
    assert entry["unit"] == "ops/s" and entry["value"] > 0 and entry["range"].startswith("± ")


def test_different_setup_warns(results: dict[str, Path], tmp_path: Path) -> None:
    document = json.loads(results["same"].read_text())
    document["host"]["cpu_count"] = 64
    document["environment"]["servers"]["sqlite"]["store"]["version"] = "9.9.9"
    document["racebench_version"] = "9.0.0"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(document))
    # Against its own figures, speed aside (short trials on a loaded host may leave it
    # undecided, which test_same_code_passes covers): only the setup differs.
    result = cli_in_process("compare", str(results["same"]), str(other), "--allow-undecided")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: different CPU count" in result.stderr and "candidate 64" in result.stderr
    assert "different sqlite (store) server version" in result.stderr
    assert "different racebench version: baseline 0.1.0, candidate 9.0.0" in result.stderr


def _write(path: Path, content: str) -> Path:
    path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        ("{broken", "not a JSON file"),
        ('{"schema": "racebench.result/2", "runs": []}', "this racebench reads"),
        ('["a", "list"]', "not a result file: a JSON array, not an object"),
        ('{"schema": "racebench.result/1", "runs": []}', "no run label in common"),
    ],
)
def test_unusable_input_is_exit_2_and_one_line(
    results: dict[str, Path], tmp_path: Path, candidate: str, message: str
) -> None:
    bad = _write(tmp_path / "candidate.json", candidate)
    result = cli_in_process("compare", str(results["baseline"]), str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("racebench: "), result.stderr
    assert message in lines[0]


def test_missing_file_and_bad_threshold_are_exit_2(results: dict[str, Path]) -> None:
    missing = cli_in_process("compare", str(results["baseline"]), "/nonexistent/result.json")
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    bad = cli_in_process(
        "compare", str(results["baseline"]), str(results["same"]), "--max-slowdown", "x"
    )
    assert bad.returncode == 2 and "not a percentage" in bad.stderr


def test_a_fenced_run_that_stays_safe_is_not_a_regression_of_itself() -> None:
    # The fenced gc-pause run is safe with overlapping critical sections (fencing rejects the
    # late writes): comparing the file with itself must not call those overlaps new.
    golden = str(REPO / "tests" / "golden" / "gc-pause.json")
    result = cli_in_process("compare", golden, golden, "--allow-undecided")
    assert "correctness" not in result.stdout + result.stderr
    assert result.returncode == 0, result.stderr
