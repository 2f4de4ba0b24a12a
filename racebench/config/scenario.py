"""Scenario files: strict validation, `${VAR}` expansion, and matrix expansion into runs."""

from __future__ import annotations

import copy
import itertools
import math
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from racebench.config.labels import matrix_labels, run_label
from racebench.config.yaml_loader import YamlInputError, load_yaml
from racebench.errors import ScenarioError
from racebench.util.durations import parse_duration
from racebench.util.redact import redact_text
from racebench.workloads.counters import LikesWorkload, StockWorkload, WithdrawWorkload
from racebench.workloads.custom.plugin import PluginError, PluginWorkload
from racebench.workloads.custom.redis_template import RedisTemplateWorkload
from racebench.workloads.custom.sql_template import SqlTemplateWorkload
from racebench.workloads.rows import BookingWorkload, TransferWorkload

_TEMPLATE_PLACE = re.compile(
    r"^(?:Value error, )?([a-z_]+(?:\[\d+\])*(?:\.[a-z_]+(?:\[\d+\])*)*): (.*)$", re.S
)
# A matrix is a product: a few long lists in one file must not expand for hours.
MAX_RUNS = 10_000
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Strict(BaseModel):
    # strict: `clients: true` or `retries: "3"` is a mistake, not a number; no inf or nan.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ServerConfig(_Strict):
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


class StoreConfig(_Strict):
    """Where the data lives."""

    backend: str = "sqlite"
    # An empty string is refused, not taken for "the default": leave the key out for that
    # (an unset `${VAR}` expands to "", and silently running elsewhere would mislead).
    url: str | None = Field(default=None, min_length=1)
    proxy: bool = False  # route faulted clients through racebench's TCP proxy
    servers: list[ServerConfig] = []  # the processes behind it, for server faults


FaultKind = Literal[
    "pause_client",
    "kill_client",
    "kill_session",
    "lose_lock_state",
    "expire_early",
    "clock_skew",
    "latency",
    "partition",
    "reset",
    "server_pause",
    "kill_server",
    "pause_server",
    "restart_server",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)


class FaultConfig(_Strict):
    """One fault the nemesis injects during a run."""

    kind: FaultKind
    at: float | None = None  # seconds into the run
    when: Literal["holding", "acquiring"] | None = None
    # "any": whichever client is first seen in the `when` state (the nemesis picks the holder).
    client: int | Literal["any"] = 0
    target: Literal["store", "lock"] = "lock"
    duration_ms: float | None = Field(default=None, gt=0)
    instances: int = Field(default=1, ge=1)
    delay_ms: float = Field(default=0.0, ge=0)
    jitter_ms: float = Field(default=0.0, ge=0)
    skew_ms: float = 0.0

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


class LockConfig(_Strict):
    """The lock service that guards the read-then-write when `guard.strategy` is `lock`."""

    service: str
    url: str | None = None
    urls: list[str] | None = None
    proxy: bool = False
    ttl_ms: float = Field(default=10_000, gt=0)
    acquire_timeout_ms: float = Field(default=10_000, gt=0)
    retry_delay_ms: float = Field(default=1.0, ge=0)
    renew: bool = Field(
        default=False,
        description="redis_lock, redlock: a watchdog in the holder's process renews the lease "
        "every ttl/3 while it is held",
    )
    # zookeeper_lock: the session a holder's lock lives with (the server clamps it to 2-20
    # times its tickTime).
    session_timeout_ms: float = Field(default=10_000, gt=0)
    # The processes behind the service, for server faults; redlock and zookeeper_lock take
    # their URLs from here when `urls`/`url` are not given.
    servers: list[ServerConfig] = []


class GuardConfig(_Strict):
    """How each logical operation is guarded."""

    strategy: str = "none"
    retries: int = Field(default=100, ge=0, le=65535)  # a record keeps 16 bits of it
    backoff_ms: float = Field(default=1.0, ge=0)
    max_backoff_ms: float = Field(default=50.0, ge=0)
    lock: LockConfig | None = None
    fencing: bool = False
    # transfer under for_update: lock the two accounts by id (never deadlocks) or in the
    # transfer's own direction (opposite transfers deadlock; the victim is retried)
    lock_order: Literal["sorted", "random"] = "sorted"


class Expectation(_Strict):
    """What a run must show to pass; `auto` trusts each strategy's own safety claim."""

    anomalies: Literal["auto", "none", "present", "any"] = "auto"
    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    min_throughput_ops_s: float | None = Field(default=None, ge=0)
    max_p99_ms: float | None = Field(default=None, gt=0)
    # The verdicts a run may end with, e.g. [ANOMALIES, safe] for a matrix over fencing.
    verdict: list[Literal["safe", "ANOMALIES", "UNEXPECTED", "race not reproduced"]] | None = None


