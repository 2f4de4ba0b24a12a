"""A lean asyncio Redis client for racebench's few hot commands, over hiredis's parser.

Why not redis-py's asyncio client: measured on this 2-core machine (issue 10), redis-py
asyncio on uvloop reached ~26k INCR/s where redis-benchmark reached ~50k, while a plain
asyncio protocol writing pre-encoded commands and parsing replies with `hiredis.Reader`
reached 77-86k from 2 processes. The per-command cost of redis-py (connection pool, command
packing, response callbacks, its own locks) is what made racebench measure itself instead of
the server. So the hot loop's commands (GET/SET, INCRBY, EVALSHA, LRANGE/RPUSH, HGET/HSET and
WATCH/MULTI/EXEC) go through this module; everything else (setup, final state, teardown,
locks, faults) keeps redis-py.

One connection per client, one command (or one MULTI..EXEC batch) in flight at a time, as
the closed loop issues them. A connection lost mid-command fails its waiters with
ConnectionError, which the store classifies as an unknown outcome (the server may have
applied the write); the next operation reconnects.

The hottest commands (INCRBY, the EVALSHA of the floor-checking script) need less still:
awaiting a future per command and a task per client cost racebench about half of
redis-benchmark's rate (0.42-0.74x at 16 and 256 clients, measured under load). So
`callback_loop` runs their closed loop the way redis-benchmark does: the protocol's
`data_received` parses the reply, records the operation and writes the next pre-encoded
command, with no task, future or coroutine per operation.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import hiredis

from racebench.errors import BackendUnavailable
from racebench.history import Outcome
from racebench.util.redact import operation_message, redact_text

if TYPE_CHECKING:
    from racebench.guards import CallbackLoop, OperationSink


class RedisReplyError(Exception):
    """Redis answered a command with an error reply (-ERR, -NOSCRIPT, -WRONGTYPE...)."""


def encode(*args: bytes | str | int) -> bytes:
    """One command in RESP, ready to write; hot commands are encoded once per client."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


# The same command for every client of a run (GET of the counter, INCRBY 1 of it...):
# encoded once per worker, not once per client, which thousands of clients start faster.
encode_cached = functools.lru_cache(maxsize=1024)(encode)


@functools.cache
def script_sha(script: str) -> bytes:
    return hashlib.sha1(script.encode()).hexdigest().encode()


class RespProtocol(asyncio.Protocol):
    """Replies come back in request order: each is matched to the oldest waiter.

    Per command this costs one future and one write: the reader builds RedisReplyError for
    error replies itself, and the futures of the leading commands of a batch (MULTI,
    QUEUED...) are never created, since only the batch's last reply is awaited.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._create_future = loop.create_future
        self._reader = hiredis.Reader(replyError=RedisReplyError)
        # A future, or None for a reply that is read and dropped (inside a batch).
        self._waiters: deque[asyncio.Future[Any] | None] = deque()
        self._write: Any = None  # the transport's bound write, once connected
        self._transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        # Set while a callback loop owns the connection (see callback_loop): every reply
        # goes to `on_reply` and a lost connection to `on_lost`, instead of to waiters.
        self.on_reply: Callable[[Any], None] | None = None
        self.on_lost: Callable[[Exception], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection's transport (asyncio.Protocol's signature says BaseTransport).
        self._transport = cast(asyncio.Transport, transport)
        self._write = self._transport.write

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        if (on_reply := self.on_reply) is not None:
            # One command in flight: at most one reply per read (none for a partial one).
            if (reply := self._reader.gets()) is not False:
                on_reply(reply)
            return
        gets, popleft = self._reader.gets, self._waiters.popleft
        while (reply := gets()) is not False:
            waiter = popleft()
            if waiter is None or waiter.done():  # inside a batch, or cancelled
                continue
            if type(reply) is RedisReplyError:
                waiter.set_exception(reply)
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = ConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}")
        self._write = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter is not None and not waiter.done():
                waiter.set_exception(self.lost)
        if self.on_lost is not None:
            self.on_lost(self.lost)

    def send(self, payload: bytes, replies: int = 1) -> asyncio.Future[Any]:
        """Write `payload` (holding `replies` commands); a future of the last reply, which
        raises RedisReplyError for an error reply."""
        write = self._write
        if write is None:
            raise self.lost or ConnectionError("not connected to Redis")
        waiter: asyncio.Future[Any] = self._create_future()
        if replies > 1:
            self._waiters.extend([None] * (replies - 1))
        self._waiters.append(waiter)
        write(payload)
        return waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


@functools.cache
def _parse_url(url: str) -> dict[str, Any]:
    """redis-py's URL rules (parsed once per URL: thousands of clients share one)."""
    from redis.connection import parse_url

    return parse_url(url)


