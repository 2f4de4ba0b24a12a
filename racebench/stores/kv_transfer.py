"""The transfer workload (Jepsen's bank) on the key-value stores: Redis and ZooKeeper.

Each account is one key or znode holding its balance. The unguarded transfer is the SQL
stores' own: read both balances, the race window, write both as two separate writes. Two
transfers over a shared account overwrite each other (money appears or vanishes), and a reader
between the two writes sees money in flight. A store subclass supplies the reads and writes,
and its native strategies (`native_transfer`); what a reader's read of every balance means
differs per store (`read_snapshot`):

- Redis runs each command alone, so one `MGET` of every account is a snapshot: a reader can
  only see a wrong sum when a writer's two writes are separate commands (`none`, or a lease
  that expired under `lock`).
- ZooKeeper reads one znode at a time: a transfer can commit between two of a reader's gets
  even when it commits both writes in one `multi`, so a reader's gets alone are not a
  snapshot. `sync` does not help (it only makes the next read at least as recent as the
  leader). Under `optimistic` the reader validates its reads: a `multi` of version checks.
"""

from __future__ import annotations

import random
from abc import abstractmethod

from racebench.history import Outcome
from racebench.stores.base import ALL_WORKLOADS, ClientOptions, StepResult, StoreClient
from racebench.workloads.rows import RowPlan, TransferPlan, pack_transfer

# What the Redis and ZooKeeper stores implement: of the row workloads, transfer alone (booking
# is check-then-insert over a predicate, which needs a query language).
KEY_VALUE_WORKLOADS = ALL_WORKLOADS | frozenset({"transfer"})


class KeyValueTransfer(StoreClient):
    """Transfer on a store with one key per account; `row_attempt` is the unguarded operation."""

    def __init__(self, options: ClientOptions) -> None:
        super().__init__(options)
        self._rng = random.Random()

    @abstractmethod
    def read_accounts(self, plan: TransferPlan) -> list[int]:
        """Every balance, by account, as the store's plain read returns them."""

    def read_snapshot(self, plan: TransferPlan) -> list[int]:
        """Every balance as of one moment (a reader under a native strategy); may raise
        Conflict to be retried. The plain read, where that is already a snapshot."""
        return self.read_accounts(plan)

    @abstractmethod
    def read_pair(self, source: int, target: int) -> tuple[int, int]:
        """The two balances a transfer reads."""

    @abstractmethod
    def write_balance(self, account: int, balance: int) -> None:
        """One unconditional write of one balance."""

    @abstractmethod
    def native_transfer(self, strategy: str, source: int, target: int, amount: int) -> Outcome:
        """One attempt of the transfer under a native strategy; Conflict to retry it."""

    def _read_total(self, read: list[int]) -> Outcome:
        self.read_value = sum(read)
        return Outcome.OK

    def _transfer(self, source: int, target: int, amount: int) -> Outcome:
        balance, credit = self.read_pair(source, target)
        self.read_value = balance
        self.written_value = pack_transfer(source, target, amount)
        self.pause()
        if balance < amount:
            return Outcome.REJECTED
        # Two writes: a reader between them sees the amount nowhere (or twice).
        self.write_balance(source, balance - amount)
        self.write_balance(target, credit + amount)
        return Outcome.OK

    def row_attempt(self, plan: RowPlan, seq: int) -> Outcome:
        assert isinstance(plan, TransferPlan)  # the store declares transfer alone
        if self.options.client_id < plan.readers:
            # Paced like the writers: a reader without a race window would finish first.
            self.pause()
            return self._read_total(self.read_accounts(plan))
        return self._transfer(*plan.pick(self._rng))

    def row_step(self, strategy: str, plan: RowPlan, seq: int) -> StepResult:
        assert isinstance(plan, TransferPlan)
        if strategy == "none":
            return StepResult(self.row_attempt(plan, seq))
        if self.options.client_id < plan.readers:
            self.pause()
            return self.retrying(lambda: self._read_total(self.read_snapshot(plan)))
        # One transfer per operation: a retry moves the same amount between the same accounts.
        source, target, amount = plan.pick(self._rng)
        moved = pack_transfer(source, target, amount)

        def attempt() -> Outcome:
            # The native strategies read the balances inside the store (a script, a multi):
            # only what the transfer moves is recorded.
            self.written_value = moved
            return self.native_transfer(strategy, source, target, amount)

        return self.retrying(attempt)
