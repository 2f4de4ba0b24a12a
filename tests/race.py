"""Run until the anomaly shows, bounded: the one way the suite asserts that a race happens.

A race shows with high probability, never with certainty: on a loaded two-core machine (or
with a second copy of the suite against the same servers) one short run can happen not to
interleave. A test that asserts an anomaly therefore runs again, with a larger attempt
number (callers grow the operation count or the race window with it), until the anomaly
shows or the attempts or the time budget run out; then the caller's assertion fails on the
last run, showing what it saw.

This is not a retry until green. Only "the anomaly did not show" is retried: a safety
assertion (no anomaly under a guard, fencing rejected the stale writes, a verdict) belongs
inside `attempt` or after the loop, where it fails at once on any run that breaks it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

Result = TypeVar("Result")

ATTEMPTS = 5
# A run that is still missing its anomaly after this long is not going to be helped by more.
BUDGET_S = 90.0


def until_shown(
    attempt: Callable[[int], Result],
    shown: Callable[[Result], bool],
    attempts: int = ATTEMPTS,
    budget_s: float = BUDGET_S,
) -> Result:
    """Call ``attempt(0)``, ``attempt(1)``... until ``shown(result)``; return the last result.

    Stops after `attempts` calls, or once `budget_s` seconds have passed (always at least one
    call). Exceptions from `attempt` propagate at once: they are not retried.
    """
    deadline = time.monotonic() + budget_s
    result = attempt(0)
    for number in range(1, attempts):
        if shown(result) or time.monotonic() >= deadline:
            break
        result = attempt(number)
    return result


def cli_runs_until_shown(
    scenario: Path,
    out: Path,
    shown: Callable[[list[dict]], bool],
    each: Callable[[list[dict]], None] = lambda runs: None,
) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """``racebench run scenario -o out`` until `shown(runs)`, bounded as :func:`until_shown`.

    Exit status 1 is allowed on an attempt (the scenario's own `expect` fails when its race
    did not show); the caller asserts the status of the last one. `each(runs)` holds the
    safety checks, asserted on every attempt.
    """
    from tests.conftest import run_cli

    def attempt(number: int) -> tuple[subprocess.CompletedProcess, list[dict]]:
        done = run_cli("run", str(scenario), "--output", str(out), "--quiet")
        assert done.returncode in (0, 1), done.stderr
        runs = json.loads(out.read_text())["runs"]
        each(runs)
        return done, runs

    return until_shown(attempt, lambda result: shown(result[1]))
