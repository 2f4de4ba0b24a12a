"""The typed model of a result document (`racebench.result/1`), the one shape both sides use.

The engine builds a `RunEntry` per run and a `ResultDocument` per scenario file and writes it
with `model_dump`; reports, compare, JUnit and the Python API read result files back into the
same classes and use attributes, never string keys. The JSON field names are the attribute
names, so every file written since `racebench.result/1` began still reads.

Result files are data from outside (hand-edited, truncated, produced by another version),
so reading is strict: a wrong type is an error naming the field (racebench.output.results
turns it into one line and exit 2), never a traceback deep inside a plot. Fields that older
writers left out have defaults. Unknown keys are kept, so a newer writer's additions stay
readable.

A leaf module (pydantic and the standard library only): the output layer imports it without
the engine.

How to add a field: declare it, with a default, on the section class it belongs to (one
class per section: `RunEntry` for a run, `TrialEntry` for a trial, `LockFigures`, `Load`,
...), set it where the analysis fills that section (racebench.analysis.verdict.summarize_run
for a run), and read it as an attribute. An added field with a default keeps the version;
renaming, removing or changing the meaning of a field bumps SCHEMA_VERSION and adds an
upgrade to UPGRADES.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

SCHEMA_PREFIX = "racebench.result/"
SCHEMA_VERSION = 1
SCHEMA = f"{SCHEMA_PREFIX}{SCHEMA_VERSION}"

# UPGRADES[n] turns a `racebench.result/n` document (a JSON mapping) into a /n+1 one; the
# reader applies them in turn up to SCHEMA_VERSION, then the model checks the result, so an
# upgrade must not assume the old document is well formed. Version 1 is the first: none yet.
Upgrade = Callable[[dict[str, Any]], dict[str, Any]]
UPGRADES: dict[int, Upgrade] = {}


class ResultVersionError(ValueError):
    """The `schema` field names no version this racebench can read."""


def schema_version(schema: object) -> int:
    """The version number in a `schema` field, e.g. 1 for `racebench.result/1`."""
    match = None
    if isinstance(schema, str):
        match = re.fullmatch(re.escape(SCHEMA_PREFIX) + r"([1-9][0-9]{0,5})", schema)
    if match is None:
        shown = repr(schema) if len(repr(schema)) <= 40 else repr(schema)[:39] + "…"
        raise ResultVersionError(f"schema is {shown}: not a racebench result file")
    version = int(match.group(1))
    if version > SCHEMA_VERSION:
        raise ResultVersionError(
            f"schema is {schema!r}, written by a newer racebench; this racebench reads "
            f"{SCHEMA!r} and older: upgrade racebench to read it"
        )
    return version


def upgraded(document: dict[str, Any]) -> dict[str, Any]:
    """A document of any version this racebench knows, brought to SCHEMA_VERSION."""
    version = schema_version(document.get("schema"))
    for step in range(version, SCHEMA_VERSION):
        document = UPGRADES[step](document)
    return document


class Section(BaseModel):
    """A part of the result document: strict types, unknown keys kept, no NaN or infinity."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    # Fields written only when measured: None leaves the key out of the file, as writers
    # always did, so that "absent" keeps meaning "not measured" to readers of the JSON.
    absent_when_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _leave_out_unmeasured(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        for key in self.absent_when_none:
            if data.get(key, 0) is None:
                del data[key]
        return data


Number = int | float


class Latency(Section):
    """Percentiles in ms of an HDR histogram (response time, service time)."""

    p50: float = 0.0
    p90: float = 0.0
    p99: float
    max: float = 0.0
    mean: float = 0.0


class ShortLatency(Section):
    """p50, p99 and max in ms (lock acquire and hold times, event-loop lag)."""

    p50: float = 0.0
    p99: float = 0.0
    max: float = 0.0


class Operations(Section):
    """What became of the operations; totals over trials in a run entry."""

    attempted: int = 0
    ok: int = 0
    rejected: int = 0
    conflicts: int = 0
    errors: int = 0
    unknown: int = 0
    stale: int = 0
    lock_timeouts: int = 0
    retries: int = 0

    @property
    def failed(self) -> int:
        """Operations that did not end with an answer from the guard: errors, unknown
        outcomes, conflicts given up on, lock timeouts."""
        return self.errors + self.unknown + self.conflicts + self.lock_timeouts


class Spread(Section):
    """A figure over trials: its median, range and the value of each trial."""

    median: float
    min: float
    max: float
    stdev: float = 0.0
    values: list[float] = []


class Invariant(Section):
    """One invariant of a run: whether it held in every trial, and what was seen."""

    name: str
    holds: bool
    detail: str = ""


class Fairness(Section):
    """The smallest and largest share of lock grants any client got."""

    min_share: float
    max_share: float


class LockFigures(Section):
    """A lock-guarded run's lock: grants, wait and hold times, fencing, fairness."""

    acquisitions: int = 0
    acquire_ms: ShortLatency = ShortLatency()
    hold_ms: ShortLatency = ShortLatency()
    acquire_timeouts: int = 0
    stale_writes_rejected: int | None = None
    fairness: Fairness | None = None


class OpenLoop(Section):
    """An open loop's schedule: the rate asked for, operations started late or dropped."""

    rate_ops_s: float = 0.0
    late: int = 0
    dropped: int = 0


class Load(Section):
    """How hard racebench's own workers worked; a client-bound run's figures describe
    racebench, not the server."""

    workers: int | None = None
    ready_s: float | None = None
    worker_max_rss_mb: list[float] = []
    worker_cpu_share: list[float] = []
    loop_lag_ms: ShortLatency | None = None
    client_bound: bool = False
    client_bound_reason: str = ""
    open_loop: OpenLoop | None = None
    cluster: dict[str, Any] | None = None  # --cluster: workers, clock offsets, overlaps

    absent_when_none = ("cluster",)


class FaultEntry(Section):
    """A fault that fired, in ms from the run's start, with what it cost."""

    kind: str
    client: int | str
    target: str | None = None
    start_ms: float
    end_ms: float
    note: str = ""
    unavailable_ms: float | None = None  # until another client got the lock (kills)
    grants_after: int | None = None  # critical sections entered after a server fault

    absent_when_none = ("unavailable_ms", "grants_after")


class UnfiredFault(Section):
    """A fault whose trigger never came before the run ended."""

    kind: str
    client: int | str
    trigger: str = ""


# JSON has no tuples: [client, start_ms, end_ms] and [start_ms, end_ms] are short lists.
CriticalSection = Annotated[list[Number], Field(min_length=3, max_length=3)]
Interval = Annotated[list[Number], Field(min_length=2, max_length=2)]


class Timeline(Section):
    """The first critical sections per client and the intervals where two overlapped."""

    critical_sections: list[CriticalSection] = []
    violations: list[Interval] = []
    truncated: bool = False


# [start_ms, latency_ms, outcome index] of one sampled operation.
SampledOperation = Annotated[list[Number], Field(min_length=3, max_length=3)]


class HistorySample(Section):
    """A run's operation sample and completions per bucket (racebench.analysis.history_sample)."""

    outcomes: list[str]
    total_ops: int = Field(ge=0)
    ops: list[SampledOperation]
    bucket_ms: int = Field(gt=0)
    completions: dict[str, list[int]]


# [client, seq] of one operation.
OperationId = Annotated[list[int], Field(min_length=2, max_length=2)]


class AnomalyExample(Section):
    """One anomaly attributed to the operations that made it (racebench.workloads.attribution)."""

    trial: int = Field(default=0, ge=0)
    kind: str
    text: str
    ops: list[OperationId] = []
    start_ms: float | None = None
    end_ms: float | None = None
    note: str = ""  # first / worst / last, for violations checked over time


class Samples(Section):
    """A trial's within-run samples (racebench.analysis.samples): the basis of compare's
    intervals."""

    bucket_ms: int = Field(gt=0)
    throughput_ops_s: list[float] = []
    p99_ms: list[float] = []
    latency_hdr: str = ""  # HdrHistogram's compressed base64 form, in µs


class TrialEntry(Section):
    """One trial of a run."""

    trial: int = 0
    sequence: int = 0  # position in the session's interleaved run order
    duration_s: float = 0.0
    throughput_ops_s: float
    latency_ms: Latency
    operations: Operations = Operations()
    anomalies: dict[str, int] = {}
    samples: Samples | None = None
    host_load_1m: float | None = None  # the machine's 1-minute load average at its end


# What each figure over several trials is, for readers of the file.
AGGREGATION = {
    "throughput_ops_s": "median over trials (throughput_spread: min, max, values)",
    "latency_ms": "percentiles of all trials' operations together",
    "operations": "totals over trials",
    "anomalies": "totals over trials",
}


class RunEntry(Section):
    """One run (one matrix cell) over all its trials: setup, figures, anomalies, verdict.

    Written by racebench.analysis.verdict.summarize_run; only what every writer wrote is required.
    """

    label: str
    params: dict[str, Any] = {}
    workload: str
    backend: str
    strategy: str
    lock_service: str | None = None
    fencing: bool = False
    lease_renewal: bool = False
    clients: int = Field(ge=1)
    workers: int | None = None
    arrival: str = "closed loop"
    race_window_ms: float = 0.0
    # The matrix cell's resolved scenario after overrides: compare warns on any change.
    settings: dict[str, Any] | None = None
    trials_count: int | None = None
    aggregation: dict[str, str] = AGGREGATION
    interrupted: bool = False
    operations: Operations
    retries_by_code: dict[str, int] = {}
    duration_s: float = 0.0
    throughput_ops_s: float
    throughput_spread: Spread | None = None
    latency_ms: Latency
    service_time_ms: Latency | None = None  # open loop: from the actual start
    load: Load | None = None
    invariants: list[Invariant] = []
    anomalies: dict[str, int]
    claims_safety: bool = False
    lock: LockFigures | None = None
    errors_sample: dict[str, int] = {}
    faults: list[FaultEntry] = []
    faults_not_fired: list[UnfiredFault] = []
    timeline: Timeline | None = None
    history_sample: HistorySample | None = None
    # The first anomalies with the operations involved (at most MAX_EXAMPLES, over trials).
    anomaly_examples: list[AnomalyExample] = []
    trials: list[TrialEntry]
    evidence_missing: str | None = None
    verdict: str
    expectation_failures: list[str] = []
    passed: bool = True

    @property
    def strategy_label(self) -> str:
        """e.g. `lock:redis_lock+renew+fencing`: the strategy, its lock service, lease
        renewal and fencing."""
        label = self.strategy
        if self.lock_service:
            label += f":{self.lock_service}"
        if self.lease_renewal:
            label += "+renew"
        if self.fencing:
            label += "+fencing"
        return label

    def trial_values(self, metric: str) -> list[float]:
        """Per-trial values of `throughput` or `p99`, the basis of every noise judgement."""
        if metric == "throughput":
            return [t.throughput_ops_s for t in self.trials]
        return [t.latency_ms.p99 for t in self.trials]


class Host(Section):
    """The machine the scenario ran on."""

    os: str | None = None
    machine: str | None = None
    python: str | None = None
    cpu_count: int | None = None
    hostname: str | None = None


class ServerFacts(Section):
    """What a store or lock service said about itself (`check_reachable`)."""

    server: str | None = None
    version: str | None = None


class Environment(Section):
    """Driver versions and, per backend and role (store, lock), the server's facts."""

    drivers: dict[str, str] = {}
    servers: dict[str, dict[str, ServerFacts]] = {}


class ScenarioInfo(Section):
    """Where the scenario came from, its hash, and the file as read."""

    source: str | None = None
    hash: str | None = None
    resolved: dict[str, Any] = {}

    @property
    def name(self) -> str | None:
        name = self.resolved.get("name")
        return str(name) if name is not None else None


class TrialRef(Section):
    """One trial in the order the session ran them (interleaved across runs)."""

    label: str
    trial: int


class ResultDocument(Section):
    """The whole result document of one scenario file."""

    model_config = ConfigDict(populate_by_name=True)

    result_schema: str = Field(default=SCHEMA, alias="schema")
    racebench_version: str | None = None
    git_commit: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    partial: bool = False
    host: Host = Host()
    environment: Environment = Environment()
    scenario: ScenarioInfo = ScenarioInfo()
    trial_order: list[TrialRef] = []
    runs: list[RunEntry]

    def to_dict(self) -> dict[str, Any]:
        """The JSON mapping, with the file's field names (`schema`, not `result_schema`)."""
        return self.model_dump(by_alias=True)
