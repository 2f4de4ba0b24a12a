"""A fault-injecting TCP proxy: latency, partitions and resets between clients and one server.

Issue 6's network faults need bytes delayed, held or reset between a client and a server.
The usual tool, ``tc netem``, is missing from this machine's kernel (and needs root), so
racebench puts this small proxy on loopback instead: a proxied client connects to the
proxy's port and the proxy forwards each connection to the real server. It runs in the
racebench parent process, in one background thread driving a selector loop; with no fault
active each chunk is sent on as soon as it is read.

What a client sees:

- ``set_latency(delay_ms, jitter_ms)``: every chunk, in either direction, arrives
  ``delay_ms ± jitter_ms`` late and in order, so a request/reply round trip gains about
  twice the delay (as with netem on both ends of a link).
- ``partition()``: the server goes silent. Bytes either way are held in the proxy, open
  connections stay open and new ones are accepted but never reach the server; no RST, no
  FIN, so the client waits until its own timeout fires.
- ``heal()``: held bytes are **delivered**, late and in order, and new connections reach
  the server again. That is what TCP does when a partition heals before it gives up: it
  retransmits and never loses bytes inside a live stream (dropping them would desynchronise
  every protocol). A client that timed out but kept its connection then reads stale
  replies, which is the "reply slower than the lease" case.
- ``reset()``: every current connection is closed with a TCP RST on both sides; the
  client's next read or write fails with "connection reset by peer".

Client processes are forked after the proxy starts, so they inherit copies of its sockets.
A fork hook closes those copies in the child: otherwise a child's copy would keep a socket
alive past ``reset()`` (no RST goes out until the last copy closes) and the listening port
open past ``stop()``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import random
import selectors
import socket
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import urlsplit, urlunsplit

LOOPBACK = "127.0.0.1"
CHUNK_BYTES = 65536
# Bytes one direction may hold before the proxy stops reading its source: backpressure for
# a slow receiver, and the memory bound of a long partition.
MAX_QUEUED_BYTES = 1 << 20
# Longest wait for the loop thread to apply a fault or to exit; it never blocks, so this is
# only reached if it died.
CONTROL_TIMEOUT_S = 5.0
_RST_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


@dataclass
class _Flow:
    """One direction of a proxied connection: chunks read from one side, due on the other."""

    chunks: deque[tuple[float, bytes]] = field(default_factory=deque)  # (due, data); b"" = EOF
    queued: int = 0
    eof_read: bool = False
    eof_sent: bool = False
    blocked: bool = False  # the last send found the socket buffer full: wait for writable


@dataclass(eq=False)
class _Link:
    """A client connection and its upstream connection (None while a partition defers it)."""

    client: socket.socket
    upstream: socket.socket | None = None
    connected: bool = False
    closed: bool = False
    up: _Flow = field(default_factory=_Flow)  # client -> server
    down: _Flow = field(default_factory=_Flow)  # server -> client
    masks: dict[socket.socket, int] = field(default_factory=dict)


class FaultProxy:
    """TCP proxy from an ephemeral loopback port to ``(host, port)``, with injectable faults.

    Every fault method takes effect at once on existing and new connections and returns once
    the loop thread has applied it.
    """

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.port = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._latency_s = (0.0, 0.0)
        self._partitioned = False
        self._links: set[_Link] = set()
        self._waiting: set[_Link] = set()  # links with chunks not yet sent
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._family = socket.AF_INET
        self._address: tuple[Any, ...] = (host, port)  # (host, port) or IPv6's 4-tuple

    def start(self) -> int:
        """Listen on 127.0.0.1 with an ephemeral port, start forwarding; return the port."""
        if self._thread is not None or self._stopping:
            raise RuntimeError("a FaultProxy can be started once")
        family, _, _, _, address = socket.getaddrinfo(*self.upstream, type=socket.SOCK_STREAM)[0]
        self._family, self._address = family, address
        self._listener = socket.create_server((LOOPBACK, 0), backlog=128)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        _LIVE.add(self)
        self._thread = threading.Thread(
            target=self._run, name=f"racebench-proxy:{self.port}", daemon=True
        )
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Close the listener and every connection and join the thread. Idempotent."""
        thread, self._thread = self._thread, None
        self._stopping = True
        if thread is None:
            self._close_sockets()  # never started: only the wake-up pair is open
            return
        self._wake()
        thread.join(CONTROL_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError(f"proxy thread {thread.name} did not stop")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def set_latency(self, delay_ms: float, jitter_ms: float = 0) -> None:
        """Delay each chunk, either way, by ``delay_ms`` ± uniform ``jitter_ms``, in order."""
        if delay_ms < 0 or jitter_ms < 0:
            raise ValueError("delay_ms and jitter_ms must be >= 0")
        self._control(lambda: setattr(self, "_latency_s", (delay_ms / 1000, jitter_ms / 1000)))

    def clear_latency(self) -> None:
        """Forward new chunks at once again; chunks already delayed keep their due time."""
        self._control(lambda: setattr(self, "_latency_s", (0.0, 0.0)))

    def partition(self) -> None:
        """Hold all traffic without answer; new connections are accepted, not forwarded."""
        self._control(lambda: setattr(self, "_partitioned", True))

    def heal(self) -> None:
        """End a partition: deliver the held bytes in order and connect deferred clients."""
        self._control(self._heal)

    def reset(self) -> None:
        """Close every current connection with a TCP RST on both sides."""
        self._control(self._reset)

    # The loop thread: everything below runs there, or before start / after stop.

    def _run(self) -> None:
        try:
            while not self._stopping:
                for key, mask in self._selector.select(self._next_timeout()):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._run_commands()
                    else:
                        # Every other registered file object is a link's socket.
                        self._on_ready(key.data, cast(socket.socket, key.fileobj), mask)
                self._flush_waiting()
        finally:
            self._close_sockets()
            self._run_commands()  # answer callers that raced with stop

    def _control(self, action: Callable[[], None]) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():
            action()  # no loop thread: nothing else touches the state
            return
        command = _Command(action)
        self._commands.put(command)
        self._wake()
        if not command.done.wait(CONTROL_TIMEOUT_S):
            raise RuntimeError(f"proxy thread {thread.name} did not answer")
        if command.error is not None:
            raise command.error

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            self._wake_w.send(b"\0")

    def _run_commands(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                command.action()
            except Exception as exc:  # handed to the caller, the loop goes on
                command.error = exc
            command.done.set()

    def _heal(self) -> None:
        self._partitioned = False
        for link in list(self._links):
            if link.upstream is None:
                self._connect_upstream(link)
        # Held chunks are overdue: the loop's next _flush_waiting sends them.

    def _reset(self) -> None:
        for link in list(self._links):
            self._close(link, rst=True)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except OSError:  # the client gave up already, or out of descriptors: try next time
            return
        client.setblocking(False)
        # Request/reply protocols write small chunks; Nagle would add delay of our own.
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(client)
        self._links.add(link)
        if not self._partitioned:
            self._connect_upstream(link)
        self._update_interest(link)

    def _connect_upstream(self, link: _Link) -> None:
        upstream = socket.socket(self._family, socket.SOCK_STREAM)
        upstream.setblocking(False)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link.upstream = upstream
        error = upstream.connect_ex(self._address)
        if error == 0:
            link.connected = True
        elif error != errno.EINPROGRESS:
            # The server refused; the client, already accepted, sees a reset instead.
            self._close(link, rst=True)
            return
        self._update_interest(link)

    def _on_ready(self, link: _Link, sock: socket.socket, mask: int) -> None:
        if link.closed:  # by an earlier event of the same select() batch
            return
        if sock is link.upstream and not link.connected:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._close(link, rst=True)
                return
            link.connected = True
            self._flush(link, link.up)  # what the client sent meanwhile
        else:
            inbound, outbound = (
                (link.up, link.down) if sock is link.client else (link.down, link.up)
            )
            if mask & selectors.EVENT_WRITE:
                outbound.blocked = False
                self._flush(link, outbound)
            if mask & selectors.EVENT_READ and not link.closed:
                self._read(link, sock, inbound)
        if not link.closed:
            self._update_interest(link)

    def _read(self, link: _Link, sock: socket.socket, flow: _Flow) -> None:
        try:
            data = sock.recv(CHUNK_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by this side: pass the reset on to the other
            self._close(link, rst=True)
            return
        due = time.monotonic()
        delay_s, jitter_s = self._latency_s
        if delay_s or jitter_s:
            # Jitter cannot reorder the stream: chunks leave the deque in order, so one due
            # before its predecessor waits for it.
            due += max(0.0, delay_s + random.uniform(-jitter_s, jitter_s))
        flow.chunks.append((due, data))
        flow.queued += len(data)
        flow.eof_read = not data
        self._flush(link, flow)

    def _flush(self, link: _Link, flow: _Flow) -> None:
        """Send the due chunks of `flow`, unless partitioned, unconnected or blocked."""
        if not self._partitioned and link.connected and not flow.blocked:
            destination = link.upstream if flow is link.up else link.client
            assert destination is not None
            now = time.monotonic()
            while flow.chunks and flow.chunks[0][0] <= now:
                due, data = flow.chunks[0]
                if not data:
                    flow.chunks.popleft()
                    self._send_eof(link, flow, destination)
                    return
                try:
                    sent = destination.send(data)
                except (BlockingIOError, InterruptedError):
                    flow.blocked = True
                    break
                except OSError:
                    self._close(link, rst=True)
                    return
                flow.queued -= sent
                if sent < len(data):
                    flow.chunks[0] = (due, data[sent:])
                    flow.blocked = True
                    break
                flow.chunks.popleft()
        if flow.chunks:
            self._waiting.add(link)

    def _send_eof(self, link: _Link, flow: _Flow, destination: socket.socket) -> None:
        # A half-close is passed on as one: the other side may still answer.
        flow.eof_sent = True
        with contextlib.suppress(OSError):
            destination.shutdown(socket.SHUT_WR)
        if link.up.eof_sent and link.down.eof_sent:
            self._close(link, rst=False)

    def _flush_waiting(self) -> None:
        for link in list(self._waiting):
            self._waiting.discard(link)
            if link.closed:
                continue
            self._flush(link, link.up)
            if not link.closed:
                self._flush(link, link.down)
            if not link.closed:
                self._update_interest(link)

    def _next_timeout(self) -> float | None:
        """Seconds until the earliest chunk that could be sent falls due; None: no such chunk."""
        if self._partitioned:
            return None
        dues = [
            flow.chunks[0][0]
            for link in self._waiting
            if link.connected
            for flow in (link.up, link.down)
            if flow.chunks and not flow.blocked
        ]
        return max(0.0, min(dues) - time.monotonic()) if dues else None

    def _update_interest(self, link: _Link) -> None:
        self._watch(link, link.client, self._events(link.up, link.down))
        if link.upstream is not None:
            events = self._events(link.down, link.up) if link.connected else selectors.EVENT_WRITE
            self._watch(link, link.upstream, events)

    @staticmethod
    def _events(inbound: _Flow, outbound: _Flow) -> int:
        events = 0
        if not inbound.eof_read and inbound.queued < MAX_QUEUED_BYTES:
            events |= selectors.EVENT_READ
        if outbound.blocked:
            events |= selectors.EVENT_WRITE
        return events

    def _watch(self, link: _Link, sock: socket.socket, events: int) -> None:
        current = link.masks.get(sock, 0)
        if events == current:
            return
        if not current:
            self._selector.register(sock, events, link)
        elif not events:
            self._selector.unregister(sock)
        else:
            self._selector.modify(sock, events, link)
        link.masks[sock] = events

    def _close(self, link: _Link, *, rst: bool) -> None:
        link.closed = True
        self._links.discard(link)
        self._waiting.discard(link)
        for sock in (link.client, link.upstream):
            if sock is None:
                continue
            if link.masks.pop(sock, 0):
                self._selector.unregister(sock)
            with contextlib.suppress(OSError):
                if rst:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_ON_CLOSE)
                sock.close()

    def _close_sockets(self) -> None:
        for link in list(self._links):
            self._close(link, rst=False)
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._selector.close()
        _LIVE.discard(self)

    def _forget_in_child(self) -> None:
        """In a forked child: close the inherited descriptors, leave the parent's sockets be.

        ``detach()`` first, so the child's socket objects never close a descriptor number
        that the child has meanwhile reused for something else.
        """
        socks = [self._listener, self._wake_r, self._wake_w]
        socks += [s for link in self._links for s in (link.client, link.upstream)]
        for sock in socks:
            if sock is not None:
                with contextlib.suppress(OSError):
                    os.close(sock.detach())
        with contextlib.suppress(OSError):
            self._selector.close()
        self._links.clear()
        self._waiting.clear()
        self._thread = None
        self._stopping = True


@dataclass(eq=False)
class _Command:
    action: Callable[[], None]
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None


_LIVE: weakref.WeakSet[FaultProxy] = weakref.WeakSet()


def _forget_proxies_in_child() -> None:
    for proxy in list(_LIVE):
        proxy._forget_in_child()
    _LIVE.clear()


os.register_at_fork(after_in_child=_forget_proxies_in_child)


def url_through(url: str, port: int) -> str:
    """`url` pointed at ``127.0.0.1:port``, keeping user, password, path and query.

    Takes a URL (``postgresql://``, ``mysql://``, ``redis://``) or a ZooKeeper hosts string
    (``host:port[,host:port...][/chroot]``), whose hosts all become the one proxy.
    """
    if "://" not in url:
        _, slash, chroot = url.partition("/")
        return f"{LOOPBACK}:{port}{slash}{chroot}"
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{LOOPBACK}:{port}"))


def address_of(url: str) -> tuple[str, int]:
    """The ``(host, port)`` a server URL or ZooKeeper hosts string names: the proxy upstream.

    A ZooKeeper ensemble is refused: a proxy in front of one member partitions nobody.
    """
    if "://" not in url:
        hosts = url.partition("/")[0]
        if "," in hosts:
            raise ValueError(f"a proxy forwards to one server, not an ensemble: {hosts}")
        host, colon, given = hosts.rpartition(":")
        if colon:
            return host, int(given)
        scheme = "zookeeper"  # a hosts string: the ZooKeeper store declares its port
    else:
        parts = urlsplit(url)
        scheme, hosts = parts.scheme.split("+")[0], parts.hostname or ""
        if hosts and parts.port is not None:
            return hosts, parts.port
    # Each plug-in declares the ports of its schemes (`ports`); racebench knows none itself.
    from racebench.plugins.registry import default_port

    port = default_port(scheme)
    if not hosts or port is None:
        raise ValueError(f"cannot tell the server's host and port from {scheme}:// URL")
    return hosts, port
