"""The server fixtures hand out real, reachable servers (a round trip with each driver)."""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit

import pytest

from tests import servers

# Also registered by tests/conftest.py; naming it here keeps this module self-sufficient.
pytest_plugins = ["tests.server_fixtures"]


@pytest.mark.postgres
def test_postgres_round_trip(postgres_url: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url, connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert os.environ["RACEBENCH_POSTGRES_URL"] == postgres_url


@pytest.mark.mysql
def test_mysql_round_trip(mysql_url: str) -> None:
    import pymysql

    url = urlsplit(mysql_url)
    conn = pymysql.connect(
        host=url.hostname,
        port=url.port or 3306,
        user=url.username,
        password=url.password or "",
        database=url.path.lstrip("/"),
        connect_timeout=10,
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
    finally:
        conn.close()
    assert os.environ["RACEBENCH_MYSQL_URL"] == mysql_url


@pytest.mark.redis
def test_redis_round_trip(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    assert client.ping() is True
    assert os.environ["RACEBENCH_REDIS_URL"] == redis_url


@pytest.mark.redis
def test_redlock_instances_are_distinct_servers(redlock_urls: list[str]) -> None:
    import redis

    run_ids = {redis.Redis.from_url(url).info("server")["run_id"] for url in redlock_urls}
    assert len(redlock_urls) == 3
    assert len(run_ids) == 3
    assert os.environ["RACEBENCH_REDLOCK_URLS"] == ",".join(redlock_urls)


@pytest.mark.redis
def test_restart_redis_loses_its_keys(redlock_urls: list[str]) -> None:
    import redis

    ours = [url for url in redlock_urls if url in servers.started_redis_urls()]
    if not ours:
        pytest.skip("no Redlock instance was started by this session (RACEBENCH_REDLOCK_URLS)")
    client = redis.Redis.from_url(ours[0])
    before = client.info("server")["run_id"]
    client.set("racebench-test-restart", "1")
    servers.restart_redis(ours[0])
    assert client.info("server")["run_id"] != before
    assert client.get("racebench-test-restart") is None


@pytest.mark.zookeeper
def test_zookeeper_round_trip(zookeeper_hosts: str) -> None:
    from kazoo.client import KazooClient

    client = KazooClient(hosts=zookeeper_hosts, timeout=10)
    client.start(timeout=30)
    root = f"/racebench-test-{uuid.uuid4().hex}"
    try:
        client.create(f"{root}/node", b"value", makepath=True)
        assert client.get(f"{root}/node")[0] == b"value"
        client.delete(root, recursive=True)
        assert client.exists(root) is None
    finally:
        client.stop()
        client.close()
    assert os.environ["RACEBENCH_ZOOKEEPER_HOSTS"] == zookeeper_hosts
