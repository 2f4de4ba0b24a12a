"""bind_to_parent: a forked process dies soon after its parent, with or without prctl."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.processes import alive

# The parent forks a child that binds itself to the parent, then prints its pid; both sleep.
# argv[1] == "watchdog" disables PR_SET_PDEATHSIG so that only the backstop acts.
PARENT = """
import os, sys, time
from racebench import lifeline
parent = os.getpid()
child = os.fork()
if child == 0:
    if sys.argv[1] == "watchdog":
        lifeline._set_parent_death_signal = lambda sig: False
    lifeline.bind_to_parent(parent)
    print(os.getpid(), flush=True)
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""


@pytest.mark.parametrize("mechanism", ["prctl", "watchdog"])
def test_child_dies_within_a_second_of_its_sigkilled_parent(mechanism: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, mechanism], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())  # printed once bound
    assert alive(child)
    os.kill(parent.pid, signal.SIGKILL)
    killed = time.monotonic()
    parent.wait()
    while alive(child) and time.monotonic() - killed < 5:
        time.sleep(0.01)
    assert not alive(child)
    assert time.monotonic() - killed < 1.0
