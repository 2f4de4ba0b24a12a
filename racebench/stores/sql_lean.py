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
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import TYPE_CHECKING, ClassVar, cast

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
from racebench.util.redact import operation_message
from racebench.workloads.counters import CounterPlan, LedgerPlan

if TYPE_CHECKING:
    from racebench.guards import CallbackLoop, OperationSink

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


class LeanProtocol(asyncio.Protocol, ABC):
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
        # Set while a callback loop owns the connection (LeanSqlClient.callback_loop): each
        # reply goes to `on_reply` and a lost connection to `on_lost`, instead of to waiters.
        self.on_reply: Callable[[Reply | None, Exception | None], None] | None = None
        self.on_lost: Callable[[Exception], None] | None = None
        # The callback loop's replies by their exact bytes. A hot statement's reply is the
        # same few bytes time after time (BindComplete, "UPDATE 1", ReadyForQuery; one OK
        # packet), so a reply parsed once is looked up after that: the parse was a tenth of
        # a PostgreSQL worker's Python time at 16 clients (py-spy).
        self._known: dict[bytes, Reply] = {}
        self.fresh = False  # the callback loop just sent: the next bytes start a reply
        self._replies = 0
        self._resolved: Reply | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._write = self._transport.write

    @abstractmethod
    def _frame(self, data: bytes) -> None:
        """Add `data` to the buffer; parse each complete message, `_resolve` each reply."""

    def data_received(self, data: bytes) -> None:
        if not self.fresh:
            self._frame(data)
            return
        # The first bytes after the callback loop sent a statement, nothing left over: the
        # start of its reply, and often all of it.
        self.fresh = False
        if self._buffer or self.on_reply is None:
            self._frame(data)
            return
        known = self._known.get(data)
        if known is not None:
            self.on_reply(known, None)
            return
        self._replies, self._resolved = 0, None
        self._frame(data)
        # Kept only when these bytes were exactly one successful reply.
        one = self._replies == 1 and self._resolved is not None and not self._buffer
        if one and len(self._known) < 16:
            self._known[data] = cast(Reply, self._resolved)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = ConnectionLost(
            f"connection to {self._server} lost: {exc or 'closed by the server'}"
        )
        self._write = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(self.lost)
        if self.on_lost is not None:
            self.on_lost(self.lost)

    def _resolve(self, reply: Reply | None, error: Exception | None = None) -> None:
        if (on_reply := self.on_reply) is not None:
            self._replies += 1
            self._resolved = reply if error is None else None
            on_reply(reply, error)
            return
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

    For a session that stays on a thread (TLS, which the loop's lean clients do not speak):
    its hot statement skips the driver's per-statement Python all the same.
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
        feed, recv = self.protocol._frame, sock.recv
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
        # The server's id of the current session (PostgreSQL backend pid, MySQL connection
        # id): what pg_terminate_backend or KILL name, what the server's own views show.
        self.session_id: int | None = None

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

    def _counter_statement(self, plan: CounterPlan) -> tuple[str, tuple[int, ...]]:
        """The atomic counter statement and its parameters (constant for a client)."""
        if plan.floor is None:
            return f"UPDATE {self.counter} SET value = value + %s WHERE id = 1", (plan.delta,)
        sql = f"UPDATE {self.counter} SET value = value + %s WHERE id = 1 AND value + %s >= %s"
        return sql, (plan.delta, plan.delta, plan.floor)

    def _ready_payload(self, sql: str, params: tuple[int, ...]) -> bytes | None:
        """The messages that run `sql` as they are sent once the session is ready for it,
        or None while it is not (PostgreSQL: not yet prepared in this session)."""
        return self._encode(sql, params)

    def step_for(
        self, strategy: str, plan: CounterPlan | LedgerPlan
    ) -> Callable[[int], Awaitable[StepResult]]:
        assert strategy == "atomic"
        if isinstance(plan, CounterPlan):
            sql, params = self._counter_statement(plan)
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

    def callback_loop(self, strategy: str, plan: CounterPlan | LedgerPlan) -> CallbackLoop | None:
        """likes and stock atomic: one constant statement per operation, run from the
        protocol's reply callback, as the C tools run theirs.

        The general path awaits a future per statement in a task; here an operation is one
        callback: record, write the same pre-encoded messages again (figures against pgbench
        and mysqlslap, before and after: docs/engine.md).

        A lock wait timeout is recorded as the general path records it (LOCK_TIMEOUT, nothing
        written) and the loop goes on. The loop owns the connection until the sink says the
        run is over (True), or hands it back (False): while the session is not ready for the
        statement (PostgreSQL prepares it on the general path's first run), on another error
        reply (nothing was written: a refusal, a deadlock; the worker's general path sends it
        again, retrying and recording as it always does, and the failed attempt is counted in
        `retry_codes`), or when the server is closing the session or the connection was
        lost, after recording the operation in flight as UNKNOWN (it may have committed) and
        reconnecting.
        """
        if strategy != "atomic" or not isinstance(plan, CounterPlan):
            return None
        sql, params = self._counter_statement(plan)
        ok, rejected, unknown = int(Outcome.OK), int(Outcome.REJECTED), int(Outcome.UNKNOWN)
        lock_timeout = int(Outcome.LOCK_TIMEOUT)

        async def run(sink: OperationSink) -> bool:
            protocol = self.protocol
            if protocol is None or protocol._write is None or self._must_reconnect:
                return False  # not connected: the general path reconnects
            payload = self._ready_payload(sql, params)
            if payload is None or protocol._waiters:
                return False
            start = sink.first()
            if not start:
                return True
            done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            write, complete = protocol._write, sink.complete

            def on_reply(reply: Reply | None, error: Exception | None) -> None:
                nonlocal start
                if done.done():
                    return
                if error is None:
                    start = complete(start, ok if cast(Reply, reply)[0] else rejected)
                else:
                    code = getattr(error, "code", "")
                    if code in self.closing_codes:
                        self._must_reconnect = True
                        lost(error)
                        return
                    if code not in self.lock_wait_codes:
                        if code in self.conflict_codes:
                            self.retry_codes[code] += 1
                        done.set_result(False)
                        return
                    message = operation_message(LockWaitTimeout(code))  # the general path's
                    start = complete(start, lock_timeout, 0, message)
                if start:
                    protocol.fresh = True
                    write(payload)
                else:
                    done.set_result(True)

            def lost(exc: Exception) -> None:
                if done.done():
                    return
                message = operation_message(exc)
                complete(start, unknown, 0, message)
                done.set_result(False)

            protocol.on_reply, protocol.on_lost = on_reply, lost
            try:
                protocol.fresh = True
                write(payload)
                over = await done
            finally:
                protocol.on_reply = protocol.on_lost = None
                protocol.fresh = False
            # As the general path does after a failure (a no-op on a sound connection): after
            # a lost session, its next operation runs on a new one, not "not connected".
            await self.recover()
            return over

        return run

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
