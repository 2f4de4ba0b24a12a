"""The plug-ins registered under racebench's entry points, found without importing them.

Stores (`racebench.stores`), lock services (`racebench.locks`) and fault kinds
(`racebench.faults`) are found here, racebench's own and third-party ones alike (as tooz
finds its drivers under `tooz.backends`). Only the entry points' names are read up front; a
plug-in's module is imported the first time it is used, so `racebench --help` and a sqlite
run never import a server's driver. racebench.plugins.registry builds the checks on top of this.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

from racebench.errors import RacebenchError
from racebench.faults.kind import FaultKind
from racebench.locks.base import LockService
from racebench.stores.base import Store

STORE_GROUP = "racebench.stores"
LOCK_GROUP = "racebench.locks"
FAULT_GROUP = "racebench.faults"


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


def fault_names() -> list[str]:
    """Every registered fault kind's name (nothing is imported)."""
    return list(_registered(FAULT_GROUP))


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
    # The entry point's name is what scenarios write: a class declaring another is a bug.
    declared = getattr(target, {FAULT_GROUP: "kind", LOCK_GROUP: "service"}.get(group, ""), name)
    if declared != name:
        raise PluginError(f"{where} declares itself as {declared!r}, not {name!r}")
    return target


def store_class(backend: str) -> type[Store]:
    """The store registered as `backend`, its module imported now (its driver still not)."""
    return _load(STORE_GROUP, backend, Store)


def lock_class(service: str) -> type[LockService]:
    """The lock service registered as `service`, its module imported now."""
    return _load(LOCK_GROUP, service, LockService)


def fault_class(kind: str) -> type[FaultKind]:
    """The fault kind registered as `kind`, its module imported now."""
    return _load(FAULT_GROUP, kind, FaultKind)
