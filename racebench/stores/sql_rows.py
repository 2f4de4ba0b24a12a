"""The booking and transfer workloads on SQL: tables, statements and strategies.

SQLite and the server stores (PostgreSQL, MySQL/MariaDB) share these operations; a client
family supplies how a locking or serializable transaction starts (`_row_transaction`), how a
row is read under a lock (`_locked_read_sql`) and what a unique-index violation looks like.

Booking is check-then-insert: `SELECT count(*) ... WHERE seat = s`, then `INSERT` when free.
Two clients can both count zero and both insert (write skew over a predicate, a phantom).
Transfer reads two balances and writes both; two transfers over a shared account overwrite
each other (lost update), and a reader between the two writes sees money in flight.
"""

from __future__ import annotations

import random
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

from racebench.history import Outcome
from racebench.stores.base import StepResult
from racebench.stores.sql_statements import SqlStatements
from racebench.workloads.counters import FinalState
from racebench.workloads.rows import BookingPlan, RowPlan, TransferPlan, pack_transfer

Execute = Callable[..., Any]


def create_row_tables(
    execute: Execute, plan: RowPlan, tables: dict[str, str], id_column: str, p: str, opts: str
) -> None:
    """Create and seed the tables of a booking or transfer plan (`p`: the placeholder)."""
    if isinstance(plan, BookingPlan):
        # One row per seat, for `for_update` to lock: the conflict materialised.
        execute(f"CREATE TABLE {tables['seats']} (id INTEGER PRIMARY KEY)" + opts)
        for seat in range(plan.seats):
            execute(f"INSERT INTO {tables['seats']} (id) VALUES ({p})", (seat,))
        # `claim` is NULL except under `constraint`, which sets it to the seat: the unique
        # index then refuses a second booking (NULLs never collide in a unique index).
        execute(
            f"CREATE TABLE {tables['bookings']} ({id_column}, seat INTEGER NOT NULL,"
            " client INTEGER NOT NULL, seq BIGINT NOT NULL, claim INTEGER UNIQUE)" + opts
        )
        # The count is an index range read: MySQL's SERIALIZABLE locks that gap, not the table.
        execute(f"CREATE INDEX {tables['bookings']}_seat ON {tables['bookings']} (seat)")
        return
    execute(
        f"CREATE TABLE {tables['balances']} (id INTEGER PRIMARY KEY, balance BIGINT NOT NULL)"
        + opts
    )
    for account, balance in enumerate(plan.opening_balances()):
        execute(
            f"INSERT INTO {tables['balances']} (id, balance) VALUES ({p}, {p})", (account, balance)
        )


def read_row_final(
    query: Callable[[str], list[Any]], plan: RowPlan, tables: dict[str, str]
) -> FinalState:
    """The bookings in insert order, or the balances by account."""
    if isinstance(plan, BookingPlan):
        rows = query(f"SELECT seat, client, seq FROM {tables['bookings']} ORDER BY id")
        return FinalState(bookings=[(int(s), int(c), int(q)) for s, c, q in rows])
    rows = query(f"SELECT balance FROM {tables['balances']} ORDER BY id")
    return FinalState(balances=[int(b) for (b,) in rows])


