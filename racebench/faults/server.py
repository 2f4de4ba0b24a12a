"""Server faults: kill, pause or restart the processes of a store or lock service.

Each kind is one class with the nemesis protocol of Jepsen (`setup!`, `invoke!`,
`teardown!`): `validate` refuses, before anything runs, a fault the scenario cannot do;
`prepare` finds the server processes when the trial starts; `fire` injects the fault and
returns a note of what it did; `undo` leaves every server running again at the end of the
run, so the next run (or the teardown of this one) finds them up.

A fault hits the first `instances` servers listed under its target: `store.servers` or
`guard.lock.servers` (each a URL and a pid file on this host; see racebench.faults.server_process).
"""

from __future__ import annotations

import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from racebench.faults.server_process import ServerProcess, is_local, server_address

if TYPE_CHECKING:
    from racebench.config.scenario import FaultConfig, Scenario, ServerConfig

Wait = Callable[[float], object]  # waits that many seconds, or less when the run stops
Fail = Callable[[str, str], Exception]


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


class ServerFault(ABC):
    """One fired fault on a set of server processes."""

    kind: ClassVar[str]
    # Whether the servers must be startable again (a kill is undone by starting them).
    restarts: ClassVar[bool] = True
    needs_duration: ClassVar[bool] = False

    def __init__(self, fault: FaultConfig, servers: list[ServerProcess]) -> None:
        self.fault = fault
        self.servers = servers
        # fire runs in the nemesis thread, undo in the thread that stops the run.
        self._lock = threading.Lock()

    @classmethod
    def validate(cls, fault: FaultConfig, field: str, scenario: Scenario, fail: Fail) -> None:
        """Refuse what the scenario cannot do: no servers listed, too few, no duration."""
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
        if cls.needs_duration and fault.duration_ms is None:
            raise fail(f"{field}.duration_ms", f"{fault.kind} needs duration_ms")

    @classmethod
    def prepare(
        cls, fault: FaultConfig, scenario: Scenario, attached: dict[str, ServerProcess]
    ) -> ServerFault:
        """Find the servers the fault hits (at the start of a trial: pids change on restart).

        `attached` holds the servers found for the trial's earlier faults: two faults on one
        server share its ServerProcess, so the second one signals the pid the first started.
        """
        field, configs = target_servers(scenario, fault.target)
        servers = []
        for i, config in enumerate(configs[: fault.instances]):
            name = f"{field}[{i}]"
            if name not in attached:
                attached[name] = ServerProcess.attach(config, name)
            servers.append(attached[name])
        if cls.restarts:
            for server in servers:
                server.require_restartable()
        return cls(fault, servers)

    def fire(self, wait: Wait) -> str:
        """Inject the fault (waiting through its duration with `wait`); say what was done."""
        with self._lock:
            return self._fire(wait)

    def undo(self) -> None:
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

    def _fire(self, wait: Wait) -> str:
        pids = self._pids()
        for server in self.servers:
            server.kill()
        note = f"SIGKILL pid {pids}"
        if self.fault.duration_ms is None:
            return note + "; down until the run ended"
        wait(self.fault.duration_ms / 1000)
        return f"{note}; down {self.fault.duration_ms:g} ms, {self._start_dead()}"

    def _undo(self) -> None:
        self._start_dead()


class RestartServer(ServerFault):
    """SIGKILL the servers, then start them again at once (a crash and a supervisor's restart).

    Clients see connections refused until each listens again; what the server did not
    persist (a Redis without AOF or RDB: every lock key) is gone.
    """

    kind = "restart_server"

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
    restarts = False
    needs_duration = True

    def _fire(self, wait: Wait) -> str:
        assert self.fault.duration_ms is not None
        for server in self.servers:
            server.send(signal.SIGSTOP)
        wait(self.fault.duration_ms / 1000)
        self._undo()
        return f"SIGSTOP pid {self._pids()} for {self.fault.duration_ms:g} ms"

    def _undo(self) -> None:
        for server in self.servers:
            server.send(signal.SIGCONT)


SERVER_FAULTS: dict[str, type[ServerFault]] = {
    cls.kind: cls for cls in (KillServer, PauseServer, RestartServer)
}
