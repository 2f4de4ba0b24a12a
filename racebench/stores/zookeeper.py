"""ZooKeeper via kazoo: znodes with versions, compare-and-set and multi-op transactions.

Znodes live under `/racebench/{namespace}`. ZooKeeper has no server-side arithmetic, so its
only native guard is the version every znode carries: `set(path, data, version=v)` succeeds
only if nobody wrote since the read of version v. The withdraw ledger is a parent whose
sequential children are the entries; the `account` znode's version stands for the whole
ledger, and a withdrawal commits as one transaction that bumps it and creates the entry.
Transfer's accounts are one znode each (stores/zookeeper_transfer.py).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from racebench.errors import BackendUnavailable
from racebench.history import Outcome
from racebench.stores.base import (
    ClientOptions,
    Conflict,
    StaleToken,
    StepResult,
    Store,
    StoreClient,
    StrategySpec,
)
from racebench.stores.kv_transfer import KEY_VALUE_WORKLOADS
from racebench.stores.zookeeper_transfer import (
    MAX_ACCOUNTS,
    ZookeeperTransfer,
    account_path,
    read_stats,
    seed_accounts,
)
from racebench.util.redact import redact_text
from racebench.workloads.counters import CounterPlan, FinalState, LedgerPlan, LedgerRow, Plan
from racebench.workloads.rows import RowPlan, TransferPlan

if TYPE_CHECKING:
    from collections.abc import Callable

    from kazoo.client import KazooClient, TransactionRequest

DEFAULT_HOSTS = "127.0.0.1:2181"
ROOT = "/racebench"
# Within the server's default clamp (tickTime 2 s: 4 to 40 s); also how long a client waits
# for a quorum before its request fails as unknown.
SESSION_TIMEOUT_S = 10.0
# A reachable member answers in milliseconds; longer means it is down or without quorum.
CONNECT_TIMEOUT_S = 3.0

# kazoo logs its reconnect attempts; without a handler Python would print them to stderr.
_log = logging.getLogger("racebench.zookeeper")
_log.addHandler(logging.NullHandler())


def open_kazoo(
    hosts: str,
    what: str,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    session_timeout_s: float = SESSION_TIMEOUT_S,
    reconnect_deadline_s: float | None = None,
) -> KazooClient:
    """A started kazoo client, or BackendUnavailable naming `what` and the hosts.

    The server clamps the session timeout to between 2 and 20 times its tickTime. kazoo
    tries to reconnect forever, and a call made meanwhile waits as long; with
    `reconnect_deadline_s` it gives up after that long without a serving member (an
    ensemble without quorum), its client is closed and the waiting calls fail.
    """
    from kazoo.client import KazooClient

    retry = None
    if reconnect_deadline_s is not None:
        retry = {"max_tries": -1, "max_delay": 0.5, "deadline": reconnect_deadline_s}
    client = KazooClient(
        hosts=hosts, timeout=session_timeout_s, connection_retry=retry, logger=_log
    )
    try:
        client.start(timeout=connect_timeout_s)
    except Exception as exc:
        client.close()
        reason = str(exc) or type(exc).__name__
        raise BackendUnavailable(
            redact_text(f"{what}: cannot reach ZooKeeper at {hosts}: {reason}")
        ) from None
    return client


def close_kazoo(client: KazooClient) -> None:
    """End the session (its ephemeral znodes go at once) and free kazoo's threads."""
    client.stop()
    client.close()


def server_version(client: KazooClient) -> str:
    """The server's version, from `srvr` (kazoo's server_version() needs `envi`)."""
    from kazoo.exceptions import KazooException

    try:
        first = client.command(b"srvr").splitlines()[0]
    except (OSError, KazooException, IndexError):
        return "unknown"  # the server does not allow `srvr` (4lw.commands.whitelist)
    return first.removeprefix("Zookeeper version: ").split(",")[0]


def wait_serving(host_port: str, timeout_s: float = 30.0) -> None:
    """Wait until one ensemble member serves requests: it has joined a quorum.

    A member listens (and answers `ruok`) long before; `srvr` tells. When the server does not
    allow `srvr` (4lw.commands.whitelist), there is no way to tell and this returns at once.
    """
    host, _, port = host_port.rpartition(":")
    deadline = time.monotonic() + timeout_s
    reply = b""
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 2) as conn:
            conn.sendall(b"srvr")
            reply = conn.recv(256)
        # A member without quorum answers "This ZooKeeper instance is not currently serving
        # requests"; a refused four-letter word names the whitelist.
        if reply.startswith(b"Zookeeper version") or b"whitelist" in reply:
            return
        time.sleep(0.1)
    raise BackendUnavailable(
        f"ZooKeeper at {host_port} is not serving requests {timeout_s:g} s after its start "
        f"(no quorum?): {reply[:80].decode(errors='replace')!r}"
    )


