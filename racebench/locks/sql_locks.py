"""SQL lock services: PostgreSQL advisory locks and MySQL/MariaDB GET_LOCK.

Both are session locks held by a connection of their own, beside the store's: they are not
leases, so a paused holder keeps the lock and the others wait; the server drops the lock the
moment the session ends (connection closed, client killed, or the session terminated on the
server), and a holder that goes on writing through another connection then breaks mutual
exclusion. The fencing token is a counter row on the lock's server, incremented by the holder
right after each grant, so tokens grow with every grant.

The server is `guard.lock.url`, else the store's URL when the store is of the same kind, else
the default URL of that kind (`RACEBENCH_POSTGRES_URL` / `RACEBENCH_MYSQL_URL`).
"""

from __future__ import annotations

from abc import abstractmethod
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from racebench.locks.base import LockClient, LockService, LockTimeout
from racebench.stores import mysql, postgres

if TYPE_CHECKING:
    from racebench.util.plugin_config import FaultConfig


class _SqlLockService(LockService):
    """What both services share: the server URL and the fencing counter table."""

    lease = False
    fault_kinds = frozenset({"kill_session"})

    @abstractmethod
    def _is_same_kind(self, url: str | None) -> bool: ...

    @abstractmethod
    def _open(self, url: str) -> Any: ...

    def url(self) -> str:
        if self.config.url:
            return self.config.url
        if self._is_same_kind(self.store_url):
            assert self.store_url is not None
            return self.store_url
        url = self.configured_url()
        assert url is not None  # both services declare a default_url
        return url

    def server_url(self) -> str:
        return self.url()

    def keeps_exclusion(self, fault: FaultConfig, race_window_ms: float) -> bool:
        # A reset lock connection ends the session, and the lock with it.
        if fault.kind == "reset" and fault.target == "lock":
            return False
        return super().keeps_exclusion(fault, race_window_ms)

    @property
    def fence_table(self) -> str:
        return f"{self.namespace}_lock"

    def _execute(self, *statements: str) -> list[Any]:
        conn = self._open(self.url())
        try:
            cur = conn.cursor()
            for sql in statements:
                cur.execute(sql)
            return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def setup(self) -> None:
        self._execute(
            f"CREATE TABLE {self.fence_table} (id INTEGER PRIMARY KEY, token BIGINT NOT NULL)",
            f"INSERT INTO {self.fence_table} (id, token) VALUES (1, 0)",
        )

    def teardown(self) -> None:
        self._execute(f"DROP TABLE IF EXISTS {self.fence_table}")


class AdvisoryLockClient(LockClient):
    """pg_advisory_lock on a dedicated connection whose lock_timeout is the acquire timeout."""

    def __init__(self, url: str, key: int, fence_table: str, timeout_s: float) -> None:
        self.url, self.key, self.timeout_s = url, key, timeout_s
        self.sql_token = f"UPDATE {fence_table} SET token = token + 1 WHERE id = 1 RETURNING token"
        self._connect()

    def _connect(self) -> None:
        self.conn = postgres.open_connection(self.url, lock_wait_s=self.timeout_s)
        self.cur = self.conn.cursor()

    def acquire(self) -> int:
        import psycopg

        if self.conn.closed or self.conn.broken:
            self._connect()  # the old session died, and its lock with it
        try:
            self.cur.execute("SELECT pg_advisory_lock(%s)", (self.key,))
        except psycopg.errors.LockNotAvailable:
            raise LockTimeout from None
        return self.cur.execute(self.sql_token).fetchone()[0]

    def release(self) -> None:
        import psycopg

        # Session locks are per session: this can only release our own grant. A dead session
        # has already lost the lock, so there is nothing to release.
        with suppress(psycopg.OperationalError):
            self.cur.execute("SELECT pg_advisory_unlock(%s)", (self.key,))

    def session_id(self) -> int:
        return self.conn.info.backend_pid

    def close(self) -> None:
        self.conn.close()


