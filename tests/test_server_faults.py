"""Server faults (kill_server, pause_server, restart_server) on servers of our own.

Five Redis servers for Redlock and a three-node ZooKeeper ensemble, each with a pid file
(tests.servers), stand in for the ones `scripts/start-servers.sh --cluster` starts: the
scenarios of scenarios/cluster/ run with their server lists swapped for these. After each
test every server is running again (not stopped) and answers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from racebench.config.scenario import load_raw
from tests import servers
from tests.conftest import REPO, cli_in_process, run_cli, run_scenario_data
from tests.race import until_shown

CLUSTER = REPO / "scenarios" / "cluster"
MANAGED = ("redis_cluster", "zookeeper_ensemble")


def _running(servers: list[dict]) -> None:
    """Every server's pid file names a live process that is not stopped."""
    for server in servers:
        process = psutil.Process(int(Path(server["pid_file"]).read_text()))
        assert process.status() not in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE), server


@pytest.fixture(autouse=True)
def servers_left_running(request):
    yield
    for name in MANAGED:
        if name in request.fixturenames:
            _running(request.getfixturevalue(name))


def _cluster_runs(name: str, servers: list[dict], **overrides) -> list[dict]:
    """The runs of scenarios/cluster/NAME with the lock's servers swapped for `servers`."""
    path = CLUSTER / name
    raw = load_raw(path)
    raw["guard"]["lock"]["servers"] = servers
    raw.update(overrides)
    return run_scenario_data(raw, str(path))


def _fault(run: dict) -> dict:
    [fault] = run["faults"]
    return fault


def _violations(run: dict) -> int:
    return run["anomalies"]["mutual_exclusion_violations"]


def test_redlock_over_five_survives_losing_two_not_a_restart_of_three(
    redis_url: str, redis_cluster: list[dict]
) -> None:

    def attempt(number: int) -> list[dict]:
        killed, restarted = _cluster_runs("redlock-5.yaml", redis_cluster, duration="3s")
        assert _violations(killed) == 0  # safety, on every attempt
        return [killed, restarted]

    # The restart's race needs a client to win three while the holder is inside: bounded.
    killed, restarted = until_shown(attempt, lambda runs: _violations(runs[1]) > 0)
    # Two dead: the holder keeps a grant on the three left, so nobody else wins three of
    # them; after its release the three live servers still grant.
    assert _fault(killed)["note"].endswith("down until the run ended"), _fault(killed)
    assert _violations(killed) == 0
    assert _fault(killed)["grants_after"] > 1
    assert killed["verdict"] == "safe"
    # Three restarted empty: the holder keeps at most two, the next client wins three.
    assert "started again as pid" in _fault(restarted)["note"], _fault(restarted)
    assert _violations(restarted) > 0
    assert restarted["verdict"] == "ANOMALIES"
    assert all(run["passed"] for run in (killed, restarted))


def test_zookeeper_keeps_exclusion_losing_one_node_and_stops_granting_losing_two(
    redis_url: str, zookeeper_ensemble: list[dict]
) -> None:
    one, two = _cluster_runs("zookeeper-ensemble.yaml", zookeeper_ensemble, duration="3s")
    assert _violations(one) == 0 and one["verdict"] == "safe"
    assert _fault(one)["grants_after"] > 1  # the two left form a quorum
    assert _violations(two) == 0 and two["verdict"] == "safe"
    assert _fault(two)["grants_after"] == 0  # one of three is no quorum
    assert "unavailable_ms" not in _fault(two)
    ops = two["operations"]
    assert ops["lock_timeouts"] + ops["errors"] > 0, ops  # the clients waited and gave up


def test_a_paused_redlock_server_holds_its_callers_not_the_lock(
    redis_url: str, redis_cluster: list[dict]
) -> None:
    [run] = _cluster_runs(
        "redlock-5.yaml",
        redis_cluster,
        faults=[{"kind": "pause_server", "at": "0.3s", "instances": 1, "duration_ms": 400}],
        matrix={},
        race_window_ms=5,
        duration="1.5s",
    )
    fault = _fault(run)
    assert fault["note"].startswith("SIGSTOP pid ") and fault["note"].endswith("for 400 ms")
    assert fault["end_ms"] - fault["start_ms"] >= 400
    # Each attempt asks the first server first: those begun during the pause waited for it.
    assert run["lock"]["acquire_ms"]["max"] >= 200, run["lock"]
    assert fault["grants_after"] > 0
    assert _violations(run) == 0 and run["verdict"] == "safe"


