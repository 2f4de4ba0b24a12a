"""Stores and lock services are found through entry points, racebench's own and third-party
ones alike; an outside package (tests/plugins/racebench-mkdirlock) proves that a new lock
service is one module plus one entry-point line; a broken plug-in is one line and exit 2.

scripts/test.sh installs the outside package; under CI=true its absence fails the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from racebench.config.scenario import fault_config
from racebench.plugins.registry import (
    FAULT_GROUP,
    LOCK_GROUP,
    STORE_GROUP,
    fault_class,
    fault_names,
    lock_class,
    lock_names,
    origin,
    store_class,
    store_names,
)
from tests.conftest import REPO, run_cli, server_for_plugin
from tests.race import cli_runs_until_shown
from tests.server_fixtures import _in_ci

OUTSIDE = REPO / "tests" / "plugins" / "racebench-mkdirlock"
DRIVER_MODULES = ("psycopg", "pymysql", "redis", "kazoo")


@pytest.fixture
def outside_plugin() -> str:
    """The outside lock service's name; skipped (failed under CI=true) when not installed."""
    if "mkdir_lock" not in lock_names():
        reason = f"the outside plug-in is not installed: pip install -e {OUTSIDE}"
        if _in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return "mkdir_lock"


def test_racebench_registers_its_own_plugins_like_a_third_party() -> None:
    assert {"sqlite", "postgres", "mysql", "redis", "zookeeper"} <= set(store_names())
    assert {"file_lock", "advisory", "get_lock", "redis_lock", "redlock", "zookeeper_lock"} <= set(
        lock_names()
    )
    assert origin(STORE_GROUP, "postgres") == "racebench"
    assert store_class("postgres").backend == "postgres"
    assert lock_class("redlock").service == "redlock"
    assert {"pause_client", "kill_client", "latency", "partition", "reset"} <= set(fault_names())
    assert origin(FAULT_GROUP, "kill_server") == "racebench"


@pytest.mark.parametrize("name", store_names())
def test_every_store_declares_itself(name: str) -> None:
    cls = store_class(name)
    assert cls.backend == name and cls.description
    if cls.networked:
        assert cls.default_url and cls.url_env and cls.extra and cls.drivers and cls.ports
        assert cls.test_server, f"{name} is networked: it needs a test server"


@pytest.mark.parametrize("name", lock_names())
def test_every_lock_service_declares_itself(name: str) -> None:
    cls = lock_class(name)
    assert cls.service == name and cls.description and cls.failure_mode
    if cls.networked:
        assert cls.default_url and cls.url_env and cls.extra and cls.drivers
        assert cls.test_server, f"{name} is networked: it needs a test server"


@pytest.mark.parametrize("name", fault_names())
def test_every_fault_kind_declares_itself(name: str) -> None:
    """Each fault kind says what it breaks, takes its own keys (a model with `kind` fixed to
    its name in the scenario's union) and is suffered by at least one registered plug-in."""
    cls = fault_class(name)
    assert cls.kind == name and cls.breaks and cls.__doc__
    assert fault_config({"kind": name}).kind == name
    suffering = [n for n in lock_names() if cls.can_suffer(lock_class(n), "lock")]
    assert suffering, f"no registered lock service can suffer {name}"


class _UntestedStore:
    """What a networked plug-in that forgot its test server declares."""

    networked = True
    test_server = None


class _MisnamedStore:
    networked = True
    test_server = "no_such_fixture"


@pytest.mark.parametrize("cls", [_UntestedStore, _MisnamedStore])
def test_a_plugin_without_a_test_server_fails_under_ci(
    request: pytest.FixtureRequest, monkeypatch, cls: type
) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=cls.__qualname__):
        server_for_plugin(request, cls)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match=cls.__qualname__):
        server_for_plugin(request, cls)


def test_the_environment_variable_wins_over_the_default_url(monkeypatch) -> None:
    redis_lock = lock_class("redis_lock")
    monkeypatch.delenv("RACEBENCH_REDIS_URL", raising=False)
    assert redis_lock.configured_url() == redis_lock.default_url
    monkeypatch.setenv("RACEBENCH_REDIS_URL", "redis://elsewhere:7000/1")
    assert redis_lock.configured_url() == "redis://elsewhere:7000/1"
    assert store_class("redis").configured_url() == "redis://elsewhere:7000/1"


def test_the_outside_lock_service_comes_from_its_own_package(outside_plugin: str) -> None:
    assert origin(LOCK_GROUP, outside_plugin) == "racebench-mkdirlock"
    assert lock_class(outside_plugin).__module__ == "racebench_mkdirlock"
    proc = run_cli("list")
    assert proc.returncode == 0, proc.stderr
    assert "mkdir_lock" in proc.stdout and "racebench-mkdirlock" in proc.stdout


