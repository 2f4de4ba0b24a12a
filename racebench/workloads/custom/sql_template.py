"""SQL template workloads (`workload.type: sql`): a user's own statements, raced and checked.

    workload:
      type: sql
      setup:                 # run once per trial; {{table:x}} is a table of this run only
        - CREATE TABLE {{table:seats}} (seat INTEGER NOT NULL, client INTEGER NOT NULL)
      params: {seat: random_int(1, 50)}
      operation:             # each client runs these per operation, in order
        - SELECT COUNT(*) AS taken FROM {{table:seats}} WHERE seat = :seat
        - sql: INSERT INTO {{table:seats}} (seat, client) VALUES (:seat, :client)
          when: ":taken == 0"
      invariants:            # hold when they return no rows
        - name: seat booked twice
          sql: SELECT seat, COUNT(*) FROM {{table:seats}} GROUP BY seat HAVING COUNT(*) > 1

A `SELECT ... AS name` binds the columns of its first row (NULL without a row) for later
steps' `:name` parameters and `when:` guards; a guard that is false ends the operation as
`rejected`, as does a write that a constraint refuses. The race window (`race_window_ms`)
sits between the last read and the first write. Every name is checked when the scenario is
loaded; the invariant queries are run once right after setup, so a syntax error in one
stops the run before any client starts.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from racebench.errors import RacebenchError, ScenarioError
from racebench.history import Outcome, RunHistory
from racebench.stores.base import Backoff, ClientOptions, Conflict, StaleToken, StepResult
from racebench.stores.base import StrategySpec as Spec
from racebench.workloads.counters import Check, Invariant
from racebench.workloads.custom.base import (
    CustomClient,
    CustomRun,
    describe_rows,
    generic_strategies,
    history_figures,
    pause_points,
    resolve_url,
)
from racebench.workloads.custom.expressions import Expression, ExpressionError, parse_expression
from racebench.workloads.custom.params import RESERVED_NAMES, draw_params, namespaced, parse_params
from racebench.workloads.custom.sql_dialects import DIALECTS, ISOLATION_LEVELS, SqlDialect

# Quoted text first, so a ':name' inside a string literal or a quoted identifier is left alone.
_SQL_TOKENS = re.compile(r"""('(?:[^']|'')*'|"[^"]*")|(?<![:\w]):([A-Za-z_]\w*)""")
# A SELECT binds its columns by their names; `AS name` is how a template names one, so the
# aliases are what later steps may read (checked at load time, before any client runs).
_ALIAS = re.compile(r"\bAS\s+([A-Za-z_]\w*)", re.IGNORECASE)
# Statements that only read: the race window goes before the first statement that is not one.
_READ = re.compile(r"^\s*(SELECT|WITH|VALUES|TABLE|SHOW)\b", re.IGNORECASE)
FIGURE_NAMES = frozenset({"ok", "rejected", "unknown", "operations"})


class _Strict(BaseModel):
    # extra="forbid": a misspelt key in a template is an error, never a silently ignored step.
    model_config = ConfigDict(extra="forbid")


class SqlStep(_Strict):
    """One statement of the operation, with an optional guard."""

    sql: str
    when: str | None = None
    # What a false `when` does: end the operation as rejected, or skip just this step.
    otherwise: Literal["reject", "skip"] = "reject"
    # A write that changes no row: end the operation as rejected, or as stale (fencing).
    on_no_rows: Literal["rejected", "stale"] | None = None


class SqlInvariant(_Strict):
    """A named query that returns no rows (or one `true`) while the invariant holds."""

    name: str = Field(min_length=1)
    sql: str
    holds_when: Literal["no_rows", "true"] = "no_rows"


def _parameters(sql: str) -> list[str]:
    # Lower-cased, as bound column names are: drivers report a column in the server's case
    # (PostgreSQL folds unquoted names to lower case, MySQL keeps them as written).
    return [m.group(2).lower() for m in _SQL_TOKENS.finditer(sql) if m.group(2)]


def _to_driver(sql: str, placeholder: str) -> tuple[str, tuple[str, ...]]:
    """`:name` to the driver's placeholder, with the names in order; `%` escaped for `%s`."""
    names: list[str] = []
    # psycopg and PyMySQL read every `%` as a placeholder's start, so `LIKE 'a%'` needs `%%`.
    if placeholder == "%s":
        sql = sql.replace("%", "%%")

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):
            return match.group(1)
        names.append(match.group(2).lower())
        return placeholder

    return _SQL_TOKENS.sub(substitute, sql), tuple(names)


