"""The store-independent strategies (none, lock, crdt) and the per-client operation.

`build_operation` (blocking drivers) and `build_async_operation` (asyncio drivers) are called
once per client; the closure they return is the hot loop's body, so it does no more than the
operation itself needs. `OpenedClient` is what a worker runs: an async operation, and for a
blocking driver also the blocking one with the thread it must run on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from racebench.history import NO_VALUE, Outcome
from racebench.locks.base import LockTimeout
from racebench.stores.base import (
    ALL_WORKLOADS,
    OK_STEP,
    REJECTED_STEP,
    ROW_WORKLOADS,
    StaleToken,
    StepResult,
    StoreClient,
    StrategySpec,
)
from racebench.util.redact import operation_message
from racebench.workloads.counters import CounterPlan, LedgerPlan, Plan
from racebench.workloads.rows import BookingPlan, TransferPlan

if TYPE_CHECKING:
    from racebench.locks.base import LockClient
    from racebench.protocol import Probe
    from racebench.stores.base import AsyncStoreClient

# outcome, retries, critical section start, end, fencing token, value read, value written
# (history.NO_VALUE: none), error message or None
OpResult = tuple[int, int, int, int, int, int, int, str | None]
AnyPlan = Plan | BookingPlan | TransferPlan
Operation = Callable[[int], OpResult]
# What an operation returns when it left nothing but its outcome: the same tuple each time,
# so that the blocking loop can tell it by identity and record it with TIMES_RECORD.
OK_RESULT: OpResult = (Outcome.OK, 0, 0, 0, 0, NO_VALUE, NO_VALUE, None)
REJECTED_RESULT: OpResult = (Outcome.REJECTED, 0, 0, 0, 0, NO_VALUE, NO_VALUE, None)
AsyncOperation = Callable[[int], Awaitable[OpResult]]


class OperationSink(Protocol):
    """Where a callback-driven closed loop records its operations (the worker's side).

    A store's callback loop (`OpenedClient.callback_loop`) runs one client's operations from
    its protocol's reply callback, with no task or future per operation; it asks the sink
    when to start and hands it each completed operation, which the sink records as the
    worker's general loop would (one fixed-size record, the same outcome and message).
    """

    def first(self) -> int:
        """The start time (monotonic ns) of the next operation; 0: the run is over."""
        ...

    def complete(
        self, start: int, outcome: int, written: int = 0, message: str | None = None
    ) -> int:
        """Record the operation that started at `start` and ended now; return the next
        operation's start time, or 0 when the run is over (stop, deadline, quota).

        `written` is the value the operation wrote when the reply tells it (INCRBY's reply),
        kept at hand; like the general path for an atomic command, the record stores no
        values (NO_VALUE) for it today.
        """
        ...


# Runs a client's closed loop from its protocol's callbacks until the run is over (True) or
# until it hands back (False): the worker then runs one operation on the general path (which
# reconnects, reloads scripts and records failures as usual) and calls it again.
CallbackLoop = Callable[[OperationSink], Awaitable[bool]]


@dataclass
class OpenedClient:
    """One logical client as a worker runs it.

    A blocking driver (sqlite3, kazoo, a store not ported to asyncio) keeps its connection
    on a dedicated single-thread executor: it was opened there and every call runs there
    (sqlite3 refuses a connection used from another thread). Its closed loop runs whole on
    that thread (`blocking_operation`); `operation` hops to the thread per call, for the
    open loop's scheduler.
    """

    operation: AsyncOperation
    close: Callable[[], Awaitable[dict[str, int]]]
    blocking_operation: Operation | None = None
    executor: ThreadPoolExecutor | None = None
    # A closed loop driven by the driver's reply callbacks, for a store's hot commands
    # (racebench.stores.redis_lean); `operation` stays the general path and the open loop's.
    callback_loop: CallbackLoop | None = None


async def open_blocking(
    client_id: int, open_sync: Callable[[], tuple[Operation, Callable[[], dict[str, int]]]]
) -> OpenedClient:
    """Open a blocking client on a thread of its own and adapt it to the worker's loop."""
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(1, thread_name_prefix=f"racebench-client-{client_id}")
    try:
        operation, close_sync = await loop.run_in_executor(executor, open_sync)
    except BaseException:
        executor.shutdown(wait=False)
        raise

    def in_thread(seq: int) -> Awaitable[OpResult]:
        return loop.run_in_executor(executor, operation, seq)

    async def close() -> dict[str, int]:
        return await loop.run_in_executor(executor, close_sync)

    return OpenedClient(in_thread, close, operation, executor)


GENERIC_STRATEGIES: dict[str, StrategySpec] = {
    "none": StrategySpec(
        "read, then write in a separate statement: the race itself",
        prevents="nothing",
        allows="lost update, oversell, overdraft (write skew), double booking, lost transfer,"
        " read skew",
        safe_for=frozenset(),
        supports=ALL_WORKLOADS | ROW_WORKLOADS,
    ),
    "lock": StrategySpec(
        "the unguarded read-then-write inside a lock service's critical section (guard.lock)",
        prevents="lost update, oversell, overdraft while the lock holds; with guard.fencing, "
        "also after a lease expired",
        allows="anomalies when a lease expires mid-section (unless fenced)",
        safe_for=ALL_WORKLOADS | ROW_WORKLOADS,
        supports=ALL_WORKLOADS | ROW_WORKLOADS,
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
            value = client.read_value = client.read_counter(token)
            client.pause()
            if floor is not None and value + delta < floor:
                return Outcome.REJECTED
            client.write_counter(value + delta, token)
            client.written_value = value + delta
            return Outcome.OK

        return counter

    amount = plan.amount

    def withdraw(seq: int, token: int | None) -> Outcome:
        balance = client.read_value = client.read_balance(token)
        client.pause()
        if balance < amount:
            return Outcome.REJECTED
        client.append_entry(-amount, seq, token)
        client.written_value = -amount
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
    plan: AnyPlan,
    strategy: str,
    client: StoreClient,
    lock: LockClient | None,
    fencing: bool,
    probe: Probe | None,
) -> Callable[[int], StepResult]:
    """One attempt of the operation as a StepResult, by strategy."""
    if isinstance(plan, BookingPlan | TransferPlan):
        return _row_step(plan, strategy, client, lock, probe)
    if strategy == "none":
        unguarded = _unguarded(plan, client)
        return lambda seq: OK_STEP if unguarded(seq, None) == Outcome.OK else REJECTED_STEP
    if strategy == "crdt":

        def crdt(seq: int) -> StepResult:
            slot = client.read_value = client.read_slot()
            client.pause()
            client.write_slot(slot + 1)
            client.written_value = slot + 1
            return OK_STEP

        return crdt
    if strategy == "lock":
        assert lock is not None
        return locked_step(_unguarded(plan, client), client.options.client_id, lock, fencing, probe)
    return client.native_step(strategy, plan)


def _row_step(
    plan: BookingPlan | TransferPlan,
    strategy: str,
    client: StoreClient,
    lock: LockClient | None,
    probe: Probe | None,
) -> Callable[[int], StepResult]:
    """Booking and transfer (the stores that implement them); the operation sets the
    client's values."""
    if strategy != "lock":
        return client.native_step(strategy, plan)
    assert lock is not None
    cid = client.options.client_id
    return locked_step(lambda seq, token: client.row_attempt(plan, seq), cid, lock, False, probe)


def build_operation(
    plan: AnyPlan,
    strategy: str,
    client: StoreClient,
    lock: LockClient | None,
    fencing: bool,
    probe: Probe | None = None,
) -> Operation:
    """The operation one client runs in its loop, with failures turned into outcomes."""
    return as_operation(_step(plan, strategy, client, lock, fencing, probe), client)


class _Classifier(Protocol):
    read_value: int
    written_value: int

    def classify(self, exc: BaseException) -> Outcome: ...

    def recover(self) -> None: ...


@dataclass(frozen=True)
class DirectStep:
    """How the blocking loop runs an operation whose step leaves only its outcome (a step
    marked `outcome_only`): it calls the step itself and turns an exception into a result by
    `failed`, as the Operation would. The Operation's frame, its two attribute reads and its
    comparison per call showed on embedded SQLite at one client (benchmarks/overhead.py,
    10 pairs A B B A: 0.87x the bare loop through the Operation, 0.91x calling the step)."""

    step: Callable[[int], StepResult]
    failed: Callable[[Exception], OpResult]


def direct_step(operation: Operation) -> DirectStep | None:
    """The DirectStep of an operation made by `as_operation` from an `outcome_only` step."""
    direct: DirectStep | None = getattr(operation, "direct_step", None)
    return direct


def as_operation(step: Callable[[int], StepResult], client: _Classifier) -> Operation:
    """`step` as an Operation: an exception becomes an outcome the client classifies; the
    values the step left on the client go into the record (and are reset for the next)."""

    ok, rejected = OK_RESULT, REJECTED_RESULT

    def failed(exc: Exception) -> OpResult:
        # What it read is kept: the value it acted on before failing, for the history.
        read = client.read_value
        client.read_value = client.written_value = NO_VALUE
        outcome = client.classify(exc)
        client.recover()
        message = operation_message(exc)
        return outcome, 0, 0, 0, 0, read, NO_VALUE, message

    def operation(seq: int) -> OpResult:
        try:
            r = step(seq)
            read, written = client.read_value, client.written_value
            if read == written == NO_VALUE:  # an atomic statement: no values, no tuple to build
                if r is OK_STEP:
                    return ok
                if r is REJECTED_STEP:
                    return rejected
            client.read_value = client.written_value = NO_VALUE
            return r.outcome, r.retries, r.cs_start, r.cs_end, r.token, read, written, None
        except Exception as exc:
            return failed(exc)

    if getattr(step, "outcome_only", False):
        operation.direct_step = DirectStep(step, failed)  # type: ignore[attr-defined]
    return operation


def step_op_result(r: StepResult) -> OpResult:
    """A StepResult as the record's OpResult, for a step that left no values."""
    return r.outcome, r.retries, r.cs_start, r.cs_end, r.token, NO_VALUE, NO_VALUE, None


def _async_step(
    plan: Plan, strategy: str, client: AsyncStoreClient
) -> Callable[[int], Awaitable[StepResult]]:
    """One attempt of the operation, for the strategies an asyncio store runs natively."""
    if strategy == "none" and isinstance(plan, CounterPlan):
        delta, floor = plan.delta, plan.floor

        async def counter(seq: int) -> StepResult:
            value = client.read_value = await client.read_counter()
            await client.pause()  # other clients of this worker run meanwhile: the race
            if floor is not None and value + delta < floor:
                return REJECTED_STEP
            await client.write_counter(value + delta)
            client.written_value = value + delta
            return OK_STEP

        return counter
    if strategy == "none":
        assert isinstance(plan, LedgerPlan)
        amount = plan.amount

        async def withdraw(seq: int) -> StepResult:
            balance = client.read_value = await client.read_balance()
            await client.pause()
            if balance < amount:
                return REJECTED_STEP
            await client.append_entry(-amount, seq)
            client.written_value = -amount
            return OK_STEP

        return withdraw
    if strategy == "crdt":

        async def crdt(seq: int) -> StepResult:
            slot = client.read_value = await client.read_slot()
            await client.pause()
            await client.write_slot(slot + 1)
            client.written_value = slot + 1
            return OK_STEP

        return crdt
    return client.step_for(strategy, plan)


def build_async_operation(plan: Plan, strategy: str, client: AsyncStoreClient) -> AsyncOperation:
    """The async twin of `build_operation`, for a store client with an asyncio API."""
    step = _async_step(plan, strategy, client)
    ok = OK_RESULT

    async def operation(seq: int) -> OpResult:
        try:
            r = await step(seq)
            read, written = client.read_value, client.written_value
            if r is OK_STEP and read == written == NO_VALUE:  # atomic: no tuple to build
                return ok
            client.read_value = client.written_value = NO_VALUE
            return r.outcome, r.retries, r.cs_start, r.cs_end, r.token, read, written, None
        except Exception as exc:
            read = client.read_value
            client.read_value = client.written_value = NO_VALUE
            outcome = client.classify(exc)
            await client.recover()
            message = operation_message(exc)
            return outcome, 0, 0, 0, 0, read, NO_VALUE, message

    return operation