class AdvisoryLock(_SqlLockService):
    service = "advisory"
    description = "PostgreSQL session advisory lock (pg_advisory_lock / pg_advisory_unlock)"
    failure_mode = (
        "not a lease: a paused holder keeps the lock and the others wait; the lock dies with "
        "the holder's session (connection lost, pg_terminate_backend)"
    )
    extra = "postgres"
    default_url = postgres.DEFAULT_URL
    url_env = "RACEBENCH_POSTGRES_URL"
    drivers = ("psycopg",)
    test_server = "postgres_url"

    def _is_same_kind(self, url: str | None) -> bool:
        return postgres.is_postgres_url(url)

    def _open(self, url: str) -> Any:
        return postgres.open_connection(url)

    def check_reachable(self) -> dict[str, str]:
        return postgres.server_facts(self.url())

    def kill_session(self, session_id: int) -> str:
        self._execute(f"SELECT pg_terminate_backend({int(session_id)})")
        return f"pg_terminate_backend({session_id})"

    def leftovers(self) -> list[str]:
        rows = self._execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND tablename LIKE 'racebench\\_%\\_lock'"
        )
        return sorted(name for (name,) in rows)

    def connect(self, client_id: int) -> LockClient:
        return AdvisoryLockClient(
            self.url(),
            postgres.advisory_key(self.namespace + ":lock"),
            self.fence_table,
            self.config.acquire_timeout_ms / 1000,
        )


class GetLockClient(LockClient):
    """GET_LOCK(name, timeout) / RELEASE_LOCK(name) on a dedicated connection."""

    def __init__(self, url: str, name: str, fence_table: str, timeout_s: float) -> None:
        self.url, self.name, self.timeout_s = url, name, timeout_s
        # LAST_INSERT_ID(expr) hands the new value back in the UPDATE's reply: one round trip.
        self.sql_token = f"UPDATE {fence_table} SET token = LAST_INSERT_ID(token + 1) WHERE id = 1"
        self._connect()

    def _connect(self) -> None:
        self.conn = mysql.open_connection(self.url)
        self.cur = self.conn.cursor()

    def acquire(self) -> int:
        if not self.conn.open:
            self._connect()  # the old session died, and its lock with it
        self.cur.execute("SELECT GET_LOCK(%s, %s)", (self.name, self.timeout_s))
        granted = self.cur.fetchone()[0]
        if granted == 0:
            raise LockTimeout
        if granted != 1:
            raise RuntimeError(f"GET_LOCK({self.name!r}) failed")
        self.cur.execute(self.sql_token)
        return self.cur.lastrowid

    def release(self) -> None:
        import pymysql

        # RELEASE_LOCK frees only this session's lock (it returns 0 for another's).
        with suppress(pymysql.err.OperationalError, pymysql.err.InterfaceError):
            self.cur.execute("SELECT RELEASE_LOCK(%s)", (self.name,))

    def session_id(self) -> int:
        return self.conn.thread_id()

    def close(self) -> None:
        self.conn.close()


class GetLock(_SqlLockService):
    service = "get_lock"
    description = "MySQL / MariaDB user-level lock (GET_LOCK / RELEASE_LOCK)"
    failure_mode = (
        "not a lease: a paused holder keeps the lock and the others wait; the lock dies with "
        "the holder's session (connection lost, KILL)"
    )
    extra = "mysql"
    default_url = mysql.DEFAULT_URL
    url_env = "RACEBENCH_MYSQL_URL"
    drivers = ("PyMySQL",)
    test_server = "mysql_url"

    def _is_same_kind(self, url: str | None) -> bool:
        return mysql.is_mysql_url(url)

    def _open(self, url: str) -> Any:
        return mysql.open_connection(url)

    def check_reachable(self) -> dict[str, str]:
        return mysql.server_facts(self.url())

    def kill_session(self, session_id: int) -> str:
        self._execute(f"KILL {int(session_id)}")
        return f"KILL {session_id}"

    def leftovers(self) -> list[str]:
        rows = self._execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() "
            "AND table_name LIKE 'racebench\\_%\\_lock'"
        )
        return sorted(name for (name,) in rows)

    def connect(self, client_id: int) -> LockClient:
        return GetLockClient(
            self.url(),
            f"{self.namespace}:lock",
            self.fence_table,
            self.config.acquire_timeout_ms / 1000,
        )
