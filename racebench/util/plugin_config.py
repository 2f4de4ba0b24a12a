"""The base models of a scenario's plug-in sections: a fault and a lock service.

Each fault kind and each lock service declares its own config model, a subclass of
`FaultConfig` or `LockConfig` in its own module; racebench.config.scenario builds the scenario's
discriminated unions (on `kind`, on `service`) from the registered ones. This module is a
leaf (it imports no other racebench module but durations), so a plug-in's module can
subclass these models without importing the scenario.
"""

from __future__ import annotations

import shlex
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from racebench.util.durations import parse_duration


class Strict(BaseModel):
    """A section of a scenario: unknown keys and loose types are errors."""

    # strict: `clients: true` or `retries: "3"` is a mistake, not a number; no inf or nan.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ServerConfig(Strict):
    """A server process on this host that server faults (kill, pause, restart) may hit.

    racebench finds the process through its pid file (a relative path is taken from the
    current directory) and checks that it listens on the URL's port before touching it.
    """

    url: str = Field(min_length=1)
    pid_file: str = Field(min_length=1)
    # How to start it again after a kill; by default the command line, directory, user and
    # environment of the process found at setup (see docs/cluster.md).
    start: list[str] | None = None

    @field_validator("start", mode="before")
    @classmethod
    def _split_command(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @field_validator("start")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty command")
        return value


class FaultConfig(Strict):
    """One fault the nemesis injects during a run: the keys every fault kind takes.

    A fault kind adds its own keys in a subclass (see racebench.faults.kind.FaultKind.config);
    `kind` is set to the kind's registered name when the scenario's union is built.
    """

    kind: str
    at: float | None = None  # seconds into the run
    when: Literal["holding", "acquiring"] | None = None
    # "any": whichever client is first seen in the `when` state (the nemesis picks the holder).
    client: int | Literal["any"] = 0
    target: Literal["store", "lock"] = "lock"

    @field_validator("at", mode="before")
    @classmethod
    def _parse_at(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_validator("client", mode="before")
    @classmethod
    def _client_number_or_any(cls, value: Any) -> Any:
        # One message instead of one per member of the union.
        is_number = isinstance(value, int) and not isinstance(value, bool)
        if value == "any" or (is_number and value >= 0):
            return value
        raise ValueError(f"expected a client number (0 or more) or any, got {value!r}")

    @model_validator(mode="after")
    def _one_trigger(self) -> FaultConfig:
        if self.at is not None and self.when is not None:
            raise ValueError("give either `at` or `when`, not both")
        if self.at is None and self.when is None:
            self.at = 0.0
        return self

    def lasts_ms(self) -> float:
        """How long the fault holds its effect (0: an instant, such as a kill)."""
        return 0.0


class TimedFaultConfig(FaultConfig):
    """A fault that lasts `duration_ms` (a pause, a partition, added latency)."""

    duration_ms: float | None = Field(
        default=None, gt=0, description="how long the fault lasts (required where it must end)"
    )

    def lasts_ms(self) -> float:
        return self.duration_ms or 0.0


class ServerFaultConfig(TimedFaultConfig):
    """A fault on the first `instances` servers of its target."""

    instances: int = Field(
        default=1, ge=1, description="how many of the target's listed servers it hits"
    )


class LockConfig(Strict):
    """The lock service that guards the read-then-write when `guard.strategy` is `lock`.

    The keys every service takes; a service with keys of its own declares a subclass as its
    `config_model` (e.g. zookeeper_lock's `session_timeout_ms`).
    """

    service: str
    url: str | None = None
    proxy: bool = False
    ttl_ms: float = Field(
        default=10_000, gt=0, description="the lease's length (services whose lock is a lease)"
    )
    acquire_timeout_ms: float = Field(default=10_000, gt=0)
    retry_delay_ms: float = Field(default=1.0, ge=0)
    # The processes behind the service, for server faults; redlock and zookeeper_lock take
    # their URLs from here when `urls`/`url` are not given.
    servers: list[ServerConfig] = []
