"""Watching real processes through /proc: a run's client processes, alive or gone."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def killing_and_cleaning_alone() -> Iterator[None]:
    """Hold the machine-wide lock of the tests that kill -9 a run or call `racebench clean`.

    `clean` removes what any dead run on this machine left, in /tmp, /dev/shm and on the
    shared servers. A second copy of the suite cleaning between this test's kill -9 and its
    own doctor/clean would remove the leftovers this test is looking for; holding this lock
    (every copy takes the same file) keeps the two apart.
    """
    with open(Path(tempfile.gettempdir()) / "racebench-tests-kill-and-clean.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
