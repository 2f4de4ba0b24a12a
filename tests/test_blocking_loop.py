"""The blocking closed loop's C fast path (racebench/engine/_blocking_loop.c) against the
Python loop it stands in for, on real SQLite files."""

from __future__ import annotations

import ctypes
import io
import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from racebench.engine import worker
from racebench.history import RECORD, RECORD_DTYPE, TIMES_AT, Outcome, outcome_record
from racebench.stores.base import OK_STEP, REJECTED_STEP, rowcount_step

_blocking_loop = pytest.importorskip("racebench.engine._blocking_loop")
QUOTA, FULL, CHECK, OTHER, RAISED = 0, 1, 2, 3, 4
FAR = 2**62


@pytest.fixture
def stock(tmp_path: Path):
    """A connection to a real SQLite file holding 5 units, and the atomic sale's step."""
    conn = sqlite3.connect(tmp_path / "stock.db", isolation_level=None)
    conn.execute("CREATE TABLE stock (id INTEGER PRIMARY KEY, units INTEGER)")
    conn.execute("INSERT INTO stock VALUES (1, 5)")
    sale = rowcount_step(conn.execute, "UPDATE stock SET units = units - 1 WHERE units >= 1")
    yield conn, sale
    conn.close()


def _run(step, records, *, quota=8, seq=0, offset=0, until=FAR, statement=True):
    inflight, done = (ctypes.c_int64 * 2)(), (ctypes.c_int64 * 2)()
    execute, args = step.statement if statement else (None, ())
    out = _blocking_loop.run(
        step, execute, args, seq, quota, until, records, offset, *TIMES_AT,
        OK_STEP, outcome_record(Outcome.OK), REJECTED_STEP, outcome_record(Outcome.REJECTED),
        inflight, done, 1,
    )  # fmt: skip
    return out, inflight[1], done[1]


@pytest.mark.parametrize("statement", [True, False], ids=["statement", "call"])
def test_the_c_loop_records_what_the_python_loop_would(stock, statement) -> None:
    conn, sale = stock
    records = bytearray(RECORD.size * 8)
    before = time.monotonic_ns()
    (reason, seq, offset, _, _, result), inflight, done = _run(sale, records, statement=statement)
    after = time.monotonic_ns()
    assert (reason, seq, offset, result, inflight, done) == (QUOTA, 8, len(records), None, 0, 8)
    got = np.frombuffer(bytes(records), dtype=RECORD_DTYPE)
    assert list(got["outcome"]) == [Outcome.OK] * 5 + [Outcome.REJECTED] * 3
    for raw, record in zip(RECORD.iter_unpack(bytes(records)), got, strict=True):
        start, end = int(record["start"]), int(record["end"])
        assert before <= start <= end <= after and record["intended"] == start
        # Byte for byte the record the Python loop packs (TIMES_RECORD), times apart.
        assert RECORD.pack(*raw) == RECORD.pack(start, end, *RECORD.unpack(
            outcome_record(int(record["outcome"])))[2:8], start, *raw[9:])  # fmt: skip
    assert np.all(got["start"][1:] >= got["end"][:-1])
    assert conn.execute("SELECT units FROM stock").fetchone() == (0,)


def test_an_exception_comes_back_unrecorded_with_the_operation_in_flight(stock) -> None:
    conn, sale = stock
    records = bytearray(RECORD.size * 8)
    _run(sale, records, quota=2)
    conn.execute("DROP TABLE stock")
    (reason, seq, offset, start, end, exc), inflight, done = _run(
        sale, records, seq=2, offset=2 * RECORD.size
    )
    assert (reason, seq, offset) == (RAISED, 2, 2 * RECORD.size)
    assert isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc)
    # The Python side records it (DirectStep.failed); meanwhile it is still in flight.
    assert inflight == start and 0 < start <= end and done == 0
    assert bytes(records[offset:]) == bytes(len(records) - offset)


def test_the_loop_hands_back_a_full_segment_the_clock_and_any_other_result(stock) -> None:
    _, sale = stock
    records = bytearray(RECORD.size * 3)
    (reason, seq, offset, *_), _, done = _run(sale, records)
    assert (reason, seq, offset, done) == (FULL, 3, len(records), 3)
    (reason, seq, *_), inflight, _ = _run(sale, bytearray(RECORD.size), until=0)
    assert (reason, seq, inflight) == (CHECK, 0, 0)
    rare = object()
    (reason, seq, offset, _, _, result), inflight, _ = _run(
        lambda seq: rare, bytearray(RECORD.size), statement=False
    )
    assert (reason, seq, offset, result) == (OTHER, 0, 0, rare) and inflight > 0


def test_the_loop_refuses_counters_or_records_that_do_not_fit(stock) -> None:
    _, sale = stock
    short = (ctypes.c_int64 * 1)()
    with pytest.raises(ValueError, match="counter array"):
        _blocking_loop.run(
            sale, None, (), 0, 1, FAR, bytearray(RECORD.size), 0, *TIMES_AT,
            OK_STEP, outcome_record(Outcome.OK), REJECTED_STEP, outcome_record(Outcome.REJECTED),
            short, short, 1,
        )  # fmt: skip
    with pytest.raises(ValueError, match="disagree"):
        _run(sale, bytearray(RECORD.size * 2), offset=5)


def test_an_interrupt_in_the_step_propagates(stock) -> None:
    def interrupted(seq: int) -> object:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(interrupted, bytearray(RECORD.size), statement=False)


def _history_without_times(monkeypatch, c_loop: bool) -> list[dict]:
    from racebench.config.scenario import expand
    from racebench.engine.trials import Execution, ExecutionOptions, execute

    if not c_loop:  # the workers are forked from here: they see the Python loop
        monkeypatch.setattr(worker, "_blocking_loop", None)
    stream = io.StringIO()
    scenario = {
        "name": "sold-out",
        "workload": {"type": "stock", "initial": 30},
        "guard": {"strategy": "atomic"},
        "clients": 1,  # one client: the same outcomes in the same order on both loops
        "operations": 100,
    }
    execution = Execution()
    execute(expand(scenario, "test.yaml"), ExecutionOptions(history=stream), execution)
    [run] = execution.runs
    assert run.verdict == "safe"
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all(e.pop("start_ns") <= e.pop("end_ns") for e in events)
    return events


def test_a_run_on_the_c_loop_and_on_the_python_loop_records_the_same(monkeypatch) -> None:
    on_c = _history_without_times(monkeypatch, c_loop=True)
    on_python = _history_without_times(monkeypatch, c_loop=False)
    assert on_c == on_python
    assert [e["outcome"] for e in on_c] == ["ok"] * 30 + ["rejected"] * 70
