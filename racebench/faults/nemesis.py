"""Faults, Jepsen-style: a nemesis thread in the parent injects them while the clients run.

Every fault is recorded on the same monotonic clock as the operations and critical sections,
so the result can say what the clients did while it lasted. Faults fire one after another in
the order listed, each when its trigger comes: `at` a time into the run, or `when` the chosen
client (or, with `client: any`, whichever client comes first) is `holding` its lock (inside
its critical section) or `acquiring` it.

Each fault kind is a class of its own (racebench.faults.kind.FaultKind, registered under the
`racebench.faults` entry point); the nemesis composes them, as Jepsen's combined nemesis
does: it validates every fault, prepares them with the trial, fires each at its trigger and
undoes them all at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from racebench.errors import BackendUnavailable
from racebench.faults.kind import FaultKind
from racebench.faults.server import validate_servers
from racebench.history import RunHistory

if TYPE_CHECKING:
    from racebench.config.scenario import RunSpec, Scenario
    from racebench.locks.base import LockService
    from racebench.protocol import ClientSignals, Probe
    from racebench.stores.base import Store
    from racebench.util.plugin_config import FaultConfig

_POLL_S = 0.0005


def _kind(name: str) -> type[FaultKind]:
    """The fault kind registered as `name` (looked up at call time: the plug-in layer, which
    finds it, sits above the faults)."""
    from racebench.plugins.entry_points import fault_class

    return fault_class(name)


def faults_supported_by(service: str) -> list[str]:
    """Every registered fault kind a run guarded by this lock service can suffer."""
    from racebench.plugins.entry_points import fault_names, lock_class

    cls = lock_class(service)
    return [kind for kind in fault_names() if _kind(kind).can_suffer(cls, "lock")]


def signals_clients(scenario: Scenario) -> bool:
    """Whether a fault of the scenario signals client processes (each then needs its own)."""
    return any(_kind(f.kind).signals_clients for f in scenario.faults)


def validate_faults(spec: RunSpec, fail: Callable[[str, str], Exception]) -> None:
    """Refuse, before anything runs, a fault this store, lock service or machine cannot do:
    the triggers here, then what each fault kind checks for itself."""
    s = spec.scenario
    locked = s.guard.strategy == "lock" and s.guard.lock is not None
    validate_servers(s, fail)
    for i, fault in enumerate(s.faults):
        field = f"faults[{i}]"
        if fault.client == "any":
            if fault.when is None:
                raise fail(
                    f"{field}.client", "client: any picks the client by its state: it needs `when`"
                )
        elif fault.client >= s.clients:
            raise fail(
                f"{field}.client", f"client {fault.client} does not exist ({s.clients} clients)"
            )
        if fault.when is not None and not locked:
            raise fail(f"{field}.when", "`when` watches a lock: it needs guard.strategy: lock")
        _kind(fault.kind).validate(fault, field, s, fail)


class ProxyRoutes:
    """The TCP proxies of a run: one per (server, client) that a proxy fault hits.

    A fault cuts a client off from a server, not from one of its connections: when the store
    and the lock live on one server and both say `proxy: true`, both go through the same
    proxy. Started in the parent before the workers fork; `client_urls` tells each client
    (racebench.engine.trials.ClientFactory) which proxy URL replaces its server's.
    """

    def __init__(self, spec: RunSpec, store: Store, lock_service: LockService | None) -> None:
        self.store = store
        self.lock_service = lock_service
        self.scenario = spec.scenario
        self.proxies: dict[tuple[tuple[str, int], int], Any] = {}
        # validate_faults refuses `client: any` for a proxy fault (its proxy is set up first).
        self._wanted = {
            (f.target, f.client)
            for f in spec.scenario.faults
            if _kind(f.kind).uses_proxy and f.client != "any"
        }

    def _upstream(self, target: str) -> str:
        if target == "store":
            assert self.store.url is not None
            return self.store.url
        assert self.lock_service is not None
        url = self.lock_service.server_url()
        assert url is not None
        return url

    def _address(self, target: str) -> tuple[str, int]:
        from racebench.faults.proxy import address_of

        return address_of(self._upstream(target))

    def proxy_for(self, target: str, client: int) -> Any:
        return self.proxies[(self._address(target), client)]

    def start(self) -> None:
        if not self._wanted:
            return
        from racebench.faults.proxy import FaultProxy

        for target, client in sorted(self._wanted):
            address = self._address(target)
            if (address, client) not in self.proxies:
                proxy = FaultProxy(*address)
                proxy.start()
                self.proxies[(address, client)] = proxy

    def client_urls(self) -> dict[tuple[str, int], str]:
        """(target, client) -> the proxy URL that client must use; picklable, for workers."""
        from racebench.faults.proxy import url_through

        s = self.scenario
        routed = []
        if s.store.proxy and self.store.url is not None:
            routed.append("store")
        if self.lock_service is not None and s.guard.lock is not None and s.guard.lock.proxy:
            routed.append("lock")
        urls: dict[tuple[str, int], str] = {}
        for (address, client), proxy in self.proxies.items():
            for target in routed:
                if address == self._address(target):
                    urls[(target, client)] = url_through(self._upstream(target), proxy.port)
        return urls

    def stop(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()
        self.proxies.clear()


class FaultNemesis:
    """Fires a run's faults from a thread of the parent process and records when they were.

    It is also the `FaultContext` the faults fire with: the one place that knows where each
    client's process is (`signal_client`), what it is doing (the probe), and its proxies.
    """

    def __init__(
        self, spec: RunSpec, lock_service: LockService | None, routes: ProxyRoutes
    ) -> None:
        self.faults = spec.scenario.faults
        self.lock_service = lock_service
        self.routes = routes
        self.events: list[dict[str, Any]] = []
        # Set by a fault whose start or end is a moment inside the firing (a signal sent).
        self._started_ns = self._ended_ns = 0
        # (client, signal) already sent from where the client runs, for a `when` trigger.
        self._presignalled: tuple[int, int] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._locked = spec.scenario.guard.strategy == "lock"
        # Prepared now, before the clients start: a missing server is a backend error (exit 3).
        shared: dict[str, Any] = {}
        self._prepared: list[FaultKind] = [
            _kind(f.kind).prepare(f, spec.scenario, shared) for f in self.faults
        ]

    def start(self, clients: ClientSignals, probe: Probe, t0_ns: int) -> None:
        """Start firing. `clients` reaches each client's process (here or on a Dask worker);
        `probe` is what they are doing; `t0_ns` is when they started."""
        self._clients, self._probe, self._t0 = clients, probe, t0_ns
        self._thread = threading.Thread(target=self._run, name="racebench-nemesis", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the nemesis and undo every fault: no client stays stopped, no link cut or
        slowed, no server stopped or dead."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        # Every fault is undone even if one fails to (its error is raised after).
        failures = []
        for prepared in self._prepared:
            try:
                prepared.undo(self)
            except BackendUnavailable as exc:
                failures.append(exc)
        if failures:
            raise failures[0]

    def _signal_when(self, fault: FaultConfig, sig: int) -> int | None:
        """Signal the client the moment its state shows, from where it runs (a round trip to
        another host could miss a short critical section); the client, or None when the run
        ended first."""
        assert fault.when is not None
        count = len(self._probe.holding)
        candidates = list(range(count)) if fault.client == "any" else [int(fault.client)]
        fired = self._clients.signal_when(candidates, fault.when, sig, self._stopping)
        if fired is None:
            return None
        client, self._started_ns = fired
        self._presignalled = (client, sig)
        return client

    # FaultContext: what a firing fault reaches.
    def wait(self, seconds: float) -> object:
        return self._stopping.wait(seconds)

    def signal_client(self, client: int, sig: int) -> int:
        if self._presignalled == (client, sig):  # sent already, by the `when` trigger
            self._presignalled = None
            return self._started_ns
        sent = self._clients.signal(client, sig)
        self._started_ns = self._started_ns or sent  # a fault starts with its first signal
        return sent

    def holding(self, client: int) -> bool:
        return bool(self._probe.holding[client])

    def session(self, client: int) -> int:
        return int(self._probe.session[client])

    def proxy(self, target: str, client: int) -> Any:
        return self.routes.proxy_for(target, client)

    def mark_end(self, at_ns: int | None = None) -> None:
        self._ended_ns = at_ns or time.monotonic_ns()

    def _wait_trigger(self, fault: FaultConfig) -> int | None:
        """Wait for the fault's trigger; the client it hits, or None when the run ended first."""
        if fault.at is not None:
            delay = self._t0 / 1e9 + fault.at - time.monotonic()
            fired = not self._stopping.wait(max(0.0, delay))
            return int(fault.client) if fired else None
        watched = self._probe.holding if fault.when == "holding" else self._probe.acquiring
        candidates = range(len(watched)) if fault.client == "any" else [int(fault.client)]
        while not self._stopping.is_set():
            for client in candidates:
                if watched[client]:
                    return client
            time.sleep(_POLL_S)
        return None

    def _run(self) -> None:
        for fault, prepared in zip(self.faults, self._prepared, strict=True):
            self._started_ns = self._ended_ns = 0
            self._presignalled = None
            first = prepared.first_signal
            if first is not None and fault.when is not None:
                client = self._signal_when(fault, first)
            else:
                client = self._wait_trigger(fault)
            if client is None:
                return
            start = time.monotonic_ns()
            try:
                note = prepared.fire(client, self)
            except Exception as exc:  # a fault that failed is reported, never fatal to the run
                note = f"failed: {type(exc).__name__}: {exc}"
            start = self._started_ns or start
            self.events.append(
                {
                    "kind": fault.kind,
                    "client": client,
                    "target": fault.target,
                    "start_ns": start,
                    "end_ns": self._ended_ns or time.monotonic_ns(),
                    "note": note,
                }
            )

    def not_fired(self) -> list[dict[str, Any]]:
        """The faults whose trigger never came before the run ended (in scenario order)."""
        # Faults fire in the order listed, each after the previous one: the first
        # len(events) fired, whatever their outcome, and the rest did not.
        return [
            {
                "kind": fault.kind,
                "client": fault.client,
                "trigger": f"when: {fault.when}" if fault.when else f"at: {fault.at:g}s",
            }
            for fault in self.faults[len(self.events) :]
        ]

    def report(self, history: RunHistory, t0_ns: int) -> list[dict[str, Any]]:
        """The faults that fired, in ms from the run's start, with what they cost.

        For a kill, `unavailable_ms` is how long no other client got into the critical
        section after it (the lock held by the dead or cut-off client). For a server fault,
        `grants_after` counts the critical sections entered after it began, and
        `unavailable_ms` is how long until the first of them (absent when none came).
        """
        clients, cs_start, _ = history.critical_sections()
        out = []
        for event in self.events:
            entry = {
                "kind": event["kind"],
                "client": event["client"],
                "target": event["target"],
                "start_ms": round((event["start_ns"] - t0_ns) / 1e6, 3),
                "end_ms": round((event["end_ns"] - t0_ns) / 1e6, 3),
                "note": event["note"],
            }
            measures = _kind(event["kind"]).measures
            if measures == "takeover" and len(cs_start):
                others = cs_start[(clients != event["client"]) & (cs_start >= event["start_ns"])]
                if len(others):
                    entry["unavailable_ms"] = round(
                        (int(np.min(others)) - event["start_ns"]) / 1e6, 3
                    )
            if measures == "grants" and self._locked:
                after = cs_start[cs_start >= event["start_ns"]]
                entry["grants_after"] = len(after)
                if len(after):
                    entry["unavailable_ms"] = round(
                        (int(np.min(after)) - event["start_ns"]) / 1e6, 3
                    )
            out.append(entry)
        return out
