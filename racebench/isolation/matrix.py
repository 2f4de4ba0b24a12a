"""Run every probe at every isolation level a server offers: the measured matrix.

Each run uses its own table, `racebench_iso_<hex>` (found by `doctor`/`clean` like every
racebench table), reset to {1: 10, 2: 20} before each probe and dropped at the end, whatever
happened.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from racebench.errors import RacebenchError
from racebench.isolation.dialects import Level, MysqlDialect, PostgresDialect, ServerInfo
from racebench.isolation.probes import PROBES, Probe
from racebench.isolation.sessions import Interleaving, ProbeStuck, Session, Step
from racebench.util.redact import redact_text

Status = Literal["prevented", "allowed", "unknown"]

# Errors by which a server refuses a transaction to keep its isolation level's promise.
ISOLATION_ERRORS = {
    "40001": "serialization failure",
    "40P01": "deadlock",
    "1213": "deadlock",
    "1020": "record changed since the snapshot (innodb_snapshot_isolation)",
}

Dialect = PostgresDialect | MysqlDialect


@dataclass
class Cell:
    """One probe at one level: the verdict, how the server got there, and the steps."""

    probe: str
    level: str
    status: Status
    how: str
    evidence: str
    steps: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class IsolationMatrix:
    """Every probe at every level of one server."""

    url: str
    server: ServerInfo
    levels: list[Level]
    probes: tuple[Probe, ...]
    cells: dict[tuple[str, str], Cell]
    seconds: float


def resolve_target(target: str) -> tuple[str, Dialect]:
    """`postgres`, `mysql` (or `mariadb`) or a URL -> (url, dialect)."""
    from racebench.stores import mysql, postgres

    name = target.lower()
    if name in ("postgres", "postgresql"):
        url = postgres.PostgresStore.configured_url() or postgres.DEFAULT_URL
    elif name in ("mysql", "mariadb"):
        url = mysql.MysqlStore.configured_url() or mysql.DEFAULT_URL
    else:
        url = target
    if postgres.is_postgres_url(url):
        return url, PostgresDialect(url)
    if mysql.is_mysql_url(url):
        return url, MysqlDialect(url)
    raise RacebenchError(
        f"isolation: {redact_text(target)!r} is not postgres, mysql or a "
        "postgresql:// / mysql:// URL"
    )


def _step_record(step: Step) -> dict[str, Any]:
    """One step as the JSON report keeps it, so a reader can replay the interleaving.

    A skipped step is kept and marked (its transaction had already failed) rather than
    dropped, and a select records its rows even when there are none: an empty read is the
    evidence that a phantom was not seen.
    """
    result = step.result
    record: dict[str, Any] = {"session": step.session, "sql": step.sql}
    if result.skipped:
        record["skipped"] = "the transaction had failed"
    elif result.error is not None:
        record["error"] = str(result.error)
    elif result.rows or step.sql.startswith("select"):
        record["rows"] = {str(k): v for k, v in sorted(result.rows.items())}
    if step.blocked:
        record["blocked_until_step"] = step.released_by
    return record


def _how(steps: list[Step]) -> str:
    """The mechanism seen: the first isolation error, else the first lock wait."""
    for step in steps:
        error = step.result.error
        if error is not None and error.code in ISOLATION_ERRORS:
            return f"{step.session} aborted: {error}"
    for step in steps:
        if step.blocked and step.released_by is not None:
            release = steps[step.released_by]
            return (
                f"{step.session} blocked on `{step.sql}` until {release.session}'s `{release.sql}`"
            )
    return ""


def _unexpected_error(steps: list[Step]) -> str | None:
    """The first error that is not an isolation error, which makes the cell unknown.

    A statement that failed for another reason (a lost connection, a lock wait timeout)
    says nothing about the level, so it must not be counted as "prevented".
    """
    for step in steps:
        error = step.result.error
        if error is not None and error.code not in ISOLATION_ERRORS:
            return f"{step.session}: `{step.sql}` failed: {error}"
    return None


class _LevelRun:
    """The sessions of one level, reused probe after probe."""

    def __init__(self, dialect: Dialect, level: Level, monitor: Any, table: str) -> None:
        self.dialect = dialect
        self.level = level
        self.monitor = monitor
        self.table = table
        self.sessions: dict[str, Session] = {}

    def _session(self, name: str) -> Session:
        # Sessions live for the whole level: the level's session settings (e.g.
        # innodb_snapshot_isolation) are per connection, so set once here they hold for
        # every probe the session runs.
        if name not in self.sessions:
            session = Session(name, self.dialect)
            for setting in self.level.session_settings:
                self.dialect.execute(session.conn, setting)
            self.sessions[name] = session
        return self.sessions[name]

    def close(self) -> None:
        """Close every session; the next probe opens new ones."""
        for session in self.sessions.values():
            session.close()
        self.sessions.clear()

    def _reset_table(self) -> None:
        # Through the monitor, in no probe's transaction; each probe's judgement and
        # evidence ("T2 read 1 => 101") assume the same two starting rows.
        for sql in (
            f"delete from {self.table}",
            f"insert into {self.table} (id, value) values (1, 10), (2, 20)",
        ):
            result = self.dialect.execute(self.monitor, sql)
            if result.error is not None:
                raise RacebenchError(f"isolation: cannot reset {self.table}: {result.error}")

    def probe(self, probe: Probe) -> Cell:
        """Run one probe at this level: prevented, allowed, or unknown with the reason."""
        self._reset_table()
        sessions = {name: self._session(name) for name in probe.sessions}
        interleaving = Interleaving(
            self.dialect, self.monitor, sessions, lambda sql: sql.format(t=self.table)
        )
        script = _Script(interleaving, self.dialect.begin(self.level))
        try:
            observation = probe.script(script)
        except ProbeStuck as stuck:
            self.close()  # a session may still wait: start the next probe afresh
            return Cell(probe.name, self.level.name, "unknown", "", f"stuck: {stuck}")
        steps = interleaving.steps
        records = [_step_record(s) for s in steps]
        unexpected = _unexpected_error(steps)
        if unexpected is not None:
            return Cell(probe.name, self.level.name, "unknown", "", unexpected, records)
        # A probe decides from what the transactions saw, never from the level's name, so a
        # server weaker than its documentation shows up as "allowed" here.
        status: Status = "allowed" if observation.anomaly else "prevented"
        how = _how(steps) or ("" if observation.anomaly else "no lock wait, no abort: a snapshot")
        return Cell(probe.name, self.level.name, status, how, observation.evidence, records)


class _Script:
    """The probes' view of an interleaving: BEGIN at the level, then statements."""

    def __init__(self, interleaving: Interleaving, begin: list[str]) -> None:
        self._interleaving = interleaving
        self._begin = begin

    def begin(self, session: str) -> None:
        for sql in self._begin:
            self._interleaving.run(session, sql)

    def run(self, session: str, sql: str) -> Step:
        return self._interleaving.run(session, sql)

    def finish(self) -> None:
        self._interleaving.finish()


