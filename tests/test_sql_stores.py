"""PostgreSQL and MySQL/MariaDB beyond the contract suite, against the real servers.

The isolation levels must show what each server really does; retries are counted per error
code; fencing, lock services, lost connections and unreachable servers behave as documented;
nothing is left behind, even after a failed run.
"""

from __future__ import annotations

import time

import pytest

from racebench.config.scenario import lock_config
from racebench.guards import build_operation
from racebench.history import Outcome
from racebench.locks.base import LockTimeout
from racebench.locks.sql_locks import AdvisoryLock, GetLock
from racebench.stores.base import ClientOptions, StaleToken
from racebench.stores.mysql import MysqlStore, connect_kwargs, open_connection
from racebench.stores.postgres import PostgresStore, connect_args
from racebench.stores.postgres import open_connection as open_pg
from racebench.workloads.counters import CounterPlan, LedgerPlan
from tests.conftest import named_after, run_cli, run_scenario_data, unique_namespace
from tests.processes import ours
from tests.race import until_shown

STOCK = {"type": "stock", "initial": 1000}
# The deposit covers 3 withdrawals: 4 clients released together all read 30, so the zero
# balance is crossed in the first round, where write skew shows.
WITHDRAW = {"type": "withdraw", "deposit": 30, "amount": 10}
WORKLOADS = {"stock": STOCK, "withdraw": WITHDRAW}
ANOMALY = {"stock": "lost_updates", "withdraw": "overdrafts"}


def _run(store: dict, workload: str, guard: dict, **extra) -> dict:
    scenario = {
        "name": f"sql-{store['backend']}-{workload}-{guard['strategy']}",
        "workload": WORKLOADS[workload],
        "store": store,
        "guard": guard,
        "clients": 4,
        "operations": 40,
        "race_window_ms": 5,
        **extra,
    }
    [run] = run_scenario_data(scenario)
    return run


@pytest.fixture(params=["postgres", "mysql"])
def sql_store(request, store_for) -> dict:
    return store_for(request.param)


# (backend, workload, strategy, anomaly expected, retry code expected when prevented)
ISOLATION_TRUTHS = [
    ("postgres", "stock", "read_committed", True, None),
    ("postgres", "stock", "repeatable_read", False, "40001"),
    ("postgres", "withdraw", "repeatable_read", True, None),
    ("postgres", "stock", "serializable", False, "40001"),
    ("postgres", "withdraw", "serializable", False, "40001"),
    ("mysql", "stock", "read_committed", True, None),
    ("mysql", "stock", "repeatable_read", True, None),
    ("mysql", "withdraw", "repeatable_read", True, None),
    ("mysql", "stock", "serializable", False, "1213"),
    ("mysql", "withdraw", "serializable", False, "1213"),
]


@pytest.mark.parametrize(
    ("backend", "workload", "strategy", "anomaly", "code"),
    ISOLATION_TRUTHS,
    ids=[f"{b}-{w}-{s}" for b, w, s, _, _ in ISOLATION_TRUTHS],
)
def test_isolation_levels_do_what_the_servers_do(
    store_for, backend: str, workload: str, strategy: str, anomaly: bool, code: str | None
) -> None:
    def attempt(number: int) -> dict:
        run = _run(
            store_for(backend), workload, {"strategy": strategy}, race_window_ms=5 * 3**number
        )
        assert run["operations"]["errors"] == 0, run["errors_sample"]
        if not anomaly:  # checked on every attempt: safety is never retried
            assert sum(run["anomalies"].values()) == 0, run["anomalies"]
        return run

    if anomaly:
        run = until_shown(attempt, lambda run: run["anomalies"][ANOMALY[workload]] > 0)
        assert run["anomalies"][ANOMALY[workload]] > 0, run["anomalies"]
        assert run["verdict"] == "ANOMALIES"
        return
    # Prevention costs aborts, which show only when the clients really collided; each abort
    # is retried and counted under its server error code.
    run = until_shown(attempt, lambda run: run["retries_by_code"].get(code, 0) > 0)
    assert run["verdict"] == "safe"
    assert run["retries_by_code"].get(code, 0) > 0, run["retries_by_code"]
    assert run["operations"]["conflicts"] == 0
    assert sum(run["retries_by_code"].values()) == run["operations"]["retries"]


