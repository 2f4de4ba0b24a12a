"""The Redis and ZooKeeper stores beyond the contract suite: fencing, slots, retries, errors.

The contract (tests/test_store_contract.py) already runs every strategy of both stores; these
tests drive the primitives directly to pin down the fencing rule, and the CLI for failures.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import port_for
import pytest

from racebench.history import Outcome
from racebench.plugins.registry import store_class
from racebench.stores.base import ClientOptions, StaleToken, Store, StoreClient
from racebench.workloads.counters import CounterPlan, LedgerPlan
from tests.conftest import run_cli, run_scenario_data
from tests.race import until_shown

BACKENDS = ["redis", "zookeeper"]


def _options(client_id: int) -> ClientOptions:
    return ClientOptions(
        race_window_s=0, retries=0, backoff_s=0, max_backoff_s=0, client_id=client_id, clients=2
    )


@pytest.fixture(params=BACKENDS)
def store(request, store_for) -> Iterator[Store]:
    url = store_for(request.param)["url"]
    store = store_class(request.param)(url, f"racebench_{secrets.token_hex(4)}")
    yield store
    store.teardown()
    assert not any(store.namespace in name for name in store.leftovers())


@pytest.fixture
def two_clients(store: Store) -> Iterator[tuple[StoreClient, StoreClient]]:
    a, b = store.connect(_options(0)), store.connect(_options(1))
    yield a, b
    a.close()
    b.close()


def test_fenced_counter_refuses_the_older_token_once_a_newer_one_read(
    store: Store, two_clients
) -> None:
    store.setup(CounterPlan(initial=10, delta=-1, floor=0), clients=2)
    old, new = two_clients
    assert old.read_counter(token=1) == 10
    assert new.read_counter(token=2) == 10  # registers 2: token 1 may no longer write
    with pytest.raises(StaleToken):
        old.write_counter(9, token=1)
    with pytest.raises(StaleToken):
        old.read_counter(token=1)
    new.write_counter(9, token=2)
    new.write_counter(8, token=2)  # the newest token may write again
    assert store.read_final(CounterPlan(10, -1, 0)).value == 8


def test_fenced_write_before_the_newer_read_is_accepted(store: Store, two_clients) -> None:
    store.setup(CounterPlan(initial=10, delta=-1, floor=0), clients=2)
    old, new = two_clients
    assert old.read_counter(token=1) == 10
    old.write_counter(9, token=1)
    assert new.read_counter(token=2) == 9  # the new holder sees the old holder's write
    new.write_counter(8, token=2)
    assert store.read_final(CounterPlan(10, -1, 0)).value == 8


def test_fenced_ledger_refuses_a_stale_append(store: Store, two_clients) -> None:
    plan = LedgerPlan(deposit=100, amount=10)
    store.setup(plan, clients=2)
    old, new = two_clients
    assert old.read_balance(token=5) == 100
    assert new.read_balance(token=6) == 100
    with pytest.raises(StaleToken):
        old.append_entry(-10, seq=0, token=5)
    new.append_entry(-10, seq=0, token=6)
    rows = store.read_final(plan).rows
    assert [(r.amount, r.client, r.seq) for r in rows] == [(100, -1, 0), (-10, 1, 0)]


def test_slots_are_per_client_and_summed(store: Store, two_clients) -> None:
    store.setup(CounterPlan(initial=0, delta=1, floor=None), clients=2)
    a, b = two_clients
    a.write_slot(a.read_slot() + 3)
    b.write_slot(b.read_slot() + 4)
    assert (a.read_slot(), b.read_slot()) == (3, 4)
    final = store.read_final(CounterPlan(0, 1, None))
    assert (final.value, final.slots_total) == (0, 7)


@pytest.mark.parametrize(("backend", "code"), [("redis", "watch"), ("zookeeper", "bad_version")])
def test_optimistic_retries_are_counted_by_code(store_for, backend: str, code: str) -> None:
    def attempt(number: int) -> dict:
        [run] = run_scenario_data(
            {
                "name": "contention",
                "workload": {"type": "likes"},
                "store": store_for(backend),
                "guard": {"strategy": "optimistic"},
                "clients": 4,
                "operations": 40,
                "race_window_ms": 3 * 2**number,
            }
        )
        assert run["operations"]["ok"] == 40  # safety, on every attempt
        assert run["anomalies"]["lost_updates"] == 0
        return run

    # A conflict needs the clients to collide: bounded, until they do.
    run = until_shown(attempt, lambda run: run["retries_by_code"].get(code, 0) > 0)
    assert run["retries_by_code"].get(code, 0) > 0, run["retries_by_code"]


def test_a_lost_redis_connection_is_an_unknown_outcome(store_for) -> None:
    import redis

    store = store_class("redis")(store_for("redis")["url"], "racebench_unused")
    client = store.connect(_options(0))
    try:
        assert client.classify(redis.ConnectionError("reset")) == Outcome.UNKNOWN
        assert client.classify(redis.ResponseError("WRONGTYPE")) == Outcome.ERROR
    finally:
        client.close()


@pytest.mark.parametrize(
    ("store_config", "expected"),
    [
        (
            lambda port: {"backend": "redis", "url": f"redis://:pw@127.0.0.1:{port}/0"},
            "racebench: redis store: cannot reach Redis at redis://:***@127.0.0.1:{port}/0",
        ),
        (
            lambda port: {"backend": "zookeeper", "url": f"127.0.0.1:{port}"},
            "racebench: zookeeper store: cannot reach ZooKeeper at 127.0.0.1:{port}",
        ),
    ],
    ids=BACKENDS,
)
def test_unreachable_store_exits_3_with_one_line(
    tmp_path: Path, write_scenario, store_config, expected: str
) -> None:
    port = port_for.select_random()
    path = write_scenario({"workload": {"type": "stock"}, "store": store_config(port)})
    proc = run_cli("run", str(path), "-q", "-o", str(tmp_path / "r.json"))
    assert proc.returncode == 3, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(expected.format(port=port)), line
