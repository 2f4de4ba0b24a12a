"""Server processes on this host that racebench was told about: find, signal, start again.

A server entry (`store.servers`, `guard.lock.servers`) names a URL and a pid file. Before a
run, `ServerProcess.attach` reads the pid file and checks that the process it names is alive
and listens on the URL's port: a stale pid file, reused by another process since, must never
get that process killed. It also keeps what it takes to start the server again: the entry's
`start` command, else the process's own command line, working directory, user, group,
environment and log file (as Jepsen's `db` protocol restarts a node with what it knows).

Local host only: signals do not cross machines. psutil reads /proc for us (command line,
sockets, open files) and is imported lazily, like the drivers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from racebench.errors import BackendUnavailable

if TYPE_CHECKING:
    import psutil

    from racebench.util.plugin_config import ServerConfig

_POLL_S = 0.02
_GONE_TIMEOUT_S = 10.0
START_TIMEOUT_S = 60.0


def server_address(url: str) -> tuple[str, int]:
    """(host, port) of a server URL (`redis://h:p/0`) or a ZooKeeper `host:port`."""
    from racebench.faults.proxy import address_of

    return address_of(url)


def is_local(host: str) -> bool:
    """Whether `host` names this machine: a loopback address or one of its interfaces'."""
    import psutil

    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    interfaces = psutil.net_if_addrs().values()
    local = {addr.address.split("%")[0] for addrs in interfaces for addr in addrs}
    for info in infos:
        address = str(info[4][0])
        if ipaddress.ip_address(address).is_loopback or address in local:
            return True
    return False


def _alive(process: psutil.Process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _listens_on(process: psutil.Process, port: int) -> bool:
    import psutil

    try:
        connections = process.net_connections(kind="inet")
    except psutil.Error:
        return False
    # psutil gives an empty laddr for a socket without a port (e.g. an unbound UDP one).
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections
    )


def _listener(port: int) -> psutil.Process | None:
    """The live process listening on `port` (on any address), if we may see it."""
    import psutil

    for conn in psutil.net_connections(kind="inet"):
        listening = conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
        if listening and conn.pid:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(conn.pid)
                if _alive(process):
                    return process
    return None


def _command_line(pid: int) -> list[str] | None:
    """The process's argv, read from /proc; None when the process overwrote it with a title.

    Servers that set their process title (Redis by default) write one string such as
    "redis-server 127.0.0.1:6390" over their arguments, padded with NULs: running that
    again would start nothing. psutil splits such a title at its spaces, so it cannot
    tell; the raw bytes can: the arguments of an exec are NUL-separated.
    """
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    if b"\0" not in raw.rstrip(b"\0") and b" " in raw:
        return None
    return [arg.decode(errors="surrogateescape") for arg in raw.split(b"\0")]


