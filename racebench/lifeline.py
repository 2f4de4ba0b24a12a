"""Client processes die with their parent, even when the parent is killed with SIGKILL.

A SIGKILLed racebench cannot stop its clients: re-parented to PID 1 (or a subreaper), they
would go on loading the server until their deadline. `bind_to_parent`, called first thing in
a client process, asks Linux to SIGKILL it when the parent dies (PR_SET_PDEATHSIG through
prctl(2); no library wraps it, hence ctypes) and starts a watchdog thread that checks the
parent every 200 ms, as a backstop where prctl is missing or the signal is lost (it is tied
to the parent *thread* that forked, not to the process).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import threading
import time

_PR_SET_PDEATHSIG = 1
_WATCH_INTERVAL_S = 0.2


def _set_parent_death_signal(sig: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, sig); False where it is not available (not Linux)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_WATCH_INTERVAL_S)
    _die()


def bind_to_parent(parent_pid: int) -> None:
    """Make this (forked) process die within ~0.2 s of `parent_pid`, however it dies.

    `parent_pid` is the parent's PID as the parent saw it before forking: had it died in the
    meantime, getppid() already names another process and this one dies at once.
    """
    with contextlib.suppress(OSError):
        _set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:
        _die()
    threading.Thread(
        target=_watch_parent, args=(parent_pid,), name="racebench-lifeline", daemon=True
    ).start()
