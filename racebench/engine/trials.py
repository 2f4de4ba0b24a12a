"""Execute runs: set up the store, run the clients, check the invariants, always tear down."""

from __future__ import annotations

import copy
import datetime as dt
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from hdrh.histogram import HdrHistogram

from racebench.analysis.verdict import TrialAnalysis, analyze_trial, summarize_run
from racebench.config.scenario import RunSpec, Scenario
from racebench.engine.cluster import ClusterOptions, check_transport, run_clients_on_cluster
from racebench.engine.runner import default_workers, run_clients
from racebench.engine.worker import RateSpec
from racebench.errors import BackendUnavailable, OutputPathError, RacebenchError, ScenarioError
from racebench.faults.nemesis import FaultNemesis, ProxyRoutes, signals_clients
from racebench.guards import (
    OpenedClient,
    Operation,
    build_async_operation,
    build_operation,
    open_blocking,
)
from racebench.history import RunHistory
from racebench.locks.base import LockService
from racebench.output.history_edn import EdnValue, write_jepsen_edn
from racebench.output.results import (
    build_document,
    cannot_write,
    default_path,
    new_file_mode,
    write_atomically,
)
from racebench.plugins.entry_points import fault_class
from racebench.plugins.registry import (
    drivers_of,
    is_custom,
    lock_class,
    run_strategies,
    store_class,
)
from racebench.protocol import Probe, ProgressCallback, RunnerResult
from racebench.result_model import RunEntry
from racebench.stores.base import ROW_WORKLOADS, ClientOptions, Store
from racebench.util.interrupts import first_interrupt_only
from racebench.util.ownership import leftover_ttl_s, new_namespace, temp_file_prefix, temp_prefix
from racebench.util.redact import redact_text
from racebench.workloads.counters import CounterPlan, FinalState, LedgerPlan, Plan
from racebench.workloads.custom.base import CustomClient, CustomRun
from racebench.workloads.custom.operation import build_custom_operation
from racebench.workloads.rows import RowPlan

# Called once per trial with the run's label, its trial number and the expected op count.
ProgressFactory = Callable[[RunSpec, int], ProgressCallback | None]


@dataclass
class ExecutionOptions:
    """What a session writes besides results: the history stream, progress, clusters."""

    history: IO[str] | None = None
    history_format: str = "json"  # or "jepsen": EDN events for Elle and Knossos
    progress: ProgressFactory | None = None
    clusters: ClusterOptions | None = None


@dataclass
class Execution:
    """What `execute` produced: one summary per run, and whether Ctrl-C cut it short."""

    runs: list[RunEntry] = field(default_factory=list)
    interrupted: bool = False
    environment: dict[str, Any] = field(default_factory=dict)


def _read_final(store: Store, plan: Plan | RowPlan, backend: str) -> FinalState:
    """The store's state after the run; a failure to read it is the store's, not racebench's
    (a table dropped from outside during the run, a server gone since): one line, exit 3."""
    try:
        return store.read_final(plan)
    except RacebenchError:
        raise
    except Exception as exc:
        raise BackendUnavailable(
            f"{backend}: cannot read the final state after the run: "
            f"{redact_text(str(exc))} (was the store changed from outside during the run?)"
        ) from None


def make_store(spec: RunSpec, namespace: str) -> Store:
    """The trial's store; without a URL in the scenario, the backend's configured default."""
    cls = store_class(spec.scenario.store.backend)
    url = spec.scenario.store.url
    return cls(cls.configured_url() if url is None else url, namespace)


def start_custom(spec: RunSpec, store: Store, namespace: str) -> CustomRun | None:
    """A user's own workload (template or plug-in) for this trial; None for a built-in one."""
    workload = spec.scenario.workload
    if not is_custom(workload):
        return None
    return workload.start(
        spec.scenario.store.backend, store.url, namespace, spec.source, spec.scenario.clients
    )


def make_lock_service(spec: RunSpec, namespace: str, store: Store) -> LockService | None:
    """The trial's lock service under `guard.strategy: lock`; it may default to the store's
    server (`store.url`), which is why the store comes first."""
    guard = spec.scenario.guard
    if guard.strategy != "lock" or guard.lock is None:
        return None
    return lock_class(guard.lock.service)(guard.lock, namespace, store.url)


def execution_model(
    store_cls: type[Store], strategy: str, clients_per_worker: int, url: str | None = None
) -> str:
    """`asyncio` when the store runs this strategy on the worker's loop, else `thread`."""
    on_loop = strategy in store_cls.async_strategies and store_cls.loop_supports(url)
    many = clients_per_worker >= store_cls.async_from_clients_per_worker
    return "asyncio" if on_loop and many else "thread"