class SqlTemplateWorkload(_Strict):
    """A user's own SQL: setup statements, an operation raced by the clients, invariants."""

    type: Literal["sql"]
    description: str | None = None
    setup: list[str] = []
    params: dict[str, Any] = {}
    operation: list[str | SqlStep] = Field(min_length=1)
    invariants: list[SqlInvariant] = Field(min_length=1)
    # The template's own claim that its invariants hold under any strategy (a unique index,
    # a conditional write): the run is then `safe` or UNEXPECTED, never "race not reproduced".
    claims_safe: bool = False

    operation_kind: ClassVar[str] = "operation"
    anomaly_names: ClassVar[tuple[str, ...]] = ()
    backends: ClassVar[tuple[str, ...]] = tuple(DIALECTS)

    @property
    def steps(self) -> list[SqlStep]:
        """The operation's steps, a bare string read as a step without options."""
        return [SqlStep(sql=s) if isinstance(s, str) else s for s in self.operation]

    @model_validator(mode="after")
    def _check_names(self) -> SqlTemplateWorkload:
        try:
            parse_params(self.params)
        except ValueError as exc:
            raise ValueError(f"params: {exc}") from None
        bound = {name.lower() for name in self.params} | RESERVED_NAMES
        for i, text in enumerate(self.setup):
            _check_text(f"setup[{i}]", text, set())
        for i, step in enumerate(self.steps):
            where = f"operation[{i}]"
            _check_text(where, step.sql, bound)
            if step.when is not None:
                try:
                    guard = parse_expression(step.when)
                except ExpressionError as exc:
                    raise ValueError(f"{where}.when: {exc}") from None
                _check_bound(f"{where}.when", {n.lower() for n in guard.names}, bound)
            # Names become bound in step order, so a step cannot read a later step's column.
            if _READ.match(step.sql):
                bound |= {alias.lower() for alias in _ALIAS.findall(step.sql)}
        # Invariants run after the race, where only the run's operation counts are bound.
        for i, invariant in enumerate(self.invariants):
            _check_text(f"invariants[{i}].sql", invariant.sql, set(FIGURE_NAMES))
        return self

    def strategies(self, backend: str) -> dict[str, Spec]:
        """`none`, `lock`, and one transaction per isolation level the server has."""
        own = frozenset({self.type})
        claimed = own if self.claims_safe else frozenset()
        specs = generic_strategies(self.type, self.claims_safe)
        dialect = DIALECTS.get(backend)
        for level in dialect.levels if dialect else ():
            serializable = level == "serializable"
            specs[level] = Spec(
                f"the whole operation in one {ISOLATION_LEVELS[level]} transaction, retried on "
                "serialization failures and deadlocks",
                prevents="every race between operations"
                if serializable
                else "lost updates on the rows both transactions write (server-dependent)",
                allows="" if serializable else "write skew and phantoms (check-then-insert)",
                safe_for=own if serializable else claimed,
                supports=own,
            )
        return specs

    def validate_run(self, fencing: bool, strategy: str) -> str | None:
        """A problem with this run's guard, as (message), or None."""
        uses_token = any("token" in _parameters(step.sql) for step in self.steps)
        if fencing and not uses_token:
            return "guard.fencing: the template must say where the token goes (use :token)"
        return None

    def start(
        self, backend: str, url: str | None, namespace: str, source: str, clients: int
    ) -> SqlTemplateRun:
        return SqlTemplateRun(self, backend, url, namespace, source)


def _check_bound(where: str, used: set[str], bound: set[str]) -> None:
    """Refuse the first name read before anything binds it, listing what is bound there."""
    if unknown := sorted(used - bound):
        raise ValueError(
            f"{where}: :{unknown[0]} is not bound here (bound: "
            + ", ".join(f":{n}" for n in sorted(bound))
            + "; a SELECT binds with AS name)"
        )


def _check_text(where: str, sql: str, bound: set[str]) -> None:
    """Check a statement's `{{table:..}}` placeholders and the `:names` it reads."""
    try:
        namespaced(sql, "table", lambda name: name, set())
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    _check_bound(where, set(_parameters(sql)), bound)


