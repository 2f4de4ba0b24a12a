"""What the lean asyncio SQL clients share: one statement in flight, its reply as a future.

PostgreSQL (racebench.stores.postgres_lean) and MySQL/MariaDB (racebench.stores.mysql_lean)
run their hot statements here, on the worker's event loop: the driver (psycopg, PyMySQL)
opens and authenticates the connection, then this module writes pre-encoded protocol
messages on its socket and parses only what the hot loop needs from the reply: the row
count, the first column of the first row, or the server's error code. Why not the drivers'
own asyncio APIs is measured in each server's module and in docs/engine.md.

A reply is `(rowcount, first value or None)`. A server error reply raises ServerError (a
retryable code becomes Conflict, a lock wait timeout LockWaitTimeout); a connection lost
with a statement in flight raises ConnectionLost, an unknown outcome (the write may have
committed); an operation started while the connection is down raises NotConnected (nothing
was sent: an error), and `recover` reconnects.
"""

from __future__ import annotations

import asyncio
import socket
from abc import abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import ClassVar, cast

from racebench.errors import BackendUnavailable
from racebench.history import Outcome
from racebench.stores.base import (
    OK_STEP,
    AsyncStoreClient,
    ClientOptions,
    Conflict,
    StepResult,
    UnknownOutcome,
)
from racebench.stores.sql import LockWaitTimeout
from racebench.stores.sql_statements import SqlStatementTexts
from racebench.workloads.counters import CounterPlan, LedgerPlan

Reply = tuple[int, bytes | None]


class ServerError(Exception):
    """The server refused a statement: `code` is the SQLSTATE (PostgreSQL) or the error
    number (MySQL), as the blocking clients report it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class ConnectionLost(UnknownOutcome):
    """The connection died with a statement in flight: it may have committed."""


class NotConnected(Exception):
    """The connection was already down: the statement was never sent."""


class LeanProtocol(asyncio.Protocol):
    """Replies come back in request order; a subclass frames them and calls `_resolve`."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None, server: str) -> None:
        # No loop: the parser alone, driven by a blocking socket (see BlockingReplies).
        self._create_future = loop.create_future if loop is not None else None
        self._waiters: deque[asyncio.Future[Reply]] = deque()
        self._buffer = bytearray()
        self._server = server
        self._write: Callable[[bytes], None] | None = None
        self._transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._write = self._transport.write

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = ConnectionLost(
            f"connection to {self._server} lost: {exc or 'closed by the server'}"
        )
        self._write = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(self.lost)

    def _resolve(self, reply: Reply | None, error: Exception | None = None) -> None:
        if not self._waiters:
            return  # unasked (a server closing a killed session says why): connection_lost follows
        waiter = self._waiters.popleft()
        if waiter.done():  # cancelled (Ctrl-C)
            return
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(cast(Reply, reply))

    def send(self, payload: bytes) -> asyncio.Future[Reply]:
        """Write one statement's messages; a future of its reply."""
        write = self._write
        if write is None or self._create_future is None:
            raise NotConnected(f"not connected to {self._server}: {self.lost}")
        waiter: asyncio.Future[Reply] = self._create_future()
        self._waiters.append(waiter)
        write(payload)
        return waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class BlockingReplies:
    """A protocol's parser driven by a blocking socket, on a client's own thread.

    Below a few dozen clients per worker, a thread per client blocked in recv() reaches the
    server's pace better than one event loop: on a busy machine the scheduler wakes each
    thread on its own, as it does the C tools' threads, while a descheduled loop stalls all
    its clients at once (docs/engine.md has the figures).
    """

    def __init__(self, protocol: LeanProtocol) -> None:
        self.protocol = protocol
        self._reply: Reply | None = None
        self._error: Exception | None = None
        protocol._resolve = self._resolve  # type: ignore[method-assign]

    def _resolve(self, reply: Reply | None, error: Exception | None = None) -> None:
        self._reply, self._error = reply, error

    def call(self, sock: socket.socket, payload: bytes) -> Reply:
        """Send `payload`, read until its reply is complete; ServerError for an error
        reply, ConnectionError when the server closed the connection."""
        self._reply = self._error = None
        sock.sendall(payload)
        feed, recv = self.protocol.data_received, sock.recv
        while self._reply is None and self._error is None:
            data = recv(65536)
            if not data:
                raise ConnectionResetError("connection closed by the server")
            feed(data)
        if self._error is not None:
            raise self._error
        return cast(Reply, self._reply)


