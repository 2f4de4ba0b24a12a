"""Shared fixtures: real servers (tests.server_fixtures) and helpers to run racebench."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest_plugins = ["tests.server_fixtures", "pytester"]

REPO = Path(__file__).resolve().parent.parent


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


@pytest.fixture
def write_scenario(tmp_path: Path):
    """Write a scenario mapping to a YAML file in tmp_path and return its path."""

    def write(data: dict, name: str = "scenario.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


# backend -> the server fixture that provides its URL (None: embedded, no server)
BACKEND_FIXTURES = {
    "sqlite": None,
    "postgres": "postgres_url",
    "mysql": "mysql_url",
    "redis": "redis_url",
    "zookeeper": "zookeeper_hosts",
}


def run_scenario_data(data: dict, source: str = "test.yaml") -> list[dict]:
    """Validate and execute a scenario mapping in-process; return the run summaries."""
    from racebench.engine import Execution, ExecutionOptions, execute
    from racebench.scenario import expand

    execution = Execution()
    execute(expand(data, source), ExecutionOptions(), execution)
    return execution.runs


@pytest.fixture
def store_for(request):
    """store_for(backend) -> the `store` mapping of a scenario, with the real server's URL."""

    def make(backend: str) -> dict:
        from racebench.registry import STORES

        if backend not in STORES:
            pytest.skip(f"backend {backend} is not built yet")
        fixture = BACKEND_FIXTURES[backend]
        if fixture is None:
            return {"backend": backend}
        value = request.getfixturevalue(fixture)
        return {"backend": backend, "url": value if isinstance(value, str) else value[0]}

    return make
