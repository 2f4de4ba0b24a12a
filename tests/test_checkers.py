"""The checkers count the right numbers on hand-made histories and final states."""

from __future__ import annotations

import numpy as np

from racebench.analysis.verdict import ANOMALIES, NOT_REPRODUCED, SAFE, UNEXPECTED, decide_verdict
from racebench.history import RECORD_DTYPE, Outcome, RunHistory
from racebench.workloads.counters import (
    FinalState,
    LedgerRow,
    LikesWorkload,
    StockWorkload,
    WithdrawWorkload,
    count_overlapping_pairs,
)


def history(
    ops: list[tuple[int, Outcome]], sections: list[tuple[int, int]] | None = None
) -> RunHistory:
    """Operations as (client, outcome); seq numbers count per client."""
    records = np.zeros(len(ops), dtype=RECORD_DTYPE)
    records["outcome"] = [int(o) for _, o in ops]
    records["error"] = -1
    records["start"] = np.arange(len(ops)) * 10 + 1
    records["end"] = records["start"] + 5
    for i, (start, end) in enumerate(sections or []):
        records["cs_start"][i], records["cs_end"][i] = start, end
    clients = np.array([c for c, _ in ops], dtype=np.int32)
    seqs = np.zeros(len(ops), dtype=np.int64)
    counts: dict[int, int] = {}
    for i, c in enumerate(clients.tolist()):
        seqs[i] = counts.get(c, 0)
        counts[c] = seqs[i] + 1
    return RunHistory(records, clients, seqs, [])


def test_stock_counts_lost_updates_from_final_units() -> None:
    stock = StockWorkload(type="stock", initial=10, quantity=1)
    h = history([(0, Outcome.OK)] * 6 + [(1, Outcome.REJECTED)])
    check = stock.check(FinalState(value=7), h)  # 6 sold: 4 expected, 7 found
    assert check.anomalies == {"lost_updates": 3, "oversold_units": 0}
    assert [i.holds for i in check.invariants] == [True, False]


def test_stock_counts_oversold_units() -> None:
    stock = StockWorkload(type="stock", initial=2, quantity=1)
    h = history([(0, Outcome.OK), (1, Outcome.OK), (2, Outcome.OK), (3, Outcome.OK)])
    check = stock.check(FinalState(value=0), h)  # 4 acknowledged sales of 2 units
    assert check.anomalies["oversold_units"] == 2
    assert check.anomalies["lost_updates"] == 2  # 2 -> 0 shows only 2 of the 4 sales
    assert not check.invariants[0].holds


def test_stock_unknown_outcome_is_not_a_lost_update() -> None:
    stock = StockWorkload(type="stock", initial=10, quantity=2)
    h = history([(0, Outcome.OK), (1, Outcome.UNKNOWN)])
    for final in (8, 6):  # the unknown sale may or may not have happened
        check = stock.check(FinalState(value=final), h)
        assert check.anomalies["lost_updates"] == 0
        assert all(i.holds for i in check.invariants)


def test_withdraw_counts_overdrafts_in_ledger_order() -> None:
    withdraw = WithdrawWorkload(type="withdraw", deposit=20, amount=10)
    rows = [LedgerRow(20, -1, 0)] + [LedgerRow(-10, c, 0) for c in range(4)]
    h = history([(c, Outcome.OK) for c in range(4)])
    check = withdraw.check(FinalState(rows=rows), h)
    assert check.anomalies == {"overdrafts": 2, "overdrawn_amount": 20, "lost_withdrawals": 0}
    assert not check.invariants[0].holds


def test_withdraw_counts_acknowledged_withdrawals_missing_from_the_ledger() -> None:
    withdraw = WithdrawWorkload(type="withdraw", deposit=100, amount=10)
    rows = [LedgerRow(100, -1, 0), LedgerRow(-10, 0, 0)]
    h = history([(0, Outcome.OK), (1, Outcome.OK), (1, Outcome.REJECTED)])
    check = withdraw.check(FinalState(rows=rows), h)
    assert check.anomalies["lost_withdrawals"] == 1
    assert check.anomalies["overdrafts"] == 0


def test_likes_counts_every_acknowledged_like() -> None:
    likes = LikesWorkload(type="likes", initial=5)
    h = history([(0, Outcome.OK)] * 10 + [(1, Outcome.ERROR)])
    assert likes.check(FinalState(value=15), h).anomalies == {"lost_updates": 0}
    assert likes.check(FinalState(value=11), h).anomalies == {"lost_updates": 4}


def test_overlapping_critical_sections_are_counted_as_pairs() -> None:
    starts = np.array([0, 5, 20, 22, 24, 100])
    ends = np.array([10, 8, 30, 23, 25, 110])
    # (0,5) overlap; (20,22), (20,24) overlap; 22-23 and 24-25 do not; 100 alone.
    assert count_overlapping_pairs(starts, ends) == 3
    assert count_overlapping_pairs(np.array([0, 10]), np.array([10, 20])) == 0  # touching


def test_critical_sections_come_from_recorded_lock_grants() -> None:
    h = history([(0, Outcome.OK), (1, Outcome.OK), (2, Outcome.LOCK_TIMEOUT)], [(1, 50), (40, 60)])
    clients, starts, ends = h.critical_sections()
    assert clients.tolist() == [0, 1]
    assert count_overlapping_pairs(starts, ends) == 1


def test_verdicts() -> None:
    assert decide_verdict({"lost_updates": 0}, True, False) == SAFE
    assert decide_verdict({"lost_updates": 2}, True, False) == UNEXPECTED
    assert decide_verdict({"lost_updates": 2}, False, False) == ANOMALIES
    assert decide_verdict({"lost_updates": 0}, False, False) == NOT_REPRODUCED
    violations = {"lost_updates": 0, "mutual_exclusion_violations": 3}
    assert decide_verdict(violations, True, True) == UNEXPECTED  # a lock that claims exclusion
    assert decide_verdict(violations, True, False) == SAFE  # fenced: data kept safe