def test_a_paused_store_server_holds_its_clients(redis_cluster: list[dict]) -> None:
    # target: store: the store's own server is stopped; its clients wait for it, then go on.
    server = redis_cluster[4]
    [run] = run_scenario_data(
        {
            "name": "store-pause",
            "workload": {"type": "stock", "initial": 100000},
            "store": {"backend": "redis", "url": server["url"], "servers": [server]},
            "guard": {"strategy": "atomic"},
            "clients": 2,
            "duration": "1s",
            "faults": [
                {"kind": "pause_server", "target": "store", "at": "0.2s", "duration_ms": 300}
            ],
        }
    )
    fault = _fault(run)
    assert fault["target"] == "store" and fault["note"].endswith("for 300 ms"), fault
    assert run["latency_ms"]["max"] >= 250, run["latency_ms"]  # the operations it held
    assert run["operations"]["ok"] > 0 and run["operations"]["errors"] == 0
    assert run["verdict"] == "safe"


def test_a_server_killed_for_a_duration_is_started_again_after_it(
    redis_url: str, redis_cluster: list[dict]
) -> None:
    kill = {"kind": "kill_server", "at": "0.2s", "instances": 2, "duration_ms": 300}
    [run] = _cluster_runs(
        "redlock-5.yaml",
        redis_cluster,
        faults=[kill],
        matrix={},
        race_window_ms=5,
        duration="1.2s",
    )
    fault = _fault(run)
    assert "down 300 ms, started again as pid" in fault["note"], fault
    # Started again after the duration (the note says so), not at the run's end.
    assert fault["end_ms"] - fault["start_ms"] >= 300, fault
    assert fault["grants_after"] > 0
    # Two of five back empty within the 5 s ttl could have forgotten a grant: no exclusion
    # is claimed through them, so a run without overlap is not called safe.
    assert _violations(run) == 0 and run["verdict"] == "race not reproduced"


def test_a_paused_zookeeper_member_keeps_exclusion(
    redis_url: str, zookeeper_ensemble: list[dict]
) -> None:
    pause = {"kind": "pause_server", "at": "0.3s", "instances": 1, "duration_ms": 500}
    [run] = _cluster_runs(
        "zookeeper-ensemble.yaml",
        zookeeper_ensemble,
        faults=[pause],
        matrix={},
        duration="1.5s",
    )
    fault = _fault(run)
    assert fault["note"].startswith("SIGSTOP pid ") and fault["note"].endswith("for 500 ms")
    assert _violations(run) == 0 and run["verdict"] == "safe"
    assert fault["grants_after"] > 0


