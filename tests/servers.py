"""Real servers for the test suite: reuse one that is running, else start our own.

Each ``ensure_*`` function returns a connection string. An environment variable
(``RACEBENCH_POSTGRES_URL`` and friends) wins over everything; otherwise a server already
answering on the default port is reused and left alone; otherwise we start a private one
on a free port with mirakuru, in a directory of its own, and stop it in :func:`stop_started`
(the pytest plugin calls it at the end of the session; ``atexit`` is the backstop).

A server that cannot be had raises :class:`ServerUnavailable`, whose message says how to
get it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import port_for
from mirakuru import Executor, TCPExecutor

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = "run scripts/install-servers.sh (as root) or: apt-get install {packages}"


class ServerUnavailable(RuntimeError):
    """A server could neither be reused nor started; the message says how to get one."""


@dataclass
class StartedServer:
    """A server process this module started, and the directory holding its files."""

    url: str
    executor: Executor
    workdir: Path
    log: IO[bytes]


_started: list[StartedServer] = []
_STARTER_PID = os.getpid()


def _answers(port: int, request: bytes = b"", expect: bytes = b"") -> bool:
    """Whether something on HOST:port accepts a connection (and answers `request` as told)."""
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            if not request:
                return True
            sock.sendall(request)
            return sock.recv(64).startswith(expect)
    except OSError:
        return False


def _redis_answers(port: int) -> bool:
    return _answers(port, b"PING\r\n", b"+PONG")


def _zookeeper_answers(port: int) -> bool:
    return _answers(port, b"ruok", b"imok")


def _free_port() -> int:
    # Never the server's default port: a second copy of the suite would take a server we
    # started on it for a long-lived one, and lose it when this session ends.
    return port_for.select_random()


def _binary(name: str, *dirs: str) -> str | None:
    """Find an executable in the given directories, else on PATH (sbin is often off it)."""
    return shutil.which(name, path=os.pathsep.join(dirs)) or shutil.which(name)


def _workdir(name: str, owner: str | None = None) -> Path:
    """A fresh directory for one server, chowned to `owner` when given.

    Servers that run as another user get a directory under the system temp dir: the repo
    may sit under a directory that user cannot enter (such as /root).
    """
    if owner is None:
        base = REPO_ROOT / ".servers"
        base.mkdir(exist_ok=True)
    else:
        base = Path(tempfile.gettempdir())
    workdir = Path(tempfile.mkdtemp(prefix=f"racebench-{name}-", dir=base))
    if owner is not None:
        workdir.chmod(0o755)
        shutil.chown(workdir, owner, owner)
    return workdir


def _system_user(name: str, package: str) -> str | None:
    """The user to run a server as: `name` when we are root (the server refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ServerUnavailable(
            f"no '{name}' user to run the server as; " + _hint(package)
        ) from None
    return name


def _as_user(user: str | None, command: list[str]) -> list[str]:
    # setpriv execs in place, so mirakuru's signals reach the server itself; runuser stays
    # as a parent and, once signalled, SIGKILLs its child two seconds later.
    if user is None:
        return command
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *command]


def _run(command: list[str], workdir: Path, what: str, timeout: float = 120) -> None:
    """Run a setup command, logging to the server's directory; raise with the log on failure."""
    log = workdir / f"{what}.log"
    with log.open("ab") as out:
        try:
            status = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout} s"
    if status != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise ServerUnavailable(f"{what} failed ({status}; log: {log}):\n{tail}")


def _hint(packages: str) -> str:
    return INSTALL_HINT.format(packages=packages)