class LeanSqlClient(SqlStatementTexts, AsyncStoreClient):
    """One client's lean connection; a server module supplies `_open` and `_encode`."""

    conflict_codes: ClassVar[frozenset[str]]
    lock_wait_codes: ClassVar[frozenset[str]] = frozenset()
    # Error codes by which the server says it is closing this session (killed, shutting down).
    closing_codes: ClassVar[frozenset[str]] = frozenset()
    from_dual: ClassVar[str] = ""

    def __init__(self, url: str, namespace: str, options: ClientOptions) -> None:
        super().__init__(options)
        self.url = url
        self._prepare_statements(namespace)
        self.sql_guarded_insert = (
            f"INSERT INTO {self.operations} (amount, client, seq) "
            f"SELECT %s, %s, %s{self.from_dual} WHERE ({self.sql_balance}) >= %s"
        )
        self.protocol: LeanProtocol | None = None
        self._must_reconnect = False

    @abstractmethod
    async def _open(self) -> LeanProtocol:
        """Connect and authenticate through the driver, then hand the socket to a protocol
        (BackendUnavailable naming the problem if the server refuses)."""

    @abstractmethod
    def _encode(self, sql: str, params: tuple[int, ...]) -> bytes:
        """The protocol messages that run `sql` (`%s` placeholders) with integer `params`."""

    def _sent(self, sql: str) -> None:
        """Called once a reply to `sql` came back (PostgreSQL notes it prepared)."""

    async def connect(self) -> None:
        self.protocol = await self._open()
        self._must_reconnect = False

    async def _run(self, sql: str, params: tuple[int, ...] = ()) -> Reply:
        """Run one statement: its reply, or Conflict / LockWaitTimeout / ServerError."""
        protocol = self.protocol
        if protocol is None:
            raise NotConnected("not connected")
        try:
            reply = await protocol.send(self._encode(sql, params))
        except ServerError as exc:
            self._sent(sql)
            if exc.code in self.conflict_codes:
                raise Conflict(exc.code) from exc
            if exc.code in self.lock_wait_codes:
                raise LockWaitTimeout(exc.code) from exc
            if exc.code in self.closing_codes:
                self._must_reconnect = True
                raise ConnectionLost(str(exc)) from exc
            raise
        self._sent(sql)
        return reply

    async def _scalar(self, sql: str, params: tuple[int, ...] = ()) -> int:
        _, value = await self._run(sql, params)
        if value is None:
            raise ServerError("no_row", f"no row from {sql}")
        return int(value)

    async def read_counter(self) -> int:
        return await self._scalar(self.sql_read_counter)

    async def write_counter(self, value: int) -> None:
        await self._run(self.sql_write_counter, (value,))

    async def read_balance(self) -> int:
        return await self._scalar(self.sql_balance)

    async def append_entry(self, amount: int, seq: int) -> None:
        await self._run(self.sql_insert, (amount, self.options.client_id, seq))

    async def read_slot(self) -> int:
        return await self._scalar(self.sql_read_slot, (self.options.client_id,))

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
            run = self._run

            async def counter_once() -> Outcome:
                rowcount, _ = await run(sql, params)
                return Outcome.OK if rowcount else Outcome.REJECTED

            async def counter(seq: int) -> StepResult:
                return await self.retrying(counter_once)

            return counter

        async def withdraw(seq: int) -> StepResult:
            params = (-plan.amount, self.options.client_id, seq, plan.amount)

            async def once() -> Outcome:
                rowcount, _ = await self._run(self.sql_guarded_insert, params)
                return Outcome.OK if rowcount else Outcome.REJECTED

            result = await self.retrying(once)
            return result if result.outcome != Outcome.OK else OK_STEP

        return withdraw

    def classify(self, exc: BaseException) -> Outcome:
        if isinstance(exc, LockWaitTimeout):
            return Outcome.LOCK_TIMEOUT
        return super().classify(exc)  # ConnectionLost is an UnknownOutcome

    async def recover(self) -> None:
        protocol = self.protocol
        if protocol is not None and protocol.lost is None and not self._must_reconnect:
            return
        if protocol is not None:
            protocol.close()
        self.protocol = None
        with suppress(BackendUnavailable, OSError):  # the next operation fails and says why
            await self.connect()

    async def close(self) -> None:
        if self.protocol is not None:
            self.protocol.close()
            self.protocol = None