@dataclass(frozen=True)
class _Compiled:
    """A statement ready for the driver: its text and the bound names in placeholder order."""

    sql: str
    names: tuple[str, ...]
    when: Expression | None = None
    skip_when_false: bool = False
    on_no_rows: str | None = None
    pause_before: bool = False


class SqlTemplateRun(CustomRun):
    """One trial: namespaced tables created, raced, checked, and dropped."""

    def __init__(
        self, workload: SqlTemplateWorkload, backend: str, url: str | None, ns: str, source: str
    ) -> None:
        self.workload = workload
        self.dialect: SqlDialect = DIALECTS[backend]()
        self.source = source
        self.namespace = ns
        self.table_names: set[str] = set()  # as written in {{table:x}}
        self.url, self._temp_dir = resolve_url(backend, url)

        def compile_sql(sql: str) -> tuple[str, tuple[str, ...]]:
            text = namespaced(sql, "table", self.table, self.table_names)
            return _to_driver(text, self.dialect.placeholder)

        self.setup_sql = [compile_sql(s) for s in workload.setup]
        self.steps: list[_Compiled] = []
        reads = [bool(_READ.match(step.sql)) for step in workload.steps]
        for step, pause in zip(workload.steps, pause_points(reads), strict=True):
            sql, names = compile_sql(step.sql)
            when = parse_expression(step.when) if step.when else None
            self.steps.append(
                _Compiled(sql, names, when, step.otherwise == "skip", step.on_no_rows, pause)
            )
        self.invariants = [(inv, *compile_sql(inv.sql)) for inv in workload.invariants]
        self.draws = parse_params(workload.params)

    def table(self, name: str) -> str:
        """The run's own name for the template's `{{table:name}}`."""
        return f"{self.namespace}_{name.lower()}"

    @contextmanager
    def _admin(self) -> Iterator[Any]:
        """A short-lived connection of the parent's for setup, checks and teardown."""
        conn = self.dialect.open(self.url)
        try:
            yield conn.cursor()
        finally:
            conn.close()

    def setup(self) -> None:
        with self._admin() as cur:
            for i, (sql, _) in enumerate(self.setup_sql):
                self._admin_run(cur, sql, (), f"workload.setup[{i}]")
            for i, (_, sql, names) in enumerate(self.invariants):
                # Run once on the fresh state, so a broken query stops the run before it starts.
                self._query(cur, sql, names, {n: 0 for n in FIGURE_NAMES}, i)

    def _admin_run(self, cur: Any, sql: str, params: tuple[Any, ...], field: str) -> None:
        try:
            cur.execute(sql, params)
        except self.dialect.driver_error as exc:
            # The first line only: drivers add DETAIL/HINT lines, and errors stay one line.
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ScenarioError(self.source, field, f"the server refused it: {message}") from None

    def _query(
        self, cur: Any, sql: str, names: tuple[str, ...], figures: dict[str, int], i: int
    ) -> list[tuple[Any, ...]]:
        params = tuple(figures[n] for n in names)
        self._admin_run(cur, sql, params, f"workload.invariants[{i}].sql")
        return [tuple(row) for row in cur.fetchall()] if cur.description else []

    def connect(self, options: ClientOptions) -> SqlTemplateClient:
        return SqlTemplateClient(self, options)

    def check(self, history: RunHistory) -> Check:
        figures = history_figures(history)
        invariants: list[Invariant] = []
        anomalies: dict[str, int] = {}
        with self._admin() as cur:
            for i, (inv, sql, names) in enumerate(self.invariants):
                rows = self._query(cur, sql, names, figures, i)
                # Offending rows count one anomaly each (a seat per row, say); a `true` query
                # is one judgement over the final state and fails once.
                if inv.holds_when == "true":
                    holds = len(rows) == 1 and len(rows[0]) == 1 and bool(rows[0][0])
                    detail = f"returned {describe_rows(rows) or 'no rows'}"
                    count = 0 if holds else 1
                else:
                    holds, count = not rows, len(rows)
                    detail = f"{count} offending rows: {describe_rows(rows)}" if rows else "no rows"
                invariants.append(Invariant(inv.name, holds, detail))
                anomalies[inv.name] = count
        return Check(invariants, anomalies)

    def _drop(self, cur: Any) -> None:
        # Only the namespaced names: a template's tables, never one it did not create.
        tables = sorted({self.table(name) for name in self.table_names})
        for sql in self.dialect.drop_statements(tables):
            cur.execute(sql)

    def teardown(self) -> None:
        # A temporary sqlite database goes with its directory: no tables to drop first.
        try:
            if self._temp_dir is None:
                with self._admin() as cur:
                    self._drop(cur)
        finally:
            if self._temp_dir is not None:
                shutil.rmtree(self._temp_dir, ignore_errors=True)
                self._temp_dir = None


