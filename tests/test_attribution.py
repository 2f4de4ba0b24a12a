"""Attribution names the operations behind each anomaly, on hand-made histories whose answer
is known (the real runs are checked in test_store_contract and test_row_workloads)."""

from __future__ import annotations

import numpy as np

from racebench.history import NO_VALUE, RECORD_DTYPE, Outcome, RunHistory
from racebench.workloads.attribution import MAX_EXAMPLES, lost_updates, over_time, write_skews
from racebench.workloads.counters import (
    FinalState,
    LedgerRow,
    LikesWorkload,
    StockWorkload,
    WithdrawWorkload,
)
from racebench.workloads.rows import BookingWorkload, TransferWorkload

# (client, seq, start, end, read, written, outcome)
Op = tuple[int, int, int, int, int, int, Outcome]


def history(ops: list[Op]) -> RunHistory:
    records = np.zeros(len(ops), dtype=RECORD_DTYPE)
    for i, (_, _, start, end, read, written, outcome) in enumerate(ops):
        records[i]["start"], records[i]["end"] = start, end
        records[i]["read"], records[i]["written"] = read, written
        records[i]["outcome"], records[i]["error"] = outcome, -1
    clients = np.array([op[0] for op in ops], dtype=np.int32)
    seqs = np.array([op[1] for op in ops], dtype=np.int64)
    return RunHistory(records, clients, seqs, [])


OK, REJECTED, UNKNOWN = Outcome.OK, Outcome.REJECTED, Outcome.UNKNOWN


def test_a_lost_update_names_the_write_it_overwrote() -> None:
    h = history(
        [
            (0, 15, 0, 50, 43, 42, OK),
            (1, 16, 60, 100, 42, 41, OK),  # wrote 41 first...
            (3, 17, 70, 200, 42, 41, OK),  # ...read 42 before it and wrote 41 again
            (2, 4, 210, 250, 41, 40, OK),
            (2, 5, 260, 300, 40, 39, UNKNOWN),  # not acknowledged: never blamed
            (4, 1, 270, 310, 40, 39, UNKNOWN),
        ]
    )
    [example] = lost_updates(h)
    assert example.text == (
        "c3#17 read 42 and wrote 41 over c1#16, which had also written 41 (lost update)"
    )
    assert example.ops == ((3, 17), (1, 16))
    assert (example.start_ns, example.end_ns) == (60, 200)
    stock = StockWorkload(type="stock", initial=43, quantity=1)
    check = stock.check(FinalState(value=40), h)
    assert check.anomalies["lost_updates"] == 1 and check.examples == [example]


def test_lost_updates_come_in_the_order_they_happened_and_stop_at_the_cap() -> None:
    # 30 pairs of likes that each wrote the same value: 30 lost updates.
    ops: list[Op] = []
    for n in range(30):
        ops.append((0, n, 10 * n, 10 * n + 5, n, n + 1, OK))
        ops.append((1, n, 10 * n, 10 * n + 8, n, n + 1, OK))
    check = LikesWorkload(type="likes").check(FinalState(value=30), history(ops))
    assert check.anomalies == {"lost_updates": 30}
    assert len(check.examples) == MAX_EXAMPLES
    assert [e.ops for e in check.examples[:2]] == [((1, 0), (0, 0)), ((1, 1), (0, 1))]


def test_operations_without_values_are_counted_but_not_attributed() -> None:
    # An atomic statement whose server returns no value records none.
    h = history([(0, 0, 0, 5, NO_VALUE, NO_VALUE, OK), (1, 0, 1, 6, NO_VALUE, NO_VALUE, OK)])
    check = StockWorkload(type="stock", initial=10).check(FinalState(value=9), h)
    assert check.anomalies["lost_updates"] == 1 and check.examples == []


