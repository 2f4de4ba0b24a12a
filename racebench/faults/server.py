"""Server faults: kill, pause or restart the processes of a store or lock service.

Each kind is a racebench.faults.kind.FaultKind: `validate` refuses, before anything runs, a
fault the scenario cannot do; `prepare` finds the server processes when the trial starts;
`fire` injects the fault and returns a note of what it did; `undo` leaves every server
running again at the end of the run, so the next run (or the teardown of this one) finds
them up. Any store or lock service whose processes are listed can suffer them.

A fault hits the first `instances` servers listed under its target: `store.servers` or
`guard.lock.servers` (each a URL and a pid file on this host; see racebench.faults.server_process).
"""

from __future__ import annotations

import signal
import threading
import time
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from racebench.faults.client import lease_outlasts
from racebench.faults.kind import Fail, FaultContext, FaultKind, Wait
from racebench.faults.server_process import ServerProcess, is_local, server_address
from racebench.util.plugin_config import FaultConfig, ServerConfig, ServerFaultConfig

if TYPE_CHECKING:
    from racebench.config.scenario import Scenario
    from racebench.locks.base import LockService
    from racebench.util.plugin_info import PluginInfo


def target_servers(scenario: Scenario, target: str) -> tuple[str, list[ServerConfig]]:
    """(field, servers) of a fault's target: the store's or the lock service's."""
    if target == "store":
        return "store.servers", scenario.store.servers
    lock = scenario.guard.lock
    return "guard.lock.servers", lock.servers if lock is not None else []


def validate_servers(scenario: Scenario, fail: Fail) -> None:
    """Refuse a listed server that is not on this host: racebench signals it by pid."""
    for target in ("store", "lock"):
        field, servers = target_servers(scenario, target)
        for i, server in enumerate(servers):
            try:
                host, _ = server_address(server.url)
            except ValueError as exc:
                raise fail(f"{field}[{i}].url", str(exc)) from None
            if not is_local(host):
                raise fail(
                    f"{field}[{i}].url",
                    f"{host} is not this host: server faults signal local processes only",
                )


class ServerFault(FaultKind):
    """One fault on a set of server processes."""

    config = ServerFaultConfig
    # Whether the servers must be startable again (a kill is undone by starting them).
    restarts: ClassVar[bool] = True
    measures: ClassVar[Literal["takeover", "grants"] | None] = "grants"

    def __init__(self, fault: FaultConfig, servers: list[ServerProcess]) -> None:
        super().__init__(fault)
        assert isinstance(fault, ServerFaultConfig)
        self.servers = servers
        # fire runs in the nemesis thread, undo in the thread that stops the run.
        self._lock = threading.Lock()

    @classmethod
    def validate(cls, fault: FaultConfig, field: str, scenario: Scenario, fail: Fail) -> None:
        """Refuse what the scenario cannot do: no servers listed, too few, no duration."""
        assert isinstance(fault, ServerFaultConfig)
        if fault.target == "lock" and scenario.guard.strategy != "lock":
            raise fail(
                f"{field}.target", f"{cls.kind} on the lock's servers needs guard.strategy: lock"
            )
        servers_field, servers = target_servers(scenario, fault.target)
        if not servers:
            raise fail(
                f"{field}.target",
                f"{fault.kind} needs the {fault.target}'s processes: list them in "
                f"{servers_field} (url and pid_file each)",
            )
        if fault.instances > len(servers):
            raise fail(
                f"{field}.instances",
                f"{fault.instances} is more than the {len(servers)} servers in {servers_field}",
            )
        super().validate(fault, field, scenario, fail)

    @classmethod
    def can_suffer(cls, plugin: type[PluginInfo], role: Literal["store", "lock"]) -> bool:
        # Any plug-in with server processes: the scenario lists them (validate checks).
        return plugin.networked

    @classmethod
    def prepare(cls, fault: FaultConfig, scenario: Scenario, shared: dict[str, Any]) -> FaultKind:
        """Find the servers the fault hits (at the start of a trial: pids change on restart).

        `shared` holds the servers found for the trial's earlier faults: two faults on one
        server share its ServerProcess, so the second one signals the pid the first started.
        """
        assert isinstance(fault, ServerFaultConfig)
        field, configs = target_servers(scenario, fault.target)
        servers = []
        for i, config in enumerate(configs[: fault.instances]):
            name = f"{field}[{i}]"
            if name not in shared:
                shared[name] = ServerProcess.attach(config, name)
            servers.append(shared[name])
        if cls.restarts:
            for server in servers:
                server.require_restartable()
        return cls(fault, servers)

    def fire(self, client: int, context: FaultContext) -> str:
        """Inject the fault (waiting through its duration); say what was done."""
        with self._lock:
            return self._fire(context.wait)

    def undo(self, context: FaultContext | None = None) -> None:
        """Leave every server of the fault running (and not stopped)."""
        with self._lock:
            self._undo()

    @abstractmethod
    def _fire(self, wait: Wait) -> str: ...

    @abstractmethod
    def _undo(self) -> None: ...

    def _pids(self) -> str:
        return ", ".join(str(s.pid) for s in self.servers)

    def _start_dead(self) -> str:
        """Start every server that is not running, all before waiting for any (a ZooKeeper
        node waits for a quorum); say how long until they all served."""
        dead = [s for s in self.servers if not s.running()]
        if not dead:
            return ""
        from racebench.stores.zookeeper import wait_serving

        started = time.monotonic()
        for server in dead:
            server.spawn()
        for server in dead:
            server.wait_listening()
            if "://" not in server.url:  # a ZooKeeper host:port
                wait_serving(server.url)
        took = time.monotonic() - started
        return f"started again as pid {', '.join(str(s.pid) for s in dead)} in {took:.2f} s"


