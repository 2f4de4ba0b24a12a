"""MySQL and MariaDB (InnoDB) through PyMySQL: every SQL concurrency-control strategy, measured.

What InnoDB does (and what the claims below promise): a plain SELECT is a consistent read of a
snapshot, but UPDATE and INSERT act on the latest committed rows. So under REPEATABLE READ (the
default) a read-then-write still loses updates: the UPDATE silently overwrites a row changed
since the snapshot. (MariaDB's innodb_snapshot_isolation, on by default from 11.6, turns that
into error 1020, which racebench retries and counts.) SERIALIZABLE turns every plain read in a
transaction into a shared lock, so two read-then-writes deadlock (1213) and one is retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from racebench.errors import BackendUnavailable, RacebenchError
from racebench.history import Outcome
from racebench.stores.base import (
    ALL_WORKLOADS,
    ROW_WORKLOADS,
    AsyncStoreClient,
    ClientOptions,
    Conflict,
    StoreClient,
    StrategySpec,
)
from racebench.stores.sql import (
    CONNECT_TIMEOUT_S,
    LOCK_WAIT_S,
    LOOPBACK_HOSTS,
    LockWaitTimeout,
    SqlClient,
    SqlStore,
    common_strategies,
)
from racebench.util.redact import redact_text

DEFAULT_URL = "mysql://root@127.0.0.1:3306/test"
SSL_MODES = ("DISABLED", "PREFERRED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY")
# Client errors that mean the connection died with a statement in flight.
_LOST = frozenset({2006, 2013, 2055})
# Server errors by which it closes the session: 1927 connection killed (MariaDB), 1053
# server shutdown in progress.
CLOSING_CODES = frozenset({"1927", "1053"})


def is_mysql_url(url: str | None) -> bool:
    return url is not None and url.split("://", 1)[0] in ("mysql", "mariadb")


def _tls_kwargs(host: str, mode: str | None, ca: str | None) -> dict[str, Any]:
    """PyMySQL's TLS arguments for an ssl_mode (MySQL client names).

    PyMySQL tries TLS on every connect when the server offers it (about 40 ms here, against
    1 ms without); on loopback that buys nothing, so TLS is off there unless the URL asks.
    """
    mode = (mode or ("DISABLED" if host in LOOPBACK_HOSTS else "PREFERRED")).upper()
    if mode not in SSL_MODES:
        raise RacebenchError(f"mysql: unknown ssl_mode {mode!r} (known: {', '.join(SSL_MODES)})")
    if mode == "DISABLED":
        return {"ssl_disabled": True}
    if mode == "PREFERRED":
        return {}
    if mode == "REQUIRED":
        import ssl

        context = ssl.create_default_context(cafile=ca)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return {"ssl": context}
    return {
        "ssl_ca": ca,
        "ssl_verify_cert": True,
        "ssl_verify_identity": mode == "VERIFY_IDENTITY",
    }


def connect_kwargs(url: str) -> dict[str, Any]:
    """pymysql.connect arguments for `mysql://user:password@host:port/db?ssl_mode=...`."""
    from pymysql.constants import CLIENT

    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"ssl_mode", "ssl_ca"}
    if unknown:
        raise RacebenchError(f"mysql: unknown URL option(s): {', '.join(sorted(unknown))}")
    host = parts.hostname or "127.0.0.1"
    return {
        "host": host,
        "port": parts.port or 3306,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
        "database": unquote(parts.path.lstrip("/")) or None,
        "autocommit": True,
        "connect_timeout": CONNECT_TIMEOUT_S,
        # rowcount = rows matched, as on PostgreSQL; without it an UPDATE that writes the
        # value already there reports 0 rows and a fenced write would look stale.
        "client_flag": CLIENT.FOUND_ROWS,
        **_tls_kwargs(host, query.get("ssl_mode"), query.get("ssl_ca")),
    }


def _reason(code: int, message: str) -> str:
    if code == 1045:
        return f"authentication failed: {message}"
    if code == 1049:
        return f"database missing: {message}"
    if code == 1044:
        return f"access to the database denied: {message}"
    if code == 2003 and "refused" in message:
        return "connection refused (is the server running and listening there?)"
    return message


def open_connection(url: str) -> Any:
    """An autocommit PyMySQL connection, or BackendUnavailable naming what is wrong."""
    try:
        import pymysql
    except ImportError:
        raise BackendUnavailable(
            "mysql: the PyMySQL driver is not installed (pip install 'racebench[mysql]')"
        ) from None
    try:
        return pymysql.connect(**connect_kwargs(url))
    except pymysql.err.MySQLError as exc:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        message = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        raise BackendUnavailable(
            f"mysql: cannot connect to {redact_text(url)}: {redact_text(_reason(code, message))}"
        ) from None


def server_facts(url: str) -> dict[str, str]:
    conn = open_connection(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version()")
            version = cur.fetchone()[0]
    finally:
        conn.close()
    return {"server": "mariadb" if "MariaDB" in version else "mysql", "version": version}


class MysqlClient(SqlClient):
    """One client's PyMySQL connection (autocommit; START TRANSACTION where a strategy says)."""

    # 1213 deadlock, 1205 lock wait timeout, 1020 snapshot changed (innodb_snapshot_isolation);
    # MariaDB reports a deadlock on the AUTO-INC lock of INSERT ... SELECT as 1467 (MDEV-33593),
    # with the transaction rolled back like any deadlock.
    conflict_codes = frozenset({"1213", "1205", "1020", "1467"})
    native_lock = "get_lock"
    from_dual = " FROM DUAL"

    def _open(self) -> None:
        import pymysql

        from racebench.stores.mysql_lean import MysqlProtocol
        from racebench.stores.sql_lean import BlockingReplies

        self.driver_error = pymysql.err.MySQLError
        self.conn = open_connection(self.url)
        self.cur = self.conn.cursor()
        self._level: str | None = None
        self._replies = BlockingReplies(MysqlProtocol(None))
        self._packets: dict[tuple[str, tuple[int, ...]], bytes] = {}

    def _rowcount(self, sql: str, params: tuple[int, ...]) -> int:
        # The atomic statement skips PyMySQL's per-statement Python (escaping, packet
        # objects, result metadata): one pre-encoded COM_QUERY on its socket, the OK packet
        # parsed for its row count (racebench.stores.mysql_lean says why, with figures).
        import pymysql

        from racebench.stores.mysql_lean import com_query
        from racebench.stores.sql_lean import ServerError

        packet = self._packets.get((sql, params))
        if packet is None:
            packet = self._packets[(sql, params)] = com_query(sql % params)
            if len(self._packets) > 64:  # withdrawals differ by seq: keep only the constant
                self._packets.clear()
        try:
            rowcount, _ = self._replies.call(self.conn._sock, packet)
        except ServerError as exc:
            if exc.code in self.conflict_codes:
                raise Conflict(exc.code) from exc
            if exc.code in CLOSING_CODES:
                self.conn._force_close()
                raise pymysql.err.OperationalError(2013, str(exc)) from exc
            raise pymysql.err.OperationalError(int(exc.code), str(exc)) from exc
        except (OSError, AttributeError) as exc:  # AttributeError: PyMySQL closed the socket
            self.conn._force_close()
            raise pymysql.err.OperationalError(
                2013, f"Lost connection to server during query ({exc})"
            ) from exc
        return rowcount

    def _error_code(self, exc: BaseException) -> str | None:
        args = getattr(exc, "args", ())
        return str(args[0]) if args and isinstance(args[0], int) else None

    def _broken(self) -> bool:
        return not self.conn.open

    def _connection_lost(self, exc: BaseException) -> bool:
        import pymysql

        if isinstance(exc, pymysql.err.InterfaceError):
            return True
        return self._error_code(exc) in {str(c) for c in _LOST} or self._broken()

    def _begin(self, level: str) -> None:
        # SET TRANSACTION would cost a round trip per transaction; a client runs one strategy,
        # so the session level is set once and remembered.
        if level != self._level:
            self._run(f"SET SESSION TRANSACTION ISOLATION LEVEL {level}")
            self._level = level
        self._run("START TRANSACTION")

    def _native_locked(self, body: Callable[[], Outcome]) -> Outcome:
        # GET_LOCK returns 0 after the timeout (an operation error, never a hang) and NULL on
        # an error; the lock belongs to the session and dies with it.
        granted = self._scalar("SELECT GET_LOCK(%s, %s)", (self.namespace, LOCK_WAIT_S))
        if granted == 0:
            raise LockWaitTimeout("GET_LOCK")
        if granted != 1:
            raise RuntimeError(f"GET_LOCK({self.namespace!r}) failed")
        self._cs[0] = time.monotonic_ns()
        try:
            outcome = body()  # autocommit statements: each write is committed before release
            self._cs[1] = time.monotonic_ns()
        finally:
            if not self._broken():
                self._run("SELECT RELEASE_LOCK(%s)", (self.namespace,))
        return outcome

    def close(self) -> None:
        self.conn.close()


