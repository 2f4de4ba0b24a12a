"""Workloads over many rows: seats booked by check-then-insert, money moved between accounts.

Unlike the counter and the ledger (one logical value), these touch a row chosen per operation,
so their anomalies are about pairs of rows or predicates: a seat booked twice (write skew over
a predicate, the phantom of "SELECT count(*) ... then INSERT"), money created or destroyed by
two transfers that overwrite each other, and a reader that sums the accounts halfway through a
transfer (read skew, G-single). The SQL stores implement both (stores/sql_rows.py); Redis and
ZooKeeper implement transfer (stores/kv_transfer.py and their own modules).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from racebench.history import NO_VALUE, Outcome, RunHistory
from racebench.workloads.attribution import (
    MAX_EXAMPLES,
    Example,
    missing_acknowledged,
    over_time,
    seats_booked_twice,
)
from racebench.workloads.counters import Check, FinalState, Invariant, _WorkloadModel


@dataclass(frozen=True)
class BookingPlan:
    """`seats` seats; each operation books one if nobody holds it yet."""

    seats: int
    choice: Literal["in_order", "random"]
    shape: Literal["booking"] = "booking"

    def seat_for(self, seq: int, draw: int) -> int:
        """The seat operation `seq` tries: in order, every client walks the seats in the same
        order, so all clients reach each free seat at about the same time."""
        return seq % self.seats if self.choice == "in_order" else draw % self.seats


@dataclass(frozen=True)
class TransferPlan:
    """`accounts` accounts holding `total`; the first `readers` clients only read balances."""

    accounts: int
    total: int
    max_amount: int
    readers: int
    shape: Literal["transfer"] = "transfer"

    def pick(self, rng: random.Random) -> tuple[int, int, int]:
        """A transfer at random: (source, target, amount) between two different accounts."""
        # Never source == target: a self-transfer changes nothing and could hide no anomaly.
        source, target = rng.sample(range(self.accounts), 2)
        return source, target, rng.randint(1, self.max_amount)

    def opening_balances(self) -> list[int]:
        """The total spread evenly, the remainder on the first accounts."""
        share, rest = divmod(self.total, self.accounts)
        return [share + (1 if i < rest else 0) for i in range(self.accounts)]


RowPlan = BookingPlan | TransferPlan

# A transfer's (from, to, amount) in one history value: 20 bits per account id, the amount
# above them. Accounts and amounts beyond that are not recorded (NO_VALUE). A history record
# has one int64 for the written value (fixed-size records, read straight into one array),
# so the three are packed rather than stored apart.
_ACCOUNT_BITS = 20
_ACCOUNT_MASK = (1 << _ACCOUNT_BITS) - 1
_MAX_PACKED_AMOUNT = 1 << 22


def pack_transfer(source: int, target: int, amount: int) -> int:
    """(from, to, amount) as one int64 for the history's `written` value."""
    if max(source, target) > _ACCOUNT_MASK or amount >= _MAX_PACKED_AMOUNT:
        return NO_VALUE
    return (amount << (2 * _ACCOUNT_BITS)) | (source << _ACCOUNT_BITS) | target


def transfer_parts(value: int) -> tuple[int, int, int]:
    """(from, to, amount) of a value made by `pack_transfer`."""
    return (
        (value >> _ACCOUNT_BITS) & _ACCOUNT_MASK,
        value & _ACCOUNT_MASK,
        value >> (2 * _ACCOUNT_BITS),
    )


class BookingWorkload(_WorkloadModel):
    """Book a seat if it is free (count, then insert); no seat is ever booked twice."""

    type: Literal["booking"]
    seats: int = Field(default=100, gt=0, description="seats on sale")
    choice: Literal["in_order", "random"] = Field(
        default="in_order",
        description="how an operation picks its seat: in_order (operation n of every client "
        "tries seat n mod seats, so clients collide) or random",
    )

    operation_kind: ClassVar[str] = "book"
    anomaly_names: ClassVar[tuple[str, ...]] = ("double_bookings", "lost_bookings")

    def plan(self) -> BookingPlan:
        return BookingPlan(seats=self.seats, choice=self.choice)

    def largest_value(self, operations: int) -> int:
        # The values recorded are seat numbers and counts of bookings of one seat.
        return max(self.seats, operations)

    def check(self, final: FinalState, history: RunHistory) -> Check:
        """Double bookings from the final table, lost bookings against the acknowledgements.

        Both come from the final state, not from the history's reads: a booking the server
        acknowledged and then lost (a failover, a crash under a lax sync setting) is an anomaly even
        though no client saw it go.
        """
        per_seat = Counter(seat for seat, _, _ in final.bookings)
        doubled = {seat: n for seat, n in per_seat.items() if n > 1}
        # A seat booked three times counts two extra bookings: each one is a sale too many.
        double_bookings = sum(n - 1 for n in doubled.values())
        # Bookings are matched by (client, seq), which every row stores, not by seat.
        present = {(client, seq) for _, client, seq in final.bookings}
        acked = history.acknowledged_ops()
        missing = sum(1 for op in acked if op not in present)
        example = ""
        if doubled:
            # The lowest seat, so the same run always shows the same example.
            seat = min(doubled)
            holders = [f"c{c}#{q}" for s, c, q in final.bookings if s == seat]
            example = f"; e.g. seat {seat} held by {', '.join(holders[:5])}"
        invariants = [
            Invariant(
                "no seat booked twice",
                double_bookings == 0,
                f"{len(per_seat)} of {self.seats} seats booked, {len(doubled)} of them more "
                f"than once ({double_bookings} extra bookings){example}",
            ),
            Invariant(
                "every acknowledged booking present",
                missing == 0,
                f"{len(acked)} acknowledged, {missing} missing",
            ),
        ]
        examples = seats_booked_twice(history, final.bookings) if doubled else []
        if missing:
            examples += missing_acknowledged(
                history, present, "lost_bookings", "booking", MAX_EXAMPLES - len(examples)
            )
        anomalies = {"double_bookings": double_bookings, "lost_bookings": missing}
        return Check(invariants, anomalies, examples)


