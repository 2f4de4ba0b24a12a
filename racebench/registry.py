"""The one place where stores, lock services and strategies are registered.

Modules are named by import path and loaded on first use, so `racebench --help` and a sqlite
run never import a server's driver. Adding a store or a lock service is one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from racebench.errors import ScenarioError
from racebench.faults import validate_faults
from racebench.guards import GENERIC_STRATEGIES
from racebench.stores.base import ROW_WORKLOADS, StrategySpec

if TYPE_CHECKING:
    from typing_extensions import TypeIs

    from racebench.locks.base import LockService
    from racebench.scenario import BuiltinWorkload, CustomWorkload, RunSpec
    from racebench.stores.base import Store

STORES: dict[str, str] = {
    "sqlite": "racebench.stores.sqlite:SqliteStore",
    "postgres": "racebench.stores.postgres:PostgresStore",
    "mysql": "racebench.stores.mysql:MysqlStore",
    "redis": "racebench.stores.redis:RedisStore",
    "zookeeper": "racebench.stores.zookeeper:ZookeeperStore",
}

LOCK_SERVICES: dict[str, str] = {
    "file_lock": "racebench.locks.file_lock:FileLock",
    "advisory": "racebench.locks.sql_locks:AdvisoryLock",
    "get_lock": "racebench.locks.sql_locks:GetLock",
    "redis_lock": "racebench.locks.redis_lock:RedisLock",
    "redlock": "racebench.locks.redlock:Redlock",
    "zookeeper_lock": "racebench.locks.zookeeper_lock:ZookeeperLock",
}


def _load(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def store_class(backend: str) -> type[Store]:
    return _load(STORES[backend])


def lock_class(service: str) -> type[LockService]:
    return _load(LOCK_SERVICES[service])


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

    if s.store.backend not in STORES:
        raise fail(
            "store.backend", f"unknown backend {s.store.backend!r} (known: {', '.join(STORES)})"
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
        if s.guard.lock.service not in LOCK_SERVICES:
            raise fail(
                "guard.lock.service",
                f"unknown lock service {s.guard.lock.service!r}"
                f" (known: {', '.join(LOCK_SERVICES)})",
            )
        if s.guard.lock.renew and not lock_class(s.guard.lock.service).renewable:
            raise fail(
                "guard.lock.renew",
                f"{s.guard.lock.service} has no lease to renew (renew applies to "
                + ", ".join(n for n in LOCK_SERVICES if lock_class(n).renewable)
                + ")",
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
