"""A verdict needs evidence: runs whose operations errored are inconclusive, never safe."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from racebench.analysis.verdict import missing_evidence
from tests.conftest import cli_in_process, run_cli


@pytest.fixture
def redis_url_without_incrby(redis_url: str):
    """A Redis URL whose ACL user may do anything but INCRBY: every `likes` atomic op errors."""
    import redis

    user = f"racebench_test_noincr_{secrets.token_hex(3)}"
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(
        user, enabled=True, nopass=True, keys=["*"], channels=["*"], commands=["+@all", "-incrby"]
    )
    host_port = redis_url.split("://", 1)[1]
    try:
        yield f"redis://{user}:unused@{host_port}"
    finally:
        admin.acl_deluser(user)
        admin.close()


def test_run_whose_every_operation_errored_is_inconclusive_not_safe(
    tmp_path: Path, write_scenario, redis_url_without_incrby: str
) -> None:
    path = write_scenario(
        {
            "name": "all-errors",
            "workload": {"type": "likes"},
            "store": {"backend": "redis", "url": redis_url_without_incrby},
            "guard": {"strategy": "atomic"},
            "clients": 2,
            "operations": 20,
        }
    )
    result = tmp_path / "r.json"
    proc = run_cli("run", str(path), "-q", "-o", str(result))
    assert proc.returncode == 1, proc.stderr
    assert "inconclusive" in proc.stdout
    assert "safe" not in proc.stdout
    assert "expectation failed" in proc.stderr and "no operation acknowledged" in proc.stderr
    [run] = json.loads(result.read_text())["runs"]
    assert run["operations"]["errors"] == 20
    assert run["verdict"] == "inconclusive" and run["passed"] is False
    assert "no permissions to run the 'incrby' command" in next(iter(run["errors_sample"]))

    markdown = cli_in_process("report", str(result))
    assert "inconclusive ✗" in markdown.stdout
    html = cli_in_process("report", "--format", "html", str(result))
    assert 'class="v-inconclusive">inconclusive' in html.stdout

    # Compared with a safe baseline of the same label, the inconclusive candidate fails.
    baseline = json.loads(result.read_text())
    baseline["runs"][0].update(verdict="safe", passed=True, expectation_failures=[])
    baseline_path = tmp_path / "base.json"
    baseline_path.write_text(json.dumps(baseline))
    compared = cli_in_process("compare", str(baseline_path), str(result))
    assert compared.returncode == 1, compared.stderr
    assert "inconclusive in the candidate: no operation acknowledged" in compared.stderr


OPS = {"attempted": 1000, "ok": 0, "rejected": 0, "stale": 0, "errors": 0, "unknown": 0}
FAILED = "operations errored or ended unknown"


@pytest.mark.parametrize(
    ("counts", "limit", "faults", "reason"),
    [
        ({"ok": 1000}, None, False, None),
        ({"ok": 990, "errors": 10}, None, False, None),  # exactly 1%: enough evidence
        ({"ok": 989, "errors": 11}, None, False, f"11 of 1000 {FAILED} (1.1%, above 1.0%)"),
        ({"ok": 989, "errors": 11}, 0.05, False, None),
        ({"ok": 500, "rejected": 500}, None, False, None),  # a sold-out answer is an answer
        (
            {"errors": 3},
            1.0,
            False,
            "no operation acknowledged (1000 attempted, 3 errored or ended unknown)",
        ),
        ({"ok": 950, "unknown": 50}, None, False, f"50 of 1000 {FAILED} (5.0%, above 1.0%)"),
        ({"ok": 950, "unknown": 50}, None, True, None),  # the faults' expected effect
        ({"ok": 950, "errors": 50}, None, True, "50 of 1000 operations errored (5.0%, above 1.0%)"),
    ],
)
def test_evidence_rule(
    counts: dict[str, int], limit: float | None, faults: bool, reason: str | None
) -> None:
    assert missing_evidence({**OPS, **counts}, limit, faults) == reason


def _change_the_counter_table(database: Path, statement: str) -> str:
    """Run `statement` (its {} the run's counter table) on the run's SQLite file from
    another connection, as a writer outside racebench would; return the table's name."""
    import sqlite3

    conn = sqlite3.connect(database, timeout=30.0, isolation_level=None)
    try:
        [(table,)] = conn.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE 'racebench%counter'"
        ).fetchall()
        conn.execute(statement.format(table))
    finally:
        conn.close()
    return str(table)


def test_a_final_state_the_history_does_not_explain_is_inconclusive_not_safe(
    tmp_path: Path,
) -> None:
    # Another writer adds to the counter mid-run: every recorded operation is fine, yet the
    # final state holds writes no operation made. No anomaly can be counted from that, and
    # "safe" would vouch for a history that does not explain what happened.

    from racebench.config.scenario import expand
    from racebench.engine.trials import Execution, ExecutionOptions, execute

    database = tmp_path / "shared.db"
    outside: list[int] = []

    def write_beside_the_clients(done: int, errors: int) -> None:
        if done and not outside:
            _change_the_counter_table(database, "UPDATE {} SET value = value + 1000 WHERE id = 1")
            outside.append(1000)

    scenario = {
        "name": "outside-writer",
        "workload": {"type": "likes"},
        "store": {"backend": "sqlite", "url": str(database)},
        "guard": {"strategy": "atomic"},
        "clients": 2,
        "duration": "1s",
    }
    execution = Execution()
    options = ExecutionOptions(progress=lambda spec, trial: write_beside_the_clients)
    execute(expand(scenario, "outside.yaml"), options, execution)
    run = execution.runs[0].model_dump()
    assert outside
    assert sum(run["anomalies"].values()) == 0
    assert run["verdict"] == "inconclusive" and run["passed"] is False
    assert run["evidence_missing"].startswith("the history does not explain the final state")
    assert "Dask" not in run["evidence_missing"]


def test_a_table_dropped_from_outside_mid_run_is_one_line_and_exit_3(tmp_path: Path) -> None:
    # Each operation after the drop fails (recorded as an error, by the blocking loop's
    # direct step); the final state cannot be read: the store's failure, not an internal one.

    import pytest

    from racebench.config.scenario import expand
    from racebench.engine.trials import Execution, ExecutionOptions, execute
    from racebench.errors import BackendUnavailable, ExitStatus

    database = tmp_path / "dropped.db"
    dropped: list[str] = []

    def drop_the_table(done: int, errors: int) -> None:
        if done and not dropped:
            dropped.append(_change_the_counter_table(database, "DROP TABLE {}"))

    scenario = {
        "name": "dropped",
        "workload": {"type": "stock", "initial": 10**9},
        "store": {"backend": "sqlite", "url": str(database)},
        "guard": {"strategy": "atomic"},
        "clients": 2,
        "duration": "1s",
    }
    options = ExecutionOptions(progress=lambda spec, trial: drop_the_table)
    with pytest.raises(BackendUnavailable) as raised:
        execute(expand(scenario, "dropped.yaml"), options, Execution())
    assert dropped
    assert raised.value.exit_status == ExitStatus.BACKEND_UNAVAILABLE
    message = str(raised.value)
    assert message.startswith("sqlite: cannot read the final state after the run: no such table")
    assert "\n" not in message
