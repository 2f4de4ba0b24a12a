"""What a fault kind is: one class per kind, with Jepsen's nemesis protocol.

A fault kind declares its scenario keys (`config`, a FaultConfig subclass), what it breaks
(`breaks`) and which stores and lock services can suffer it (`can_suffer`); `validate`
refuses before anything runs a fault the scenario cannot do, `prepare` makes the fault of
one trial (Jepsen's `setup!`), `fire` injects it (`invoke!`) and `undo` leaves everything
as it was (`teardown!`), whether or not it fired. racebench.faults.nemesis.FaultNemesis composes
them, as Jepsen's combined nemesis does: it waits for each fault's trigger in turn and
calls its `fire` from a thread of the parent process.

Fault kinds are registered under the `racebench.faults` entry point, racebench's own and a
third party's alike (docs/faults.md, "Adding a fault kind").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from racebench.util.plugin_config import FaultConfig

if TYPE_CHECKING:
    from racebench.config.scenario import Scenario
    from racebench.locks.base import LockService
    from racebench.util.plugin_info import PluginInfo

# Kinds racebench once accepted, and why they are gone (said when a scenario names one).
REMOVED_KINDS = {
    "clock_skew": "clock_skew was removed: clients are forked from one process, so "
    "libfaketime cannot be preloaded into one of them, and racebench's lock services measure "
    "lease validity on the monotonic clock, which a wall-clock skew cannot move; expire_early "
    "does what a server's clock jump does (docs/faults.md)",
}

Wait = Callable[[float], object]  # waits that many seconds, or less when the run stops
Fail = Callable[[str, str], Exception]


class FaultContext(Protocol):
    """What a firing fault can reach: the run's clients, lock service and proxies."""

    lock_service: LockService | None

    def wait(self, seconds: float) -> object:
        """Wait that long, or less when the run stops."""

    def signal_client(self, client: int, sig: int) -> int:
        """Send a signal to client `client`'s process, wherever it runs (the one way a
        fault reaches a client's process); when it was sent, on this host's monotonic clock.
        The fault's first signal marks its start."""

    def holding(self, client: int) -> bool:
        """Whether the client is inside its critical section now."""

    def session(self, client: int) -> int:
        """The server's id of the client's lock session (0: none)."""

    def proxy(self, target: str, client: int) -> Any:
        """The FaultProxy between the client and its target's server (racebench.faults.proxy)."""

    def mark_end(self, at_ns: int | None = None) -> None:
        """The fault's effect ended at `at_ns` (default: now); a resumed client may act
        before `fire` returns."""


class FaultKind(ABC):
    """One fault of a trial; its class declares the kind.

    Subclasses set `kind`, `config`, `breaks`, and implement `fire`; `undo` must be safe to
    call when `fire` never ran or already undid its effect.
    """

    kind: ClassVar[str]
    config: ClassVar[type[FaultConfig]] = FaultConfig
    breaks: ClassVar[str]  # one line: what the fault does to a run, for `racebench list`
    needs_duration: ClassVar[bool] = False
    # A proxy fault routes one numbered client through a proxy set up before clients start.
    uses_proxy: ClassVar[bool] = False
    # Signals client processes: each client then gets a process of its own.
    signals_clients: ClassVar[bool] = False
    # The signal a client fault starts with. With a `when` trigger the nemesis sends it from
    # where the client runs, the moment the state shows (a round trip from the coordinator
    # to a Dask worker can miss a 5 ms critical section); `signal_client` then returns
    # that moment instead of sending it twice.
    first_signal: ClassVar[int | None] = None
    # What its report entry measures after it: "takeover", how long until another client
    # entered the critical section; "grants", the sections entered after it and the wait
    # for the first one.
    measures: ClassVar[Literal["takeover", "grants"] | None] = None

    def __init__(self, fault: FaultConfig) -> None:
        self.fault = fault

    @classmethod
    def can_suffer(cls, plugin: type[PluginInfo], role: Literal["store", "lock"]) -> bool:
        """Whether this store or lock service class (`role`) can suffer the fault (by
        default any: a fault on the clients hits whatever they use)."""
        return True

    @classmethod
    def validate(cls, fault: FaultConfig, field: str, scenario: Scenario, fail: Fail) -> None:
        """Refuse, before anything runs, what this scenario cannot do (`fail(field, why)`)."""
        if cls.needs_duration and not fault.lasts_ms():
            raise fail(f"{field}.duration_ms", f"{cls.kind} needs duration_ms")

    @classmethod
    def prepare(cls, fault: FaultConfig, scenario: Scenario, shared: dict[str, Any]) -> FaultKind:
        """The fault of one trial, made before its clients start.

        `shared` is common to the trial's faults (two faults on one server share its process
        handle); a problem found here (a server not running) raises BackendUnavailable.
        """
        return cls(fault)

    @classmethod
    def keeps_exclusion(
        cls, fault: FaultConfig, service: LockService, race_window_ms: float
    ) -> bool:
        """Whether a lock `service` still promises mutual exclusion through this fault."""
        return True

    @abstractmethod
    def fire(self, client: int, context: FaultContext) -> str:
        """Inject the fault on `client` (waiting through its duration); say what was done."""

    def undo(self, context: FaultContext) -> None:
        """Leave nothing of the fault in effect (run at the end, fired or not)."""