def effective_workers(scenario: Scenario) -> int:
    """Worker processes for a run. A fault aimed at one client's process (a SIGSTOP, a
    SIGKILL) must hit that client alone, as a stop-the-world pause would: one process each."""
    if scenario.workers == "clients" or signals_clients(scenario):
        return scenario.clients
    return min(scenario.clients, scenario.workers or default_workers())


@dataclass
class ClientFactory:
    """Opens one logical client inside a worker; picklable, so a worker can run elsewhere."""

    spec: RunSpec
    store: Store
    lock_service: LockService | None
    proxy_urls: dict[tuple[str, int], str]
    clients_per_worker: int = 1
    custom: CustomRun | None = None  # a user's own workload (template or plug-in)

    @property
    def connect_concurrency(self) -> int | None:
        """How many clients a worker may connect at once (None: the worker's default)."""
        return type(self.store).connect_concurrency

    async def __call__(self, client_id: int, probe: Probe) -> OpenedClient:
        """Open client `client_id` in this worker: its connections and its loop body."""
        s = self.spec.scenario
        options = ClientOptions(
            race_window_s=s.race_window_ms / 1000,
            retries=s.guard.retries,
            backoff_s=s.guard.backoff_ms / 1000,
            max_backoff_s=s.guard.max_backoff_ms / 1000,
            client_id=client_id,
            clients=s.clients,
            lock_order=s.guard.lock_order,
        )
        # Copies: a proxy fault reroutes this client only, not its worker's other clients.
        # Only a rerouted client gets them: a worker opens thousands of clients.
        store, lock_service, custom = self.store, self.lock_service, self.custom
        if url := self.proxy_urls.get(("store", client_id)):
            store = copy.copy(store)
            store.url = url
            if custom is not None:
                custom = copy.copy(custom)
                custom.route_through(url)
        if lock_service is not None and (url := self.proxy_urls.get(("lock", client_id))):
            lock_service = copy.copy(lock_service)
            lock_service.route_through(url)
        if custom is not None:
            # A user's workload runs its own blocking driver: always on a thread.
            return await open_blocking(
                client_id, lambda: _open_custom(custom, s, options, lock_service, probe)
            )
        workload = s.workload
        assert not is_custom(workload)  # a custom workload was opened above
        plan = workload.plan()
        model = execution_model(type(store), s.guard.strategy, self.clients_per_worker, store.url)
        if s.workload.type in ROW_WORKLOADS:
            model = "thread"  # booking and transfer have no asyncio implementation
        if model == "asyncio":
            async_client = await store.async_connect(options)

            async def close_async() -> dict[str, int]:
                await async_client.close()
                return dict(async_client.retry_codes)

            assert isinstance(plan, CounterPlan | LedgerPlan)  # row workloads run on threads
            operation = build_async_operation(plan, s.guard.strategy, async_client)
            fast = async_client.callback_loop(s.guard.strategy, plan)
            return OpenedClient(operation, close_async, callback_loop=fast)

        # Connecting blocks (a TLS handshake, a slow server): on a thread, so the worker's
        # other clients connect meanwhile and the start barrier is not held up by one.
        def open_sync() -> tuple[Operation, Callable[[], dict[str, int]]]:
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

        return await open_blocking(client_id, open_sync)


def _open_custom(
    custom: CustomRun,
    s: Scenario,
    options: ClientOptions,
    lock_service: LockService | None,
    probe: Probe,
) -> tuple[Operation, Callable[[], dict[str, int]]]:
    """One client of a custom workload (on its thread): connection, lock client, loop body."""
    client: CustomClient = custom.connect(options)
    lock_client = lock_service.connect(options.client_id) if lock_service else None
    operation = build_custom_operation(
        client, s.guard.strategy, lock_client, s.guard.fencing, probe
    )

    def close() -> dict[str, int]:
        if lock_client is not None:
            lock_client.close()
        client.close()
        return dict(client.retry_codes)

    return operation, close


def check_connection_limit(spec: RunSpec, store: Store, lock: LockService | None) -> None:
    """Refuse a run that needs more connections than the server accepts (exit 2), before
    anything is created, instead of failing mid-start with "too many clients"."""
    limit = store.connection_limit()
    if limit is None:
        return
    setting, available = limit
    clients = spec.scenario.clients
    # A lock service on the store's server opens one more connection per client there.
    needed = clients * (2 if lock is not None and lock.server_url() == store.url else 1)
    if needed > available:
        raise ScenarioError(
            spec.source,
            "clients",
            f"{clients} clients need {needed} connections; the {spec.scenario.store.backend} "
            f"server accepts {available} more now (setting: {setting})",
        )


