"""scripts/start-servers.sh: --cluster and --stop end to end with a cluster scenario, and
recognising a ZooKeeper already running whatever it whitelists.

The script's ports are fixed (Redis 6390-6394, ZooKeeper 2191-2193 and its peer ports), so
the test runs only when they are free; its pid files go to a directory of its own
(RACEBENCH_SERVERS_DIR), which the scenarios of scenarios/cluster/ follow too.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import port_for
import psutil
import pytest

from tests.conftest import REPO, run_cli

SCRIPT = REPO / "scripts" / "start-servers.sh"
JAR = Path("/usr/share/java/zookeeper.jar")
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


def _run_script(zookeeper_port: int, state: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            **os.environ,
            "ZOOKEEPER_PORT": str(zookeeper_port),
            "REDIS_PORTS": "",
            "RACEBENCH_SERVERS_DIR": str(state),
        },
    )
    return done, time.monotonic() - started


def _serves_sessions(port: int) -> bool:
    """Whether a ZooKeeper on `port` answers a ConnectRequest (it listens before it serves)."""
    body = struct.pack(">iqiqi", 0, 0, 30_000, 0, 16) + bytes(16)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            return sock.recv(4) in (struct.pack(">i", 36), struct.pack(">i", 37))
    except OSError:
        return False


def _wait_serving(port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ZooKeeper exited while starting"
        if _serves_sessions(port):
            return
        time.sleep(0.2)
    raise AssertionError(f"ZooKeeper did not serve on {port} within {timeout_s}s")


@pytest.mark.skipif(not JAR.exists() or not shutil.which("java"), reason="needs ZooKeeper")
def test_a_zookeeper_without_four_letter_words_is_seen_as_running(tmp_path: Path) -> None:
    port = port_for.select_random()
    (tmp_path / "data").mkdir()
    config = tmp_path / "zoo.cfg"
    # ruok not whitelisted: it answers "ruok is not executed because it is not in the whitelist".
    config.write_text(
        f"tickTime=500\ndataDir={tmp_path / 'data'}\nclientPort={port}\n"
        "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=conf\n"
    )
    java = [
        shutil.which("java") or "java",
        "-Xmx128m",
        "-cp",
        f"{JAR}:/usr/share/java/slf4j-simple.jar",
    ]
    server = subprocess.Popen(
        [*java, "org.apache.zookeeper.server.ZooKeeperServerMain", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_serving(port, server)
        done, elapsed = _run_script(port, tmp_path / "servers")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert done.returncode == 0, done.stderr
    assert f"zookeeper on {port}: already running" in done.stdout
    assert f"RACEBENCH_ZOOKEEPER_HOSTS=127.0.0.1:{port}" in done.stdout
    assert elapsed < 10


def test_a_port_taken_by_another_server_fails_at_once_naming_it(
    redis_url: str, tmp_path: Path
) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    done, elapsed = _run_script(port, tmp_path / "servers")
    assert done.returncode == 1
    assert f"zookeeper on {port}: the port is taken by a server that does not answer" in (
        done.stderr
    )
    assert elapsed < 10
