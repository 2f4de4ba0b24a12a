"""Clients on many hosts: a trial's workers as long-running tasks on a Dask cluster.

The unit that moves is racebench.engine.worker.run_worker: a picklable WorkerSpec in, a WorkerOutput
out. Here each worker runs as one Dask task pinned to one Dask worker (spread evenly over
them), behind the same start barrier as local workers (a `distributed.Event`), and ships its
binary records back while it runs, so that a Dask worker lost mid-run costs only what it did
in its last fraction of a second.

Clocks. Every host times its operations on its own monotonic clock. Before the clients start,
the coordinator estimates each Dask worker's offset by repeated round trips and keeps the
sample with the smallest round trip (Cristian's method): the remote reading was taken
somewhere inside that round trip, so the offset is known to within half of it. Records are
mapped onto the coordinator's timeline with that offset, and the uncertainty travels with
them: a mutual-exclusion overlap between clients of two hosts is only `certain` when it is
longer than both hosts' uncertainties together, else `possible`. Fencing checks use no clock.

Failures. Dask retries a task whose worker died; racebench must never run a client twice, so
a task refuses to start once the run has started, and the coordinator, not Dask, decides what
a lost worker means: its clients' in-flight operations become `unknown`, the run completes,
and the result names the lost worker.

Secrets. Store and lock URLs (with their passwords) travel inside the task's arguments, never
in task keys (which the dashboard and logs show). Over a plain `tcp://` address that is not
loopback they would travel in clear text, so such a run is refused unless the user says
`--insecure-cluster`; `tls://` with certificates (distributed.security.Security) is the way.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from racebench.engine.cluster_task import (
    SHIP_EVERY_S,
    TIME_FIELDS,
    TaskNames,
    arm_signal,
    clients_task,
    poll_signal,
    probe_value,
    remote_clock,
    signal_client,
    worker_task,
)
from racebench.engine.runner import plan_workers
from racebench.engine.worker import RateSpec, WorkerOutput, WorkerSpec
from racebench.errors import BackendUnavailable, ExitStatus, RacebenchError, ScenarioError
from racebench.history import RECORD_DTYPE, append_record
from racebench.protocol import (
    ClientRecord,
    Nemesis,
    OpenClient,
    Probe,
    ProgressCallback,
    RunnerResult,
)

LOCAL_PREFIX = "local:"
# The best of 15 round trips: one of them almost always runs without a scheduling hiccup on
# either side, and the estimate is only as good as the fastest round trip.
_CLOCK_SAMPLES = 15
# As the local runner's (racebench.engine.runner): connecting is not timed, stopping is.
_READY_TIMEOUT_S = 120.0
_STOP_GRACE_S = 15.0
_ARM_POLL_S = 0.02  # how often the coordinator asks whether an armed signal was sent


@dataclass(frozen=True)
class ClockOffset:
    """A Dask worker's clock minus the coordinator's, and how far off that estimate can be."""

    offset_ns: int
    uncertainty_ns: int


@dataclass
class ClusterWorker:
    """One racebench worker placed on a Dask worker: where, which clients, and its clock."""

    address: str
    clients: tuple[int, ...]
    clock: ClockOffset
    lost: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "clients": list(self.clients),
            "offset_ms": self.clock.offset_ns / 1e6,
            "uncertainty_ms": self.clock.uncertainty_ns / 1e6,
            "lost": self.lost,
        }


def _is_loopback(host: str) -> bool:
    # A name other than localhost is not resolved: a name that resolves to loopback here
    # may not on the workers' hosts, so it counts as remote.
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(address: str, urls: list[str], insecure: bool, source: str) -> None:
    """Refuse to ship credentials in clear text to a cluster that is not on this host."""
    if address.startswith(LOCAL_PREFIX) or insecure:
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme != "tcp" or _is_loopback(parts.hostname or ""):
        return
    from racebench.util.redact import redact_text

    # A URL carries a secret exactly when redacting it changes it.
    if any(redact_text(url) != url for url in urls):
        raise ScenarioError(
            source,
            "cluster",
            f"{parts.scheme}://{parts.hostname}: the store or lock URL carries a password, "
            "which would travel unencrypted over tcp://; use tls:// with certificates, or "
            "--insecure-cluster if the network is trusted",
        )


class ClusterSession:
    """A connection to a Dask cluster (or a LocalCluster it started), reused across trials."""

    def __init__(self, address: str, security: Any = None) -> None:
        try:
            import dask
            from distributed import Client, LocalCluster
        except ImportError:
            raise RacebenchError(
                "--cluster needs Dask distributed: pip install 'racebench[cluster]'"
            ) from None
        self.address = address
        self._local: Any = None
        # Dask must not re-run a task whose worker died: racebench decides what a loss means.
        dask.config.set({"distributed.scheduler.allowed-failures": 0})
        # Dask's statistical profiler walks every thread's stack 100 times a second: in a
        # worker that runs racebench's clients that is measurement overhead, not insight.
        dask.config.set({"distributed.worker.profile.enabled": False})
        try:
            if address.startswith(LOCAL_PREFIX):
                count = address[len(LOCAL_PREFIX) :]
                if not count.isdigit() or int(count) < 1:
                    raise ScenarioError("--cluster", None, f"expected local:N, got {address}")
                self._local = LocalCluster(
                    n_workers=int(count),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",  # its HTTP server always listens: any free port
                    silence_logs=50,
                )
                self.client = Client(self._local)
            else:
                self.client = Client(address, security=security, timeout="10s")
        except OSError as exc:
            raise BackendUnavailable(f"cluster {address}: cannot connect: {exc}") from None

    def worker_addresses(self) -> list[str]:
        """The Dask workers, in a stable order."""
        return sorted(self.client.scheduler_info()["workers"])

    def clock_offset(self, address: str, samples: int = _CLOCK_SAMPLES) -> ClockOffset:
        """Cristian's method: the offset from the round trip that took the least time."""
        best: tuple[int, int] | None = None
        for _ in range(samples):
            before = time.monotonic_ns()
            remote = self.client.run(remote_clock, workers=[address])[address]
            after = time.monotonic_ns()
            rtt = after - before
            if best is None or rtt < best[0]:
                best = (rtt, remote - (before + after) // 2)
        assert best is not None
        # +1: never zero, so that across hosts an overlap must have a length to be certain.
        return ClockOffset(offset_ns=best[1], uncertainty_ns=best[0] // 2 + 1)

    def run_everywhere(self, function: Any, *args: Any) -> dict[str, Any]:
        """Call `function(*args)` on every Dask worker; {address: result or the exception}."""
        results: dict[str, Any] = {}
        for address in self.worker_addresses():
            try:
                results[address] = self.client.run(function, *args, workers=[address])[address]
            except Exception as exc:  # a check that failed there is the answer
                results[address] = exc
        return results

    def close(self) -> None:
        """Disconnect; a LocalCluster started here is shut down with its processes."""
        self.client.close()
        if self._local is not None:
            self._local.close()


@dataclass
class ClusterClientSignals:
    """ClientSignals on a cluster: the Dask worker that runs a client signals its process
    (racebench.engine.cluster_task), reached through Client.run; its times are mapped onto this
    process's clock with that worker's offset."""

    session: ClusterSession
    run: str
    placed: list[ClusterWorker]

    def _worker_of(self, client: int) -> ClusterWorker:
        return next(w for w in self.placed if client in w.clients)

    def call(self, function: Any, client: int, *args: Any) -> Any:
        """`function(run, client, *args)` on the Dask worker of `client`."""
        address = self._worker_of(client).address
        return self.session.client.run(function, self.run, client, *args, workers=[address])[
            address
        ]

    def _here(self, remote_ns: int, client: int) -> int:
        """A time of the client's host on this clock (now, when the signal found no one)."""
        if not remote_ns:
            return time.monotonic_ns()
        return remote_ns - self._worker_of(client).clock.offset_ns

    def signal(self, client: int, sig: int) -> int:
        """Signal the client's process on its host; the send time on this clock."""
        try:
            return self._here(self.call(signal_client, client, sig), client)
        except Exception:
            # A lost Dask worker took the client with it: nothing is left to signal.
            if self._worker_of(client).address in self.session.worker_addresses():
                raise
            return time.monotonic_ns()

    def signal_when(
        self, clients: list[int], state: str, sig: int, stopping: threading.Event
    ) -> tuple[int, int] | None:
        # One client only (validate_cluster_faults): armed on two hosts, both could fire.
        (client,) = clients
        if not self.call(arm_signal, client, state, sig):
            return None
        while True:
            sent = self.call(poll_signal, client, stopping.is_set())
            if sent:
                return client, self._here(sent, client)
            if stopping.wait(_ARM_POLL_S):
                sent = self.call(poll_signal, client, True)  # disarmed, unless it had fired
                return (client, self._here(sent, client)) if sent else None


class _RemoteColumn:
    """One probe column of clients on Dask workers, read entry by entry on demand: the
    nemesis polls it while a `when` trigger waits. Each read is a round trip (about a
    millisecond on one host), so a state that lasts less may be missed."""

    def __init__(self, signals: ClusterClientSignals, column: str) -> None:
        self.signals, self.column = signals, column

    def __len__(self) -> int:
        return sum(len(w.clients) for w in self.signals.placed)

    def __getitem__(self, client: int) -> int:
        try:
            return int(self.signals.call(probe_value, client, self.column))
        except Exception:  # a lost Dask worker's clients do nothing any more
            return 0


def remote_probe(signals: ClusterClientSignals) -> Probe:
    """The Probe of clients on Dask workers, as the nemesis reads it."""
    columns = ("acquiring", "holding", "session", "inflight")
    return Probe(*(_RemoteColumn(signals, column) for column in columns))


@dataclass
class _Collector:
    """The coordinator's side: appends shipped records, mapped onto its clock, to the files
    the checkers read, and remembers what each client had in flight."""

    workdir: Path
    placed: list[ClusterWorker]
    # Client -> its operation count (None: until the run stops).
    quotas: dict[int, int | None] = field(default_factory=dict)
    counts: Counter[int] = field(default_factory=Counter)
    inflight: dict[int, int] = field(default_factory=dict)
    # Worker -> when its last batch arrived (coordinator's clock).
    last_batch: dict[int, int] = field(default_factory=dict)

    def take(self, item: tuple[int, dict[int, bytes], dict[int, int]]) -> None:
        worker, batch, inflight = item
        self.last_batch[worker] = time.monotonic_ns()
        offset = self.placed[worker].clock.offset_ns
        for client, raw in batch.items():
            data = np.frombuffer(raw, RECORD_DTYPE).copy()
            for name in TIME_FIELDS:
                column = data[name]
                # 0 means "no time" (no critical section entered) and must stay 0.
                column[column != 0] -= offset
            with open(self.workdir / f"client-{client}.bin", "ab") as out:
                data.tofile(out)
            self.counts[client] += len(data)
        for client in self.placed[worker].clients:
            if client in inflight:
                self.inflight[client] = inflight[client] - offset
            else:
                self.inflight.pop(client, None)

    def record_lost(self, index: int, started: int) -> None:
        """A lost worker's clients may have had an operation in flight: unknown.

        Its in-flight start as of the last batch when it was busy then; otherwise (between
        two operations, or lost before its first batch) it may have started one after
        (`started` or the last batch on): unknown from then, unless it had done its quota.
        What a client completed after its last batch is not in the history at all; a final
        state that the history then fails to explain makes the run inconclusive
        (racebench.analysis.verdict.unexplained_state).
        """
        now = time.monotonic_ns()
        since = self.last_batch.get(index, started)
        for client in self.placed[index].clients:
            start = self.inflight.pop(client, 0)
            quota = self.quotas.get(client)
            if not start and quota is not None and self.counts[client] >= quota:
                continue
            path = self.workdir / f"client-{client}.bin"
            append_record(path, self.counts[client], start or since, now)
            self.counts[client] += 1


def run_clients_on_cluster(
    session: ClusterSession,
    open_client: OpenClient,
    clients: int,
    operations: int | None,
    duration_s: float | None,
    workdir: Path,
    progress: ProgressCallback | None = None,
    workers: int = 1,
    rate: RateSpec | None = None,
    nemesis: Nemesis | None = None,
    own_processes: bool = False,
) -> RunnerResult:
    """Run the clients as `workers` racebench workers spread over the cluster's Dask workers.

    Same contract as racebench.engine.runner.run_clients; the result also says where each worker
    ran, its clock offset and uncertainty, and which were lost. With `own_processes`, each
    racebench worker runs in a process of its own on its Dask worker, which the nemesis can
    stop or kill (client faults) without touching the Dask worker.
    """
    addresses = session.worker_addresses()
    if not addresses:
        raise BackendUnavailable(f"cluster {session.address}: no Dask worker is connected")
    specs = plan_workers(open_client, clients, workers, operations, workdir, rate)
    placed = [
        ClusterWorker(addresses[i % len(addresses)], spec.clients, ClockOffset(0, 0))
        for i, spec in enumerate(specs)
    ]
    offsets = {a: session.clock_offset(a) for a in {p.address for p in placed}}
    for worker in placed:
        worker.clock = offsets[worker.address]
    names = TaskNames(secrets.token_hex(6))
    names.variable("duration").set(int(duration_s * 1e9) if duration_s else 0)
    # A file per client even if its worker ships nothing (lost before its first batch): the
    # history is read one file per client.
    for i in range(clients):
        (workdir / f"client-{i}.bin").touch()
    futures = _submit(session, names, specs, placed, clients, own_processes)
    quotas = {c: q for spec in specs for c, q in zip(spec.clients, spec.quotas, strict=True)}
    collector = _Collector(workdir, placed, quotas)
    interrupted = False
    t0 = time.monotonic_ns()
    try:
        _wait_ready(names, futures, len(specs))
        t0 = time.monotonic_ns()
        names.event("go").set()
        if nemesis is not None:
            signals = ClusterClientSignals(session, names.run, placed)
            nemesis.start(signals, remote_probe(signals), t0)
        _follow(session, names, futures, placed, collector, progress, duration_s)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        try:
            if nemesis is not None:
                nemesis.stop()  # first: no client stays stopped
        finally:
            names.event("stop").set()
            outputs = _finish(session, names, futures, placed, collector, t0)
    retry_codes: Counter[str] = Counter()
    errors: dict[int, list[str]] = {}
    for output in outputs:
        retry_codes.update(output.retry_codes)
        errors.update(output.errors)
    records = [
        ClientRecord(workdir / f"client-{i}.bin", collector.counts[i], errors.get(i, []))
        for i in range(clients)
    ]
    result = RunnerResult(t0, records, interrupted, retry_codes, len(specs), outputs)
    result.cluster = {
        "address": session.address,
        "workers": [w.as_dict() for w in placed],
    }
    return result


def _submit(
    session: ClusterSession,
    names: TaskNames,
    specs: list[WorkerSpec],
    placed: list[ClusterWorker],
    clients: int,
    own_processes: bool,
) -> list[Any]:
    """Submit the tasks; the future of each placed worker (one task may run several)."""
    options: dict[str, Any] = {"allow_other_workers": False, "retries": 0, "pure": False}
    # Task keys name the run and worker only: they show on the dashboard.
    if not own_processes:
        return [
            session.client.submit(
                worker_task,
                spec,
                names.run,
                clients,
                key=f"racebench-{names.run}-worker-{spec.worker}",
                workers=[worker.address],
                **options,
            )
            for spec, worker in zip(specs, placed, strict=True)
        ]
    # One task per Dask worker forks all the processes placed there: a Dask worker with one
    # thread could not run one task per client side by side.
    hosted: dict[str, list[WorkerSpec]] = {}
    for spec, worker in zip(specs, placed, strict=True):
        hosted.setdefault(worker.address, []).append(spec)
    by_address = {
        address: session.client.submit(
            clients_task,
            group,
            names.run,
            clients,
            key=f"racebench-{names.run}-host-{number}",
            workers=[address],
            **options,
        )
        for number, (address, group) in enumerate(hosted.items())
    }
    return [by_address[worker.address] for worker in placed]


def _wait_ready(names: TaskNames, futures: list[Any], count: int) -> None:
    """Wait until every worker reported its clients connected; raise the first failure."""
    ready_queue = names.queue("ready")
    deadline = time.monotonic() + _READY_TIMEOUT_S
    ready: set[int] = set()
    while len(ready) < count:
        if time.monotonic() > deadline:
            raise BackendUnavailable(f"clients did not connect within {_READY_TIMEOUT_S:.0f}s")
        try:
            state, worker, message, status = ready_queue.get(timeout=0.5)
        except TimeoutError:
            # Nothing reported: a task that died before it could report shows only here.
            for future in futures:
                if future.status == "error":
                    failure = future.exception()
                    raise BackendUnavailable(f"a Dask worker failed: {failure}") from None
            continue
        if state == "failed":
            error = RacebenchError(message)
            error.exit_status = ExitStatus(status)
            raise error
        ready.add(worker)


def _drain(names: TaskNames, collector: _Collector) -> None:
    """Take every batch of records shipped so far, without waiting for more."""
    records = names.queue("records")
    while records.qsize():
        collector.take(records.get())


def _follow(
    session: ClusterSession,
    names: TaskNames,
    futures: list[Any],
    placed: list[ClusterWorker],
    collector: _Collector,
    progress: ProgressCallback | None,
    duration_s: float | None,
) -> None:
    """Take records as they come, until every task ended or its worker was lost."""
    while True:
        _drain(names, collector)
        if progress is not None:
            progress(sum(collector.counts.values()), 0)
        # A Dask worker the scheduler no longer lists is lost: its task is given up here, and
        # the records it shipped are all there will be.
        alive = set(session.worker_addresses())
        for worker, future in zip(placed, futures, strict=True):
            if not future.done() and worker.address not in alive and not worker.lost:
                worker.lost = True
                future.cancel()
        if all(f.done() or w.lost for f, w in zip(futures, placed, strict=True)):
            return
        time.sleep(SHIP_EVERY_S / 2)


def _finish(
    session: ClusterSession,
    names: TaskNames,
    futures: list[Any],
    placed: list[ClusterWorker],
    collector: _Collector,
    started: int,
) -> list[WorkerOutput]:
    """Wait for the tasks to end after the stop flag, take the last records, mark losses."""
    deadline = time.monotonic() + _STOP_GRACE_S
    outputs: list[WorkerOutput] = []
    seen: set[int] = set()
    for worker, future in zip(placed, futures, strict=True):
        if worker.lost or id(future) in seen:
            continue
        seen.add(id(future))
        try:
            output = future.result(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:
            # One task may host several racebench workers (own_processes): all are lost.
            for other, same in zip(placed, futures, strict=True):
                other.lost = other.lost or same is future
            future.cancel()
            continue
        # worker_task hands back one output, clients_task a list (a killed process: none).
        for item in output if isinstance(output, list) else [output]:
            if isinstance(item, WorkerOutput):
                outputs.append(item)
    # The last batches first: a lost worker's in-flight operation is only the one after
    # everything it shipped.
    _drain(names, collector)
    for index, worker in enumerate(placed):
        if worker.lost:
            collector.record_lost(index, started)
    # Named queues and variables live on the scheduler until deleted; a session reused
    # across trials would otherwise accumulate them.
    for what in ("ready", "records"):
        names.queue(what).close()
    names.variable("duration").delete()
    return outputs


def count_overlaps_across_hosts(
    client: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    host_of: dict[int, int],
    uncertainty_of: dict[int, int],
) -> tuple[int, int]:
    """(certain, possible) overlapping pairs of critical sections.

    Sections of clients on one host are timed by one clock: any overlap is certain. Across
    hosts an overlap shorter than the two hosts' uncertainties together may be an artefact of
    the clock mapping: possible, not certain.
    """
    order = np.argsort(starts, kind="stable")
    c, s, e = client[order], starts[order], ends[order]
    certain = possible = 0
    later = np.searchsorted(s, e, side="left")
    for i in range(len(s)):
        for j in range(i + 1, int(later[i])):
            host_i, host_j = host_of.get(int(c[i]), -1), host_of.get(int(c[j]), -1)
            if host_i == host_j:
                certain += 1
                continue
            overlap = min(e[i], e[j]) - s[j]
            margin = uncertainty_of.get(host_i, 0) + uncertainty_of.get(host_j, 0)
            if overlap > margin:
                certain += 1
            else:
                possible += 1
    return certain, possible


@dataclass
class ClusterOptions:
    """How to reach clusters: an address that overrides the scenarios' `cluster:` (the
    `--cluster` flag or RACEBENCH_CLUSTER), TLS files, and whether clear text is allowed."""

    address: str | None = None
    insecure: bool = False
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    _sessions: dict[str, ClusterSession] = field(default_factory=dict)

    def security(self) -> Any:
        if not (self.tls_ca_file or self.tls_cert or self.tls_key):
            return None
        from distributed.security import Security

        return Security(
            tls_ca_file=self.tls_ca_file,
            tls_client_cert=self.tls_cert,
            tls_client_key=self.tls_key,
            require_encryption=True,
        )

    def session(self, address: str) -> ClusterSession:
        """The session for `address`, connected on first use and kept for later trials."""
        if address not in self._sessions:
            self._sessions[address] = ClusterSession(address, self.security())
        return self._sessions[address]

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()
