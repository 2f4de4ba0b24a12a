"""The local runner: fork the workers, hold the start barrier, stop them, collect.

It knows no workload and no server: each worker (racebench.engine.worker) opens its clients with the
run's `open_client` factory. Worker processes are forked after the parent imported the
drivers, which starts them in milliseconds instead of the seconds of spawn.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import pickle
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from racebench.engine.worker import RateSpec, WorkerOutput, WorkerSpec, worker_process_main
from racebench.errors import BackendUnavailable, ExitStatus, RacebenchError
from racebench.history import append_record
from racebench.protocol import (
    ClientRecord,
    Nemesis,
    OpenClient,
    Probe,
    ProgressCallback,
    RunnerResult,
)

# Connecting is not timed: a slow server or many TLS clients may take long, but a worker
# that has not connected in two minutes is not going to, and the run ends with exit 3.
_READY_TIMEOUT_S = 120.0
# Time for each worker to finish the operation in flight and write its output file.
_STOP_GRACE_S = 15.0
# How often a watched client's state is read: far below a race window (milliseconds), so a
# signal aimed at a client inside one lands while it is still there.
_POLL_S = 0.0005


@dataclass
class LocalClientSignals:
    """ClientSignals of clients in processes forked here: `pids[client]` runs it."""

    pids: list[int]
    probe: Probe

    def signal(self, client: int, sig: int) -> int:
        """Send `sig` to the client's worker; return when it was sent (monotonic ns)."""
        sent = time.monotonic_ns()
        # The worker may already have finished its quota and exited: nothing to signal.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pids[client], sig)
        return sent

    def signal_when(
        self, clients: list[int], state: str, sig: int, stopping: threading.Event
    ) -> tuple[int, int] | None:
        """Signal the first of `clients` seen in `state` (a Probe array, e.g. `holding`).

        Returns the client and the send time, or None when the run stopped first. A busy poll,
        not a notification: clients write the probe without a syscall, so they cannot wake us.
        """
        watched = getattr(self.probe, state)
        while not stopping.is_set():
            for client in clients:
                if watched[client]:
                    return client, self.signal(client, sig)
            time.sleep(_POLL_S)
        return None


class LocalControl:
    """The worker control of forked workers: shared memory and one multiprocessing Event."""

    def __init__(self, ctx: Any, clients: int, workers: int) -> None:
        # Raw (lock-free) arrays: each slot has one writer, the worker of that client (or
        # that worker itself), and the parent only reads them for progress and collection.
        self.ready_state = ctx.RawArray("b", workers)  # 0 connecting, 1 ready, -1 failed
        self.done = ctx.RawArray("q", clients)
        self.errors = ctx.RawArray("q", clients)
        self.stop = ctx.RawValue("b", 0)
        self.deadline_ns = ctx.RawValue("q", 0)
        self.go = ctx.Event()
        self.probe = Probe.create(ctx, clients)

    def ready(self, worker: int) -> None:
        self.ready_state[worker] = 1

    def failed(self, worker: int) -> None:
        self.ready_state[worker] = -1

    def wait_start(self) -> int | None:
        self.go.wait()
        # Written before `go` is set, so every worker reads the final value; 0: no deadline.
        return self.deadline_ns.value or None

    def stopping(self) -> bool:
        return bool(self.stop.value)

    def add_error(self, client: int) -> None:
        self.errors[client] += 1


def _quota(operations: int | None, clients: int, client_id: int) -> int | None:
    # The remainder goes to the lowest ids, so the quotas add up to exactly `operations`.
    if operations is None:
        return None
    return operations // clients + (1 if client_id < operations % clients else 0)


def plan_workers(
    open_client: OpenClient,
    clients: int,
    workers: int,
    operations: int | None,
    workdir: Path,
    rate: RateSpec | None = None,
) -> list[WorkerSpec]:
    """Deal the clients round-robin over `workers` workers, with their quotas and rate share."""
    workers = max(1, min(workers, clients))
    specs = []
    for w in range(workers):
        ids = tuple(range(w, clients, workers))
        share = None
        if rate is not None:
            # In proportion to the worker's clients, so each client gets the same rate.
            share = RateSpec(rate.ops_per_s * len(ids) / clients, rate.arrival)
        quotas = tuple(_quota(operations, clients, c) for c in ids)
        specs.append(WorkerSpec(w, ids, open_client, quotas, workdir, share))
    return specs


