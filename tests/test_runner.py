"""The runner and the history files, on the embedded store."""

from __future__ import annotations

from racebench.history import RECORD
from tests.conftest import run_scenario_data
from tests.race import until_shown


def test_a_client_history_grows_past_one_segment() -> None:
    from racebench.history import _SEGMENT_RECORDS

    operations = _SEGMENT_RECORDS + 1000
    [run] = run_scenario_data(
        {
            "name": "segments",
            "workload": {"type": "likes"},
            "guard": {"strategy": "atomic"},
            "clients": 1,
            "operations": operations,
        }
    )
    assert run["operations"]["attempted"] == operations
    assert run["operations"]["ok"] == operations
    assert run["anomalies"] == {"lost_updates": 0}
    assert RECORD.size == 72


def test_duration_stops_the_run_and_counts_every_operation() -> None:
    def attempt(number: int) -> dict:
        [run] = run_scenario_data(
            {
                "name": "deadline",
                "workload": {"type": "likes"},
                "guard": {"strategy": "none"},
                "clients": 2,
                "duration": "1s",
                "race_window_ms": 1 + 2 * number,
            }
        )
        # The deadline holds on every attempt; a loaded host may take a while to stop.
        assert 0.9 <= run["duration_s"] < 5
        # Each operation is acknowledged.
        assert run["operations"]["ok"] == run["operations"]["attempted"]
        return run

    # The likes it lost are the race, counted exactly (bounded: until it shows).
    run = until_shown(attempt, lambda run: run["anomalies"]["lost_updates"] > 0)
    assert run["operations"]["attempted"] > 20
    assert run["anomalies"]["lost_updates"] > 0
