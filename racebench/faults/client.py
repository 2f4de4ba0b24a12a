"""Client faults: stop or kill one client's process, whatever lock guards it.

Both reach the client through `FaultContext.signal_client`, the one call that knows where a
client's process runs; any lock service can suffer them (stores cannot: they hit clients).
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, ClassVar, Literal

from racebench.faults.kind import FaultContext, FaultKind
from racebench.util.plugin_config import FaultConfig, TimedFaultConfig

if TYPE_CHECKING:
    from racebench.locks.base import LockService


def lease_outlasts(fault: FaultConfig, service: LockService, race_window_ms: float) -> bool:
    """Whether a lease (if the service's lock is one) outlasts a section stretched by the
    fault: a holder stopped or cut off for its duration may run on past its lease."""
    return not service.lease or race_window_ms + fault.lasts_ms() < service.config.ttl_ms


class PauseClient(FaultKind):
    """SIGSTOP the client for `duration_ms`, then SIGCONT: a GC pause or a VM migration."""

    kind = "pause_client"
    config = TimedFaultConfig
    breaks = "stops one client's process for duration_ms: a lease can expire under its holder"
    needs_duration = True
    signals_clients = True
    first_signal = signal.SIGSTOP

    def __init__(self, fault: FaultConfig) -> None:
        super().__init__(fault)
        self._paused: int | None = None

    @classmethod
    def keeps_exclusion(
        cls, fault: FaultConfig, service: LockService, race_window_ms: float
    ) -> bool:
        return lease_outlasts(fault, service, race_window_ms)

    def fire(self, client: int, context: FaultContext) -> str:
        self._paused = client
        stopped_ns = context.signal_client(client, signal.SIGSTOP)
        # The pause lasts from when SIGSTOP was sent (on a cluster, a round trip earlier).
        until_ns = stopped_ns + int(self.fault.lasts_ms() * 1e6)
        context.wait(max(0.0, (until_ns - time.monotonic_ns()) / 1e9))
        # The pause ends when SIGCONT is sent: a resumed client can finish its section
        # before this thread (on a busy host) gets to record the end.
        context.mark_end(self._resume(context))
        return f"SIGSTOP for {self.fault.lasts_ms():g} ms"

    def _resume(self, context: FaultContext) -> int:
        assert self._paused is not None
        client, self._paused = self._paused, None
        return context.signal_client(client, signal.SIGCONT)

    def undo(self, context: FaultContext) -> None:
        if self._paused is not None:
            self._resume(context)


class KillClient(FaultKind):
    """SIGKILL the client: a crash. What it held stays held until its session or lease ends."""

    kind = "kill_client"
    breaks = "kills one client's process: a lock it held stays taken until its session ends"
    signals_clients = True
    first_signal = signal.SIGKILL
    measures: ClassVar[Literal["takeover", "grants"] | None] = "takeover"

    def fire(self, client: int, context: FaultContext) -> str:
        holding = context.holding(client)  # a killed client's probe keeps its last state
        context.signal_client(client, signal.SIGKILL)
        return "SIGKILL" + (" inside its critical section" if holding else "")