def _records_dir() -> str | None:
    """Shared memory when the system has it: the clients' history files are written through
    mmap, and on a disk file system the first write to each page may wait for the disk."""
    shm = Path("/dev/shm")
    # None: tempfile's default directory (macOS has no /dev/shm; a container may mount it
    # read-only).
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def cluster_address(spec: RunSpec, clusters: ClusterOptions | None) -> str | None:
    """Where this run's workers go: the --cluster address, the scenario's, or None (here).

    Refused before anything runs: proxy faults (their proxies listen on this host's
    loopback), a client fault on `client: any` with `when`, and credentials over clear
    text to another host.
    """
    s = spec.scenario
    address = (clusters.address if clusters else None) or s.cluster
    if address is None:
        return None
    if clusters is None:
        raise ScenarioError(spec.source, "cluster", "this caller runs workers locally only")
    for i, fault in enumerate(s.faults):
        kind = fault_class(fault.kind)
        if kind.uses_proxy:
            raise ScenarioError(
                spec.source,
                f"faults[{i}].kind",
                f"{fault.kind} is not supported on a cluster: its proxy listens on this "
                "host's loopback, out of the Dask workers' reach; run it locally",
            )
        if kind.signals_clients and fault.when is not None and fault.client == "any":
            # The client's own Dask worker watches it and signals it: watched on two hosts,
            # two clients could be hit.
            raise ScenarioError(
                spec.source,
                f"faults[{i}].client",
                f"{fault.kind} with `when` on a cluster needs a numbered client, not any",
            )
    # Every URL the workers will be given, the lock ensemble's (`urls`) included.
    urls = [u for u in (s.store.url, s.guard.lock.url if s.guard.lock else None) if u]
    # redlock's config alone has a list of URLs (racebench.locks.redlock.RedlockConfig).
    urls += list(getattr(s.guard.lock, "urls", None) or [])
    check_transport(address, urls, clusters.insecure, spec.source)
    return address


def _check_lock_reachable(spec: RunSpec, lock_service: LockService) -> dict[str, str]:
    """The lock service's facts; a failure names the key its URL came from, not the store."""
    try:
        return lock_service.check_reachable()
    except BackendUnavailable as error:
        lock = spec.scenario.guard.lock
        field = "store.url"
        urls = getattr(lock, "urls", None)  # redlock's own key
        if lock is not None and (lock.url or urls):
            field = "guard.lock.url" if lock.url else "guard.lock.urls"
        raise BackendUnavailable(f"{spec.source}: {field}: {error}") from None


