"""Scenario files: strict validation, `${VAR}` expansion, and matrix expansion into runs."""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import itertools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from racebench.config.labels import matrix_labels, run_label
from racebench.config.yaml_loader import YamlInputError, load_yaml
from racebench.errors import ScenarioError
from racebench.faults.kind import REMOVED_KINDS
from racebench.plugins.entry_points import FAULT_GROUP, LOCK_GROUP, STORE_GROUP
from racebench.plugins.entry_points import PluginError as PluginLoadError
from racebench.util.durations import parse_duration
from racebench.util.plugin_config import FaultConfig, LockConfig, StoreConfig
from racebench.util.plugin_config import Strict as _Strict
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


# The key that picks a plug-in's model in each group's union.
_TAG_KEYS = {FAULT_GROUP: "kind", LOCK_GROUP: "service", STORE_GROUP: "backend"}
DEFAULT_BACKEND = "sqlite"  # `store:` (or its `backend`) left out


def _config_of(group: str, name: str) -> tuple[type[BaseModel], str, str | None]:
    """(config model, union member title, description) of a registered store, fault kind or
    lock service; PluginLoadError when it cannot be loaded."""
    from racebench.plugins.entry_points import fault_class, lock_class, store_class

    if group == FAULT_GROUP:
        kind = fault_class(name)
        return kind.config, f"{kind.__name__}Fault", kind.__doc__
    if group == STORE_GROUP:
        store = store_class(name)
        return store.config_model, f"{store.__name__}Config", store.description
    service = lock_class(name)
    return service.config_model, f"{service.__name__}Config", service.description


@functools.cache
def plugin_models(group: str) -> dict[str, Any]:
    """The scenario models of a group's loadable plug-ins by name: each fault kind's (its
    `kind` fixed to its name) or each lock service's (its `service` fixed).

    A plug-in that cannot be loaded is left out: a scenario that names it gets the
    plug-in's own error (see _pydantic_error), and every other scenario still validates.
    """
    from racebench.plugins.entry_points import _registered

    key = _TAG_KEYS[group]
    models = {}
    for name in _registered(group):
        try:
            model, title, doc = _config_of(group, name)
        except PluginLoadError:
            continue
        # `backend` may be left out for the default store; `kind` and `service` are required.
        default = name if group == STORE_GROUP and name == DEFAULT_BACKEND else ...
        fields: Any = {key: (Literal[name], default)}
        made = create_model(title, __base__=model, __doc__=doc, **fields)
        # Picklable by reference, as a class defined here would be: stdlib pickle finds a
        # class by its module and qualified name, and a run's spec (which holds these
        # models) is pickled for spawned workers and the tests (Dask's cloudpickle would
        # copy the class by value instead).
        made.__module__ = __name__
        made.__qualname__ = f"_{key}_{name}".replace(".", "_")
        globals()[made.__qualname__] = made
        models[name] = made
    return models


def _plugin_union(group: str, base: type[BaseModel]) -> Any:
    """The discriminated union of a group's plug-in models (see plugin_models)."""
    try:
        models = plugin_models(group)
    except PluginLoadError:
        return base  # stale metadata: validate_run reports it
    if len(models) < 2:  # a union needs two members; racebench registers more
        return base
    members = [Annotated[model, Tag(name)] for name, model in models.items()]
    key: Any = _store_tag if group == STORE_GROUP else _TAG_KEYS[group]
    return Annotated[Union[tuple(members)], Discriminator(key)]  # noqa: UP007


def _store_tag(value: Any) -> str | None:
    """The store model for a `store:` section: its `backend`, the default one when left out."""
    if isinstance(value, dict):
        backend = value.get("backend", DEFAULT_BACKEND)
    else:
        backend = getattr(value, "backend", None)
    return backend if isinstance(backend, str) else None


if TYPE_CHECKING:
    FaultEntry = FaultConfig
    LockEntry = LockConfig
    StoreEntry = StoreConfig
else:
    FaultEntry = _plugin_union(FAULT_GROUP, FaultConfig)
    LockEntry = _plugin_union(LOCK_GROUP, LockConfig)
    StoreEntry = _plugin_union(STORE_GROUP, StoreConfig)


def store_config(data: dict[str, Any]) -> StoreConfig:
    """A `store` section validated as a scenario's (its backend's own model)."""
    return TypeAdapter(StoreEntry).validate_python(data)


def fault_config(data: dict[str, Any]) -> FaultConfig:
    """One fault entry validated as a scenario's `faults` item (its kind's own model)."""
    return TypeAdapter(FaultEntry).validate_python(data)


def lock_config(data: dict[str, Any]) -> LockConfig:
    """A `guard.lock` section validated as a scenario's (its service's own model)."""
    return TypeAdapter(LockEntry).validate_python(data)


class GuardConfig(_Strict):
    """How each logical operation is guarded."""

    strategy: str = "none"
    retries: int = Field(default=100, ge=0, le=65535)  # a record keeps 16 bits of it
    backoff_ms: float = Field(default=1.0, ge=0)
    max_backoff_ms: float = Field(default=50.0, ge=0)
    lock: LockEntry | None = None
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
    store: StoreEntry = Field(default_factory=lambda: store_config({}))
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
    faults: list[FaultEntry] = []

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


