"""What runs on a Dask worker: racebench workers as Dask tasks, and the handles the
coordinator's nemesis uses to reach their clients.

Two ways to run. `worker_task` runs one racebench worker inside the Dask task's thread (the
fast path, no fault aimed at a client). `clients_task` runs every racebench worker placed on
one Dask worker in a process of its own, forked by the task, as the local runner does: a
SIGSTOP or SIGKILL aimed at a client then stops or kills that client alone, like a
stop-the-world GC pause or a crash, and never the Dask worker. Either way the task ships the
records every 200 ms, and registers its clients here (`_HOSTED`) so that the coordinator can,
through `Client.run`, read what they are doing (`probe_value`) and signal them
(`signal_client`).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from racebench.engine.runner import LocalControl, record_inflight_as_unknown
from racebench.engine.worker import WorkerOutput, WorkerSpec, run_worker, worker_process_main
from racebench.errors import ExitStatus, RacebenchError
from racebench.history import RECORD_DTYPE
from racebench.util.ownership import temp_prefix

# How often a remote worker ships its new records and polls the stop flag.
SHIP_EVERY_S = 0.2
# The record columns that are monotonic timestamps (0 means "none", and stays 0).
TIME_FIELDS = ("start", "end", "cs_start", "cs_end", "intended")
# Test hook: "NAME=NS,NAME=NS" skews the clock of the Dask workers with those names by NS,
# as if their host's monotonic clock were that far ahead; the offset estimate must remove it.
SKEW_VARIABLE = "RACEBENCH_TEST_CLOCK_SKEW_NS"
# As the local runner's: connecting is not timed, stopping is.
_READY_TIMEOUT_S = 120.0
_STOP_GRACE_S = 15.0
# How often a task checks its forked workers for exits.
_REAP_EVERY_S = 0.02
# As the local runner's _POLL_S: far below a race window, so an armed signal lands inside it.
_WATCH_EVERY_S = 0.0005


def skew_ns(worker_name: object) -> int:
    """The test skew of the Dask worker called `worker_name` (see SKEW_VARIABLE), 0 outside
    tests."""
    for item in os.environ.get(SKEW_VARIABLE, "").split(","):
        key, _, value = item.partition("=")
        if key and key == str(worker_name):
            return int(value)
    return 0


def remote_clock(dask_worker: Any) -> int:
    """A Dask worker's monotonic clock (Client.run passes the worker as `dask_worker`)."""
    return time.monotonic_ns() + skew_ns(dask_worker.name)


@dataclass
class TaskNames:
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


class _Arm:
    """A signal waiting for a client's state (see arm_signal): a thread here watches the
    probe and sends it the moment the state shows, or gives up when disarmed."""

    def __init__(self, hosted: _Hosted, client: int, column: str, sig: int, skew: int) -> None:
        self.lock = threading.Lock()
        self.sent_ns = 0  # when the signal was sent, on this host's (skewed) clock
        self.disarmed = False
        self._args = (getattr(hosted.probe, column), client, hosted.pids[client], sig, skew)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        watched, client, pid, sig, skew = self._args
        while True:
            # Under the lock: a disarm that wins means no signal, one that loses sees it sent.
            with self.lock:
                if self.disarmed:
                    return
                if watched[client]:
                    self.sent_ns = time.monotonic_ns() + skew
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                    return
            time.sleep(_WATCH_EVERY_S)

    def poll(self, disarm: bool) -> int:
        """When the signal was sent (0: not yet); `disarm` withdraws it if still waiting."""
        with self.lock:
            self.disarmed = disarm or self.disarmed
            return self.sent_ns


@dataclass
class _Hosted:
    """The clients a task runs in this Dask worker process: their probe and, when each runs
    in a process of its own, that process; the signals armed for them."""

    probe: Any
    pids: dict[int, int]
    arms: dict[int, _Arm] = field(default_factory=dict)


# run id -> its clients in this process; read by the Client.run functions below.
_HOSTED: dict[str, _Hosted] = {}