def run_trial(
    spec: RunSpec, trial: int, options: ExecutionOptions
) -> tuple[TrialAnalysis, HdrHistogram, dict[str, Any]]:
    """One trial of one run, from setup to teardown; returns its analysis and environment."""
    s = spec.scenario
    namespace = new_namespace()
    store = make_store(spec, namespace)
    # Keys that expire on their own: a racebench killed with -9 skips teardown, and its keys
    # must not stay on a shared Redis forever.
    store.expire_after_s = leftover_ttl_s(s.duration)
    lock_service = make_lock_service(spec, namespace, store)
    # Reachability and the connection limit are checked before anything is created, so an
    # unreachable server (exit 3) or too many clients (exit 2) leaves nothing to clean up.
    environment = {"store": store.check_reachable()}
    if lock_service is not None:
        environment["lock"] = _check_lock_reachable(spec, lock_service)
    check_connection_limit(spec, store, lock_service)
    # The fault nemesis validates the faults against this store (one line, exit 2): before
    # the work directory exists, or a refused run would leave it behind.
    routes = ProxyRoutes(spec, store, lock_service)
    nemesis = FaultNemesis(spec, lock_service, routes) if s.faults else None
    custom = start_custom(spec, store, namespace)
    plan = None if is_custom(s.workload) else s.workload.plan()
    workdir = Path(tempfile.mkdtemp(prefix=temp_prefix("run"), dir=_records_dir()))
    try:
        if custom is not None:
            custom.setup()
        else:
            assert plan is not None
            store.setup(plan, s.clients)
        if lock_service is not None:
            lock_service.setup()
        progress = options.progress(spec, trial) if options.progress else None
        routes.start()
        rate = RateSpec(s.rate, s.arrival) if s.rate is not None else None
        workers = effective_workers(s)
        # Rounded up: the busiest worker decides whether the asyncio model pays off.
        per_worker = -(-s.clients // workers)
        factory = ClientFactory(spec, store, lock_service, routes.client_urls(), per_worker, custom)
        address = cluster_address(spec, options.clusters)
        result: RunnerResult
        if address is not None:
            assert options.clusters is not None
            result = run_clients_on_cluster(
                options.clusters.session(address),
                factory,
                s.clients,
                s.operations,
                s.duration,
                workdir,
                progress,
                workers=workers,
                rate=rate,
                nemesis=nemesis,
                own_processes=signals_clients(s),
            )
        else:
            result = run_clients(
                factory,
                s.clients,
                s.operations,
                s.duration,
                workdir,
                progress,
                nemesis,
                workers=workers,
                rate=rate,
            )
        # `count` is the number of complete records: a client killed mid-write leaves a torn
        # last record, which is not read.
        history = RunHistory.load([(c.path, c.count, c.errors) for c in result.clients])
        # A custom workload checks its own state; a built-in one checks the store's.
        check = custom.check(history) if custom is not None else None
        final = _read_final(store, plan, s.store.backend) if plan is not None else FinalState()
        if options.history is not None:
            base: dict[str, EdnValue] = {"run": spec.label, "trial": trial}
            kind = s.workload.operation_kind
            if options.history_format == "jepsen":
                write_jepsen_edn(history, options.history, base, kind, result.t0_ns, s.clients)
            else:
                history.write_json_lines(options.history, base, kind, result.t0_ns)
        # The strategy's claim (safe_for) is what the verdict compares the anomalies with.
        strategy = run_strategies(spec)[s.guard.strategy]
        analysis, histogram = analyze_trial(
            spec, strategy, lock_service, final, history, result, trial, check
        )
        # A fault that never fired fails the run's expectations: a run meant to be faulted
        # that was not proves nothing about the fault.
        if nemesis is not None:
            analysis.faults = nemesis.report(history, result.t0_ns)
            analysis.faults_not_fired = nemesis.not_fired()
        return analysis, histogram, environment
    finally:
        _tear_down(
            routes.stop,
            custom.teardown if custom is not None else None,
            store.teardown,
            lock_service.teardown if lock_service is not None else None,
            lambda: shutil.rmtree(workdir, ignore_errors=True),
        )


def _tear_down(*steps: Callable[[], object] | None) -> None:
    """Run every teardown step, even after one failed.

    When the trial itself failed, its error is the one to report: a teardown that fails too
    (typically on the same dead server) must not mask it. Otherwise the first teardown
    error is raised, after the other steps ran.
    """
    trial_failed = sys.exc_info()[1] is not None
    first: Exception | None = None
    for step in steps:
        if step is None:
            continue
        try:
            step()
        except Exception as error:
            first = first or error
    if first is not None and not trial_failed:
        raise first


def execute(specs: list[RunSpec], options: ExecutionOptions, execution: Execution) -> None:
    """Run every trial of every run, interleaved: run 1 trial 1, run 2 trial 1, ..., run 1
    trial 2, ..., so that a machine drifting during the session (a noisy neighbour, thermal
    throttling) spreads over all runs instead of favouring whichever went first.

    Each trial records its `sequence` (its position in this order). Stops after the trial
    that Ctrl-C interrupted, or at a lost server; runs with at least one finished trial are
    still summarized into `execution.runs`, in matrix order.
    """
    # Refuse a run that cannot go to its cluster before any starts: finding out at run 5
    # would leave a session of half the results.
    for spec in specs:
        cluster_address(spec, options.clusters)
    trials: list[list[TrialAnalysis]] = [[] for _ in specs]
    histograms: list[list[HdrHistogram]] = [[] for _ in specs]
    sequence = 0
    try:
        for round_number in range(max(spec.scenario.trials for spec in specs)):
            for i, spec in enumerate(specs):
                if round_number >= spec.scenario.trials:
                    continue
                analysis, histogram, environment = run_trial(spec, round_number, options)
                analysis.sequence = sequence
                sequence += 1
                execution.environment.setdefault(spec.scenario.store.backend, environment)
                trials[i].append(analysis)
                histograms[i].append(histogram)
                if analysis.interrupted:
                    execution.interrupted = True
                    return
    finally:
        for spec, run_trials, run_histograms in zip(specs, trials, histograms, strict=True):
            if run_trials:
                execution.runs.append(summarize_run(spec, run_trials, run_histograms))


@dataclass
class FileOutcome:
    """One scenario file's runs and where its result document was written."""

    source: str
    runs: list[RunEntry]
    result_path: Path | None  # None: the caller asked for no result file (the Python API)
    interrupted: bool


def run_files(
    scenarios: list[tuple[Path, dict[str, Any], list[RunSpec]]],
    *,
    output: Path | None,
    results_dir: Path | None,
    history: Path | None,
    progress: ProgressFactory | None,
    history_format: str = "json",
    clusters: ClusterOptions | None = None,
) -> list[FileOutcome]:
    """Run validated scenarios, writing one result document per scenario file.

    Ctrl-C (or SIGTERM) ends the current run early; its partial result is still written and
    the remaining runs are skipped; a second or third Ctrl-C cannot interrupt that saving.
    A server lost between runs stops the scenario too: the runs finished before it are
    written (marked partial) before the error is raised.
    """
    with first_interrupt_only():
        return _run_files(
            scenarios, output, results_dir, history, progress, history_format, clusters
        )


def _run_files(
    scenarios: list[tuple[Path, dict[str, Any], list[RunSpec]]],
    output: Path | None,
    results_dir: Path | None,
    history: Path | None,
    progress: ProgressFactory | None,
    history_format: str,
    clusters: ClusterOptions | None,
) -> list[FileOutcome]:
    outcomes: list[FileOutcome] = []
    history_out = _AtomicText(history) if history else None
    try:
        for path, raw, specs in scenarios:
            started = dt.datetime.now(dt.UTC)
            execution = Execution()
            options = ExecutionOptions(
                # The writers only call write(): a text stream in all but its declared type.
                history=cast(IO[str], history_out.stream) if history_out else None,
                history_format=history_format,
                progress=progress,
                clusters=clusters,
            )
            failure: RacebenchError | None = None
            try:
                execute(specs, options, execution)
            except KeyboardInterrupt:
                execution.interrupted = True
            except RacebenchError as error:
                failure = error
            target = output
            if target is None and results_dir is not None:
                target = default_path(results_dir, specs[0].scenario.name, started)
            # Nothing finished: no result file, whose emptiness would read like a finding.
            if failure is not None and not execution.runs:
                raise failure
            document = build_document(
                source=str(path),
                raw=raw,
                runs=execution.runs,
                started_at=started,
                partial=execution.interrupted or failure is not None,
                servers=execution.environment,
                drivers=drivers_of(specs),
            )
            if target is not None:
                write_atomically(target, document)
            if failure is not None:
                raise failure
            outcomes.append(FileOutcome(str(path), execution.runs, target, execution.interrupted))
            if execution.interrupted:
                break
    finally:
        # The history is committed even after a failure: the operations recorded so far are
        # what a user debugging the failure needs.
        if clusters is not None:
            clusters.close()
        if history_out is not None:
            history_out.commit()
    return outcomes


class _AtomicText:
    """A text file written under a temporary name and renamed into place when done.

    A reader (or a later run's compare) never sees half a history: the file at `path` is
    the previous one or the complete new one.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        fd, self.tmp = tempfile.mkstemp(prefix=temp_file_prefix(path), dir=path.parent)
        os.fchmod(fd, new_file_mode())
        self.stream = _FailingClearly(os.fdopen(fd, "w"), path)

    def commit(self) -> None:
        """Rename the file into place; one that could not be written whole (a full disk) is
        removed instead: half a history would pass for the run's whole story."""
        try:
            self.stream.close()
        except OutputPathError:
            Path(self.tmp).unlink(missing_ok=True)
            raise
        if self.stream.failed:
            Path(self.tmp).unlink(missing_ok=True)
            return
        os.replace(self.tmp, self.path)


class _FailingClearly(io.TextIOBase):
    """A text stream whose write failure (ENOSPC, EDQUOT, EIO) is one line naming the file,
    not an internal error; it remembers that it failed."""

    def __init__(self, stream: IO[str], path: Path) -> None:
        self._stream, self._path, self.failed = stream, path, False

    def _failure(self, exc: OSError) -> OutputPathError:
        self.failed = True
        return cannot_write(self._path, exc)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise self._failure(exc) from None

    def close(self) -> None:
        try:
            self._stream.close()
        except OSError as exc:
            raise self._failure(exc) from None
        finally:
            super().close()
