"""The Redis and ZooKeeper lock services against real servers: exclusion, leases, fencing.

Each run gets its own namespace; the lock services find their servers through the
RACEBENCH_* variables that the server fixtures export, or through explicit URLs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import port_for
import pytest

from racebench.config.scenario import lock_config
from racebench.locks.base import LockTimeout
from racebench.plugins.registry import lock_class, lock_names
from tests.conftest import run_cli, run_scenario_data, server_for_plugin, unique_namespace
from tests.processes import ours
from tests.race import until_shown

# Every registered lock service, racebench's own and installed third-party ones alike.
SERVICES = lock_names()


@pytest.fixture
def lock_for(request: pytest.FixtureRequest):
    """lock_for(service, **options) -> a scenario's `guard.lock` mapping with the URL(s) of
    the test server the service declares (a list goes to guard.lock.urls, as redlock's)."""

    def make(service: str, **options) -> dict:
        value = server_for_plugin(request, lock_class(service))
        where = {} if value is None else {"urls" if isinstance(value, list) else "url": value}
        return {"service": service, **where, **options}

    return make


def _locked_run(store: dict, lock: dict, workload: dict, fencing: bool = False, **extra) -> dict:
    [run] = run_scenario_data(
        {
            "name": f"lock-{lock['service']}",
            "workload": workload,
            "store": store,
            "guard": {"strategy": "lock", "lock": lock, "fencing": fencing},
            "clients": 4,
            "operations": 40,
            "race_window_ms": 3,
            **extra,
        }
    )
    return run


def _service(lock: dict, namespace: str):
    config = lock_config(lock)
    return lock_class(config.service)(config, namespace, None)


STOCK = {"type": "stock", "initial": 100}
WITHDRAW = {"type": "withdraw", "deposit": 200, "amount": 10}


@pytest.mark.parametrize("fencing", [False, True], ids=["plain", "fenced"])
@pytest.mark.parametrize("backend", ["redis", "zookeeper"])
@pytest.mark.parametrize("service", SERVICES)
def test_every_lock_service_guards_the_store(
    store_for, lock_for, service: str, backend: str, fencing: bool
) -> None:
    workload = STOCK if backend == "redis" else WITHDRAW
    run = _locked_run(store_for(backend), lock_for(service), workload, fencing)
    ops = run["operations"]
    assert ops["ok"] > 0 and ops["ok"] + ops["rejected"] == 40, run["errors_sample"]
    assert sum(run["anomalies"].values()) == 0, run["anomalies"]
    assert all(inv["holds"] for inv in run["invariants"])
    assert run["lock"]["acquisitions"] == 40
    assert run["lock"]["stale_writes_rejected"] == 0
    assert run["verdict"] == "safe"


def test_lease_shorter_than_the_section_breaks_exclusion_and_fencing_saves_the_data(
    store_for, lock_for
) -> None:
    lock = lock_for("redis_lock", ttl_ms=2)

    def attempt(fencing: bool) -> Callable[[int], dict]:
        def run_once(number: int) -> dict:
            window = 6 * 2**number  # the lease lapses inside ever longer sections
            run = _locked_run(store_for("redis"), lock, STOCK, fencing, race_window_ms=window)
            if fencing:  # safety, on every attempt
                assert run["anomalies"]["lost_updates"] == 0, run["anomalies"]
            return run

        return run_once

    plain = until_shown(attempt(False), lambda run: run["anomalies"]["lost_updates"] > 0)
    fenced = until_shown(attempt(True), lambda run: run["lock"]["stale_writes_rejected"] > 0)
    assert plain["anomalies"]["mutual_exclusion_violations"] > 0
    assert plain["anomalies"]["lost_updates"] > 0
    assert plain["verdict"] == "ANOMALIES"
    assert fenced["anomalies"]["mutual_exclusion_violations"] > 0
    assert fenced["lock"]["stale_writes_rejected"] > 0
    assert fenced["anomalies"]["lost_updates"] == 0
    assert all(inv["holds"] for inv in fenced["invariants"])
    assert fenced["verdict"] == "safe"


def _lock_values(client) -> list[bytes | None]:
    """The lock key's value on each of the client's Redis servers."""
    leases = client.leases if hasattr(client, "leases") else [client.lease]
    return [lease.redis.get(lease.keys[0]) for lease in leases]


@pytest.mark.parametrize("service", ["redis_lock", "redlock"])
def test_a_release_after_expiry_leaves_the_next_holders_lock(lock_for, service: str) -> None:
    namespace = unique_namespace("t1")
    lock_service = _service(lock_for(service, ttl_ms=50), namespace)
    # B's lease is long, so that it is still there when checked, however loaded the host.
    long_lease = _service(lock_for(service, ttl_ms=30_000), namespace)
    a, b = lock_service.connect(0), long_lease.connect(1)
    try:
        a.acquire()
        time.sleep(0.08)  # A's lease expires
        b.acquire()
        held_by_b = b.value.encode()  # type: ignore[attr-defined]
        a.release()  # must not delete B's lock
        assert _lock_values(b) == [held_by_b] * len(_lock_values(b))
        b.release()
        assert set(_lock_values(b)) == {None}
    finally:
        a.close()
        b.close()
        lock_service.teardown()
        long_lease.teardown()


@pytest.mark.parametrize("service", SERVICES)
def test_fencing_tokens_grow_with_each_grant(lock_for, service: str) -> None:
    service_ = _service(lock_for(service), unique_namespace("t2"))
    service_.setup()
    clients = [service_.connect(i) for i in range(2)]
    try:
        tokens = []
        for client in clients * 3:
            tokens.append(client.acquire())
            client.release()
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), tokens
    finally:
        for client in clients:
            client.close()
        service_.teardown()


