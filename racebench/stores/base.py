"""The narrow interface every store implements.

A store owns racebench's namespaced state on one server kind: it creates and seeds it, reads
the final state, and drops it. In each client process it opens a `StoreClient` that offers the
unguarded primitives of both state shapes (used by `none`, by `lock` and by `crdt`) and runs
the store's native strategies.
"""

from __future__ import annotations

import asyncio
import random
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from racebench.history import NO_VALUE, Outcome
from racebench.util.ownership import MIN_LEFTOVER_TTL_S
from racebench.util.plugin_config import StoreConfig
from racebench.util.plugin_info import PluginInfo
from racebench.workloads.counters import CounterPlan, FinalState, LedgerPlan, Plan
from racebench.workloads.rows import RowPlan

_F = TypeVar("_F", bound=Callable[..., Any])
_S = TypeVar("_S", bound=Callable[[int], "StepResult"])

if TYPE_CHECKING:
    from racebench.guards import CallbackLoop


class StaleToken(Exception):
    """A fenced access carried a token older than the newest the resource has seen."""


class Conflict(Exception):
    """A retryable conflict: a failed compare-and-set, a serialization failure, a deadlock."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class UnknownOutcome(Exception):
    """The operation may or may not have taken effect (a timeout, a connection lost mid-write)."""


ALL_WORKLOADS = frozenset({"stock", "withdraw", "likes"})
ROW_WORKLOADS = frozenset({"booking", "transfer"})  # racebench.workloads.rows


@dataclass(frozen=True)
class StrategySpec:
    """A concurrency-control strategy as a store offers it, with the claim racebench checks.

    `safe_for` lists the workload types for which the strategy claims no anomaly can happen;
    the checker compares that claim with what the run showed. `supports` lists the workload
    types it can run at all.
    """

    description: str
    prevents: str
    allows: str = ""
    safe_for: frozenset[str] = ALL_WORKLOADS
    supports: frozenset[str] = ALL_WORKLOADS


@dataclass(frozen=True)
class StepResult:
    """One operation's outcome; a strategy that holds a lock reports its critical section."""

    outcome: Outcome
    retries: int = 0
    cs_start: int = 0
    cs_end: int = 0
    token: int = 0


# Shared results for the common cases, so the hot loop does not build one per operation.
OK_STEP = StepResult(Outcome.OK)
REJECTED_STEP = StepResult(Outcome.REJECTED)


@dataclass(frozen=True)
class ClientOptions:
    """What a client needs besides the connection: the race window and the retry policy."""

    race_window_s: float
    retries: int
    backoff_s: float
    max_backoff_s: float
    client_id: int
    clients: int
    lock_order: str = "sorted"  # transfer under for_update: "sorted" ids or "random" order


class Backoff:
    """Exponential backoff with full jitter, so retrying clients do not collide in lockstep."""

    def __init__(self, base_s: float, cap_s: float) -> None:
        self.base_s = base_s
        self.cap_s = cap_s

    def sleep(self, attempt: int) -> None:
        """Sleep a random time up to base * 2**attempt, capped; no sleep when base is 0."""
        if self.base_s > 0:
            time.sleep(random.uniform(0, min(self.cap_s, self.base_s * (2**attempt))))