def test_atomic_withdraw_is_reported_honestly(sql_store: dict) -> None:
    run = _run(sql_store, "withdraw", {"strategy": "atomic"}, operations=80)
    assert not run["claims_safety"]
    overdrafts = run["anomalies"]["overdrafts"]
    assert run["verdict"] == ("ANOMALIES" if overdrafts else "race not reproduced")
    assert run["operations"]["errors"] == 0, run["errors_sample"]


@pytest.mark.parametrize("strategy", ["for_update", "native"])
def test_lock_holding_strategies_report_their_critical_sections(
    sql_store: dict, strategy: str
) -> None:
    if strategy == "native":
        strategy = "advisory" if sql_store["backend"] == "postgres" else "get_lock"
    run = _run(sql_store, "stock", {"strategy": strategy})
    assert run["anomalies"]["mutual_exclusion_violations"] == 0
    assert run["anomalies"]["lost_updates"] == 0
    assert run["verdict"] == "safe"


def _options(client_id: int = 0) -> ClientOptions:
    return ClientOptions(0.0, 3, 0.0, 0.0, client_id, 2)


def _store(backend: str, url: str, namespace: str):
    return (PostgresStore if backend == "postgres" else MysqlStore)(url, namespace)


def test_fenced_primitives(sql_store: dict) -> None:
    namespace = unique_namespace("fence")
    store = _store(sql_store["backend"], sql_store["url"], namespace)
    store.setup(CounterPlan(10, -1, 0), 2)
    try:
        client = store.connect(_options())
        assert client.read_counter(token=2) == 10
        with pytest.raises(StaleToken):
            client.read_counter(token=1)  # older than the registered token
        client.write_counter(9, token=2)
        assert client.read_counter(token=3) == 9
        with pytest.raises(StaleToken):
            client.write_counter(8, token=2)  # a newer holder has read since
        assert client.read_counter() == 9
        client.close()
    finally:
        store.teardown()
    store.setup(LedgerPlan(50, 10), 2)
    try:
        client = store.connect(_options())
        assert client.read_balance(token=5) == 50
        client.append_entry(-10, 0, token=5)
        assert client.read_balance(token=6) == 40
        with pytest.raises(StaleToken):
            client.append_entry(-10, 1, token=5)
        assert client.read_balance() == 40
        client.close()
    finally:
        store.teardown()
    assert named_after([namespace], store.leftovers()) == []


@pytest.mark.parametrize("service", ["advisory", "get_lock"])
def test_lock_service_times_out_and_hands_out_growing_tokens(
    postgres_url: str, mysql_url: str, service: str
) -> None:
    cls, url = (AdvisoryLock, postgres_url) if service == "advisory" else (GetLock, mysql_url)
    config = lock_config({"service": service, "url": url, "acquire_timeout_ms": 100})
    namespace = unique_namespace("lock")
    lock = cls(config, namespace, None)
    lock.setup()
    try:
        holder, waiter = lock.connect(0), lock.connect(1)
        first = holder.acquire()
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            waiter.acquire()
        assert time.monotonic() - started < 5  # it gave up, long before a loaded host would
        waiter.release()  # not the holder: must not free the holder's lock
        with pytest.raises(LockTimeout):
            waiter.acquire()
        holder.release()
        assert waiter.acquire() > first
        waiter.release()
        holder.close()
        waiter.close()
    finally:
        lock.teardown()
    assert named_after([namespace], lock.leftovers()) == []


@pytest.mark.parametrize(
    ("store_backend", "service", "fencing"),
    [("sqlite", "advisory", True), ("postgres", "get_lock", True), ("mysql", "get_lock", False)],
)
def test_sql_lock_services_guard_any_store(
    store_for, postgres_url: str, mysql_url: str, store_backend: str, service: str, fencing: bool
) -> None:
    guard = {"strategy": "lock", "fencing": fencing, "lock": {"service": service}}
    run = _run(store_for(store_backend), "stock", guard)
    assert run["verdict"] == "safe"
    assert run["anomalies"]["mutual_exclusion_violations"] == 0
    assert run["lock"]["acquisitions"] == run["operations"]["attempted"]