BUILT_IN_WORKLOADS = ("stock", "withdraw", "likes", "booking", "transfer", "sql", "redis")


def _workload_tag(value: Any) -> str | None:
    """The workload model for a `type`: a built-in one, or else a plug-in's import name."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if not isinstance(kind, str):
        return None
    return kind if kind in BUILT_IN_WORKLOADS else "plugin"


Workload = Annotated[
    Annotated[StockWorkload, Tag("stock")]
    | Annotated[WithdrawWorkload, Tag("withdraw")]
    | Annotated[LikesWorkload, Tag("likes")]
    | Annotated[BookingWorkload, Tag("booking")]
    | Annotated[TransferWorkload, Tag("transfer")]
    | Annotated[SqlTemplateWorkload, Tag("sql")]
    | Annotated[RedisTemplateWorkload, Tag("redis")]
    | Annotated[PluginWorkload, Tag("plugin")],
    Discriminator(_workload_tag),
]
# The two families of `Workload` (keep them in step with it): racebench's own, which the stores
# run through a plan, and a user's own (templates, plug-ins: registry.is_custom).
BuiltinWorkload = (
    StockWorkload | WithdrawWorkload | LikesWorkload | BookingWorkload | TransferWorkload
)
CustomWorkload = SqlTemplateWorkload | RedisTemplateWorkload | PluginWorkload


class Scenario(_Strict):
    """One fully resolved run configuration (a matrix cell)."""

    name: str
    description: str | None = None
    workload: Workload
    store: StoreConfig = StoreConfig()
    guard: GuardConfig = GuardConfig()
    clients: int = Field(default=4, ge=1, le=100_000)
    # Worker processes the clients are spread over; None: one per CPU; "clients": one each.
    workers: int | Literal["clients"] | None = None
    # Open loop: operations started at this rate (ops/s) whatever the server does; None:
    # closed loop (each client starts its next operation when the previous one completed).
    rate: float | None = Field(default=None, gt=0)
    arrival: Literal["constant", "poisson"] = "constant"
    # A Dask scheduler (tcp://HOST:8786, tls://...) or local:N; None: workers on this host.
    cluster: str | None = None
    operations: int | None = Field(default=None, ge=1)
    duration: float | None = Field(default=None, gt=0)
    warmup: float = Field(default=0.0, ge=0)
    race_window_ms: float = Field(default=0.0, ge=0, le=60_000)
    trials: int = Field(default=1, ge=1, le=1000)
    expect: Expectation = Expectation()
    faults: list[FaultConfig] = []

    @field_validator("duration", "warmup", mode="before")
    @classmethod
    def _parse_duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        is_number = isinstance(value, int) and not isinstance(value, bool)
        if value is None or value == "clients" or (is_number and value >= 1):
            return value
        raise ValueError(f"expected a number of processes (1 or more) or clients, got {value!r}")

    @field_validator("rate", mode="before")
    @classmethod
    def _parse_rate(cls, value: Any) -> Any:
        """`5000/s`, `300/min` or a plain number of operations per second."""
        if not isinstance(value, str):
            return value
        number, _, unit = value.strip().partition("/")
        per = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0}.get(unit.strip())
        try:
            if per is None:
                raise ValueError
            return float(number) / per
        except ValueError:
            raise ValueError(f"expected a rate such as 5000/s or 300/min, got {value!r}") from None

    @model_validator(mode="after")
    def _default_stop(self) -> Scenario:
        if self.operations is None and self.duration is None:
            self.operations = 1000
        return self


@dataclass(frozen=True)
class RunSpec:
    """One run of a scenario: a matrix cell, with the values that made it."""

    label: str
    params: dict[str, Any]
    scenario: Scenario
    source: str


def expand_env(value: Any, source: str, path: str = "") -> Any:
    """Expand `${VAR}` and `${VAR:-default}` in every string of a YAML value."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ScenarioError(source, path or None, f"environment variable {name} is not set")

        return _ENV_REF.sub(substitute, value)
    if isinstance(value, dict):
        return {
            k: expand_env(v, source, f"{path}.{k}" if path else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [expand_env(v, source, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def load_raw(path: Path) -> dict[str, Any]:
    """Read a scenario file into a dict, refusing what is not a YAML mapping."""
    source = str(path)
    try:
        data = load_yaml(path.read_bytes())
    except OSError as exc:
        raise ScenarioError(source, None, f"cannot read file: {exc.strerror}") from None
    except YamlInputError as exc:
        raise ScenarioError(source, None, str(exc)) from None
    if not isinstance(data, dict):
        raise ScenarioError(source, None, "a scenario must be a YAML mapping of keys to values")
    data.setdefault("name", path.stem)
    return data


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c`; a number indexes an existing list item (`faults.0.instances`)."""
    keys = dotted.split(".")
    node: Any = data
    for key in keys[:-1]:
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise KeyError(dotted)
            child = node[int(key)]
        else:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
        if not isinstance(child, dict | list):
            raise KeyError(dotted)
        node = child
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise KeyError(dotted)
        node[int(last)] = copy.deepcopy(value)
    else:
        node[last] = copy.deepcopy(value)


def _pydantic_error(source: str, error: ValidationError, context: str) -> ScenarioError:
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    # Discriminated unions put the tag in the path (workload.stock.initial): drop it.
    if len(loc) >= 2 and loc[0] == "workload" and loc[1] in {*BUILT_IN_WORKLOADS, "plugin"}:
        loc.pop(1)
    if loc == ["workload"] and isinstance(first.get("ctx", {}).get("error"), PluginError):
        loc.append("type")
    elif loc == ["workload"] and (inner := _TEMPLATE_PLACE.match(first["msg"])):
        # A template's own check names the place: operation[1].when: ... -> the field path.
        loc.append(inner.group(1))
        first = {**first, "msg": inner.group(2)}
    field = ".".join(loc) or None
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "union_tag_invalid":
        tag = first.get("ctx", {}).get("tag")
        message = f"unknown workload type {tag!r} (known: {', '.join(BUILT_IN_WORKLOADS)})"
    elif first["type"] == "union_tag_not_found":
        message = f"type is missing (known: {', '.join(BUILT_IN_WORKLOADS)}, or a plug-in)"
    elif first["type"] == "missing":
        message = "required key is missing"
    return ScenarioError(source, field, message + context)


def expand(
    raw: dict[str, Any], source: str, overrides: dict[str, Any] | None = None
) -> list[RunSpec]:
    """Validate a scenario and expand its matrix into runs (in the order listed).

    `overrides` (from command-line flags) win over both the file and the matrix.
    """
    from racebench.plugins.registry import validate_run

    raw = expand_env(raw, source)
    matrix = raw.pop("matrix", None) or {}
    if not isinstance(matrix, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and v for k, v in matrix.items()
    ):
        raise ScenarioError(source, "matrix", "must map key paths to non-empty lists of values")
    for key, value in (overrides or {}).items():
        matrix.pop(key, None)
        _set_path(raw, key, value)
    cells = math.prod(len(v) for v in matrix.values())
    if cells > MAX_RUNS:
        raise ScenarioError(
            source, "matrix", f"expands to {cells:,} runs, more than {MAX_RUNS:,}: split it"
        )
    runs: list[RunSpec] = []
    keys = list(matrix)
    parts = matrix_labels(matrix)
    first_with_label: dict[str, int] = {}
    for indexes in itertools.product(*(range(len(matrix[k])) for k in keys)):
        cell = copy.deepcopy(raw)
        params = {k: matrix[k][i] for k, i in zip(keys, indexes, strict=True)}
        label_parts = [(k, parts[k][i]) for k, i in zip(keys, indexes, strict=True)]
        for key, value in params.items():
            try:
                _set_path(cell, key, value)
            except KeyError:
                raise ScenarioError(source, f"matrix.{key}", "not a key path") from None
        context = (
            " (in matrix cell " + ", ".join(f"{k}={v}" for k, v in label_parts) + ")"
            if params
            else ""
        )
        try:
            scenario = Scenario.model_validate(cell)
        except ValidationError as exc:
            raise _pydantic_error(source, exc, redact_text(context)) from None
        label = run_label(scenario.name, label_parts)
        if label in first_with_label:
            raise ScenarioError(
                source,
                "matrix",
                f"runs {first_with_label[label] + 1} and {len(runs) + 1} would share the label "
                f"{label!r}: make their matrix values differ",
            )
        first_with_label[label] = len(runs)
        spec = RunSpec(label=label, params=params, scenario=scenario, source=source)
        validate_run(spec, redact_text(context))
        runs.append(spec)
    return runs


def load(path: Path, overrides: dict[str, Any] | None = None) -> list[RunSpec]:
    """Read, validate and expand one scenario file."""
    return expand(load_raw(path), str(path), overrides)