def server_facts(hosts: str, who: str) -> dict[str, str]:
    """Connect once (BackendUnavailable if not possible) and return the server's version."""
    client = open_kazoo(hosts, who)
    try:
        return {"server": "zookeeper", "version": server_version(client)}
    finally:
        close_kazoo(client)


def remove_namespace(client: KazooClient, path: str) -> None:
    """Delete `path` recursively, then its parents up to /racebench while they are empty."""
    from kazoo.exceptions import NoNodeError, NotEmptyError

    with contextlib.suppress(NoNodeError):
        client.delete(path, recursive=True)
    # Parents only while empty: another run's namespace may live beside this one, and a
    # concurrent run that just created its own makes the delete fail with NotEmpty, harmlessly.
    parent = path.rsplit("/", 1)[0]
    while parent.startswith(ROOT):
        try:
            client.delete(parent)
        except (NoNodeError, NotEmptyError):
            return
        parent = parent.rsplit("/", 1)[0]


def _entry(amount: int, client: int, seq: int) -> bytes:
    # Amount first: a balance read parses only up to the first colon.
    return f"{amount}:{client}:{seq}".encode()


def _parse_entry(raw: bytes) -> LedgerRow:
    amount, client, seq = raw.split(b":")
    return LedgerRow(int(amount), int(client), int(seq))


class ZookeeperPaths:
    """The znodes of one namespace; `fence` holds the newest fencing token of the resource."""

    def __init__(self, namespace: str) -> None:
        self.root = f"{ROOT}/{namespace}"
        self.counter = f"{self.root}/counter"
        self.fence = f"{self.root}/fence"
        self.slots = f"{self.root}/slots"
        self.account = f"{self.root}/account"
        self.ledger = f"{self.root}/ledger"
        self.entry = f"{self.ledger}/entry-"
        self.accounts = f"{self.root}/accounts"


