"""PostgreSQL's and MySQL's atomic counter statement run from the protocol's reply callbacks
(racebench.stores.sql_lean.LeanSqlClient.callback_loop).

The loop must record each operation exactly once with the outcome the general path would
give it, and hand the connection back when the server refuses a statement (nothing recorded:
the general path sends it again) or the session dies (the statement in flight recorded as
unknown, since it may have committed). Driven here by a small sink standing in for the
worker's recording (racebench.engine.worker._Sink), against the real servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from racebench.history import Outcome
from tests.conftest import run_scenario_data, unique_namespace

BACKENDS = ["postgres", "mysql"]


class ListSink:
    """Records (outcome, message) per operation; stops after `quota`; `on_op(n)` runs after
    the n-th completed operation, between its reply and the next statement."""

    def __init__(self, quota: int, on_op: Callable[[int], None] | None = None) -> None:
        self.quota = quota
        self.on_op = on_op
        self.records: list[tuple[int, str | None]] = []
        self.now = 0

    def _next(self) -> int:
        if len(self.records) >= self.quota:
            return 0
        self.now += 1
        return self.now

    def first(self) -> int:
        return self._next()

    def complete(
        self, start: int, outcome: int, written: int = 0, message: str | None = None
    ) -> int:
        assert start == self.now, "completed an operation that was not started"
        self.records.append((outcome, message))
        if self.on_op is not None:
            self.on_op(len(self.records))
        return self._next()


def _url(request: pytest.FixtureRequest, backend: str) -> str:
    return request.getfixturevalue(f"{backend}_url")


def _spec(backend: str, url: str, initial: int) -> Any:
    from racebench.config.scenario import expand

    data = {
        "name": "callbacks",
        "workload": {"type": "stock", "initial": initial},
        "store": {"backend": backend, "url": url},
        "guard": {"strategy": "atomic"},
        "clients": 2,
    }
    [spec] = expand(data, "t.yaml")
    return spec


def _options() -> Any:
    from racebench.stores.base import ClientOptions

    return ClientOptions(
        race_window_s=0, retries=3, backoff_s=0, max_backoff_s=0, client_id=0, clients=2
    )


class Admin:
    """A second, blocking session on the same server: reads the counter, changes the table,
    kills the client's session."""

    def __init__(self, backend: str, url: str, table: str) -> None:
        self.backend, self.table = backend, table
        if backend == "postgres":
            import psycopg

            self.conn: Any = psycopg.connect(url, autocommit=True)
        else:
            from racebench.stores.mysql import open_connection

            self.conn = open_connection(url)
            self.conn.autocommit(True)

    def execute(self, sql: str) -> Any:
        cur = self.conn.cursor()
        cur.execute(sql)
        return cur.fetchone() if cur.description else None

    def value(self) -> int:
        return int(self.execute(f"SELECT value FROM {self.table} WHERE id = 1")[0])

    def forbid_below(self, floor: int) -> None:
        self.execute(f"ALTER TABLE {self.table} ADD CONSTRAINT rb_floor CHECK (value >= {floor})")

    def allow(self) -> None:
        self.execute(f"ALTER TABLE {self.table} DROP CONSTRAINT rb_floor")

    def kill(self, session: int) -> None:
        """End the client's session, as an operator (or a failover) would."""
        if self.backend == "postgres":
            self.execute(f"SELECT pg_terminate_backend({int(session)})")
        else:
            self.execute(f"KILL CONNECTION {int(session)}")

    def close(self) -> None:
        self.conn.close()


