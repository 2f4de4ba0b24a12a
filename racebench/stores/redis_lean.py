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
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ssl
from collections import deque
from typing import Any, cast

import hiredis

_REPLY_ERROR = hiredis.ReplyError


class RedisReplyError(Exception):
    """Redis answered a command with an error reply (-ERR, -NOSCRIPT, -WRONGTYPE...)."""


def encode(*args: bytes | str | int) -> bytes:
    """One command in RESP, ready to write; hot commands are encoded once per client."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


@functools.cache
def script_sha(script: str) -> bytes:
    return hashlib.sha1(script.encode()).hexdigest().encode()


class RespProtocol(asyncio.Protocol):
    """Replies come back in request order: each is matched to the oldest waiting future."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reader = hiredis.Reader()
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection's transport (asyncio.Protocol's signature says BaseTransport).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        gets, waiters = self._reader.gets, self._waiters
        while (reply := gets()) is not False:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = ConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}")
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(self.lost)

    def send(self, payload: bytes, replies: int = 1) -> asyncio.Future[Any]:
        """Write `payload` (holding `replies` commands); a future of the last reply."""
        if self.lost is not None or self._transport is None:
            raise self.lost or ConnectionError("not connected to Redis")
        waiter: asyncio.Future[Any] = self._loop.create_future()
        if replies > 1:
            for _ in range(replies - 1):
                self._waiters.append(self._loop.create_future())
        self._waiters.append(waiter)
        self._transport.write(payload)
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
        if p.get("password"):
            auth = [p["username"], p["password"]] if p.get("username") else [p["password"]]
            await self.call(encode("AUTH", *auth))
        if p.get("db"):
            await self.call(encode("SELECT", p["db"]))

    async def call(self, payload: bytes, replies: int = 1) -> Any:
        protocol = self.protocol
        if protocol is None or protocol.lost is not None:
            await self.connect()
            protocol = self.protocol
            assert protocol is not None
        reply = await protocol.send(payload, replies)
        if type(reply) is _REPLY_ERROR:
            raise RedisReplyError(str(reply))
        return reply

    async def ensure_connected(self) -> None:
        if self.protocol is None or self.protocol.lost is not None:
            await self.connect()

    def close(self) -> None:
        if self.protocol is not None:
            self.protocol.close()
