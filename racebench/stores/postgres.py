"""PostgreSQL through psycopg 3: every SQL concurrency-control strategy, measured.

What PostgreSQL does (and what the claims below promise): READ COMMITTED gives each statement
a fresh snapshot, so a read-then-write loses updates and allows write skew. REPEATABLE READ is
snapshot isolation: the second writer of a row aborts with 40001 (no lost update, the client
retries) but two transactions that insert different rows after reading the same sum both
commit (write skew). SERIALIZABLE (SSI) also tracks read/write dependencies and aborts one of
them with 40001. Deadlocks are 40P01. All three are retried and counted per code.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from racebench.errors import BackendUnavailable
from racebench.history import Outcome
from racebench.stores.base import (
    ALL_WORKLOADS,
    ROW_WORKLOADS,
    AsyncStoreClient,
    ClientOptions,
    StoreClient,
    StrategySpec,
)
from racebench.stores.sql import (
    CONNECT_TIMEOUT_S,
    COUNTERS,
    LOCK_WAIT_S,
    LOOPBACK_HOSTS,
    SqlClient,
    SqlStore,
    common_strategies,
)
from racebench.util.redact import redact_text

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def is_postgres_url(url: str | None) -> bool:
    return url is not None and url.split("://", 1)[0] in ("postgresql", "postgres")


def advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name (the run's namespace)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), signed=True)


def connect_args(url: str) -> tuple[str, dict[str, Any]]:
    """psycopg.connect arguments: autocommit, a connect timeout, no TLS on loopback.

    libpq's default sslmode=prefer negotiates TLS whenever the server offers it, which costs
    a handshake per connection even on loopback; a URL that names sslmode keeps its choice.
    """
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S}
    if "sslmode" not in params and str(params.get("host", "")) in LOOPBACK_HOSTS:
        kwargs["sslmode"] = "disable"
    return url, kwargs


def _reason(message: str) -> str:
    if "Connection refused" in message:
        return "connection refused (is the server running and listening there?)"
    if "authentication failed" in message or ("role " in message and "does not exist" in message):
        return "authentication failed: " + message.rsplit("FATAL:", 1)[-1].strip()
    if "database " in message and "does not exist" in message:
        return "database missing: " + message.rsplit("FATAL:", 1)[-1].strip()
    if "timeout expired" in message:
        return "connection timed out"
    return message.splitlines()[0]


def open_connection(url: str, lock_wait_s: float = LOCK_WAIT_S) -> Any:
    """An autocommit connection whose lock waits end with 55P03 after `lock_wait_s`."""
    try:
        import psycopg
    except ImportError:
        raise BackendUnavailable(
            "postgres: the psycopg driver is not installed (pip install 'racebench[postgres]')"
        ) from None
    conninfo, kwargs = connect_args(url)
    try:
        conn = psycopg.connect(conninfo, **kwargs)
    except psycopg.OperationalError as exc:
        raise BackendUnavailable(
            f"postgres: cannot connect to {redact_text(url)}: {redact_text(_reason(str(exc)))}"
        ) from None
    # 0 would mean "wait forever"
    conn.execute(f"SET lock_timeout = {max(1, round(lock_wait_s * 1000))}")
    return conn


def conninfo_user(url: str) -> str:
    """The user a URL or key=value DSN connects as (libpq's default: the OS user)."""
    import getpass

    from psycopg.conninfo import conninfo_to_dict

    return str(conninfo_to_dict(url).get("user") or getpass.getuser())


def server_facts(url: str) -> dict[str, str]:
    conn = open_connection(url)
    try:
        version = conn.execute("SELECT version()").fetchone()[0]
    finally:
        conn.close()
    return {"server": "postgresql", "version": version}


class PostgresClient(SqlClient):
    """One client's psycopg connection (autocommit; explicit BEGIN where a strategy says)."""

    conflict_codes = frozenset({"40001", "40P01"})
    lock_wait_codes = frozenset({"55P03"})
    native_lock = "advisory"

    def __init__(self, url: str, namespace: str, options: ClientOptions) -> None:
        self.lock_key = advisory_key(namespace)
        super().__init__(url, namespace, options)

    def _open(self) -> None:
        import psycopg

        self.driver_error = psycopg.Error
        self.conn = open_connection(self.url)
        self.cur = self.conn.cursor()

    def _error_code(self, exc: BaseException) -> str | None:
        return getattr(exc, "sqlstate", None)

    def _broken(self) -> bool:
        return self.conn.closed or self.conn.broken

    def _connection_lost(self, exc: BaseException) -> bool:
        import psycopg

        return isinstance(exc, psycopg.OperationalError) and self._broken()

    def _begin(self, level: str) -> None:
        self._run(f"BEGIN ISOLATION LEVEL {level}")

    def _native_locked(self, body: Callable[[], Outcome]) -> Outcome:
        # READ COMMITTED on purpose: each statement after the lock grant sees what the previous
        # holder committed. Under REPEATABLE READ the snapshot would date from the lock call
        # itself, taken before the grant, and the lock would protect nothing.
        def locked() -> Outcome:
            self._run("SELECT pg_advisory_xact_lock(%s)", (self.lock_key,))
            self._cs[0] = time.monotonic_ns()
            outcome = body()
            self._cs[1] = time.monotonic_ns()  # before COMMIT, which releases the lock
            return outcome

        return self._transaction("READ COMMITTED", locked)

    def close(self) -> None:
        self.conn.close()


class PostgresStore(SqlStore):
    """PostgreSQL tables under the run's namespace, in the URL's database."""

    backend = "postgres"
    description = "PostgreSQL through psycopg 3 (one connection per client)"
    integer_type = "PostgreSQL bigint"
    default_url = DEFAULT_URL
    url_env = "RACEBENCH_POSTGRES_URL"
    extra = "postgres"
    drivers = ("psycopg",)
    ports = {"postgresql": 5432, "postgres": 5432}
    test_server = "postgres_url"
    id_column = "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    strategies = {
        **common_strategies(),
        "advisory": StrategySpec(
            "pg_advisory_xact_lock(key) at the start of a READ COMMITTED transaction, then "
            "the plain read-then-write; the commit releases the lock",
            prevents="lost update, oversell, overdraft (a lock outside the data)",
        ),
        "read_committed": StrategySpec(
            "the read-then-write in one READ COMMITTED transaction",
            prevents="nothing: each statement sees a fresh snapshot",
            allows="lost update, oversell, overdraft (write skew)",
            safe_for=frozenset(),
        ),
        "repeatable_read": StrategySpec(
            "the read-then-write in one REPEATABLE READ transaction, retried on 40001",
            prevents="lost update and oversell: the second writer of the row aborts (40001)",
            allows="overdraft (write skew): withdrawals insert different rows, no row conflicts",
            safe_for=COUNTERS,
        ),
        "serializable": StrategySpec(
            "the read-then-write in one SERIALIZABLE transaction, retried on 40001",
            prevents="lost update, oversell, overdraft (SSI aborts one side of the dependency)",
            safe_for=ALL_WORKLOADS | ROW_WORKLOADS,
            supports=ALL_WORKLOADS | ROW_WORKLOADS,
        ),
    }

    async_strategies = frozenset({"none", "crdt", "atomic"})
    async_driver = (
        "lean prepared Bind/Execute after a psycopg login (racebench.stores.postgres_lean)"
    )
    # The postmaster forks a backend per session, one at a time: with hundreds of connects
    # in flight on a busy machine some waited past the 5 s connect timeout (1,000 clients).
    connect_concurrency = 32

    @classmethod
    def loop_supports(cls, url: str | None) -> bool:
        # The lean client writes on the bare socket: a session that may use TLS (libpq's
        # sslmode=prefer, the default off loopback) stays with psycopg on threads.
        _, kwargs = connect_args(url or DEFAULT_URL)
        if "sslmode" in kwargs:
            return kwargs["sslmode"] == "disable"
        from psycopg.conninfo import conninfo_to_dict

        return conninfo_to_dict(url or DEFAULT_URL).get("sslmode") == "disable"

    async def async_connect(self, options: ClientOptions) -> AsyncStoreClient:
        from racebench.stores.postgres_lean import LeanPostgresClient

        client = LeanPostgresClient(self._url(), self.namespace, options)
        await client.connect()
        return client

    def connection_limit(self) -> tuple[str, int] | None:
        conn = open_connection(self._url())
        try:
            # PostgreSQL 16 also keeps reserved_connections for pg_use_reserved_connections.
            total, reserved, in_use = conn.execute(
                "SELECT current_setting('max_connections')::int,"
                " current_setting('superuser_reserved_connections')::int"
                " + coalesce(current_setting('reserved_connections', true)::int, 0),"
                " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
            ).fetchone()
        finally:
            conn.close()
        # The admin connection that asked is closed now: it does not count against the run.
        return (
            "max_connections less superuser_reserved_connections",
            total - reserved - (in_use - 1),
        )

    def _open_connection(self, url: str) -> Any:
        return open_connection(url)

    def _server_facts(self, url: str) -> dict[str, str]:
        return server_facts(url)

    def _missing_privilege(self, exc: BaseException) -> str | None:
        if getattr(exc, "sqlstate", None) != "42501":  # insufficient_privilege
            return None
        message = str(exc).splitlines()[0]
        user = conninfo_user(self._url())
        if message.startswith("permission denied for schema "):
            schema = message.removeprefix("permission denied for schema ")
            return f"user {user} lacks the CREATE privilege on schema {schema} ({message})"
        return f"user {user} lacks a privilege: {message}"

    def _list_tables_sql(self) -> str:
        return (
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND tablename LIKE %s"
        )

    def connect(self, options: ClientOptions) -> StoreClient:
        return PostgresClient(self._url(), self.namespace, options)
