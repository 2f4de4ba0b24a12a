"""SQLite: the embedded default, one database file shared by all client processes.

SQLite serialises writers on the whole database, so its races come from the gap between a
read and a later write in another statement or a deferred transaction. WAL mode lets readers
run beside the single writer; `timeout` is the busy handler's wait for the write lock.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from racebench.errors import BackendUnavailable
from racebench.history import Outcome
from racebench.stores.base import (
    ALL_WORKLOADS,
    OK_STEP,
    REJECTED_STEP,
    ROW_WORKLOADS,
    ClientOptions,
    Conflict,
    StaleToken,
    StepResult,
    Store,
    StoreClient,
    StrategySpec,
    rowcount_step,
    step_factory,
)
from racebench.stores.sql import CONSTRAINT_STRATEGY
from racebench.stores.sql_rows import RowOperations, create_row_tables, read_row_final
from racebench.stores.sql_statements import table_names
from racebench.util.ownership import temp_prefix
from racebench.workloads.counters import CounterPlan, FinalState, LedgerPlan, LedgerRow, Plan
from racebench.workloads.rows import BookingPlan, RowPlan, TransferPlan

# Writers queue on the one database lock, and `exclusive` holds it across the race window:
# a long wait is expected contention, not a failure, so the busy handler waits far longer
# than sqlite3's default 5 s before raising "database is locked".
_BUSY_TIMEOUT_S = 30.0


def _open(path: str) -> sqlite3.Connection:
    # isolation_level=None: autocommit; transactions only where a strategy says BEGIN. The
    # sqlite3 module's default would open a transaction implicitly before each write, and the
    # `none` strategy must run each statement on its own.
    conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    # In WAL mode NORMAL cannot corrupt the file, only lose the last commits on power loss:
    # durability is not what a race benchmark measures, and FULL's fsyncs would slow writers.
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class SqliteClient(RowOperations):
    """One client's connection to the shared database file.

    SQLite has no row locks: every locking strategy takes the database's write lock with
    BEGIN IMMEDIATE before its first read, which serialises all writers at once.
    """

    placeholder = "?"

    def __init__(self, path: str, namespace: str, options: ClientOptions) -> None:
        super().__init__(options)
        self.conn = _open(path)
        self._prepare_statements(namespace)
        self._prepare_row_statements(table_names(namespace))
        # Built once: the atomic statements are the whole operation, so their cost shows.
        self.atomic_counter_sql = (
            f"UPDATE {self.counter} SET value = value + ? "
            "WHERE id = 1 AND (? IS NULL OR value + ? >= ?)"
        )
        self.atomic_ledger_sql = (
            f"INSERT INTO {self.operations} (amount, client, seq) SELECT ?, ?, ? "
            f"WHERE ({self.sql_balance}) >= ?"
        )

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    @contextmanager
    def _write_locked(self) -> Iterator[None]:
        """A transaction holding the database's write lock from its start; rolled back on error.

        BEGIN IMMEDIATE takes the lock before the first read: SQLite's equivalent of locking the
        rows (its writers are serialised on the whole file). A plain (deferred) BEGIN reads
        first and may then fail with SQLITE_BUSY on its first write, where the busy handler
        does not wait.
        """
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def _row_transaction(self, kind: str, body: Callable[[], Outcome]) -> Outcome:
        # One write lock serves both kinds: holding it, a transaction is serializable.
        with self._write_locked():
            return body()

    def _locked_read_sql(self, table: str, column: str) -> str:
        return f"SELECT {column} FROM {table} WHERE id = ?"  # the write lock is already held

    def _is_unique_violation(self, exc: BaseException) -> bool:
        # The claim's unique index is the only constraint these inserts can break.
        return isinstance(exc, sqlite3.IntegrityError)

    def append_entry(self, amount: int, seq: int, token: int | None = None) -> None:
        if token is None:
            self._insert(amount, seq)
            return
        # The fence check and the insert under one write lock, or a holder with a newer token
        # could commit between them and the stale write would still land.
        with self._write_locked():
            cur = self.conn.execute(
                f"UPDATE {self.account} SET fence = fence WHERE id = 1 AND fence = ?", (token,)
            )
            if cur.rowcount == 0:
                raise StaleToken
            self._insert(amount, seq)

    @step_factory
    def _counter_atomic_step(self, strategy: str, plan: CounterPlan) -> Callable[[int], StepResult]:
        # The statement is the whole operation: bound once (recover() keeps the connection).
        params = (plan.delta, plan.floor, plan.delta, plan.floor)
        return rowcount_step(self.conn.execute, self.atomic_counter_sql, params)

    def _counter_cas_step(self, strategy: str, plan: CounterPlan) -> StepResult:
        return self.retrying(lambda: self._counter_cas(plan))

    def _counter_exclusive_step(self, strategy: str, plan: CounterPlan) -> StepResult:
        return StepResult(self._counter_exclusive(plan))

    def _counter_exclusive(self, plan: CounterPlan) -> Outcome:
        # The race window sits inside the write lock: the other clients wait it out.
        with self._write_locked():
            value = self.read_value = self.read_counter()
            self.pause()
            if plan.floor is not None and value + plan.delta < plan.floor:
                return Outcome.REJECTED
            self.write_counter(value + plan.delta)
            self.written_value = value + plan.delta
            return Outcome.OK

    def _ledger_atomic_step(self, strategy: str, plan: LedgerPlan, seq: int) -> StepResult:
        cur = self.conn.execute(
            self.atomic_ledger_sql, (-plan.amount, self.options.client_id, seq, plan.amount)
        )
        return OK_STEP if cur.rowcount else REJECTED_STEP

    def _ledger_cas_step(self, strategy: str, plan: LedgerPlan, seq: int) -> StepResult:
        return self.retrying(lambda: self._ledger_cas(plan, seq))

    def _ledger_exclusive_step(self, strategy: str, plan: LedgerPlan, seq: int) -> StepResult:
        return StepResult(self._ledger_exclusive(plan, seq))

    # SqliteStore.strategies, each run by. On rows `exclusive` is the shared `for_update`
    # path: _row_transaction's write lock is what FOR UPDATE's row locks are on a server.
    counter_steps: ClassVar[Mapping[str, str]] = {
        "atomic": "_counter_atomic_step",
        "optimistic": "_counter_cas_step",
        "exclusive": "_counter_exclusive_step",
    }
    ledger_steps: ClassVar[Mapping[str, str]] = {
        "atomic": "_ledger_atomic_step",
        "optimistic": "_ledger_cas_step",
        "exclusive": "_ledger_exclusive_step",
    }
    row_steps: ClassVar[Mapping[str, str]] = {
        "none": "_row_none",
        "exclusive": "_row_locked_step",
        "constraint": "_row_constraint_step",
    }

    def _ledger_cas(self, plan: LedgerPlan, seq: int) -> Outcome:
        # The account row's version stands for the whole ledger (the aggregate root).
        version = self._scalar(f"SELECT version FROM {self.account} WHERE id = 1")
        balance = self.read_value = self.read_balance()
        self.pause()
        if balance < plan.amount:
            return Outcome.REJECTED
        # The reads ran outside any lock. The version bump and the insert commit together:
        # apart, another client could read the new version beside a balance still without
        # this entry, and its own version check would pass on a stale balance.
        with self._write_locked():
            if self._run(self.sql_account_cas, (version,)).rowcount == 0:
                raise Conflict("version_changed")
            self._insert(-plan.amount, seq)
            self.written_value = -plan.amount
            return Outcome.OK

    def _ledger_exclusive(self, plan: LedgerPlan, seq: int) -> Outcome:
        with self._write_locked():
            balance = self.read_value = self.read_balance()
            self.pause()
            if balance < plan.amount:
                return Outcome.REJECTED
            self._insert(-plan.amount, seq)
            self.written_value = -plan.amount
            return Outcome.OK

    def recover(self) -> None:
        # A transaction left open would keep the whole database's write lock from every
        # other client until this one closed.
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()


class SqliteStore(Store):
    """The store over one SQLite file: a temporary one per run unless the URL names a path."""

    backend = "sqlite"
    description = "embedded SQLite file shared by all clients (no server; WAL mode)"
    integer_type = "SQLite INTEGER (signed 64-bit)"
    default_url = None
    networked = False
    strategies = {
        "atomic": StrategySpec(
            "one conditional statement: UPDATE ... SET units = units - 1 WHERE units >= 1, "
            "or INSERT ... SELECT ... WHERE balance >= amount",
            prevents="lost update, oversell, overdraft (SQLite runs each statement under its "
            "database write lock)",
        ),
        "optimistic": StrategySpec(
            "read value and version, write WHERE version = the one read; retry on conflict",
            prevents="lost update, overdraft (the account row's version guards the ledger)",
        ),
        "exclusive": StrategySpec(
            "BEGIN IMMEDIATE around the read and the write (the database write lock)",
            prevents="lost update, overdraft, double booking, lost transfer, read skew",
            safe_for=ALL_WORKLOADS | ROW_WORKLOADS,
            supports=ALL_WORKLOADS | ROW_WORKLOADS,
        ),
        "constraint": CONSTRAINT_STRATEGY,
    }
    workloads = ALL_WORKLOADS | ROW_WORKLOADS

    def __init__(self, url: str | None, namespace: str) -> None:
        super().__init__(url, namespace)
        # Without a URL the database is a fresh temporary file, made in setup() and removed
        # with its directory in teardown().
        self._temp_dir: str | None = None
        self.path = url.removeprefix("sqlite:///").removeprefix("sqlite://") if url else ""
        self.tables = table_names(namespace)

    def check_reachable(self) -> dict[str, str]:
        if not self.path:
            # The temporary file is made in setup(): nothing can be unreachable yet.
            return {"server": "sqlite", "version": sqlite3.sqlite_version}
        parent = Path(self.path).resolve().parent
        # sqlite3 says only "unable to open database file" for a missing directory.
        if not parent.is_dir():
            raise BackendUnavailable(f"sqlite: directory {parent} does not exist")
        try:
            conn = _open(self.path)
            version = conn.execute("SELECT sqlite_version()").fetchone()[0]
            conn.close()
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"sqlite: cannot open {self.path}: {exc}") from None
        return {"server": "sqlite", "version": version}

    def setup(self, plan: Plan | RowPlan, clients: int) -> None:
        if not self.path:
            self._temp_dir = tempfile.mkdtemp(prefix=temp_prefix("sqlite"))
            self.path = os.path.join(self._temp_dir, "racebench.db")
        t = self.tables
        conn = _open(self.path)
        try:
            # WAL is a property of the file, kept for every later connection: readers then
            # run beside the one writer instead of waiting for it.
            conn.execute("PRAGMA journal_mode=WAL")
            if isinstance(plan, BookingPlan | TransferPlan):
                id_column = "id INTEGER PRIMARY KEY AUTOINCREMENT"
                create_row_tables(conn.execute, plan, t, id_column, "?", "")
            elif isinstance(plan, CounterPlan):
                conn.execute(
                    f"CREATE TABLE {t['counter']} (id INTEGER PRIMARY KEY, value INTEGER NOT NULL,"
                    " version INTEGER NOT NULL DEFAULT 0, fence INTEGER NOT NULL DEFAULT 0)"
                )
                conn.execute(
                    f"INSERT INTO {t['counter']} (id, value) VALUES (1, ?)", (plan.initial,)
                )
                conn.execute(
                    f"CREATE TABLE {t['slots']} "
                    "(client INTEGER PRIMARY KEY, value INTEGER NOT NULL)"
                )
                conn.executemany(
                    f"INSERT INTO {t['slots']} VALUES (?, 0)", [(i,) for i in range(clients)]
                )
            else:
                conn.execute(
                    f"CREATE TABLE {t['account']} (id INTEGER PRIMARY KEY,"
                    " version INTEGER NOT NULL DEFAULT 0, fence INTEGER NOT NULL DEFAULT 0)"
                )
                conn.execute(f"INSERT INTO {t['account']} (id) VALUES (1)")
                conn.execute(
                    f"CREATE TABLE {t['operations']} (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                    " amount INTEGER NOT NULL, client INTEGER NOT NULL, seq INTEGER NOT NULL)"
                )
                conn.execute(
                    f"INSERT INTO {t['operations']} (amount, client, seq) VALUES (?, -1, 0)",
                    (plan.deposit,),
                )
        finally:
            conn.close()

    def read_final(self, plan: Plan | RowPlan) -> FinalState:
        t = self.tables
        conn = _open(self.path)
        try:
            if isinstance(plan, BookingPlan | TransferPlan):
                return read_row_final(lambda sql: conn.execute(sql).fetchall(), plan, t)
            if isinstance(plan, CounterPlan):
                value = conn.execute(f"SELECT value FROM {t['counter']} WHERE id = 1").fetchone()[0]
                slots = conn.execute(f"SELECT COALESCE(SUM(value), 0) FROM {t['slots']}").fetchone()
                return FinalState(value=value, slots_total=slots[0])
            rows = conn.execute(
                f"SELECT amount, client, seq FROM {t['operations']} ORDER BY id"
            ).fetchall()
            return FinalState(rows=[LedgerRow(*row) for row in rows])
        finally:
            conn.close()

    def teardown(self) -> None:
        if self._temp_dir is not None:
            # WAL leaves its log and shared-memory files beside the database; rmdir needs
            # them gone.
            for suffix in ("", "-wal", "-shm"):
                Path(self.path + suffix).unlink(missing_ok=True)
            os.rmdir(self._temp_dir)
            self._temp_dir = None
            self.path = ""
            return
        if not self.path or not Path(self.path).exists():
            return
        conn = _open(self.path)
        try:
            for table in self.tables.values():
                conn.execute(f"DROP TABLE IF EXISTS {table}")
        finally:
            conn.close()

    def leftovers(self) -> list[str]:
        if not self.path or not Path(self.path).exists():
            return []
        conn = _open(self.path)
        try:
            # `_` is LIKE's one-character wildcard, so it is escaped to match the prefix only.
            rows = conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'racebench\\_%'"
                " ESCAPE '\\'"
            ).fetchall()
            return [name for (name,) in rows]
        finally:
            conn.close()

    def connect(self, options: ClientOptions) -> StoreClient:
        return SqliteClient(self.path, self.namespace, options)
