"""The client engine: logical clients on worker processes, open loop, load figures, limits."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from racebench.analysis.verdict import load_figures
from racebench.engine.worker import WorkerOutput
from racebench.protocol import RunnerResult
from tests.conftest import REPO, cli_in_process, run_cli, run_scenario_data
from tests.processes import killing_and_cleaning_alone
from tests.race import until_shown

LIKES_NONE = {
    "name": "engine",
    "workload": {"type": "likes"},
    "guard": {"strategy": "none"},
    "race_window_ms": 1,
}


@pytest.mark.parametrize("workers", [1, 2, "clients"])
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_unguarded_likes_lose_updates_at_any_worker_count(backend, workers, store_for) -> None:
    """Clients of one worker interleave in the race window (an await, or a thread's sleep)."""
    scenario = {**LIKES_NONE, "store": store_for(backend), "clients": 4, "workers": workers}

    def attempt(number: int) -> dict:
        [run] = run_scenario_data({**scenario, "operations": 400 * (number + 1)})
        assert run["operations"]["ok"] == run["operations"]["attempted"]
        return run

    run = until_shown(attempt, lambda run: run["anomalies"]["lost_updates"] > 0)
    assert run["anomalies"]["lost_updates"] > 0
    assert run["workers"] == (4 if workers == "clients" else workers)


def test_atomic_redis_on_the_event_loop_loses_nothing(redis_url: str) -> None:
    [run] = run_scenario_data(
        {
            "name": "atomic",
            "workload": {"type": "stock", "initial": 1000},
            "store": {"backend": "redis", "url": redis_url},
            "guard": {"strategy": "atomic"},
            "clients": 64,
            "workers": 2,
            "operations": 1200,
        }
    )
    assert run["operations"]["ok"] == 1000 and run["operations"]["rejected"] == 200
    assert run["anomalies"] == {"oversold_units": 0, "lost_updates": 0}
    assert run["verdict"] == "safe"


def test_which_sql_clients_run_on_the_event_loop() -> None:
    from racebench.engine.trials import execution_model
    from racebench.stores.mysql import MysqlStore
    from racebench.stores.postgres import PostgresStore

    assert execution_model(PostgresStore, "atomic", 8) == "asyncio"
    assert execution_model(PostgresStore, "for_update", 80) == "thread"
    # The lean clients write on the bare socket: a session that may use TLS stays on threads.
    assert execution_model(PostgresStore, "atomic", 8, "postgresql://db.example/x") == "thread"
    remote = "postgresql://db.example/x?sslmode=disable"
    assert execution_model(PostgresStore, "atomic", 8, remote) == "asyncio"
    assert execution_model(MysqlStore, "atomic", 8) == "asyncio"
    assert execution_model(MysqlStore, "for_update", 64) == "thread"
    assert execution_model(MysqlStore, "atomic", 64, "mysql://root@db.example/test") == "thread"


@pytest.mark.parametrize(
    ("backend", "workload", "clients"),
    [("postgres", "stock", 40), ("postgres", "withdraw", 40), ("mysql", "stock", 64)],
)
def test_sql_on_the_event_loop_keeps_its_claims(
    store_for, backend: str, workload: str, clients: int
) -> None:
    """One worker with enough clients for the lean asyncio path (racebench list says when)."""
    store = store_for(backend)
    base = {"name": "sql", "store": store, "clients": clients, "workers": 1, "race_window_ms": 2}
    if workload == "stock":
        shape = {"type": "stock", "initial": 300}
    else:
        shape = {"type": "withdraw", "deposit": 3000, "amount": 10}
    [atomic] = run_scenario_data(
        {**base, "workload": shape, "guard": {"strategy": "atomic"}, "operations": 400}
    )
    ops = atomic["operations"]
    assert ops["ok"] + ops["rejected"] == 400 and ops["errors"] == ops["unknown"] == 0
    if workload == "stock":
        assert ops["ok"] == 300
        assert sum(atomic["anomalies"].values()) == 0 and atomic["verdict"] == "safe"
    else:  # the guarded INSERT reads the sum from its statement's snapshot: overdrafts allowed
        assert atomic["verdict"] in ("ANOMALIES", "race not reproduced")

    def unguarded_run(number: int) -> dict:
        window = {"race_window_ms": 2 * 3**number}
        [run] = run_scenario_data(
            {**base, **window, "workload": shape, "guard": {"strategy": "none"}, "operations": 400}
        )
        return run

    unguarded = until_shown(unguarded_run, lambda run: sum(run["anomalies"].values()) > 0)
    assert sum(unguarded["anomalies"].values()) > 0


def test_a_client_fault_runs_every_client_in_its_own_process() -> None:
    [run] = run_scenario_data(
        {
            **LIKES_NONE,
            "clients": 3,
            "workers": 1,
            "operations": 300,
            "faults": [{"kind": "pause_client", "at": 0.05, "duration_ms": 50}],
        }
    )
    assert run["workers"] == 3


def test_worker_specs_pickle(tmp_path: Path) -> None:
    """The worker unit can travel to another process or host (issue 15)."""
    from racebench.config.scenario import expand
    from racebench.engine.runner import plan_workers
    from racebench.engine.trials import ClientFactory, make_store
    from racebench.engine.worker import RateSpec

    [spec] = expand({**LIKES_NONE, "store": {"backend": "redis"}, "clients": 5}, "t.yaml")
    factory = ClientFactory(spec, make_store(spec, "ns"), None, {})
    specs = plan_workers(factory, 5, 2, 1000, tmp_path, RateSpec(100.0))
    copies = pickle.loads(pickle.dumps(specs))
    assert [c.clients for c in copies] == [(0, 2, 4), (1, 3)]
    assert [sum(c.quotas) for c in copies] == [600, 400]
    assert [c.rate.ops_per_s for c in copies] == [60.0, 40.0]


def test_client_bound_when_a_worker_saturates_its_core() -> None:
    busy = WorkerOutput(0, cpu_s=0.97, wall_s=1.0)
    idle = WorkerOutput(1, cpu_s=0.2, wall_s=1.0)
    figures = load_figures(RunnerResult(0, [], False, workers=2, outputs=[busy, idle]), None)
    assert figures["client_bound"] is True
    assert "97% of a core" in figures["client_bound_reason"]
    assert figures["worker_cpu_share"] == [0.97, 0.2]
    calm = load_figures(RunnerResult(0, [], False, workers=1, outputs=[idle]), None)
    assert calm["client_bound"] is False


def test_lag_from_a_busy_host_is_not_blamed_on_the_workers() -> None:
    """Lag past the line from workers that computed little means the loop was waiting (for a
    core the server under test held, or on a blocking call): more workers would not help."""
    from racebench.analysis.metrics import new_histogram

    lag = new_histogram()
    for value_us in [50] * 90 + [2_500] * 10:
        lag.record_value(value_us)
    waiting = WorkerOutput(0, cpu_s=0.2, wall_s=1.0, lag_histogram=lag.encode())
    figures = load_figures(RunnerResult(0, [], False, workers=1, outputs=[waiting]), None)
    assert figures["client_bound"] is True
    reason = figures["client_bound_reason"]
    assert "with no worker above 20% of a core" in reason
    assert "for a core other processes held or on a call that blocks it" in reason
    assert "run the clients on a host of their own" in reason
    assert "add workers" not in reason
    computing = WorkerOutput(0, cpu_s=0.7, wall_s=1.0, lag_histogram=lag.encode())
    figures = load_figures(RunnerResult(0, [], False, workers=1, outputs=[computing]), None)
    assert figures["client_bound_reason"].endswith("add workers or hosts")


def _late_lag_parts(tmp_path: Path, holder: str, seconds: float) -> dict[str, int]:
    """What a sampled loop's thread did in its late samples while a chain of callbacks held
    the loop, each one in turn: "computing" (2 ms of CPU each), "blocked" (sleeping 2 ms
    each, as a step calling a blocking driver) or "busy" (0.3 ms of CPU each)."""
    import asyncio
    import multiprocessing as mp

    from racebench.engine.runner import LocalControl
    from racebench.engine.worker import WorkerSpec, _Worker, new_event_loop

    loop = new_event_loop()
    worker = _Worker(
        WorkerSpec(0, (), None, (), tmp_path), LocalControl(mp.get_context("fork"), 1, 1)
    )

    def spin(seconds: float) -> None:
        until = time.thread_time() + seconds
        while time.thread_time() < until:
            pass

    def computing() -> None:
        spin(0.002)
        loop.call_soon(computing)

    def blocked() -> None:
        time.sleep(0.002)
        loop.call_soon(blocked)

    def busy() -> None:
        spin(0.0003)
        loop.call_soon(busy)

    errors: list[dict] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    worker.sample_lag(loop)
    loop.call_soon({"computing": computing, "blocked": blocked, "busy": busy}[holder])
    loop.run_until_complete(asyncio.sleep(seconds))
    worker.stop_sampling_lag()
    # A sample's callbacks still queued when sampling stopped end without reading the closed
    # run-queue file (its descriptor may already be another file's).
    loop.run_until_complete(asyncio.sleep(0.03))
    loop.close()
    assert not errors, errors
    return worker.lag_parts_us


def _largest(parts: dict[str, int]) -> str:
    return max(parts, key=lambda k: parts[k])


@pytest.mark.skipif(not Path("/proc/thread-self/schedstat").exists(), reason="Linux schedstat")
def test_late_loop_samples_say_whether_it_computed_blocked_or_waited_for_a_core(
    tmp_path: Path,
) -> None:
    """The sampler splits its late samples into what the loop's thread did: a callback that
    computes, one that sleeps, and a busy loop that shares its core with another busy process
    (the server's backends on a small host) each show as their own part."""
    import multiprocessing as mp

    # Beside other busy processes a computing loop also waits for its core (3 spinning
    # processes here: 50 ms computing to 31-44 ms waiting), so computing is asked to lead the
    # blocked part and to be a good share, not to be the largest.
    computing = _late_lag_parts(tmp_path, "computing", 0.4)
    assert computing["computing"] >= 0.35 * sum(computing.values()) > 0, computing
    assert computing["computing"] > 3 * computing["blocked"], computing
    blocked = _late_lag_parts(tmp_path, "blocked", 0.4)
    assert blocked["blocked"] >= 0.5 * sum(blocked.values()) > 0, blocked

    # The busy loop and a process spinning on the same core: the scheduler takes turns, and a
    # sample whose turn spans the other's slice waited on the run queue for that long.
    ctx = mp.get_context("fork")
    core = min(os.sched_getaffinity(0))
    ready = ctx.Event()

    def spin() -> None:
        os.sched_setaffinity(0, {core})
        ready.set()
        while True:
            pass

    hog = ctx.Process(target=spin, daemon=True)
    hog.start()
    parent, child = ctx.Pipe()

    def sample() -> None:
        os.sched_setaffinity(0, {core})
        parts: dict[str, int] = {}
        # Until late samples add up to 20 ms, bounded: how often a turn spans the other's
        # slice is the scheduler's call.
        for _ in range(10):
            for k, v in _late_lag_parts(tmp_path, "busy", 0.3).items():
                parts[k] = parts.get(k, 0) + v
            if sum(parts.values()) >= 20_000:
                break
        child.send(parts)

    try:
        assert ready.wait(10)
        sampler = ctx.Process(target=sample)
        sampler.start()
        assert parent.poll(30), "the sampler did not report"
        parts = parent.recv()
        sampler.join(5)
    finally:
        hog.kill()
        hog.join()
    assert sum(parts.values()) > 0, parts
    assert _largest(parts) == "waiting_for_core", parts


def test_the_late_loop_samples_name_the_cause_and_the_advice() -> None:
    """With what the late samples did, the caption names the largest part and the advice
    that fits it; where the kernel did not say, the workers' CPU shares decide as before."""
    from racebench.analysis.metrics import new_histogram

    lag = new_histogram()
    for value_us in [50] * 90 + [2_500] * 10:
        lag.record_value(value_us)

    def reason(parts: dict[str, int], cpu_s: float = 0.2) -> str:
        output = WorkerOutput(
            0, cpu_s=cpu_s, wall_s=1.0, lag_histogram=lag.encode(), lag_parts_us=parts
        )
        figures = load_figures(RunnerResult(0, [], False, workers=1, outputs=[output]), None)
        assert figures["client_bound"] is True
        return figures["client_bound_reason"]

    waited = reason({"computing": 1_000, "waiting_for_core": 20_000, "blocked": 4_000})
    assert "event-loop lag p99 2.5 ms, 80% of it waiting for a core other processes held" in waited
    assert waited.endswith("run the clients on a host of their own")
    blocked = reason({"computing": 1_000, "waiting_for_core": 1_000, "blocked": 8_000})
    assert "80% of it in a call that blocked the loop" in blocked
    assert blocked.endswith("keep blocking calls off the loop")
    computing = reason({"computing": 9_000, "waiting_for_core": 0, "blocked": 1_000})
    assert "90% of it the loop computing:" in computing
    assert computing.endswith("add workers or hosts")
    # A second part of a quarter or more is named too; the largest decides the advice.
    both = reason({"computing": 5_100, "waiting_for_core": 4_500, "blocked": 400})
    assert "51% of it the loop computing and 45% waiting for a core other processes held:" in both
    assert both.endswith("add workers or hosts")
    # A saturated worker asks for more workers whatever the lag was.
    saturated = reason({"computing": 0, "waiting_for_core": 9_000, "blocked": 0}, cpu_s=0.95)
    assert saturated.startswith("a worker used 95% of a core; event-loop lag")
    assert saturated.endswith("add workers or hosts")
    # No run-queue figures (not Linux): the CPU shares decide.
    assert "the loop was waiting, for a core" in reason({"computing": 0, "blocked": 9_000})


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_loop_lag_measures_a_busy_loop_not_an_idle_one(tmp_path: Path, loop_kind) -> None:
    """On an idle loop the sampler measures (next to) nothing, though both loops' timers
    fire up to a millisecond late for their resolution; on a loop that a computing callback
    holds for 30 ms it measures that."""
    import asyncio
    import multiprocessing as mp

    from racebench.engine.runner import LocalControl
    from racebench.engine.worker import WorkerSpec, _Worker, new_event_loop

    def lag_ms(block_s: float, percentile: float) -> float:
        loop = new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
        worker = _Worker(
            WorkerSpec(0, (), None, (), tmp_path), LocalControl(mp.get_context("fork"), 1, 1)
        )

        def hold() -> None:
            # A callback computing for block_s of CPU (not of wall time: beside other busy
            # processes, that is what the sampler counts of a late timer).
            until = time.thread_time() + block_s
            while time.thread_time() < until:
                pass
            loop.call_later(0.05, hold)

        worker.sample_lag(loop)
        if block_s:
            loop.call_later(0.05, hold)
        loop.run_until_complete(asyncio.sleep(0.6))
        worker.stop_sampling_lag()
        loop.close()
        histogram = worker.lag_histogram()
        assert histogram.get_total_count() >= 20
        return histogram.get_value_at_percentile(percentile) / 1000

    # The median: an idle virtual CPU's wake-ups put a few samples in the milliseconds.
    assert lag_ms(0, 50) < 0.2
    # A late timer counts only the CPU the loop spent beyond the 10 ms period: 20 of 30 ms.
    assert lag_ms(0.03, 99) >= 15


def _server_pause_run(redis_url: str, rate: str | None) -> dict:
    lock = {"service": "redis_lock", "url": redis_url, "ttl_ms": 5000}
    scenario = {
        "name": "stall",
        "workload": {"type": "likes"},
        "store": {"backend": "redis", "url": redis_url},
        "guard": {"strategy": "lock", "lock": lock},
        "clients": 4,
        "workers": 1,
        "duration": "3s",
        "faults": [{"kind": "server_pause", "at": 1.0, "duration_ms": 500}],
    }
    if rate is not None:
        scenario["rate"] = rate
    [run] = run_scenario_data(scenario)
    return run


def test_open_loop_shows_a_stall_that_the_closed_loop_hides(private_redis_url: str) -> None:
    """Coordinated omission: a closed loop stops sending while the server stalls, so only the
    few operations in flight see the stall; an open loop keeps the schedule and counts each
    operation's latency from when it was due. A private Redis: the pause stalls all its users."""
    open_loop = _server_pause_run(private_redis_url, "400/s")
    assert open_loop["arrival"] == "400/s constant"
    response, service = open_loop["latency_ms"], open_loop["service_time_ms"]
    # ~200 of ~1,200 operations were due during the 500 ms stall: p99 is nearly all of it,
    # while only the 4 operations in flight when it began were slow to serve.
    assert response["p99"] >= 400
    assert service["p99"] < response["p99"] / 2
    assert response["p90"] > 2 * service["p90"]
    assert open_loop["load"]["open_loop"]["late"] > 100
    closed = _server_pause_run(private_redis_url, None)
    assert closed["service_time_ms"] is None and closed["arrival"] == "closed loop"
    assert closed["latency_ms"]["max"] >= 400  # the stall happened...
    # ...but the closed loop stopped sending meanwhile, so it hardly shows in its figures.
    assert closed["latency_ms"]["p90"] < response["p90"] / 2
    assert closed["latency_ms"]["p99"] < response["p99"]


def test_a_rate_beyond_what_the_loop_can_schedule_still_runs_the_clients(
    redis_url: str,
) -> None:
    """An open loop whose rate no client could keep (a billion a second): the clients run
    flat out, every operation is late, and what came due but never started counts as
    dropped. (Before the bounded queue, the schedule never yielded here: 0 operations.)"""
    [run] = run_scenario_data(
        {
            "name": "flood",
            "workload": {"type": "likes"},
            "store": {"backend": "redis", "url": redis_url},
            "guard": {"strategy": "atomic"},
            "clients": 4,
            "workers": 1,
            "duration": "1s",
            "rate": "1e9/s",
        }
    )
    attempted = run["operations"]["attempted"]
    assert attempted > 1000, run["operations"]
    assert run["verdict"] == "safe"
    open_loop = run["load"]["open_loop"]
    # All but those of the first millisecond (due at once, started within 1 ms) were late.
    assert open_loop["late"] >= 0.95 * attempted, (open_loop, attempted)
    # Came due in the second: ~1e9, far beyond what ran.
    assert open_loop["dropped"] > 1000 * attempted
    assert run["latency_ms"]["p50"] > 100  # counted from when each was due


def test_a_run_beyond_the_server_connection_limit_is_refused(
    postgres_url: str, write_scenario
) -> None:
    path = write_scenario(
        {
            "workload": {"type": "likes"},
            "store": {"backend": "postgres", "url": postgres_url},
            "clients": 20_000,
            "operations": 40_000,
        }
    )
    done = run_cli("run", str(path), "-q")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "clients" in line and "max_connections" in line


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def test_workers_die_with_their_parent(tmp_path: Path, write_scenario) -> None:
    # Its `clean` would remove the dead run of a crash test in a second copy of the suite.
    with killing_and_cleaning_alone():
        _workers_die_with_their_parent(tmp_path, write_scenario)


def _workers_die_with_their_parent(tmp_path: Path, write_scenario) -> None:
    # The killed parent cannot tear down: its SQLite file stays in tmp_path.
    store = {"backend": "sqlite", "url": str(tmp_path / "data.db")}
    scenario = {**LIKES_NONE, "store": store, "clients": 2, "workers": 2, "duration": "60s"}
    path = write_scenario(scenario)
    exe = Path(sys.executable).with_name("racebench")
    proc = subprocess.Popen(
        [str(exe), "run", str(path), "-q", "--results-dir", str(path.parent)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            workers = _children(proc.pid)
        assert len(workers) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(1.0)
        alive = [w for w in workers if Path(f"/proc/{w}").exists() and not _zombie(w)]
        assert alive == []
    finally:
        if proc.poll() is None:
            proc.kill()
        # The killed run's temporary files (racebench.leftovers), so that no later test
        # sees them.
        run_cli("clean", str(path), "--dir", str(path.parent))


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_cli_workers_and_rate_flags_drive_an_open_loop(tmp_path: Path, write_scenario) -> None:
    path = write_scenario({**LIKES_NONE, "clients": 4, "race_window_ms": 0})
    result = tmp_path / "r.json"
    args = ["--workers", "2", "--rate", "2000/s", "--duration", "1s", "-q", "-o", str(result)]
    done = run_cli("run", str(path), *args)
    assert done.returncode == 0, done.stderr
    assert "service" in done.stdout and "dropped" in done.stdout
    [run] = json.loads(result.read_text())["runs"]
    assert run["arrival"] == "2000/s constant" and run["workers"] == 2
    assert 1000 <= run["operations"]["attempted"] <= 2100
    assert run["service_time_ms"]["p99"] <= run["latency_ms"]["p99"]
    assert set(run["load"]) >= {"worker_cpu_share", "loop_lag_ms", "client_bound", "open_loop"}


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"arrival": "poisson"}, "arrival: an arrival process needs an open loop"),
        ({"rate": "fast"}, "rate: expected a rate such as 5000/s"),
        ({"workers": 0}, "workers: expected a number of processes"),
    ],
)
def test_bad_engine_settings_are_refused_with_one_line(write_scenario, changes, problem) -> None:
    done = cli_in_process("run", str(write_scenario({**LIKES_NONE, **changes})))
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert problem in line


