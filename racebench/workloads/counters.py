"""Workloads: the business rules racebench drives, and the invariants that check them.

A workload knows nothing about servers. Each one reduces to one of two state shapes that
every store implements: a *counter* (one integer with an optional floor) or a *ledger*
(append-only rows whose sum is the balance).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from racebench.history import Outcome, RunHistory
from racebench.workloads.attribution import (
    MAX_EXAMPLES,
    Example,
    lost_updates,
    missing_acknowledged,
    write_skews,
)

if TYPE_CHECKING:
    from racebench.workloads.rows import RowPlan


@dataclass(frozen=True)
class CounterPlan:
    """One integer changed by `delta` per operation, never below `floor` (None: no floor)."""

    initial: int
    delta: int
    floor: int | None
    shape: Literal["counter"] = "counter"


@dataclass(frozen=True)
class LedgerPlan:
    """An append-only ledger opened with `deposit`; each operation withdraws `amount`."""

    deposit: int
    amount: int
    shape: Literal["ledger"] = "ledger"


Plan = CounterPlan | LedgerPlan


@dataclass(frozen=True)
class LedgerRow:
    """One ledger row as stored: the deposit has client -1."""

    amount: int
    client: int
    seq: int


@dataclass
class FinalState:
    """What a store holds after a run: the counter value, or the ledger rows in insert order."""

    value: int | None = None
    rows: list[LedgerRow] = field(default_factory=list)
    slots_total: int = 0  # the sum of the G-counter slots (crdt strategy)
    bookings: list[tuple[int, int, int]] = field(default_factory=list)  # (seat, client, seq)
    balances: list[int] = field(default_factory=list)  # per account, by id (transfer)


@dataclass(frozen=True)
class Invariant:
    """One rule the run must keep, whether it held, and the figures that show it."""

    name: str
    holds: bool
    detail: str


@dataclass(frozen=True)
class Check:
    """The verdict material of one run: invariants, anomaly counts (0 when absent) and the
    first anomalies attributed to the operations that made them (workloads.attribution)."""

    invariants: list[Invariant]
    anomalies: dict[str, int]
    examples: list[Example] = field(default_factory=list)


class _WorkloadModel(BaseModel):
    # strict: YAML's `initial: "100"` or `amount: 1.5` is an error, not silently coerced;
    # extra="forbid": a misspelt key names itself instead of being ignored.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    anomaly_names: ClassVar[tuple[str, ...]]

    @abstractmethod
    def plan(self) -> Plan | RowPlan:
        """The state shape (counter or ledger) and the numbers every store sets up."""

    @abstractmethod
    def check(self, final: FinalState, history: RunHistory) -> Check:
        """The invariants over the final state and the history, and the anomalies counted."""

    def integer_fields(self) -> dict[str, int]:
        """The numbers of this workload that a store keeps (or adds up), by field name."""
        return {k: v for k, v in self if isinstance(v, int) and not isinstance(v, bool)}

    def largest_value(self, operations: int) -> int:
        """A bound on the magnitude of any value stored during `operations` operations: the
        start value plus one step per operation (lost updates only ever undo steps)."""
        plan = self.plan()
        if isinstance(plan, CounterPlan):
            return abs(plan.initial) + operations * abs(plan.delta)
        assert isinstance(plan, LedgerPlan)  # the row workloads give their own bound
        return plan.deposit + operations * plan.amount


class StockWorkload(_WorkloadModel):
    """Sell `quantity` units per operation from a stock of `initial` units; never oversell."""

    type: Literal["stock"]
    initial: int = Field(default=1000, ge=0, description="units in stock at the start")
    quantity: int = Field(default=1, gt=0, description="units sold per operation")

    operation_kind: ClassVar[str] = "sale"
    anomaly_names: ClassVar[tuple[str, ...]] = ("lost_updates", "oversold_units")

    def plan(self) -> CounterPlan:
        return CounterPlan(initial=self.initial, delta=-self.quantity, floor=0)

    def check(self, final: FinalState, history: RunHistory) -> Check:
        assert final.value is not None
        sold = history.count(Outcome.OK) * self.quantity
        # A sale whose outcome is unknown may or may not have happened: it widens the range
        # the final value may fall in, and is never counted as lost.
        unknown = history.count(Outcome.UNKNOWN) * self.quantity
        expected = self.initial - sold
        # More units left than the acknowledged sales allow: sales were overwritten.
        lost = max(0, final.value - expected) // self.quantity
        # Either more acknowledged than there was, or the stock itself went below zero.
        oversold = max(0, sold - self.initial, -final.value)
        invariants = [
            Invariant(
                "stock never oversold",
                oversold == 0,
                f"{sold} units sold of {self.initial}, {final.value} left",
            ),
            Invariant(
                "final units = initial - acknowledged sales",
                expected - unknown <= final.value <= expected,
                f"expected {expected}"
                + (f" (to {expected - unknown} with unknown outcomes)" if unknown else "")
                + f", found {final.value}",
            ),
        ]
        examples = lost_updates(history) if lost or oversold else []
        return Check(invariants, {"lost_updates": lost, "oversold_units": oversold}, examples)


class WithdrawWorkload(_WorkloadModel):
    """Withdraw `amount` from an account opened with `deposit`; the balance never goes negative."""

    type: Literal["withdraw"]
    deposit: int = Field(default=100, ge=0, description="opening deposit")
    amount: int = Field(default=10, gt=0, description="amount per withdrawal")

    operation_kind: ClassVar[str] = "withdraw"
    anomaly_names: ClassVar[tuple[str, ...]] = (
        "overdrafts",
        "overdrawn_amount",
        "lost_withdrawals",
    )

    def plan(self) -> LedgerPlan:
        return LedgerPlan(deposit=self.deposit, amount=self.amount)

    def check(self, final: FinalState, history: RunHistory) -> Check:
        # Replayed in insert order, the order the store accepted them in: each withdrawal
        # that leaves the running balance below zero is one overdraft.
        balance = 0
        overdrafts = 0
        for row in final.rows:
            balance += row.amount
            if row.amount < 0 and balance < 0:
                overdrafts += 1
        # The deposit has client -1 and is no operation of anybody's.
        present = {(r.client, r.seq) for r in final.rows if r.client >= 0}
        acked = history.acknowledged_ops()
        missing = sum(1 for op in acked if op not in present)
        invariants = [
            Invariant(
                "balance never negative",
                overdrafts == 0,
                f"final balance {balance}, {overdrafts} withdrawals overdrew",
            ),
            Invariant(
                "every acknowledged withdrawal recorded",
                missing == 0,
                f"{len(acked)} acknowledged, {missing} missing from the ledger",
            ),
        ]
        anomalies = {
            "overdrafts": overdrafts,
            "overdrawn_amount": max(0, -balance),
            "lost_withdrawals": missing,
        }
        examples = []
        if overdrafts:
            rows = [(row.amount, row.client, row.seq) for row in final.rows]
            deposits = next((i for i, row in enumerate(final.rows) if row.client >= 0), 0)
            examples += write_skews(history, rows, deposits)
        if missing:
            examples += missing_acknowledged(
                history, present, "lost_withdrawals", "ledger row", MAX_EXAMPLES - len(examples)
            )
        return Check(invariants, anomalies, examples)


class LikesWorkload(_WorkloadModel):
    """Add one like per operation to a counter starting at `initial`; every like counts."""

    type: Literal["likes"]
    initial: int = Field(default=0, ge=0, description="likes at the start")

    operation_kind: ClassVar[str] = "like"
    anomaly_names: ClassVar[tuple[str, ...]] = ("lost_updates",)

    def plan(self) -> CounterPlan:
        return CounterPlan(initial=self.initial, delta=1, floor=None)

    def check(self, final: FinalState, history: RunHistory) -> Check:
        assert final.value is not None
        acked = history.count(Outcome.OK)
        unknown = history.count(Outcome.UNKNOWN)
        expected = self.initial + acked
        # Fewer likes than acknowledged: increments were overwritten. Unknown outcomes may
        # add to the count, never explain a shortfall.
        lost = max(0, expected - final.value)
        invariants = [
            Invariant(
                "every acknowledged like counted",
                expected <= final.value <= expected + unknown,
                f"expected {expected}"
                + (f" (to {expected + unknown} with unknown outcomes)" if unknown else "")
                + f", found {final.value}",
            )
        ]
        return Check(invariants, {"lost_updates": lost}, lost_updates(history) if lost else [])


Workload = StockWorkload | WithdrawWorkload | LikesWorkload
WORKLOAD_TYPES: dict[str, type[_WorkloadModel]] = {
    "stock": StockWorkload,
    "withdraw": WithdrawWorkload,
    "likes": LikesWorkload,
}


def count_overlapping_pairs(starts: np.ndarray, ends: np.ndarray) -> int:
    """Pairs of intervals [start, end) that overlap in time: each is a mutual-exclusion violation.

    Sorted by start, interval i overlaps every later-starting j with start_j < end_i.
    """
    if len(starts) < 2:
        return 0
    order = np.argsort(starts, kind="stable")
    s = starts[order]
    e = ends[order]
    later_starts_before_end = np.searchsorted(s, e, side="left") - np.arange(1, len(s) + 1)
    return int(np.clip(later_starts_before_end, 0, None).sum())
