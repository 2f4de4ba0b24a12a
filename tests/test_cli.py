"""End to end: the real `racebench` console script on the embedded SQLite store."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_in_process, run_cli
from tests.processes import wait_for_clients
from tests.race import until_shown


def test_quickstart_shows_lost_updates_only_without_a_guard(tmp_path: Path) -> None:
    result_path, history_path = tmp_path / "q.json", tmp_path / "h.jsonl"
    argv = ["run", "scenarios/quickstart.yaml", "-q", "-o", str(result_path)]

    def attempt(number: int) -> tuple:
        history_path.unlink(missing_ok=True)  # one attempt's history
        proc = run_cli(*argv, "--history", str(history_path))
        assert proc.returncode == 0, proc.stderr
        document = json.loads(result_path.read_text())
        for run in document["runs"][1:]:  # the guarded ones: safety on every attempt
            assert run["anomalies"] == {"lost_updates": 0, "oversold_units": 0}
        return proc, document

    # The race shows in one run in practice; bounded, until it does.
    proc, document = until_shown(
        attempt, lambda done: done[1]["runs"][0]["anomalies"]["lost_updates"] > 0
    )
    assert "ANOMALIES" in proc.stdout and "safe" in proc.stdout
    assert document["schema"] == "racebench.result/1"
    assert document["partial"] is False
    runs = {r["strategy"]: r for r in document["runs"]}
    assert list(runs) == ["none", "atomic", "optimistic", "exclusive"]
    assert runs["none"]["anomalies"]["lost_updates"] > 0
    assert runs["none"]["verdict"] == "ANOMALIES"
    for name in ("atomic", "optimistic", "exclusive"):
        assert runs[name]["anomalies"] == {"lost_updates": 0, "oversold_units": 0}
        assert runs[name]["verdict"] == "safe"
        assert all(inv["holds"] for inv in runs[name]["invariants"])
    for run in document["runs"]:
        assert set(run["latency_ms"]) >= {"p50", "p90", "p99", "max"}
        assert run["operations"]["attempted"] == 400
    lines = [json.loads(line) for line in history_path.read_text().splitlines()]
    assert len(lines) == 1600
    assert {line["outcome"] for line in lines} == {"ok"}
    assert {"run", "trial", "client", "seq", "kind", "start_ns", "end_ns"} <= set(lines[0])


BAD_SCENARIOS = [
    ("workload: [unclosed", None, "malformed YAML"),
    ("- a\n- b\n", None, "must be a YAML mapping"),
    ("workload: {type: stock}\nclientz: 3\n", "clientz", "unknown key"),
    ("workload: {type: stocks}\n", "workload.type", "unknown workload type"),
    ("workload: {type: stock}\nstore: {backend: oracle}\n", "store.backend", "unknown backend"),
    (
        "workload: {type: stock}\nguard: {strategy: optimistc}\n",
        "guard.strategy",
        "unknown strategy",
    ),
    ("workload: {type: stock}\nclients: 0\n", "clients", "greater than or equal to 1"),
    ("workload: {type: withdraw, amount: -5}\n", "workload.amount", "greater than 0"),
    ("workload: {type: stock}\nduration: soon\n", "duration", "not a duration"),
    ("workload: {type: stock}\nstore: {url: '${RB_UNSET_VAR}'}\n", "store.url", "RB_UNSET_VAR"),
    ("workload: {type: stock}\nguard: {strategy: crdt}\n", "guard.strategy", "does not apply"),
    ("workload: {type: stock}\nguard: {fencing: true}\n", "guard.fencing", "needs guard.strategy"),
    ("workload: {type: stock}\nguard: {strategy: lock}\n", "guard.lock", "needs guard.lock"),
    (
        "workload: {type: stock}\nmatrix: {clients: [2, 0]}\n",
        "clients",
        "matrix cell clients=0",
    ),
]


@pytest.mark.parametrize(("text", "field", "problem"), BAD_SCENARIOS)
def test_bad_scenarios_get_one_line_and_exit_2(tmp_path: Path, text: str, field, problem) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    # In-process: the real console script's exit 2 and one line are proven end to end by
    # test_missing_file_and_bad_flags_are_usage_errors.
    for command in ("validate", "run"):
        proc = cli_in_process(command, str(path))
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert str(path) in lines[0]
        assert problem in lines[0]
        if field:
            assert f": {field}: " in lines[0]
        assert "Traceback" not in proc.stderr


def test_missing_file_and_bad_flags_are_usage_errors(tmp_path: Path) -> None:
    proc = run_cli("run", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "cannot read file" in proc.stderr
    proc = run_cli("run", "scenarios/quickstart.yaml", "--clients", "0")
    assert proc.returncode == 2


def test_unreachable_store_exits_3(tmp_path: Path, write_scenario) -> None:
    path = write_scenario(
        {"workload": {"type": "stock"}, "store": {"url": str(tmp_path / "no" / "dir" / "x.db")}}
    )
    proc = run_cli("run", str(path), "-q", "-o", str(tmp_path / "r.json"))
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines() == [
        f"racebench: sqlite: directory {tmp_path / 'no' / 'dir'} does not exist"
    ]


def test_server_lost_mid_scenario_keeps_finished_runs(tmp_path: Path, write_scenario) -> None:
    good, gone = str(tmp_path / "ok.db"), str(tmp_path / "gone" / "x.db")
    path = write_scenario(
        {"workload": {"type": "likes"}, "operations": 20, "matrix": {"store.url": [good, gone]}}
    )
    result = tmp_path / "r.json"
    proc = run_cli("run", str(path), "-q", "-o", str(result))
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines() == [
        f"racebench: sqlite: directory {tmp_path / 'gone'} does not exist"
    ]
    document = json.loads(result.read_text())
    assert document["partial"] is True
    assert [r["params"]["store.url"] for r in document["runs"]] == [good]


def test_failed_expectation_exits_1(tmp_path: Path, write_scenario) -> None:
    path = write_scenario(
        {
            "workload": {"type": "likes"},
            "guard": {"strategy": "atomic"},
            "operations": 20,
            "expect": {"anomalies": "present"},
        }
    )
    proc = run_cli("run", str(path), "-q", "-o", str(tmp_path / "r.json"))
    assert proc.returncode == 1
    assert "expected anomalies, saw none" in proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["runs"][0]["passed"] is False


def _likes_counted(db: Path) -> bool:
    """Whether the run's clients have counted a like yet (its counter table is above 0)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        names = conn.execute("SELECT name FROM sqlite_master WHERE name LIKE '%_counter'")
        return any(
            conn.execute(f"SELECT value FROM {name} WHERE id = 1").fetchone()[0] > 0
            for (name,) in names.fetchall()
        )
    except (sqlite3.Error, TypeError):
        return False
    finally:
        conn.close()


