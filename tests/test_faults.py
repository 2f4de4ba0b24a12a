"""Every fault kind against the real servers, each asserting the observable issue 6 names.

Durations are chosen so the effect is certain on a loaded two-core machine (a 400 ms pause
against a 100 ms lease, 30 ms critical sections against a fault that lands within a few ms)
and runs are short. After each test: no proxy or nemesis thread is left, no client process
is left stopped, and every server the test used still answers.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest

from racebench.config.scenario import load_raw
from tests.conftest import REPO, cli_in_process, run_scenario_data
from tests.processes import children
from tests.race import cli_runs_until_shown, until_shown

FAULTS = REPO / "scenarios" / "faults"
STOCK = {"type": "stock", "initial": 100_000}
SERVER_FIXTURES = (
    "redis_url",
    "private_redis_url",
    "redlock_urls",
    "postgres_url",
    "mysql_url",
    "zookeeper_hosts",
)


def _stopped_children() -> list[int]:
    """Child processes of this one in state T (stopped)."""
    return children(os.getpid(), states="Tt")


def _server_answers(name: str, value: str | list[str]) -> None:
    if name in ("redis_url", "private_redis_url", "redlock_urls"):
        from racebench.stores.redis import open_redis

        for url in [value] if isinstance(value, str) else value:
            client = open_redis(url, timeout_s=2.0)
            try:
                assert client.ping()
            finally:
                client.close()
    elif name == "postgres_url":
        from racebench.stores import postgres

        conn = postgres.open_connection(value)
        try:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            conn.close()
    elif name == "mysql_url":
        from racebench.stores import mysql

        conn = mysql.open_connection(value)
        try:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        finally:
            conn.close()
    else:
        from racebench.stores.zookeeper import close_kazoo, open_kazoo

        client = open_kazoo(value, "check")
        try:
            assert client.exists("/") is not None
        finally:
            close_kazoo(client)


@pytest.fixture(autouse=True)
def nothing_left_behind(request):
    yield
    names = [t.name for t in threading.enumerate()]
    assert not [n for n in names if n.startswith(("racebench-proxy", "racebench-nemesis"))]
    assert _stopped_children() == []
    for name in SERVER_FIXTURES:
        if name in request.fixturenames:
            _server_answers(name, request.getfixturevalue(name))


def _run(store: dict, lock: dict, faults: list[dict], fencing: bool = False, **extra) -> dict:
    scenario = {
        "name": "fault",
        "workload": STOCK,
        "store": store,
        "guard": {"strategy": "lock", "lock": lock, "fencing": fencing},
        "clients": 3,
        "duration": "1.5s",
        "race_window_ms": 30,
        "faults": faults,
        **extra,
    }
    [run] = run_scenario_data(scenario)
    return run


def _race(store: dict, lock: dict, faults: list[dict], fencing: bool = False, **extra) -> dict:
    """`_run` until the exclusion violation shows (bounded), the race window doubling each time.

    With fencing, no update may be lost in any attempt: that is checked on each, not retried.
    """
    window_ms = extra.pop("race_window_ms", 30)

    def attempt(number: int) -> dict:
        run = _run(store, lock, faults, fencing, race_window_ms=window_ms * 2**number, **extra)
        if fencing:
            assert run["anomalies"]["lost_updates"] == 0, run["anomalies"]
        return run

    def shown(run: dict) -> bool:
        # Fenced, the race shows as a stale write rejected, not only as an overlap.
        return _violations(run) > 0 and (not fencing or run["lock"]["stale_writes_rejected"] > 0)

    return until_shown(attempt, shown)


def _file_runs(name: str, **overrides) -> list[dict]:
    path = FAULTS / name
    raw = load_raw(path)
    raw.update(overrides)
    return run_scenario_data(raw, str(path))


def _violations(run: dict) -> int:
    return run["anomalies"]["mutual_exclusion_violations"]


def _fault(run: dict) -> dict:
    [fault] = run["faults"]
    return fault


HOLDING = {"when": "holding", "client": 0}
# Whichever client holds the lock first: the fault fires early even on an unfair lock.
ANY_HOLDER = {"when": "holding", "client": "any"}
# redis_lock is unfair: a client that releases re-acquires before the waiters' backoff ends.
# Short retries let client 0 get the lock early, so a fault waiting for it fires early, and
# let the others notice a lock lost behind the holder's back while it is still inside.
FAIRER = {"retry_delay_ms": 0.1}


# pause_client


def test_gc_pause_past_a_redis_lease_breaks_exclusion_unless_fenced(
    redis_url: str, tmp_path: Path
) -> None:
    def fenced_loses_nothing(runs: list[dict]) -> None:
        assert runs[1]["anomalies"]["lost_updates"] == 0, runs[1]["anomalies"]

    done, (plain, fenced) = cli_runs_until_shown(
        FAULTS / "gc-pause.yaml",
        tmp_path / "gc.json",
        lambda runs: (
            min(map(_violations, runs)) > 0
            and runs[0]["anomalies"]["lost_updates"] > 0
            and runs[1]["lock"]["stale_writes_rejected"] > 0
        ),
        fenced_loses_nothing,
    )
    assert done.returncode == 0, done.stderr
    assert _violations(plain) > 0 and plain["anomalies"]["lost_updates"] > 0
    assert plain["verdict"] == "ANOMALIES"
    assert _violations(fenced) > 0 and fenced["lock"]["stale_writes_rejected"] > 0
    assert fenced["anomalies"]["lost_updates"] == 0
    assert all(inv["holds"] for inv in fenced["invariants"])
    assert fenced["verdict"] == "safe"
    for run in (plain, fenced):
        assert _fault(run)["kind"] == "pause_client"
        assert _fault(run)["end_ms"] - _fault(run)["start_ms"] >= 400
        assert run["lock"]["hold_ms"]["max"] >= 400  # the paused holder's section


@pytest.mark.parametrize("service", ["advisory", "get_lock"])
def test_pause_on_a_session_lock_makes_the_others_wait(
    postgres_url: str, mysql_url: str, service: str
) -> None:
    lock = {"service": service, "url": postgres_url if service == "advisory" else mysql_url}
    pause = {"kind": "pause_client", **HOLDING, "duration_ms": 400}
    run = _run({"backend": "postgres", "url": postgres_url}, lock, [pause], race_window_ms=2)
    assert sum(run["anomalies"].values()) == 0, run["anomalies"]
    assert run["verdict"] == "safe"
    # The others queued behind the stopped holder for about the pause.
    assert 300 <= run["lock"]["acquire_ms"]["max"] <= 1500, run["lock"]


def test_pause_past_the_zookeeper_session_lets_the_next_client_in(
    redis_url: str, zookeeper_hosts: str
) -> None:
    lock = {"service": "zookeeper_lock", "url": zookeeper_hosts, "session_timeout_ms": 4000}
    pause = {"kind": "pause_client", **HOLDING, "duration_ms": 8000}
    run = _race({"backend": "redis", "url": redis_url}, lock, [pause], duration="9s")
    assert _violations(run) > 0
    assert run["verdict"] == "ANOMALIES"  # a pause past the session is not claimed safe


# kill_client


@pytest.mark.parametrize(
    ("service", "low_ms", "high_ms"),
    # The lower bounds are the point (a lease or a session outlives its holder); the upper
    # ones only say the wait ended, with room for a loaded host to wake the next client.
    [("redis_lock", 400, 2500), ("advisory", 0, 1000), ("zookeeper_lock", 2500, 9000)],
)
def test_a_killed_holder_keeps_the_resource_unavailable(
    request, redis_url: str, service: str, low_ms: float, high_ms: float
) -> None:
    lock: dict = {"service": service}
    if service == "redis_lock":
        lock.update(url=redis_url, ttl_ms=500)
    elif service == "advisory":
        lock["url"] = request.getfixturevalue("postgres_url")
    else:
        lock.update(url=request.getfixturevalue("zookeeper_hosts"), session_timeout_ms=4000)
    kill = {"kind": "kill_client", **ANY_HOLDER}
    duration = {"redis_lock": "3s", "advisory": "2s", "zookeeper_lock": "9s"}[service]
    run = _run({"backend": "redis", "url": redis_url}, lock, [kill], duration=duration)
    fault = _fault(run)
    assert fault["note"] == "SIGKILL inside its critical section"
    # Redis: until the lease runs out; SQL: at once; ZooKeeper: until the session expires.
    assert low_ms <= fault["unavailable_ms"] <= high_ms, fault
    assert run["operations"]["unknown"] == 1  # the dead client's operation in flight
    assert _violations(run) == 0


# kill_session


@pytest.mark.parametrize("fencing", [False, True], ids=["plain", "fenced"])
@pytest.mark.parametrize("service", ["advisory", "get_lock"])
def test_killed_sql_session_frees_the_lock_while_the_holder_writes_on(
    postgres_url: str, mysql_url: str, service: str, fencing: bool
) -> None:
    lock = {"service": service, "url": postgres_url if service == "advisory" else mysql_url}
    kill = {"kind": "kill_session", **HOLDING}
    run = _race({"backend": "postgres", "url": postgres_url}, lock, [kill], fencing)
    assert _fault(run)["note"].startswith(("pg_terminate_backend(", "KILL "))
    # The lock went with the session: the next client got in at once (a loaded host may
    # take a while to wake it, but nothing like a lease or a session time-out).
    assert _fault(run)["unavailable_ms"] < 1000
    assert _violations(run) > 0  # the holder went on writing through its store connection
    if fencing:
        assert run["lock"]["stale_writes_rejected"] > 0
        assert run["anomalies"]["lost_updates"] == 0
        assert run["verdict"] == "safe"
    else:
        assert run["verdict"] == "ANOMALIES"


def test_client_kill_on_redis_costs_a_reconnect_not_the_lock(redis_url: str) -> None:
    lock = {"service": "redis_lock", "url": redis_url, "ttl_ms": 1000}
    kill = {"kind": "kill_session", **ANY_HOLDER}
    run = _run({"backend": "redis", "url": redis_url}, lock, [kill])
    fault = _fault(run)
    assert fault["note"].startswith("CLIENT KILL ID ") and ": 1 killed" in fault["note"]
    # The key outlives the connection, and redis-py reconnects for the release.
    assert _violations(run) == 0 and run["verdict"] == "safe"
    assert run["operations"]["errors"] == 0


# lose_lock_state and expire_early


@pytest.mark.parametrize("kind", ["lose_lock_state", "expire_early"])
def test_redis_lock_forgetting_or_expiring_early_lets_two_in(redis_url: str, kind: str) -> None:
    # Fired while a client holds the lock, so there is a grant to lose (at a fixed time the
    # lock can be free, between one release and the next grant, on a busy host).
    # Short polls and a 100 ms section: the others see the lost grant while the holder is
    # still inside, even on a loaded host.
    lock = {"service": "redis_lock", "url": redis_url, "ttl_ms": 5000, **FAIRER}
    fault = {"kind": kind, **ANY_HOLDER}
    run = _race({"backend": "redis", "url": redis_url}, lock, [fault], race_window_ms=100)
    assert _fault(run)["note"].startswith("emulated: ")
    assert _violations(run) > 0
    assert run["verdict"] == "ANOMALIES"


def _kept(run: dict) -> int:
    """How many servers still held the holder's grant after the fault (from its note)."""
    match = re.search(r"holder's grant was on \d+, (\d+) left", _fault(run)["note"])
    assert match, _fault(run)["note"]
    return int(match.group(1))


