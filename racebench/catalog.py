"""What `racebench list` shows, read from the registry."""

from __future__ import annotations

from rich.table import Table

from racebench.custom.plugin import PluginError, installed_plugins, load_plugin
from racebench.custom.redis_template import RedisTemplateWorkload
from racebench.custom.sql_template import SqlTemplateWorkload
from racebench.registry import LOCK_SERVICES, STORES, lock_class, store_class, strategies_for
from racebench.stores.base import Store, StrategySpec
from racebench.workloads import WORKLOAD_TYPES
from racebench.workloads_rows import ROW_WORKLOAD_TYPES

TEMPLATE_TYPES = {"sql": SqlTemplateWorkload, "redis": RedisTemplateWorkload}


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
    return "; ".join(parts)


def catalog_tables() -> list[Table]:
    workloads = Table(title="workloads", header_style="bold")
    for header in ("type", "what it does", "anomalies checked"):
        workloads.add_column(header)
    for name, model in {**WORKLOAD_TYPES, **ROW_WORKLOAD_TYPES}.items():
        workloads.add_row(name, (model.__doc__ or "").strip(), ", ".join(model.anomaly_names))
    for name, template in TEMPLATE_TYPES.items():
        doc = (template.__doc__ or "").strip()
        workloads.add_row(name, doc, "the template's own invariants (docs/workloads-custom.md)")

    backends = Table(title="backends", header_style="bold")
    for header in ("backend", "what it is", "default url", "strategies", "clients run on"):
        backends.add_column(header)
    for name in STORES:
        store_cls = store_class(name)
        backends.add_row(
            name,
            store_cls.description,
            store_cls.default_url or "(a temporary file)",
            ", ".join(strategies_for(name)),
            client_model(store_cls, list(strategies_for(name))),
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
    for backend in STORES:
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
    for header in ("service", "what it is", "lease", "failure mode"):
        locks.add_column(header)
    for name in LOCK_SERVICES:
        lock_cls = lock_class(name)
        locks.add_row(
            name, lock_cls.description, "yes" if lock_cls.lease else "no", lock_cls.failure_mode
        )
    return [workloads, backends, strategies, locks]


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