def test_list_says_how_each_backend_runs_its_clients() -> None:
    done = cli_in_process("list")
    assert done.returncode == 0
    assert "asyncio, lean RESP over hiredis" in done.stdout
    assert "a thread per client (blocking driver)" in done.stdout
    assert os.linesep in done.stdout


def test_a_thousand_postgres_clients_run_on_two_workers(roomy_postgres_url: str) -> None:
    # A private server with max_connections=1100: a thousand sessions on two event loops.
    [run] = run_scenario_data(
        {
            "name": "thousand",
            "workload": {"type": "stock", "initial": 10_000},
            "store": {"backend": "postgres", "url": roomy_postgres_url},
            "guard": {"strategy": "atomic"},
            "clients": 1000,
            "workers": 2,
            "operations": 1000,
        }
    )
    assert run["operations"]["attempted"] == 1000
    assert run["operations"]["ok"] == 1000 and run["operations"]["errors"] == 0
    assert all(invariant["holds"] for invariant in run["invariants"])
    assert run["anomalies"] == {"lost_updates": 0, "oversold_units": 0}
    assert run["verdict"] == "safe"
    assert run["load"]["workers"] == 2


def test_the_private_server_refuses_more_clients_than_its_max_connections(
    roomy_postgres_url: str, write_scenario
) -> None:
    path = write_scenario(
        {
            "workload": {"type": "likes"},
            "store": {"backend": "postgres", "url": roomy_postgres_url},
            "clients": 1200,
            "operations": 1200,
        }
    )
    done = run_cli("run", str(path), "-q")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "clients" in line and "max_connections" in line


def test_a_failing_teardown_never_masks_the_trials_own_error() -> None:
    from racebench.engine.trials import _tear_down

    ran: list[str] = []

    def broken() -> None:
        ran.append("broken")
        raise ConnectionError("server gone")

    with pytest.raises(ValueError, match="the trial's error"):
        try:
            raise ValueError("the trial's error")
        finally:
            _tear_down(broken, None, lambda: ran.append("next"))
    assert ran == ["broken", "next"]  # every step ran after the failed one

    with pytest.raises(ConnectionError):  # no error before: the teardown's own is raised
        _tear_down(broken, lambda: ran.append("last"))
    assert ran[-1] == "last"
