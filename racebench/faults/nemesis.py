"""Faults, Jepsen-style: a nemesis thread in the parent injects them while the clients run.

Every fault is recorded on the same monotonic clock as the operations and critical sections,
so the result can say what the clients did while it lasted. Faults fire one after another in
the order listed, each when its trigger comes: `at` a time into the run, or `when` the chosen
client (or, with `client: any`, whichever client comes first) is `holding` its lock (inside
its critical section) or `acquiring` it.

Server faults (kill_server, pause_server, restart_server) are objects of their own, in
racebench.faults.server: the nemesis prepares them with the trial, fires them and undoes them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from racebench.errors import BackendUnavailable
from racebench.faults.server import SERVER_FAULTS, ServerFault, validate_servers
from racebench.faults.server_process import ServerProcess
from racebench.history import RunHistory

if TYPE_CHECKING:
    from racebench.config.scenario import FaultConfig, RunSpec
    from racebench.locks.base import LockService
    from racebench.protocol import Probe
    from racebench.stores.base import Store

CLIENT_FAULTS = {"pause_client", "kill_client"}
LOCK_SERVER_FAULTS = {"kill_session", "lose_lock_state", "expire_early", "server_pause"}
PROXY_FAULTS = {"latency", "partition", "reset"}
NEEDS_DURATION = {"pause_client", "latency", "partition", "server_pause"}
_POLL_S = 0.0005


def faults_supported_by(service: str) -> set[str]:
    """Every fault kind a run guarded by this lock service accepts: the client faults work on
    any lock, the lock-server faults it declares, and proxy faults when it is networked."""
    from racebench.plugins.registry import lock_class

    cls = lock_class(service)
    return CLIENT_FAULTS | set(cls.fault_kinds) | (PROXY_FAULTS if cls.networked else set())


def validate_faults(spec: RunSpec, fail: Callable[[str, str], Exception]) -> None:
    """Refuse, before anything runs, a fault this store, lock service or machine cannot do."""
    from racebench.plugins.registry import lock_class, store_class

    s = spec.scenario
    lock = s.guard.lock if s.guard.strategy == "lock" else None
    service = lock.service if lock else None
    validate_servers(s, fail)
    for i, fault in enumerate(s.faults):
        field = f"faults[{i}]"
        if fault.client == "any":
            if fault.when is None:
                raise fail(
                    f"{field}.client", "client: any picks the client by its state: it needs `when`"
                )
            if fault.kind in PROXY_FAULTS:
                raise fail(
                    f"{field}.client",
                    f"{fault.kind} needs a numbered client: its proxy is set up before the "
                    "clients start",
                )
        elif fault.client >= s.clients:
            raise fail(
                f"{field}.client", f"client {fault.client} does not exist ({s.clients} clients)"
            )
        if fault.when is not None and service is None:
            raise fail(f"{field}.when", "`when` watches a lock: it needs guard.strategy: lock")
        if fault.kind in SERVER_FAULTS:
            if fault.target == "lock" and service is None:
                raise fail(
                    f"{field}.target",
                    f"{fault.kind} on the lock's servers needs guard.strategy: lock",
                )
            SERVER_FAULTS[fault.kind].validate(fault, field, s, fail)
        if fault.kind in NEEDS_DURATION and fault.duration_ms is None:
            raise fail(f"{field}.duration_ms", f"{fault.kind} needs duration_ms")
        if fault.kind == "clock_skew":
            raise fail(
                f"{field}.kind",
                "clock_skew is refused: clients are forked from one process, so libfaketime "
                "cannot be preloaded into one of them, and racebench's lock services measure "
                "lease validity on the monotonic clock, which a wall-clock skew cannot move",
            )
        if fault.kind in LOCK_SERVER_FAULTS:
            if service is None:
                raise fail(
                    f"{field}.kind",
                    f"{fault.kind} hits a lock service: it needs guard.strategy: lock",
                )
            if fault.target != "lock":
                raise fail(f"{field}.target", f"{fault.kind} only applies to target: lock")
            if fault.kind not in lock_class(service).fault_kinds:
                known = ", ".join(sorted(faults_supported_by(service)))
                raise fail(
                    f"{field}.kind",
                    f"lock service {service} cannot suffer {fault.kind} (faults it supports: "
                    f"{known})",
                )
        if fault.kind in PROXY_FAULTS:
            if fault.target == "store":
                if not store_class(s.store.backend).networked:
                    raise fail(
                        f"{field}.target", f"store {s.store.backend} has no connection to proxy"
                    )
                if not s.store.proxy:
                    raise fail(
                        f"{field}.kind", f"{fault.kind} on the store needs store.proxy: true"
                    )
            else:
                if lock is None or not lock_class(lock.service).networked:
                    raise fail(f"{field}.target", "target: lock needs a networked lock service")
                if not lock.proxy:
                    raise fail(
                        f"{field}.kind", f"{fault.kind} on the lock needs guard.lock.proxy: true"
                    )


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
            if f.kind in PROXY_FAULTS and f.client != "any"
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
    """Fires a run's faults from a thread of the parent process and records when they were."""

    def __init__(
        self, spec: RunSpec, lock_service: LockService | None, routes: ProxyRoutes
    ) -> None:
        self.faults = spec.scenario.faults
        self.lock_service = lock_service
        self.routes = routes
        self.events: list[dict[str, Any]] = []
        self._ended_ns = 0  # set by a fault whose end is a moment inside _fire (SIGCONT)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pids: list[int] = []
        self._paused: set[int] = set()
        self._locked = spec.scenario.guard.strategy == "lock"
        # Found now, before the clients start: a missing server is a backend error (exit 3).
        attached: dict[str, ServerProcess] = {}
        self._server_faults: dict[int, ServerFault] = {
            i: SERVER_FAULTS[f.kind].prepare(f, spec.scenario, attached)
            for i, f in enumerate(self.faults)
            if f.kind in SERVER_FAULTS
        }

    def start(self, pids: list[int], probe: Probe, t0_ns: int) -> None:
        self._pids, self._probe, self._t0 = pids, probe, t0_ns
        self._thread = threading.Thread(target=self._run, name="racebench-nemesis", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the nemesis and undo what is still in effect: no client stays stopped, no
        server stays stopped or dead."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for pid in list(self._paused):
            self._signal(pid, signal.SIGCONT)
        for proxy in self.routes.proxies.values():
            proxy.heal()
            proxy.clear_latency()
        # Every server is started again even if one fails to (its error is raised after).
        failures = []
        for server_fault in self._server_faults.values():
            try:
                server_fault.undo()
            except BackendUnavailable as exc:
                failures.append(exc)
        if failures:
            raise failures[0]

    def _signal(self, pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if sig == signal.SIGSTOP:
            self._paused.add(pid)
        elif sig == signal.SIGCONT:
            self._paused.discard(pid)

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

    def _hold(self, fault: FaultConfig) -> None:
        if fault.duration_ms:
            self._stopping.wait(fault.duration_ms / 1000)

    def _run(self) -> None:
        for index, fault in enumerate(self.faults):
            client = self._wait_trigger(fault)
            if client is None:
                return
            start = time.monotonic_ns()
            self._ended_ns = 0
            try:
                server_fault = self._server_faults.get(index)
                if server_fault is not None:
                    note = server_fault.fire(self._stopping.wait)
                else:
                    note = self._fire(fault, client)
            except Exception as exc:  # a fault that failed is reported, never fatal to the run
                note = f"failed: {type(exc).__name__}: {exc}"
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

    def _fire(self, fault: FaultConfig, client: int) -> str:
        pid = self._pids[client]
        kind = fault.kind
        if kind == "pause_client":
            self._signal(pid, signal.SIGSTOP)
            self._hold(fault)
            # The pause ends when SIGCONT is sent: a resumed client can finish its section
            # before this thread (on a busy host) gets to record the end.
            self._ended_ns = time.monotonic_ns()
            self._signal(pid, signal.SIGCONT)
            return f"SIGSTOP for {fault.duration_ms:g} ms"
        if kind == "kill_client":
            holding = bool(self._probe.holding[client])
            self._signal(pid, signal.SIGKILL)
            return "SIGKILL" + (" inside its critical section" if holding else "")
        service = self.lock_service
        if kind == "kill_session":
            assert service is not None
            return service.kill_session(self._probe.session[client])
        if kind == "lose_lock_state":
            assert service is not None
            return service.lose_state(fault.instances)
        if kind == "expire_early":
            assert service is not None
            return service.expire_early()
        if kind == "server_pause":
            assert service is not None
            note = service.pause_server(fault.duration_ms or 0)
            self._hold(fault)
            return note
        proxy = self.routes.proxy_for(fault.target, client)
        if kind == "latency":
            proxy.set_latency(fault.delay_ms, fault.jitter_ms)
            self._hold(fault)
            proxy.clear_latency()
            return f"+{fault.delay_ms:g}±{fault.jitter_ms:g} ms for {fault.duration_ms:g} ms"
        if kind == "partition":
            proxy.partition()
            self._hold(fault)
            proxy.heal()
            return f"traffic held for {fault.duration_ms:g} ms"
        assert kind == "reset"
        proxy.reset()
        return "connections reset"

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
            if event["kind"] in ("kill_client", "kill_session") and len(cs_start):
                others = cs_start[(clients != event["client"]) & (cs_start >= event["start_ns"])]
                if len(others):
                    entry["unavailable_ms"] = round(
                        (int(np.min(others)) - event["start_ns"]) / 1e6, 3
                    )
            if event["kind"] in SERVER_FAULTS and self._locked:
                after = cs_start[cs_start >= event["start_ns"]]
                entry["grants_after"] = len(after)
                if len(after):
                    entry["unavailable_ms"] = round(
                        (int(np.min(after)) - event["start_ns"]) / 1e6, 3
                    )
            out.append(entry)
        return out
