"""What `racebench list` shows, read from the registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from rich.table import Table

from racebench.plugins import registry
from racebench.plugins.registry import (
    FAULT_GROUP,
    LOCK_GROUP,
    STORE_GROUP,
    fault_class,
    fault_names,
    lock_class,
    lock_names,
    origin,
    store_class,
    store_names,
    strategies_for,
)
from racebench.stores.base import ROW_WORKLOADS, Store, StrategySpec
from racebench.util.plugin_info import PluginInfo
from racebench.workloads.counters import WORKLOAD_TYPES
from racebench.workloads.custom.plugin import PluginError, installed_plugins, load_plugin
from racebench.workloads.custom.redis_template import RedisTemplateWorkload
from racebench.workloads.custom.sql_template import SqlTemplateWorkload
from racebench.workloads.rows import ROW_WORKLOAD_TYPES

TEMPLATE_TYPES: dict[str, type[SqlTemplateWorkload] | type[RedisTemplateWorkload]] = {
    "sql": SqlTemplateWorkload,
    "redis": RedisTemplateWorkload,
}


def client_model(cls: type[Store], strategies: list[str]) -> str:
    """How a backend's clients run in a worker: on its event loop, or a thread each."""
    on_loop = [s for s in strategies if s in cls.async_strategies]
    threaded = [s for s in strategies if s not in cls.async_strategies]
    parts = []
    if on_loop:
        threshold = cls.async_from_clients_per_worker
        when = f" (from {threshold} clients per worker)" if threshold > 1 else ""
        parts.append(f"asyncio, {cls.async_driver}{when}: {', '.join(on_loop)}")
    if threaded:
        what = ", ".join(threaded) if on_loop else "all strategies"
        parts.append(f"a thread per client (blocking driver): {what}")
    if on_loop and (rows := sorted(cls.workloads & ROW_WORKLOADS)):
        # The row workloads have no asyncio implementation (engine.py).
        parts.append(f"{' and '.join(rows)} on a thread per client, whatever the strategy")
    return "; ".join(parts)


def _loadable(names: list[str], load: Callable[[str], type], broken: list[str]) -> list[str]:
    """The names whose plug-in loads; one line in `broken` for each that does not."""
    loaded = []
    for name in names:
        try:
            load(name)
        except registry.PluginError as error:
            broken.append(str(error))
            continue
        loaded.append(name)
    return loaded


def catalog_tables() -> tuple[list[Table], list[str]]:
    """The tables of `racebench list`, and one line per store or lock plug-in that is broken."""
    broken: list[str] = []
    stores = _loadable(store_names(), store_class, broken)
    services = _loadable(lock_names(), lock_class, broken)
    workloads = Table(title="workloads", header_style="bold")
    for header in ("type", "what it does", "backends", "anomalies checked"):
        workloads.add_column(header)
    for name, model in {**WORKLOAD_TYPES, **ROW_WORKLOAD_TYPES}.items():
        runs_on = ", ".join(b for b in stores if name in store_class(b).workloads)
        doc = " ".join((model.__doc__ or "").split())  # a docstring's line breaks: spaces
        workloads.add_row(name, doc, runs_on, ", ".join(model.anomaly_names))
    for name, template in TEMPLATE_TYPES.items():
        doc = (template.__doc__ or "").strip()
        own = "the template's own invariants (docs/workloads-custom.md)"
        workloads.add_row(name, doc, ", ".join(template.backends), own)

    backends = Table(title="backends", header_style="bold")
    for header in (
        "backend",
        "what it is",
        "default url",
        "strategies",
        "clients run on",
        "package",
    ):
        backends.add_column(header)
    for name in stores:
        store = store_class(name)
        backends.add_row(
            name,
            store.description,
            _default_url(store),
            ", ".join(strategies_for(name)),
            client_model(store, list(strategies_for(name))),
            _package(STORE_GROUP, name, store),
        )

    strategies = Table(title="strategies", header_style="bold")
    for header in (
        "strategy",
        "backends",
        "workloads",
        "what it does",
        "prevents",
        "does not prevent",
    ):
        strategies.add_column(header)
    # Backends that offer a strategy with the same claim share one row; a strategy whose
    # guarantees differ by server (repeatable_read) gets a row per variant.
    rows: dict[tuple[str, StrategySpec], list[str]] = {}
    for backend in stores:
        for name, spec in strategies_for(backend).items():
            rows.setdefault((name, spec), []).append(backend)
    for (name, spec), backends_of in rows.items():
        strategies.add_row(
            name,
            ", ".join(backends_of),
            ", ".join(sorted(spec.supports)),
            spec.description,
            spec.prevents,
            spec.allows or "-",
        )

    locks = Table(title="lock services (guard.strategy: lock)", header_style="bold")
    for header in ("service", "what it is", "lease", "failure mode", "default url", "package"):
        locks.add_column(header)
    for name in services:
        service = lock_class(name)
        locks.add_row(
            name,
            service.description,
            "yes" if service.lease else "no",
            service.failure_mode,
            _default_url(service),
            _package(LOCK_GROUP, name, service),
        )
    faults = _fault_table(stores, services, broken)
    return [workloads, backends, strategies, locks, faults], broken


def _fault_table(stores: list[str], services: list[str], broken: list[str]) -> Table:
    """The registered fault kinds: what each breaks and which plug-ins can suffer it."""
    table = Table(title="fault kinds (faults[].kind)", header_style="bold")
    for header in ("kind", "what it breaks", "stores", "lock services", "package"):
        table.add_column(header)

    def sufferers(
        kind: str,
        names: list[str],
        load: Callable[[str], type[PluginInfo]],
        role: Literal["store", "lock"],
    ) -> str:
        cls = fault_class(kind)
        able = [n for n in names if cls.can_suffer(load(n), role)]
        if not able:
            return "-"
        return "any" if len(able) == len(names) else ", ".join(able)

    for kind in _loadable(fault_names(), fault_class, broken):
        table.add_row(
            kind,
            fault_class(kind).breaks,
            sufferers(kind, stores, store_class, "store"),
            sufferers(kind, services, lock_class, "lock"),
            origin(FAULT_GROUP, kind),
        )
    return table


def _default_url(cls: type[PluginInfo]) -> str:
    """The default URL and the variable that overrides it, as `racebench list` shows them."""
    if cls.default_url is None:
        return "(none needed)"
    return f"${cls.url_env} or {cls.default_url}" if cls.url_env else cls.default_url


def _package(group: str, name: str, cls: type[PluginInfo]) -> str:
    """The distribution that registered the plug-in, with the extra that installs its driver."""
    extra = f" [{cls.extra}]" if cls.extra else ""
    return origin(group, name) + extra


def plugin_table() -> tuple[Table, list[str]]:
    """Installed plug-in workloads and where they came from; and one line per broken one."""
    table = Table(title="plug-in workloads (entry point racebench.workloads)", header_style="bold")
    for header in ("type", "what it does", "import path", "package"):
        table.add_column(header)
    broken: list[str] = []
    for name, path, package in installed_plugins():
        try:
            cls, _ = load_plugin(name)
        except PluginError as error:
            broken.append(str(error))
            table.add_row(name, "[bold red]BROKEN[/]", path, package)
            continue
        doc = (cls.__doc__ or "").strip().splitlines()
        table.add_row(name, doc[0] if doc else "-", path, package)
    return table, broken
