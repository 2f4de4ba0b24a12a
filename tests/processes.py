"""Watching real processes through /proc: a run's client processes, alive or gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO


def children(pid: int, states: str | None = None) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`; with `states`, only those whose
    /proc state letter is one of them (e.g. "Tt": stopped)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z" and (states is None or state in states):
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_run(*args: str) -> subprocess.Popen:
    """Start the real `racebench run ...` console script."""
    exe = Path(sys.executable).with_name("racebench")
    return subprocess.Popen(
        [str(exe), "run", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def wait_for_clients(proc: subprocess.Popen, count: int, timeout_s: float = 30) -> list[int]:
    """Wait until the run has `count` client processes; return their pids."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        pids = children(proc.pid)
        if len(pids) >= count:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"the run did not start {count} clients within {timeout_s}s")


def ours(object_names: list[str]) -> list[str]:
    """The objects named by this test process's runs (racebench_p{pid}h...), so that a test
    checking for leftovers ignores runs of other processes sharing the servers."""
    tag = f"racebench_p{os.getpid()}h"
    return [name for name in object_names if tag in name]