def probe_value(run: str, client: int, column: str) -> int:
    """One probe entry of a client here (holding, acquiring, session, inflight); 0 when the
    run is not (or no longer) here."""
    hosted = _HOSTED.get(run)
    return int(getattr(hosted.probe, column)[client]) if hosted is not None else 0


def signal_client(run: str, client: int, sig: int, dask_worker: Any) -> int:
    """Send `sig` to the process that runs `client` alone; when (this host's clock, taken
    just before), or 0 when it is gone."""
    hosted = _HOSTED.get(run)
    pid = hosted.pids.get(client) if hosted is not None else None
    if pid is None:
        return 0
    # Taken before the kill: the fault is reported as starting no later than it did.
    sent = time.monotonic_ns() + skew_ns(dask_worker.name)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return 0
    return sent


def arm_signal(run: str, client: int, column: str, sig: int, dask_worker: Any) -> bool:
    """Send `sig` to `client` as soon as its probe `column` is set (see _Arm); False when the
    client is not here."""
    hosted = _HOSTED.get(run)
    if hosted is None or client not in hosted.pids:
        return False
    hosted.arms[client] = _Arm(hosted, client, column, sig, skew_ns(dask_worker.name))
    return True


def poll_signal(run: str, client: int, disarm: bool) -> int:
    """When the armed signal of `client` was sent (this host's clock), 0 while it waits;
    `disarm` withdraws it if it has not been sent."""
    hosted = _HOSTED.get(run)
    arm = hosted.arms.get(client) if hosted is not None else None
    return arm.poll(disarm) if arm is not None else 0


class _Probe:
    """The probe of an in-task worker: per-client integers in this process.

    Plain arrays, not shared memory: the clients run in this process (threads of the task),
    and the coordinator reads them through Client.run in this process too.
    """

    def __init__(self, clients: int) -> None:
        self.acquiring = array("q", bytes(8 * clients))
        self.holding = array("q", bytes(8 * clients))
        self.session = array("q", bytes(8 * clients))
        self.inflight = array("q", bytes(8 * clients))


class _Shipper:
    """Ships one racebench worker's new records, and what its clients have in flight, to the
    coordinator. `done[client]` is how many records that client has written so far."""

    def __init__(self, spec: WorkerSpec, done: Any, probe: Any, records: Any, skew: int) -> None:
        self.spec, self.done, self.probe, self.records, self.skew = spec, done, probe, records, skew
        self.sent: dict[int, int] = dict.fromkeys(spec.clients, 0)

    def _batch(self) -> dict[int, bytes]:
        size = RECORD_DTYPE.itemsize
        batch: dict[int, bytes] = {}
        for client in self.spec.clients:
            count, sent = int(self.done[client]), self.sent[client]
            if count <= sent:
                continue
            # Only the records counted as done: the one being written may be half there.
            data = np.fromfile(
                self.spec.workdir / f"client-{client}.bin",
                RECORD_DTYPE,
                count=count - sent,
                offset=sent * size,
            )
            if self.skew:
                for name in TIME_FIELDS:
                    column = data[name]
                    column[column != 0] += self.skew
            batch[client] = data.tobytes()
            self.sent[client] = sent + len(data)
        return batch

    def ship(self) -> None:
        """Queue the new records and the in-flight starts: if this host is lost after this,
        the coordinator knows which operations may have happened."""
        inflight = self.probe.inflight
        busy = {c: inflight[c] + self.skew for c in self.spec.clients if inflight[c]}
        self.records.put((self.spec.worker, self._batch(), busy))


