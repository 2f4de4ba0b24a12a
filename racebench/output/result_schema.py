"""The shape of a `racebench.result/1` document as reports and compare read it.

Result files are data from outside (hand-edited, truncated, produced by another version),
so every field the output layer touches is checked here, strictly typed, before any table
is drawn: a wrong type is one line naming the file and the field, never a traceback from
deep inside a plot. Unknown keys are kept, so newer writers stay readable.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from racebench.errors import ResultFileError


class _ReadModel(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class Latency(_ReadModel):
    p50: float = 0.0
    p90: float = 0.0
    p99: float
    max: float = 0.0
    mean: float = 0.0


class Samples(_ReadModel):
    """A trial's within-run samples (racebench.analysis.samples): the basis of compare's
    intervals."""

    bucket_ms: int = Field(gt=0)
    throughput_ops_s: list[float] = []
    p99_ms: list[float] = []
    latency_hdr: str = ""


class TrialEntry(_ReadModel):
    throughput_ops_s: float
    latency_ms: Latency
    samples: Samples | None = None
    host_load_1m: float | None = None


class FaultEntry(_ReadModel):
    kind: str
    client: int | str
    start_ms: float
    end_ms: float
    note: str = ""


# JSON has no tuples: [client, start_ms, end_ms] and [start_ms, end_ms] are short lists.
Section = Annotated[list[float], Field(min_length=3, max_length=3)]
Interval = Annotated[list[float], Field(min_length=2, max_length=2)]


class Timeline(_ReadModel):
    critical_sections: list[Section] = []
    violations: list[Interval] = []
    truncated: bool = False


# [start_ms, latency_ms, outcome index] of one sampled operation.
SampledOperation = Annotated[list[float], Field(min_length=3, max_length=3)]


class HistorySample(_ReadModel):
    """A run's operation sample and completions per bucket (racebench.analysis.history_sample)."""

    outcomes: list[str]
    total_ops: int = Field(ge=0)
    ops: list[SampledOperation]
    bucket_ms: int = Field(gt=0)
    completions: dict[str, list[int]]


# [client, seq] of one operation.
OperationId = Annotated[list[int], Field(min_length=2, max_length=2)]


class AnomalyExample(_ReadModel):
    """One anomaly attributed to the operations that made them (racebench.workloads.attribution)."""

    trial: int = Field(default=0, ge=0)
    kind: str
    text: str
    ops: list[OperationId] = []
    start_ms: float | None = None
    end_ms: float | None = None
    note: str = ""  # first / worst / last, for violations checked over time


class Load(_ReadModel):
    """How hard the workers worked; a client-bound run's figures describe racebench."""

    client_bound: bool = False
    client_bound_reason: str = ""
    open_loop: dict[str, Any] | None = None


class RunEntry(_ReadModel):
    """One run as written by `verdict.summarize_run`; only what the readers use is required."""

    label: str
    params: dict[str, Any] = {}
    workload: str
    backend: str
    strategy: str
    lock_service: str | None = None
    fencing: bool = False
    clients: int = Field(ge=1)
    race_window_ms: float = 0.0
    interrupted: bool = False
    operations: dict[str, int]
    throughput_ops_s: float
    latency_ms: Latency
    anomalies: dict[str, int]
    verdict: str
    passed: bool = True
    trials: list[TrialEntry]
    faults: list[FaultEntry] = []
    timeline: Timeline | None = None
    history_sample: HistorySample | None = None
    anomaly_examples: list[AnomalyExample] = []
    lock: dict[str, Any] | None = None
    load: Load | None = None
    service_time_ms: Latency | None = None


class Host(_ReadModel):
    cpu_count: int | None = None


class Environment(_ReadModel):
    drivers: dict[str, Any] = {}
    servers: dict[str, dict[str, Any] | None] = {}


class ScenarioInfo(_ReadModel):
    source: str | None = None
    hash: str | None = None


class ResultDocument(_ReadModel):
    """The whole document; `schema` itself is checked before this model is applied."""

    result_schema: str = Field(alias="schema")
    racebench_version: str | None = None
    git_commit: str | None = None
    started_at: str | None = None
    partial: bool = False
    host: Host = Host()
    environment: Environment = Environment()
    scenario: ScenarioInfo = ScenarioInfo()
    runs: list[RunEntry]


def _where(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "document"


def validated_document(path: object, document: dict[str, Any]) -> dict[str, Any]:
    """The document with every field the readers use checked and defaults filled in.

    Raises ResultFileError naming the first wrong field, or a run label used twice (runs are
    matched by label, so a repeated one would hide one of the runs).
    """
    try:
        model = ResultDocument.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        got = repr(first.get("input"))
        got = got if len(got) <= 40 else got[:39] + "…"
        message = first["msg"].removeprefix("Value error, ").lower()
        if first["type"] == "missing":
            raise ResultFileError(f"{path}: {_where(first['loc'])}: missing") from None
        raise ResultFileError(f"{path}: {_where(first['loc'])}: {message} (got {got})") from None
    seen: dict[str, int] = {}
    for i, run in enumerate(model.runs):
        if run.label in seen:
            raise ResultFileError(
                f"{path}: runs[{seen[run.label]}] and runs[{i}] share the label {run.label!r}: "
                "runs are matched by label, so this file cannot be reported or compared"
            )
        seen[run.label] = i
    return model.model_dump(by_alias=True)
