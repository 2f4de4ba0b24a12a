"""kill -9 of racebench: its clients die with it, and `doctor`/`clean` find and remove what
the dead run left (tables, Redis keys, znodes, lock and temporary files)."""

from __future__ import annotations

import glob
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.processes import alive, killing_and_cleaning_alone, start_run, wait_for_clients

# (store backend, lock service): together they leave every kind of server object.
SETUPS = [
    ("postgres", "zookeeper_lock"),  # tables, znodes
    ("redis", "redis_lock"),  # keys (with a time to live)
    ("mysql", "get_lock"),  # tables, the lock's fence table
    ("sqlite", "file_lock"),  # a temporary database directory, a lock file
]


@pytest.fixture(autouse=True)
def _alone() -> Iterator[None]:
    """No second copy of the suite may `clean` while this test's dead run is being looked
    at (its doctor would miss what the other's clean removed)."""
    with killing_and_cleaning_alone():
        yield


@pytest.mark.parametrize(("backend", "service"), SETUPS)
def test_kill_9_kills_clients_and_clean_removes_what_the_run_left(
    backend: str, service: str, tmp_path: Path, write_scenario, store_for, request
) -> None:
    lock: dict = {"service": service}
    if service == "zookeeper_lock":
        lock["url"] = request.getfixturevalue("zookeeper_hosts")
    if service == "file_lock":
        lock["url"] = str(tmp_path)
    store = store_for(backend)
    path = write_scenario(
        {
            "name": "crash",
            "workload": {"type": "stock", "initial": 1_000_000},
            "store": store,
            "guard": {"strategy": "lock", "lock": lock},
            "clients": 2,
            "duration": "30s",
            "race_window_ms": 1,
        }
    )
    results = tmp_path / "results"
    proc = start_run(
        str(path), "-q", "-o", str(results / "r.json"), "--history", str(results / "h.jsonl")
    )
    clients = wait_for_clients(proc, 2)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    proc.wait()
    while any(alive(pid) for pid in clients) and time.monotonic() - killed < 5:
        time.sleep(0.01)
    assert not any(alive(pid) for pid in clients)
    assert time.monotonic() - killed < 1.0, "clients outlived their parent by more than 1 s"

    owner = f"racebench_p{proc.pid}h"
    doctor = run_cli("doctor", str(path), "--dir", str(results))
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    mine = [
        line for line in doctor.stdout.splitlines() if owner in line or f"-p{proc.pid}-" in line
    ]
    store_line = "racebench-sqlite-p" if backend == "sqlite" else f"{backend} store"
    assert any(store_line in line for line in mine), doctor.stdout
    assert any(f"{service} lock" in line for line in mine) or service == "redis_lock", doctor.stdout
    assert any(".h.jsonl.racebench-p" in line for line in mine), doctor.stdout
    assert all(f"run pid {proc.pid} is gone" in line for line in mine)
    assert "racebench clean" in doctor.stderr
    if backend == "redis":
        import redis

        client = redis.Redis.from_url(store["url"])
        keys = list(client.scan_iter(match=f"racebench:{owner}*"))
        ttls = {key.decode().rsplit(":", 1)[1]: client.ttl(key) for key in keys}
        client.close()
        # The lock key is a lease of its own (10 s), there only if a client held the lock at
        # the kill (between a release and the next grant there is none); the data and the
        # token last a day.
        lock_ttl = ttls.pop("lock", None)
        assert lock_ttl is None or 0 < lock_ttl <= 10, lock_ttl
        assert {"counter", "slots", "fence", "token"} == set(ttls)
        assert all(86_000 < ttl <= 86_400 for ttl in ttls.values()), ttls
    assert glob.glob(f"/dev/shm/racebench-run-p{proc.pid}-*") + glob.glob(
        f"/tmp/racebench-run-p{proc.pid}-*"
    )

    cleaned = run_cli("clean", str(path), "--dir", str(results))
    assert cleaned.returncode == 0, cleaned.stderr
    removed = [line.removeprefix("removed: ") for line in cleaned.stdout.splitlines()]
    assert [line.removeprefix("leftover: ") for line in mine] == [
        line for line in removed if owner in line or f"-p{proc.pid}-" in line
    ], cleaned.stdout
    for temp in ("/tmp", "/dev/shm"):
        assert not glob.glob(f"{temp}/racebench-*-p{proc.pid}-*")
    assert not list(results.glob(".*"))

    again = run_cli("clean", str(path), "--dir", str(results))
    assert again.returncode == 0, again.stderr
    # Only this run's objects: another run on the machine may have died meanwhile.
    assert not [
        line for line in again.stdout.splitlines() if owner in line or f"-p{proc.pid}-" in line
    ]
    after = run_cli("doctor", str(path), "--dir", str(results))
    assert owner not in after.stdout


def test_clean_keeps_the_objects_of_a_run_that_is_still_going(
    tmp_path: Path, write_scenario, redis_url: str
) -> None:
    import redis

    path = write_scenario(
        {
            "name": "live",
            "workload": {"type": "likes"},
            "store": {"backend": "redis", "url": redis_url},
            "guard": {"strategy": "atomic"},
            "clients": 2,
            "duration": "60s",
        }
    )
    result = tmp_path / "r.json"
    proc = start_run(str(path), "-q", "-o", str(result))
    wait_for_clients(proc, 2)
    cleaned = run_cli("clean", str(path), "--dir", str(tmp_path))
    assert cleaned.returncode == 0, cleaned.stderr
    owner = f"racebench_p{proc.pid}h"
    assert any(
        line.startswith("kept: ") and owner in line and "still going" in line
        for line in cleaned.stdout.splitlines()
    ), cleaned.stdout
    client = redis.Redis.from_url(redis_url)
    assert len(list(client.scan_iter(match=f"racebench:{owner}*"))) == 3
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    [run] = json.loads(result.read_text())["runs"]
    assert run["verdict"] == "safe", run  # its final state was still there to check
    assert not list(client.scan_iter(match=f"racebench:{owner}*"))  # its own teardown
    client.close()


@pytest.mark.parametrize("backend", ["postgres", "mysql"])
def test_clean_drops_a_dead_runs_sql_template_tables(
    backend: str, tmp_path: Path, write_scenario, request: pytest.FixtureRequest
) -> None:
    """A SQL template's `{{table:x}}` tables are `<namespace>_x`: clean drops them too."""
    import subprocess
    import sys

    from racebench.util.ownership import host_tag
    from racebench.workloads.custom.sql_dialects import DIALECTS

    url = request.getfixturevalue(f"{backend}_url")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no process has any more: the owner of the tables is dead
    namespace = f"racebench_p{dead.pid}h{host_tag()}_0badcafe"
    table = f"{namespace}_my_template_table"
    conn = DIALECTS[backend]().open(url)
    try:
        conn.cursor().execute(f"CREATE TABLE {table} (seat INT)")
        path = write_scenario(
            {
                "name": "template-leftover",
                "workload": {"type": "stock"},
                "store": {"backend": backend, "url": url},
                "guard": {"strategy": "none"},
            }
        )
        cleaned = run_cli("clean", str(path), "--dir", str(tmp_path))
        assert cleaned.returncode == 0, cleaned.stderr
        assert namespace in cleaned.stdout, cleaned.stdout
        cur = conn.cursor()
        cur.execute(f"SELECT count(*) FROM information_schema.tables WHERE table_name = '{table}'")
        assert cur.fetchone()[0] == 0, f"{table} was not dropped"
    finally:
        conn.cursor().execute(f"DROP TABLE IF EXISTS {table}")
        conn.close()
