"""Redis' hot commands run from the protocol's reply callbacks (racebench.stores.redis_lean).

The callback loop must record every operation exactly once, with the outcome the general
path would give it, and hand the connection back (unknown outcome, reconnect, script reload)
when something goes wrong; the unguarded race, which keeps the general path, still shows.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import run_scenario_data
from tests.race import until_shown


def _scenario(url: str, workload: dict, strategy: str, **extra) -> dict:
    return {
        "name": "callbacks",
        "workload": workload,
        "store": {"backend": "redis", "url": url},
        "guard": {"strategy": strategy},
        **extra,
    }


@pytest.mark.parametrize(("strategy", "expected"), [("atomic", True), ("none", False)])
def test_only_the_hot_commands_take_the_callback_loop(redis_url, strategy, expected) -> None:
    from racebench.config.scenario import expand
    from racebench.engine.runner import Probe
    from racebench.engine.trials import ClientFactory, make_store

    [spec] = expand(_scenario(redis_url, {"type": "likes"}, strategy, clients=8), "t.yaml")
    factory = ClientFactory(spec, make_store(spec, "ns"), None, {}, clients_per_worker=8)

    async def opened() -> bool:
        client = await factory(0, Probe(*([0] * 4 for _ in range(4))))
        try:
            return client.callback_loop is not None
        finally:
            await client.close()

    assert asyncio.run(opened()) is expected


@pytest.mark.parametrize("workers", [1, 2])
def test_each_operation_is_recorded_once(redis_url: str, workers: int) -> None:
    """INCRBY's final count equals the acknowledged operations: each sent, applied and
    recorded once (past a history file's first segment of 1,024 records, which grows); the
    stock script's replies give exactly `initial` sales."""
    [likes] = run_scenario_data(
        _scenario(
            redis_url, {"type": "likes"}, "atomic", clients=4, workers=workers, operations=5001
        )
    )
    assert likes["operations"]["attempted"] == likes["operations"]["ok"] == 5001
    assert all(i["holds"] for i in likes["invariants"]), likes["invariants"]
    assert likes["verdict"] == "safe"
    [stock] = run_scenario_data(
        _scenario(
            redis_url,
            {"type": "stock", "initial": 700},
            "atomic",
            clients=12,
            workers=workers,
            operations=1000,
        )
    )
    assert stock["operations"]["ok"] == 700 and stock["operations"]["rejected"] == 300
    assert stock["anomalies"] == {"lost_updates": 0, "oversold_units": 0}


def test_the_unguarded_race_still_shows(redis_url: str) -> None:
    base = _scenario(redis_url, {"type": "likes"}, "none", clients=4, workers=1)

    def attempt(number: int) -> dict:
        [run] = run_scenario_data({**base, "race_window_ms": 1, "operations": 200 * (number + 1)})
        return run

    run = until_shown(attempt, lambda run: run["anomalies"]["lost_updates"] > 0)
    assert run["anomalies"]["lost_updates"] > 0


def test_a_reset_connection_is_unknown_and_the_loop_reconnects(redis_url: str) -> None:
    """The operation in flight when the proxy resets the connection may have been applied:
    unknown; the general path reconnects and the callbacks take over again."""
    scenario = _scenario(
        redis_url,
        {"type": "likes"},
        "atomic",
        clients=2,
        workers=1,
        duration="0.6s",
        faults=[{"kind": "reset", "target": "store", "client": 0, "at": 0.1}],
    )
    [run] = run_scenario_data({**scenario, "store": {**scenario["store"], "proxy": True}})
    ops = run["operations"]
    assert ops["unknown"] >= 1 and ops["ok"] > ops["unknown"]
    assert ops["ok"] + ops["unknown"] + ops["errors"] == ops["attempted"]
    assert run["faults"][0]["note"] == "connections reset"
    assert run["anomalies"]["lost_updates"] == 0


def test_a_flushed_script_cache_is_reloaded(private_redis_url: str) -> None:
    """NOSCRIPT (a restarted server) wrote nothing: the general path reloads and resends."""
    import redis

    redis.Redis.from_url(private_redis_url).script_flush()
    [run] = run_scenario_data(
        _scenario(
            private_redis_url,
            {"type": "stock", "initial": 300},
            "atomic",
            clients=4,
            workers=1,
            operations=400,
        )
    )
    assert run["operations"]["ok"] == 300 and run["operations"]["rejected"] == 100
    assert run["operations"]["errors"] == 0
