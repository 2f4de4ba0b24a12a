"""FaultProxy against real servers: forwarding, latency, partition, heal, reset, stop, fork."""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import psycopg
import pymysql
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from racebench.faults.proxy import FaultProxy, address_of, url_through


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[tuple[FaultProxy, str]]:
    """A started proxy in front of the test Redis, and the Redis URL through it."""
    proxy = FaultProxy(*address_of(redis_url))
    port = proxy.start()
    yield proxy, url_through(redis_url, port)
    proxy.stop()


def open_redis(url: str, timeout_s: float = 2.0) -> redis.Redis:
    # No retry, and one held connection: a pooled client checks a connection out before each
    # command and silently reconnects one the server (or the proxy) has reset meanwhile.
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        single_connection_client=True,
    )


def round_trip_s(client: redis.Redis) -> float:
    start = time.perf_counter()
    assert client.ping()
    return time.perf_counter() - start


def proxy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("racebench-proxy")]


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_redis_ping_set_get(redis_proxy: tuple[FaultProxy, str]) -> None:
    _, url = redis_proxy
    key = f"rb-proxy-{uuid.uuid4().hex}"
    client = open_redis(url)
    try:
        assert client.ping()
        client.set(key, "through the proxy", px=10_000)
        assert client.get(key) == b"through the proxy"
        # Plain forwarding adds no delay worth measuring.
        assert statistics.median(round_trip_s(client) for _ in range(20)) < 0.02
    finally:
        client.delete(key)
        client.close()


def test_large_value_survives_backpressure(redis_proxy: tuple[FaultProxy, str]) -> None:
    # 5 MiB outgrows the socket buffers and the proxy's queue bound: sends block and reads
    # pause, and every byte must still arrive.
    _, url = redis_proxy
    key = f"rb-proxy-{uuid.uuid4().hex}"
    value = os.urandom(5 << 20)
    client = open_redis(url)
    try:
        client.set(key, value, px=10_000)
        assert client.get(key) == value
    finally:
        client.delete(key)
        client.close()


def test_postgres_select_1(postgres_url: str) -> None:
    with FaultProxy(*address_of(postgres_url)) as proxy:
        url = url_through(postgres_url, proxy.port)
        with psycopg.connect(url, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_mysql_select_1(mysql_url: str) -> None:
    # MySQL speaks first (the server greeting): the proxy must forward before any request.
    with FaultProxy(*address_of(mysql_url)) as proxy:
        parts = urlsplit(url_through(mysql_url, proxy.port))
        conn = pymysql.connect(
            host=parts.hostname,
            port=parts.port,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=parts.path.lstrip("/") or None,
            connect_timeout=5,
        )
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
                assert cursor.fetchone() == (1,)
        finally:
            conn.close()


def test_latency_delays_each_direction(redis_proxy: tuple[FaultProxy, str]) -> None:
    proxy, url = redis_proxy
    client = open_redis(url)
    try:
        client.ping()
        proxy.set_latency(50)
        # The request and the reply are each delayed 50 ms.
        rtts = [round_trip_s(client) for _ in range(3)]
        assert min(rtts) >= 0.100
        assert max(rtts) < 0.100 + 0.080
        proxy.clear_latency()
        assert round_trip_s(client) < 0.02
    finally:
        client.close()


def test_jitter_keeps_byte_order(redis_url: str) -> None:
    with FaultProxy(*address_of(redis_url)) as proxy:
        proxy.set_latency(10, jitter_ms=10)
        expected = b"".join(f"${len(str(i))}\r\n{i}\r\n".encode() for i in range(30))
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as sock:
            for i in range(30):
                # Separate chunks, each with its own random delay: only the proxy's
                # ordering rule keeps the replies in sequence.
                sock.sendall(f"ECHO {i}\r\n".encode())
                time.sleep(0.002)
            received = b""
            while len(received) < len(expected):
                received += sock.recv(4096)
        assert received == expected


def test_partition_times_out_and_heal_admits_new_connections(
    redis_proxy: tuple[FaultProxy, str],
) -> None:
    proxy, url = redis_proxy
    before = open_redis(url, timeout_s=0.3)
    try:
        assert before.ping()
        proxy.partition()
        with pytest.raises(redis.TimeoutError):
            before.ping()
        with pytest.raises(redis.TimeoutError):
            # Accepted by the proxy, never forwarded: the connection handshake times out.
            open_redis(url, timeout_s=0.3).ping()
        proxy.heal()
        after = open_redis(url, timeout_s=0.3)
        assert after.ping()
        after.close()
    finally:
        before.close()


def test_heal_delivers_held_bytes(redis_url: str) -> None:
    with (
        FaultProxy(*address_of(redis_url)) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port), timeout=0.2) as sock,
    ):
        proxy.partition()
        sock.sendall(b"PING\r\n")
        with pytest.raises(TimeoutError):
            sock.recv(64)
        proxy.heal()
        assert sock.recv(64) == b"+PONG\r\n"


