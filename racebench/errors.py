"""Exit codes and the user-facing error types, decided in one place."""

from __future__ import annotations

from enum import IntEnum


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
        super().__init__(where + problem)


class ResultFileError(RacebenchError):
    """A result file cannot be read or compared (wrong schema, no matching runs)."""


class BackendUnavailable(RacebenchError):
    """A server could not be reached, refused the credentials, or lacks the database."""

    exit_status = ExitStatus.BACKEND_UNAVAILABLE
