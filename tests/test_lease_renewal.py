"""`guard.lock.renew`: a watchdog keeps a lease through a slow section, not through a pause.

On real Redis servers: the scenarios in scenarios/ run through the real CLI, and the watchdog
is watched directly on the lock key.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from racebench.config.scenario import FaultConfig, expand, fault_config, lock_config
from racebench.errors import ScenarioError
from racebench.plugins.registry import lock_class
from tests.conftest import REPO, run_scenario_data, unique_namespace
from tests.race import cli_runs_until_shown


def _service(lock: dict, namespace: str):
    config = lock_config(lock)
    return lock_class(config.service)(config, namespace, None)


def _violations(run: dict) -> int:
    return run["anomalies"]["mutual_exclusion_violations"]


def _second_loses_nothing(runs: list[dict]) -> None:
    """Safety of the renewed or fenced run, checked on every attempt."""
    assert runs[1]["anomalies"]["lost_updates"] == 0, runs[1]["anomalies"]


def _plain_and_second(scenario: Path, out: Path, fenced: bool) -> tuple[str, dict, dict]:
    """Run a two-run scenario file until its plain run shows the violation and, when the
    second run is fenced, the second run a rejected stale write (bounded)."""

    def shown(runs: list[dict]) -> bool:
        rejected = runs[1]["lock"]["stale_writes_rejected"] > 0
        return _violations(runs[0]) > 0 and (rejected or not fenced)

    done, (plain, second) = cli_runs_until_shown(scenario, out, shown, _second_loses_nothing)
    assert done.returncode == 0, done.stderr
    return done.stdout, plain, second


def test_renewal_keeps_a_section_longer_than_the_ttl_exclusive(
    redis_url: str, tmp_path: Path
) -> None:
    scenario = REPO / "scenarios" / "lease-renewal.yaml"
    stdout, plain, renewed = _plain_and_second(scenario, tmp_path / "renewal.json", fenced=False)
    assert not plain["lease_renewal"] and renewed["lease_renewal"]
    assert _violations(plain) > 0 and plain["verdict"] == "ANOMALIES"
    assert plain["claims_safety"] is False
    assert _violations(renewed) == 0 and renewed["anomalies"]["lost_updates"] == 0
    assert renewed["claims_safety"] is True and renewed["verdict"] == "safe"
    # Every renewed section outlasted the 300 ms lease, and none was shared.
    assert renewed["lock"]["hold_ms"]["p50"] >= 700
    assert "lock:redis_lock+renew" in stdout


def test_redlock_renewal_keeps_a_slow_section_exclusive(redlock_urls: list[str]) -> None:
    [run] = run_scenario_data(
        {
            "name": "redlock-renewal",
            "workload": {"type": "stock", "initial": 100},
            "store": {"backend": "sqlite"},
            "guard": {
                "strategy": "lock",
                "lock": {"service": "redlock", "urls": redlock_urls, "ttl_ms": 300, "renew": True},
            },
            "clients": 2,
            "operations": 4,
            "race_window_ms": 700,
        }
    )
    assert _violations(run) == 0 and run["anomalies"]["lost_updates"] == 0
    assert run["verdict"] == "safe"
    assert run["lock"]["hold_ms"]["p50"] >= 700


def test_a_pause_stops_the_watchdog_too_and_only_fencing_saves_the_data(
    redis_url: str, tmp_path: Path
) -> None:
    scenario = REPO / "scenarios" / "faults" / "gc-pause-renewal.yaml"
    _, plain, fenced = _plain_and_second(scenario, tmp_path / "gc.json", fenced=True)
    assert plain["lease_renewal"] and fenced["lease_renewal"]
    assert plain["claims_safety"] is False
    assert _violations(plain) > 0 and plain["verdict"] == "ANOMALIES"
    assert _violations(fenced) > 0 and fenced["lock"]["stale_writes_rejected"] > 0
    assert fenced["anomalies"]["lost_updates"] == 0 and fenced["verdict"] == "safe"


def test_a_partition_keeps_the_renewals_from_redis_and_the_lease_lapses(
    redis_url: str, tmp_path: Path
) -> None:
    scenario = REPO / "scenarios" / "faults" / "partition-renewal.yaml"
    _, plain, fenced = _plain_and_second(scenario, tmp_path / "partition.json", fenced=True)
    assert plain["claims_safety"] is False
    assert _violations(plain) > 0 and plain["verdict"] == "ANOMALIES"
    assert fenced["lock"]["stale_writes_rejected"] > 0
    assert fenced["anomalies"]["lost_updates"] == 0 and fenced["verdict"] == "safe"


@pytest.mark.parametrize("service", ["redis_lock", "redlock"])
def test_the_watchdog_renews_while_held_and_stops_at_release(
    redis_url: str, redlock_urls: list[str], service: str
) -> None:
    where = {"url": redis_url} if service == "redis_lock" else {"urls": redlock_urls}
    # A lease long enough that a loaded host's scheduling delays do not lapse it between
    # renewals (the watchdog renews every third of it).
    lock = _service(
        {"service": service, "ttl_ms": 600, "renew": True, **where}, unique_namespace("rn1")
    )
    holder = lock.connect(0)
    leases = holder.leases if service == "redlock" else [holder.lease]
    try:
        holder.acquire()
        time.sleep(2.0)  # more than three leases long
        held = sum(lease.redis.pttl(lease.keys[0]) > 0 for lease in leases)
        assert held >= len(leases) // 2 + 1  # Redlock: a majority is enough
        watchdog = holder.watchdog
        holder.release()
        assert not watchdog._thread.is_alive()
        assert all(lease.redis.exists(lease.keys[0]) == 0 for lease in leases)
    finally:
        holder.close()
        lock.teardown()


def test_the_watchdog_stops_when_the_lease_was_lost(redis_url: str) -> None:
    lock = _service(
        {"service": "redis_lock", "url": redis_url, "ttl_ms": 60, "renew": True},
        unique_namespace("rn2"),
    )
    first, second = lock.connect(0), lock.connect(1)
    try:
        first.acquire()
        lock.expire_early()  # the lease is gone behind the holder's back
        time.sleep(0.01)
        second.acquire()
        second.watchdog.stop()  # watch the first one's watchdog alone
        first.watchdog._thread.join(timeout=5)  # its next tick finds the lease gone
        assert not first.watchdog._thread.is_alive()
        # It never extended the second holder's lease: that one lapses on time.
        time.sleep(0.1)
        assert second.lease.redis.exists(second.lease.keys[0]) == 0
    finally:
        first.close()
        second.close()
        lock.teardown()


def test_claims_follow_what_renewal_can_and_cannot_do() -> None:
    renewed = _service({"service": "redis_lock", "ttl_ms": 100, "renew": True}, "x")
    plain = _service({"service": "redis_lock", "ttl_ms": 100}, "x")
    assert renewed.claims_exclusion(race_window_ms=500)
    assert not plain.claims_exclusion(race_window_ms=500)

    def fault(kind: str, **extra) -> FaultConfig:
        return fault_config({"kind": kind, **extra})

    pause = fault("pause_client", when="holding", client=0, duration_ms=400)
    assert not renewed.claims_exclusion(5, [pause])
    short_pause = fault("pause_client", when="holding", client=0, duration_ms=30)
    assert renewed.claims_exclusion(500, [short_pause])
    assert not renewed.claims_exclusion(5, [fault("expire_early", at="1s")])


def test_renew_on_a_lock_without_a_lease_is_a_scenario_error() -> None:
    data = {
        "name": "x",
        "workload": {"type": "stock", "initial": 10},
        "store": {"backend": "postgres"},
        "guard": {"strategy": "lock", "lock": {"service": "advisory", "renew": True}},
    }
    with pytest.raises(
        ScenarioError,
        match=r"guard\.lock\.renew: renew is a key of redis_lock, redlock, not of advisory",
    ):
        expand(data, "x.yaml")
