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
import os
import secrets
import shutil
import tempfile
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from racebench.engine.runner import plan_workers
from racebench.engine.worker import RateSpec, WorkerOutput, WorkerSpec, run_worker
from racebench.errors import BackendUnavailable, ExitStatus, RacebenchError, ScenarioError
from racebench.history import RECORD_DTYPE, append_record
from racebench.protocol import ClientRecord, OpenClient, ProgressCallback, RunnerResult

LOCAL_PREFIX = "local:"
# How often a remote worker ships its new records and polls the stop flag.
_SHIP_EVERY_S = 0.2
_CLOCK_SAMPLES = 15
_READY_TIMEOUT_S = 120.0
_STOP_GRACE_S = 15.0
# The record columns that are monotonic timestamps (0 means "none", and stays 0).
_TIME_FIELDS = ("start", "end", "cs_start", "cs_end", "intended")
# Test hook: "NAME=NS,NAME=NS" skews the clock of the Dask workers with those names by NS,
# as if their host's monotonic clock were that far ahead; the offset estimate must remove it.
SKEW_VARIABLE = "RACEBENCH_TEST_CLOCK_SKEW_NS"


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

    if any(redact_text(url) != url for url in urls):
        raise ScenarioError(
            source,
            "cluster",
            f"{parts.scheme}://{parts.hostname}: the store or lock URL carries a password, "
            "which would travel unencrypted over tcp://; use tls:// with certificates, or "
            "--insecure-cluster if the network is trusted",
        )


def _skew_ns(worker_name: object) -> int:
    """The test skew of the Dask worker called `worker_name` (see SKEW_VARIABLE), 0 outside
    tests."""
    for item in os.environ.get(SKEW_VARIABLE, "").split(","):
        key, _, value = item.partition("=")
        if key and key == str(worker_name):
            return int(value)
    return 0


