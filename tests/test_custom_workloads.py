"""Users' own workloads against the real servers: the examples race under `none` and do not
under their fixes; bad templates and broken plug-ins are one line and exit 2."""

from __future__ import annotations

import copy
import importlib
import os
import site
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import racebench
from tests.conftest import REPO, cli_in_process, run_cli
from tests.race import ATTEMPTS, until_shown

EXAMPLES = REPO / "examples"


@pytest.fixture(scope="session")
def checkout_plugin() -> str:
    """The example plug-in package, installed into this venv (pip install -e examples/plugin)."""
    try:
        import racebench_checkout  # noqa: F401
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "-e", str(EXAMPLES / "plugin")],
            check=True,
        )  # fmt: skip
        # This interpreter read its .pth files at start-up: read the new one (pip's editable
        # finder) too, or the first session after a fresh install cannot import the plug-in.
        site.addsitedir(sysconfig.get_paths()["purelib"])
        importlib.invalidate_caches()
    return "checkout"


def example(name: str, store: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    """An example scenario as a mapping, on the given store, with top-level keys changed."""
    data = yaml.safe_load((EXAMPLES / name).read_text())
    data.pop("matrix", None)
    if store is not None:
        data["store"] = store
    data.update(changes)
    return data


def race_until_seen(data: dict[str, Any]) -> racebench.RunResult:
    """Run an unguarded scenario, doubling its operations until the race shows (bounded)."""

    def attempt(number: int) -> racebench.RunResult:
        grown = {**copy.deepcopy(data), "operations": data["operations"] * 2**number}
        (run,) = racebench.run(grown).runs
        return run

    run = until_shown(attempt, lambda run: sum(run.anomalies.values()) > 0)
    assert sum(run.anomalies.values()) > 0, f"no race in {ATTEMPTS} runs"
    return run


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"])
def test_seat_booking_races_and_a_unique_index_fixes_it(backend: str, store_for) -> None:
    store = store_for(backend)
    racy = race_until_seen(example("seat-booking.yaml", store, guard={"strategy": "none"}))
    assert racy.verdict == "ANOMALIES"
    broken = racy.invariants[0]
    assert not broken.holds and "offending rows" in broken.detail
    assert racy.anomalies["seat booked twice"] > 0

    fixed = racebench.run(example("seat-booking-unique.yaml", store)).runs[0]
    assert fixed.anomalies == {"seat booked twice": 0, "acknowledged booking missing": 0}
    assert fixed.verdict == "safe"
    assert fixed.operations["errors"] == 0
    assert fixed.operations["ok"] <= 40 < fixed.operations["rejected"] + fixed.operations["ok"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"])
def test_seat_booking_under_serializable_is_safe_with_retries(backend: str, store_for) -> None:
    data = example("seat-booking.yaml", store_for(backend), guard={"strategy": "serializable"})
    run = racebench.run(data).runs[0]
    assert run.verdict == "safe", run.explain()
    assert run.operations["ok"] <= 40
    assert run.operations["errors"] == 0


def test_seat_booking_leaves_no_table_behind(postgres_url: str) -> None:
    import psycopg

    from racebench.util.ownership import new_namespace

    racebench.run(example("seat-booking.yaml", {"backend": "postgres", "url": postgres_url}))
    # Only this process's tables: other tests, or a second suite, may be booking right now.
    own = new_namespace().rsplit("_", 1)[0].replace("_", "\\_")  # racebench_p<pid>h<host>
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (own + "\\_%",)
        ).fetchall()
    assert rows == []


def test_rate_limiter_races_and_incr_with_expire_fixes_it(redis_url: str) -> None:
    store = {"backend": "redis", "url": redis_url}
    racy = race_until_seen(example("rate-limiter.yaml", store))
    assert racy.verdict == "ANOMALIES"
    assert "must satisfy :result <= 20" in racy.invariants[0].detail

    fixed = racebench.run(example("rate-limiter-incr.yaml", store)).runs[0]
    assert fixed.verdict == "safe", fixed.explain()
    assert fixed.operations["ok"] == 20


def test_a_lua_script_step_is_atomic(redis_url: str) -> None:
    data = example("rate-limiter.yaml", {"backend": "redis", "url": redis_url})
    data["workload"]["claims_safe"] = True
    data["workload"]["operation"] = [
        {
            "script": "local n = redis.call('INCR', KEYS[1]) "
            "if n <= tonumber(ARGV[1]) then redis.call('INCR', KEYS[2]) return 1 end return 0",
            "keys": ["{{key:hits}}", "{{key:allowed}}"],
            "args": [20],
            "as": "allowed",
        },
        {"command": ["PING"], "when": ":allowed == 1"},
    ]
    run = racebench.run(data).runs[0]
    assert run.verdict == "safe", run.explain()
    assert run.operations["ok"] == 20


def test_checkout_plugin_races_and_a_lock_fixes_it(checkout_plugin: str) -> None:
    racy = race_until_seen(example("plugin/checkout.yaml", guard={"strategy": "none"}))
    assert racy.workload == "checkout"
    assert racy.anomalies["oversold_units"] > 0

    locked = example(
        "plugin/checkout.yaml",
        guard={"strategy": "lock", "lock": {"service": "file_lock"}},
    )
    locked["workload"]["type"] = "racebench_checkout:Checkout"  # by import path, too
    run = racebench.run(locked).runs[0]
    assert run.verdict == "safe", run.explain()
    assert run.operations["ok"] == 50


def test_sql_template_under_a_lock_with_fencing_binds_the_token(tmp_path: Path) -> None:
    data = example("seat-booking.yaml", {"backend": "sqlite"}, operations=100)
    data["guard"] = {"strategy": "lock", "lock": {"service": "file_lock"}, "fencing": True}
    data["workload"]["setup"].append("CREATE TABLE {{table:fence}} (token INTEGER)")
    data["workload"]["setup"].append("INSERT INTO {{table:fence}} VALUES (0)")
    data["workload"]["operation"].insert(
        0,
        {
            "sql": "UPDATE {{table:fence}} SET token = :token WHERE token < :token",
            "on_no_rows": "stale",
        },
    )
    run = racebench.run(data).runs[0]
    assert run.verdict == "safe", run.explain()
    assert run.operations["stale"] == 0 and run.operations["ok"] > 0


def _cli_error(path: Path, cli: Callable[..., subprocess.CompletedProcess] = cli_in_process) -> str:
    """The one line `racebench run` refuses the scenario with (in-process unless told)."""
    result = cli("run", str(path), "-q", "--results-dir", str(path.parent / "results"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_template_binding_an_unknown_name_is_one_line(write_scenario) -> None:
    data = example("seat-booking.yaml", {"backend": "sqlite"})
    data["workload"]["operation"][1]["when"] = ":takne == 0"
    line = _cli_error(write_scenario(data))
    assert "workload.operation[1].when: :takne is not bound here" in line
    assert ":taken" in line  # the names that are bound are listed


def test_an_invariant_with_a_syntax_error_is_one_line(write_scenario) -> None:
    data = example("seat-booking.yaml", {"backend": "sqlite"})
    data["workload"]["invariants"][0]["sql"] = "SELEC seat FROM {{table:bookings}}"
    line = _cli_error(write_scenario(data))
    assert "workload.invariants[0].sql: the server refused it" in line


def test_an_expression_with_a_call_is_one_line(write_scenario) -> None:
    data = example("seat-booking.yaml", {"backend": "sqlite"})
    data["workload"]["operation"][1]["when"] = "__import__('os').getpid() > 0"
    line = _cli_error(write_scenario(data))
    assert "a function call is not allowed" in line


def test_fencing_needs_the_template_to_place_the_token(write_scenario) -> None:
    data = example("seat-booking.yaml", {"backend": "sqlite"})
    data["guard"] = {"strategy": "lock", "lock": {"service": "file_lock"}, "fencing": True}
    line = _cli_error(write_scenario(data))
    assert "guard.fencing: the template must say where the token goes" in line


def test_a_broken_plugin_is_one_line(write_scenario, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "brokenplug.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # for the console script's own Python
    line = _cli_error(write_scenario({"workload": {"type": "brokenplug:Workload"}}), run_cli)
    assert "workload.type: plug-in 'brokenplug:Workload' (import path) cannot be loaded" in line
    assert "RuntimeError: boom at import" in line


def test_an_unknown_workload_type_names_the_plugin_forms(write_scenario) -> None:
    line = _cli_error(write_scenario({"workload": {"type": "nosuch"}}))
    assert "unknown workload type 'nosuch'" in line and "module:Class" in line


def test_list_shows_plugins_and_their_package(checkout_plugin: str) -> None:
    result = cli_in_process("list")
    assert result.returncode == 0, result.stderr
    assert "racebench_checkout:Checkout" in result.stdout
    assert "racebench-checkout" in result.stdout


def test_list_names_a_broken_registered_plugin_in_one_line(tmp_path: Path) -> None:
    # An installed package is a *.dist-info on the path: this one registers a plug-in whose
    # module fails at import.
    dist = tmp_path / "brokenplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[racebench.workloads]\nbroken = brokenplug:Broken\n")
    (tmp_path / "brokenplug.py").write_text("import no_such_module_here\n")
    result = subprocess.run(
        [str(Path(sys.executable).with_name("racebench")), "list"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path), "COLUMNS": "200"},
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "racebench: plug-in 'broken' (entry point 'broken' of brokenplug) cannot be loaded: "
        "ModuleNotFoundError: No module named 'no_such_module_here'"
    ]
    assert "BROKEN" in result.stdout


def _seats(**workload: Any) -> dict[str, Any]:
    data = example("seat-booking.yaml", {"backend": "sqlite"})
    data["workload"].update(workload)
    return data


def _limiter(**workload: Any) -> dict[str, Any]:
    data = example("rate-limiter.yaml", {"backend": "redis"})
    data["workload"].update(workload)
    return data


@pytest.mark.parametrize(
    ("data", "field", "problem"),
    [
        (
            _seats(setup=["CREATE TABLE {{tabel:bookings}} (seat INT)"]),
            "workload.setup[0]",
            "unknown placeholder {{tabel:bookings}}",
        ),
        (
            _seats(params={"seat": "random_float(1, 2)"}),
            "workload.params",
            "unknown function",
        ),
        (_seats(params={"client": 3}), "workload.params", "'client' is always bound"),
        (
            _seats(operation=["INSERT INTO {{table:bookings}} VALUES (:seet, :client)"]),
            "workload.operation[0]",
            ":seet is not bound here",
        ),
        (
            _limiter(operation=[{"command": ["SET", "{{key:hits}}", "=:hist + 1"]}]),
            "workload.operation[0][2]",
            ":hist is not bound here",
        ),
        (
            _limiter(invariants=[{"name": "x", "command": ["GET", "k"], "holds": ":res > 1"}]),
            "workload.invariants[0].holds",
            ":res is not bound here",
        ),
        ({**_seats(), "store": {"backend": "redis"}}, "store.backend", "runs on: postgres"),
        (
            {**_seats(), "guard": {"strategy": "repeatable_read"}},
            "guard.strategy",
            "unknown strategy 'repeatable_read' for backend sqlite",
        ),
    ],
)
def test_template_mistakes_name_their_place(data: dict, field: str, problem: str) -> None:
    from racebench.config.scenario import expand
    from racebench.errors import ScenarioError

    with pytest.raises(ScenarioError) as caught:
        expand(data, "t.yaml")
    assert caught.value.field == field, str(caught.value)
    assert problem in caught.value.problem