def _plugin_section(loc: list[str]) -> tuple[str, str] | None:
    """(entry-point group, tag key) when `loc` runs through a plug-in's union member."""
    if len(loc) >= 3 and loc[0] == "faults":
        return FAULT_GROUP, "kind"
    if len(loc) >= 3 and loc[:2] == ["guard", "lock"]:
        return LOCK_GROUP, "service"
    if len(loc) >= 2 and loc[0] == "store":
        return STORE_GROUP, "backend"
    return None


def _owners(group: str, key: str) -> list[str]:
    """The registered fault kinds or lock services whose config has this key."""
    from racebench.plugins.entry_points import _registered

    owners = []
    for name in _registered(group):
        with contextlib.suppress(PluginLoadError):
            if key in _config_of(group, name)[0].model_fields:
                owners.append(name)
    return owners


def _known_keys_hint(loc: list[str], section: tuple[str, str] | None, owner: str) -> str:
    """What an unknown key could have been: the keys of a backend's, lock service's or fault
    kind's own section (store.path on sqlite: "known for sqlite: url, ..."), or the scenario's
    top-level keys that look like it (client: "did you mean clients?")."""
    if section is not None:
        group, tag_key = section
        depth = 2 if group == STORE_GROUP else 3  # store.<key>; guard.lock.<key>, faults.N.<key>
        if len(loc) != depth or not owner:
            return ""
        with contextlib.suppress(PluginLoadError):
            model = _config_of(group, owner)[0]
            keys = [k for k in model.model_fields if k != tag_key]
            return f" (known for {owner}: {', '.join(keys)})" if keys else ""
        return ""
    if len(loc) == 1:
        close = difflib.get_close_matches(loc[0], list(Scenario.model_fields), n=1)
        return f" (did you mean {close[0]}?)" if close else ""
    return ""


def _union_message(group: str, key: str, error_type: str, tag: Any) -> str:
    """Why a fault's kind or a lock's service picks no member of its union."""
    from racebench.plugins.entry_points import _registered

    what = {FAULT_GROUP: "fault kind", LOCK_GROUP: "lock service"}.get(group, "backend")
    known = ", ".join(_registered(group))
    if error_type == "union_tag_not_found" and group == STORE_GROUP:
        return f"expected a mapping with a string `backend` (known: {known})"
    if error_type == "union_tag_not_found":
        return f"{key} is missing (known: {known})"
    if group == FAULT_GROUP and tag in REMOVED_KINDS:
        return REMOVED_KINDS[tag]
    if tag in _registered(group):
        try:  # registered, left out of the union: the plug-in's own error says why
            _config_of(group, tag)
        except PluginLoadError as exc:
            return str(exc)
    return f"unknown {what} {tag!r} (known: {known})"


def _pydantic_error(source: str, error: ValidationError, context: str) -> ScenarioError:
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    # Discriminated unions put the tag in the path (workload.stock.initial): drop it.
    if len(loc) >= 2 and loc[0] == "workload" and loc[1] in {*BUILT_IN_WORKLOADS, "plugin"}:
        loc.pop(1)
    section = _plugin_section(loc)
    # The union member's tag follows the section's path (store.<backend>, guard.lock.<service>).
    owner = loc.pop(1 if section == (STORE_GROUP, "backend") else 2) if section else ""
    if loc == ["workload"] and isinstance(first.get("ctx", {}).get("error"), PluginError):
        loc.append("type")
    elif loc == ["workload"] and (inner := _TEMPLATE_PLACE.match(first["msg"])):
        # A template's own check names the place: operation[1].when: ... -> the field path.
        loc.append(inner.group(1))
        first = {**first, "msg": inner.group(2)}
    message = first["msg"].removeprefix("Value error, ")
    union_error = first["type"] in ("union_tag_invalid", "union_tag_not_found")
    if union_error and (loc[:1] == ["faults"] or loc in (["guard", "lock"], ["store"])):
        group = {"faults": FAULT_GROUP, "guard": LOCK_GROUP}.get(loc[0], STORE_GROUP)
        key = _TAG_KEYS[group]
        message = _union_message(group, key, first["type"], first.get("ctx", {}).get("tag"))
        loc.append(key)
    elif first["type"] == "extra_forbidden":
        if section and (owners := _owners(section[0], loc[-1])):
            message = f"{loc[-1]} is a key of {', '.join(owners)}, not of {owner}"
        else:
            message = "unknown key" + _known_keys_hint(loc, section, owner)
    elif first["type"] == "union_tag_invalid":
        tag = first.get("ctx", {}).get("tag")
        message = f"unknown workload type {tag!r} (known: {', '.join(BUILT_IN_WORKLOADS)})"
    elif first["type"] == "union_tag_not_found":
        message = f"type is missing (known: {', '.join(BUILT_IN_WORKLOADS)}, or a plug-in)"
    elif first["type"] == "missing":
        message = "required key is missing"
    return ScenarioError(source, ".".join(loc) or None, message + context)


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
