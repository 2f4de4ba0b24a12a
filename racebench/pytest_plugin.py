"""The pytest plug-in: a `racebench` fixture for a project's own test suite.

    def test_checkout_is_race_free(racebench):
        result = racebench.run("scenarios/checkout.yaml", clients=8)
        assert result.safe, result.explain()

Registered under the `pytest11` entry point, so installing racebench makes the fixture
available; it does nothing unless a test asks for it (no options, no hooks). Servers come
from the usual RACEBENCH_* variables (RACEBENCH_POSTGRES_URL, RACEBENCH_MYSQL_URL,
RACEBENCH_REDIS_URL, ...) through the scenario's defaults, as on the command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from racebench.api import Result


class RacebenchFixture:
    """`run()` resolves a relative scenario path against the test's directory if needed."""

    def __init__(self, test_dir: Path) -> None:
        self.test_dir = test_dir

    def run(self, scenario: str | Path | Mapping[str, Any], **overrides: Any) -> Result:
        """racebench.run(scenario, **overrides): a typed result, nothing printed."""
        from racebench.api import run

        if isinstance(scenario, str | Path):
            path = Path(scenario)
            if not path.is_absolute() and not path.exists():
                path = self.test_dir / path
            scenario = path
        return run(scenario, **overrides)


@pytest.fixture
def racebench(request: pytest.FixtureRequest) -> RacebenchFixture:
    """Run racebench scenarios from a test: `racebench.run(scenario, clients=8)`."""
    return RacebenchFixture(Path(request.path).parent)
