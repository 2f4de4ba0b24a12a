"""Workers on a real Dask cluster (a LocalCluster of 2 worker processes): same verdicts as
locally, one timeline across clocks, a lost worker, and the refusals."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("distributed")

from racebench.config.scenario import expand, load_raw
from racebench.engine.cluster import ClusterOptions, count_overlaps_across_hosts
from racebench.engine.cluster_task import SKEW_VARIABLE
from racebench.engine.trials import Execution, ExecutionOptions, cluster_address, execute
from racebench.errors import ScenarioError
from tests.conftest import REPO, run_cli
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
    return [run.model_dump() for run in execution.runs]


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


def test_faults_a_cluster_cannot_do_are_refused_before_anything_runs() -> None:
    base = {
        "name": "faults",
        "workload": {"type": "stock", "initial": 100},
        "store": {"backend": "redis", "proxy": True},
        "guard": {"strategy": "lock", "lock": {"service": "redis_lock"}},
        "cluster": "local:1",
        "operations": 10,
    }
    partition = {"kind": "partition", "target": "store", "at": "10ms", "duration_ms": 5}
    anyone = {"kind": "pause_client", "when": "holding", "client": "any", "duration_ms": 5}
    for fault, field in ((partition, "faults[0].kind"), (anyone, "faults[0].client")):
        (spec,) = expand({**base, "faults": [fault]}, "x.yaml")
        with pytest.raises(ScenarioError, match="cluster") as refused:
            cluster_address(spec, ClusterOptions())  # refused before any cluster is started
        assert field in str(refused.value)


def _lease(redis_url: str, ttl_ms: int, fault: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": "cluster-fault",
        "workload": {"type": "stock", "initial": 1000},
        "store": {"backend": "redis", "url": redis_url},
        "guard": {
            "strategy": "lock",
            "lock": {
                "service": "redis_lock",
                "url": redis_url,
                "ttl_ms": ttl_ms,
                "acquire_timeout_ms": 5000,
                "retry_delay_ms": 0.1,
            },
        },
        "clients": 4,
        "duration": "1s",
        "race_window_ms": 5,
        "faults": [fault],
        **extra,
    }


def test_pause_client_stops_one_remote_client_past_its_lease(
    cluster: ClusterOptions, redis_url: str
) -> None:
    # gc-pause.yaml on the cluster: client 0 (on the Dask worker whose clock is 3 s ahead)
    # is stopped for 300 ms while it holds a 50 ms lease; the others take the lock meanwhile,
    # and client 0 wakes inside its section: overlaps.
    session = cluster.session("local:2")
    dask_pids = session.client.run(os.getpid)
    pause = {"kind": "pause_client", "when": "holding", "client": 0, "duration_ms": 300}
    run = until_shown(
        lambda number: _runs(_lease(redis_url, 50, pause), cluster)[0],
        lambda run: run["anomalies"]["mutual_exclusion_violations"] > 0,
    )
    (fault,) = run["faults"]
    assert fault["note"] == "SIGSTOP for 300 ms" and fault["client"] == 0
    # On the coordinator's timeline, skewed clock or not: inside the run, about 300 ms long.
    assert 0 <= fault["start_ms"] < fault["end_ms"] <= run["duration_s"] * 1000
    assert 300 <= fault["end_ms"] - fault["start_ms"] < 1000
    assert run["anomalies"]["mutual_exclusion_violations"] > 0
    assert run["operations"]["unknown"] == 0
    # Each client ran alone in a process of its own: the Dask workers were not stopped.
    assert session.client.run(os.getpid) == dask_pids
    assert len(run["load"]["cluster"]["workers"]) == 4


def test_kill_client_on_a_cluster_leaves_its_operation_unknown(
    cluster: ClusterOptions, redis_url: str
) -> None:
    session = cluster.session("local:2")
    dask_pids = session.client.run(os.getpid)
    kill = {"kind": "kill_client", "when": "holding", "client": 1}
    run = _runs(_lease(redis_url, 200, kill), cluster)[0]
    (fault,) = run["faults"]
    assert fault["note"] == "SIGKILL inside its critical section"
    # The killed client's operation may have happened or not: unknown. Its lock expired with
    # its lease (200 ms), then the others went on; the run completed and nothing was lost.
    assert run["operations"]["unknown"] == 1
    assert 100 <= fault["unavailable_ms"] < 1000
    assert run["verdict"] == "safe"
    assert not any(w["lost"] for w in run["load"]["cluster"]["workers"])
    assert session.client.run(os.getpid) == dask_pids


def test_custom_workloads_run_on_the_cluster(cluster: ClusterOptions) -> None:
    # A SQL template and a Python plug-in travel to the Dask workers. The template's own
    # invariant counts the operations that ended ok (shipped back from both hosts) against
    # the rows in its table; the plug-in's lock keeps the stock.
    small = {"clients": 4, "workers": 2, "operations": 40}
    seats = {**load_raw(REPO / "examples/seat-booking.yaml"), **small}
    seats["matrix"] = {"guard.strategy": ["none"]}
    checkout = {**load_raw(REPO / "examples/plugin/checkout.yaml"), **small}
    checkout["matrix"] = {"guard": [{"strategy": "lock", "lock": {"service": "file_lock"}}]}
    seat_run, checkout_run = (_runs(data, cluster)[0] for data in (seats, checkout))
    for run in (seat_run, checkout_run):
        assert run["operations"]["attempted"] == 40, run["label"]
        assert len({w["address"] for w in run["load"]["cluster"]["workers"]}) == 2
    assert seat_run["operations"]["ok"] > 0
    assert seat_run["anomalies"]["acknowledged booking missing"] == 0
    assert checkout_run["verdict"] == "safe" and checkout_run["anomalies"]["oversold_units"] == 0


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
        # process outright (SIGKILL, no goodbye) while its clients are mid-operation. By
        # 2,000 records the 100 units are long sold: what the killed worker did after its
        # last shipment (not in the history) can only be rejections, so the history still
        # explains the final state and the verdict stays decidable.
        if done >= 2000 and not killed:
            os.kill(victim_pid, signal.SIGKILL)
            killed.append(victim_pid)

    data = _stock("atomic", duration="4s", race_window_ms=5)
    data["workload"]["initial"] = 100
    del data["operations"]
    execution = Execution()
    progress = ExecutionOptions(
        clusters=cluster, progress=lambda spec, trial: kill_once_records_arrive
    )
    execute(expand(data, "cluster-test.yaml"), progress, execution)
    run = execution.runs[0].model_dump()
    assert killed
    lost = [w for w in run["load"]["cluster"]["workers"] if w["lost"]]
    assert len(lost) == 1
    # Each of its clients may have had an operation in flight (known from its last batch,
    # or started after it): unknown, never dropped; what it shipped before is kept.
    assert run["operations"]["unknown"] == len(lost[0]["clients"])
    assert run["operations"]["ok"] + run["operations"]["rejected"] >= 2000
    assert run["verdict"] == "safe"
    # The killed Dask worker could not remove its work directory; it names its owner, so
    # `racebench clean` on this host sees the owner dead and removes it (here, the test).
    from racebench.util.ownership import Owner, temporary_leftovers

    left = [t for t in temporary_leftovers([]) if t.pid == victim_pid]
    assert left and all(t.owner is Owner.DEAD for t in left)
    for leftover in left:
        shutil.rmtree(leftover.namespace, ignore_errors=True)
