"""scripts/start-servers.sh recognises a ZooKeeper already running, whatever it whitelists."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import port_for
import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "start-servers.sh"
JAR = Path("/usr/share/java/zookeeper.jar")


def _run_script(zookeeper_port: int) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "ZOOKEEPER_PORT": str(zookeeper_port), "REDIS_PORTS": ""},
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
        done, elapsed = _run_script(port)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert done.returncode == 0, done.stderr
    assert f"zookeeper on {port}: already running" in done.stdout
    assert f"RACEBENCH_ZOOKEEPER_HOSTS=127.0.0.1:{port}" in done.stdout
    assert elapsed < 10


def test_a_port_taken_by_another_server_fails_at_once_naming_it(redis_url: str) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    done, elapsed = _run_script(port)
    assert done.returncode == 1
    assert f"zookeeper on {port}: the port is taken by a server that does not answer" in (
        done.stderr
    )
    assert elapsed < 10
