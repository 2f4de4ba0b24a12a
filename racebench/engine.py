"""Execute runs: set up the store, run the clients, check the invariants, always tear down."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hdrh.histogram import HdrHistogram

from racebench.errors import RacebenchError
from racebench.faults import FaultNemesis, ProxyRoutes
from racebench.guards import build_operation
from racebench.history import RunHistory
from racebench.interrupts import first_interrupt_only
from racebench.locks.base import LockService
from racebench.ownership import leftover_ttl_s, new_namespace, temp_file_prefix, temp_prefix
from racebench.registry import lock_class, store_class, strategies_for
from racebench.results import build_document, default_path, write_atomically
from racebench.runner import Probe, ProgressCallback, RunnerResult, run_clients
from racebench.scenario import RunSpec, expand_env
from racebench.stores.base import ClientOptions, Store
from racebench.verdict import TrialAnalysis, analyze_trial, summarize_run

# Called once per trial with the run's label, its trial number and the expected op count.
ProgressFactory = Callable[[RunSpec, int], ProgressCallback | None]


@dataclass
class ExecutionOptions:
    history: IO[str] | None = None
    progress: ProgressFactory | None = None


@dataclass
class Execution:
    """What `execute` produced: one summary per run, and whether Ctrl-C cut it short."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    environment: dict[str, Any] = field(default_factory=dict)


def make_store(spec: RunSpec, namespace: str) -> Store:
    cls = store_class(spec.scenario.store.backend)
    url = spec.scenario.store.url
    if url is None and cls.default_url is not None:
        url = expand_env(cls.default_url, spec.source, "store.url")
    return cls(url, namespace)


def make_lock_service(spec: RunSpec, namespace: str, store: Store) -> LockService | None:
    guard = spec.scenario.guard
    if guard.strategy != "lock" or guard.lock is None:
        return None
    return lock_class(guard.lock.service)(guard.lock, namespace, store.url)


def _open_client_factory(
    spec: RunSpec, store: Store, lock_service: LockService | None, routes: ProxyRoutes
):
    s = spec.scenario
    plan = s.workload.plan()

    def open_client(client_id: int, probe: Probe):
        options = ClientOptions(
            race_window_s=s.race_window_ms / 1000,
            retries=s.guard.retries,
            backoff_s=s.guard.backoff_ms / 1000,
            max_backoff_s=s.guard.max_backoff_ms / 1000,
            client_id=client_id,
            clients=s.clients,
        )
        routes.apply(client_id, store, lock_service)
        client = store.connect(options)
        lock_client = lock_service.connect(client_id) if lock_service else None
        operation = build_operation(
            plan, s.guard.strategy, client, lock_client, s.guard.fencing, probe
        )

        def close() -> dict[str, int]:
            if lock_client is not None:
                lock_client.close()
            client.close()
            return dict(client.retry_codes)

        return operation, close

    return open_client


def run_trial(
    spec: RunSpec, trial: int, options: ExecutionOptions
) -> tuple[TrialAnalysis, HdrHistogram, dict[str, Any]]:
    """One trial of one run, from setup to teardown; returns its analysis and environment."""
    s = spec.scenario
    namespace = new_namespace()
    store = make_store(spec, namespace)
    store.expire_after_s = leftover_ttl_s(s.duration)
    lock_service = make_lock_service(spec, namespace, store)
    environment = {"store": store.check_reachable()}
    if lock_service is not None:
        environment["lock"] = lock_service.check_reachable()
    plan = s.workload.plan()
    workdir = Path(tempfile.mkdtemp(prefix=temp_prefix("run")))
    routes = ProxyRoutes(spec, store, lock_service)
    nemesis = FaultNemesis(spec, lock_service, routes) if s.faults else None
    try:
        store.setup(plan, s.clients)
        if lock_service is not None:
            lock_service.setup()
        progress = options.progress(spec, trial) if options.progress else None
        routes.start()
        result: RunnerResult = run_clients(
            _open_client_factory(spec, store, lock_service, routes),
            s.clients,
            s.operations,
            s.duration,
            workdir,
            progress,
            nemesis,
        )
        final = store.read_final(plan)
        history = RunHistory.load([(c.path, c.count, c.errors) for c in result.clients])
        if options.history is not None:
            base = {"run": spec.label, "trial": trial}
            history.write_json_lines(options.history, base, s.workload.operation_kind, result.t0_ns)
        strategy = strategies_for(s.store.backend)[s.guard.strategy]
        analysis, histogram = analyze_trial(
            spec, strategy, lock_service, final, history, result, trial
        )
        if nemesis is not None:
            analysis.faults = nemesis.report(history, result.t0_ns)
            analysis.faults_not_fired = nemesis.not_fired()
        return analysis, histogram, environment
    finally:
        routes.stop()
        try:
            store.teardown()
        finally:
            if lock_service is not None:
                lock_service.teardown()
            shutil.rmtree(workdir, ignore_errors=True)