class _ShipLoop:
    """A thread that ships every SHIP_EVERY_S and calls `on_stop` once the coordinator set
    the run's stop flag."""

    def __init__(
        self, names: TaskNames, shippers: list[_Shipper], on_stop: Callable[[], None]
    ) -> None:
        self.names, self.shippers, self.on_stop = names, shippers, on_stop
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        stop = self.names.event("stop")
        while not self._done.wait(SHIP_EVERY_S):
            if stop.is_set():
                self.on_stop()
            for shipper in self.shippers:
                shipper.ship()

    def finish(self) -> None:
        """Stop the thread and ship what is left."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        for shipper in self.shippers:
            shipper.ship()


def _worker_skew() -> int:
    """The test skew of the Dask worker running this task (0 outside tests)."""
    from distributed import get_worker

    return skew_ns(get_worker().name)


class _TaskControl:
    """WorkerControl inside a Dask task. Nothing per operation leaves the process: counters are
    local, and a shipping thread sends new records and reads the stop flag every 200 ms."""

    def __init__(self, spec: WorkerSpec, names: TaskNames, clients: int) -> None:
        self.names = names
        self.probe = _Probe(clients)
        self.done: dict[int, int] = dict.fromkeys(spec.clients, 0)
        self._stop = False
        shipper = _Shipper(spec, self.done, self.probe, names.queue("records"), _worker_skew())
        self.shipping = _ShipLoop(names, [shipper], self._set_stop)

    def _set_stop(self) -> None:
        self._stop = True

    def ready(self, worker: int) -> None:
        self.names.queue("ready").put(("ready", worker, "", 0))

    def failed(self, worker: int) -> None:
        """Reported by the task itself, with the message (see worker_task)."""

    def wait_start(self) -> int | None:
        self.names.event("go").wait()
        duration_ns = int(self.names.variable("duration").get())
        # The deadline on this host's clock, from the moment it saw `go`: no clock offset is
        # needed, and a host that saw `go` late also stops late by as much.
        start = time.monotonic_ns()
        self.shipping.start()
        return start + duration_ns if duration_ns else None

    def stopping(self) -> bool:
        return self._stop

    def add_error(self, client: int) -> None:
        """Errors are counted from the records on the coordinator."""


def _failure(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit status the coordinator re-raises for a failed start."""
    status = int(getattr(exc, "exit_status", ExitStatus.USAGE))
    message = str(exc) if isinstance(exc, RacebenchError) else f"{type(exc).__name__}: {exc}"
    return message, status


def worker_task(spec: WorkerSpec, run: str, clients: int) -> WorkerOutput | dict[str, Any]:
    """One racebench worker in this Dask task's thread. Refuses to start after the run has
    started: a task that Dask re-submits after its first worker died must not run its
    clients twice."""
    names = TaskNames(run)
    if names.event("go").is_set():
        return {"refused": "the run had already started (a re-run after a lost worker)"}
    # Named after this Dask worker's process: if it is killed (a lost host), `clean` on
    # its host sees the owner dead and removes what the finally below could not.
    workdir = Path(tempfile.mkdtemp(prefix=temp_prefix("run")))
    spec = replace(spec, workdir=workdir, return_records=False)
    control = _TaskControl(spec, names, clients)
    _HOSTED[run] = _Hosted(control.probe, {})
    try:
        output = run_worker(spec, control)
        control.shipping.finish()
        return output
    except BaseException as exc:
        message, status = _failure(exc)
        names.queue("ready").put(("failed", spec.worker, message, status))
        return {"startup_error": message, "exit_status": status}
    finally:
        _HOSTED.pop(run, None)
        shutil.rmtree(workdir, ignore_errors=True)


