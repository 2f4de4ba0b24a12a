"""Network faults: one client's link to a server, through racebench's TCP proxy.

The proxy (racebench.faults.proxy.FaultProxy) sits between one numbered client and the store's or
the lock service's server; the scenario routes that client through it with `store.proxy` or
`guard.lock.proxy`. Any networked store or lock service can suffer these faults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from racebench.faults.client import lease_outlasts
from racebench.faults.kind import Fail, FaultContext, FaultKind
from racebench.util.plugin_config import FaultConfig, TimedFaultConfig

if TYPE_CHECKING:
    from racebench.config.scenario import Scenario
    from racebench.locks.base import LockService
    from racebench.util.plugin_info import PluginInfo


class LatencyConfig(TimedFaultConfig):
    """latency: the delay added to every chunk each way, and its random spread."""

    delay_ms: float = Field(default=0.0, ge=0, description="added to every chunk, each way")
    jitter_ms: float = Field(default=0.0, ge=0, description="a random 0..jitter_ms more")


class ProxyFault(FaultKind):
    """A fault on one client's connections to its target's server."""

    uses_proxy = True

    def __init__(self, fault: FaultConfig) -> None:
        super().__init__(fault)
        self._proxy: Any = None

    @classmethod
    def can_suffer(cls, plugin: type[PluginInfo], role: Literal["store", "lock"]) -> bool:
        return plugin.networked

    @classmethod
    def validate(cls, fault: FaultConfig, field: str, scenario: Scenario, fail: Fail) -> None:
        from racebench.plugins.entry_points import lock_class, store_class

        super().validate(fault, field, scenario, fail)
        if fault.client == "any":
            raise fail(
                f"{field}.client",
                f"{cls.kind} needs a numbered client: its proxy is set up before the clients start",
            )
        if fault.target == "store":
            if not cls.can_suffer(store_class(scenario.store.backend), "store"):
                raise fail(
                    f"{field}.target",
                    f"store {scenario.store.backend} has no connection to proxy",
                )
            if not scenario.store.proxy:
                raise fail(f"{field}.kind", f"{cls.kind} on the store needs store.proxy: true")
            return
        lock = scenario.guard.lock if scenario.guard.strategy == "lock" else None
        if lock is None or not cls.can_suffer(lock_class(lock.service), "lock"):
            raise fail(f"{field}.target", "target: lock needs a networked lock service")
        if not lock.proxy:
            raise fail(f"{field}.kind", f"{cls.kind} on the lock needs guard.lock.proxy: true")

    def fire(self, client: int, context: FaultContext) -> str:
        self._proxy = context.proxy(self.fault.target, client)
        return self._fire(self._proxy, context)

    def _fire(self, proxy: Any, context: FaultContext) -> str:
        raise NotImplementedError


class Latency(ProxyFault):
    """Delay every chunk by `delay_ms` ± `jitter_ms` each way, for `duration_ms`."""

    kind = "latency"
    config = LatencyConfig
    breaks = "slows one client's link for duration_ms: a lease can run out during a section"
    needs_duration = True

    @classmethod
    def keeps_exclusion(
        cls, fault: FaultConfig, service: LockService, race_window_ms: float
    ) -> bool:
        assert isinstance(fault, LatencyConfig)
        # A grant's reply and the section's read and write each cross the link twice.
        delay = fault.delay_ms + fault.jitter_ms
        return not service.lease or race_window_ms + 6 * delay < service.config.ttl_ms

    def _fire(self, proxy: Any, context: FaultContext) -> str:
        fault = self.fault
        assert isinstance(fault, LatencyConfig)
        proxy.set_latency(fault.delay_ms, fault.jitter_ms)
        context.wait(fault.lasts_ms() / 1000)
        proxy.clear_latency()
        return f"+{fault.delay_ms:g}±{fault.jitter_ms:g} ms for {fault.lasts_ms():g} ms"

    def undo(self, context: FaultContext) -> None:
        if self._proxy is not None:
            self._proxy.clear_latency()


class Partition(ProxyFault):
    """Hold one client's traffic (connections stay open, nothing passes) for `duration_ms`."""

    kind = "partition"
    config = TimedFaultConfig
    breaks = "cuts one client off its server for duration_ms: a lease can lapse meanwhile"
    needs_duration = True

    @classmethod
    def keeps_exclusion(
        cls, fault: FaultConfig, service: LockService, race_window_ms: float
    ) -> bool:
        return lease_outlasts(fault, service, race_window_ms)

    def _fire(self, proxy: Any, context: FaultContext) -> str:
        proxy.partition()
        context.wait(self.fault.lasts_ms() / 1000)
        proxy.heal()
        return f"traffic held for {self.fault.lasts_ms():g} ms"

    def undo(self, context: FaultContext) -> None:
        if self._proxy is not None:
            self._proxy.heal()


class Reset(ProxyFault):
    """Reset (RST) every connection of one client to its server."""

    kind = "reset"
    breaks = "resets one client's connections: a session lock ends with its connection"

    def _fire(self, proxy: Any, context: FaultContext) -> str:
        proxy.reset()
        return "connections reset"