def test_zookeeper_lock_waits_and_times_out_without_touching_the_holder(lock_for) -> None:
    service = _service(lock_for("zookeeper_lock", acquire_timeout_ms=200), unique_namespace("t3"))
    service.setup()
    holder, waiter = service.connect(0), service.connect(1)
    try:
        holder.acquire()
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            waiter.acquire()
        assert time.monotonic() - started >= 0.2
        assert holder.lock.is_acquired  # type: ignore[attr-defined]
        assert len(holder.zk.get_children(service.path)) == 1  # type: ignore[attr-defined]
        holder.release()
        waiter.acquire()
        waiter.release()
    finally:
        holder.close()
        waiter.close()
        service.teardown()


def test_redlock_needs_a_majority(redlock_urls: list[str]) -> None:
    dead = [f"redis://127.0.0.1:{port_for.select_random()}/0" for _ in range(2)]
    config = {"service": "redlock", "ttl_ms": 1000, "acquire_timeout_ms": 50}
    namespace = unique_namespace("t4")
    one_down = _service({**config, "urls": [*redlock_urls[:2], dead[0]]}, namespace)
    two_down = _service({**config, "urls": [redlock_urls[0], *dead]}, namespace)
    client = one_down.connect(0)
    try:
        assert client.acquire() > 0
        client.release()
        with pytest.raises(LockTimeout):
            two_down.connect(1).acquire()
    finally:
        client.close()
        one_down.teardown()


@pytest.mark.parametrize("service", SERVICES)
def test_locks_and_keys_are_gone_afterwards(store_for, lock_for, service: str) -> None:
    lock = lock_for(service)
    probe = _service(lock, "racebench_probe")
    _locked_run(store_for("redis"), lock, STOCK, fencing=True, operations=8)
    _locked_run(store_for("zookeeper"), lock, WITHDRAW, operations=8)
    assert not ours(probe.leftovers())


def _closed_port() -> int:
    return port_for.select_random()


@pytest.mark.parametrize(
    ("lock", "expected"),
    [
        (
            lambda port: {"service": "redis_lock", "url": f"redis://u:secret@127.0.0.1:{port}/0"},
            "racebench: redis_lock: cannot reach Redis at redis://u:***@127.0.0.1:{port}/0",
        ),
        (
            lambda port: {"service": "redlock", "urls": [f"redis://127.0.0.1:{port}/0"]},
            "racebench: redlock: 1 of 1 Redis servers unreachable (cannot reach Redis at "
            "redis://127.0.0.1:{port}/0",
        ),
        (
            lambda port: {"service": "zookeeper_lock", "url": f"127.0.0.1:{port}"},
            "racebench: zookeeper_lock: cannot reach ZooKeeper at 127.0.0.1:{port}",
        ),
    ],
    ids=["redis_lock", "redlock", "zookeeper_lock"],
)
def test_unreachable_lock_service_exits_3_with_one_line(
    tmp_path: Path, write_scenario, lock, expected: str
) -> None:
    port = _closed_port()
    path = write_scenario(
        {"workload": {"type": "stock"}, "guard": {"strategy": "lock", "lock": lock(port)}}
    )
    proc = run_cli("run", str(path), "-q", "-o", str(tmp_path / "r.json"))
    assert proc.returncode == 3, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    # The key the URL came from, then the service's own words.
    field = "guard.lock.urls" if "urls" in lock(port) else "guard.lock.url"
    prefix = expected.format(port=port).removeprefix("racebench: ")
    assert line.startswith(f"racebench: {path}: {field}: {prefix}"), line
    assert "secret" not in line


def test_zookeeper_lock_recovers_from_a_failed_release(lock_for) -> None:
    from kazoo.exceptions import ZookeeperError

    service = _service(lock_for("zookeeper_lock", acquire_timeout_ms=2000), unique_namespace("t5"))
    service.setup()
    holder, other = service.connect(0), service.connect(1)
    try:
        first = holder.acquire()

        def fail(node: str) -> None:
            raise ZookeeperError("injected")

        holder.lock._delete_node = fail  # type: ignore[attr-defined]
        with pytest.raises(ZookeeperError):
            holder.release()
        # The znode the failed release left behind must not block the next acquisition.
        assert holder.acquire() > first
        holder.release()
        other.acquire()
        other.release()
        assert holder.zk.get_children(service.path) == []  # type: ignore[attr-defined]
    finally:
        holder.close()
        other.close()
        service.teardown()