@dataclass
class ServerProcess:
    """One server process found through its pid file, with how to start it again."""

    field: str  # where the scenario names it, for messages: guard.lock.servers[2]
    url: str
    pid_file: Path
    port: int
    process: psutil.Process
    command: list[str]
    cwd: str | None = None
    user: int | None = None
    group: int | None = None
    env: dict[str, str] | None = None
    log_path: str | None = None
    explicit_start: bool = False
    # dataclasses.field by its full name: the `field` attribute above shadows the bare name.
    spawned: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)

    @classmethod
    def attach(cls, config: ServerConfig, field: str) -> ServerProcess:
        """Find the running server of `config`; raise BackendUnavailable naming `field`."""
        import psutil

        _, port = server_address(config.url)
        pid_file = Path(config.pid_file)
        process = _process_from(pid_file, port, field)
        server = cls(field, config.url, pid_file, port, process, config.start or [])
        server.explicit_start = config.start is not None
        try:
            with process.oneshot():
                if config.start is None:
                    server.command = _command_line(process.pid) or []
                    server.cwd = process.cwd()
                    server.env = process.environ()
                server.user, server.group = _identity(process)
                server.log_path = _stdout_file(process)
        except (psutil.Error, OSError) as exc:
            raise BackendUnavailable(
                f"{field}: cannot read process {process.pid} ({type(exc).__name__}); "
                "racebench needs the rights to signal and restart it (run as its user or root)"
            ) from None
        return server

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def require_restartable(self) -> None:
        """Refuse, before the run, a server whose command line cannot start it again."""
        if not self.command:
            raise BackendUnavailable(
                f"{self.field}: process {self.pid} rewrote its command line (a process title)"
                f", so racebench cannot start it again: give {self.field}.start (for Redis, "
                "or start it with --set-proc-title no)"
            )

    def running(self) -> bool:
        """Whether the process found (or last started) is still alive."""
        return _alive(self.process)

    def send(self, sig: signal.Signals) -> None:
        """Signal the server, unless it has gone (then there is nothing left to signal)."""
        import psutil

        if self.running():
            with contextlib.suppress(psutil.NoSuchProcess):
                self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the server and wait until it is gone, so its port is free again."""
        import psutil

        self.send(signal.SIGKILL)
        deadline = time.monotonic() + _GONE_TIMEOUT_S
        while self.running() and time.monotonic() < deadline:
            # A stopped process dies of SIGKILL too; our own children need reaping.
            for child in self.spawned:
                child.poll()
            with contextlib.suppress(psutil.Error):
                self.process.wait(_POLL_S)
        if self.running():
            raise BackendUnavailable(f"{self.field}: process {self.pid} outlived SIGKILL")

    def spawn(self) -> None:
        """Start the server again, detached in its own session, as the user it ran as."""
        log: Any = subprocess.DEVNULL
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                log = open(self.log_path, "ab")  # noqa: SIM115 (closed below, the child keeps it)
        try:
            child = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                user=self.user,
                group=self.group,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            what = f"{self.field}: cannot start {self.command[0]}: {exc}"
            raise BackendUnavailable(what) from None
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        self.spawned.append(child)

    def _last_log_line(self) -> str:
        last = _last_words(self.log_path) if self.log_path else ""
        return f" ({self.log_path}: {last})" if last else ""

    def wait_listening(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until a process listens on the server's port; record it in the pid file."""
        import psutil

        child = self.spawned[-1]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            process = None
            if child.poll() is None:
                # Still running, so it is the server: a cheap look at its own sockets.
                with contextlib.suppress(psutil.Error):
                    own = psutil.Process(child.pid)
                    process = own if _listens_on(own, self.port) else None
            elif child.returncode == 0:
                # It daemonized (its parent exited): find whoever listens, a slower scan.
                process = _listener(self.port)
            else:
                raise BackendUnavailable(
                    f"{self.field}: {self.command[0]} exited with {child.returncode}"
                    + self._last_log_line()
                )
            if process is not None:
                self.process = process
                _write_pid(self.pid_file, process.pid)
                return
            time.sleep(_POLL_S)
        raise BackendUnavailable(f"{self.field}: nothing listens on port {self.port} after start")


def _last_words(path: str) -> str:
    """The last non-empty line of a log file (a server's reason for exiting), or ''."""
    with contextlib.suppress(OSError), open(path, "rb") as log:
        log.seek(0, os.SEEK_END)
        log.seek(max(0, log.tell() - 2000))
        lines = [line for line in log.read().decode(errors="replace").splitlines() if line]
        return lines[-1].strip()[:200] if lines else ""
    return ""


def _process_from(pid_file: Path, port: int, field: str) -> psutil.Process:
    import psutil

    try:
        text = pid_file.read_text().strip()
    except OSError as exc:
        raise BackendUnavailable(
            f"{field}.pid_file: cannot read {pid_file}: {exc.strerror}"
        ) from None
    if not text.isdigit():
        raise BackendUnavailable(f"{field}.pid_file: {pid_file} holds no pid ({text[:20]!r})")
    try:
        process = psutil.Process(int(text))
    except psutil.NoSuchProcess:
        process = None
    if process is None or not _alive(process):
        raise BackendUnavailable(f"{field}.pid_file: process {text} of {pid_file} is not running")
    try:
        os.kill(process.pid, 0)
    except PermissionError:
        raise BackendUnavailable(
            f"{field}: not allowed to signal process {text} (run racebench as its user or root)"
        ) from None
    if not _listens_on(process, port):
        raise BackendUnavailable(
            f"{field}.pid_file: process {text} of {pid_file} does not listen on port {port} "
            "(a stale pid file?); racebench signals only the server it names"
        )
    return process


def _identity(process: psutil.Process) -> tuple[int | None, int | None]:
    """The user and group to start it as: its own when they differ from ours (we are root)."""
    uid, gid = process.uids().real, process.gids().real
    return (None if uid == os.getuid() else uid), (None if gid == os.getgid() else gid)


def _stdout_file(process: psutil.Process) -> str | None:
    """The regular file the server writes its output to, to append to after a restart."""
    return next((f.path for f in process.open_files() if f.fd == 1), None)


def _write_pid(pid_file: Path, pid: int) -> None:
    """Point the pid file at the new process (atomically; unchanged if it already does)."""
    with contextlib.suppress(OSError):
        if pid_file.read_text().strip() == str(pid):
            return
    handle, tmp = tempfile.mkstemp(dir=pid_file.parent, prefix=f".{pid_file.name}.")
    with os.fdopen(handle, "w") as out:
        out.write(f"{pid}\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, pid_file)
