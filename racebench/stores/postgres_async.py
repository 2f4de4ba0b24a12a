"""PostgreSQL clients on the worker's event loop, through psycopg's AsyncConnection.

For the strategies whose operation is one statement or a read and a write in autocommit
(`none`, `crdt`, `atomic`), so that a thousand clients need no thousand threads. The
statements are the blocking client's (racebench.stores.sql_statements); psycopg prepares
each on the server once it has run a few times (prepare_threshold), as `pgbench -M
prepared` does. Strategies that hold a transaction open (isolation levels, FOR UPDATE,
advisory locks, optimistic) keep the blocking client on a thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from racebench.errors import BackendUnavailable
from racebench.history import Outcome
from racebench.stores.base import (
    OK_STEP,
    AsyncStoreClient,
    ClientOptions,
    Conflict,
    StepResult,
)
from racebench.stores.postgres import connect_args
from racebench.stores.sql import LOCK_WAIT_S, LockWaitTimeout
from racebench.stores.sql_statements import SqlStatementTexts
from racebench.util.redact import redact_text
from racebench.workloads.counters import CounterPlan, LedgerPlan

CONFLICT_CODES = frozenset({"40001", "40P01"})
# Prepare a statement on its first use: the hot loop runs the same few statements.
_PREPARE_THRESHOLD = 0


class AsyncPostgresClient(SqlStatementTexts, AsyncStoreClient):
    """One client's AsyncConnection (autocommit), with the shared SQL statements."""

    placeholder = "%s"

    def __init__(self, url: str, namespace: str, options: ClientOptions) -> None:
        super().__init__(options)
        self.url = url
        # The same statement texts as the blocking client (SqlStatementTexts is a plain mixin).
        self._prepare_statements(namespace)
        self.sql_guarded_insert = (
            f"INSERT INTO {self.operations} (amount, client, seq) "
            f"SELECT %s, %s, %s WHERE ({self.sql_balance}) >= %s"
        )
        self.conn: Any = None
        self.cur: Any = None

    async def connect(self) -> None:
        import psycopg

        conninfo, kwargs = connect_args(self.url)
        try:
            self.conn = await psycopg.AsyncConnection.connect(
                conninfo, prepare_threshold=_PREPARE_THRESHOLD, **kwargs
            )
        except psycopg.OperationalError as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BackendUnavailable(
                f"postgres: cannot connect to {redact_text(self.url)}: {redact_text(message)}"
            ) from None
        await self.conn.execute(f"SET lock_timeout = {max(1, round(LOCK_WAIT_S * 1000))}")
        self.cur = self.conn.cursor()

    async def _run(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        import psycopg

        try:
            await self.cur.execute(sql, params)
        except psycopg.Error as exc:
            code = getattr(exc, "sqlstate", None)
            if code in CONFLICT_CODES:
                raise Conflict(code) from exc
            if code == "55P03":
                raise LockWaitTimeout(code) from exc
            raise
        return self.cur

    async def _scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        cur = await self._run(sql, params)
        return (await cur.fetchone())[0]

    async def read_counter(self) -> int:
        return int(await self._scalar(self.sql_read_counter))

    async def write_counter(self, value: int) -> None:
        await self._run(self.sql_write_counter, (value,))

    async def read_balance(self) -> int:
        return int(await self._scalar(self.sql_balance))

    async def append_entry(self, amount: int, seq: int) -> None:
        await self._run(self.sql_insert, (amount, self.options.client_id, seq))

    async def read_slot(self) -> int:
        return int(await self._scalar(self.sql_read_slot, (self.options.client_id,)))

    async def write_slot(self, value: int) -> None:
        await self._run(self.sql_write_slot, (value, self.options.client_id))

    def step_for(
        self, strategy: str, plan: CounterPlan | LedgerPlan
    ) -> Callable[[int], Awaitable[StepResult]]:
        assert strategy == "atomic"
        if isinstance(plan, CounterPlan):
            if plan.floor is None:
                sql = f"UPDATE {self.counter} SET value = value + %s WHERE id = 1"
                params: tuple[int, ...] = (plan.delta,)
            else:
                sql = (
                    f"UPDATE {self.counter} SET value = value + %s "
                    "WHERE id = 1 AND value + %s >= %s"
                )
                params = (plan.delta, plan.delta, plan.floor)

            async def counter_once() -> Outcome:
                cur = await self._run(sql, params)
                return Outcome.OK if cur.rowcount else Outcome.REJECTED

            async def counter(seq: int) -> StepResult:
                return await self.retrying(counter_once)

            return counter

        async def withdraw(seq: int) -> StepResult:
            params = (-plan.amount, self.options.client_id, seq, plan.amount)

            async def once() -> Outcome:
                cur = await self._run(self.sql_guarded_insert, params)
                return Outcome.OK if cur.rowcount else Outcome.REJECTED

            result = await self.retrying(once)
            return result if result.outcome != Outcome.OK else OK_STEP

        return withdraw

    def _broken(self) -> bool:
        return self.conn is None or self.conn.closed or self.conn.broken

    def classify(self, exc: BaseException) -> Outcome:
        import psycopg

        if isinstance(exc, LockWaitTimeout):
            return Outcome.LOCK_TIMEOUT
        if isinstance(exc, psycopg.OperationalError) and self._broken():
            return Outcome.UNKNOWN  # the write may have committed before the answer was lost
        return super().classify(exc)

    async def recover(self) -> None:
        if self._broken():
            with suppress(Exception):
                await self.conn.close()
            with suppress(BackendUnavailable):  # the next operation fails and says why
                await self.connect()

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