def _start(
    url: str,
    what: str,
    workdir: Path,
    command: list[str],
    port: int,
    ready: Callable[[], bool] = lambda: True,
    **executor_options: Any,
) -> str:
    """Start a server listening on `port`, logging to `workdir`; remember it; return `url`."""
    # A file, not a pipe: a chatty server would block once a pipe nobody reads is full.
    log = (workdir / "server.log").open("ab")
    executor = _CheckedTCPExecutor(
        command,
        port,
        ready,
        cwd=str(workdir),
        stdout=log,
        stderr=subprocess.STDOUT,
        **executor_options,
    )
    try:
        executor.start()
    except Exception as exc:
        executor.kill()
        log.close()
        tail = (workdir / "server.log").read_text(errors="replace")[-2000:]
        shutil.rmtree(workdir, ignore_errors=True)
        raise ServerUnavailable(f"could not start {what}: {exc}\n{tail}") from exc
    _started.append(StartedServer(url, executor, workdir, log))
    return url


class _CheckedTCPExecutor(TCPExecutor):
    """A TCP server that counts as started only once the `ready` check also passes."""

    def __init__(self, command: list[str], port: int, ready: Callable[[], bool], **kw: Any):
        super().__init__(command, host=HOST, port=port, **kw)
        self._ready = ready

    def after_start_check(self) -> bool:
        return super().after_start_check() and self._ready()


@functools.cache
def ensure_postgres() -> str:
    """PostgreSQL URL: $RACEBENCH_POSTGRES_URL, a server on 5432, or our own."""
    if url := os.environ.get("RACEBENCH_POSTGRES_URL"):
        return url
    if _answers(5432):
        return f"postgresql://postgres@{HOST}:5432/postgres"
    return start_postgres(_free_port())


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in Path(path).parent.name.split(".") if part.isdigit())