class RowOperations(SqlStatements):
    """Booking and transfer on a SQL client; `row_attempt` is the unguarded operation.

    Each attempt sets the client's `read_value` / `written_value` (BookingWorkload and
    TransferWorkload say what they hold).
    """

    @abstractmethod
    def _row_transaction(self, kind: str, body: Callable[[], Outcome]) -> Outcome:
        """`body` in one transaction: kind `lock` (rows locked as read, or SQLite's database
        write lock) or `serializable`; rolled back on failure."""

    @abstractmethod
    def _locked_read_sql(self, table: str, column: str) -> str:
        """A statement reading `column` of one row by id (one placeholder) that locks the row
        until commit."""

    @abstractmethod
    def _is_unique_violation(self, exc: BaseException) -> bool: ...

    def _prepare_row_statements(self, namespace_tables: dict[str, str]) -> None:
        p = self.placeholder
        bookings, balances = namespace_tables["bookings"], namespace_tables["balances"]
        self.sql_count_seat = f"SELECT count(*) FROM {bookings} WHERE seat = {p}"
        self.sql_book = (
            f"INSERT INTO {bookings} (seat, client, seq, claim) VALUES ({p}, {p}, {p}, {p})"
        )
        self.sql_lock_seat = self._locked_read_sql(namespace_tables["seats"], "id")
        self.sql_read_two = f"SELECT id, balance FROM {balances} WHERE id IN ({p}, {p})"
        self.sql_lock_balance = self._locked_read_sql(balances, "balance")
        self.sql_write_balance = f"UPDATE {balances} SET balance = {p} WHERE id = {p}"
        self.sql_read_all = f"SELECT balance FROM {balances}"
        self._rng = random.Random()

    # -- booking --------------------------------------------------------------------------
    def _book(self, plan: BookingPlan, seq: int, constrained: bool, lock_seat: bool) -> Outcome:
        seat = plan.seat_for(seq, self._rng.getrandbits(31))
        if lock_seat:
            self._run(self.sql_lock_seat, (seat,))
        taken = self.read_value = self._scalar(self.sql_count_seat, (seat,))
        self.written_value = seat
        self.pause()
        if taken:
            return Outcome.REJECTED
        try:
            self._run(
                self.sql_book, (seat, self.options.client_id, seq, seat if constrained else None)
            )
        except Exception as exc:
            if constrained and self._is_unique_violation(exc):
                return Outcome.REJECTED  # the database refused the second booking
            raise
        return Outcome.OK

    # -- transfer -------------------------------------------------------------------------
    def _read_total(self) -> Outcome:
        # Paced like the writers (before the first statement, so no snapshot is held open):
        # a reader without a race window would finish before the writers got going.
        self.pause()
        self.read_value = sum(int(b) for (b,) in self._run(self.sql_read_all).fetchall())
        return Outcome.OK

    def _transfer(self, plan: TransferPlan, locking: bool) -> Outcome:
        source, target, amount = plan.pick(self._rng)
        if locking:
            # Sorted, every client locks the lower id first and no cycle can form; in the
            # transfer's own order two opposite transfers lock crosswise: a deadlock.
            first, second = (source, target)
            if self.options.lock_order == "sorted":
                first, second = sorted((source, target))
            balance = {first: self._scalar(self.sql_lock_balance, (first,))}
            self.pause()
            balance[second] = self._scalar(self.sql_lock_balance, (second,))
        else:
            balance = dict(self._run(self.sql_read_two, (source, target)).fetchall())
            self.pause()
        self.read_value = balance[source]
        self.written_value = pack_transfer(source, target, amount)
        if balance[source] < amount:
            return Outcome.REJECTED
        self._run(self.sql_write_balance, (balance[source] - amount, source))
        self._run(self.sql_write_balance, (balance[target] + amount, target))
        return Outcome.OK

    # -- dispatch -------------------------------------------------------------------------
    def row_attempt(self, plan: RowPlan, seq: int) -> Outcome:
        """The unguarded operation (strategies `none` and `lock`)."""
        if isinstance(plan, BookingPlan):
            return self._book(plan, seq, constrained=False, lock_seat=False)
        if self.options.client_id < plan.readers:
            return self._read_total()
        return self._transfer(plan, locking=False)

    def row_step(self, strategy: str, plan: RowPlan, seq: int) -> StepResult:
        """One operation under `strategy` (any but `lock`), conflicts retried."""
        if strategy == "none":
            return StepResult(self.row_attempt(plan, seq))
        kind = "serializable" if strategy == "serializable" else "lock"
        locking = kind == "lock"
        if isinstance(plan, BookingPlan):
            if strategy == "constraint":
                return StepResult(self._book(plan, seq, constrained=True, lock_seat=False))
            return self.retrying(
                lambda: self._row_transaction(
                    kind, lambda: self._book(plan, seq, constrained=False, lock_seat=locking)
                )
            )
        if self.options.client_id < plan.readers:
            # One statement reads every balance from one snapshot; SERIALIZABLE readers take
            # part in the writers' dependency tracking, so they run in such a transaction.
            if strategy != "serializable":
                return StepResult(self._read_total())
            return self.retrying(lambda: self._row_transaction(kind, self._read_total))
        return self.retrying(
            lambda: self._row_transaction(kind, lambda: self._transfer(plan, locking))
        )