def test_a_zookeeper_store_without_quorum_fails_its_operations_and_the_run_ends(
    zookeeper_ensemble: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    from racebench.stores import zookeeper

    # Shorter than the defaults (10 s, 3 s), for a fast test; the clients are forked.
    monkeypatch.setattr(zookeeper, "SESSION_TIMEOUT_S", 1.5)
    monkeypatch.setattr(zookeeper, "CONNECT_TIMEOUT_S", 0.5)
    hosts = ",".join(server["url"] for server in zookeeper_ensemble)
    started = time.monotonic()
    [run] = run_scenario_data(
        {
            "name": "zk-store-quorum",
            "workload": {"type": "stock", "initial": 100000},
            "store": {"backend": "zookeeper", "url": hosts, "servers": zookeeper_ensemble},
            "guard": {"strategy": "optimistic"},
            "clients": 2,
            "duration": "2s",
            "faults": [{"kind": "kill_server", "target": "store", "at": "0.3s", "instances": 2}],
        }
    )
    # Without quorum every call would wait forever; here each gives up and the run ends.
    assert time.monotonic() - started < 40
    ops = run["operations"]
    assert ops["ok"] > 0 and ops["unknown"] + ops["errors"] > 0, ops
    assert 1.5 <= run["duration_s"] < 10
    assert run["anomalies"]["lost_updates"] == 0


def _one_line_error(done, code: int, *needles: str) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _scenario(servers: list[dict], fault: dict) -> dict:
    return {
        "name": "server-fault",
        "workload": {"type": "stock", "initial": 100},
        "guard": {"strategy": "lock", "lock": {"service": "redlock", "servers": servers}},
        "operations": 10,
        "faults": [fault],
    }


LOOPBACK = {"url": "redis://127.0.0.1:6399/0", "pid_file": "redis.pid"}


@pytest.mark.parametrize(
    ("servers", "fault", "field", "problem"),
    [
        ([], {"kind": "kill_server"}, "faults[0].target", "list them in guard.lock.servers"),
        ([LOOPBACK], {"kind": "restart_server", "instances": 2}, "faults[0].instances", "1 serv"),
        ([LOOPBACK], {"kind": "pause_server"}, "faults[0].duration_ms", "needs duration_ms"),
        (
            [{"url": "redis://192.0.2.7:6379/0", "pid_file": "x.pid"}],
            {"kind": "kill_server"},
            "guard.lock.servers[0].url",
            "not this host",
        ),
    ],
    ids=["no-servers", "too-few", "no-duration", "remote"],
)
def test_a_server_fault_the_scenario_cannot_do_is_refused(
    write_scenario, servers: list[dict], fault: dict, field: str, problem: str
) -> None:
    done = cli_in_process("validate", str(write_scenario(_scenario(servers, fault))))
    _one_line_error(done, 2, f": {field}: ", problem)


def test_a_pid_file_naming_another_process_is_refused_before_anything_is_signalled(
    tmp_path: Path, redis_url: str, write_scenario
) -> None:
    # Our own pid: alive, but it does not listen on the server's port (a stale pid file).
    stale = tmp_path / "stale.pid"
    stale.write_text(f"{os.getpid()}\n")
    missing = {"url": redis_url, "pid_file": str(tmp_path / "missing.pid")}
    from racebench.util.ownership import Owner, temporary_leftovers

    def dead_leftovers() -> set[str]:
        return {t.namespace for t in temporary_leftovers([]) if t.owner is Owner.DEAD}

    before = dead_leftovers()
    for entry, needle in [
        ({"url": redis_url, "pid_file": str(stale)}, "does not listen on port"),
        (missing, "cannot read"),
    ]:
        scenario = _scenario([entry], {"kind": "kill_server"})
        out = tmp_path / "out.json"
        done = run_cli("run", str(write_scenario(scenario)), "--quiet", "--output", str(out))
        _one_line_error(done, 3, "guard.lock.servers[0].pid_file: ", needle)
    # Refused while its faults were prepared: the run had made no work directory yet (it
    # used to leave an empty one behind).
    assert dead_leftovers() - before == set()


def test_a_retitled_server_is_refused_unless_its_start_command_is_given(
    tmp_path: Path, write_scenario
) -> None:
    # Redis by default overwrites its command line with "redis-server 127.0.0.1:PORT".
    [server] = servers.start_redis_cluster(1, keep_command_line=False)
    try:
        entry = server.entry()
        lock = {"service": "redis_lock", "url": server.url, "servers": [entry]}
        scenario = {
            "name": "restart",
            "workload": {"type": "stock", "initial": 1000},
            "guard": {"strategy": "lock", "lock": lock},
            "duration": "1s",
            "faults": [{"kind": "restart_server", "at": "0.2s"}],
        }
        out = tmp_path / "out.json"
        done = run_cli("run", str(write_scenario(scenario)), "--quiet", "--output", str(out))
        _one_line_error(done, 3, "guard.lock.servers[0]: ", "rewrote its command line", ".start")
        before = int(server.pid_file.read_text())
        port = server.url.rsplit(":", 1)[1].split("/")[0]
        entry["start"] = f"redis-server --port {port} --bind 127.0.0.1 --save '' --dir {tmp_path}"
        [run] = run_scenario_data(scenario)
        assert "started again as pid" in _fault(run)["note"], _fault(run)
        after = int(server.pid_file.read_text())
        assert after != before and _gone(before)
        _running([entry])
        assert psutil.Process(after).cmdline()[0].startswith("redis-server")  # `start` ran
    finally:
        servers.stop_managed_server(server)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
