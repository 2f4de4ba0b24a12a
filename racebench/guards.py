"""The store-independent strategies (none, lock, crdt) and the per-client operation.

`build_operation` is called once in each client process; the closure it returns is the hot
loop's body, so it does no more than the operation itself needs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from racebench.history import Outcome
from racebench.locks.base import LockTimeout
from racebench.redact import redact_text
from racebench.stores.base import (
    OK_STEP,
    REJECTED_STEP,
    StaleToken,
    StepResult,
    StoreClient,
    StrategySpec,
)
from racebench.workloads import CounterPlan, LedgerPlan, Plan

if TYPE_CHECKING:
    from racebench.locks.base import LockClient
    from racebench.runner import Probe

# outcome, retries, critical section start, end, fencing token, error message or None
OpResult = tuple[int, int, int, int, int, str | None]
Operation = Callable[[int], OpResult]

GENERIC_STRATEGIES: dict[str, StrategySpec] = {
    "none": StrategySpec(
        "read, then write in a separate statement: the race itself",
        prevents="nothing",
        allows="lost update, oversell, overdraft (write skew)",
        safe_for=frozenset(),
    ),
    "lock": StrategySpec(
        "the unguarded read-then-write inside a lock service's critical section (guard.lock)",
        prevents="lost update, oversell, overdraft while the lock holds; with guard.fencing, "
        "also after a lease expired",
        allows="anomalies when a lease expires mid-section (unless fenced)",
    ),
    "crdt": StrategySpec(
        "G-counter: each client increments only its own slot; the count is the sum of slots",
        prevents="lost update on counters, with no coordination",
        allows="only applies to counters that only grow (likes)",
        safe_for=frozenset({"likes"}),
        supports=frozenset({"likes"}),
    ),
}


def _unguarded(plan: Plan, client: StoreClient) -> Callable[[int, int | None], Outcome]:
    """The plain read-then-write; with a token every access is fenced."""
    if isinstance(plan, CounterPlan):
        delta, floor = plan.delta, plan.floor

        def counter(seq: int, token: int | None) -> Outcome:
            value = client.read_counter(token)
            client.pause()
            if floor is not None and value + delta < floor:
                return Outcome.REJECTED
            client.write_counter(value + delta, token)
            return Outcome.OK

        return counter

    amount = plan.amount

    def withdraw(seq: int, token: int | None) -> Outcome:
        balance = client.read_balance(token)
        client.pause()
        if balance < amount:
            return Outcome.REJECTED
        client.append_entry(-amount, seq, token)
        return Outcome.OK

    return withdraw


def locked_step(
    unguarded: Callable[[int, int | None], Outcome],
    cid: int,
    lock: LockClient,
    fencing: bool,
    probe: Probe | None,
) -> Callable[[int], StepResult]:
    """`unguarded(seq, token)` inside the lock's critical section (any workload, any store)."""
    # The nemesis watches these to fire a fault while this client acquires or holds.
    acquiring = probe.acquiring if probe else [0] * (cid + 1)
    holding = probe.holding if probe else [0] * (cid + 1)
    session = probe.session if probe else [0] * (cid + 1)

    def locked(seq: int) -> StepResult:
        acquiring[cid] = time.monotonic_ns()
        try:
            token = lock.acquire()
        except LockTimeout:
            return StepResult(Outcome.LOCK_TIMEOUT)
        finally:
            acquiring[cid] = 0
        session[cid] = lock.session_id()  # it changes when a lost session reconnects
        cs_start = holding[cid] = time.monotonic_ns()
        try:
            outcome = unguarded(seq, token if fencing else None)
        except StaleToken:
            outcome = Outcome.STALE
        finally:
            cs_end = time.monotonic_ns()
            holding[cid] = 0
            # The data access is over and its outcome known: a release that fails (the
            # lock server restarted, the session was killed) must not turn an applied
            # write into an error; the lock then ends with its lease or session.
            with contextlib.suppress(Exception):
                lock.release()
        return StepResult(outcome, 0, cs_start, cs_end, token if fencing else 0)

    return locked


def _step(
    plan: Plan,
    strategy: str,
    client: StoreClient,
    lock: LockClient | None,
    fencing: bool,
    probe: Probe | None,
) -> Callable[[int], StepResult]:
    """One attempt of the operation as a StepResult, by strategy."""
    if strategy == "none":
        unguarded = _unguarded(plan, client)
        return lambda seq: OK_STEP if unguarded(seq, None) == Outcome.OK else REJECTED_STEP
    if strategy == "crdt":

        def crdt(seq: int) -> StepResult:
            slot = client.read_slot()
            client.pause()
            client.write_slot(slot + 1)
            return OK_STEP

        return crdt
    if strategy == "lock":
        assert lock is not None
        return locked_step(_unguarded(plan, client), client.options.client_id, lock, fencing, probe)
    if isinstance(plan, CounterPlan):
        counter_step = client.counter_step
        return lambda seq: counter_step(strategy, plan)
    assert isinstance(plan, LedgerPlan)
    ledger_step = client.ledger_step
    return lambda seq: ledger_step(strategy, plan, seq)


def build_operation(
    plan: Plan,
    strategy: str,
    client: StoreClient,
    lock: LockClient | None,
    fencing: bool,
    probe: Probe | None = None,
) -> Operation:
    """The operation one client runs in its loop, with failures turned into outcomes."""
    return as_operation(_step(plan, strategy, client, lock, fencing, probe), client)


class _Classifier(Protocol):
    def classify(self, exc: BaseException) -> Outcome: ...

    def recover(self) -> None: ...


def as_operation(step: Callable[[int], StepResult], client: _Classifier) -> Operation:
    """`step` as an Operation: an exception becomes an outcome the client classifies."""

    def operation(seq: int) -> OpResult:
        try:
            r = step(seq)
            return r.outcome, r.retries, r.cs_start, r.cs_end, r.token, None
        except Exception as exc:
            outcome = client.classify(exc)
            client.recover()
            message = redact_text(f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]
            return outcome, 0, 0, 0, 0, message

    return operation