def test_a_cli_run_uses_the_outside_lock_service(
    outside_plugin: str, write_scenario, tmp_path: Path
) -> None:
    path = write_scenario(
        {
            "name": "outside-lock",
            "workload": {"type": "stock", "initial": 100},
            "guard": {
                "strategy": "lock",
                "lock": {"service": outside_plugin, "url": str(tmp_path)},
                "fencing": True,
            },
            "clients": 4,
            "operations": 60,
            "race_window_ms": 2,
        }
    )
    out = tmp_path / "result.json"
    proc = run_cli("run", str(path), "-q", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    [run] = json.loads(out.read_text())["runs"]
    assert run["verdict"] == "safe"
    assert run["lock"]["acquisitions"] == 60
    assert run["anomalies"]["mutual_exclusion_violations"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "scenario.yaml"]


def test_an_outside_fault_kind_is_validated_listed_and_fired(
    outside_plugin: str, write_scenario, tmp_path: Path
) -> None:
    """steal_mkdir_lock comes from the outside package's racebench.faults entry point: the
    schema takes it, its own validate refuses it elsewhere, and the nemesis fires it."""
    assert origin(FAULT_GROUP, "steal_mkdir_lock") == "racebench-mkdirlock"
    steal = {"kind": "steal_mkdir_lock", "when": "holding", "client": "any"}
    elsewhere = write_scenario(
        {
            "workload": {"type": "stock"},
            "guard": {"strategy": "lock", "lock": {"service": "file_lock"}},
            "faults": [steal],
        },
        "elsewhere.yaml",
    )
    refused = run_cli("validate", str(elsewhere))
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()
    assert "faults[0].kind: steal_mkdir_lock needs guard.lock.service: mkdir_lock" in line
    foreign = write_scenario(
        {"workload": {"type": "stock"}, "faults": [{**steal, "delay_ms": 5}]}, "foreign.yaml"
    )
    [line] = run_cli("validate", str(foreign)).stderr.strip().splitlines()
    assert "faults.0.delay_ms: delay_ms is a key of latency, not of steal_mkdir_lock" in line

    path = write_scenario(
        {
            "name": "stolen",
            "workload": {"type": "stock", "initial": 1000},
            "guard": {
                "strategy": "lock",
                "lock": {"service": outside_plugin, "url": str(tmp_path)},
            },
            "clients": 4,
            "operations": 60,
            "race_window_ms": 10,
            "faults": [steal],
        }
    )

    def each(runs: list[dict]) -> None:
        [run] = runs
        [fault] = run["faults"]
        assert fault["kind"] == "steal_mkdir_lock" and fault["note"] == "removed the lock directory"

    done, [run] = cli_runs_until_shown(
        path,
        tmp_path / "result.json",
        lambda runs: runs[0]["anomalies"]["mutual_exclusion_violations"] > 0,
        each,
    )
    # The fault declares that it breaks exclusion: the violations are expected, not UNEXPECTED.
    assert done.returncode == 0, done.stderr
    assert run["anomalies"]["mutual_exclusion_violations"] > 0
    assert run["verdict"] == "ANOMALIES"
    listed = run_cli("list")
    assert "steal_mkdir_lock" in listed.stdout and "racebench-mkdirlock" in listed.stdout


def _with_broken_plugin(tmp_path: Path) -> dict[str, str]:
    """An environment whose sys.path holds a distribution (plain dist-info metadata, as pip
    writes it) registering a store and a lock service whose module cannot be imported."""
    dist = tmp_path / "site" / "racebench_broken-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: racebench-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[racebench.stores]\nbroken_store = racebench_broken_missing:Store\n\n"
        "[racebench.locks]\nbroken_lock = racebench_broken_missing:Lock\n"
    )
    return {"PYTHONPATH": str(tmp_path / "site")}


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("racebench")
    return subprocess.run(
        [str(exe), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **env},
    )


def test_a_broken_plugin_is_one_line_naming_it_and_exit_2(write_scenario, tmp_path) -> None:
    env = _with_broken_plugin(tmp_path)
    guard = {"strategy": "lock", "lock": {"service": "broken_lock"}}
    used = write_scenario({"workload": {"type": "stock"}, "guard": guard})
    proc = _cli(["run", str(used), "-q", "-o", str(tmp_path / "r.json")], env)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "plug-in 'broken_lock'" in line and "racebench-broken" in line, line
    assert "cannot be loaded: ModuleNotFoundError" in line, line

    listed = _cli(["list"], env)
    assert listed.returncode == 2
    broken = [line for line in listed.stderr.splitlines() if "racebench-broken" in line]
    assert len(broken) == 2 and "mkdir_lock" not in listed.stderr, listed.stderr
    assert "redis_lock" in listed.stdout  # the healthy plug-ins are still listed

    # A run that does not use the broken plug-ins never loads them.
    unused = write_scenario({"workload": {"type": "stock"}, "operations": 20}, "unused.yaml")
    proc = _cli(["run", str(unused), "-q", "-o", str(tmp_path / "r2.json")], env)
    assert proc.returncode == 0, proc.stderr


def test_help_and_a_sqlite_run_import_no_server_driver(write_scenario, tmp_path) -> None:
    scenario = write_scenario({"workload": {"type": "stock"}, "operations": 20})
    probe = (
        "import sys\n"
        "from racebench.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        f"drivers = {DRIVER_MODULES!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in drivers))\n"
    )
    for args in (["--help"], ["run", str(scenario), "-q", "-o", str(tmp_path / "r.json")]):
        proc = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120
        )
        assert proc.stdout.strip().splitlines()[-1] == "[]", (args, proc.stdout, proc.stderr)