class StoreClient(ABC):
    """One client's connection to the store, opened inside the client process.

    `read_value` / `written_value`: what the current operation read and wrote, set by the
    operation where it knows them and taken (then reset to NO_VALUE) into its history record
    by `guards.as_operation`; attributes rather than return values, so that retries,
    transactions and locks around the operation need not carry them.
    """

    read_value = NO_VALUE
    written_value = NO_VALUE

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self.backoff = Backoff(options.backoff_s, options.max_backoff_s)
        # Retries per conflict code (e.g. 40001, 1213), shipped to the parent at the end.
        self.retry_codes: Counter[str] = Counter()

    def pause(self) -> None:
        """The race window between a read and the write that depends on it."""
        if self.options.race_window_s:
            time.sleep(self.options.race_window_s)

    # Unguarded primitives. With a token they are fenced: the read registers the token, the
    # write is accepted only while it is still the newest; either raises StaleToken.
    # Each is one plain access, with no retry and no transaction of its own: the race between
    # a read and the dependent write is what `none` measures, so a store must not close it.
    @abstractmethod
    def read_counter(self, token: int | None = None) -> int:
        """The counter's current value (stock, likes).

        Raise UnknownOutcome when the server's answer was lost; any other exception gets the
        outcome `classify` gives it (ERROR by default), and `recover` is called.
        """

    @abstractmethod
    def write_counter(self, value: int, token: int | None = None) -> None:
        """Overwrite the counter with `value` (a blind write: the lost update is the point).

        Raise UnknownOutcome when the write may have reached the server before the connection
        failed (a timeout): the history records it as unknown, never as failed.
        """

    @abstractmethod
    def read_balance(self, token: int | None = None) -> int:
        """The account's balance: the sum of the ledger's entries (the deposit included)."""

    @abstractmethod
    def append_entry(self, amount: int, seq: int, token: int | None = None) -> None:
        """Append one ledger entry of `amount` (negative for a withdrawal).

        The entry must store `amount`, the client id (`options.client_id`) and `seq`:
        `read_final` returns them, and the checker matches entries to acknowledged operations
        by (client, seq) to find acknowledged withdrawals missing from the ledger.
        """

    # The coordination-free G-counter: one slot per client, written only by its owner.
    @abstractmethod
    def read_slot(self) -> int:
        """This client's slot of the G-counter (`crdt`); `read_final` sums all slots."""

    @abstractmethod
    def write_slot(self, value: int) -> None:
        """Overwrite this client's slot; no other client writes it, so no race is possible."""

    # The store-native strategies this client runs, per workload shape: strategy -> the name
    # of the method that runs one operation under it (counter: `(strategy, plan)`; ledger and
    # rows: `(strategy, plan, seq)`; each returns a StepResult). Names, not functions, so that
    # a subclass's override is the one called. Built next to the store's `strategies` table;
    # `none`, `crdt` and `lock` on counters and ledgers, and `lock` on rows, are racebench's
    # own (racebench.guards) and need no entry; `none` on rows maps to `_row_none`.
    counter_steps: ClassVar[Mapping[str, str]] = {}
    ledger_steps: ClassVar[Mapping[str, str]] = {}
    row_steps: ClassVar[Mapping[str, str]] = {}

    def native_step(self, strategy: str, plan: Plan | RowPlan) -> Callable[[int], StepResult]:
        """The step (seq -> StepResult) of a store-native `strategy` for `plan`'s shape: one
        lookup in the client's tables, made once per client, not per operation. A counter
        method marked `@step_factory` is called here once and returns the step itself."""
        if isinstance(plan, CounterPlan):
            counter = getattr(self, _step_method(self.counter_steps, strategy))
            if getattr(counter, "step_factory", False):
                step: Callable[[int], StepResult] = counter(strategy, plan)
                return step
            return lambda seq: counter(strategy, plan)
        if isinstance(plan, LedgerPlan):
            ledger = getattr(self, _step_method(self.ledger_steps, strategy))
            return lambda seq: ledger(strategy, plan, seq)
        row = getattr(self, _step_method(self.row_steps, strategy))
        return lambda seq: row(strategy, plan, seq)

    def row_attempt(self, plan: RowPlan, seq: int) -> Outcome:
        """The unguarded booking or transfer operation (strategies `none` and `lock`), for the
        stores whose `workloads` include them."""
        raise NotImplementedError(plan.shape)

    def _row_none(self, strategy: str, plan: RowPlan, seq: int) -> StepResult:
        """Rows under `none`: the unguarded operation as it is."""
        return StepResult(self.row_attempt(plan, seq))

    def retrying(self, attempt_once: Callable[[], Outcome]) -> StepResult:
        """Call `attempt_once()` until it returns an outcome, retrying Conflicts with backoff."""
        for attempt in range(self.options.retries + 1):
            try:
                outcome = attempt_once()
                if attempt == 0:
                    return OK_STEP if outcome == Outcome.OK else StepResult(outcome)
                return StepResult(outcome, attempt)
            except Conflict as conflict:
                self.written_value = NO_VALUE  # that attempt's write did not stay
                self.retry_codes[conflict.code] += 1
                self.on_conflict()
                if attempt < self.options.retries:
                    self.backoff.sleep(attempt)
        return StepResult(Outcome.CONFLICT, self.options.retries)

    def on_conflict(self) -> None:
        """Undo what a failed attempt left open (a transaction); a no-op by default."""

    def classify(self, exc: BaseException) -> Outcome:
        """ERROR for a definite failure, UNKNOWN when the write may have happened."""
        return Outcome.UNKNOWN if isinstance(exc, UnknownOutcome) else Outcome.ERROR

    def recover(self) -> None:
        """Called after an operation failed with an exception; reconnect if needed."""

    def close(self) -> None:
        """Close the connection."""


