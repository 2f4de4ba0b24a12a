"""PostgreSQL hot statements on the worker's event loop: psycopg connects, prepared Bind/Execute.

Why not psycopg's AsyncConnection for the hot loop: measured on this 2-core machine (issue
10), the stock atomic UPDATE on AsyncConnection (prepared after first use) ran at 0.91x
`pgbench -M prepared` with 64 clients and slower than threads at 16. Per statement psycopg
adapts the parameters, builds a query object, runs its generator-based wait loop and a
cursor's result bookkeeping: tens of microseconds of Python, on the same 2 cores as the
server. Here a statement costs what pgbench sends: once per connection a Parse (a named
prepared statement), then per execution one pre-encoded Bind + Execute + Sync, and a reply
read for its CommandComplete row count, the first column of a DataRow, or the SQLSTATE of
an ErrorResponse.

psycopg (libpq) still opens and authenticates the connection and sets lock_timeout; its
socket is then duplicated and handed to the loop, and psycopg closes the session at the
end. TLS sessions stay on psycopg threads (`PostgresStore.loop_supports`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from contextlib import suppress
from typing import Any

from racebench.errors import BackendUnavailable
from racebench.stores.base import ClientOptions
from racebench.stores.sql import LOCK_WAIT_S
from racebench.stores.sql_lean import LeanProtocol, LeanSqlClient, ServerError
from racebench.util.redact import redact_text

_EXECUTE_SYNC = b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00" + b"S\x00\x00\x00\x04"
_I32 = struct.Struct("!i")


def numbered(sql: str) -> str:
    """`%s` placeholders as PostgreSQL's `$1`, `$2`, ..."""
    parts = sql.split("%s")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + _I32.pack(len(body) + 4) + body


def parse_message(name: str, sql: str) -> bytes:
    """Parse: a named prepared statement, parameter types left to the server."""
    return _message(b"P", name.encode() + b"\0" + numbered(sql).encode() + b"\0\0\0")


def bind_message(name: str, params: tuple[int, ...]) -> bytes:
    """Bind the unnamed portal to statement `name`, parameters in text, results in text."""
    body = [b"\0", name.encode(), b"\0\0\0", len(params).to_bytes(2, "big")]
    for value in params:
        text = str(value).encode()
        body += [_I32.pack(len(text)), text]
    body.append(b"\0\0")
    return _message(b"B", b"".join(body))


class PostgresProtocol(LeanProtocol):
    """Messages: a type byte and a 4-byte length. A reply ends with ReadyForQuery ('Z')."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, "PostgreSQL")
        self._rowcount = 0
        self._value: bytes | None = None
        self._error: ServerError | None = None
        self.parse_complete = False  # the last reply included a ParseComplete

    def _frame(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start, end = 0, len(buffer)
        while end - start >= 5:
            length = int.from_bytes(buffer[start + 1 : start + 5], "big")
            if end - start - 1 < length:
                break
            self._on_message(buffer[start], buffer[start + 5 : start + 1 + length])
            start += 1 + length
        del buffer[:start]

    def _on_message(self, kind: int, body: bytearray) -> None:
        if kind == 0x43:  # CommandComplete: "UPDATE 1", "INSERT 0 1", "SELECT 1"
            count = body[:-1].rpartition(b" ")[2]
            self._rowcount = int(count) if count.isdigit() else 0
        elif kind == 0x44:  # DataRow: column count, then length-prefixed text values
            if self._value is None and len(body) >= 6:
                length = _I32.unpack_from(body, 2)[0]
                self._value = None if length < 0 else bytes(body[6 : 6 + length])
        elif kind == 0x5A:  # ReadyForQuery: the reply is complete
            reply, error = (self._rowcount, self._value), self._error
            self._rowcount, self._value, self._error = 0, None, None
            self._resolve(reply, error)
        elif kind == 0x45:  # ErrorResponse: fields of a type byte and a C string
            self._error = _error(body)
        elif kind == 0x31:  # ParseComplete
            self.parse_complete = True
        # BindComplete, NoData, notices, parameter status: nothing the hot loop needs.


def _error(body: bytearray) -> ServerError:
    fields = {f[:1]: f[1:].decode(errors="replace") for f in bytes(body).split(b"\0") if f}
    return ServerError(fields.get(b"C", "XX000"), fields.get(b"M", "error"))


class LeanPostgresClient(LeanSqlClient):
    """One client's lean PostgreSQL session (autocommit; the blocking client's statements)."""

    conflict_codes = frozenset({"40001", "40P01"})
    lock_wait_codes = frozenset({"55P03"})
    # 57P01 admin shutdown (pg_terminate_backend), 57P02 crash shutdown, 57P03 cannot connect now.
    closing_codes = frozenset({"57P01", "57P02", "57P03"})

    def __init__(self, url: str, namespace: str, options: ClientOptions) -> None:
        super().__init__(url, namespace, options)
        self._names: dict[str, str] = {}  # statement text -> prepared statement name
        self._binds: dict[tuple[str, tuple[int, ...]], bytes] = {}
        self._prepared: set[str] = set()  # in this session
        self._conn: Any = None

    async def _open(self) -> PostgresProtocol:
        import psycopg

        from racebench.stores.postgres import _reason, connect_args

        conninfo, kwargs = connect_args(self.url)
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo, **kwargs)
        except psycopg.OperationalError as exc:
            raise BackendUnavailable(
                f"postgres: cannot connect to {redact_text(self.url)}: "
                f"{redact_text(_reason(str(exc)))}"
            ) from None
        try:
            await conn.execute(f"SET lock_timeout = {max(1, round(LOCK_WAIT_S * 1000))}")
            loop = asyncio.get_running_loop()
            sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
            _, protocol = await loop.create_connection(lambda: PostgresProtocol(loop), sock=sock)
        except BaseException:
            await conn.close()
            raise
        await self._close_session()
        self._conn, self._prepared = conn, set()
        self.session_id = conn.pgconn.backend_pid
        return protocol

    def _encode(self, sql: str, params: tuple[int, ...]) -> bytes:
        key = (sql, params)
        bind = self._binds.get(key)
        if bind is None:
            name = self._names.setdefault(sql, f"racebench_{len(self._names)}")
            bind = bind_message(name, params) + _EXECUTE_SYNC
            # A client's hot statement has constant parameters: its messages are built once.
            if len(self._binds) < 64:
                self._binds[key] = bind
        if sql in self._prepared:
            return bind
        return parse_message(self._names[sql], sql) + bind

    def _ready_payload(self, sql: str, params: tuple[int, ...]) -> bytes | None:
        # Bind/Execute/Sync alone: the statement must already be prepared in this session.
        return self._encode(sql, params) if sql in self._prepared else None

    def _sent(self, sql: str) -> None:
        protocol = self.protocol
        if isinstance(protocol, PostgresProtocol) and protocol.parse_complete:
            protocol.parse_complete = False
            self._prepared.add(sql)

    async def _close_session(self) -> None:
        if self._conn is not None:
            with suppress(Exception):  # a killed session cannot say goodbye
                await self._conn.close()
            self._conn = None

    async def close(self) -> None:
        await super().close()
        await self._close_session()