def test_redlock_survives_losing_one_instance_of_three_not_two(redlock_urls: list[str]) -> None:

    def attempt(number: int) -> list[dict]:
        one, two = _file_runs("redlock-lose-instances.yaml", duration="1.5s")
        # Granted by all three, the holder keeps a majority: nobody else can win one.
        # Granted by a bare majority (a busy host splits the servers between contenders),
        # it may not. Checked on every attempt.
        if _kept(one) >= 2:
            assert _violations(one) == 0 and one["verdict"] == "race not reproduced"
        return [one, two]

    one, two = until_shown(attempt, lambda runs: _violations(runs[1]) > 0)
    # client: any fires at the first grant, long before the end: the others are still trying.
    assert _fault(one)["start_ms"] < 750 and _fault(two)["start_ms"] < 750
    assert "on 1 of 3 servers" in _fault(one)["note"]
    assert "on 2 of 3 servers" in _fault(two)["note"]
    assert _kept(two) <= 1
    assert _violations(two) > 0 and two["verdict"] == "ANOMALIES"


# latency, partition, reset through the proxy


def test_replies_slower_than_the_lease_let_two_in(redis_url: str) -> None:
    lock = {"service": "redis_lock", "url": redis_url, "ttl_ms": 100, **FAIRER}
    slow = {"kind": "latency", **HOLDING, "target": "store", "delay_ms": 150, "duration_ms": 1000}
    store = {"backend": "redis", "url": redis_url, "proxy": True}
    run = _race(store, lock, [slow])
    assert _fault(run)["note"] == "+150±0 ms for 1000 ms"
    assert _violations(run) > 0
    assert run["verdict"] == "ANOMALIES"


