"""scripts/start-servers.sh --cluster and --stop, end to end, with a cluster scenario.

The script's ports are fixed (Redis 6390-6394, ZooKeeper 2191-2193 and its peer ports), so
the test runs only when they are free; its pid files go to a directory of its own
(RACEBENCH_SERVERS_DIR), which the scenarios of scenarios/cluster/ follow too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, run_cli

SCRIPT = REPO / "scripts" / "start-servers.sh"
PORTS = [6390, 6391, 6392, 6393, 6394, 2191, 2192, 2193, 2891, 2892, 2893, 3891, 3892, 3893]


def _in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=180, env=env
    )


def _pids(state: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted(state.glob("*.pid"))]


@pytest.mark.redis
@pytest.mark.zookeeper
def test_cluster_servers_start_serve_a_scenario_and_stop(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = [port for port in PORTS if _in_use(port)]
    if busy:
        pytest.skip(f"ports of scripts/start-servers.sh --cluster in use: {busy}")
    state = tmp_path / "servers"
    env = {**os.environ, "RACEBENCH_SERVERS_DIR": str(state)}
    started = _script("--cluster", env=env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert len(_pids(state)) == 8  # five Redis servers, three ZooKeeper members
        assert all(psutil.pid_exists(pid) for pid in _pids(state))
        out = tmp_path / "redlock.json"
        monkeypatch.setenv("RACEBENCH_SERVERS_DIR", str(state))
        done = run_cli("run", "scenarios/cluster/redlock-5.yaml", "--quiet", "--output", str(out))
        assert done.returncode == 0, done.stdout + done.stderr
        killed, restarted = json.loads(out.read_text())["runs"]
        assert (killed["verdict"], restarted["verdict"]) == ("safe", "ANOMALIES")
    finally:
        pids = _pids(state)
        stopped = _script("--stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.count("stopped ") == 8
    assert not [pid for pid in pids if psutil.pid_exists(pid) and _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
