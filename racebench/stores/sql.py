"""What the PostgreSQL and MySQL/MariaDB stores share: tables, statements and strategies.

Both drivers (psycopg 3, PyMySQL) take `%s` placeholders, so one set of statements serves both
servers; a subclass supplies the connection, the transaction start, the error codes and its
native lock (`advisory` or `get_lock`). Clients run in autocommit: every statement outside an
explicit transaction is its own transaction, which is what the `none` race needs.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Any, ClassVar

from racebench.errors import BackendUnavailable
from racebench.history import Outcome
from racebench.stores.base import (
    ALL_WORKLOADS,
    ROW_WORKLOADS,
    ClientOptions,
    Conflict,
    StaleToken,
    StepResult,
    Store,
    StrategySpec,
)
from racebench.stores.sql_rows import RowOperations, create_row_tables, read_row_final
from racebench.stores.sql_statements import table_names
from racebench.workloads.counters import CounterPlan, FinalState, LedgerPlan, LedgerRow, Plan
from racebench.workloads.rows import BookingPlan, RowPlan, TransferPlan

# How long a client waits for a row lock or a native lock before the operation is recorded as
# a lock timeout: long enough for any sane contention, short enough never to look like a hang.
LOCK_WAIT_S = 30
CONNECT_TIMEOUT_S = 5
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

ISOLATION_LEVELS = {
    "read_committed": "READ COMMITTED",
    "repeatable_read": "REPEATABLE READ",
    "serializable": "SERIALIZABLE",
}
COUNTERS = frozenset({"stock", "likes"})
UNIQUE_VIOLATION = frozenset({"23505", "1062"})  # PostgreSQL's SQLSTATE, MySQL's error number


class LockWaitTimeout(Exception):
    """A row or native lock was not granted within LOCK_WAIT_S."""


def common_strategies() -> dict[str, StrategySpec]:
    """The strategies both servers offer with the same guarantee; isolation levels differ."""
    return {
        "atomic": StrategySpec(
            "one conditional statement: UPDATE ... SET units = units - 1 WHERE units >= 1; "
            "for withdraw INSERT ... SELECT ... WHERE (SELECT SUM(amount) ...) >= amount",
            prevents="lost update and oversell on counters (the UPDATE re-checks its WHERE on "
            "the latest row version under the row lock)",
            allows="overdraft on withdraw: the guarded INSERT reads the sum from a statement "
            "snapshot, so under READ COMMITTED two concurrent withdrawals can both pass",
            safe_for=COUNTERS,
        ),
        "optimistic": StrategySpec(
            "read value and version, UPDATE ... WHERE version = the one read, retried on a "
            "miss (withdraw: the account row's version guards the whole ledger)",
            prevents="lost update, oversell, overdraft (costs retries under contention)",
        ),
        "for_update": StrategySpec(
            "SELECT ... FOR UPDATE, then the write, in one READ COMMITTED transaction "
            "(withdraw: lock the account row, the aggregate root)",
            prevents="lost update, oversell, overdraft (the row lock serialises the clients); "
            "booking: lock the seat's row, the conflict materialised; transfer: lock both "
            "accounts (guard.lock_order random deadlocks, and the victim is retried)",
            safe_for=ALL_WORKLOADS | ROW_WORKLOADS,
            supports=ALL_WORKLOADS | ROW_WORKLOADS,
        ),
        "constraint": CONSTRAINT_STRATEGY,
    }


CONSTRAINT_STRATEGY = StrategySpec(
    "booking: the unguarded count-then-insert, with a unique index on the booked seat",
    prevents="double booking: the database refuses the second insert, which is rejected",
    safe_for=frozenset({"booking"}),
    supports=frozenset({"booking"}),
)


class SqlClient(RowOperations):
    """One client's connection; the statements and strategies shared by both servers."""

    conflict_codes: ClassVar[frozenset[str]]
    lock_wait_codes: ClassVar[frozenset[str]] = frozenset()
    native_lock: ClassVar[str]
    from_dual: ClassVar[str] = ""  # MySQL needs FROM DUAL for a SELECT with WHERE and no table
    # Set by `_open`: the driver's connection and cursor (untyped across two drivers) and the
    # base class of the driver's errors.
    conn: Any
    cur: Any
    driver_error: type[Exception]

    def __init__(self, url: str, namespace: str, options: ClientOptions) -> None:
        super().__init__(options)
        self.url = url
        self.namespace = namespace
        self._prepare_statements(namespace)
        self._prepare_row_statements(table_names(namespace))
        self.sql_guarded_insert = (
            f"INSERT INTO {self.operations} (amount, client, seq) "
            f"SELECT %s, %s, %s{self.from_dual} "
            f"WHERE ({self.sql_balance}) >= %s"
        )
        self._cs = [0, 0]
        # True once a reconnect failed: the next operation cannot have reached the server.
        self._dead = False
        self._open()

    # -- what a server module supplies --------------------------------------------------
    @abstractmethod
    def _open(self) -> None:
        """Open `self.conn` and `self.cur` (autocommit) and set `self.driver_error`."""

    @abstractmethod
    def _error_code(self, exc: BaseException) -> str | None: ...

    @abstractmethod
    def _connection_lost(self, exc: BaseException) -> bool: ...

    @abstractmethod
    def _begin(self, level: str) -> None:
        """Start a transaction at isolation `level` (e.g. 'READ COMMITTED')."""

    @abstractmethod
    def _native_locked(self, body: Callable[[], Outcome]) -> Outcome:
        """Run `body` holding the server's native lock; set self._cs around it."""

    # -- booking and transfer (racebench.stores.sql_rows) ---------------------------------
    def _row_transaction(self, kind: str, body: Callable[[], Outcome]) -> Outcome:
        return self._transaction(
            "SERIALIZABLE" if kind == "serializable" else "READ COMMITTED", body
        )

    def _locked_read_sql(self, table: str, column: str) -> str:
        return f"SELECT {column} FROM {table} WHERE id = %s FOR UPDATE"

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, self.driver_error) and self._error_code(exc) in UNIQUE_VIOLATION

    # -- statements ---------------------------------------------------------------------
    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """Execute one statement; retryable server errors become Conflict(code)."""
        try:
            self.cur.execute(sql, params)
        except self.driver_error as exc:
            code = self._error_code(exc)
            if code in self.conflict_codes:
                raise Conflict(code) from exc
            if code in self.lock_wait_codes:
                raise LockWaitTimeout(code) from exc
            raise
        return self.cur

    def _rowcount(self, sql: str, params: tuple[int, ...]) -> int:
        """Rows a one-statement strategy (atomic) changed; a server may run it leaner."""
        return int(self._run(sql, params).rowcount)

    def _transaction(self, level: str, body: Callable[[], Outcome]) -> Outcome:
        """`body` inside one transaction at `level`; rolled back on any failure."""
        self._begin(level)
        try:
            outcome = body()
            self._run("COMMIT")  # PostgreSQL SERIALIZABLE may refuse here with 40001
        except BaseException:
            self._rollback_quietly()
            raise
        return outcome

    def _rollback_quietly(self) -> None:
        with suppress(self.driver_error):  # the connection is gone; recover() reconnects
            self.cur.execute("ROLLBACK")

    # -- fenced append (the other primitives: SqlStatements) ---------------------------
    def append_entry(self, amount: int, seq: int, token: int | None = None) -> None:
        if token is None:
            self._insert(amount, seq)
            return

        # The row lock on the account keeps a newer holder from registering its token between
        # the check and the insert; it is released at commit, with the entry visible.
        def fenced() -> Outcome:
            fence = self._scalar(f"SELECT fence FROM {self.account} WHERE id = 1 FOR UPDATE")
            if fence != token:
                raise StaleToken
            self._insert(amount, seq)
            return Outcome.OK

        self._transaction("READ COMMITTED", fenced)

    # -- strategies ---------------------------------------------------------------------
    def counter_step(self, strategy: str, plan: CounterPlan) -> StepResult:
        if strategy == "atomic":
            return self.retrying(lambda: self._counter_atomic(plan))
        if strategy == "optimistic":
            return self.retrying(lambda: self._counter_cas(plan))
        if strategy == "for_update":
            return self._critical(
                lambda: self._transaction("READ COMMITTED", lambda: self._counter_locked(plan))
            )
        if strategy == self.native_lock:
            return self._critical(lambda: self._native_locked(lambda: self._counter_rw(plan)))
        if strategy in ISOLATION_LEVELS:
            level = ISOLATION_LEVELS[strategy]
            return self.retrying(lambda: self._transaction(level, lambda: self._counter_rw(plan)))
        return super().counter_step(strategy, plan)

    def ledger_step(self, strategy: str, plan: LedgerPlan, seq: int) -> StepResult:
        if strategy == "atomic":
            return self.retrying(lambda: self._ledger_atomic(plan, seq))
        if strategy == "optimistic":
            return self.retrying(lambda: self._ledger_cas(plan, seq))
        if strategy == "for_update":
            return self._critical(
                lambda: self._transaction("READ COMMITTED", lambda: self._ledger_locked(plan, seq))
            )
        if strategy == self.native_lock:
            return self._critical(lambda: self._native_locked(lambda: self._ledger_rw(plan, seq)))
        if strategy in ISOLATION_LEVELS:
            level = ISOLATION_LEVELS[strategy]
            return self.retrying(
                lambda: self._transaction(level, lambda: self._ledger_rw(plan, seq))
            )
        return super().ledger_step(strategy, plan, seq)

    def _critical(self, attempt: Callable[[], Outcome]) -> StepResult:
        """Retry `attempt` and report the critical section of the attempt that finished."""

        def once() -> Outcome:
            self._cs = [0, 0]
            return attempt()

        try:
            result = self.retrying(once)
        except LockWaitTimeout:
            return StepResult(Outcome.LOCK_TIMEOUT)
        if self._cs[1]:
            return replace(result, cs_start=self._cs[0], cs_end=self._cs[1])
        return result

    def _apply(self, plan: CounterPlan, value: int) -> Outcome:
        self.read_value = value
        if plan.floor is not None and value + plan.delta < plan.floor:
            return Outcome.REJECTED
        self.write_counter(value + plan.delta)
        self.written_value = value + plan.delta
        return Outcome.OK

    def _counter_rw(self, plan: CounterPlan) -> Outcome:
        """The plain read-then-write; safe only as far as the surrounding guard makes it."""
        value = self.read_counter()
        self.pause()
        return self._apply(plan, value)

    def _counter_locked(self, plan: CounterPlan) -> Outcome:
        value = self._scalar(f"SELECT value FROM {self.counter} WHERE id = 1 FOR UPDATE")
        self._cs[0] = time.monotonic_ns()
        self.pause()
        outcome = self._apply(plan, value)
        # Taken before COMMIT releases the row lock, so a recorded section never outlasts it.
        self._cs[1] = time.monotonic_ns()
        return outcome

    def _counter_atomic(self, plan: CounterPlan) -> Outcome:
        if plan.floor is None:
            sql = f"UPDATE {self.counter} SET value = value + %s WHERE id = 1"
            rowcount = self._rowcount(sql, (plan.delta,))
        else:
            sql = f"UPDATE {self.counter} SET value = value + %s WHERE id = 1 AND value + %s >= %s"
            rowcount = self._rowcount(sql, (plan.delta, plan.delta, plan.floor))
        return Outcome.OK if rowcount else Outcome.REJECTED

    def _ledger_rw(self, plan: LedgerPlan, seq: int) -> Outcome:
        balance = self.read_value = self.read_balance()
        self.pause()
        if balance < plan.amount:
            return Outcome.REJECTED
        self._insert(-plan.amount, seq)
        self.written_value = -plan.amount
        return Outcome.OK

    def _ledger_locked(self, plan: LedgerPlan, seq: int) -> Outcome:
        # Lock the aggregate root: every withdrawal takes this row lock first, so the sum read
        # next (a fresh READ COMMITTED snapshot) includes every earlier holder's entry.
        self._run(f"SELECT id FROM {self.account} WHERE id = 1 FOR UPDATE")
        self._cs[0] = time.monotonic_ns()
        outcome = self._ledger_rw(plan, seq)
        self._cs[1] = time.monotonic_ns()
        return outcome

    def _ledger_atomic(self, plan: LedgerPlan, seq: int) -> Outcome:
        rowcount = self._rowcount(
            self.sql_guarded_insert, (-plan.amount, self.options.client_id, seq, plan.amount)
        )
        return Outcome.OK if rowcount else Outcome.REJECTED

    def _ledger_cas(self, plan: LedgerPlan, seq: int) -> Outcome:
        # Version and sum from one statement, hence one snapshot: a withdrawal committed after
        # it bumps the version and the compare-and-set below misses.
        version, balance = self._run(
            f"SELECT version, ({self.sql_balance}) FROM {self.account} WHERE id = 1"
        ).fetchone()
        self.read_value = int(balance)
        self.pause()
        if balance < plan.amount:
            return Outcome.REJECTED

        def commit_if_unchanged() -> Outcome:
            if self._run(self.sql_account_cas, (version,)).rowcount == 0:
                raise Conflict("version_changed")
            self._insert(-plan.amount, seq)
            self.written_value = -plan.amount
            return Outcome.OK

        return self._transaction("READ COMMITTED", commit_if_unchanged)

    # -- failures -----------------------------------------------------------------------
    def classify(self, exc: BaseException) -> Outcome:
        if isinstance(exc, LockWaitTimeout):
            return Outcome.LOCK_TIMEOUT
        if self._dead:
            return Outcome.ERROR  # nothing was sent: the connection was already gone
        if self._connection_lost(exc):
            return Outcome.UNKNOWN  # the write may have committed before the answer was lost
        return super().classify(exc)

    def recover(self) -> None:
        if self._dead or self._broken():
            with suppress(Exception):  # closing a dead connection may fail; it is replaced
                self.close()
            try:
                self._open()
                self._dead = False
            except BackendUnavailable:
                self._dead = True
            return
        self._rollback_quietly()

    @abstractmethod
    def _broken(self) -> bool: ...


