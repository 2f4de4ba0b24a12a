"""The tables and plain statements every SQL store shares: SQLite and the server stores.

The same reads and writes, fenced or not, serve the embedded SQLite file and PostgreSQL or
MySQL/MariaDB; only the driver's placeholder (`?` for sqlite3, `%s` for psycopg and PyMySQL)
and the way a statement is executed differ. A client class sets `placeholder`, supplies
`_run` and calls `_prepare_statements` once; the statements are built then, off the hot path.
What differs between the families (transactions, locks, error codes) stays in their modules.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

from racebench.history import Outcome
from racebench.stores.base import Conflict, StaleToken, StoreClient
from racebench.workloads.counters import CounterPlan


def table_names(namespace: str) -> dict[str, str]:
    """The tables of one run by role; the namespace prefix is what `doctor` and `clean` find."""
    return {
        "counter": f"{namespace}_counter",
        "slots": f"{namespace}_slots",
        "account": f"{namespace}_account",
        "operations": f"{namespace}_operations",
        "seats": f"{namespace}_seats",
        "bookings": f"{namespace}_bookings",
        "balances": f"{namespace}_balances",
    }


class SqlStatementTexts:
    """The statement texts for one namespace, built once by `_prepare_statements`.

    A plain mixin (no driver, no run method) so that the blocking clients and the asyncio
    PostgreSQL client share the same texts and the type checker knows every attribute.
    """

    placeholder: ClassVar[str] = "%s"
    counter: str
    slots: str
    account: str
    operations: str
    sql_read_counter: str
    sql_write_counter: str
    sql_fenced_write_counter: str
    sql_register: dict[str, str]
    sql_read_versioned: str
    sql_counter_cas: str
    sql_account_cas: str
    sql_balance: str
    sql_insert: str
    sql_read_slot: str
    sql_write_slot: str

    def _prepare_statements(self, namespace: str) -> None:
        p = self.placeholder
        t = table_names(namespace)
        self.counter, self.slots = t["counter"], t["slots"]
        self.account, self.operations = t["account"], t["operations"]
        counter, ops = self.counter, self.operations
        self.sql_read_counter = f"SELECT value FROM {counter} WHERE id = 1"
        self.sql_write_counter = f"UPDATE {counter} SET value = {p} WHERE id = 1"
        # A fenced write lands only while the writer's token is still the newest registered.
        self.sql_fenced_write_counter = (
            f"UPDATE {counter} SET value = {p} WHERE id = 1 AND fence = {p}"
        )
        # Registering a token raises the row's fence; an older token can no longer register.
        # `<=`, not `<`: the holder registering its own token again must succeed. (An UPDATE
        # that changes nothing reports 0 rows on MySQL unless the connection asks for found
        # rows, which stores/mysql.py does.)
        self.sql_register = {
            table: f"UPDATE {table} SET fence = {p} WHERE id = 1 AND fence <= {p}"
            for table in (counter, self.account)
        }
        # A version column rather than comparing the value: an ABA write (10 -> 11 -> 10)
        # between the read and the write would pass a compare on the value.
        self.sql_read_versioned = f"SELECT value, version FROM {counter} WHERE id = 1"
        self.sql_counter_cas = (
            f"UPDATE {counter} SET value = {p}, version = version + 1 "
            f"WHERE id = 1 AND version = {p}"
        )
        self.sql_account_cas = (
            f"UPDATE {self.account} SET version = version + 1 WHERE id = 1 AND version = {p}"
        )
        # The balance is the sum of the entries, never a stored total: concurrent withdrawals
        # cannot overwrite each other, so the race this shape shows is the overdraft (write
        # skew), not a lost update.
        self.sql_balance = f"SELECT COALESCE(SUM(amount), 0) FROM {ops}"
        self.sql_insert = f"INSERT INTO {ops} (amount, client, seq) VALUES ({p}, {p}, {p})"
        self.sql_read_slot = f"SELECT value FROM {self.slots} WHERE client = {p}"
        self.sql_write_slot = f"UPDATE {self.slots} SET value = {p} WHERE client = {p}"


class SqlStatements(SqlStatementTexts, StoreClient):
    """Counter, ledger and slot reads and writes, with and without a fencing token."""

    @abstractmethod
    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """Execute one statement and return the cursor (rowcount, fetchone)."""

    def _scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """The first column of the first row."""
        return self._run(sql, params).fetchone()[0]

    def _register(self, table: str, token: int) -> None:
        """Raise `table`'s fence to `token`; StaleToken if a newer token got there first."""
        if self._run(self.sql_register[table], (token, token)).rowcount == 0:
            raise StaleToken

    def read_counter(self, token: int | None = None) -> int:
        if token is not None:
            self._register(self.counter, token)
        return self._scalar(self.sql_read_counter)

    def write_counter(self, value: int, token: int | None = None) -> None:
        if token is None:
            self._run(self.sql_write_counter, (value,))
        elif self._run(self.sql_fenced_write_counter, (value, token)).rowcount == 0:
            raise StaleToken

    def read_balance(self, token: int | None = None) -> int:
        if token is not None:
            self._register(self.account, token)
        return int(self._scalar(self.sql_balance))

    def _insert(self, amount: int, seq: int) -> None:
        self._run(self.sql_insert, (amount, self.options.client_id, seq))

    def read_slot(self) -> int:
        return self._scalar(self.sql_read_slot, (self.options.client_id,))

    def write_slot(self, value: int) -> None:
        self._run(self.sql_write_slot, (value, self.options.client_id))

    def _counter_cas(self, plan: CounterPlan) -> Outcome:
        """Compare-and-set on the version read; a miss is a Conflict, retried by the caller."""
        value, version = self._run(self.sql_read_versioned).fetchone()
        self.read_value = value
        self.pause()
        if plan.floor is not None and value + plan.delta < plan.floor:
            return Outcome.REJECTED
        if self._run(self.sql_counter_cas, (value + plan.delta, version)).rowcount == 0:
            raise Conflict("version_changed")
        self.written_value = value + plan.delta
        return Outcome.OK
