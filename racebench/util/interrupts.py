"""Ctrl-C during a run: the first one stops it; later ones cannot throw away what it saves.

The first SIGINT (or SIGTERM) raises KeyboardInterrupt where the run is, which stops the
clients; the partial result is then analysed, the servers cleaned and the file written. An
impatient second or third Ctrl-C used to interrupt that work and lose the result; inside
`first_interrupt_only` it is ignored, with one line saying why. Stopping is bounded anyway
(clients get a grace period, then SIGKILL), and `kill -9` is answered by `racebench clean`.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Whether a run in this process was interrupted: the CLI then ignores later signals.
_interrupted = False


def was_interrupted() -> bool:
    """Whether a run in this process has already been stopped by SIGINT/SIGTERM."""
    return _interrupted


@contextmanager
def first_interrupt_only() -> Iterator[None]:
    """Within the block, only the first SIGINT/SIGTERM interrupts; the previous handlers
    are restored on exit. Outside the main thread (no signals there) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        global _interrupted
        nonlocal received
        received += 1
        if received == 1:
            _interrupted = True
            raise KeyboardInterrupt
        if received == 2:
            print(
                "racebench: already stopping, saving the partial result (kill -9 loses it; "
                "`racebench clean` then removes what it left)",
                file=sys.stderr,
                flush=True,
            )

    previous = {sig: signal.signal(sig, on_signal) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
