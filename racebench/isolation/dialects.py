"""PostgreSQL and MariaDB/MySQL for the isolation probes: connections, levels, lock waits.

Connections come from the stores' own `open_connection` (same URLs, TLS choices, one-line
errors and exit status 3 when a server is unreachable).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from racebench.errors import BackendUnavailable, RacebenchError
from racebench.isolation.sessions import ServerError, StatementResult
from racebench.util.redact import redact_text

# Long enough never to cut a probe short, short enough that a broken probe ends.
LOCK_WAIT_S = 10


@dataclass(frozen=True)
class Level:
    """One isolation level as the probes set it: its SQL name and any session settings."""

    name: str  # as printed: "repeatable read"
    sql_name: str  # as the server takes it: "REPEATABLE READ"
    session_settings: tuple[str, ...] = ()
    note: str = ""


@dataclass
class ServerInfo:
    """What the report says about the server: its kind, version and relevant settings."""

    kind: str  # "postgresql" | "mariadb" | "mysql"
    version: str
    settings: dict[str, str] = field(default_factory=dict)


def _first_line(message: str) -> str:
    # Drivers append DETAIL/HINT lines and may echo the URL: the matrix keeps one redacted line.
    return redact_text(message.strip().splitlines()[0] if message.strip() else message)


class PostgresDialect:
    """PostgreSQL through psycopg: `pg_blocking_pids` tells that a backend waits for a lock."""

    def __init__(self, url: str) -> None:
        self.url = url

    def connect(self) -> Any:
        from racebench.stores.postgres import open_connection

        return open_connection(self.url, lock_wait_s=LOCK_WAIT_S)

    def session_id(self, conn: Any) -> int:
        return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])

    def waiting_for_lock(self, monitor: Any, session_id: int) -> bool:
        import psycopg

        try:
            row = monitor.execute(
                "SELECT cardinality(pg_blocking_pids(%s)) > 0", (session_id,)
            ).fetchone()
        except psycopg.Error as exc:
            raise BackendUnavailable(
                f"postgres: lost the server: {_first_line(str(exc))}"
            ) from None
        return bool(row[0])

    def execute(self, conn: Any, sql: str) -> StatementResult:
        # An error is returned, not raised: a serialization failure is the evidence a probe
        # judges, and the script must go on to the other session's steps.
        import psycopg

        try:
            cur = conn.execute(sql)
        except psycopg.Error as exc:
            return StatementResult(error=ServerError(exc.sqlstate or "?", _first_line(str(exc))))
        rows = {int(r[0]): int(r[1]) for r in cur.fetchall()} if cur.description else {}
        # psycopg reports -1 for statements without a row count (BEGIN, COMMIT).
        return StatementResult(rows=rows, rowcount=max(cur.rowcount, 0))

    def begin(self, level: Level) -> list[str]:
        # The level on BEGIN itself applies to this transaction only: nothing carries over to
        # the session's next probe.
        return [f"begin isolation level {level.sql_name.lower()}"]

    def levels(self, info: ServerInfo) -> list[Level]:
        # Read uncommitted is probed although PostgreSQL maps it to read committed: the
        # columns then match MySQL's, and the matrix shows the mapping rather than asserting it.
        return [
            Level(
                "read uncommitted",
                "READ UNCOMMITTED",
                note="PostgreSQL runs it as read committed",
            ),
            Level("read committed", "READ COMMITTED"),
            Level("repeatable read", "REPEATABLE READ"),
            Level("serializable", "SERIALIZABLE"),
        ]

    def server_info(self, conn: Any) -> ServerInfo:
        version = conn.execute("SHOW server_version").fetchone()[0]
        default = conn.execute("SHOW default_transaction_isolation").fetchone()[0]
        return ServerInfo("postgresql", version, {"default_transaction_isolation": default})

    def drop_table(self, conn: Any, table: str) -> None:
        conn.execute(f"DROP TABLE IF EXISTS {table}")

    def create_table(self, conn: Any, table: str) -> None:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, value int)")


# A transaction's block in SHOW ENGINE INNODB STATUS reads "LOCK WAIT ..." a few lines before
# "MySQL thread id N" (MariaDB prints the same), N being the session's connection_id().
_WAITING_TRX = re.compile(r"LOCK WAIT.*?thread id (\d+)", re.S)


class MysqlDialect:
    """MariaDB/MySQL InnoDB through PyMySQL.

    A lock wait is read from SHOW ENGINE INNODB STATUS: information_schema.innodb_trx would be
    simpler, but InnoDB refreshes that table from a cache at most every 100 ms, so it can
    still say LOCK WAIT after a commit granted the lock, and the next step would race.
    """

    def __init__(self, url: str) -> None:
        self.url = url

    def connect(self) -> Any:
        from racebench.stores.mysql import open_connection

        conn = open_connection(self.url)
        with conn.cursor() as cur:
            # InnoDB's default is 50 s; LOCK_WAIT_S ends a wrongly blocked probe sooner.
            cur.execute(f"SET SESSION innodb_lock_wait_timeout = {LOCK_WAIT_S}")
        return conn

    def session_id(self, conn: Any) -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT connection_id()")
            return int(cur.fetchone()[0])

    def waiting_for_lock(self, monitor: Any, session_id: int) -> bool:
        import pymysql

        try:
            with monitor.cursor() as cur:
                cur.execute("SHOW ENGINE INNODB STATUS")
                status = cur.fetchone()[2]
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] == 1227:  # access denied: no PROCESS privilege
                raise RacebenchError(
                    "isolation: mysql: seeing lock waits needs the PROCESS privilege "
                    "(SHOW ENGINE INNODB STATUS): GRANT PROCESS ON *.* TO the URL's user"
                ) from None
            raise BackendUnavailable(f"mysql: lost the server: {exc.args[-1]}") from None
        # Per transaction block, so a LOCK WAIT is tied to the thread id of its own block.
        for block in status.split("---TRANSACTION")[1:]:
            match = _WAITING_TRX.search(block)
            if match and int(match.group(1)) == session_id:
                return True
        return False

    def execute(self, conn: Any, sql: str) -> StatementResult:
        import pymysql

        try:
            with conn.cursor() as cur:
                count = cur.execute(sql)
                rows = cur.fetchall() if cur.description else ()
        except pymysql.err.MySQLError as exc:
            code = str(exc.args[0]) if exc.args else "?"
            message = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
            return StatementResult(error=ServerError(code, _first_line(message)))
        return StatementResult(rows={int(r[0]): int(r[1]) for r in rows}, rowcount=count)

    def begin(self, level: Level) -> list[str]:
        # MySQL's BEGIN takes no level, so the session's level is set before every BEGIN.
        return [f"set session transaction isolation level {level.sql_name.lower()}", "begin"]

    def levels(self, info: ServerInfo) -> list[Level]:
        levels = [
            Level("read uncommitted", "READ UNCOMMITTED"),
            Level("read committed", "READ COMMITTED"),
            # OFF explicitly where the variable exists (it is ON by default from MariaDB 11.6),
            # so this column is InnoDB's classic repeatable read beside the variant below.
            Level(
                "repeatable read",
                "REPEATABLE READ",
                ("SET SESSION innodb_snapshot_isolation = OFF",)
                if "innodb_snapshot_isolation" in info.settings
                else (),
            ),
        ]
        if "innodb_snapshot_isolation" in info.settings:
            # MariaDB 10.6.18+/10.11.8+: a write to a row changed since the transaction's read
            # view fails with 1020 instead of overwriting it (the default from 11.6).
            levels.append(
                Level(
                    "repeatable read + innodb_snapshot_isolation",
                    "REPEATABLE READ",
                    ("SET SESSION innodb_snapshot_isolation = ON",),
                )
            )
        levels.append(Level("serializable", "SERIALIZABLE"))
        return levels

    def server_info(self, conn: Any) -> ServerInfo:
        with conn.cursor() as cur:
            cur.execute("SELECT version()")
            version = cur.fetchone()[0]
            # tx_isolation became transaction_isolation (MySQL 8.0, MariaDB 11.1).
            cur.execute(
                "SHOW GLOBAL VARIABLES WHERE Variable_name IN "
                "('tx_isolation', 'transaction_isolation', 'innodb_snapshot_isolation')"
            )
            settings = {name: value for name, value in cur.fetchall()}
        kind = "mariadb" if "MariaDB" in version else "mysql"
        return ServerInfo(kind, version, settings)

    def drop_table(self, conn: Any, table: str) -> None:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")

    def create_table(self, conn: Any, table: str) -> None:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, value int) ENGINE=InnoDB")