def test_zookeeper_partition_expires_the_holder_who_still_believes(zookeeper_hosts: str) -> None:
    [run] = until_shown(
        lambda _: _file_runs("partition.yaml", matrix={"guard.fencing": [False]}),
        lambda runs: _violations(runs[0]) > 0,
    )
    assert _fault(run)["kind"] == "partition"
    assert _violations(run) > 0
    assert run["verdict"] == "ANOMALIES"


def test_partitioned_kazoo_lock_still_says_acquired(zookeeper_hosts: str) -> None:
    from racebench.config.scenario import lock_config
    from racebench.faults.proxy import FaultProxy, address_of, url_through
    from racebench.locks.zookeeper_lock import ZookeeperLock, ZookeeperLockClient

    config = lock_config(
        {"service": "zookeeper_lock", "url": zookeeper_hosts, "session_timeout_ms": 4000}
    )
    service = ZookeeperLock(config, "racebench_partition", None)
    service.setup()
    proxy = FaultProxy(*address_of(zookeeper_hosts))
    proxy.start()
    holder = ZookeeperLockClient(url_through(zookeeper_hosts, proxy.port), service.path, 5, 4, 0)
    other = service.connect(1)
    try:
        holder.acquire()
        proxy.partition()
        started = time.monotonic()
        assert other.acquire() > 0  # granted once the holder's session expired
        assert time.monotonic() - started >= 2.5
        assert holder.lock.is_acquired  # kazoo's recipe does not know
    finally:
        proxy.heal()
        other.close()
        holder.close()
        proxy.stop()
        service.teardown()