class LeanRedis:
    """One connection: `call` a pre-encoded command and get its reply (errors raised)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.params = _parse_url(url)
        self.protocol: RespProtocol | None = None

    async def connect(self) -> None:
        """The first connection of a client: a refused connection or a refused AUTH is
        BackendUnavailable (exit 3, one line). Later reconnects (`call`) raise what failed,
        which the store records as the operation's outcome."""
        try:
            await self._open()
        except (OSError, RedisReplyError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise BackendUnavailable(
                redact_text(f"cannot connect to Redis at {self.url}: {why}")
            ) from None

    async def _open(self) -> None:
        """Open the connection, authenticate and select the database as redis-py would."""
        loop = asyncio.get_running_loop()
        p = self.params
        if "path" in p:
            _, protocol = await loop.create_unix_connection(lambda: RespProtocol(loop), p["path"])
        else:
            tls = ssl.create_default_context() if self.url.startswith("rediss:") else None
            _, protocol = await loop.create_connection(
                lambda: RespProtocol(loop), p.get("host", "localhost"), p.get("port", 6379), ssl=tls
            )
        self.protocol = protocol
        try:
            if p.get("password") or p.get("username"):
                await self._authenticate(p.get("username"), p.get("password") or "")
            if p.get("db"):
                await self.call(encode("SELECT", p["db"]))
        except BaseException:
            self.close()
            raise

    async def _authenticate(self, username: str | None, password: str) -> None:
        # redis-py (RESP3, its default) sends HELLO 3 AUTH <user or "default"> <password>,
        # which a server whose default user has no password accepts; the two-argument AUTH
        # behaves the same on RESP2. Only a URL asking for protocol 2 without a user name
        # gets the one-argument AUTH, which such a server refuses (so does redis-py).
        if username is None and str(self.params.get("protocol", 3)) == "2":
            await self.call(encode("AUTH", password))
            return
        try:
            await self.call(encode("AUTH", username or "default", password))
        except RedisReplyError as exc:
            # Redis < 6 knows only AUTH <password> (redis-py falls back the same way).
            if "wrong number of arguments" not in str(exc).lower():
                raise
            await self.call(encode("AUTH", password))

    def call(self, payload: bytes, replies: int = 1) -> Awaitable[Any]:
        """Send a command; await the result for its reply (RedisReplyError for an error).

        A plain function, not a coroutine: while connected it hands back the protocol's
        future, which saves the hot loop a coroutine frame per command.
        """
        protocol = self.protocol
        if protocol is None or protocol._write is None:
            return self._reconnect_and_call(payload, replies)
        return protocol.send(payload, replies)

    async def _reconnect_and_call(self, payload: bytes, replies: int) -> Any:
        await self._open()
        assert self.protocol is not None
        return await self.protocol.send(payload, replies)

    async def ensure_connected(self) -> None:
        if self.protocol is None or self.protocol.lost is not None:
            await self._open()

    def close(self) -> None:
        if self.protocol is not None:
            self.protocol.close()


def callback_loop(conn: LeanRedis, payload: bytes, counted: bool) -> CallbackLoop:
    """A closed loop of one pre-encoded command, run from `conn`'s reply callback.

    `counted`: the reply is the counter's new value (INCRBY: always OK, and the value written
    is at hand); otherwise the reply is a script's 1 (OK) or 0 (REJECTED).

    The loop owns the connection until the sink says the run is over (True), or hands it
    back (False) when the connection was lost, after recording the operation in flight as
    UNKNOWN with the general path's message (the server may have applied it), or on an
    error reply, which wrote nothing (NOSCRIPT after a restart, -OOM, -WRONGTYPE): that
    operation is not recorded here, and the worker's general path sends it again, reloading
    the scripts or recording the error as it always does.
    """
    ok, rejected, unknown = int(Outcome.OK), int(Outcome.REJECTED), int(Outcome.UNKNOWN)

    async def run(sink: OperationSink) -> bool:
        protocol = conn.protocol
        if protocol is None or protocol._write is None or protocol._waiters:
            return False  # not connected: the general path reconnects
        start = sink.first()
        if not start:
            return True
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        write = protocol._write
        complete = sink.complete

        def on_reply(reply: Any) -> None:
            nonlocal start
            if type(reply) is RedisReplyError:
                done.set_result(False)
                return
            if counted:
                # INCRBY's reply is the value written (read = reply - delta).
                start = complete(start, ok, reply)
            else:
                start = complete(start, ok if reply else rejected)
            if start:
                write(payload)
            else:
                done.set_result(True)

        def on_lost(exc: Exception) -> None:
            if done.done():
                return
            message = operation_message(exc)
            complete(start, unknown, 0, message)
            done.set_result(False)

        protocol.on_reply, protocol.on_lost = on_reply, on_lost
        try:
            write(payload)
            return await done
        finally:
            protocol.on_reply = protocol.on_lost = None

    return run