class SqlTemplateClient(CustomClient):
    """One client's connection: runs the compiled steps, in a transaction when asked."""

    def __init__(self, run: SqlTemplateRun, options: ClientOptions) -> None:
        super().__init__(options)
        self.run = run
        self.dialect = run.dialect
        self.backoff = Backoff(options.backoff_s, options.max_backoff_s)
        self._dead = False
        self._open()

    def _open(self) -> None:
        self.conn = self.dialect.open(self.run.url)
        self.cur = self.conn.cursor()

    def _execute(self, sql: str, params: tuple[Any, ...]) -> Any:
        try:
            self.cur.execute(sql, params)
        except self.dialect.driver_error as exc:
            code = self.dialect.error_code(exc)
            if code in self.dialect.conflict_codes:
                raise Conflict(code or "conflict") from exc
            raise
        return self.cur

    def run_operation(self, seq: int, token: int | None) -> Outcome:
        bound = draw_params(self.run.draws, self.options.client_id, seq)
        bound["token"] = token

        def execute(step: _Compiled) -> Outcome | None:
            cur = self._execute(step.sql, tuple(bound[n] for n in step.names))
            if cur.description:
                row = cur.fetchone()
                for column, description in enumerate(cur.description):
                    bound[description[0].lower()] = None if row is None else row[column]
                cur.fetchall()
            elif step.on_no_rows is not None and cur.rowcount == 0:
                if step.on_no_rows == "stale":
                    raise StaleToken
                return Outcome.REJECTED
            return None

        return self.run_steps(self.run.steps, bound, execute)

    def step(self, strategy: str, seq: int) -> StepResult:
        """The operation in one transaction at `strategy`'s level, retried on conflicts."""
        begin = self.dialect.begin_statements(strategy)
        # A conflict is the server keeping its promise, so the whole transaction is retried
        # from BEGIN with backoff; past the retries the operation counts as CONFLICT.
        for attempt in range(self.options.retries + 1):
            try:
                for sql in begin:
                    self._execute(sql, ())
                try:
                    outcome = self.run_operation(seq, None)
                    self._execute("COMMIT", ())
                except BaseException:
                    self._rollback()
                    raise
                return StepResult(outcome, attempt)
            except Conflict as conflict:
                self.retry_codes[conflict.code] += 1
                if attempt < self.options.retries:
                    self.backoff.sleep(attempt)
        return StepResult(Outcome.CONFLICT, self.options.retries)

    def _rollback(self) -> None:
        with suppress(Exception):  # a dead connection is replaced by recover()
            self.cur.execute("ROLLBACK")

    def classify(self, exc: BaseException) -> Outcome:
        # Order matters: a constraint refusal or a lock timeout is a definite answer even on
        # a connection that broke afterwards; only a lost answer is UNKNOWN.
        if isinstance(exc, RacebenchError):
            return Outcome.ERROR
        if self.dialect.refused_by_constraint(exc):
            return Outcome.REJECTED
        if self.dialect.error_code(exc) in self.dialect.lock_wait_codes:
            return Outcome.LOCK_TIMEOUT
        if self._dead:
            return Outcome.ERROR
        if isinstance(exc, self.dialect.driver_error) and self.dialect.broken(self.conn):
            return Outcome.UNKNOWN  # the write may have committed before the answer was lost
        return Outcome.ERROR

    def recover(self) -> None:
        # A client that could not reconnect is `_dead`: its failures are ERROR (the server
        # never got the statement), not UNKNOWN, and each recover tries to connect again.
        if self._dead or self.dialect.broken(self.conn):
            with suppress(Exception):
                self.conn.close()
            try:
                self._open()
                self._dead = False
            except RacebenchError:
                self._dead = True
            return
        self._rollback()

    def close(self) -> None:
        self.conn.close()