@dataclass(frozen=True)
class BadRead:
    """One reader's sum of all balances that differs from the total."""

    client: int
    seq: int
    at_s: float  # when it started, from the first operation of the run
    total_read: int

    start_ns: int
    end_ns: int

    def describe(self, total: int) -> str:
        return (
            f"c{self.client}#{self.seq} at {self.at_s:.3f}s read {self.total_read} "
            f"({self.total_read - total:+d})"
        )

    def example(self, total: int) -> Example:
        return Example(
            "read_skew",
            f"c{self.client}#{self.seq} read a total of {self.total_read} "
            f"({self.total_read - total:+d} against {total}) while transfers were in flight "
            "(read skew)",
            ((self.client, self.seq),),
            self.start_ns,
            self.end_ns,
        )


def bad_reads(history: RunHistory, readers: int, total: int) -> list[BadRead]:
    """The readers' acknowledged sums (the record's `read` value) that miss `total`, in
    start order."""
    r = history.records
    # Only acknowledged reads: a read that failed or timed out returned no sum to judge.
    read = (history.client < readers) & (r["outcome"] == Outcome.OK) & (r["read"] != NO_VALUE)
    wrong = read & (r["read"] != total)
    if not wrong.any():
        return []
    t0 = int(r["start"].min())
    # The history is grouped by client; start order shows when in the run the skew appeared.
    idx = np.flatnonzero(wrong)
    idx = idx[np.argsort(r["start"][idx], kind="stable")]
    return [
        BadRead(
            int(history.client[i]),
            int(history.seq[i]),
            (int(r["start"][i]) - t0) / 1e9,
            int(r["read"][i]),
            int(r["start"][i]),
            int(r["end"][i]),
        )
        for i in idx.tolist()
    ]


class TransferWorkload(_WorkloadModel):
    """Move money between accounts (Jepsen's bank): the total is conserved and every read of
    all balances sums to it."""

    type: Literal["transfer"]
    accounts: int = Field(default=8, ge=2, description="accounts")
    total: int = Field(default=1000, ge=0, description="money spread over the accounts")
    max_amount: int = Field(default=5, gt=0, description="largest amount per transfer")
    readers: int = Field(
        default=0,
        ge=0,
        description="clients (the first N) that only read all balances at once (one "
        "statement on SQL, one MGET on Redis, a get of every znode on ZooKeeper, checked in a "
        "multi under optimistic) and check their sum",
    )

    operation_kind: ClassVar[str] = "transfer"
    anomaly_names: ClassVar[tuple[str, ...]] = ("total_drift", "negative_balances", "read_skew")

    def plan(self) -> TransferPlan:
        return TransferPlan(self.accounts, self.total, self.max_amount, self.readers)

    def largest_value(self, operations: int) -> int:
        # Lost updates can create money: each one at most max_amount.
        return self.total + operations * self.max_amount

    def check(self, final: FinalState, history: RunHistory) -> Check:
        """Conservation and no negative balance from the final state; read skew from the
        readers' sums in the history (a skewed read leaves no trace in the final state)."""
        final_total = sum(final.balances)
        negative = sum(1 for b in final.balances if b < 0)
        bad = bad_reads(history, self.readers, self.total)
        reads = int(
            np.count_nonzero(
                (history.client < self.readers) & (history.records["outcome"] == Outcome.OK)
            )
        )
        detail = f"{len(bad)} of {reads} reads summed to something else"
        examples: list[Example] = []
        if bad:
            # First, worst and last: when the skew began, how large it got, whether it lasted.
            worst_at = max(range(len(bad)), key=lambda i: abs(bad[i].total_read - self.total))
            worst = bad[worst_at]
            examples = over_time([b.example(self.total) for b in bad], worst_at)
            detail += "; first " + bad[0].describe(self.total)
            detail += ", worst " + worst.describe(self.total)
            detail += ", last " + bad[-1].describe(self.total)
        invariants = [
            Invariant(
                "total conserved",
                final_total == self.total,
                f"expected {self.total}, found {final_total}",
            ),
            Invariant(
                "no balance negative",
                negative == 0,
                f"{negative} of {self.accounts} accounts below zero (lowest "
                f"{min(final.balances, default=0)})",
            ),
        ]
        if self.readers:
            invariants.append(Invariant("every read sums to the total", not bad, detail))
        anomalies = {
            # Absolute: money created and money destroyed are both a drift.
            "total_drift": abs(final_total - self.total),
            "negative_balances": negative,
            "read_skew": len(bad),
        }
        return Check(invariants, anomalies, examples)


ROW_WORKLOAD_TYPES: dict[str, type[_WorkloadModel]] = {
    "booking": BookingWorkload,
    "transfer": TransferWorkload,
}