def execute(specs: list[RunSpec], options: ExecutionOptions, execution: Execution) -> None:
    """Run every trial of every run in order, adding each finished run to `execution`.

    Stops after the trial that Ctrl-C interrupted; runs finished before then are kept.
    """
    for spec in specs:
        trials: list[TrialAnalysis] = []
        histograms: list[HdrHistogram] = []
        for trial in range(spec.scenario.trials):
            analysis, histogram, environment = run_trial(spec, trial, options)
            execution.environment.setdefault(spec.scenario.store.backend, environment)
            trials.append(analysis)
            histograms.append(histogram)
            if analysis.interrupted:
                execution.interrupted = True
                break
        execution.runs.append(summarize_run(spec, trials, histograms))
        if execution.interrupted:
            break


@dataclass
class FileOutcome:
    """One scenario file's runs and where its result document was written."""

    source: str
    runs: list[dict[str, Any]]
    result_path: Path
    interrupted: bool


def run_files(
    scenarios: list[tuple[Path, dict[str, Any], list[RunSpec]]],
    *,
    output: Path | None,
    results_dir: Path,
    history: Path | None,
    progress: ProgressFactory | None,
) -> list[FileOutcome]:
    """Run validated scenarios, writing one result document per scenario file.

    Ctrl-C (or SIGTERM) ends the current run early; its partial result is still written and
    the remaining runs are skipped; a second or third Ctrl-C cannot interrupt that saving.
    A server lost between runs stops the scenario too: the runs finished before it are
    written (marked partial) before the error is raised.
    """
    with first_interrupt_only():
        return _run_files(scenarios, output, results_dir, history, progress)


def _run_files(
    scenarios: list[tuple[Path, dict[str, Any], list[RunSpec]]],
    output: Path | None,
    results_dir: Path,
    history: Path | None,
    progress: ProgressFactory | None,
) -> list[FileOutcome]:
    outcomes: list[FileOutcome] = []
    history_out = _AtomicText(history) if history else None
    try:
        for path, raw, specs in scenarios:
            started = dt.datetime.now(dt.UTC)
            execution = Execution()
            options = ExecutionOptions(
                history=history_out.stream if history_out else None, progress=progress
            )
            failure: RacebenchError | None = None
            try:
                execute(specs, options, execution)
            except KeyboardInterrupt:
                execution.interrupted = True
            except RacebenchError as error:
                failure = error
            target = output or default_path(results_dir, specs[0].scenario.name, started)
            if failure is not None and not execution.runs:
                raise failure
            document = build_document(
                source=str(path),
                raw=raw,
                runs=execution.runs,
                started_at=started,
                partial=execution.interrupted or failure is not None,
                servers=execution.environment,
            )
            write_atomically(target, document)
            if failure is not None:
                raise failure
            outcomes.append(FileOutcome(str(path), execution.runs, target, execution.interrupted))
            if execution.interrupted:
                break
    finally:
        if history_out is not None:
            history_out.commit()
    return outcomes


class _AtomicText:
    """A text file written under a temporary name and renamed into place when done."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        fd, self.tmp = tempfile.mkstemp(prefix=temp_file_prefix(path), dir=path.parent)
        self.stream = os.fdopen(fd, "w")

    def commit(self) -> None:
        self.stream.close()
        os.replace(self.tmp, self.path)
