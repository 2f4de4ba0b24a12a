"""Workers on a real Dask cluster (a LocalCluster of 2 worker processes): same verdicts as
locally, one timeline across clocks, a lost worker, and the refusals."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("distributed")

from racebench.config.scenario import expand
from racebench.engine.cluster import (
    SKEW_VARIABLE,
    ClusterOptions,
    count_overlaps_across_hosts,
)
from racebench.engine.trials import Execution, ExecutionOptions, execute
from tests.conftest import run_cli
from tests.race import until_shown

SKEW_NS = 3_000_000_000  # worker "0" runs 3 s ahead of the coordinator


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterOptions]:
    """Two Dask worker processes; worker "0" has a clock skewed by SKEW_NS (test hook)."""
    os.environ[SKEW_VARIABLE] = f"0={SKEW_NS}"
    options = ClusterOptions(address="local:2")
    try:
        options.session("local:2")
    finally:
        del os.environ[SKEW_VARIABLE]  # read by the worker processes when they started
    yield options
    options.close()


def _runs(data: dict[str, Any], clusters: ClusterOptions) -> list[dict[str, Any]]:
    execution = Execution()
    execute(expand(data, "cluster-test.yaml"), ExecutionOptions(clusters=clusters), execution)
    return execution.runs


def _stock(strategy: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "cluster",
        "workload": {"type": "stock", "initial": 1000},
        "store": {"backend": "sqlite"},
        "guard": {"strategy": strategy},
        "clients": 4,
        "workers": 2,
        "operations": 200,
        "race_window_ms": 2,
        **extra,
    }


def test_quickstart_gives_the_same_verdicts_on_the_cluster(cluster: ClusterOptions) -> None:
    none = until_shown(
        lambda number: _runs(_stock("none", race_window_ms=2 * 3**number), cluster)[0],
        lambda run: run["anomalies"]["lost_updates"] > 0,
    )
    atomic = _runs(_stock("atomic"), cluster)[0]
    assert none["anomalies"]["lost_updates"] > 0 and none["verdict"] == "ANOMALIES"
    assert atomic["anomalies"]["lost_updates"] == 0 and atomic["verdict"] == "safe"
    placed = atomic["load"]["cluster"]["workers"]
    # Spread evenly: each of the two Dask workers runs one racebench worker of two clients.
    assert len({w["address"] for w in placed}) == 2
    assert sorted(c for w in placed for c in w["clients"]) == [0, 1, 2, 3]


def test_the_clock_offset_estimate_removes_a_skewed_clock(cluster: ClusterOptions) -> None:
    session = cluster.session("local:2")
    names = session.client.run(lambda dask_worker: dask_worker.name)
    skewed = next(a for a, n in names.items() if str(n) == "0")
    plain = next(a for a, n in names.items() if str(n) != "0")
    offset = session.clock_offset(skewed)
    assert abs(offset.offset_ns - SKEW_NS) <= offset.uncertainty_ns
    unskewed = session.clock_offset(plain)  # one estimate: two would differ in their noise
    assert abs(unskewed.offset_ns) <= unskewed.uncertainty_ns
    # Mapped onto the coordinator's timeline, a run's operations start after the barrier and
    # end before the run did, whichever clock took them: no 3 s leap.
    # A short run, so that a loaded host cannot stretch it near the 3 s a leap would add.
    run = _runs(_stock("atomic", operations=40), cluster)[0]
    assert 0 < run["duration_s"] < 3


def test_lease_expiry_shows_certain_overlaps_across_workers(
    cluster: ClusterOptions, redis_url: str
) -> None:
    data = {
        "name": "lease",
        "workload": {"type": "stock", "initial": 1000},
        "store": {"backend": "redis", "url": redis_url},
        "guard": {
            "strategy": "lock",
            "lock": {"service": "redis_lock", "url": redis_url, "ttl_ms": 2},
        },
        "clients": 4,
        "workers": 2,
        "operations": 200,
        "race_window_ms": 6,
    }
    # The lease (2 ms) is far shorter than the section (6 ms): overlaps of ~4 ms, longer
    # than the clocks' uncertainty on one host (well under 1 ms) are certain.
    run = until_shown(
        lambda number: _runs({**data, "race_window_ms": 6 * 2**number}, cluster)[0],
        lambda run: run["anomalies"]["mutual_exclusion_violations"] > 0,
    )
    cluster_info = run["load"]["cluster"]
    assert run["anomalies"]["mutual_exclusion_violations"] > 0
    assert cluster_info["possible_overlaps"] is not None
    assert all(w["uncertainty_ms"] < 50 for w in cluster_info["workers"])


def test_overlaps_shorter_than_the_clock_uncertainty_are_only_possible() -> None:
    client = np.array([0, 1, 2])
    starts = np.array([0, 900, 5000])
    ends = np.array([1000, 2000, 6000])
    # Clients 0 and 1 overlap by 100 ns. On one host: certain. On two hosts whose clocks are
    # each known to within 100 ns: possible only.
    assert count_overlaps_across_hosts(client, starts, ends, {0: 0, 1: 0}, {0: 100}) == (1, 0)
    assert count_overlaps_across_hosts(client, starts, ends, {0: 0, 1: 1}, {0: 50, 1: 50}) == (
        0,
        1,
    )
    assert count_overlaps_across_hosts(client, starts, ends, {0: 0, 1: 1}, {0: 10, 1: 10}) == (
        1,
        0,
    )


def test_credentials_are_not_sent_in_clear_text_to_another_host(write_scenario) -> None:
    path = write_scenario(
        {
            "name": "secret",
            "workload": {"type": "likes"},
            "store": {"backend": "redis", "url": "redis://:hunter2@127.0.0.1:6379/0"},
            "cluster": "tcp://192.0.2.10:8786",
            "operations": 10,
        }
    )
    result = run_cli("run", str(path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "tls://" in lines[0] and "--insecure-cluster" in lines[0]
    assert "hunter2" not in result.stderr + result.stdout


def test_faults_on_a_cluster_are_refused_with_one_line(write_scenario) -> None:
    path = write_scenario(
        {
            "name": "faults",
            "workload": {"type": "stock", "initial": 100},
            "guard": {"strategy": "lock", "lock": {"service": "file_lock"}},
            "cluster": "local:1",
            "faults": [{"kind": "pause_client", "at": "10ms", "duration_ms": 5}],
            "operations": 10,
        }
    )
    result = run_cli("run", str(path))
    assert result.returncode == 2, result.stderr
    assert "faults are not supported on a cluster" in result.stderr


def test_doctor_checks_reachability_from_every_dask_worker(
    cluster: ClusterOptions, write_scenario, redis_url: str
) -> None:
    scheduler = cluster.session("local:2").client.scheduler.address
    path = write_scenario(
        {
            "name": "reach",
            "workload": {"type": "likes"},
            "store": {"backend": "redis", "url": redis_url},
            "matrix": {"store.url": [redis_url, "redis://127.0.0.1:1/0"]},
        }
    )
    result = run_cli("doctor", str(path), "--cluster", scheduler)
    assert result.returncode == 3, result.stderr
    # The unreachable URL fails here and from each of the two workers; the good one is ok
    # from all three places.
    failures = result.stderr.strip().splitlines()
    assert len(failures) == 3
    assert sum("(from tcp://127.0.0.1:" in line for line in failures) == 2
    assert result.stdout.count("tcp://127.0.0.1:") >= 4


def test_a_killed_dask_worker_leaves_unknown_operations_and_a_completed_run(
    cluster: ClusterOptions,
) -> None:
    # Last in this module: the LocalCluster's nanny replaces the killed worker afterwards.
    session = cluster.session("local:2")
    victim_pid = max(session.client.run(os.getpid).values())
    killed: list[int] = []

    def kill_once_records_arrive(done: int, errors: int) -> None:
        # Shipped records prove the clients are past the barrier: kill one Dask worker
        # process outright (SIGKILL, no goodbye) while its clients are mid-operation.
        if done >= 20 and not killed:
            os.kill(victim_pid, signal.SIGKILL)
            killed.append(victim_pid)

    data = _stock("atomic", duration="4s", race_window_ms=5)
    del data["operations"]
    execution = Execution()
    progress = ExecutionOptions(
        clusters=cluster, progress=lambda spec, trial: kill_once_records_arrive
    )
    execute(expand(data, "cluster-test.yaml"), progress, execution)
    run = execution.runs[0]
    assert killed
    lost = [w for w in run["load"]["cluster"]["workers"] if w["lost"]]
    assert len(lost) == 1
    # Its clients were mid-operation when it died: those operations may or may not have
    # happened, and are recorded as such; what it shipped before is kept.
    assert run["operations"]["unknown"] >= 1
    assert run["operations"]["ok"] > 20
    assert run["verdict"] == "safe"