class KillServer(ServerFault):
    """SIGKILL the servers: down for `duration_ms`, else until the run ends.

    Either way they are started again afterwards, with the command they ran (or `start`).
    A server without persistence comes back empty: the lock state it held is really lost.
    """

    kind = "kill_server"
    breaks = "kills the servers (for duration_ms, else the run): what they did not persist is lost"

    @classmethod
    def keeps_exclusion(
        cls, fault: FaultConfig, service: LockService, race_window_ms: float
    ) -> bool:
        # A dead server grants nothing, so a kill that lasts the run is safe. One that comes
        # back may have forgotten its grants (nothing says it persists them): safe only for
        # a lease that ran out while the server was down.
        duration = fault.lasts_ms()
        return not duration or (service.lease and duration >= service.config.ttl_ms)

    def _fire(self, wait: Wait) -> str:
        pids = self._pids()
        for server in self.servers:
            server.kill()
        note = f"SIGKILL pid {pids}"
        if not self.fault.lasts_ms():
            return note + "; down until the run ended"
        wait(self.fault.lasts_ms() / 1000)
        return f"{note}; down {self.fault.lasts_ms():g} ms, {self._start_dead()}"

    def _undo(self) -> None:
        self._start_dead()


class RestartServer(ServerFault):
    """SIGKILL the servers, then start them again at once (a crash and a supervisor's restart).

    Clients see connections refused until each listens again; what the server did not
    persist (a Redis without AOF or RDB: every lock key) is gone.
    """

    kind = "restart_server"
    breaks = "kills the servers and starts them again at once: unpersisted grants are lost"

    @classmethod
    def keeps_exclusion(
        cls, fault: FaultConfig, service: LockService, race_window_ms: float
    ) -> bool:
        return False  # the restarted server may have forgotten the holder's grant

    def _fire(self, wait: Wait) -> str:
        pids = self._pids()
        for server in self.servers:
            server.kill()
        return f"SIGKILL pid {pids}, {self._start_dead()}"

    def _undo(self) -> None:
        self._start_dead()


class PauseServer(ServerFault):
    """SIGSTOP the servers for `duration_ms`, then SIGCONT: a process frozen, sockets open.

    Unlike `server_pause` (which asks the server to pause: CLIENT PAUSE, or an emulation),
    nothing runs in the server meanwhile, not even its timers: a ZooKeeper leader stops
    sending pings and its followers elect another.
    """

    kind = "pause_server"
    breaks = "freezes the server processes (SIGSTOP) for duration_ms: a lease may lapse"
    restarts = False
    needs_duration = True

    @classmethod
    def keeps_exclusion(
        cls, fault: FaultConfig, service: LockService, race_window_ms: float
    ) -> bool:
        return lease_outlasts(fault, service, race_window_ms)

    def _fire(self, wait: Wait) -> str:
        for server in self.servers:
            server.send(signal.SIGSTOP)
        wait(self.fault.lasts_ms() / 1000)
        self._undo()
        return f"SIGSTOP pid {self._pids()} for {self.fault.lasts_ms():g} ms"

    def _undo(self) -> None:
        for server in self.servers:
            server.send(signal.SIGCONT)
