"""One contract every store passes, against its real server.

The unguarded strategy must show its anomaly under a race window; every strategy that claims
safety for a workload must show none, with its invariants holding; nothing is left behind.
"""

from __future__ import annotations

import re

import pytest

from racebench.plugins.registry import store_class, store_names, strategies_for
from tests.conftest import run_scenario_data
from tests.processes import ours
from tests.race import until_shown

# Every registered store, racebench's own and installed third-party ones alike; each runs
# against the test server it declares (a networked one without one fails under CI=true).
BACKENDS = store_names()

WORKLOADS = {
    "stock": {"type": "stock", "initial": 1000},
    "withdraw": {"type": "withdraw", "deposit": 50, "amount": 10},
    "likes": {"type": "likes", "initial": 0},
}
RACE_ANOMALY = {"stock": "lost_updates", "withdraw": "overdrafts", "likes": "lost_updates"}
_LOST = (
    r"c\d+#\d+ read (\d+) and wrote (\d+) over c\d+#\d+, which had also written \2 \(lost update\)"
)
ATTRIBUTED = {
    "stock": _LOST,
    "likes": _LOST,
    "withdraw": r"c\d+#\d+ (and c\d+#\d+ both checked|checked) balance \d+ .*\(write skew\).*",
}


def _scenario(store: dict, workload: str, strategy: str, **extra) -> dict:
    return {
        "name": f"contract-{store['backend']}-{workload}-{strategy}",
        "workload": WORKLOADS[workload],
        "store": store,
        "guard": {"strategy": strategy, **extra.pop("guard", {})},
        "clients": 4,
        "operations": 40,
        "race_window_ms": 5,
        **extra,
    }


def _safe_cases() -> list:
    cases = []
    for backend in BACKENDS:
        for name, spec in strategies_for(backend).items():
            for workload in WORKLOADS:
                if name in ("none", "lock") or workload not in spec.supports:
                    continue
                if workload in spec.safe_for:
                    cases.append(
                        pytest.param(backend, name, workload, id=f"{backend}-{name}-{workload}")
                    )
    return cases


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_unguarded_strategy_shows_the_race(store_for, backend: str, workload: str) -> None:
    store = store_for(backend)
    anomaly = RACE_ANOMALY[workload]

    def attempt(number: int) -> dict:
        # A wider window each time: withdraw races only while the balance is still positive,
        # so more operations would not help, but longer sections overlap more surely.
        [run] = run_scenario_data(_scenario(store, workload, "none", race_window_ms=5 * 3**number))
        return run

    run = until_shown(attempt, lambda run: run["anomalies"][anomaly] > 0)
    assert run["anomalies"][anomaly] > 0, run
    assert run["verdict"] == "ANOMALIES"
    assert not run["claims_safety"]
    # The anomaly is attributed to the operations that made it, from the values they recorded.
    example = run["anomaly_examples"][0]
    assert example["kind"] == anomaly, example
    assert re.fullmatch(ATTRIBUTED[workload], example["text"]), example["text"]
    assert len(example["ops"]) == 2 and example["ops"][0] != example["ops"][1]


@pytest.mark.parametrize(("backend", "strategy", "workload"), _safe_cases())
def test_safe_strategy_shows_no_anomaly(
    store_for, backend: str, strategy: str, workload: str
) -> None:
    store = store_for(backend)
    [run] = run_scenario_data(_scenario(store, workload, strategy))
    assert sum(run["anomalies"].values()) == 0, run["anomalies"]
    assert all(inv["holds"] for inv in run["invariants"]), run["invariants"]
    assert run["verdict"] == "safe"
    assert run["operations"]["ok"] > 0
    assert run["operations"]["errors"] == 0, run["errors_sample"]


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_file_lock_guards_the_store(store_for, backend: str, workload: str) -> None:
    store = store_for(backend)
    guard = {"lock": {"service": "file_lock"}}
    [run] = run_scenario_data(_scenario(store, workload, "lock", guard=guard))
    assert sum(run["anomalies"].values()) == 0, run["anomalies"]
    assert run["anomalies"]["mutual_exclusion_violations"] == 0
    assert run["lock"]["acquisitions"] == run["operations"]["attempted"]
    assert run["verdict"] == "safe"


@pytest.mark.parametrize("backend", BACKENDS)
def test_runs_leave_nothing_behind(store_for, backend: str, tmp_path) -> None:
    store = store_for(backend)
    if backend == "sqlite":  # a named file, which outlives the runs, instead of a temporary one
        store["url"] = str(tmp_path / "contract.db")
    probe = store_class(backend)(store.get("url"), "racebench_probe")
    for workload in WORKLOADS:
        run_scenario_data(_scenario(store, workload, "none", operations=8))
    assert not ours(probe.leftovers())