async def _with_client(backend: str, url: str, initial: int, body) -> Any:
    """Set up the stock table, open one lean client (on this loop) and an admin session,
    run `body(client, loop_fn, admin)`, tear everything down."""
    from racebench.engine.trials import make_store

    spec = _spec(backend, url, initial)
    store = make_store(spec, unique_namespace("cbloop"))
    plan = spec.scenario.workload.plan()
    store.setup(plan, 2)
    admin = Admin(backend, url, store.namespace + "_counter")
    client = await store.async_connect(_options())
    try:
        loop_fn = client.callback_loop("atomic", plan)
        assert loop_fn is not None
        return await body(client, loop_fn, admin)
    finally:
        await client.close()
        admin.close()
        store.teardown()


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_the_atomic_counter_takes_the_callback_loop(request, backend: str) -> None:
    from racebench.engine.trials import make_store
    from racebench.workloads.counters import LedgerPlan

    url = _url(request, backend)
    spec = _spec(backend, url, 10)
    store = make_store(spec, unique_namespace("cbloop"))

    async def check() -> None:
        client = await store.async_connect(_options())
        try:
            plan = spec.scenario.workload.plan()
            assert client.callback_loop("atomic", plan) is not None
            assert client.callback_loop("none", plan) is None
            assert client.callback_loop("atomic", LedgerPlan(deposit=10, amount=1)) is None
        finally:
            await client.close()

    asyncio.run(check())


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_statement_is_recorded_once_with_its_outcome(request, backend: str) -> None:
    """After one sale on the general path (PostgreSQL prepares there), 30 sales from the 24
    units left: 24 OK, then 6 REJECTED by the floor, and the counter at 0."""

    async def body(client, loop_fn, admin: Admin) -> None:
        plan = _spec(backend, _url(request, backend), 25).scenario.workload.plan()
        await client.step_for("atomic", plan)(0)
        sink = ListSink(quota=30)
        assert await loop_fn(sink) is True
        ok, rejected = int(Outcome.OK), int(Outcome.REJECTED)
        assert [o for o, _ in sink.records] == [ok] * 24 + [rejected] * 6
        assert admin.value() == 0
        # Parsed once each, then looked up: the OK reply and the REJECTED one.
        assert sorted(client.protocol._known.values()) == [(0, None), (1, None)]

    asyncio.run(_with_client(backend, _url(request, backend), 25, body))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refused_statement_hands_back_unrecorded(request, backend: str) -> None:
    """A CHECK constraint added between two statements makes the next one fail: nothing was
    written, so the loop hands back without recording it, and the general path gets the
    same refusal (an error, not a retry)."""
    from racebench.stores.sql_lean import ServerError

    async def body(client, loop_fn, admin: Admin) -> None:
        plan = _spec(backend, _url(request, backend), 100).scenario.workload.plan()
        step = client.step_for("atomic", plan)
        await step(0)  # prepared (PostgreSQL), one unit sold
        sink = ListSink(quota=50, on_op=lambda n: admin.forbid_below(96) if n == 3 else None)
        assert await loop_fn(sink) is False
        assert [o for o, _ in sink.records] == [int(Outcome.OK)] * 3
        assert admin.value() == 96  # 1 + 3 sold; the fourth refused, not applied
        with pytest.raises(ServerError):
            await step(1)
        admin.allow()
        sink.quota = 10  # 7 more
        assert await loop_fn(sink) is True
        assert len(sink.records) == 10 and admin.value() == 89

    asyncio.run(_with_client(backend, _url(request, backend), 100, body))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_killed_session_is_unknown_and_the_client_reconnects(request, backend: str) -> None:
    """The server ends the session between two statements: the one sent next is recorded
    unknown (the loop cannot know it was not applied), the loop reconnects and hands back,
    and runs again."""

    async def body(client, loop_fn, admin: Admin) -> None:
        plan = _spec(backend, _url(request, backend), 100).scenario.workload.plan()
        await client.step_for("atomic", plan)(0)
        session = client.session_id
        assert session is not None
        sink = ListSink(quota=50, on_op=lambda n: admin.kill(session) if n == 4 else None)
        assert await loop_fn(sink) is False
        outcomes = [o for o, _ in sink.records]
        assert outcomes == [int(Outcome.OK)] * 4 + [int(Outcome.UNKNOWN)]
        assert sink.records[-1][1]  # the unknown one says why
        # The loop reconnected before handing back, as the general path does.
        assert client.protocol is not None and client.protocol.lost is None
        assert client.session_id != session
        if backend == "postgres":  # a new session: prepared again on the general path
            await client.step_for("atomic", plan)(1)
        sink.quota = len(sink.records) + 5
        assert await loop_fn(sink) is True
        assert [o for o, _ in sink.records[-5:]] == [int(Outcome.OK)] * 5

    asyncio.run(_with_client(backend, _url(request, backend), 100, body))