def test_write_skew_names_both_withdrawals_that_checked_the_same_balance() -> None:
    h = history(
        [
            (2, 8, 0, 100, 30, -20, OK),
            (5, 9, 10, 120, 30, -20, OK),
            (1, 3, 130, 140, -10, NO_VALUE, REJECTED),
        ]
    )
    ledger = [LedgerRow(30, -1, 0), LedgerRow(-20, 2, 8), LedgerRow(-20, 5, 9)]
    check = WithdrawWorkload(type="withdraw", deposit=30, amount=20).check(
        FinalState(rows=ledger), h
    )
    assert check.anomalies["overdrafts"] == 1
    [example] = check.examples
    assert example.kind == "overdrafts"
    assert example.text == (
        "c2#8 and c5#9 both checked balance 30 and each withdrew 20 (write skew): balance -10"
    )
    assert example.ops == ((2, 8), (5, 9))


def test_write_skew_says_how_many_withdrawals_the_late_one_missed() -> None:
    h = history(
        [
            (0, 0, 0, 10, 20, -10, OK),
            (1, 0, 11, 20, 10, -10, OK),
            (2, 0, 2, 30, 20, -10, OK),  # read 20, appended after the two others
        ]
    )
    rows = [(20, -1, 0), (-10, 0, 0), (-10, 1, 0), (-10, 2, 0)]
    [example] = write_skews(h, rows)
    assert example.text == (
        "c2#0 checked balance 20 and withdrew 10 after 2 withdrawals it did not see "
        "(first c0#0, which read 20) (write skew): balance -10"
    )
    assert example.ops == ((0, 0), (2, 0))


def test_lost_withdrawals_name_the_acknowledged_operation_missing_from_the_ledger() -> None:
    h = history([(0, 0, 0, 10, 50, -10, OK), (1, 0, 0, 12, 50, -10, OK)])
    check = WithdrawWorkload(type="withdraw", deposit=50).check(
        FinalState(rows=[LedgerRow(50, -1, 0), LedgerRow(-10, 0, 0)]), h
    )
    assert check.anomalies["lost_withdrawals"] == 1
    [example] = check.examples
    assert example.text == "c1#0 was acknowledged but its ledger row is missing"


def test_a_double_booking_names_every_holder_of_the_seat() -> None:
    h = history(
        [
            (2, 8, 0, 50, 0, 3, OK),
            (5, 9, 5, 60, 0, 3, OK),
            (1, 2, 6, 70, 0, 4, OK),
            (0, 1, 70, 80, 1, 4, REJECTED),  # found seat 4 taken
        ]
    )
    final = FinalState(bookings=[(3, 2, 8), (4, 1, 2), (3, 5, 9)])
    check = BookingWorkload(type="booking", seats=10).check(final, h)
    assert check.anomalies == {"double_bookings": 1, "lost_bookings": 0}
    [example] = check.examples
    assert example.text == "c2#8 and c5#9 both found seat 3 free and booked it (double booking)"
    assert (example.start_ns, example.end_ns) == (0, 60)


def test_read_skew_lists_the_first_violations_and_keeps_the_worst_and_the_last() -> None:
    total = 100
    # 30 bad reads by reader c0; the worst is the 25th, beyond the first 20.
    ops: list[Op] = []
    for n in range(30):
        read = total - (10 if n == 25 else 1)
        ops.append((0, n, n * 10, n * 10 + 5, read, NO_VALUE, OK))
    ops.append((1, 0, 0, 400, 50, 0, OK))  # a writer: its values are not a read of the total
    workload = TransferWorkload(type="transfer", accounts=2, total=total, readers=1)
    check = workload.check(FinalState(balances=[50, 50]), history(ops))
    assert check.anomalies["read_skew"] == 30
    assert len(check.examples) == MAX_EXAMPLES
    assert check.examples[0].note == "first"
    assert check.examples[0].text == (
        "c0#0 read a total of 99 (-1 against 100) while transfers were in flight (read skew)"
    )
    assert [(e.ops, e.note) for e in check.examples[-2:]] == [
        (((0, 25),), "worst"),
        (((0, 29),), "last"),
    ]


def test_over_time_marks_a_violation_that_is_first_and_worst() -> None:
    examples = lost_updates(
        history([(0, 0, 0, 5, 1, 0, OK), (1, 0, 0, 6, 1, 0, OK), (2, 0, 7, 9, 0, -1, OK)])
    )
    [only] = over_time(examples, worst=0)
    assert only.note == "first, worst, last"
