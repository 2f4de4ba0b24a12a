"""The booking and transfer workloads on SQLite, PostgreSQL and MySQL/MariaDB, and transfer
on Redis and ZooKeeper (real servers).

Each unguarded run must show its anomaly (runs grow until it shows, bounded), each safe
strategy must show none, and transfer's random lock order must deadlock and be retried.
The checkers are also tested on hand-made histories, where the right answer is known.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from racebench.history import RECORD_DTYPE, Outcome, RunHistory
from racebench.workloads.counters import FinalState
from tests.conftest import cli_in_process, run_scenario_data
from tests.race import until_shown

BOOKING = {"type": "booking", "seats": 20}
TRANSFER = {"type": "transfer", "accounts": 4, "total": 400, "readers": 1}
# The lock service that lives beside each store.
LOCK_SERVICE = {"sqlite": "file_lock", "postgres": "advisory", "mysql": "get_lock"}
# SQLite has no row locks: its BEGIN IMMEDIATE (`exclusive`) takes the database write lock.
LOCKING = {"sqlite": "exclusive", "postgres": "for_update", "mysql": "for_update"}
DEADLOCK = {"postgres": "40P01", "mysql": "1213"}
SQL = ["sqlite", "postgres", "mysql"]
KEY_VALUE = ["redis", "zookeeper"]
# Transfer's safe strategies on the key-value stores; each lock service defaults to the
# store's own server.
KEY_VALUE_SAFE = {
    "redis": [
        {"strategy": "atomic"},
        {"strategy": "optimistic"},
        {"strategy": "lock", "lock": {"service": "redis_lock"}},
    ],
    "zookeeper": [
        {"strategy": "optimistic"},
        {"strategy": "lock", "lock": {"service": "zookeeper_lock"}},
    ],
}


def _scenario(store: dict, workload: dict, guard: dict, **extra) -> dict:
    return {
        "name": f"{workload['type']}-{store['backend']}-{guard['strategy']}",
        "workload": workload,
        "store": store,
        "guard": guard,
        "clients": 4,
        "operations": 80,
        "race_window_ms": 3,
        **extra,
    }


def _until_anomaly(scenario: dict, *anomalies: str) -> dict:
    """Run with more operations each time until every one of `anomalies` shows (bounded)."""

    def attempt(number: int) -> dict:
        [run] = run_scenario_data({**scenario, "operations": scenario["operations"] * 2**number})
        return run

    return until_shown(attempt, lambda run: all(run["anomalies"][name] for name in anomalies))


def _safe_strategies(backend: str, workload: str) -> list[dict]:
    if backend in KEY_VALUE:
        return KEY_VALUE_SAFE[backend]
    guards = [
        {"strategy": LOCKING[backend]},
        {"strategy": "lock", "lock": {"service": LOCK_SERVICE[backend]}},
    ]
    if backend != "sqlite":
        guards.append({"strategy": "serializable"})
    if workload == "booking":
        guards.append({"strategy": "constraint"})
    return guards


@pytest.mark.parametrize("backend", SQL)
def test_unguarded_booking_sells_seats_twice(store_for, backend: str) -> None:
    run = _until_anomaly(
        _scenario(store_for(backend), BOOKING, {"strategy": "none"}), "double_bookings"
    )
    assert run["anomalies"]["double_bookings"] > 0, run["invariants"]
    assert run["anomalies"]["lost_bookings"] == 0
    assert run["verdict"] == "ANOMALIES"
    example = run["anomaly_examples"][0]
    assert example["kind"] == "double_bookings" and len(example["ops"]) >= 2
    assert re.fullmatch(
        r"c\d+#\d+.* and c\d+#\d+ (both|all) found seat \d+ free and booked it \(double booking\)",
        example["text"],
    ), example["text"]


@pytest.mark.parametrize(
    ("backend", "guard"),
    [(b, g) for b in SQL for g in _safe_strategies(b, "booking")],
    ids=lambda v: v if isinstance(v, str) else v["strategy"],
)
def test_safe_booking_strategies_sell_each_seat_once(store_for, backend: str, guard: dict) -> None:
    [run] = run_scenario_data(_scenario(store_for(backend), BOOKING, guard))
    assert run["operations"]["errors"] == 0, run["errors_sample"]
    assert run["anomalies"]["double_bookings"] == run["anomalies"]["lost_bookings"] == 0
    assert not any(run["anomalies"].values())  # with a lock service: no exclusion violation
    # Every seat is sold exactly once: 20 sales, the other operations found the seat taken.
    assert run["operations"]["ok"] == BOOKING["seats"]
    assert run["verdict"] == "safe"


@pytest.mark.parametrize("backend", SQL + KEY_VALUE)
def test_unguarded_transfers_lose_money_and_readers_see_it(store_for, backend: str) -> None:
    scenario = _scenario(store_for(backend), TRANSFER, {"strategy": "none"})
    run = _until_anomaly(scenario, "total_drift", "read_skew")
    assert run["anomalies"]["total_drift"] > 0, run["invariants"]
    assert run["anomalies"]["read_skew"] > 0, run["invariants"]
    [reads] = [i for i in run["invariants"] if i["name"] == "every read sums to the total"]
    assert "first c0#" in reads["detail"] and "worst c0#" in reads["detail"]
    assert run["verdict"] == "ANOMALIES"
    skews = [e for e in run["anomaly_examples"] if e["kind"] == "read_skew"]
    assert skews[0]["note"].startswith("first") and skews[0]["ops"][0][0] == 0  # the reader
    assert any("worst" in e.get("note", "") for e in skews)
    assert re.fullmatch(r"c0#\d+ read a total of \d+ \([+-]\d+ against 400\).*", skews[0]["text"])


@pytest.mark.parametrize(
    ("backend", "guard"),
    [(b, g) for b in SQL + KEY_VALUE for g in _safe_strategies(b, "transfer")],
    ids=lambda v: v if isinstance(v, str) else v["strategy"],
)
def test_safe_transfer_strategies_conserve_money(store_for, backend: str, guard: dict) -> None:
    [run] = run_scenario_data(_scenario(store_for(backend), TRANSFER, guard, operations=60))
    assert run["operations"]["errors"] == 0, run["errors_sample"]
    assert run["operations"]["conflicts"] == 0
    assert {"total_drift", "negative_balances", "read_skew"} <= run["anomalies"].keys()
    assert not any(run["anomalies"].values()), run["anomalies"]
    assert run["verdict"] == "safe"


@pytest.mark.parametrize(
    ("backend", "workload"),
    [(b, w) for b in ("postgres", "mysql") for w in (BOOKING, TRANSFER)]
    + [(b, TRANSFER) for b in KEY_VALUE],
    ids=lambda v: v if isinstance(v, str) else v["type"],
)
def test_row_workloads_leave_no_table_behind(store_for, backend: str, workload: dict) -> None:
    from racebench.plugins.registry import store_class
    from racebench.util.ownership import new_namespace

    store = store_for(backend)
    run_scenario_data(_scenario(store, workload, {"strategy": "none"}, operations=8))
    own = new_namespace().rsplit("_", 1)[0]  # racebench_p<this pid>h<host>: this process's
    probe = store_class(backend)(store["url"], "racebench_probe")
    assert [t for t in probe.leftovers() if own + "_" in t] == []  # tables, keys, znodes


@pytest.mark.parametrize("backend", ["postgres", "mysql"])
def test_random_lock_order_deadlocks_and_sorted_does_not(store_for, backend: str) -> None:
    # Two accounts: every transfer locks both, half of them in the opposite order.
    workload = {"type": "transfer", "accounts": 2, "total": 200}
    store = store_for(backend)
    # Few operations: PostgreSQL finds each deadlock only after deadlock_timeout (1 s).
    guard = {"strategy": "for_update", "lock_order": "random"}

    def attempt(number: int) -> dict:
        [run] = run_scenario_data(
            _scenario(store, workload, guard, clients=2, operations=6 * (number + 1))
        )
        assert run["anomalies"]["total_drift"] == 0 and run["verdict"] == "safe"  # every run
        return run

    run = until_shown(attempt, lambda run: run["retries_by_code"].get(DEADLOCK[backend], 0) > 0)
    assert run["retries_by_code"].get(DEADLOCK[backend], 0) > 0, run["retries_by_code"]
    assert run["operations"]["conflicts"] == 0  # every deadlock victim was retried

    guard = {"strategy": "for_update", "lock_order": "sorted"}
    [run] = run_scenario_data(_scenario(store, workload, guard, clients=2, operations=16))
    assert DEADLOCK[backend] not in run["retries_by_code"]
    assert run["anomalies"]["total_drift"] == 0 and run["verdict"] == "safe"


def _history(ops: list[tuple[int, int, int, Outcome]]) -> RunHistory:
    """(client, start_ns, value, outcome) per operation; seq counts per client."""
    records = np.zeros(len(ops), dtype=RECORD_DTYPE)
    seqs: dict[int, int] = {}
    seq = []
    for i, (client, start, value, outcome) in enumerate(ops):
        records[i]["start"] = start
        records[i]["end"] = start + 10
        records[i]["read"] = value
        records[i]["outcome"] = outcome
        records[i]["error"] = -1
        seq.append(seqs.get(client, 0))
        seqs[client] = seq[-1] + 1
    clients = np.array([op[0] for op in ops], dtype=np.int32)
    return RunHistory(records, clients, np.array(seq, dtype=np.int64), [])


def test_booking_checker_names_the_double_booked_seat() -> None:
    from racebench.workloads.rows import BookingWorkload

    history = _history([(0, 1, 0, Outcome.OK), (1, 2, 0, Outcome.OK), (1, 3, 0, Outcome.OK)])
    # c0#0 and c1#0 both booked seat 7; c1#1's acknowledged booking is missing.
    final = FinalState(bookings=[(7, 0, 0), (7, 1, 0), (3, 2, 5)])
    check = BookingWorkload(type="booking", seats=10).check(final, history)
    assert check.anomalies == {"double_bookings": 1, "lost_bookings": 1}
    [twice, present] = check.invariants
    assert not twice.holds and "seat 7 held by c0#0, c1#0" in twice.detail
    assert not present.holds


def test_transfer_checker_reports_first_worst_and_last_bad_read() -> None:
    from racebench.workloads.rows import TransferWorkload

    reader, writer = 0, 1
    history = _history(
        [
            (reader, 0, 100, Outcome.OK),
            (reader, 1_000_000_000, 97, Outcome.OK),  # first bad read, -3
            (writer, 1_500_000_000, 0, Outcome.OK),
            (reader, 2_000_000_000, 90, Outcome.OK),  # worst, -10
            (reader, 3_000_000_000, 101, Outcome.OK),  # last, +1
            (reader, 3_500_000_000, 0, Outcome.CONFLICT),  # not acknowledged: no read
        ]
    )
    workload = TransferWorkload(type="transfer", accounts=2, total=100, readers=1)
    check = workload.check(FinalState(balances=[60, 41]), history)
    assert check.anomalies == {"total_drift": 1, "negative_balances": 0, "read_skew": 3}
    reads = check.invariants[-1]
    assert "3 of 4 reads" in reads.detail
    assert "first c0#1 at 1.000s read 97 (-3)" in reads.detail
    assert "worst c0#2 at 2.000s read 90 (-10)" in reads.detail
    assert "last c0#3 at 3.000s read 101 (+1)" in reads.detail


def _refusal(data: dict) -> str:
    from racebench.config.scenario import expand
    from racebench.errors import ScenarioError
    from racebench.plugins.registry import validate_run

    with pytest.raises(ScenarioError) as refused:
        for spec in expand(data, "s.yaml"):
            validate_run(spec)
    return str(refused.value)


def test_row_workloads_refuse_what_does_not_implement_them(write_scenario) -> None:
    base = {"name": "b", "workload": BOOKING, "store": {"backend": "redis"}}
    result = cli_in_process("validate", str(write_scenario(base)))
    assert result.returncode == 2
    assert "workload.type: the redis store does not implement the booking workload" in result.stderr
    sqlite = {**base, "store": {"backend": "sqlite"}}
    refusal = _refusal({**sqlite, "guard": {"strategy": "atomic"}})
    assert "strategy 'atomic' does not apply to the booking workload" in refusal
    refusal = _refusal({**sqlite, "workload": {**TRANSFER, "type": "transfer", "readers": 4}})
    assert "workload.readers: 4 readers leave no client to transfer" in refusal
    guard = {"strategy": "lock", "fencing": True, "lock": {"service": "file_lock"}}
    assert "guard.fencing" in _refusal({**sqlite, "guard": guard})


def test_key_value_stores_refuse_what_they_do_not_implement(write_scenario) -> None:
    transfer = {"name": "t", "workload": TRANSFER, "store": {"backend": "zookeeper"}}
    result = cli_in_process(
        "validate", str(write_scenario({**transfer, "guard": {"strategy": "atomic"}}))
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "guard.strategy: unknown strategy 'atomic' for backend zookeeper" in line
    refusal = _refusal({**transfer, "workload": BOOKING})
    assert "the zookeeper store does not implement the booking workload" in refusal
    redis = {**transfer, "store": {"backend": "redis"}, "guard": {"strategy": "crdt"}}
    assert "strategy 'crdt' does not apply to the transfer workload" in _refusal(redis)
    # A ZooKeeper reader checks every account in one multi: one request, at most 1 MB.
    many = {**transfer, "workload": {**TRANSFER, "accounts": 10_001, "total": 20_002}}
    assert "workload.accounts: 10001 accounts; the zookeeper store takes at most 10000" in (
        _refusal(many)
    )


def test_zookeeper_reads_are_a_snapshot_only_when_validated(store_for) -> None:
    """Why a ZooKeeper reader under `optimistic` checks the versions it read in a multi:
    writers that commit both accounts in one multi still land between a reader's gets."""
    import contextlib
    import random
    import threading
    import time

    from racebench.plugins.registry import store_class
    from racebench.stores.base import ClientOptions, Conflict
    from racebench.workloads.rows import TransferPlan
    from tests.conftest import unique_namespace

    store = store_class("zookeeper")(store_for("zookeeper")["url"], unique_namespace("snap"))
    plan = TransferPlan(accounts=4, total=400, max_amount=5, readers=1)
    store.setup(plan, clients=3)
    clients = [store.connect(ClientOptions(0, 0, 0, 0, client_id=i, clients=3)) for i in range(3)]
    reader, writers = clients[0], clients[1:]
    stop = threading.Event()

    def transfer(client) -> None:
        rng = random.Random()
        while not stop.is_set():
            # A Conflict: the other writer committed first; on to the next transfer.
            with contextlib.suppress(Conflict):
                client._versioned_transfer(*plan.pick(rng))  # one optimistic attempt

    threads = [threading.Thread(target=transfer, args=(w,)) for w in writers]
    validated = 0

    def attempt(number: int) -> int:
        """Reads for a while (longer each attempt); how many plain reads missed the total."""
        nonlocal validated
        missed = 0
        deadline = time.monotonic() + 0.5 * (number + 1)
        while time.monotonic() < deadline:
            missed += sum(reader.read_accounts(plan)) != plan.total
            try:
                assert sum(reader.read_snapshot(plan)) == plan.total  # every validated read
                validated += 1
            except Conflict:
                pass  # a transfer committed between the gets and the checks: read again
        return missed

    try:
        for thread in threads:
            thread.start()
        missed = until_shown(attempt, lambda missed: missed > 0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for client in clients:
            client.close()
        final = store.read_final(plan)
        store.teardown()
    assert missed > 0  # plain gets saw a committed multi halfway
    assert validated > 0
    assert sum(final.balances) == plan.total
