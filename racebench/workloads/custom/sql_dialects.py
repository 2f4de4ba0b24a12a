"""What differs between PostgreSQL, MySQL/MariaDB and SQLite for a SQL template.

Connections are opened with the stores' own helpers (same URLs, timeouts, TLS rules and
error messages); a dialect adds how a transaction starts, which server errors are retried
(serialization failures, deadlocks), which mean a constraint refused the write, and how a
template's tables are dropped.
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from racebench.errors import BackendUnavailable

ISOLATION_LEVELS = {
    "read_committed": "READ COMMITTED",
    "repeatable_read": "REPEATABLE READ",
    "serializable": "SERIALIZABLE",
}
# As the sqlite store's: writers queue on one database lock, so a long wait is contention.
_SQLITE_BUSY_S = 30.0


class SqlDialect(ABC):
    """One server family's driver conventions.

    `conflict_codes` are the error codes after which a transaction is retried (the server
    refused it to keep its isolation promise); `lock_wait_codes` those of a lock wait that
    timed out; `levels` the strategies (isolation levels) the family offers.
    """

    placeholder: ClassVar[str] = "%s"
    conflict_codes: ClassVar[frozenset[str]]
    lock_wait_codes: ClassVar[frozenset[str]] = frozenset()
    levels: ClassVar[tuple[str, ...]] = tuple(ISOLATION_LEVELS)
    # Set by open(): the driver is imported only when a template uses this family.
    driver_error: type[BaseException]

    @abstractmethod
    def open(self, url: str) -> Any:
        """An autocommit DB-API connection (BackendUnavailable if none)."""

    @abstractmethod
    def error_code(self, exc: BaseException) -> str | None:
        """The server's code for a driver error (SQLSTATE, MySQL number, SQLite name)."""

    @abstractmethod
    def refused_by_constraint(self, exc: BaseException) -> bool:
        """A unique, foreign-key or check constraint refused the statement."""

    @abstractmethod
    def broken(self, conn: Any) -> bool:
        """Whether the connection is unusable and the client must reconnect."""

    @abstractmethod
    def begin_statements(self, strategy: str) -> list[str]:
        """The statements that start a transaction at `strategy`'s isolation level."""

    @abstractmethod
    def drop_statements(self, tables: list[str]) -> list[str]:
        """Statements dropping `tables` whatever foreign keys link them; none for none."""


class PostgresDialect(SqlDialect):
    """PostgreSQL through psycopg: SQLSTATE codes, the level on BEGIN itself."""

    # 40001 serialization failure, 40P01 deadlock; 55P03 is lock_timeout expiring.
    conflict_codes = frozenset({"40001", "40P01"})
    lock_wait_codes = frozenset({"55P03"})

    def open(self, url: str) -> Any:
        import psycopg

        from racebench.stores.postgres import open_connection

        self.driver_error = psycopg.Error
        return open_connection(url)

    def error_code(self, exc: BaseException) -> str | None:
        return getattr(exc, "sqlstate", None)

    def refused_by_constraint(self, exc: BaseException) -> bool:
        # SQLSTATE class 23 is "integrity constraint violation", whichever constraint.
        return (self.error_code(exc) or "").startswith("23")

    def broken(self, conn: Any) -> bool:
        return conn.closed or conn.broken

    def begin_statements(self, strategy: str) -> list[str]:
        return [f"BEGIN ISOLATION LEVEL {ISOLATION_LEVELS[strategy]}"]

    def drop_statements(self, tables: list[str]) -> list[str]:
        # One statement with CASCADE: the template's foreign keys need no drop order.
        return [f"DROP TABLE IF EXISTS {', '.join(tables)} CASCADE"] if tables else []


class MysqlDialect(SqlDialect):
    """MariaDB/MySQL through PyMySQL: numeric error codes, the level set before the start."""

    # 1213 deadlock, 1205 lock wait timeout, 1020 snapshot changed, 1467 AUTO-INC deadlock.
    conflict_codes = frozenset({"1213", "1205", "1020", "1467"})
    # 1062 duplicate key; 1216/1217/1451/1452 foreign keys; 3819 (MySQL) and 4025
    # (MariaDB) a CHECK constraint.
    _constraint_codes = frozenset({"1062", "1216", "1217", "1451", "1452", "3819", "4025"})

    def open(self, url: str) -> Any:
        import pymysql

        from racebench.stores.mysql import open_connection

        self.driver_error = pymysql.err.MySQLError
        return open_connection(url)

    def error_code(self, exc: BaseException) -> str | None:
        # PyMySQL's errors carry (code, message); its own client-side errors carry text only.
        args = getattr(exc, "args", ())
        return str(args[0]) if args and isinstance(args[0], int) else None

    def refused_by_constraint(self, exc: BaseException) -> bool:
        return self.error_code(exc) in self._constraint_codes

    def broken(self, conn: Any) -> bool:
        return not conn.open

    def begin_statements(self, strategy: str) -> list[str]:
        # START TRANSACTION takes no level; SET TRANSACTION applies to the next one only.
        level = ISOLATION_LEVELS[strategy]
        return [f"SET TRANSACTION ISOLATION LEVEL {level}", "START TRANSACTION"]

    def drop_statements(self, tables: list[str]) -> list[str]:
        if not tables:
            return []
        # The template's own foreign keys must not decide the order of the drops.
        return [
            "SET FOREIGN_KEY_CHECKS = 0",
            f"DROP TABLE IF EXISTS {', '.join(tables)}",
            "SET FOREIGN_KEY_CHECKS = 1",
        ]


class SqliteDialect(SqlDialect):
    """SQLite has one isolation level: a deferred transaction is serializable; a writer whose
    snapshot went stale fails with SQLITE_BUSY_SNAPSHOT, retried like a serialization error."""

    placeholder = "?"
    conflict_codes = frozenset({"SQLITE_BUSY", "SQLITE_BUSY_SNAPSHOT", "SQLITE_LOCKED"})
    levels = ("serializable",)
    driver_error = sqlite3.Error

    def open(self, url: str) -> Any:
        try:
            conn = sqlite3.connect(url, timeout=_SQLITE_BUSY_S, isolation_level=None)
            # WAL: readers run beside the one writer, so a deferred transaction's reads do not
            # queue behind it and the race between read and write stays open.
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"sqlite: cannot open {url}: {exc}") from None
        return conn

    def error_code(self, exc: BaseException) -> str | None:
        return getattr(exc, "sqlite_errorname", None)

    def refused_by_constraint(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)

    def broken(self, conn: Any) -> bool:
        # A file connection has no network to lose.
        return False

    def begin_statements(self, strategy: str) -> list[str]:
        # Deferred, not IMMEDIATE: the template's reads race, and a stale writer is refused.
        return ["BEGIN"]

    def drop_statements(self, tables: list[str]) -> list[str]:
        return [f"DROP TABLE IF EXISTS {table}" for table in tables]


DIALECTS: dict[str, type[SqlDialect]] = {
    "postgres": PostgresDialect,
    "mysql": MysqlDialect,
    "sqlite": SqliteDialect,
}
