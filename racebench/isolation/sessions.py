"""Sessions driven in a fixed interleaving, with lock waits seen by the server itself.

Each session is one connection used by one thread of its own, so a statement that waits for
a lock does not stop the script: the script moves on to the next session's step, as a person
does with two terminals. After every step the interleaving *settles*: each session's statement
has either finished or the server reports that session as waiting for a lock (PostgreSQL's
`pg_blocking_pids`, InnoDB's `innodb_trx.trx_state`). A commit grants the waiting locks before
it returns, so no step ever races with a statement it just unblocked: the order of events is
the script's, never timing luck.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

# A settled step takes milliseconds on loopback; this bound only stops a broken probe.
SETTLE_LIMIT_S = 15.0
_POLL_S = 0.005


class ProbeStuck(Exception):
    """A statement neither finished nor waited for a lock within SETTLE_LIMIT_S."""


@dataclass(frozen=True)
class ServerError:
    """An error the server raised for one statement: its code and first message line."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code} {self.message}"


@dataclass
class StatementResult:
    """What one statement returned: rows as {id: value}, the affected row count, or an error."""

    rows: dict[int, int] = field(default_factory=dict)
    rowcount: int = 0
    error: ServerError | None = None
    skipped: bool = False  # the transaction had already failed, so the client did not send it


class Dialect(Protocol):
    """What the interleaving needs from one server kind."""

    def connect(self) -> Any: ...
    def session_id(self, conn: Any) -> int: ...
    def waiting_for_lock(self, monitor: Any, session_id: int) -> bool: ...
    def execute(self, conn: Any, sql: str) -> StatementResult: ...


class Session:
    """One transaction's connection, run by its own thread so that it may block on a lock."""

    def __init__(self, name: str, dialect: Dialect) -> None:
        self.name = name
        self.dialect = dialect
        self.conn = dialect.connect()
        self.id = dialect.session_id(self.conn)
        self.failed: ServerError | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"isolation-{name}")
        self._futures: list[Future[StatementResult]] = []

    def submit(self, sql: str) -> Future[StatementResult]:
        """Queue a statement behind this session's earlier ones."""
        future = self._thread.submit(self._execute, sql)
        self._futures.append(future)
        return future

    def _execute(self, sql: str) -> StatementResult:
        # Like an application, a client whose transaction failed sends nothing more in it
        # and ends it with ROLLBACK (PostgreSQL would refuse everything else with 25P02).
        verb = sql.split(None, 1)[0].lower()
        if self.failed is not None and verb not in ("commit", "rollback"):
            return StatementResult(skipped=True)
        if self.failed is not None and verb == "commit":
            self.dialect.execute(self.conn, "rollback")
            self.failed = None
            return StatementResult(skipped=True)
        result = self.dialect.execute(self.conn, sql)
        # A COMMIT that fails (40001 at commit) ends the transaction as a ROLLBACK does.
        self.failed = None if verb in ("commit", "rollback") else result.error
        return result

    @property
    def busy(self) -> bool:
        return any(not f.done() for f in self._futures)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
        # Closing a connection whose server went away: nothing left to do.
        with contextlib.suppress(Exception):
            self.conn.close()


@dataclass
class Step:
    """One statement of the script, as it happened."""

    index: int
    session: str
    sql: str
    future: Future[StatementResult]
    blocked: bool = False  # the server reported its session waiting for a lock
    released_by: int | None = None  # the step after which it finished, if it was blocked

    @property
    def result(self) -> StatementResult:
        return self.future.result(timeout=SETTLE_LIMIT_S)

    @property
    def ok(self) -> bool:
        """It ran and succeeded (a COMMIT skipped after a failure did not)."""
        r = self.result
        return r.error is None and not r.skipped

    @property
    def rows(self) -> dict[int, int]:
        return self.result.rows


class Interleaving:
    """Runs statements on named sessions in script order, settling after each one."""

    def __init__(
        self,
        dialect: Dialect,
        monitor: Any,
        sessions: dict[str, Session],
        render_sql: Callable[[str], str],
    ) -> None:
        self.dialect = dialect
        self.monitor = monitor
        self.sessions = sessions
        self.render_sql = render_sql
        self.steps: list[Step] = []

    def run(self, session: str, sql: str) -> Step:
        """Send `sql` on `session`; return once every session has settled."""
        text = self.render_sql(sql)
        step = Step(len(self.steps), session, text, self.sessions[session].submit(text))
        self.steps.append(step)
        self._settle(step.index)
        return step

    def _settle(self, after: int) -> None:
        """Wait until each session's statement has finished or waits for a lock.

        The newest statement settles first: once a COMMIT has returned, the locks it held are
        granted to their waiters, so the other sessions' states read afterwards are current.
        Passes repeat until nothing finishes, because a released statement lets the ones
        queued behind it in its session run (a COMMIT there releases more).
        """
        deadline = time.monotonic() + SETTLE_LIMIT_S
        newest = self.steps[after].session
        order = [newest, *(name for name in self.sessions if name != newest)]
        changed = True
        while changed:
            changed = False
            for name in order:
                for step in (s for s in self.steps if s.session == name):
                    if not step.future.done() and not self._wait(step, deadline):
                        break  # waits for a lock; later statements are queued behind it
                    if step.blocked and step.released_by is None:
                        step.released_by = after
                        changed = True

    def _wait(self, step: Step, deadline: float) -> bool:
        """True when `step` finished; False when its session waits for a lock."""
        while not step.future.done():
            if self.dialect.waiting_for_lock(self.monitor, self.sessions[step.session].id):
                step.blocked = True
                return False
            if time.monotonic() > deadline:
                raise ProbeStuck(f"{step.session}: `{step.sql}` neither finished nor waited")
            time.sleep(_POLL_S)
        return True

    def finish(self) -> None:
        """Wait for every queued statement (the script's last steps release all locks)."""
        deadline = time.monotonic() + SETTLE_LIMIT_S
        for step in self.steps:
            step.future.result(timeout=max(0.0, deadline - time.monotonic()))
            if step.blocked and step.released_by is None:
                step.released_by = len(self.steps) - 1