def _kill(backend: str, url: str, client) -> None:
    if backend == "postgres":
        conn = open_pg(url)
        conn.execute("SELECT pg_terminate_backend(%s)", (client.conn.info.backend_pid,))
        conn.close()
        return
    conn = open_connection(url)
    with conn.cursor() as cur:
        cur.execute(f"KILL {int(client.conn.thread_id())}")
    conn.close()


def test_lost_connection_is_unknown_and_the_next_operation_recovers(sql_store: dict) -> None:
    backend, url = sql_store["backend"], sql_store["url"]
    store = _store(backend, url, unique_namespace("lost"))
    plan = CounterPlan(10, -1, 0)
    store.setup(plan, 1)
    try:
        client = store.connect(_options())
        operation = build_operation(plan, "atomic", client, None, False)
        assert operation(0)[0] == Outcome.OK
        _kill(backend, url, client)
        outcome, *_, message = operation(1)
        assert outcome == Outcome.UNKNOWN, message
        assert operation(2)[0] == Outcome.OK
        client.close()
    finally:
        store.teardown()


def test_tables_are_dropped_after_a_failed_run(sql_store: dict, monkeypatch) -> None:
    import racebench.engine.trials

    probe = _store(sql_store["backend"], sql_store["url"], "racebench_probe")

    def fail(*args, **kwargs):
        raise RuntimeError("the run failed after setup")

    monkeypatch.setattr(racebench.engine.trials, "run_clients", fail)
    with pytest.raises(RuntimeError):
        _run(sql_store, "withdraw", {"strategy": "none"})
    assert not ours(probe.leftovers())


def test_no_tls_on_loopback_unless_the_url_asks() -> None:
    assert connect_kwargs("mysql://root@127.0.0.1:3306/test")["ssl_disabled"] is True
    assert "ssl_disabled" not in connect_kwargs("mysql://app@db.example.com/shop")
    assert "ssl" in connect_kwargs("mysql://root@127.0.0.1/test?ssl_mode=REQUIRED")
    assert connect_args("postgresql://postgres@127.0.0.1/postgres")[1]["sslmode"] == "disable"
    assert "sslmode" not in connect_args("postgresql://u@127.0.0.1/db?sslmode=require")[1]


def _scenario_file(write_scenario, backend: str, url: str) -> str:
    return str(
        write_scenario(
            {"name": "unreachable", "workload": STOCK, "store": {"backend": backend, "url": url}}
        )
    )


@pytest.mark.parametrize(
    ("backend", "url", "reason"),
    [
        ("postgres", "postgresql://postgres:pw-secret@127.0.0.1:1/postgres", "refused"),
        ("mysql", "mysql://root:pw-secret@127.0.0.1:1/test", "refused"),
        ("mysql", "MYSQL_WRONG_PASSWORD", "authentication failed"),
        ("postgres", "PG_MISSING_DATABASE", "database missing"),
    ],
    ids=["postgres-refused", "mysql-refused", "mysql-wrong-password", "postgres-no-database"],
)
def test_unreachable_server_is_exit_3_with_one_redacted_line(
    request, write_scenario, backend: str, url: str, reason: str
) -> None:
    if url == "MYSQL_WRONG_PASSWORD":
        base = request.getfixturevalue("mysql_url")
        url = base.replace("://root@", "://root:pw-secret@")
    elif url == "PG_MISSING_DATABASE":
        base = request.getfixturevalue("postgres_url")
        url = base.rsplit("/", 1)[0] + "/racebench_no_such_db"
    result = run_cli("run", _scenario_file(write_scenario, backend, url), "-q", timeout=60)
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"racebench: {backend}: cannot connect to ")
    assert reason in lines[0]
    assert "pw-secret" not in result.stderr + result.stdout