def start_postgres(port: int, settings: tuple[str, ...] = ()) -> str:
    """Start a private PostgreSQL (trust auth) on `port`, with extra `name=value` server
    `settings`; return its URL."""
    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key)
    initdb = _binary("initdb", *bindirs[-1:])
    if initdb is None:
        raise ServerUnavailable("PostgreSQL is not installed; " + _hint("postgresql"))
    bindir = Path(initdb).resolve().parent  # PATH may hold a symlink to initdb alone
    user = _system_user("postgres", "postgresql")
    workdir = _workdir("postgres", owner=user)
    data = workdir / "data"
    initdb_command = [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
    _run(_as_user(user, initdb_command), workdir, "initdb")
    server = [str(bindir / "postgres"), "-D", str(data), "-p", str(port)]
    server += ["-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={workdir}"]
    for setting in settings:
        server += ["-c", setting]
    pg_isready = [str(bindir / "pg_isready"), "-q", "-h", HOST, "-p", str(port)]
    return _start(
        f"postgresql://postgres@{HOST}:{port}/postgres",
        "PostgreSQL",
        workdir,
        _as_user(user, server),
        port,
        # Postgres listens before it accepts sessions ("the database system is starting up").
        ready=lambda: subprocess.run(pg_isready, check=False).returncode == 0,
        timeout=60,
        stop_signal=signal.SIGINT,  # fast shutdown; SIGTERM waits for clients to leave
        expected_returncode=0,
    )


@functools.cache
def roomy_postgres() -> str:
    """A PostgreSQL of our own that accepts 1,100 sessions (the default is 100): for a run of
    a thousand clients, which must not take every slot of a shared server. Commits skip the
    WAL flush wait (synchronous_commit=off), so a short run is not a test of the disk."""
    settings = ("max_connections=1100", "shared_buffers=32MB", "synchronous_commit=off")
    return start_postgres(_free_port(), settings)


@functools.cache
def ensure_mysql() -> str:
    """MySQL/MariaDB URL: $RACEBENCH_MYSQL_URL, a server on 3306, or our own MariaDB."""
    if url := os.environ.get("RACEBENCH_MYSQL_URL"):
        return url
    if _answers(3306):
        return f"mysql://root@{HOST}:3306/test"
    return start_mysql(_free_port())


def start_mysql(port: int) -> str:
    """Start a private MariaDB on `port` with database ``test`` and a password-less root."""
    mariadbd = _binary("mariadbd", "/usr/sbin")
    install_db = _binary("mariadb-install-db", "/usr/bin")
    client = _binary("mariadb", "/usr/bin")
    if not (mariadbd and install_db and client):
        raise ServerUnavailable("MariaDB is not installed; " + _hint("mariadb-server"))
    user = _system_user("mysql", "mariadb-server")
    workdir = _workdir("mariadb", owner=user)
    data, sock = workdir / "data", workdir / "mysqld.sock"
    as_user = [f"--user={user}"] if user else []
    install_command = [install_db, "--no-defaults", f"--datadir={data}", *as_user]
    install_command += ["--auth-root-authentication-method=normal", "--skip-test-db"]
    _run(install_command, workdir, "mariadb-install-db")
    server = [mariadbd, "--no-defaults", f"--datadir={data}", f"--socket={sock}", *as_user]
    server += [f"--port={port}", f"--bind-address={HOST}", f"--pid-file={workdir}/mysqld.pid"]
    url = f"mysql://root@{HOST}:{port}/test"
    _start(url, "MariaDB", workdir, server, port, timeout=90, expected_returncode=0)
    # root@localhost covers the socket; TCP from 127.0.0.1 needs its own account when the
    # server skips name resolution, so create it either way.
    sql = (
        "CREATE DATABASE IF NOT EXISTS test;"
        f" CREATE USER IF NOT EXISTS 'root'@'{HOST}';"
        f" GRANT ALL PRIVILEGES ON *.* TO 'root'@'{HOST}' WITH GRANT OPTION;"
    )
    _run([client, "--no-defaults", f"--socket={sock}", "-uroot", "-e", sql], workdir, "setup")
    return url


@functools.cache
def ensure_redis() -> str:
    """Redis URL: $RACEBENCH_REDIS_URL, a server on 6379, or our own."""
    if url := os.environ.get("RACEBENCH_REDIS_URL"):
        return url
    if _redis_answers(6379):
        return f"redis://{HOST}:6379/0"
    return start_redis(_free_port())


def start_redis(port: int) -> str:
    """Start a private, non-persistent Redis on `port`; return its URL."""
    redis_server = _binary("redis-server", "/usr/bin")
    if redis_server is None:
        raise ServerUnavailable("Redis is not installed; " + _hint("redis-server"))
    workdir = _workdir("redis")
    command = [redis_server, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly"]
    command += ["no", "--dir", str(workdir)]
    return _start(
        f"redis://{HOST}:{port}/0",
        "Redis",
        workdir,
        command,
        port,
        ready=lambda: _redis_answers(port),
        timeout=20,
        expected_returncode=0,
    )


@functools.cache
def private_redis() -> str:
    """A Redis server of our own, never one an environment variable or a default port names."""
    return start_redis(_free_port())


def ensure_redis_instances(n: int = 3) -> list[str]:
    """`n` independent Redis servers for Redlock: $RACEBENCH_REDLOCK_URLS, else the usual
    Redis plus `n - 1` of our own (which :func:`restart_redis` can restart)."""
    return list(_redis_instances(n))


@functools.cache
def _redis_instances(n: int) -> tuple[str, ...]:
    if urls := os.environ.get("RACEBENCH_REDLOCK_URLS"):
        return tuple(url.strip() for url in urls.split(",") if url.strip())
    return (ensure_redis(), *(start_redis(_free_port()) for _ in range(n - 1)))


def started_redis_urls() -> list[str]:
    """URLs of the Redis servers this process started (the only ones it can restart)."""
    return [server.url for server in _started if server.url.startswith("redis://")]


def restart_redis(url: str) -> None:
    """Stop and start again a Redis server we started; it comes back empty (no persistence)."""
    for server in _started:
        if server.url == url:
            server.executor.stop()
            server.executor.start()
            return
    raise ValueError(f"{url} was not started by tests.servers; cannot restart it")


@functools.cache
def ensure_zookeeper() -> str:
    """ZooKeeper hosts: $RACEBENCH_ZOOKEEPER_HOSTS, else our own.

    Not whatever answers on 2181: unlike the PostgreSQL, MariaDB and Redis on their default
    ports, no long-lived ZooKeeper is promised there, and one started by another test session
    (an older copy of this module took 2181 when it was free) goes away when that session
    ends, in the middle of this one. scripts/start-servers.sh prints the variable to set.
    """
    if hosts := os.environ.get("RACEBENCH_ZOOKEEPER_HOSTS"):
        return hosts
    return start_zookeeper(_free_port())


def start_zookeeper(port: int) -> str:
    """Start a private standalone ZooKeeper on `port` (Debian's jars); return its hosts."""
    java = _binary("java")
    jar = Path("/usr/share/java/zookeeper.jar")  # its manifest lists the other jars
    if java is None or not jar.exists():
        raise ServerUnavailable("ZooKeeper is not installed; " + _hint("zookeeper"))
    workdir = _workdir("zookeeper")
    (workdir / "data").mkdir()
    config = workdir / "zoo.cfg"
    config.write_text(
        # A short tick: sessions may be as short as 1 s, and expire within half a second
        # of their timeout (the server checks expiry once per tick).
        f"tickTime=500\ndataDir={workdir / 'data'}\nclientPort={port}\n"
        f"clientPortAddress={HOST}\nadmin.enableServer=false\n"
        "4lw.commands.whitelist=ruok,srvr,stat\n"
        # Every client connects from 127.0.0.1, and the default allows 60 per host: a fault
        # test's clients, kazoo's retries and a second suite beside this one exceed that.
        "maxClientCnxns=0\n"
    )
    command = [java, "-Xmx256m", "-cp", f"{jar}:/usr/share/java/slf4j-simple.jar"]
    command += ["org.apache.zookeeper.server.ZooKeeperServerMain", str(config)]
    return _start(
        f"{HOST}:{port}",
        "ZooKeeper",
        workdir,
        command,
        port,
        ready=lambda: _zookeeper_answers(port),
        timeout=60,
        expected_returncode=128 + signal.SIGTERM,  # the JVM's exit status on SIGTERM
    )


@dataclass(frozen=True)
class ManagedServer:
    """A server with a pid file, for racebench's server faults (kill, pause, restart).

    racebench may kill it and start it again under another pid (it rewrites the pid file),
    so it is found, and stopped, through its pid file, never through the process we started.
    """

    url: str
    pid_file: Path
    workdir: Path

    def entry(self) -> dict[str, str]:
        """The server as a scenario lists it in store.servers or guard.lock.servers."""
        return {"url": self.url, "pid_file": str(self.pid_file)}


_managed: list[ManagedServer] = []
_managed_children: list[subprocess.Popen[bytes]] = []


def _spawn_managed(url: str, command: list[str], workdir: Path) -> ManagedServer:
    """Start a server detached in its own session, its pid in workdir/server.pid."""
    with (workdir / "server.log").open("ab") as log:
        child = subprocess.Popen(
            command,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _managed_children.append(child)
    pid_file = workdir / "server.pid"
    pid_file.write_text(f"{child.pid}\n")
    server = ManagedServer(url, pid_file, workdir)
    _managed.append(server)
    return server


def _wait_until(
    check: Callable[[], bool], what: str, server: ManagedServer, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = (server.workdir / "server.log").read_text(errors="replace")[-2000:]
            raise ServerUnavailable(f"{what} did not start within {timeout:g} s:\n{tail}")
        time.sleep(0.1)


def start_redis_cluster(count: int = 5, keep_command_line: bool = True) -> list[ManagedServer]:
    """Start `count` independent, non-persistent Redis servers for Redlock, with pid files.

    `--set-proc-title no` keeps their command line as given, so racebench can start one
    again after a kill without a `start` command; without it Redis rewrites it.
    """
    redis_server = _binary("redis-server", "/usr/bin")
    if redis_server is None:
        raise ServerUnavailable("Redis is not installed; " + _hint("redis-server"))
    servers = []
    for _ in range(count):
        port = _free_port()
        workdir = _workdir(f"redis-{port}")
        command = [redis_server, "--port", str(port), "--bind", HOST, "--save", ""]
        command += ["--appendonly", "no", "--dir", str(workdir)]
        if keep_command_line:
            command += ["--set-proc-title", "no"]
        servers.append(_spawn_managed(f"redis://{HOST}:{port}/0", command, workdir))
    for server in servers:
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        _wait_until(lambda port=port: _redis_answers(port), "Redis", server, 20)
    return servers


def zookeeper_member_config(
    member: int, data: Path, client_port: int, peers: list[tuple[int, int]]
) -> str:
    """zoo.cfg of ensemble member `member` (1-based); `peers` are (quorum, election) ports."""
    lines = [
        # A short tick: a lost quorum is noticed, and a new leader elected, within seconds.
        "tickTime=500",
        "initLimit=10",
        "syncLimit=5",
        f"dataDir={data}",
        f"clientPort={client_port}",
        f"clientPortAddress={HOST}",
        "admin.enableServer=false",
        "4lw.commands.whitelist=ruok,srvr,stat",
        "maxClientCnxns=0",  # all clients are on 127.0.0.1: no per-host cap
    ]
    lines += [f"server.{i}={HOST}:{q}:{e}" for i, (q, e) in enumerate(peers, start=1)]
    return "\n".join(lines) + "\n"


def start_zookeeper_ensemble(members: int = 3) -> list[ManagedServer]:
    """Start a ZooKeeper ensemble of `members` nodes on loopback, each with a pid file."""
    from racebench.stores.zookeeper import wait_serving

    java = _binary("java")
    jar = Path("/usr/share/java/zookeeper.jar")
    if java is None or not jar.exists():
        raise ServerUnavailable("ZooKeeper is not installed; " + _hint("zookeeper"))
    client_ports = [_free_port() for _ in range(members)]
    peers = [(_free_port(), _free_port()) for _ in range(members)]
    servers = []
    for member, port in enumerate(client_ports, start=1):
        workdir = _workdir(f"zookeeper-{port}")
        data = workdir / "data"
        data.mkdir()
        (data / "myid").write_text(f"{member}\n")
        config = workdir / "zoo.cfg"
        config.write_text(zookeeper_member_config(member, data, port, peers))
        command = [java, "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
        command += ["-cp", f"{jar}:/usr/share/java/slf4j-simple.jar"]
        command += ["org.apache.zookeeper.server.quorum.QuorumPeerMain", str(config)]
        servers.append(_spawn_managed(f"{HOST}:{port}", command, workdir))
    for server in servers:
        try:
            wait_serving(server.url, timeout_s=90)
        except Exception as exc:
            tail = (server.workdir / "server.log").read_text(errors="replace")[-2000:]
            raise ServerUnavailable(f"ZooKeeper ensemble did not form: {exc}\n{tail}") from None
    return servers


def _stop_managed(server: ManagedServer) -> None:
    """SIGKILL the process the pid file names now (these servers keep no state we need)."""
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(server.pid_file.read_text()), signal.SIGKILL)


def stop_managed_server(server: ManagedServer) -> None:
    """Stop one server of start_redis_cluster / start_zookeeper_ensemble before the end."""
    _managed.remove(server)
    _stop_managed(server)
    shutil.rmtree(server.workdir, ignore_errors=True)


def stop_started() -> None:
    """Stop every server this process started and remove its files; others are untouched."""
    if os.getpid() != _STARTER_PID:
        # A forked child inherits the list (and this atexit hook): the servers are not its
        # to stop, and stopping them would pull them from under the tests still running.
        return
    while _started:
        server = _started.pop()
        with contextlib.suppress(Exception):
            server.executor.stop()
        server.log.close()
        shutil.rmtree(server.workdir, ignore_errors=True)
    while _managed:
        managed = _managed.pop()
        _stop_managed(managed)
        shutil.rmtree(managed.workdir, ignore_errors=True)
    while _managed_children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            _managed_children.pop().wait(timeout=10)
    for cached in (
        ensure_postgres,
        ensure_mysql,
        ensure_redis,
        private_redis,
        _redis_instances,
        ensure_zookeeper,
    ):
        cached.cache_clear()


atexit.register(stop_started)