class SqlStore(Store):
    """A server-backed SQL store: tables created, seeded and dropped through an admin session."""

    workloads = ALL_WORKLOADS | ROW_WORKLOADS
    id_column: ClassVar[str]  # the auto-numbered id of the ledger
    table_options: ClassVar[str] = ""

    def __init__(self, url: str | None, namespace: str) -> None:
        super().__init__(url, namespace)
        self.tables = table_names(namespace)
        # Whether setup created anything: a teardown after a refused CREATE has nothing to drop
        # (and a user without CREATE usually lacks DROP, whose error would hide the first).
        self._created = False

    @abstractmethod
    def _open_connection(self, url: str) -> Any:
        """An autocommit connection (BackendUnavailable if none)."""

    @abstractmethod
    def _server_facts(self, url: str) -> dict[str, str]:
        """Server kind and version (BackendUnavailable if unreachable)."""

    def _url(self) -> str:
        assert self.url is not None
        return self.url

    def check_reachable(self) -> dict[str, str]:
        return self._server_facts(self._url())

    @abstractmethod
    def _missing_privilege(self, exc: BaseException) -> str | None:
        """One line naming the privilege the server refused, if that is what `exc` is."""

    @contextmanager
    def _admin(self) -> Iterator[Any]:
        """An autocommit cursor on a fresh connection (BackendUnavailable if none, or when the
        server refuses a statement for lack of a privilege)."""
        conn = self._open_connection(self._url())
        try:
            with conn.cursor() as cur:
                yield cur
        except Exception as exc:
            if (problem := self._missing_privilege(exc)) is not None:
                raise BackendUnavailable(f"{self.backend}: {problem}") from None
            raise
        finally:
            conn.close()

    def check_can_create(self) -> str:
        probe = self.tables["counter"]  # a name teardown and `clean` know
        with self._admin() as cur:
            cur.execute(f"CREATE TABLE {probe} (id INTEGER PRIMARY KEY)" + self.table_options)
            cur.execute(f"DROP TABLE {probe}")
        return "can create and drop tables"

    @abstractmethod
    def _list_tables_sql(self) -> str:
        """A query with one %s (a LIKE pattern) listing this database's tables."""

    def setup(self, plan: Plan | RowPlan, clients: int) -> None:
        t, opts = self.tables, self.table_options
        with self._admin() as cur:
            if isinstance(plan, BookingPlan | TransferPlan):

                def execute(sql: str, params: tuple[Any, ...] = ()) -> None:
                    cur.execute(sql, params)
                    self._created = True  # from the first CREATE on, teardown drops

                create_row_tables(execute, plan, t, self.id_column, "%s", opts)
            elif isinstance(plan, CounterPlan):
                cur.execute(
                    f"CREATE TABLE {t['counter']} (id INTEGER PRIMARY KEY, value BIGINT NOT NULL,"
                    " version BIGINT NOT NULL DEFAULT 0, fence BIGINT NOT NULL DEFAULT 0)" + opts
                )
                self._created = True
                cur.execute(
                    f"INSERT INTO {t['counter']} (id, value) VALUES (1, %s)", (plan.initial,)
                )
                cur.execute(
                    f"CREATE TABLE {t['slots']} (client INTEGER PRIMARY KEY,"
                    " value BIGINT NOT NULL)" + opts
                )
                cur.executemany(
                    f"INSERT INTO {t['slots']} (client, value) VALUES (%s, 0)",
                    [(i,) for i in range(clients)],
                )
            else:
                cur.execute(
                    f"CREATE TABLE {t['account']} (id INTEGER PRIMARY KEY,"
                    " version BIGINT NOT NULL DEFAULT 0, fence BIGINT NOT NULL DEFAULT 0)" + opts
                )
                self._created = True
                cur.execute(f"INSERT INTO {t['account']} (id) VALUES (1)")
                cur.execute(
                    f"CREATE TABLE {t['operations']} ({self.id_column},"
                    " amount BIGINT NOT NULL, client INTEGER NOT NULL, seq BIGINT NOT NULL)" + opts
                )
                cur.execute(
                    f"INSERT INTO {t['operations']} (amount, client, seq) VALUES (%s, -1, 0)",
                    (plan.deposit,),
                )

    def read_final(self, plan: Plan | RowPlan) -> FinalState:
        t = self.tables
        with self._admin() as cur:
            if isinstance(plan, BookingPlan | TransferPlan):

                def query(sql: str) -> list[Any]:
                    cur.execute(sql)
                    return list(cur.fetchall())

                return read_row_final(query, plan, t)
            if isinstance(plan, CounterPlan):
                cur.execute(f"SELECT value FROM {t['counter']} WHERE id = 1")
                value = cur.fetchone()[0]
                cur.execute(f"SELECT COALESCE(SUM(value), 0) FROM {t['slots']}")
                return FinalState(value=int(value), slots_total=int(cur.fetchone()[0]))
            cur.execute(f"SELECT amount, client, seq FROM {t['operations']} ORDER BY id")
            return FinalState(rows=[LedgerRow(*row) for row in cur.fetchall()])

    def _drop(self, tables: list[str]) -> None:
        with self._admin() as cur:
            cur.execute("DROP TABLE IF EXISTS " + ", ".join(tables))

    def teardown(self) -> None:
        if self._created:
            self._drop(list(self.tables.values()))
            self._created = False

    def remove_namespace(self) -> None:
        # With the fence table a SQL lock service (advisory, get_lock) keeps in this database,
        # and every other table named after the namespace: a SQL template's `{{table:x}}`
        # tables are `<namespace>_x`, and the namespace (owner pid and host) is unique.
        prefix = self.namespace.replace("_", "\\_") + "\\_%"
        with self._admin() as cur:
            cur.execute(self._list_tables_sql(), (prefix,))
            named = [name for (name,) in cur.fetchall()]
        self._drop(sorted({*self.tables.values(), f"{self.namespace}_lock", *named}))

    def leftovers(self) -> list[str]:
        with self._admin() as cur:
            cur.execute(self._list_tables_sql(), ("racebench\\_%",))
            return sorted(name for (name,) in cur.fetchall())