class _Children:
    """The racebench workers of one task, each in a process forked from this one."""

    def __init__(self, specs: list[WorkerSpec], clients: int) -> None:
        # Dask worker processes are daemons, which multiprocessing forbids to have children:
        # fork by hand, with multiprocessing's shared memory for the control.
        self.specs = specs
        self.control = LocalControl(
            mp.get_context("fork"), clients, 1 + max(s.worker for s in specs)
        )
        self.pids: dict[int, int] = {}  # worker -> pid
        self.status: dict[int, int] = {}  # worker -> wait status, once it ended
        parent = os.getpid()
        for spec in specs:
            pid = os.fork()
            if pid == 0:  # the child: run the worker, never return into Dask
                try:
                    worker_process_main(spec, self.control, parent)
                finally:
                    os._exit(0)
            self.pids[spec.worker] = pid

    def reap(self) -> None:
        for worker, pid in self.pids.items():
            if worker not in self.status:
                with contextlib.suppress(ChildProcessError):
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        self.status[worker] = status

    def killed(self, worker: int) -> bool:
        status = self.status.get(worker)
        return status is not None and os.WIFSIGNALED(status)

    def running(self) -> bool:
        self.reap()
        return len(self.status) < len(self.pids)

    def output(self, worker: int) -> WorkerOutput | dict[str, Any] | None:
        path = self.specs[0].workdir / f"worker-{worker}.pkl"
        try:
            output: WorkerOutput | dict[str, Any] = pickle.loads(path.read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError):
            return None
        return output

    def wait_ready(self) -> tuple[str, int] | None:
        """None once every worker connected its clients, else why one could not."""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self.reap()
            states = {s.worker: self.control.ready_state[s.worker] for s in self.specs}
            if all(state == 1 for state in states.values()):
                return None
            for worker, state in states.items():
                if state < 0 or (state == 0 and worker in self.status):
                    output = self.output(worker)
                    if isinstance(output, dict) and "startup_error" in output:
                        return output["startup_error"], output["exit_status"]
                    return f"worker {worker} died while connecting its clients", ExitStatus.USAGE
            time.sleep(0.005)
        return (
            f"clients did not connect within {_READY_TIMEOUT_S:.0f}s",
            ExitStatus.BACKEND_UNAVAILABLE,
        )

    def record_killed(self) -> None:
        """The operation each client of a killed worker had in flight is unknown."""
        for spec in self.specs:
            if self.killed(spec.worker):
                record_inflight_as_unknown(self.control, spec.clients, spec.workdir)

    def end(self) -> None:
        """Resume and kill what is left (the coordinator is gone or the grace ran out)."""
        for worker, pid in self.pids.items():
            if worker not in self.status:
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
        for worker, pid in self.pids.items():
            if worker not in self.status:
                with contextlib.suppress(ChildProcessError):
                    self.status[worker] = os.waitpid(pid, 0)[1]


def clients_task(
    specs: list[WorkerSpec], run: str, clients: int
) -> list[WorkerOutput] | dict[str, Any]:
    """The racebench workers placed on this Dask worker, each in a process of its own, so
    that a fault can stop or kill one client's process. Refuses to start after the run has
    started, like worker_task."""
    names = TaskNames(run)
    if names.event("go").is_set():
        return {"refused": "the run had already started (a re-run after a lost worker)"}
    # Named after this Dask worker's process: if it is killed (a lost host), `clean` on
    # its host sees the owner dead and removes what the finally below could not.
    workdir = Path(tempfile.mkdtemp(prefix=temp_prefix("run")))
    specs = [replace(s, workdir=workdir, return_records=False) for s in specs]
    children = _Children(specs, clients)
    control = children.control
    records, skew = names.queue("records"), _worker_skew()
    shippers = [_Shipper(s, control.done, control.probe, records, skew) for s in specs]
    stop_at: list[float] = []

    def set_stop() -> None:
        control.stop.value = 1
        if not stop_at:
            stop_at.append(time.monotonic() + _STOP_GRACE_S)

    shipping = _ShipLoop(names, shippers, set_stop)
    try:
        failure = children.wait_ready()
        if failure is not None:
            names.queue("ready").put(("failed", specs[0].worker, *failure))
            return {"startup_error": failure[0], "exit_status": failure[1]}
        _HOSTED[run] = _Hosted(
            control.probe, {c: children.pids[s.worker] for s in specs for c in s.clients}
        )
        for spec in specs:
            names.queue("ready").put(("ready", spec.worker, "", 0))
        go, stop = names.event("go"), names.event("stop")
        while not go.wait(timeout=0.5):
            if stop.is_set():  # the run ended before it started (another task failed)
                return []
        duration_ns = int(names.variable("duration").get())
        if duration_ns:
            control.deadline_ns.value = time.monotonic_ns() + duration_ns
        control.go.set()
        shipping.start()
        while children.running() and not (stop_at and time.monotonic() > stop_at[0]):
            time.sleep(_REAP_EVERY_S)
    finally:
        _HOSTED.pop(run, None)
        children.end()
        children.record_killed()
        shipping.finish()
        outputs = [children.output(s.worker) for s in specs]
        shutil.rmtree(workdir, ignore_errors=True)
    return [o for o in outputs if isinstance(o, WorkerOutput)]