def test_reset_lock_connection_ends_the_advisory_session(postgres_url: str) -> None:
    lock = {"service": "advisory", "url": postgres_url, "proxy": True}
    reset = {"kind": "reset", **HOLDING}
    run = _race({"backend": "postgres", "url": postgres_url}, lock, [reset])
    assert _fault(run)["note"] == "connections reset"
    assert _violations(run) > 0
    assert run["verdict"] == "ANOMALIES"


# server_pause


def test_client_pause_stalls_everyone_and_keeps_exclusion(private_redis_url: str) -> None:
    # A private server: CLIENT PAUSE ALL would stall every other user of the shared one.
    lock = {"service": "redis_lock", "url": private_redis_url, "ttl_ms": 2000}
    pause = {"kind": "server_pause", "at": 0.3, "duration_ms": 400}
    store = {"backend": "redis", "url": private_redis_url}
    run = _run(store, lock, [pause], race_window_ms=2)
    assert _fault(run)["note"] == "CLIENT PAUSE 400 ALL"
    assert run["latency_ms"]["max"] >= 300
    assert sum(run["anomalies"].values()) == 0 and run["verdict"] == "safe"


# refusals


def test_clock_skew_is_refused_with_one_line(write_scenario) -> None:
    path = write_scenario(
        {
            "workload": {"type": "stock"},
            "guard": {"strategy": "lock", "lock": {"service": "file_lock"}},
            "faults": [{"kind": "clock_skew", "skew_ms": 5000}],
        }
    )
    done = cli_in_process("run", str(path))
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "faults.0.kind" in line and "clock_skew was removed" in line


def test_a_fault_the_lock_cannot_suffer_is_refused_naming_the_field(write_scenario) -> None:
    path = write_scenario(
        {
            "workload": {"type": "stock"},
            "guard": {"strategy": "lock", "lock": {"service": "file_lock"}},
            "faults": [{"kind": "pause_client", "duration_ms": 10}, {"kind": "expire_early"}],
        }
    )
    done = cli_in_process("run", str(path))
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "faults[1].kind" in line and "file_lock cannot suffer expire_early" in line


@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        ({"kind": "kill_client", "client": "any"}, "client: any picks the client by its state"),
        ({"kind": "kill_client", "client": -1}, "expected a client number (0 or more) or any"),
        ({"kind": "kill_client", "client": 3}, "client 3 does not exist (2 clients)"),
    ],
)
def test_a_fault_client_that_cannot_be_picked_is_refused(
    write_scenario, fault: dict, problem: str
) -> None:
    path = write_scenario(
        {
            "workload": {"type": "stock"},
            "guard": {"strategy": "lock", "lock": {"service": "file_lock"}},
            "clients": 2,
            "faults": [fault],
        }
    )
    done = cli_in_process("run", str(path))
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "faults" in line and ".client: " in line and problem in line, line


def test_a_proxy_fault_needs_a_numbered_client(write_scenario, redis_url: str) -> None:
    path = write_scenario(
        {
            "workload": {"type": "stock"},
            "store": {"backend": "redis", "url": redis_url, "proxy": True},
            "guard": {"strategy": "lock", "lock": {"service": "redis_lock", "url": redis_url}},
            "faults": [{"kind": "reset", "target": "store", **ANY_HOLDER}],
        }
    )
    done = cli_in_process("validate", str(path))
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "faults[0].client" in line and "reset needs a numbered client" in line, line


def test_any_client_hits_whichever_holds_the_lock_first() -> None:
    # file_lock is fair enough that any client may be first; the fault names the one it hit,
    # and that client's critical section is the one stretched by the pause.
    lock = {"service": "file_lock"}
    pause = {"kind": "pause_client", **ANY_HOLDER, "duration_ms": 300}
    run = _run({"backend": "sqlite"}, lock, [pause], duration="1s", race_window_ms=5)
    fault = _fault(run)
    assert fault["start_ms"] < 300, fault
    # The client it names was inside its critical section when the pause began.
    sections = run["timeline"]["critical_sections"]
    assert any(
        client == fault["client"] and start <= fault["start_ms"] and end >= fault["end_ms"]
        for client, start, end in sections
    ), (fault, sections[:5])
    assert run["verdict"] == "safe"
