"""Where stores and lock services are found: the `racebench.stores` and `racebench.locks`
entry points, for racebench's own plug-ins and third-party ones alike (as tooz finds its
drivers under `tooz.backends`).

Only the entry points' names are read up front; a plug-in's module is imported the first
time it is used, so `racebench --help` and a sqlite run never import a server's driver.
Adding a store or a lock service is its module plus one entry-point line (docs/plugins.md).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from racebench.errors import RacebenchError, ScenarioError
from racebench.faults.nemesis import validate_faults
from racebench.guards import GENERIC_STRATEGIES
from racebench.locks.base import LockService
from racebench.stores.base import ROW_WORKLOADS, Store, StrategySpec

if TYPE_CHECKING:
    from typing_extensions import TypeIs

    from racebench.config.scenario import BuiltinWorkload, CustomWorkload, RunSpec

STORE_GROUP = "racebench.stores"
LOCK_GROUP = "racebench.locks"


class PluginError(RacebenchError):
    """A registered plug-in that cannot be loaded or is not what its group needs (exit 2)."""


@cache
def _registered(group: str) -> dict[str, EntryPoint]:
    """The entry points of `group` by name, without importing anything they point to."""
    found = {ep.name: ep for ep in entry_points(group=group)}
    if not found:
        # racebench registers its own plug-ins here: none means stale package metadata.
        raise PluginError(
            f"nothing is registered under the {group} entry point; racebench's package"
            " metadata is missing or stale: reinstall it (pip install -e .)"
        )
    return found


def store_names() -> list[str]:
    """Every registered store backend's name (nothing is imported)."""
    return list(_registered(STORE_GROUP))


def lock_names() -> list[str]:
    """Every registered lock service's name (nothing is imported)."""
    return list(_registered(LOCK_GROUP))


def origin(group: str, name: str) -> str:
    """The distribution that registered `name` under `group` (e.g. racebench)."""
    dist = _registered(group)[name].dist
    return dist.name if dist is not None else "unknown package"


@cache
def _load(group: str, name: str, base: type) -> type:
    """The class registered as `name`, checked to subclass `base`; PluginError if not."""
    ep = _registered(group)[name]
    where = f"plug-in {name!r} ({ep.value}, {group} entry point of {origin(group, name)})"
    try:
        target = ep.load()
    except Exception as exc:  # any failure while importing a plug-in is the plug-in's
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise PluginError(f"{where} cannot be loaded: {reason}") from None
    if not (isinstance(target, type) and issubclass(target, base)):
        raise PluginError(f"{where} is not a subclass of {base.__module__}.{base.__name__}")
    return target


def store_class(backend: str) -> type[Store]:
    """The store registered as `backend`, its module imported now (its driver still not)."""
    return _load(STORE_GROUP, backend, Store)


def lock_class(service: str) -> type[LockService]:
    """The lock service registered as `service`, its module imported now."""
    return _load(LOCK_GROUP, service, LockService)


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
        if s.guard.lock.renew and not lock_class(s.guard.lock.service).renewable:
            raise fail(
                "guard.lock.renew",
                f"{s.guard.lock.service} has no lease to renew (renew applies to "
                + ", ".join(n for n in lock_names() if lock_class(n).renewable)
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
