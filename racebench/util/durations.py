"""Parse human durations such as `10s`, `500ms`, `2m` into seconds."""

from __future__ import annotations

import math
import re

# No combined forms (1m30s) and no days: scenario durations are seconds to minutes, and
# one unit per value keeps the error message simple.
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
# A bare number is seconds, as in YAML `duration: 10`.
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: str | float | int) -> float:
    """Seconds from a number (seconds) or a string with a unit: ms, s, m, h."""
    # bool is an int subclass: YAML's `duration: yes` must not become one second.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("expected a duration such as 10s or 500ms")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration (use e.g. 10s, 500ms, 2m)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    # YAML reads `.inf` and `.nan` as floats; a deadline of infinity never ends the run.
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds
