"""Ctrl-C: later signals never discard what the first one saves."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

from tests.processes import start_run, wait_for_clients


def test_three_sigints_100ms_apart_keep_the_partial_result(tmp_path: Path, write_scenario) -> None:
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
    proc = start_run(str(path), "-q", "-o", str(result))
    wait_for_clients(proc, 2)
    # Worker processes exist before their clients connect: give them time to record some
    # operations (the run's own figures say how long connecting took: load.ready_s).
    time.sleep(1.5)
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    document = json.loads(result.read_text())
    assert document["partial"] is True
    [run] = document["runs"]  # what the first SIGINT saved, not `runs: []`
    assert run["interrupted"] is True
    assert run["operations"]["attempted"] > 0, run["load"]
    assert sqlite3.connect(db).execute("SELECT name FROM sqlite_master").fetchall() == []