class ZookeeperClient(ZookeeperTransfer):
    """One client's kazoo session.

    A connection lost mid-request makes the operation's outcome unknown (the request may have
    been applied); kazoo reconnects in the background, and once the session has expired every
    request fails with SessionExpiredError until a new session is established. kazoo would
    retry a connection forever, and a request made meanwhile (an ensemble without quorum)
    would wait as long: it gives up after the session timeout (the waiting request fails, its
    outcome unknown), and the next request connects again, failing after CONNECT_TIMEOUT_S
    while no member serves.
    """

    def __init__(self, hosts: str, namespace: str, options: ClientOptions) -> None:
        super().__init__(options)
        self._zk = self._open(hosts)
        self.paths = ZookeeperPaths(namespace)
        self.slot = f"{self.paths.slots}/{options.client_id}"
        self.accounts = self.paths.accounts

    @staticmethod
    def _open(hosts: str) -> KazooClient:
        # Module constants read at each call: a test shortens them.
        return open_kazoo(
            hosts,
            "zookeeper store",
            connect_timeout_s=CONNECT_TIMEOUT_S,
            session_timeout_s=SESSION_TIMEOUT_S,
            reconnect_deadline_s=SESSION_TIMEOUT_S,
        )

    @property
    def zk(self) -> KazooClient:
        """The kazoo client, connected again if it gave up reconnecting."""
        from kazoo.protocol.states import KeeperState

        if self._zk.client_state == KeeperState.CLOSED:
            self._zk.stop()
            self._zk.start(timeout=CONNECT_TIMEOUT_S)  # KazooTimeoutError: an error
        return self._zk

    def _register(self, token: int) -> None:
        """Raise the fence to `token` (compare-and-set on its version); StaleToken if a newer
        token is already there."""
        from kazoo.exceptions import BadVersionError

        while True:
            data, stat = self.zk.get(self.paths.fence)
            newest = int(data)
            if token < newest:
                raise StaleToken
            if token == newest:
                return
            try:
                self.zk.set(self.paths.fence, str(token).encode(), version=stat.version)
                return
            except BadVersionError:
                continue  # another holder registered in between: compare with its token

    def _fenced_commit(self, token: int, add_write: Callable[[TransactionRequest], None]) -> None:
        """Commit a write together with a check that the fence still holds `token`."""
        from kazoo.exceptions import BadVersionError, RolledBackError

        data, stat = self.zk.get(self.paths.fence)
        if int(data) != token:
            raise StaleToken
        # The check on the fence's version makes the write conditional on nobody having
        # registered since the get above: ZooKeeper has no compare-on-value.
        tx = self.zk.transaction()
        tx.check(self.paths.fence, stat.version)
        add_write(tx)
        results = tx.commit()
        # Registration only ever raises the fence, so a moved fence means a newer token.
        if isinstance(results[0], BadVersionError):
            raise StaleToken
        # The other ops of a failed multi report RolledBackError: the cause is elsewhere.
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, RolledBackError):
                raise result

    def read_counter(self, token: int | None = None) -> int:
        if token is not None:
            self._register(token)
        return int(self.zk.get(self.paths.counter)[0])

    def write_counter(self, value: int, token: int | None = None) -> None:
        data = str(value).encode()
        if token is None:
            self.zk.set(self.paths.counter, data)
        else:
            self._fenced_commit(token, lambda tx: tx.set_data(self.paths.counter, data))

    def _balance(self) -> int:
        children = self.zk.get_children(self.paths.ledger)
        # Send every get before waiting on any: one round trip's latency, not one per entry.
        pending = [self.zk.get_async(f"{self.paths.ledger}/{child}") for child in children]
        return sum(int(p.get()[0].split(b":", 1)[0]) for p in pending)

    def read_balance(self, token: int | None = None) -> int:
        if token is not None:
            self._register(token)
        return self._balance()

    def append_entry(self, amount: int, seq: int, token: int | None = None) -> None:
        data = _entry(amount, self.options.client_id, seq)
        if token is None:
            self.zk.create(self.paths.entry, data, sequence=True)
        else:
            self._fenced_commit(token, lambda tx: tx.create(self.paths.entry, data, sequence=True))

    def read_slot(self) -> int:
        return int(self.zk.get(self.slot)[0])

    def write_slot(self, value: int) -> None:
        self.zk.set(self.slot, str(value).encode())

    def _counter_cas_step(self, strategy: str, plan: CounterPlan) -> StepResult:
        return self.retrying(lambda: self._counter_cas(plan))

    def _counter_cas(self, plan: CounterPlan) -> Outcome:
        from kazoo.exceptions import BadVersionError

        data, stat = self.zk.get(self.paths.counter)
        value = self.read_value = int(data)
        self.pause()
        if plan.floor is not None and value + plan.delta < plan.floor:
            return Outcome.REJECTED
        # Accepted only if the znode's version is still the one read: no write came between.
        try:
            self.zk.set(self.paths.counter, str(value + plan.delta).encode(), stat.version)
        except BadVersionError:
            raise Conflict("bad_version") from None
        self.written_value = value + plan.delta
        return Outcome.OK

    def _ledger_cas_step(self, strategy: str, plan: LedgerPlan, seq: int) -> StepResult:
        return self.retrying(lambda: self._ledger_cas(plan, seq))

    # ZookeeperStore.strategies, each run by (transfer: ZookeeperTransfer.row_steps):
    counter_steps: ClassVar[Mapping[str, str]] = {"optimistic": "_counter_cas_step"}
    ledger_steps: ClassVar[Mapping[str, str]] = {"optimistic": "_ledger_cas_step"}

    def _ledger_cas(self, plan: LedgerPlan, seq: int) -> Outcome:
        from kazoo.exceptions import BadVersionError

        # The version is read before the entries: a session's reads are in order, so the
        # entries seen include every withdrawal committed up to that version.
        version = self.zk.exists(self.paths.account).version
        balance = self.read_value = self._balance()
        self.pause()
        if balance < plan.amount:
            return Outcome.REJECTED
        # One multi: the version bump and the entry commit together or not at all, so a
        # concurrent withdrawal that read the same version fails its own bump.
        tx = self.zk.transaction()
        tx.set_data(self.paths.account, b"", version)
        entry = _entry(-plan.amount, self.options.client_id, seq)
        tx.create(self.paths.entry, entry, sequence=True)
        results = tx.commit()
        if isinstance(results[0], BadVersionError):
            raise Conflict("bad_version")
        for result in results:
            if isinstance(result, Exception):
                raise result
        self.written_value = -plan.amount
        return Outcome.OK

    def classify(self, exc: BaseException) -> Outcome:
        from kazoo.exceptions import ConnectionLoss, OperationTimeoutError, SessionExpiredError

        # The request may have reached the server before the connection or session went.
        if isinstance(exc, ConnectionLoss | SessionExpiredError | OperationTimeoutError):
            return Outcome.UNKNOWN
        return super().classify(exc)

    def close(self) -> None:
        close_kazoo(self._zk)


