"""Lock faults: a lock service ends a grant behind its holder's back, through its own hooks.

Each kind calls one hook of racebench.locks.base.LockService (kill_session, lose_state,
expire_early, pause_server), and only the services that list the kind in their
`fault_kinds` can suffer it: the hook says what it really did ("emulated: ...").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from racebench.faults.client import lease_outlasts
from racebench.faults.kind import Fail, FaultContext, FaultKind
from racebench.util.plugin_config import FaultConfig, TimedFaultConfig

if TYPE_CHECKING:
    from racebench.config.scenario import Scenario
    from racebench.locks.base import LockService
    from racebench.util.plugin_info import PluginInfo


class LoseLockStateConfig(FaultConfig):
    """lose_lock_state: how many of the service's servers forget their locks."""

    instances: int = Field(default=1, ge=1, description="how many of its servers forget")


class LockFault(FaultKind):
    """A fault that a lock service inflicts on itself; it needs guard.strategy: lock.

    Only lock services suffer it, those that list the kind in their `fault_kinds`.
    """

    @classmethod
    def can_suffer(cls, plugin: type[PluginInfo], role: Literal["store", "lock"]) -> bool:
        return role == "lock" and cls.kind in getattr(plugin, "fault_kinds", ())

    @classmethod
    def validate(cls, fault: FaultConfig, field: str, scenario: Scenario, fail: Fail) -> None:
        from racebench.plugins.entry_points import fault_names, lock_class

        super().validate(fault, field, scenario, fail)
        lock = scenario.guard.lock if scenario.guard.strategy == "lock" else None
        if lock is None:
            raise fail(
                f"{field}.kind", f"{cls.kind} hits a lock service: it needs guard.strategy: lock"
            )
        if fault.target != "lock":
            raise fail(f"{field}.target", f"{cls.kind} only applies to target: lock")
        service = lock_class(lock.service)
        if not cls.can_suffer(service, "lock"):
            from racebench.plugins.entry_points import fault_class

            known = [n for n in fault_names() if fault_class(n).can_suffer(service, "lock")]
            raise fail(
                f"{field}.kind",
                f"lock service {lock.service} cannot suffer {cls.kind} (faults it supports: "
                f"{', '.join(sorted(known))})",
            )

    @staticmethod
    def _service(context: FaultContext) -> LockService:
        assert context.lock_service is not None  # validate required guard.strategy: lock
        return context.lock_service


class KillSession(LockFault):
    """End the holder's session on the server (pg_terminate_backend, KILL, CLIENT KILL)."""

    kind = "kill_session"
    breaks = "ends the client's lock session on the server: a session lock is released"
    measures: ClassVar[Literal["takeover", "grants"] | None] = "takeover"

    @classmethod
    def keeps_exclusion(
        cls, fault: FaultConfig, service: LockService, race_window_ms: float
    ) -> bool:
        return False

    def fire(self, client: int, context: FaultContext) -> str:
        return self._service(context).kill_session(context.session(client))


class LoseLockState(LockFault):
    """Make `instances` servers forget every lock, as a restart without persistence does."""

    kind = "lose_lock_state"
    config = LoseLockStateConfig
    breaks = "the lock's servers forget every grant: the next client is granted at once"

    @classmethod
    def keeps_exclusion(
        cls, fault: FaultConfig, service: LockService, race_window_ms: float
    ) -> bool:
        return False

    def fire(self, client: int, context: FaultContext) -> str:
        assert isinstance(self.fault, LoseLockStateConfig)
        return self._service(context).lose_state(self.fault.instances)


class ExpireEarly(LockFault):
    """Make the current grant expire now, as a forward clock jump on the server would."""

    kind = "expire_early"
    breaks = "the current lease expires now (a server clock jump): the holder runs on unaware"

    @classmethod
    def keeps_exclusion(
        cls, fault: FaultConfig, service: LockService, race_window_ms: float
    ) -> bool:
        return False

    def fire(self, client: int, context: FaultContext) -> str:
        return self._service(context).expire_early()


class ServerPause(LockFault):
    """Ask the lock's server to stop answering for `duration_ms` (CLIENT PAUSE)."""

    kind = "server_pause"
    config = TimedFaultConfig
    breaks = "the lock's server answers no one for duration_ms: a lease may lapse meanwhile"
    needs_duration = True

    @classmethod
    def keeps_exclusion(
        cls, fault: FaultConfig, service: LockService, race_window_ms: float
    ) -> bool:
        # A paused server holds the holder's writes too (when the store lives there), while
        # its lease may pass its deadline (Redis expires it as soon as the pause ends).
        return lease_outlasts(fault, service, race_window_ms)

    def fire(self, client: int, context: FaultContext) -> str:
        note = self._service(context).pause_server(self.fault.lasts_ms())
        context.wait(self.fault.lasts_ms() / 1000)
        return note
