"""A fault the scenario asks for and that never fired is said so, and cannot pass."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import cli_in_process, run_cli


def test_a_fault_that_never_fired_fails_the_run_and_shows_in_table_and_result(
    tmp_path: Path, write_scenario
) -> None:
    # 100 operations end long before the fault's trigger 30 s into the run comes.
    path = write_scenario(
        {
            "name": "unfired",
            "workload": {"type": "stock", "initial": 1000},
            "store": {"backend": "sqlite", "url": str(tmp_path / "data.db")},
            "guard": {"strategy": "lock", "lock": {"service": "file_lock"}},
            "clients": 2,
            "operations": 100,
            "faults": [{"kind": "pause_client", "at": "30s", "client": 1, "duration_ms": 100}],
        }
    )
    result = tmp_path / "r.json"
    proc = run_cli("run", str(path), "-q", "-o", str(result))
    assert proc.returncode == 1, proc.stderr
    assert "pause_client c1 did not fire (at: 30s)" in proc.stdout
    assert "fault did not fire: pause_client (at: 30s, client 1)" in proc.stderr
    [run] = json.loads(result.read_text())["runs"]
    assert run["faults"] == []
    assert run["faults_not_fired"] == [{"kind": "pause_client", "client": 1, "trigger": "at: 30s"}]
    assert run["passed"] is False
    assert "(fault did not fire)" in cli_in_process("report", str(result)).stdout