def test_interrupted_run_writes_partial_result_and_cleans_up(
    tmp_path: Path, write_scenario
) -> None:
    db = tmp_path / "data.db"
    path = write_scenario(
        {
            "workload": {"type": "likes"},
            "store": {"url": str(db)},
            "clients": 2,
            "duration": "60s",
            "race_window_ms": 1,
            "matrix": {"guard.strategy": ["none", "atomic"]},
        }
    )
    result = tmp_path / "r.json"
    exe = Path(sys.executable).with_name("racebench")
    proc = subprocess.Popen(
        [str(exe), "run", str(path), "-q", "-o", str(result)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_clients(proc, 2)  # not a fixed sleep: starting takes longer on a busy machine
    # ...and once the run counted a like, so that the interrupted run has operations.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _likes_counted(db):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    document = json.loads(result.read_text())
    assert document["partial"] is True
    [run] = document["runs"]  # the second run never started
    assert run["interrupted"] is True
    assert run["operations"]["attempted"] > 0
    assert run["duration_s"] < 30
    tables = sqlite3.connect(db).execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == []


def test_list_shows_every_registered_strategy() -> None:
    from racebench.plugins.registry import lock_names, store_names, strategies_for

    proc = cli_in_process("list")
    assert proc.returncode == 0, proc.stderr
    for backend in store_names():
        assert backend in proc.stdout
        for strategy in strategies_for(backend):
            assert strategy in proc.stdout
    for service in lock_names():
        assert service in proc.stdout


def test_validate_lists_matrix_runs_and_flags_override_the_matrix() -> None:
    proc = cli_in_process("validate", "scenarios/quickstart.yaml")
    assert proc.returncode == 0
    assert "4 run(s)" in proc.stdout
    assert "quickstart[guard.strategy=exclusive]" in proc.stdout


def test_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0 and "racebench" in proc.stdout
