"""Python plug-in workloads: `workload.type: mypkg.checkout:Checkout` or an entry-point name.

A plug-in is a class; racebench makes one instance per trial with the scenario's `options`
mapping and drives it with a connection it opened itself (a DB-API connection in autocommit
for postgres, mysql and sqlite; a `redis.Redis` client for redis)::

    class Checkout:
        backends = ("postgres", "sqlite")          # where it can run

        def __init__(self, options: dict) -> None: ...
        def setup(self, conn, run: RunContext) -> None: ...         # once, before the clients
        def operation(self, conn, ctx: OperationContext) -> bool:   # per operation, per client
            ...                                     # False: rejected by the business rule
        def check(self, conn, run: RunContext, figures: dict[str, int]) -> Check: ...
        def teardown(self, conn, run: RunContext) -> None: ...     # drop what setup made

`run.namespace` is unique to the trial (`racebench_<hex>`): name tables or keys after it and
drop them in teardown. `figures` counts the operations by outcome (`ok`, `rejected`,
`unknown`, `operations`). An exception in `operation` is recorded as an error outcome.
Plug-ins are found by import path, or by name under the `racebench.workloads` entry point
of an installed package.
"""

from __future__ import annotations

import builtins
import importlib
import shutil
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, PrivateAttr, model_validator

from racebench.errors import RacebenchError, ScenarioError
from racebench.history import Outcome, RunHistory
from racebench.stores.base import ClientOptions, StrategySpec
from racebench.workloads.counters import Check, Invariant
from racebench.workloads.custom.base import (
    CustomClient,
    CustomRun,
    generic_strategies,
    history_figures,
    resolve_url,
)

ENTRY_POINT_GROUP = "racebench.workloads"
REQUIRED_METHODS = ("setup", "operation", "check", "teardown")
SQL_BACKENDS = ("postgres", "mysql", "sqlite")

__all__ = ["Check", "Invariant", "OperationContext", "PluginWorkload", "RunContext"]


@dataclass(frozen=True)
class RunContext:
    """What a plug-in knows about its trial: its namespace, the backend, how many clients."""

    namespace: str
    backend: str
    clients: int


@dataclass
class OperationContext:
    """What one operation of a plug-in knows: who runs it, its number, the fencing token."""

    client: int
    seq: int
    namespace: str
    backend: str
    token: int | None
    race_window_s: float

    def pause(self) -> None:
        """Sleep for the scenario's race window: call it between the reads and the write."""
        if self.race_window_s:
            time.sleep(self.race_window_s)


class PluginError(ValueError):
    """A plug-in that cannot be found, imported or used."""


def _origin(name: str) -> tuple[str, str] | None:
    """(import path, where it came from) of an entry point named `name`, if installed."""
    from importlib.metadata import entry_points  # only when a plug-in is asked for

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            dist = ep.dist.name if ep.dist is not None else "unknown package"
            return ep.value, f"entry point {ep.name!r} of {dist}"
    return None


def load_plugin(name: str) -> tuple[type, str]:
    """The plug-in class named `name` and where it came from; PluginError if broken."""
    # An installed entry point wins over an import path, so a package can claim a short name.
    found = _origin(name)
    if found is not None:
        path, origin = found
    elif ":" in name:
        path, origin = name, "import path"
    else:
        raise PluginError(
            f"unknown workload type {name!r} (built in: stock, withdraw, likes, sql, redis;"
            f" a plug-in is module:Class or a name under the {ENTRY_POINT_GROUP} entry point)"
        )
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except Exception as exc:  # any failure while importing user code is the plug-in's
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise PluginError(f"plug-in {name!r} ({origin}) cannot be loaded: {reason}") from None
    # Checked when the scenario loads, not when a trial first calls the method: a missing
    # check() would otherwise surface after the whole race had run.
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(target, m, None))]
    if not isinstance(target, type) or missing:
        what = "is not a class" if not isinstance(target, type) else "lacks " + ", ".join(missing)
        raise PluginError(f"plug-in {name!r} ({origin}) {what}")
    return target, origin


def installed_plugins() -> list[tuple[str, str, str]]:
    """(name, import path, package) of every workload registered under the entry point."""
    from importlib.metadata import entry_points

    return [
        (ep.name, ep.value, ep.dist.name if ep.dist is not None else "?")
        for ep in entry_points(group=ENTRY_POINT_GROUP)
    ]