class MysqlStore(SqlStore):
    """InnoDB tables under the run's namespace, in the URL's database."""

    backend = "mysql"
    description = "MySQL / MariaDB (InnoDB) through PyMySQL (one connection per client)"
    integer_type = "MySQL BIGINT"
    default_url = DEFAULT_URL
    url_env = "RACEBENCH_MYSQL_URL"
    extra = "mysql"
    drivers = ("PyMySQL",)
    ports = {"mysql": 3306}
    test_server = "mysql_url"
    id_column = "id BIGINT AUTO_INCREMENT PRIMARY KEY"
    table_options = " ENGINE=InnoDB"
    strategies = {
        **common_strategies(),
        "get_lock": StrategySpec(
            f"GET_LOCK(name, {LOCK_WAIT_S}) / RELEASE_LOCK(name) around the plain "
            "read-then-write; a lock wait past the timeout is a lock_timeout outcome",
            prevents="lost update, oversell, overdraft (a lock outside the data)",
        ),
        "read_committed": StrategySpec(
            "the read-then-write in one READ COMMITTED transaction",
            prevents="nothing: each read sees the latest committed rows",
            allows="lost update, oversell, overdraft (write skew)",
            safe_for=frozenset(),
        ),
        "repeatable_read": StrategySpec(
            "the read-then-write in one REPEATABLE READ transaction (InnoDB's default)",
            prevents="nothing on InnoDB by default: the read is a snapshot, the write is not",
            allows="lost update, oversell, overdraft (write skew); MariaDB's "
            "innodb_snapshot_isolation=ON turns the lost update into 1020 retries",
            safe_for=frozenset(),
        ),
        "serializable": StrategySpec(
            "the read-then-write in one SERIALIZABLE transaction, retried on 1213 deadlocks",
            prevents="lost update, oversell, overdraft (plain reads take shared locks)",
            safe_for=ALL_WORKLOADS | ROW_WORKLOADS,
            supports=ALL_WORKLOADS | ROW_WORKLOADS,
        ),
    }

    async_strategies = frozenset({"none", "crdt", "atomic"})
    async_driver = "lean COM_QUERY after a PyMySQL login (racebench.stores.mysql_lean)"
    # On the loop at any client count: with the atomic statement run from the protocol's
    # reply callbacks (racebench.stores.sql_lean), measured here at 16 clients on 2 workers,
    # the loop reached 0.93x mysqlslap on a quiet machine and 0.82x beside a CPU hog, where
    # a thread per client with the same lean statement gave 0.77x both times.

    @classmethod
    def loop_supports(cls, url: str | None) -> bool:
        # The lean client writes on the bare socket: a TLS session stays with PyMySQL.
        parts = urlsplit(url or DEFAULT_URL)
        mode = {k: v[-1] for k, v in parse_qs(parts.query).items()}.get("ssl_mode")
        kwargs = _tls_kwargs(parts.hostname or "127.0.0.1", mode, None)
        return kwargs.get("ssl_disabled", False) is True

    async def async_connect(self, options: ClientOptions) -> AsyncStoreClient:
        from racebench.stores.mysql_lean import LeanMysqlClient

        client = LeanMysqlClient(self._url(), self.namespace, options)
        await client.connect()
        return client

    def connection_limit(self) -> tuple[str, int] | None:
        conn = open_connection(self._url())
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@max_connections")
                total = int(cur.fetchone()[0])
                cur.execute("SHOW STATUS LIKE 'Threads_connected'")
                in_use = int(cur.fetchone()[1])
        finally:
            conn.close()
        return "max_connections", total - (in_use - 1)

    def _open_connection(self, url: str) -> Any:
        return open_connection(url)

    def _server_facts(self, url: str) -> dict[str, str]:
        return server_facts(url)

    def _missing_privilege(self, exc: BaseException) -> str | None:
        # 1142 a command denied on a table, 1044 access to the database denied, 1227 a
        # global privilege (SUPER, ...) missing; their messages name the privilege and user.
        args = getattr(exc, "args", ())
        if not args or args[0] not in (1044, 1142, 1227):
            return None
        return f"missing privilege: {args[1] if len(args) > 1 else exc}"

    def _list_tables_sql(self) -> str:
        return (
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name LIKE %s"
        )

    def connect(self, options: ClientOptions) -> StoreClient:
        return MysqlClient(self._url(), self.namespace, options)
