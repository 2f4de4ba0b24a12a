"""The plug-ins a run uses, checked together before anything runs.

Stores, lock services and fault kinds are found through their entry points
(racebench.plugins.entry_points, re-exported here); this module checks that a scenario's store,
strategy, workload, lock service and faults combine. Adding a store, a lock service or a
fault kind is its module plus one entry-point line (docs/plugins.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from racebench.errors import ScenarioError
from racebench.faults.nemesis import validate_faults
from racebench.guards import GENERIC_STRATEGIES
from racebench.plugins.entry_points import (
    FAULT_GROUP,
    LOCK_GROUP,
    STORE_GROUP,
    PluginError,
    _registered,
    fault_class,
    fault_names,
    lock_class,
    lock_names,
    origin,
    store_class,
    store_names,
)
from racebench.stores.base import ROW_WORKLOADS, StrategySpec

if TYPE_CHECKING:
    from typing_extensions import TypeIs

    from racebench.config.scenario import BuiltinWorkload, CustomWorkload, RunSpec

__all__ = [
    "FAULT_GROUP",
    "LOCK_GROUP",
    "STORE_GROUP",
    "PluginError",
    "fault_class",
    "fault_names",
    "lock_class",
    "lock_names",
    "origin",
    "store_class",
    "store_names",
]


def default_port(scheme: str) -> int | None:
    """The port a URL of this scheme means when it names none, as some plug-in declares.

    Loads every plug-in (a fault proxy is being set up); one that cannot load declares
    nothing here and reports its own error where it is used.
    """
    for group, load in ((STORE_GROUP, store_class), (LOCK_GROUP, lock_class)):
        for name in _registered(group):
            try:
                ports = load(name).ports
            except PluginError:
                continue
            if scheme in ports:
                return ports[scheme]
    return None


def drivers_of(specs: list[RunSpec]) -> list[str]:
    """The driver distributions of the stores and lock services these runs use, in order."""
    names: list[str] = []
    for spec in specs:
        names += store_class(spec.scenario.store.backend).drivers
        lock = spec.scenario.guard.lock
        if spec.scenario.guard.strategy == "lock" and lock is not None:
            names += lock_class(lock.service).drivers
    return list(dict.fromkeys(names))


def strategies_for(backend: str) -> dict[str, StrategySpec]:
    """Every strategy a backend offers: the generic ones first, then its native ones."""
    return {**GENERIC_STRATEGIES, **store_class(backend).strategies}


def is_custom(workload: BuiltinWorkload | CustomWorkload) -> TypeIs[CustomWorkload]:
    """A user's own workload (template or plug-in): it brings its state, operation and checks."""
    return hasattr(workload, "start")


def run_strategies(spec: RunSpec) -> dict[str, StrategySpec]:
    """The strategies this run's workload can use on its backend."""
    workload = spec.scenario.workload
    if is_custom(workload):
        return workload.strategies(spec.scenario.store.backend)
    return strategies_for(spec.scenario.store.backend)


def _validate_integer_range(
    spec: RunSpec, workload: BuiltinWorkload, fail: Callable[[str, str], Exception]
) -> None:
    """Refuse workload numbers the backend's integer columns or keys cannot hold."""
    s = spec.scenario
    cls = store_class(s.store.backend)
    limit = f"{cls.integer_type} (at most {cls.max_integer})"
    for name, value in workload.integer_fields().items():
        if abs(value) > cls.max_integer:
            raise fail(f"workload.{name}", f"{value} does not fit in {limit}")
    if s.operations is not None and workload.largest_value(s.operations) > cls.max_integer:
        raise fail(
            "operations",
            f"{s.operations} operations can take the stored value beyond {limit}",
        )


def validate_run(spec: RunSpec, context: str = "") -> None:
    """Refuse combinations that cannot run, naming the key: checked before anything runs."""
    s = spec.scenario
    src = spec.source

    def fail(field: str, problem: str) -> ScenarioError:
        return ScenarioError(src, field, problem + context)

    if s.store.backend not in store_names():
        raise fail(
            "store.backend",
            f"unknown backend {s.store.backend!r} (known: {', '.join(store_names())})",
        )
    workload = s.workload
    if is_custom(workload) and s.store.backend not in workload.backends:
        raise fail(
            "store.backend",
            f"the {workload.type} workload runs on: {', '.join(workload.backends)}",
        )
    strategies = run_strategies(spec)
    if s.guard.strategy not in strategies:
        raise fail(
            "guard.strategy",
            f"unknown strategy {s.guard.strategy!r} for backend {s.store.backend}"
            f" (known: {', '.join(strategies)})",
        )
    store_workloads = store_class(s.store.backend).workloads
    if not is_custom(workload) and s.workload.type not in store_workloads:
        raise fail(
            "workload.type",
            f"the {s.store.backend} store does not implement the {s.workload.type} workload"
            f" (it implements: {', '.join(sorted(store_workloads))})",
        )
    if s.workload.type not in strategies[s.guard.strategy].supports:
        raise fail(
            "guard.strategy",
            f"strategy {s.guard.strategy!r} does not apply to the {s.workload.type} workload"
            f" (it supports: {', '.join(sorted(strategies[s.guard.strategy].supports))})",
        )
    if s.guard.strategy == "lock":
        if s.guard.lock is None:
            raise fail("guard.lock", "strategy 'lock' needs guard.lock with a service")
        if s.guard.lock.service not in lock_names():
            raise fail(
                "guard.lock.service",
                f"unknown lock service {s.guard.lock.service!r} (known: {', '.join(lock_names())})",
            )
    elif s.guard.fencing:
        raise fail(
            "guard.fencing", "fencing needs guard.strategy: lock (a lock service grants tokens)"
        )
    if is_custom(workload):
        # A custom workload's numbers live in its own SQL or commands, not in racebench's.
        if problem := workload.validate_run(s.guard.fencing, s.guard.strategy):
            field, _, message = problem.partition(": ")
            raise fail(field, message)
    else:
        _validate_integer_range(spec, workload, fail)
    if s.guard.fencing and s.workload.type in ROW_WORKLOADS:
        raise fail("guard.fencing", f"fencing does not apply to the {s.workload.type} workload")
    limit = store_class(s.store.backend).max_accounts
    accounts = getattr(s.workload, "accounts", 0)
    if s.workload.type == "transfer" and limit is not None and accounts > limit[0]:
        raise fail(
            "workload.accounts",
            f"{accounts} accounts; the {s.store.backend} store takes at most {limit[0]} "
            f"({limit[1]})",
        )
    readers = getattr(s.workload, "readers", 0)
    if readers >= s.clients:
        raise fail("workload.readers", f"{readers} readers leave no client to transfer")
    validate_faults(spec, fail)
    if s.arrival != "constant" and s.rate is None:
        raise fail("arrival", "an arrival process needs an open loop: set rate (e.g. 5000/s)")
    if s.operations is not None and s.operations < s.clients:
        raise fail("operations", f"{s.operations} is fewer than clients ({s.clients})")
    if s.duration is not None and s.warmup >= s.duration:
        raise fail("warmup", f"{s.warmup:g}s must be shorter than duration ({s.duration:g}s)")
