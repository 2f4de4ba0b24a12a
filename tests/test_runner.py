"""The runner and the history files, on the embedded store."""

from __future__ import annotations

from racebench.history import RECORD
from tests.conftest import run_scenario_data
from tests.race import until_shown


def test_a_client_history_grows_past_one_segment() -> None:
    from racebench.history import _SEGMENT_RECORDS

    operations = _SEGMENT_RECORDS + 1000
    [run] = run_scenario_data(
        {
            "name": "segments",
            "workload": {"type": "likes"},
            "guard": {"strategy": "atomic"},
            "clients": 1,
            "operations": operations,
        }
    )
    assert run["operations"]["attempted"] == operations
    assert run["operations"]["ok"] == operations
    assert run["anomalies"] == {"lost_updates": 0}
    assert RECORD.size == 72


def test_duration_stops_the_run_and_counts_every_operation() -> None:
    def attempt(number: int) -> dict:
        [run] = run_scenario_data(
            {
                "name": "deadline",
                "workload": {"type": "likes"},
                "guard": {"strategy": "none"},
                "clients": 2,
                "duration": "1s",
                "race_window_ms": 1 + 2 * number,
            }
        )
        # The deadline holds on every attempt; a loaded host may take a while to stop.
        assert 0.9 <= run["duration_s"] < 5
        # Each operation is acknowledged.
        assert run["operations"]["ok"] == run["operations"]["attempted"]
        return run

    # The likes it lost are the race, counted exactly (bounded: until it shows).
    run = until_shown(attempt, lambda run: run["anomalies"]["lost_updates"] > 0)
    assert run["operations"]["attempted"] > 20
    assert run["anomalies"]["lost_updates"] > 0


def test_an_outcome_only_record_is_the_full_record_byte_for_byte() -> None:
    # The blocking loop packs an atomic statement's record as TIMES_RECORD; the history
    # reader knows only RECORD: the two must agree to the byte.
    from racebench.history import NO_VALUE, TIMES_RECORD, Outcome, constant_parts

    start, end = 1_234_567_890_123, 1_234_567_905_456
    for outcome in (Outcome.OK, Outcome.REJECTED):
        middle, tail = constant_parts(outcome)
        packed = TIMES_RECORD.pack(start, end, middle, start, tail)
        assert packed == RECORD.pack(start, end, 0, 0, 0, outcome, 0, -1, start, NO_VALUE, NO_VALUE)


def test_a_sold_out_stock_records_each_sale_and_refusal_on_the_blocking_loop() -> None:
    [run] = run_scenario_data(
        {
            "name": "sold-out",
            "workload": {"type": "stock", "initial": 50},
            "guard": {"strategy": "atomic"},
            "clients": 2,
            "operations": 400,
        }
    )
    assert run["operations"]["ok"] == 50
    assert run["operations"]["rejected"] == 350
    assert run["verdict"] == "safe"


def test_a_direct_step_fails_as_its_operation_does_on_a_real_sqlite_file() -> None:
    # The blocking loop calls an outcome-only step itself (no Operation frame around it) and
    # turns its exception into a result by DirectStep.failed: it must be what the Operation
    # would have returned.
    import sqlite3

    from racebench.guards import OK_RESULT, build_operation, direct_step
    from racebench.history import NO_VALUE, Outcome
    from racebench.plugins.registry import store_class
    from racebench.stores.base import OK_STEP, ClientOptions
    from racebench.workloads.counters import CounterPlan
    from tests.conftest import unique_namespace

    store = store_class("sqlite")("", unique_namespace("direct"))
    plan = CounterPlan(delta=-1, floor=0, initial=10)
    store.setup(plan, clients=1)
    client = store.connect(ClientOptions(0, 0, 0, 0, client_id=0, clients=1))
    try:
        operation = build_operation(plan, "atomic", client, None, False)
        direct = direct_step(operation)
        assert direct is not None
        assert direct.step(0) is OK_STEP and operation(1) is OK_RESULT
        with sqlite3.connect(store.path) as outside:
            outside.execute(f"DROP TABLE {store.namespace}_counter")
        try:
            direct.step(2)
        except Exception as exc:  # what the blocking loop catches
            via_direct = direct.failed(exc)
        via_operation = operation(3)
        assert via_direct == via_operation
        assert via_direct[0] == Outcome.ERROR and via_direct[5:7] == (NO_VALUE, NO_VALUE)
        assert "no such table" in str(via_direct[7])
    finally:
        client.close()
        store.teardown()