def run_isolation(
    target: str, probes: tuple[Probe, ...] = PROBES, levels: list[str] | None = None
) -> IsolationMatrix:
    """Run `probes` (default: all) at every level of the server (or the named `levels`)."""
    url, dialect = resolve_target(target)
    started = time.monotonic()
    monitor = dialect.connect()  # BackendUnavailable (exit 3) when unreachable
    table = f"racebench_iso_{secrets.token_hex(4)}"
    try:
        server = dialect.server_info(monitor)
        dialect.waiting_for_lock(monitor, 0)  # fails now, not mid-probe, without the privilege
        all_levels = dialect.levels(server)
        chosen = [lv for lv in all_levels if levels is None or lv.name in levels]
        if levels is not None and len(chosen) != len(levels):
            known = ", ".join(lv.name for lv in all_levels)
            raise RacebenchError(f"isolation: unknown level in {levels} (known: {known})")
        dialect.create_table(monitor, table)
        cells: dict[tuple[str, str], Cell] = {}
        for level in chosen:
            run = _LevelRun(dialect, level, monitor, table)
            try:
                for probe in probes:
                    cells[(level.name, probe.name)] = run.probe(probe)
            finally:
                run.close()
    finally:
        try:
            dialect.drop_table(monitor, table)
        finally:
            monitor.close()
    return IsolationMatrix(
        redact_text(url), server, chosen, probes, cells, time.monotonic() - started
    )
