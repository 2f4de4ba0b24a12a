"""pytest plugin: session-scoped fixtures that hand tests real servers.

Each fixture returns a connection string from :mod:`tests.servers` and exports it under its
``RACEBENCH_*`` variable, so ``racebench`` run in a subprocess finds the same server. A
server that cannot be had skips its tests, with the way to get it; under ``CI=true`` it
fails them instead, since CI must not pass by skipping. Servers the session started are
stopped when it finishes.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests import servers


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"true", "1"}


def _obtain(what: str, env_var: str, ensure: Callable[[], str | list[str]]) -> str:
    """Run `ensure`, export its value as `env_var` and return it; skip or fail if it can't."""
    try:
        value = ensure()
    except servers.ServerUnavailable as exc:
        reason = f"{what} unavailable: {exc} (or set {env_var} to a running server)"
    else:
        exported = value if isinstance(value, str) else ",".join(value)
        os.environ[env_var] = exported
        return exported
    # Outside the except block, so the report shows the reason and not a chained traceback.
    if _in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a PostgreSQL server: ``postgresql://postgres@127.0.0.1:PORT/postgres``."""
    return _obtain("PostgreSQL", "RACEBENCH_POSTGRES_URL", servers.ensure_postgres)


@pytest.fixture(scope="session")
def roomy_postgres_url() -> str:
    """URL of a PostgreSQL server this session started with ``max_connections=1100``."""
    try:
        return servers.roomy_postgres()
    except servers.ServerUnavailable as exc:
        reason = f"a private PostgreSQL server could not be started: {exc}"
    if _in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mysql_url() -> str:
    """URL of a MariaDB/MySQL server: ``mysql://root@127.0.0.1:PORT/test``."""
    return _obtain("MariaDB", "RACEBENCH_MYSQL_URL", servers.ensure_mysql)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a Redis server: ``redis://127.0.0.1:PORT/0``."""
    return _obtain("Redis", "RACEBENCH_REDIS_URL", servers.ensure_redis)


@pytest.fixture(scope="session")
def private_redis_url() -> str:
    """URL of a Redis server this session started for itself: for tests that pause it.

    ``CLIENT PAUSE ... ALL`` stalls every client of a server, so a test that pauses the
    shared Redis would stall the other tests, and a second suite, using it meanwhile.
    """
    try:
        return servers.private_redis()
    except servers.ServerUnavailable as exc:
        reason = f"a private Redis server could not be started: {exc}"
    if _in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redlock_urls() -> list[str]:
    """URLs of three independent Redis servers for Redlock.

    Those in ``tests.servers.started_redis_urls()`` can be restarted with
    ``tests.servers.restart_redis(url)``.
    """
    urls = _obtain("3 Redis servers", "RACEBENCH_REDLOCK_URLS", servers.ensure_redis_instances)
    return urls.split(",")


@pytest.fixture(scope="session")
def zookeeper_hosts() -> str:
    """ZooKeeper connection string: ``127.0.0.1:PORT``."""
    return _obtain("ZooKeeper", "RACEBENCH_ZOOKEEPER_HOSTS", servers.ensure_zookeeper)


def _managed(what: str, start: Callable[[], list[servers.ManagedServer]]) -> list[dict]:
    """Start servers of our own (server faults kill them: never reuse a running one)."""
    try:
        return [server.entry() for server in start()]
    except servers.ServerUnavailable as exc:
        reason = f"{what} unavailable: {exc}"
    if _in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_cluster() -> list[dict]:
    """Five Redis servers of our own for Redlock, as ``guard.lock.servers`` entries
    (``{"url": "redis://127.0.0.1:PORT/0", "pid_file": ...}``)."""
    return _managed("5 Redis servers", servers.start_redis_cluster)


@pytest.fixture(scope="session")
def zookeeper_ensemble() -> list[dict]:
    """A 3-node ZooKeeper ensemble of our own, as ``guard.lock.servers`` entries
    (``{"url": "127.0.0.1:PORT", "pid_file": ...}``)."""
    return _managed("ZooKeeper ensemble", servers.start_zookeeper_ensemble)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the servers this session started; servers that were already running stay up."""
    servers.stop_started()