def test_reset_breaks_connection_in_use(redis_proxy: tuple[FaultProxy, str]) -> None:
    proxy, url = redis_proxy
    client = open_redis(url)
    try:
        assert client.ping()
        proxy.reset()
        with pytest.raises(redis.ConnectionError, match="reset"):
            client.ping()
        assert open_redis(url).ping()  # the proxy itself keeps accepting
    finally:
        client.close()


def test_stop_leaves_no_thread_and_closes_port(redis_url: str) -> None:
    proxy = FaultProxy(*address_of(redis_url))
    port = proxy.start()
    client = open_redis(url_through(redis_url, port))
    assert client.ping()
    assert proxy_threads()
    proxy.stop()
    assert proxy_threads() == []
    assert refuses(port)
    with pytest.raises(redis.ConnectionError):
        client.ping()
    client.close()
    proxy.stop()  # idempotent


def test_forked_child_does_not_keep_proxy_sockets(redis_proxy: tuple[FaultProxy, str]) -> None:
    # Clients are forked after the proxy starts. If a child kept its copies of the proxy's
    # sockets, reset() would send no RST and stop() would leave the port open.
    proxy, url = redis_proxy
    client = open_redis(url, timeout_s=1)
    assert client.ping()
    release_r, release_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.read(release_r, 1)
        finally:
            os._exit(0)
    try:
        proxy.reset()
        with pytest.raises(redis.ConnectionError, match="reset"):
            client.ping()
        proxy.stop()
        assert refuses(proxy.port)
    finally:
        os.write(release_w, b"x")
        os.waitpid(pid, 0)
        os.close(release_r)
        os.close(release_w)
        client.close()


@pytest.mark.parametrize(
    ("url", "through"),
    [
        (
            "postgresql://bob:s%40cret@db.example:5433/app?sslmode=disable",
            "postgresql://bob:s%40cret@127.0.0.1:7000/app?sslmode=disable",
        ),
        ("mysql://root@127.0.0.1:3306/test", "mysql://root@127.0.0.1:7000/test"),
        ("redis://:pw@localhost/2", "redis://:pw@127.0.0.1:7000/2"),
        ("127.0.0.1:2181", "127.0.0.1:7000"),
        ("zk1:2181,zk2:2181/racebench", "127.0.0.1:7000/racebench"),
    ],
)
def test_url_through(url: str, through: str) -> None:
    assert url_through(url, 7000) == through


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("postgresql://bob:pw@db.example:5433/app", ("db.example", 5433)),
        ("mysql://root@127.0.0.1/test", ("127.0.0.1", 3306)),
        ("redis://localhost/0", ("localhost", 6379)),
        ("127.0.0.1:2182/chroot", ("127.0.0.1", 2182)),
        ("zk1", ("zk1", 2181)),
    ],
)
def test_address_of(url: str, address: tuple[str, int]) -> None:
    assert address_of(url) == address


def test_address_of_refuses_an_ensemble() -> None:
    with pytest.raises(ValueError, match="ensemble"):
        address_of("zk1:2181,zk2:2181")
