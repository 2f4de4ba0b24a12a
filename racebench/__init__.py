"""racebench: fire real concurrent clients at real servers and verify the invariants.

`racebench.run(scenario, clients=8)` runs a scenario from Python (see racebench.api); the
API is imported on first use, so `import racebench` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Result", "RunResult", "__version__", "run"]


def __getattr__(name: str) -> Any:
    if name in ("run", "Result", "RunResult"):
        from racebench import api

        return getattr(api, name)
    raise AttributeError(f"module 'racebench' has no attribute {name!r}")