def step_factory(method: _F) -> _F:
    """Mark a blocking client's counter step method as a factory: `native_step` calls it once
    per client with (strategy, plan), and the callable it returns (seq -> StepResult) runs
    each operation, as the asyncio clients' step methods do. For a statement that takes
    microseconds (embedded SQLite), where a call layer and an argument tuple per operation
    showed in benchmarks/overhead.py."""
    method.step_factory = True  # type: ignore[attr-defined]
    return method


def outcome_only(step: _S) -> _S:
    """Mark a step (seq -> StepResult) that returns only OK_STEP or REJECTED_STEP and leaves
    no values on the client (`read_value`, `written_value`): a blocking loop may then call it
    directly, without the Operation wrapper (racebench.guards.DirectStep). An exception it
    raises is classified by the client as any step's is."""
    step.outcome_only = True  # type: ignore[attr-defined]
    return step


def rowcount_step(execute: Callable[..., Any], *args: Any) -> Callable[[int], StepResult]:
    """The step that is one statement, `execute(*args)`: OK_STEP when it changed a row,
    REJECTED_STEP when it changed none (an atomic conditional UPDATE). `outcome_only`, and
    it says what it runs (`statement`), so that the blocking loop's C path runs the statement
    itself, without a Python frame per operation (racebench/engine/_blocking_loop.c)."""

    @outcome_only
    def step(seq: int) -> StepResult:
        return OK_STEP if execute(*args).rowcount else REJECTED_STEP

    step.statement = (execute, args)  # type: ignore[attr-defined]
    return step


def _step_method(steps: Mapping[str, str], strategy: str) -> str:
    try:
        return steps[strategy]
    except KeyError:
        # Validation refuses a strategy the store does not declare for the workload.
        raise NotImplementedError(strategy) from None


class AsyncStoreClient(ABC):
    """One client's connection through an asyncio driver, run as a task on a worker's loop.

    It offers the unguarded primitives the `none` and `crdt` strategies need, and its own
    native strategies through `step_for`; a lock-guarded run keeps the blocking client.
    """

    read_value = NO_VALUE  # as on StoreClient
    written_value = NO_VALUE

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self.retry_codes: Counter[str] = Counter()

    async def pause(self) -> None:
        """The race window: an await, so the worker's other clients run meanwhile."""
        if self.options.race_window_s:
            await asyncio.sleep(self.options.race_window_s)

    async def retrying(self, attempt_once: Callable[[], Awaitable[Outcome]]) -> StepResult:
        """`StoreClient.retrying` for coroutines: retry Conflicts with jittered backoff."""
        options = self.options
        for attempt in range(options.retries + 1):
            try:
                outcome = await attempt_once()
                if attempt == 0:
                    return OK_STEP if outcome == Outcome.OK else StepResult(outcome)
                return StepResult(outcome, attempt)
            except Conflict as conflict:
                self.written_value = NO_VALUE
                self.retry_codes[conflict.code] += 1
                if attempt < options.retries and options.backoff_s > 0:
                    cap = min(options.max_backoff_s, options.backoff_s * (2**attempt))
                    await asyncio.sleep(random.uniform(0, cap))
        return StepResult(Outcome.CONFLICT, options.retries)

    # As on StoreClient, without tokens: fencing comes with `lock`, which runs the blocking
    # client.
    @abstractmethod
    async def read_counter(self) -> int:
        """The counter's current value; UnknownOutcome when the answer was lost."""

    @abstractmethod
    async def write_counter(self, value: int) -> None:
        """Overwrite the counter (a blind write); UnknownOutcome if it may have landed."""

    @abstractmethod
    async def read_balance(self) -> int:
        """The account's balance: the sum of the ledger's entries."""

    @abstractmethod
    async def append_entry(self, amount: int, seq: int) -> None:
        """Append one ledger entry storing `amount`, the client id and `seq`."""

    @abstractmethod
    async def read_slot(self) -> int:
        """This client's G-counter slot (`crdt`)."""

    @abstractmethod
    async def write_slot(self, value: int) -> None:
        """Overwrite this client's G-counter slot."""

    # As on StoreClient, the store-native strategies per workload shape: strategy -> the name
    # of a method `(strategy, plan)` that returns the coroutine function (seq -> StepResult)
    # running one operation; called once per client, so it can encode what does not change.
    counter_steps: ClassVar[Mapping[str, str]] = {}
    ledger_steps: ClassVar[Mapping[str, str]] = {}

    def step_for(
        self, strategy: str, plan: CounterPlan | LedgerPlan
    ) -> Callable[[int], Awaitable[StepResult]]:
        """The coroutine function (seq -> StepResult) of a store-native strategy: one lookup
        in the client's tables."""
        steps = self.counter_steps if isinstance(plan, CounterPlan) else self.ledger_steps
        step: Callable[[int], Awaitable[StepResult]] = getattr(self, _step_method(steps, strategy))(
            strategy, plan
        )
        return step

    def callback_loop(self, strategy: str, plan: CounterPlan | LedgerPlan) -> CallbackLoop | None:
        """A closed loop run from the driver's reply callbacks for this strategy's hot
        command, when the store has one (racebench.guards.CallbackLoop); None: the worker
        awaits `step_for`'s coroutine per operation."""
        return None

    def classify(self, exc: BaseException) -> Outcome:
        """ERROR for a definite failure, UNKNOWN when the write may have happened."""
        return Outcome.UNKNOWN if isinstance(exc, UnknownOutcome) else Outcome.ERROR

    async def recover(self) -> None:
        """Called after an operation failed with an exception; reconnect if needed."""

    async def close(self) -> None:
        """Close the connection."""


