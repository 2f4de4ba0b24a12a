"""The run protocol: the types the engine, the analysis and the output layers share.

A leaf module (it imports nothing of racebench at module level), so that the analysis and
the output layer can name what a run produced without importing the engine that ran it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import threading

    from hdrh.histogram import HdrHistogram

    from racebench.engine.worker import WorkerOutput

ProgressCallback = Callable[[int, int], None]


@dataclass
class Probe:
    """Per-client state in shared memory that the parent's nemesis watches and acts on.

    Clients write plain integers (no lock, no syscall): when they started acquiring a lock,
    when they were granted it (0 when not holding), their lock session's server-side id, and
    when their current operation started (0 between operations).
    """

    acquiring: Any
    holding: Any
    session: Any
    inflight: Any

    @classmethod
    def create(cls, ctx: Any, clients: int) -> Probe:
        """Four shared int64 arrays of `clients` slots from a multiprocessing context."""
        return cls(*(ctx.RawArray("q", clients) for _ in range(4)))


# open_client(i, probe) -> OpenedClient (a coroutine; racebench.guards.OpenedClient).
OpenClient = Callable[..., Any]


class ClientSignals(Protocol):
    """How the nemesis reaches the process that runs one client alone: by pid here
    (racebench.engine.runner.LocalClientSignals), through the Dask worker that runs it on a
    cluster (racebench.engine.cluster.ClusterClientSignals). Times are on this process's
    monotonic clock, taken just before the signal was sent; a process that is gone is
    ignored."""

    def signal(self, client: int, sig: int) -> int:
        """Send `sig` to the process of `client`; when it was sent."""

    def signal_when(
        self, clients: list[int], state: str, sig: int, stopping: threading.Event
    ) -> tuple[int, int] | None:
        """Wait until one of `clients` is `holding` or `acquiring` its lock and send it `sig`
        at once, from where it runs; (that client, when), or None if `stopping` came first."""


class Nemesis(Protocol):
    """Injects faults while the clients run (see racebench.faults)."""

    def start(self, clients: ClientSignals, probe: Probe, t0_ns: int) -> None:
        """Begin firing: `clients` reaches each client's process, `probe` says what they
        do, t0_ns is the run's start."""

    def stop(self) -> None:
        """Undo every fault still active (resume paused clients, heal proxies)."""


@dataclass
class ClientRecord:
    """What one client left behind: its history file, how many records are valid, its errors."""

    path: Path
    count: int
    errors: list[str]


@dataclass
class RunnerResult:
    """What a runner (local or Dask) hands to the analysis: every client's records and more."""

    t0_ns: int
    clients: list[ClientRecord]
    interrupted: bool
    retry_codes: Counter[str] = field(default_factory=Counter)
    workers: int = 1
    # Each finished worker's output (a killed worker leaves none), for the load figures.
    outputs: list[WorkerOutput] = field(default_factory=list)
    ready_s: float = 0.0  # from the first fork until every client was connected
    # On a Dask cluster (racebench.engine.cluster): where each worker ran, its clock, what was lost.
    cluster: dict[str, Any] | None = None

    def loop_lag(self) -> HdrHistogram:
        """Event-loop lag over every worker: histograms merged, never percentiles averaged."""
        from hdrh.histogram import HdrHistogram

        # Imported here: the analysis layer imports this leaf module, not the other way round.
        from racebench.analysis.metrics import new_histogram

        merged = new_histogram()
        for output in self.outputs:
            if output.lag_histogram:
                merged.add(HdrHistogram.decode(output.lag_histogram))
        return merged