def test_a_lock_wait_timeout_is_recorded_and_the_loop_goes_on(postgres_url, monkeypatch) -> None:
    """PostgreSQL's lock_timeout (55P03) while another session holds the row: the statement
    wrote nothing and is recorded LOCK_TIMEOUT, with the general path's message; the loop
    does not hand back. (MySQL's 1205 is a retried conflict, as on the general path.)"""
    import racebench.stores.postgres_lean as postgres_lean

    monkeypatch.setattr(postgres_lean, "LOCK_WAIT_S", 0.2)

    async def body(client, loop_fn, admin: Admin) -> None:
        plan = _spec("postgres", postgres_url, 100).scenario.workload.plan()
        await client.step_for("atomic", plan)(0)

        def on_op(n: int) -> None:
            if n == 3:  # hold the row: the next statement waits 200 ms, then gives up
                admin.execute("BEGIN")
                admin.execute(f"SELECT value FROM {admin.table} WHERE id = 1 FOR UPDATE")
            elif n == 4:
                admin.execute("COMMIT")

        sink = ListSink(quota=8, on_op=on_op)
        assert await loop_fn(sink) is True
        ok = int(Outcome.OK)
        assert [o for o, _ in sink.records] == [ok] * 3 + [int(Outcome.LOCK_TIMEOUT)] + [ok] * 4
        assert sink.records[3][1] == "LockWaitTimeout: 55P03"
        assert admin.value() == 100 - 1 - 7

    asyncio.run(_with_client("postgres", postgres_url, 100, body))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_sells_exactly_the_stock(request, backend: str) -> None:
    """End to end on 2 workers: 16 clients, 1,000 sales for 700 units."""
    [run] = run_scenario_data(
        {
            "name": "callbacks",
            "workload": {"type": "stock", "initial": 700},
            "store": {"backend": backend, "url": _url(request, backend)},
            "guard": {"strategy": "atomic"},
            "clients": 16,
            "workers": 2,
            "operations": 1000,
        }
    )
    assert run["operations"]["ok"] == 700 and run["operations"]["rejected"] == 300
    assert run["anomalies"] == {"lost_updates": 0, "oversold_units": 0}
    assert run["verdict"] == "safe"


# One reply of each server's hot statement, as the server sends it: PostgreSQL's
# BindComplete, CommandComplete "UPDATE 1" and ReadyForQuery; MySQL's OK packet (1 row).
REPLIES = {
    "postgres": b"2\x00\x00\x00\x04C\x00\x00\x00\x0dUPDATE 1\x00Z\x00\x00\x00\x05I",
    "mysql": b"\x07\x00\x00\x01\x00\x01\x00\x02\x00\x00\x00",
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reply_split_across_reads_is_parsed_and_not_remembered(backend: str) -> None:
    """Only bytes that were exactly one reply are remembered; a reply that came in two
    reads is framed as usual, and the next whole one is parsed, then looked up."""
    from racebench.stores.mysql_lean import MysqlProtocol
    from racebench.stores.postgres_lean import PostgresProtocol

    loop = asyncio.new_event_loop()
    try:
        protocol = {"postgres": PostgresProtocol, "mysql": MysqlProtocol}[backend](loop)
        replies: list = []
        protocol.on_reply = lambda reply, error: replies.append((reply, error))
        reply = REPLIES[backend]
        protocol.fresh = True
        protocol.data_received(reply[:6])
        protocol.data_received(reply[6:])
        assert replies == [((1, None), None)] and protocol._known == {}
        for _ in range(2):
            protocol.fresh = True
            protocol.data_received(reply)
        assert replies[1:] == [((1, None), None)] * 2
        assert protocol._known == {reply: (1, None)}
    finally:
        loop.close()