class Store(PluginInfo, ABC):
    """One server kind. Created in the parent; `connect` runs in each client process.

    Registered under the `racebench.stores` entry point; what it declares about itself
    (default URL, drivers, ports, test server) is described in `PluginInfo`.
    """

    backend: ClassVar[str]
    strategies: ClassVar[dict[str, StrategySpec]]
    # The model of its `store:` section; a store with keys of its own declares a subclass
    # of StoreConfig (racebench.util.plugin_config), so a key of another store is refused.
    config_model: ClassVar[type[StoreConfig]] = StoreConfig
    # The largest magnitude its counter and ledger values hold, checked at validation so an
    # out-of-range number is refused before a run, not an overflow in every operation.
    max_integer: ClassVar[int] = 2**63 - 1
    integer_type: ClassVar[str] = "a signed 64-bit integer"
    # Strategies whose clients run on the worker's event loop (`async_connect`); the others
    # run the blocking client on a thread per client.
    async_strategies: ClassVar[frozenset[str]] = frozenset()
    # The workload types it implements; a strategy's `supports` narrows it further.
    workloads: ClassVar[frozenset[str]] = ALL_WORKLOADS
    # The most accounts transfer can have here, and why; None: no limit of the store's own.
    max_accounts: ClassVar[tuple[int, str] | None] = None
    async_driver: ClassVar[str] = ""  # what the asyncio path is built on, for `racebench list`
    # Below this many clients per worker the blocking driver on threads is faster (a lean
    # sync driver beats its own asyncio flavour per operation), above it the event loop is.
    async_from_clients_per_worker: ClassVar[int] = 1
    # Connections a worker opens at once, if fewer than its default (256) suit the server.
    connect_concurrency: ClassVar[int | None] = None

    def __init__(self, url: str | None, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        # Where the server can expire objects (Redis keys), they live this long at least, so
        # that a run killed before its teardown does not leave them forever.
        self.expire_after_s = MIN_LEFTOVER_TTL_S

    def connection_limit(self) -> tuple[str, int] | None:
        """(the server setting, how many more connections it accepts now), or None when the
        server has no such limit; read before a run so that it is refused up front."""
        return None

    @classmethod
    def loop_supports(cls, url: str | None) -> bool:
        """Whether clients for `url` can run on the loop at all (a lean client that writes
        on the bare socket cannot speak TLS: those clients then run on threads)."""
        return True

    async def async_connect(self, options: ClientOptions) -> AsyncStoreClient:
        """Open one client's asyncio connection (for `async_strategies` only)."""
        raise NotImplementedError

    @abstractmethod
    def check_reachable(self) -> dict[str, str]:
        """Connect once; return server facts (version). Raise BackendUnavailable if not."""

    @abstractmethod
    def setup(self, plan: Plan | RowPlan, clients: int) -> None:
        """Create racebench's own namespaced state and seed it."""

    @abstractmethod
    def read_final(self, plan: Plan | RowPlan) -> FinalState:
        """The state after the run: counter value (the sum of slots for crdt), or ledger rows."""

    @abstractmethod
    def teardown(self) -> None:
        """Remove everything setup created; must succeed after a failed or interrupted run."""

    @abstractmethod
    def leftovers(self) -> list[str]:
        """Names of racebench's objects (any namespace) still present on the server."""

    def remove_namespace(self) -> None:
        """Remove every object of this namespace, made by whichever process (`clean`)."""
        self.teardown()

    def check_can_create(self) -> str | None:
        """Create and drop a probe object in this namespace (BackendUnavailable naming the
        missing privilege if that fails); what was checked, or None when nothing needs it."""
        return None

    @abstractmethod
    def connect(self, options: ClientOptions) -> StoreClient:
        """Open one client's connection (in the client process)."""