def _remote_clock(dask_worker: Any) -> int:
    """A Dask worker's monotonic clock (Client.run passes the worker as `dask_worker`)."""
    return time.monotonic_ns() + _skew_ns(dask_worker.name)


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
            remote = self.client.run(_remote_clock, workers=[address])[address]
            after = time.monotonic_ns()
            rtt = after - before
            if best is None or rtt < best[0]:
                best = (rtt, remote - (before + after) // 2)
        assert best is not None
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
        self.client.close()
        if self._local is not None:
            self._local.close()


class _Probe:
    """The probe of a remote worker: per-client integers in this process (the coordinator's
    nemesis cannot watch them across hosts; what it needs travels with the records)."""

    def __init__(self, clients: int) -> None:
        self.acquiring = array("q", bytes(8 * clients))
        self.holding = array("q", bytes(8 * clients))
        self.session = array("q", bytes(8 * clients))
        self.inflight = array("q", bytes(8 * clients))


@dataclass
class _Names:
    """The Dask coordination primitives of one trial, by name (picklable)."""

    run: str

    def event(self, what: str) -> Any:
        from distributed import Event

        return Event(f"racebench-{self.run}-{what}")

    def queue(self, what: str) -> Any:
        from distributed import Queue

        return Queue(f"racebench-{self.run}-{what}")

    def variable(self, what: str) -> Any:
        from distributed import Variable

        return Variable(f"racebench-{self.run}-{what}")


class _TaskControl:
    """WorkerControl inside a Dask task. Nothing per operation leaves the process: counters are
    local, and a shipping thread sends new records and reads the stop flag every 200 ms."""

    def __init__(self, spec: WorkerSpec, names: _Names, clients: int) -> None:
        self.spec = spec
        self.names = names
        self.probe = _Probe(clients)
        self.counts: dict[int, int] = dict.fromkeys(spec.clients, 0)
        self.sent: dict[int, int] = dict.fromkeys(spec.clients, 0)
        self.errors = 0
        from distributed import get_worker

        self.skew_ns = _skew_ns(get_worker().name)
        self._stop = False
        self._shipping = threading.Event()
        self._records = names.queue("records")
        self._thread = threading.Thread(target=self._ship_loop, daemon=True)

    def ready(self, worker: int) -> None:
        self.names.queue("ready").put(("ready", worker, "", 0))

    def failed(self, worker: int) -> None:
        """Reported by the task itself, with the message (see _worker_task)."""

    def wait_start(self) -> int | None:
        self.names.event("go").wait()
        duration_ns = int(self.names.variable("duration").get())
        start = time.monotonic_ns()
        self._thread.start()
        return start + duration_ns if duration_ns else None

    def stopping(self) -> bool:
        return self._stop

    def add_done(self, client: int, count: int) -> None:
        self.counts[client] = count

    def add_error(self, client: int) -> None:
        self.errors += 1

    def _batch(self) -> dict[int, bytes]:
        size = RECORD_DTYPE.itemsize
        batch: dict[int, bytes] = {}
        for client, count in list(self.counts.items()):
            sent = self.sent[client]
            if count <= sent:
                continue
            data = np.fromfile(
                self.spec.workdir / f"client-{client}.bin",
                RECORD_DTYPE,
                count=count - sent,
                offset=sent * size,
            )
            if self.skew_ns:
                for name in _TIME_FIELDS:
                    column = data[name]
                    column[column != 0] += self.skew_ns
            batch[client] = data.tobytes()
            self.sent[client] = sent + len(data)
        return batch

    def ship(self) -> None:
        """Send the records written since the last call, and what each client has in flight."""
        inflight = {
            c: self.probe.inflight[c] + self.skew_ns
            for c in self.spec.clients
            if self.probe.inflight[c]
        }
        self._records.put((self.spec.worker, self._batch(), inflight))

    def _ship_loop(self) -> None:
        stop = self.names.event("stop")
        while not self._shipping.wait(_SHIP_EVERY_S):
            if stop.is_set():
                self._stop = True
            self.ship()

    def finish(self) -> None:
        """Stop the shipping thread and send what is left."""
        self._shipping.set()
        if self._thread.is_alive():
            self._thread.join()
        self.ship()


def _worker_task(spec: WorkerSpec, run: str, clients: int) -> WorkerOutput | dict[str, Any]:
    """One racebench worker as a Dask task. Refuses to start after the run has started: a
    task that Dask re-submits after its first worker died must not run its clients twice."""
    names = _Names(run)
    if names.event("go").is_set():
        return {"refused": "the run had already started (a re-run after a lost worker)"}
    workdir = Path(tempfile.mkdtemp(prefix="racebench-run-"))
    spec = replace(spec, workdir=workdir, return_records=False)
    control = _TaskControl(spec, names, clients)
    try:
        output = run_worker(spec, control)
        control.finish()
        return output
    except BaseException as exc:
        status = int(getattr(exc, "exit_status", ExitStatus.USAGE))
        message = str(exc) if isinstance(exc, RacebenchError) else f"{type(exc).__name__}: {exc}"
        names.queue("ready").put(("failed", spec.worker, message, status))
        return {"startup_error": message, "exit_status": status}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class _Collector:
    """The coordinator's side: appends shipped records, mapped onto its clock, to the files
    the checkers read, and remembers what each client had in flight."""

    workdir: Path
    placed: list[ClusterWorker]
    counts: Counter[int] = field(default_factory=Counter)
    inflight: dict[int, int] = field(default_factory=dict)

    def take(self, item: tuple[int, dict[int, bytes], dict[int, int]]) -> None:
        worker, batch, inflight = item
        offset = self.placed[worker].clock.offset_ns
        for client, raw in batch.items():
            data = np.frombuffer(raw, RECORD_DTYPE).copy()
            for name in _TIME_FIELDS:
                column = data[name]
                column[column != 0] -= offset
            with open(self.workdir / f"client-{client}.bin", "ab") as out:
                data.tofile(out)
            self.counts[client] += len(data)
        for client in self.placed[worker].clients:
            if client in inflight:
                self.inflight[client] = inflight[client] - offset
            else:
                self.inflight.pop(client, None)

    def record_lost(self, worker: ClusterWorker) -> None:
        """A lost worker's in-flight operations may or may not have happened: unknown."""
        now = time.monotonic_ns()
        for client in worker.clients:
            start = self.inflight.pop(client, 0)
            if start:
                path = self.workdir / f"client-{client}.bin"
                append_record(path, self.counts[client], start, now)
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
) -> RunnerResult:
    """Run the clients as `workers` racebench workers spread over the cluster's Dask workers.

    Same contract as racebench.engine.runner.run_clients; the result also says where each worker
    ran, its clock offset and uncertainty, and which were lost.
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
    names = _Names(secrets.token_hex(6))
    names.variable("duration").set(int(duration_s * 1e9) if duration_s else 0)
    for i in range(clients):
        (workdir / f"client-{i}.bin").touch()
    futures = [
        session.client.submit(
            _worker_task,
            spec,
            names.run,
            clients,
            # The key names the run and worker only: task keys show on the dashboard.
            key=f"racebench-{names.run}-worker-{spec.worker}",
            workers=[worker.address],
            allow_other_workers=False,
            retries=0,
            pure=False,
        )
        for spec, worker in zip(specs, placed, strict=True)
    ]
    collector = _Collector(workdir, placed)
    interrupted = False
    t0 = time.monotonic_ns()
    try:
        _wait_ready(names, futures, len(specs))
        t0 = time.monotonic_ns()
        names.event("go").set()
        _follow(session, names, futures, placed, collector, progress, duration_s)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        names.event("stop").set()
        outputs = _finish(session, names, futures, placed, collector)
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


def _wait_ready(names: _Names, futures: list[Any], count: int) -> None:
    ready_queue = names.queue("ready")
    deadline = time.monotonic() + _READY_TIMEOUT_S
    ready: set[int] = set()
    while len(ready) < count:
        if time.monotonic() > deadline:
            raise BackendUnavailable(f"clients did not connect within {_READY_TIMEOUT_S:.0f}s")
        try:
            state, worker, message, status = ready_queue.get(timeout=0.5)
        except TimeoutError:
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


def _drain(names: _Names, collector: _Collector) -> None:
    records = names.queue("records")
    while records.qsize():
        collector.take(records.get())


def _follow(
    session: ClusterSession,
    names: _Names,
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
        alive = set(session.worker_addresses())
        for worker, future in zip(placed, futures, strict=True):
            if not future.done() and worker.address not in alive and not worker.lost:
                worker.lost = True
                future.cancel()
        if all(f.done() or w.lost for f, w in zip(futures, placed, strict=True)):
            return
        time.sleep(_SHIP_EVERY_S / 2)


def _finish(
    session: ClusterSession,
    names: _Names,
    futures: list[Any],
    placed: list[ClusterWorker],
    collector: _Collector,
) -> list[WorkerOutput]:
    """Wait for the tasks to end after the stop flag, take the last records, mark losses."""
    deadline = time.monotonic() + _STOP_GRACE_S
    outputs: list[WorkerOutput] = []
    for worker, future in zip(placed, futures, strict=True):
        if worker.lost:
            continue
        try:
            output = future.result(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:
            worker.lost = True
            future.cancel()
            continue
        if isinstance(output, WorkerOutput):
            outputs.append(output)
    _drain(names, collector)
    for worker in placed:
        if worker.lost:
            collector.record_lost(worker)
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
