"""Exit codes and the user-facing error types, decided in one place."""

from __future__ import annotations

import re
from enum import IntEnum

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def printable(text: str) -> str:
    """`text` with control characters (a newline in a YAML key, a NUL) shown escaped, so an
    error about it stays one line and cannot move the terminal's cursor."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class ExitStatus(IntEnum):
    """Process exit codes of the racebench CLI."""

    OK = 0
    EXPECTATION_FAILED = 1
    USAGE = 2
    BACKEND_UNAVAILABLE = 3
    UNDECIDED = 4  # compare: a run's speed could not be told from noise (never "passed")
    INTERRUPTED = 130


class RacebenchError(Exception):
    """An error the user can fix; the CLI prints it as one line, without a traceback."""

    exit_status: ExitStatus = ExitStatus.USAGE


class ScenarioError(RacebenchError):
    """A scenario file is malformed, or names something that does not exist."""

    def __init__(self, source: str, field: str | None, problem: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}: {field}: " if field else f"{source}: "
        super().__init__(printable(where + problem))


class ResultFileError(RacebenchError):
    """A result file cannot be read or compared (wrong schema, no matching runs)."""


class OutputPathError(RacebenchError):
    """An output path (-o, --history, --results-dir) cannot take racebench's files."""


class BackendUnavailable(RacebenchError):
    """A server could not be reached, refused the credentials, or lacks the database."""

    exit_status = ExitStatus.BACKEND_UNAVAILABLE
