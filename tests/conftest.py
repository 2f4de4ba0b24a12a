"""Shared fixtures: real servers (tests.server_fixtures) and helpers to run racebench."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest_plugins = ["tests.server_fixtures", "pytester"]

REPO = Path(__file__).resolve().parent.parent
_SESSION_PID = os.getpid()


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops the suite like Ctrl-C: fixtures tear down and the private servers stop.

    By default SIGTERM ends Python without running finalizers or atexit hooks, which left
    the suite's private Redis and ZooKeeper servers running (e.g. after `timeout`). A process
    forked from the test process keeps the default behaviour.
    """
    if os.getpid() != _SESSION_PID:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the real `racebench` console script in a subprocess."""
    exe = Path(sys.executable).with_name("racebench")
    return subprocess.run(
        [str(exe), *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def cli_in_process(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a racebench command line in this process (racebench.cli.run_command), as
    :func:`run_cli` would in a subprocess: the same exit code, stdout and stderr, without a
    Python start-up and racebench's imports (about half a CPU-second each).

    For commands that read files and answer (validate, compare, report, schema, and input
    errors refused before anything runs). Runs, signals, kill -9 and environment variables
    go through :func:`run_cli`, the real console script.
    """
    from racebench.cli import run_command

    out, err = io.StringIO(), io.StringIO()
    previous_dir, previous_columns = Path.cwd(), os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "200"
    os.chdir(cwd or REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = run_command(list(args))
    finally:
        os.chdir(previous_dir)
        if previous_columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous_columns
    return subprocess.CompletedProcess(["racebench", *args], status, out.getvalue(), err.getvalue())


def unique_namespace(name: str) -> str:
    """A namespace no other test, and no second copy of the suite, can be using."""
    return f"racebench_{name}_{secrets.token_hex(4)}"


def named_after(namespaces: list[str], names: list[str]) -> list[str]:
    """Those of `names` (a store's or lock service's leftovers) that belong to `namespaces`."""
    return [name for name in names if any(namespace in name for namespace in namespaces)]


@pytest.fixture
def write_scenario(tmp_path: Path):
    """Write a scenario mapping to a YAML file in tmp_path and return its path."""

    def write(data: dict, name: str = "scenario.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def _no_test_server(reason: str) -> None:
    """Skip, or fail under CI=true: a registered plug-in must not pass CI untested."""
    from tests.server_fixtures import _in_ci

    if _in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def server_for_plugin(request: pytest.FixtureRequest, cls: type) -> str | list[str] | None:
    """The URL(s) of the test server a store or lock plug-in declares (`test_server`, the
    name of a fixture); None for one that needs no server (`networked = False`)."""
    fixture = cls.test_server  # type: ignore[attr-defined]
    if fixture is None:
        if not cls.networked:  # type: ignore[attr-defined]
            return None
        _no_test_server(f"{cls.__qualname__} is networked but declares no test_server fixture")
    try:
        return request.getfixturevalue(fixture)
    except pytest.FixtureLookupError:
        _no_test_server(f"{cls.__qualname__}.test_server names no fixture: {fixture!r}")
    raise AssertionError("unreachable")  # _no_test_server skips or fails


def run_scenario_data(data: dict, source: str = "test.yaml") -> list[dict]:
    """Validate and execute a scenario mapping in-process; return the run summaries as the
    result file has them (JSON mappings)."""
    from racebench.config.scenario import expand
    from racebench.engine.trials import Execution, ExecutionOptions, execute

    execution = Execution()
    execute(expand(data, source), ExecutionOptions(), execution)
    return [run.model_dump() for run in execution.runs]


@pytest.fixture
def store_for(request):
    """store_for(backend) -> the `store` mapping of a scenario, with the URL of the test
    server the store declares (registry -> `test_server`)."""

    def make(backend: str) -> dict:
        from racebench.plugins.registry import store_class

        value = server_for_plugin(request, store_class(backend))
        if value is None:
            return {"backend": backend}
        return {"backend": backend, "url": value if isinstance(value, str) else value[0]}

    return make