def run_clients(
    open_client: OpenClient,
    clients: int,
    operations: int | None,
    duration_s: float | None,
    workdir: Path,
    progress: ProgressCallback | None = None,
    nemesis: Nemesis | None = None,
    workers: int = 1,
    rate: RateSpec | None = None,
) -> RunnerResult:
    """Run `clients` clients on `workers` processes until the operation count or the deadline;
    Ctrl-C stops early.

    A worker killed mid-run (a fault) keeps the operations its clients recorded; the one each
    had in flight is recorded as `unknown`, since it may have written before it died.
    """
    ctx = mp.get_context("fork")
    specs = plan_workers(open_client, clients, workers, operations, workdir, rate)
    control = LocalControl(ctx, clients, len(specs))
    procs = [
        ctx.Process(
            target=worker_process_main,
            args=(spec, control, os.getpid()),
            name=f"racebench-worker-{spec.worker}",
            daemon=True,
        )
        for spec in specs
    ]
    started = time.monotonic_ns()
    for proc in procs:
        proc.start()
    interrupted = False
    t0 = started
    try:
        _wait_ready(procs, control, workdir)
        # The clock starts once every client has connected: connecting is not part of the run,
        # and all clients leave the barrier together, which is what makes them race.
        t0 = time.monotonic_ns()
        if duration_s is not None:
            control.deadline_ns.value = t0 + int(duration_s * 1e9)
        control.go.set()
        if nemesis is not None:
            pids = [0] * clients
            for spec, proc in zip(specs, procs, strict=True):
                assert proc.pid is not None  # started above
                for c in spec.clients:
                    pids[c] = proc.pid
            nemesis.start(LocalClientSignals(pids, control.probe), control.probe, t0)
        # Wakes when a worker exits, else every 100 ms for the progress line.
        while alive := [p.sentinel for p in procs if p.is_alive()]:
            mp_connection.wait(alive, timeout=0.1)
            if progress is not None:
                progress(sum(control.done), sum(control.errors))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # The nemesis first: stopping it heals its fault, and a worker blocked on a paused
        # server or a cut proxy could not reach its stop check within the grace.
        try:
            if nemesis is not None:
                nemesis.stop()
        finally:
            _stop_all(procs, control)
    if progress is not None:
        progress(sum(control.done), sum(control.errors))
    _record_lost_operations(specs, procs, control, workdir)
    result = _collect(specs, workdir, clients, control, t0, interrupted)
    result.ready_s = (t0 - started) / 1e9
    return result


def _record_lost_operations(
    specs: list[WorkerSpec],
    procs: list[Any],
    control: LocalControl,
    workdir: Path,
) -> None:
    """Record, as unknown, the operation each client of a killed worker had in flight."""
    for spec, proc in zip(specs, procs, strict=True):
        # A negative exit code is death by a signal: a worker that returned wrote its own.
        if proc.exitcode is None or proc.exitcode >= 0:
            continue
        record_inflight_as_unknown(control, spec.clients, workdir)


def record_inflight_as_unknown(
    control: LocalControl, clients: tuple[int, ...], workdir: Path
) -> None:
    """Append, as unknown, the operation each of `clients` had in flight when its process died.

    It may have written before the process died, so it is neither failed nor done; it ends
    now. The in-flight mark is cleared, so a second call records nothing twice.
    """
    for client in clients:
        start = control.probe.inflight[client]
        if start:
            path = workdir / f"client-{client}.bin"
            append_record(path, control.done[client], start, time.monotonic_ns())
            control.done[client] += 1
            control.probe.inflight[client] = 0


def _read_output(workdir: Path, worker: int) -> WorkerOutput | dict[str, Any] | None:
    """A worker's output file: its result, a startup error (a dict), or None if it died first."""
    try:
        return pickle.loads((workdir / f"worker-{worker}.pkl").read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError):
        return None


def _wait_ready(procs: list[Any], control: LocalControl, workdir: Path) -> None:
    """Wait until every worker has connected its clients; raise the first startup failure."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        states = list(control.ready_state)
        failed = [i for i, s in enumerate(states) if s < 0]
        if not failed:
            # Dead without flagging: killed, or a driver crashed the process.
            failed = [i for i, p in enumerate(procs) if states[i] == 0 and not p.is_alive()]
        if failed:
            raise _startup_error(workdir, failed[0])
        if all(s == 1 for s in states):
            return
        if time.monotonic() > deadline:
            raise BackendUnavailable(f"clients did not connect within {_READY_TIMEOUT_S:.0f}s")
        time.sleep(0.005)


def _startup_error(workdir: Path, worker: int) -> RacebenchError:
    """The worker's own startup error, with its exit status (3 for an unreachable server)."""
    info = None
    for _ in range(200):  # the failed flag is set after the output file is in place
        info = _read_output(workdir, worker)
        if info is not None:
            break
        time.sleep(0.005)
    if not isinstance(info, dict):
        return RacebenchError(f"worker {worker} died while connecting its clients")
    error = RacebenchError(info["startup_error"])
    error.exit_status = ExitStatus(info.get("exit_status", ExitStatus.USAGE))
    return error


def _stop_all(procs: list[Any], control: LocalControl) -> None:
    control.stop.value = 1
    # Also releases workers still at the barrier (the run failed or was interrupted before
    # the start), which then see `stop` and end.
    control.go.set()
    deadline = time.monotonic() + _STOP_GRACE_S
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            # Past the grace: its clients' recorded operations stay on disk; only its output
            # file (errors, retry codes) is lost.
            proc.kill()
            proc.join()


def _collect(
    specs: list[WorkerSpec],
    workdir: Path,
    clients: int,
    control: LocalControl,
    t0: int,
    interrupted: bool,
) -> RunnerResult:
    """The run's result from the files the workers wrote; a killed worker contributes only
    the operation records its clients had already appended."""
    errors: dict[int, list[str]] = {}
    retry_codes: Counter[str] = Counter()
    outputs = []
    for spec in specs:
        output = _read_output(workdir, spec.worker)
        if isinstance(output, WorkerOutput):
            outputs.append(output)
            errors.update(output.errors)
            retry_codes.update(output.retry_codes)
    records = [
        ClientRecord(workdir / f"client-{i}.bin", control.done[i], errors.get(i, []))
        for i in range(clients)
    ]
    return RunnerResult(t0, records, interrupted, retry_codes, len(specs), outputs)


def default_workers() -> int:
    """One worker per CPU this process may run on.

    sched_getaffinity honours taskset and cgroup CPU sets, which os.cpu_count ignores; it is
    missing on macOS.
    """
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
