"""MySQL/MariaDB hot statements on the worker's event loop: PyMySQL connects, COM_QUERY runs.

Why not PyMySQL or aiomysql for the hot loop: measured on this 2-core machine (issue 10),
the stock atomic UPDATE from 16 clients ran at 0.67x `mysqlslap` on PyMySQL threads
(7,867 against 11,788 statements/s): PyMySQL spends tens of microseconds of Python per
statement (argument escaping, packet objects, a buffered reader, result metadata) and its
16 threads fight for the GIL, while the server needs about as much CPU again on the same
2 cores. aiomysql is PyMySQL's protocol code on asyncio, so it cannot be cheaper per
statement. Here a statement costs one pre-encoded COM_QUERY write (the same text protocol
statement mysqlslap sends) and a parse of the reply's first byte and row count.

On the worker's loop at any client count, `LeanMysqlClient` runs the statement, and the
atomic counter statement runs from the protocol's reply callback
(racebench.stores.sql_lean.LeanSqlClient.callback_loop); docs/engine.md has the figures
against threads. PyMySQL still opens and authenticates each connection (every auth plugin,
the URL rules of racebench.stores.mysql), off the loop; its socket is then detached and
handed to the loop. TLS sessions stay on PyMySQL threads (`MysqlStore.loop_supports`),
where the blocking client sends the atomic statement the same lean way on its PyMySQL
socket (`MysqlClient._rowcount`, with this module's parser driven by `BlockingReplies`).
"""

from __future__ import annotations

import asyncio
import socket
from typing import ClassVar

from racebench.stores.base import ClientOptions
from racebench.stores.mysql import CLOSING_CODES, open_connection
from racebench.stores.sql_lean import LeanProtocol, LeanSqlClient, ServerError

_COM_QUERY = b"\x03"
_COM_QUIT = b"\x01\x00\x00\x00\x01"
_EOF = 0xFE


def com_query(sql: str) -> bytes:
    """One COM_QUERY packet: 3-byte length, sequence 0, the command byte, the text."""
    payload = _COM_QUERY + sql.encode()
    return len(payload).to_bytes(3, "little") + b"\x00" + payload


def _lenenc(data: bytes | bytearray, at: int) -> tuple[int, int]:
    """A length-encoded integer at `at`: (value, offset after it)."""
    first = data[at]
    if first < 0xFB:
        return first, at + 1
    width = {0xFC: 2, 0xFD: 3, 0xFE: 8}[first]
    return int.from_bytes(data[at + 1 : at + 1 + width], "little"), at + 1 + width


def _error(payload: bytes | bytearray) -> ServerError:
    # 0xFF, the error number (2 bytes), then '#' and a 5-character SQLSTATE (protocol 4.1).
    code = int.from_bytes(payload[1:3], "little")
    message = payload[9:] if payload[3:4] == b"#" else payload[3:]
    return ServerError(str(code), bytes(message).decode(errors="replace"))


class MysqlProtocol(LeanProtocol):
    """Packets: a 3-byte length and a sequence byte. A reply is one OK or ERR packet, or a
    result set: column count, column definitions, EOF, rows, EOF (PyMySQL does not ask for
    CLIENT_DEPRECATE_EOF, so both EOF packets come)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        super().__init__(loop, "MySQL")
        self._eofs = -1  # -1: between replies; 0 or 1: EOF packets seen in a result set
        self._row: bytes | None = None

    def _frame(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        end = len(buffer)
        while end - start >= 4:
            length = buffer[start] | buffer[start + 1] << 8 | buffer[start + 2] << 16
            if end - start - 4 < length:
                break
            self._packet(buffer[start + 4 : start + 4 + length])
            start += 4 + length
        del buffer[:start]

    def _packet(self, payload: bytearray) -> None:
        head = payload[0]
        if self._eofs < 0:
            if head == 0x00:  # OK: the affected (with CLIENT_FOUND_ROWS: matched) rows
                self._resolve((_lenenc(payload, 1)[0], None))
            elif head == 0xFF:
                self._resolve(None, _error(payload))
            else:  # a result set's column count
                self._eofs, self._row = 0, None
            return
        if head == 0xFF:
            self._eofs = -1
            self._resolve(None, _error(payload))
        elif head == _EOF and len(payload) < 9:
            self._eofs += 1
            if self._eofs == 2:
                self._eofs = -1
                self._resolve((1 if self._row is not None else 0, self._row))
        elif self._eofs == 1 and self._row is None:  # the first row: its first column
            length, at = _lenenc(payload, 0) if payload[0] != 0xFB else (-1, 1)
            self._row = None if length < 0 else bytes(payload[at : at + length])


class LeanMysqlClient(LeanSqlClient):
    """One client's lean MySQL connection (autocommit; the blocking client's statements)."""

    conflict_codes = frozenset({"1213", "1205", "1020", "1467"})
    closing_codes = CLOSING_CODES
    from_dual: ClassVar[str] = " FROM DUAL"

    def __init__(self, url: str, namespace: str, options: ClientOptions) -> None:
        super().__init__(url, namespace, options)
        self._packets: dict[tuple[str, tuple[int, ...]], bytes] = {}

    async def _open(self) -> LeanProtocol:
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(None, open_connection, self.url)
        self.session_id = conn.thread_id()
        # Detached, PyMySQL's socket object no longer owns the descriptor: the transport does.
        sock = socket.socket(fileno=conn._sock.detach())
        conn._sock = conn._rfile = None
        _, protocol = await loop.create_connection(lambda: MysqlProtocol(loop), sock=sock)
        return protocol

    def _encode(self, sql: str, params: tuple[int, ...]) -> bytes:
        # Integers only, so inlining them is exact and safe; a client's hot statement has
        # constant parameters, so its packet is built once.
        key = (sql, params)
        packet = self._packets.get(key)
        if packet is None:
            packet = com_query(sql % params if params else sql)
            if len(self._packets) < 64:
                self._packets[key] = packet
        return packet

    async def close(self) -> None:
        protocol = self.protocol
        if protocol is not None and protocol._write is not None:
            protocol._write(_COM_QUIT)  # a clean goodbye: no "aborted connection" on the server
        await super().close()
