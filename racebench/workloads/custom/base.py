"""The protocol a user's own workload runs through, and the operation built around it.

A built-in workload reduces to a counter or a ledger that every store implements. A custom
workload (a SQL or Redis template, a Python plug-in) brings its own state instead: it sets up
what it needs, runs one operation per call in each client, and checks its own invariants at
the end. The engine drives it through `CustomRun`; the strategies that apply to any custom
workload (`none`, `lock` with optional fencing) are built here, on the same lock handling as
the built-in workloads, and a template adds its own (transactions) in `CustomClient.step`.
"""

from __future__ import annotations

import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from racebench.history import NO_VALUE, Outcome, RunHistory
from racebench.stores.base import OK_STEP, ClientOptions, StepResult, StrategySpec
from racebench.workloads.counters import Check

if TYPE_CHECKING:
    from racebench.workloads.custom.expressions import Expression


def generic_strategies(workload_type: str, claims_safe: bool) -> dict[str, StrategySpec]:
    """`none` and `lock` for a custom workload; `claims_safe` is the template's own claim."""
    own = frozenset({workload_type})
    return {
        "none": StrategySpec(
            "the operation's steps as written, each statement on its own (autocommit)",
            prevents="whatever the schema or the steps themselves enforce",
            allows="every race between the reads and the first write",
            safe_for=own if claims_safe else frozenset(),
            supports=own,
        ),
        "lock": StrategySpec(
            "the whole operation inside a lock service's critical section (guard.lock); "
            "with guard.fencing the token is bound as :token",
            prevents="races between operations while the lock holds",
            allows="races when a lease expires mid-operation (unless the steps fence)",
            safe_for=own,
            supports=own,
        ),
    }


class GuardedStep(Protocol):
    """What the step loop needs of a compiled template step (SQL or Redis)."""

    @property
    def when(self) -> Expression | None: ...

    @property
    def skip_when_false(self) -> bool: ...

    @property
    def pause_before(self) -> bool: ...


StepT = TypeVar("StepT", bound=GuardedStep)


class CustomClient(ABC):
    """One client's side of a custom workload, opened in the client process.

    A custom workload records no values unless its client sets `read_value` and
    `written_value` during an operation (as the built-in stores do).
    """

    read_value = NO_VALUE
    written_value = NO_VALUE

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self.retry_codes: Counter[str] = Counter()

    @abstractmethod
    def run_operation(self, seq: int, token: int | None) -> Outcome:
        """Run the operation once as written (autocommit); `token` is the fencing token."""

    def pause(self) -> None:
        """The race window between the reads and the first write."""
        if self.options.race_window_s:
            time.sleep(self.options.race_window_s)

    def run_steps(
        self,
        steps: Sequence[StepT],
        bound: dict[str, Any],
        execute: Callable[[StepT], Outcome | None],
    ) -> Outcome:
        """Run a template's steps in order, honouring each step's `when:` guard and pause.

        A false guard rejects the whole operation (a business rule said no), unless the step
        was marked to be skipped instead; `execute` runs one step, binds what it read into
        `bound`, and returns an outcome only to end the operation early.
        """
        for step in steps:
            if step.when is not None and not step.when.evaluate(bound):
                if step.skip_when_false:
                    continue
                return Outcome.REJECTED
            if step.pause_before:
                self.pause()
            outcome = execute(step)
            if outcome is not None:
                return outcome
        return Outcome.OK

    def step(self, strategy: str, seq: int) -> StepResult:
        """One operation under a workload-specific strategy (a transaction); none by default."""
        outcome = self.run_operation(seq, None)
        return OK_STEP if outcome == Outcome.OK else StepResult(outcome)

    def classify(self, exc: BaseException) -> Outcome:
        """ERROR for a definite failure, UNKNOWN when the write may have happened."""
        return Outcome.ERROR

    def recover(self) -> None:
        """Called after an operation raised; reconnect or roll back if needed."""

    def close(self) -> None:
        """Close the connection."""


class CustomRun(ABC):
    """One trial of a custom workload, in the parent: set up, connect clients, check, drop."""

    url: str

    def route_through(self, url: str) -> None:
        """Connect this client process through a fault proxy (called after the fork)."""
        self.url = url

    @abstractmethod
    def setup(self) -> None:
        """Create and seed the workload's (namespaced) state."""

    @abstractmethod
    def connect(self, options: ClientOptions) -> CustomClient:
        """Open one client (called in the client process)."""

    @abstractmethod
    def check(self, history: RunHistory) -> Check:
        """Check the invariants on the final state; anomaly counts by invariant name."""

    @abstractmethod
    def teardown(self) -> None:
        """Remove everything setup and the run created; must work after a failed setup."""


def pause_points(reads: Sequence[bool]) -> list[bool]:
    """Which of a template's steps (by whether each only reads) pause before they run.

    Only the first write that follows a read: that gap is where a read-modify-write races,
    and one pause per operation keeps the race window what the scenario says.
    """
    pauses = []
    seen_read = paused = False
    for step_reads in reads:
        pause = seen_read and not step_reads and not paused
        paused = paused or pause
        seen_read = seen_read or step_reads
        pauses.append(pause)
    return pauses


def history_figures(history: RunHistory) -> dict[str, int]:
    """Operation counts an invariant may use: `:ok`, `:rejected`, `:unknown`, `:operations`."""
    counts = history.outcome_counts()
    return {
        "ok": counts["ok"],
        "rejected": counts["rejected"],
        "unknown": counts["unknown"],
        "operations": len(history),
    }


def describe_rows(rows: list[tuple[Any, ...]], limit: int = 5) -> str:
    """Offending rows as text: the first `limit`, and how many more."""
    shown = ", ".join("(" + ", ".join(repr(v) for v in row) + ")" for row in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return shown + more


def resolve_url(backend: str, url: str | None) -> tuple[str, str | None]:
    """The URL (a file path for sqlite) and a temporary directory to remove, if one was made.

    Without a URL a sqlite run gets a fresh temporary database file, as the built-in store does.
    """
    if backend != "sqlite":
        assert url is not None
        return url, None
    path = (url or "").removeprefix("sqlite:///").removeprefix("sqlite://")
    if path:
        return path, None
    temp_dir = tempfile.mkdtemp(prefix="racebench-sqlite-")
    return os.path.join(temp_dir, "racebench.db"), temp_dir