class PluginWorkload(BaseModel):
    """A workload written in Python, loaded by import path or entry-point name."""

    model_config = ConfigDict(extra="forbid")

    type: str
    options: dict[str, Any] = {}
    claims_safe: bool = False

    operation_kind: ClassVar[str] = "operation"
    anomaly_names: ClassVar[tuple[str, ...]] = ()
    # builtins.type: the `type` field above shadows the name in this class body.
    _cls: builtins.type[Any] = PrivateAttr()

    @model_validator(mode="after")
    def _load(self) -> PluginWorkload:
        # Imported at validation: `racebench validate` reports a broken plug-in (exit 2).
        self._cls, _ = load_plugin(self.type)
        return self

    @property
    def backends(self) -> tuple[str, ...]:
        """The plug-in's `backends`; every backend with a connection to give when it has none."""
        return tuple(getattr(self._cls, "backends", (*SQL_BACKENDS, "redis")))

    def strategies(self, backend: str) -> dict[str, StrategySpec]:
        return generic_strategies(self.type, self.claims_safe)

    def validate_run(self, fencing: bool, strategy: str) -> str | None:
        # Nothing to check: the token reaches the plug-in as `ctx.token`, and whether its
        # writes use it is invisible from here (templates, by contrast, are text to search).
        return None

    def start(
        self, backend: str, url: str | None, namespace: str, source: str, clients: int
    ) -> PluginRun:
        # A copy per trial: a plug-in that mutates its options cannot leak into the next trial.
        try:
            instance = self._cls(dict(self.options))
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise ScenarioError(
                source, "workload.options", f"plug-in {self.type!r} refused them: {reason}"
            ) from None
        return PluginRun(self.type, instance, RunContext(namespace, backend, clients), url)


def open_connection(backend: str, url: str) -> Any:
    """The connection a plug-in is given: autocommit DB-API, or a redis.Redis client."""
    if backend == "redis":
        from racebench.stores.redis import open_redis

        return open_redis(url)
    from racebench.workloads.custom.sql_dialects import DIALECTS

    return DIALECTS[backend]().open(url)


class PluginRun(CustomRun):
    """One trial of a plug-in workload."""

    def __init__(self, name: str, plugin: Any, context: RunContext, url: str | None) -> None:
        self.name = name
        self.plugin = plugin
        self.context = context
        self.url, self._temp_dir = resolve_url(context.backend, url)

    def _with_connection(self, method: str, *args: Any) -> Any:
        """Call the plug-in's `method` on a fresh connection of the parent's, closed after."""
        conn = open_connection(self.context.backend, self.url)
        try:
            return getattr(self.plugin, method)(conn, self.context, *args)
        except Exception as exc:  # the plug-in's own failure: one line naming it
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise RacebenchError(f"plug-in {self.name!r}: {method}() failed: {reason}") from exc
        finally:
            conn.close()

    def setup(self) -> None:
        self._with_connection("setup")

    def connect(self, options: ClientOptions) -> PluginClient:
        return PluginClient(self, options)

    def check(self, history: RunHistory) -> Check:
        check = self._with_connection("check", history_figures(history))
        if not isinstance(check, Check):
            raise RacebenchError(
                f"plug-in {self.name!r}: check() returned {type(check).__name__},"
                " not racebench.plugin.Check"
            )
        return check

    def teardown(self) -> None:
        try:
            self._with_connection("teardown")
        finally:
            if self._temp_dir is not None:
                shutil.rmtree(self._temp_dir, ignore_errors=True)


class PluginClient(CustomClient):
    """One client of a plug-in workload: its own connection, opened in the client process."""

    def __init__(self, run: PluginRun, options: ClientOptions) -> None:
        super().__init__(options)
        self.run = run
        self.conn = open_connection(run.context.backend, run.url)

    def run_operation(self, seq: int, token: int | None) -> Outcome:
        o, run = self.options, self.run.context
        ctx = OperationContext(o.client_id, seq, run.namespace, run.backend, token, o.race_window_s)
        accepted = self.run.plugin.operation(self.conn, ctx)
        # `is False`, not falsiness: an operation that returns nothing (None) succeeded.
        return Outcome.REJECTED if accepted is False else Outcome.OK

    def close(self) -> None:
        self.conn.close()
