"""The lean Redis path authenticates as redis-py does for the same URL, and a refused
connection or AUTH is one line with exit 3 (issue 10 follow-up).

The password-protected user is a real ACL user created on the test Redis and dropped after.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import port_for
import pytest
import redis

from racebench.errors import BackendUnavailable, ExitStatus
from racebench.stores.redis_lean import LeanRedis, encode
from tests.conftest import run_cli


@pytest.fixture
def acl_user(redis_url: str) -> Iterator[tuple[str, str]]:
    """A Redis ACL user with a password: (user, password); deleted afterwards."""
    user, password = f"racebench-{secrets.token_hex(4)}", secrets.token_hex(12)
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"],
                      commands=["+@all"])  # fmt: skip
    try:
        yield user, password
    finally:
        admin.acl_deluser(user)
        admin.close()


def _with_userinfo(url: str, userinfo: str) -> str:
    parsed = urlparse(url)
    return parsed._replace(netloc=f"{userinfo}@{parsed.hostname}:{parsed.port}").geturl()


def _scenario(url: str) -> dict:
    return {
        "name": "lean-auth",
        "workload": {"type": "likes"},
        "store": {"backend": "redis", "url": url},
        "guard": {"strategy": "atomic"},
        "clients": 2,
        "operations": 40,  # in all
    }


def _ping(url: str) -> bytes:
    async def ping() -> bytes:
        conn = LeanRedis(url)
        await conn.connect()
        try:
            return await conn.call(encode("PING"))
        finally:
            conn.close()

    return asyncio.run(ping())


def test_lean_client_authenticates_like_redis_py(redis_url: str, acl_user) -> None:
    user, password = acl_user
    good = _with_userinfo(redis_url, f"{user}:{password}")
    assert _ping(good) == b"PONG"
    assert redis.Redis.from_url(good).ping()
    # A password on a server whose default user has none: redis-py connects, so do we.
    assert _ping(redis_url + "?password=not-needed") == b"PONG"
    assert redis.Redis.from_url(redis_url + "?password=not-needed").ping()
    # A wrong password: one BackendUnavailable line that never shows the password.
    with pytest.raises(BackendUnavailable) as refused:
        _ping(_with_userinfo(redis_url, f"{user}:wrong-{password}"))
    assert "WRONGPASS" in str(refused.value) and password not in str(refused.value)
    assert "\n" not in str(refused.value)


def test_lean_client_reports_an_unreachable_server(redis_url: str) -> None:
    closed = urlparse(redis_url)._replace(netloc=f"127.0.0.1:{port_for.select_random()}")
    with pytest.raises(
        BackendUnavailable, match=r"cannot connect to Redis at redis://127\.0\.0\.1"
    ):
        _ping(closed.geturl())


def test_runs_with_a_password_in_the_url(
    redis_url: str, acl_user, write_scenario, tmp_path: Path
) -> None:
    user, password = acl_user
    urls = (_with_userinfo(redis_url, f"{user}:{password}"), redis_url + "?password=x")
    for n, url in enumerate(urls):
        path = write_scenario(_scenario(url))
        output = tmp_path / f"result-{n}.json"
        done = run_cli("run", str(path), "-q", "-o", str(output))
        assert done.returncode == 0, done.stderr
        assert password not in done.stdout + done.stderr
        text = output.read_text()
        assert password not in text
        [run] = json.loads(text)["runs"]
        assert run["operations"]["ok"] == 40 and run["operations"]["errors"] == 0


def test_a_refused_password_is_one_line_and_exit_3(
    redis_url: str, acl_user, write_scenario
) -> None:
    user, password = acl_user
    path = write_scenario(_scenario(_with_userinfo(redis_url, f"{user}:no-{password}")))
    done = run_cli("run", str(path))
    assert done.returncode == ExitStatus.BACKEND_UNAVAILABLE, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr and password not in done.stderr