class ZookeeperStore(Store):
    """ZooKeeper: versioned znodes; `optimistic` is its native guard, there is no `atomic`."""

    backend = "zookeeper"
    description = "ZooKeeper via kazoo; znodes under /racebench/{run}"
    integer_type = "racebench's 64-bit fencing and history records"
    default_url = DEFAULT_HOSTS
    url_env = "RACEBENCH_ZOOKEEPER_HOSTS"
    extra = "zookeeper"
    drivers = ("kazoo",)
    # A hosts string has no scheme: the proxy looks its default port up under this name.
    ports = {"zookeeper": 2181}
    test_server = "zookeeper_hosts"
    workloads = KEY_VALUE_WORKLOADS
    max_accounts = (MAX_ACCOUNTS, "a reader checks every account in one multi, one request")
    strategies = {
        "optimistic": StrategySpec(
            "read the znode and its version, set(..., version=v); for the ledger, a "
            "transaction that sets the account znode at the version read and creates the "
            "entry; for transfer, a transaction that sets both accounts at the versions read, "
            "and readers check every account's version in one transaction; retried on "
            "BadVersion",
            prevents="lost update, oversell, overdraft, lost transfer, read skew",
            safe_for=KEY_VALUE_WORKLOADS,
            supports=KEY_VALUE_WORKLOADS,
        ),
    }

    def __init__(self, url: str | None, namespace: str) -> None:
        super().__init__(url, namespace)
        self.paths = ZookeeperPaths(namespace)

    @property
    def hosts(self) -> str:
        # Read at each use: a proxy fault rewrites `url` in the client's process.
        return self.url or DEFAULT_HOSTS

    def _open(self) -> KazooClient:
        return open_kazoo(self.hosts, "zookeeper store")

    def check_reachable(self) -> dict[str, str]:
        return server_facts(self.hosts, "zookeeper store")

    def connection_limit(self) -> tuple[str, int] | None:
        """maxClientCnxns counts connections per client host: every client runs on this one."""
        from kazoo.exceptions import KazooException

        client = open_kazoo(self.hosts, "zookeeper store")
        # Read from the server's `conf` four-letter word; it may be disabled (the default
        # whitelist allows only `srvr`).
        try:
            conf = str(client.command(b"conf"))
        except (OSError, KazooException):
            return None  # `conf` is not in 4lw.commands.whitelist: no check
        finally:
            close_kazoo(client)
        for line in conf.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "maxClientCnxns" and value.strip().isdigit():
                limit = int(value)
                return ("maxClientCnxns (per client host)", limit) if limit else None
        return None

    def setup(self, plan: Plan | RowPlan, clients: int) -> None:
        assert isinstance(plan, CounterPlan | LedgerPlan | TransferPlan)  # workloads: no booking
        p = self.paths
        client = self._open()
        try:
            client.ensure_path(ROOT)
            # One multi: a failed setup leaves no half-made namespace (the fence without the
            # counter, say) for teardown or `clean` to puzzle over.
            tx = client.transaction()
            tx.create(p.root)
            tx.create(p.fence, b"0")
            if isinstance(plan, CounterPlan):
                tx.create(p.counter, str(plan.initial).encode())
                tx.create(p.slots)
                for i in range(clients):
                    tx.create(f"{p.slots}/{i}", b"0")
            elif isinstance(plan, LedgerPlan):
                tx.create(p.account)
                tx.create(p.ledger)
                tx.create(p.entry, _entry(plan.deposit, -1, 0), sequence=True)
            for result in tx.commit():
                if isinstance(result, Exception):
                    raise result
            if isinstance(plan, TransferPlan):
                seed_accounts(client, p.accounts, plan)
        finally:
            close_kazoo(client)

    def read_final(self, plan: Plan | RowPlan) -> FinalState:
        assert isinstance(plan, CounterPlan | LedgerPlan | TransferPlan)  # workloads: no booking
        p = self.paths
        client = self._open()
        try:
            if isinstance(plan, TransferPlan):
                paths = [account_path(p.accounts, a) for a in range(plan.accounts)]
                return FinalState(balances=[b for b, _ in read_stats(client, paths)])
            if isinstance(plan, CounterPlan):
                value = int(client.get(p.counter)[0])
                slots = client.get_children(p.slots)
                total = sum(int(client.get(f"{p.slots}/{s}")[0]) for s in slots)
                return FinalState(value=value, slots_total=total)
            # Sequence suffixes are zero-padded, so name order is insertion order.
            names = sorted(client.get_children(p.ledger))
            rows = [_parse_entry(client.get(f"{p.ledger}/{n}")[0]) for n in names]
            return FinalState(rows=rows)
        finally:
            close_kazoo(client)

    def teardown(self) -> None:
        client = self._open()
        try:
            remove_namespace(client, self.paths.root)
        finally:
            close_kazoo(client)

    def leftovers(self) -> list[str]:
        from kazoo.exceptions import NoNodeError

        client = self._open()
        try:
            return sorted(f"{ROOT}/{child}" for child in client.get_children(ROOT))
        except NoNodeError:
            return []
        finally:
            close_kazoo(client)

    def connect(self, options: ClientOptions) -> StoreClient:
        return ZookeeperClient(self.hosts, self.namespace, options)
