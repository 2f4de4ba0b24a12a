"""The worker: one process running its share of the logical clients on one event loop.

`run_worker(spec, control)` is the unit of work: a picklable `WorkerSpec` in (which clients,
their quotas, the rate, how to open a client), a `WorkerOutput` out (per-client counts,
messages, retries, the worker's own CPU and event-loop lag). Records go to one memory-mapped
file per client, so a worker killed by a fault keeps what it recorded. The start barrier,
the stop flag and the per-client progress counters are behind `WorkerControl`, so the same
function can run in a forked process (racebench.engine.runner) or, later, as a task on another host.

Clients whose driver has an asyncio API run as tasks on the loop; the others (sqlite3, kazoo,
any store not ported yet) run their blocking loop on a thread of their own, in the same
worker (see racebench.guards.OpenedClient).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import random
import resource
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from hdrh.histogram import HdrHistogram

from racebench.analysis.metrics import LAG_LINE_MS, new_histogram
from racebench.errors import ExitStatus, RacebenchError
from racebench.guards import (
    OK_RESULT,
    REJECTED_RESULT,
    OpenedClient,
    OpResult,
    direct_step,
    step_op_result,
)
from racebench.history import (
    NO_VALUE,
    RECORD,
    RECORD_DTYPE,
    TIMES_AT,
    TIMES_RECORD,
    Outcome,
    Recorder,
    constant_parts,
    outcome_record,
)
from racebench.stores.base import OK_STEP, REJECTED_STEP, StepResult

try:  # the blocking loop's fast path, built at install time where a compiler was found
    from racebench.engine import _blocking_loop
except ImportError:  # pragma: no cover - the Python loop writes the same records
    _blocking_loop = None  # type: ignore[assignment, unused-ignore]

# An operation that started more than this after its intended start counts as late.
LATE_NS = 1_000_000
# How often the lag sampler wakes: a due timer that fires late measures the loop's backlog.
# Each wake-up of a loop that waits on the server is a context switch, and each sample cost
# Python time (at 5 ms, with hdrh per sample, 11% of a PostgreSQL worker's Python time at
# 16 clients in py-spy): every 10 ms, cheaply, is plenty for a p99 over a run.
_LAG_SAMPLE_S = 0.01
# Connections opened at once while a worker starts: far below the server's listen backlog
# (Redis' tcp-backlog is 511), so 8,000 clients connect without SYN retransmits.
_CONNECT_CONCURRENCY = 256
_PARENT_CHECK_S = 0.25
# Due operations an open loop queues per client before its schedule waits for a client to
# take one: enough that a client finishing an operation finds the next waiting.
_OPEN_LOOP_BACKLOG_PER_CLIENT = 2


@dataclass(frozen=True)
class RateSpec:
    """Open loop: `ops_per_s` intended starts per second (this worker's share)."""

    ops_per_s: float
    arrival: str = "constant"  # or "poisson"


@dataclass(frozen=True)
class WorkerSpec:
    """Everything one worker needs; picklable, so it can travel to another process or host.

    `open_client(client_id, probe)` is a picklable async callable returning an OpenedClient
    (racebench.engine.trials.ClientFactory). `quotas[i]` is the operation count of `clients[i]`
    (None: until the deadline or stop); an open loop spreads their sum over the clients.
    """

    worker: int
    clients: tuple[int, ...]
    open_client: Callable[..., Any]
    quotas: tuple[int | None, ...]
    workdir: Path
    rate: RateSpec | None = None
    return_records: bool = False  # ship the records in the output (a remote worker)


@dataclass
class WorkerOutput:
    """What a worker hands back: per-client results and its own load figures."""

    worker: int
    counts: dict[int, int] = field(default_factory=dict)  # client -> valid records
    errors: dict[int, list[str]] = field(default_factory=dict)  # client -> message table
    retry_codes: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    lag_histogram: bytes = b""  # HDR histogram (µs) of event-loop lag, encoded
    # What the loop's thread did during the lag samples past LAG_LINE_MS, µs summed:
    # "computing", "waiting_for_core" (on the run queue; absent where the kernel does not
    # say) and "blocked" (neither: in a call that blocks, or asleep). See _Worker.sample_lag.
    lag_parts_us: dict[str, int] = field(default_factory=dict)
    late: int = 0
    dropped: int = 0
    max_rss_mb: float = 0.0
    records: dict[int, np.ndarray] | None = None

    @property
    def cpu_share(self) -> float:
        """Share of one core the worker used while the clients ran."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


class WorkerControl(Protocol):
    """The start barrier and the shared state between a worker and whoever runs it."""

    probe: Any  # racebench.engine.runner.Probe: per-client integers the nemesis watches
    # Client -> how many valid records it has written (progress, and what survives a kill):
    # the loops write it in place, an item assignment rather than a method call per record.
    done: Any

    def ready(self, worker: int) -> None:
        """Every client of `worker` is connected."""

    def wait_start(self) -> int | None:
        """Block until the run starts; return the deadline (monotonic ns) or None."""

    def stopping(self) -> bool:
        """Whether the run was told to stop (Ctrl-C, a failed sibling)."""

    def add_error(self, client: int) -> None:
        """One more operation of `client` ended in an error (progress display)."""

    def failed(self, worker: int) -> None:
        """`worker` could not open its clients (its output says why)."""


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphans left running).

    PR_SET_PDEATHSIG is per process and survives nothing but the fork it is called after,
    so each worker calls it first thing; elsewhere than Linux it is a no-op, and the
    worker's parent-liveness check is the backstop.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (about 2x asyncio's throughput per core), asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# How late a timer may fire on an idle loop for its clock alone: libuv (uvloop) keeps timers
# in whole milliseconds, and asyncio's epoll selector rounds its timeout up to one.
_TIMER_RESOLUTION_NS = 1_000_000


@dataclass(slots=True)
class _BlockingLoop:
    """What a blocking loop calls and how it tells the outcome; where it got to."""

    call: Callable[[int], object]  # seq -> a mark or a result
    failed: Callable[[Exception], OpResult]  # what `call` raised, as its result
    ok_mark: object  # the object `call` returns for a plain OK (told by identity)
    rejected_mark: object
    # (execute, args): `call` is `execute(*args)` told by rowcount (stores.base.rowcount_step)
    statement: tuple[Callable[..., Any], tuple[Any, ...]] | None = None
    offset: int = 0
    seq: int = 0


class _RunQueueWait:
    """How long the calling thread has waited on a run queue for a core (ns, so far): the
    second field of Linux's /proc/thread-self/schedstat. No library reads it (psutil gives a
    process's CPU times, not its run-queue delay); the file is opened once and re-read with
    pread (~1.3 µs here)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def of_this_thread(cls) -> _RunQueueWait | None:
        """None where the kernel does not say (not Linux, or built without schedstats)."""
        try:
            fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            return None
        reader = cls(fd)
        try:
            reader.read()
        except (OSError, IndexError, ValueError):
            reader.close()
            return None
        return reader

    def read(self) -> int:
        return int(os.pread(self.fd, 128, 0).split()[1])

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# Why _blocking_loop.run returned (racebench/engine/_blocking_loop.c).
_C_FULL, _C_OTHER, _C_RAISED = 1, 3, 4


def _int64_arrays(*counters: object) -> bool:
    """The C loop writes the shared counters through the buffer protocol: arrays of int64
    (a RawArray, an array('q')); anything else takes the Python loop."""
    try:
        return all(memoryview(c).itemsize == 8 for c in counters)  # type: ignore[arg-type]
    except TypeError:
        return False


def _unused(exc: Exception) -> OpResult:
    raise AssertionError("an Operation returns its failures; it does not raise them") from exc


def _raise_fd_limit(clients: int) -> None:
    # Each client holds a socket (a lean SQL client also the driver's own descriptor of the
    # same session) and its history file's mapping.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 3 * clients + 256))
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class _ClientSlot:
    """One client's recording state: its history file and its error-message table."""

    __slots__ = ("client", "messages", "offset", "quota", "recorder", "seq")

    def __init__(self, client: int, quota: int | None, workdir: Path) -> None:
        self.client = client
        self.quota = quota if quota is not None else 2**62
        self.recorder = Recorder(workdir / f"client-{client}.bin")
        self.messages: dict[str, int] = {}
        self.offset = 0
        self.seq = 0


class _Sink:
    """One client's `OperationSink` (racebench.guards): what `closed_loop` does around each
    operation, for a loop run from the driver's reply callbacks instead of a task."""

    __slots__ = ("cid", "control", "deadline", "done", "inflight", "slot", "worker")

    def __init__(self, worker: _Worker, slot: _ClientSlot) -> None:
        self.worker, self.slot, self.control = worker, slot, worker.control
        self.inflight, self.done = worker.control.probe.inflight, worker.control.done
        self.cid = slot.client
        self.deadline = worker.deadline or 2**62

    def first(self) -> int:
        slot, worker = self.slot, self.worker
        if slot.seq >= slot.quota or worker.stop:
            return 0
        start = time.monotonic_ns()
        if start >= self.deadline:
            worker.stop = True
            return 0
        self.inflight[self.cid] = start
        return start

    def complete(
        self, start: int, outcome: int, written: int = 0, message: str | None = None
    ) -> int:
        # closed_loop's recording, inlined again: this runs once per operation.
        end = time.monotonic_ns()
        slot = self.slot
        cid = self.cid
        error_index = -1
        if message is not None:
            error_index = slot.messages.setdefault(message, len(slot.messages))
            if outcome == Outcome.ERROR:
                self.control.add_error(cid)
        recorder = slot.recorder
        offset = slot.offset
        # No values, as the general path records none for an atomic command (`written`,
        # INCRBY's reply, would give written and read = written - delta if it ever should).
        RECORD.pack_into(recorder.buffer, offset, start, end, 0, 0, 0, outcome, 0,
                         error_index, start, NO_VALUE, NO_VALUE)  # fmt: skip
        offset += RECORD.size
        seq = slot.seq = slot.seq + 1
        slot.offset = offset
        self.done[cid] = seq
        if offset == recorder.capacity_bytes:
            recorder.grow()
        if seq >= slot.quota or self.worker.stop:
            self.inflight[cid] = 0
            return 0
        start = time.monotonic_ns()
        if start >= self.deadline:
            self.worker.stop = True
            self.inflight[cid] = 0
            return 0
        self.inflight[cid] = start
        return start


class _Worker:
    """The worker's run phase: client loops, scheduler, lag sampler, figures."""

    def __init__(self, spec: WorkerSpec, control: WorkerControl) -> None:
        self.spec = spec
        self.control = control
        self.slots = {
            c: _ClientSlot(c, q, spec.workdir)
            for c, q in zip(spec.clients, spec.quotas, strict=True)
        }
        self.deadline: int | None = None
        self.stop = False
        # Event-loop lag samples, µs -> count: a Counter per sample, the HDR histogram once
        # at the end (hdrh's record_value is pure Python, dearer than the sample itself).
        self.lag_us: Counter[int] = Counter()
        self.lag_parts_us = {"computing": 0, "waiting_for_core": 0, "blocked": 0}
        self.runqueue_wait: _RunQueueWait | None = None
        self.late = 0
        self.dropped = 0
        # The worker's CPU time and wall time between the start and the end of the run.
        self.cpu0 = self.cpu_s = self.wall_s = 0.0
        self.lag_timer: asyncio.TimerHandle | None = None

    def _record(self, slot: _ClientSlot, intended: int, start: int, result: OpResult) -> None:
        end = time.monotonic_ns()
        self._pack_result(slot, slot.recorder.buffer, slot.offset, intended, start, end, result)
        slot.offset += RECORD.size
        slot.seq += 1
        self.control.done[slot.client] = slot.seq
        if slot.offset == slot.recorder.capacity_bytes:
            slot.recorder.grow()

    def _over(self) -> bool:
        """Whether the run is over: told to stop, or past the deadline."""
        if self.stop:
            return True
        if self.control.stopping() or (
            self.deadline is not None and time.monotonic_ns() >= self.deadline
        ):
            self.stop = True
        return self.stop

    async def callback_closed_loop(self, slot: _ClientSlot, client: OpenedClient) -> None:
        """The closed loop from the driver's reply callbacks (no task or future per
        operation); when it hands back, one operation on the general path, then again."""
        run_callbacks = client.callback_loop
        assert run_callbacks is not None
        sink = _Sink(self, slot)
        while not await run_callbacks(sink):
            seq = slot.seq
            await self.closed_loop(slot, client, limit=1)
            if slot.seq == seq:  # nothing started: the run is over
                return

    async def closed_loop(
        self, slot: _ClientSlot, client: OpenedClient, limit: int | None = None
    ) -> None:
        """Start the next operation as soon as the previous one completed.

        The hottest loop of racebench: `_over` and `_record` are inlined and everything it
        touches is a local, since each method call costs about as much as the recording.
        The shared stop flag is not read here but by `sample_lag`, every 10 ms, which sets
        `self.stop`; the deadline is checked against the start time read anyway.
        `limit`: at most that many operations (a callback loop's hand-back).
        """
        operation = client.operation
        control = self.control
        inflight, done = control.probe.inflight, control.done
        cid, quota, deadline = slot.client, slot.quota, self.deadline or 2**62
        if limit is not None:
            quota = min(quota, slot.seq + limit)
        monotonic_ns, pack, size = time.monotonic_ns, RECORD.pack_into, RECORD.size
        recorder = slot.recorder
        buffer, offset, seq = recorder.buffer, slot.offset, slot.seq
        while seq < quota and not self.stop:
            start = monotonic_ns()
            if start >= deadline:
                self.stop = True
                break
            inflight[cid] = start
            outcome, retries, cs_start, cs_end, token, read, written, message = await operation(seq)
            end = monotonic_ns()
            error_index = -1
            if message is not None:
                error_index = slot.messages.setdefault(message, len(slot.messages))
                if outcome == Outcome.ERROR:
                    control.add_error(cid)
            pack(buffer, offset, start, end, cs_start, cs_end, token, outcome, retries,
                 error_index, start, read, written)  # fmt: skip
            offset += size
            seq += 1
            slot.offset, slot.seq = offset, seq
            done[cid] = seq
            inflight[cid] = 0  # after `done`: see blocking_closed_loop
            if offset == recorder.capacity_bytes:
                buffer = recorder.grow()

    def blocking_closed_loop(self, slot: _ClientSlot, client: OpenedClient) -> None:
        """The closed loop of a blocking driver, on the client's own thread: no per-operation
        hop between the loop and the thread, so a blocking store runs at its native pace.

        An embedded SQLite statement takes ~6.5 µs, so every line here shows in
        benchmarks/overhead.py. A step that leaves only its outcome (`DirectStep`) is called
        directly, without the Operation around it; its `OK_STEP` / `REJECTED_STEP`, like an
        Operation's `OK_RESULT` / `REJECTED_RESULT` (the same object each time), are told by
        identity and recorded as a constant record with the times written in; anything else
        goes through `_pack_result`. The loop itself runs in C (`_blocking_loop`, built at
        install time) where it can, else in Python (`_python_blocking_loop`): the same
        records either way.
        """
        operation = client.blocking_operation
        assert operation is not None
        direct = direct_step(operation)
        loop = _BlockingLoop(operation, _unused, OK_RESULT, REJECTED_RESULT)
        if direct is not None:
            statement = getattr(direct.step, "statement", None)
            loop = _BlockingLoop(direct.step, direct.failed, OK_STEP, REJECTED_STEP, statement)
        control = self.control
        in_c = _blocking_loop is not None and _int64_arrays(control.done, control.probe.inflight)
        try:
            if in_c:
                self._c_blocking_loop(slot, loop)
            else:
                self._python_blocking_loop(slot, loop)
        finally:
            slot.offset, slot.seq = loop.offset, loop.seq

    def _c_blocking_loop(self, slot: _ClientSlot, loop: _BlockingLoop) -> None:
        """Runs of operations in C between looks at the deadline and the stop flags (once a
        millisecond, the deadline still exactly), a full segment, and any operation whose
        result is not a plain mark, which is recorded here."""
        assert _blocking_loop is not None
        control = self.control
        inflight, done, stopping = control.probe.inflight, control.done, control.stopping
        cid, quota, deadline = slot.client, slot.quota, self.deadline or 2**62
        execute, statement_args = loop.statement or (None, ())
        ok_record, rejected_record = outcome_record(Outcome.OK), outcome_record(Outcome.REJECTED)
        start_at, end_at, intended_at = TIMES_AT
        recorder, run, monotonic_ns = slot.recorder, _blocking_loop.run, time.monotonic_ns
        buffer, offset, seq = recorder.buffer, slot.offset, slot.seq
        try:
            while seq < quota:
                now = monotonic_ns()
                if now >= deadline or self.stop or stopping():
                    self.stop = True
                    break
                reason, seq, offset, start, end, result = run(
                    loop.call, execute, statement_args, seq, quota, min(now + 1_000_000, deadline),
                    buffer, offset, start_at, end_at, intended_at, loop.ok_mark, ok_record,
                    loop.rejected_mark, rejected_record, inflight, done, cid,
                )  # fmt: skip
                if reason == _C_FULL:
                    buffer = recorder.grow()
                elif reason in (_C_OTHER, _C_RAISED):
                    if reason == _C_RAISED:
                        result = loop.failed(result)
                    elif isinstance(result, StepResult):  # a direct step's rarer outcome
                        result = step_op_result(result)
                    self._pack_result(slot, buffer, offset, start, start, end, result)
                    offset += RECORD.size
                    seq += 1
                    done[cid] = seq
                    inflight[cid] = 0  # after the record counts: see _python_blocking_loop
        finally:
            loop.offset, loop.seq = offset, seq

    def _python_blocking_loop(self, slot: _ClientSlot, loop: _BlockingLoop) -> None:
        """The blocking loop where the C one is not built (or the counters are not arrays):
        the recording inlined; the deadline, the worker's and the shared stop flag (a read
        through ctypes) looked at once a millisecond."""
        call, failed, ok_mark, rejected_mark = (
            loop.call,
            loop.failed,
            loop.ok_mark,
            loop.rejected_mark,
        )
        control = self.control
        inflight, done, stopping = control.probe.inflight, control.done, control.stopping
        cid, quota, deadline = slot.client, slot.quota, self.deadline or 2**62
        monotonic_ns, size, pack_times = time.monotonic_ns, RECORD.size, TIMES_RECORD.pack_into
        ok_middle, tail = constant_parts(Outcome.OK)
        rejected_middle, _ = constant_parts(Outcome.REJECTED)
        recorder = slot.recorder
        buffer, capacity = recorder.buffer, recorder.capacity_bytes
        offset, seq = slot.offset, slot.seq
        next_check = 0
        result: Any
        try:
            while seq < quota:
                start = monotonic_ns()
                if start >= next_check:
                    if start >= deadline or self.stop or stopping():
                        self.stop = True
                        break
                    next_check = min(start + 1_000_000, deadline)
                inflight[cid] = start
                try:
                    result = call(seq)
                except Exception as exc:  # only a direct step raises: an Operation returns it
                    result = failed(exc)
                end = monotonic_ns()
                if result is ok_mark:
                    pack_times(buffer, offset, start, end, ok_middle, start, tail)
                elif result is rejected_mark:
                    pack_times(buffer, offset, start, end, rejected_middle, start, tail)
                else:
                    if isinstance(result, StepResult):  # a direct step's rarer outcome
                        result = step_op_result(result)
                    self._pack_result(slot, buffer, offset, start, start, end, result)
                offset += size
                seq += 1
                done[cid] = seq
                # Cleared only once the record counts: a kill in between leaves an unknown
                # operation too many (ranges widen by one), never an applied one unrecorded.
                inflight[cid] = 0
                if offset == capacity:
                    buffer = recorder.grow()
                    capacity = recorder.capacity_bytes
        finally:
            loop.offset, loop.seq = offset, seq

    def _pack_result(
        self,
        slot: _ClientSlot,
        buffer: Any,
        offset: int,
        intended: int,
        start: int,
        end: int,
        result: OpResult,
    ) -> None:
        """Pack the record of any operation at `offset` (the open loop's, and the blocking
        loop's rarer path)."""
        outcome, retries, cs_start, cs_end, token, read, written, message = result
        error_index = -1
        if message is not None:
            error_index = slot.messages.setdefault(message, len(slot.messages))
            if outcome == Outcome.ERROR:
                self.control.add_error(slot.client)
        RECORD.pack_into(buffer, offset, start, end, cs_start, cs_end, token, outcome, retries,
                         error_index, intended, read, written)  # fmt: skip

    async def open_loop_client(
        self, slot: _ClientSlot, client: OpenedClient, due: asyncio.Queue[int | None]
    ) -> None:
        """Take intended start times off the queue; one that waited for a free client starts
        late, and its latency still counts from when it was due (wrk2's correction)."""
        operation = client.operation
        inflight = self.control.probe.inflight
        cid = slot.client
        while (intended := await due.get()) is not None:
            if self._over():
                self.dropped += 1
                continue
            start = inflight[cid] = time.monotonic_ns()
            if start - intended > LATE_NS:
                self.late += 1
            result = await operation(slot.seq)
            self._record(slot, intended, start, result)
            inflight[cid] = 0  # after the record counts: see blocking_closed_loop

    async def schedule(self, rate: RateSpec, due: asyncio.Queue[int | None], t0: int) -> None:
        """Put intended start times on the queue at the rate, whatever the clients do.

        The queue is bounded (`_OPEN_LOOP_BACKLOG_PER_CLIENT`): when every client is busy and
        a backlog of due operations waits, the schedule waits for a client to take one before
        queueing the next, whose intended start stays where the rate put it (its latency
        still counts from then). Unbounded, a rate beyond what the loop can even schedule
        (`--rate 1e9/s`) queued a million starts a second and never yielded to the clients,
        which started none; and a long overload held its whole backlog in memory.
        """
        gap_ns = 1e9 / rate.ops_per_s
        poisson = rate.arrival == "poisson"
        next_due = float(t0)
        remaining = sum(s.quota for s in self.slots.values())
        while remaining > 0 and not self._over():
            now = time.monotonic_ns()
            if next_due > now:
                await asyncio.sleep((next_due - now) / 1e9)
            await due.put(int(next_due))
            remaining -= 1
            next_due += random.expovariate(1.0) * gap_ns if poisson else gap_ns
        # Operations still queued when the run ends were never started: the clients count
        # them dropped. So are those that came due but never got into the full queue (for a
        # Poisson schedule, the expected number of them).
        end = min(time.monotonic_ns(), self.deadline or 2**62)
        if remaining > 0 and next_due <= end:
            self.dropped += min(remaining, int((end - next_due) // gap_ns) + 1)
        for _ in self.slots:
            await due.put(None)

    def sample_lag(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start sampling the loop's lag: how long something that became ready (a reply, a
        due operation) waits for the loop to get to it. Timer callbacks, not a coroutine: no
        task or future per sample.

        Every 10 ms a sample adds two parts. One full turn of the loop, timed by two chained
        `call_soon`s (the second waits behind everything the loop does in between: polling,
        every ready I/O callback), in µs. And the timer's own lateness, which catches a
        callback that held the loop, counted only as far as the loop's thread computed
        longer than the period meanwhile. A late timer is not always the loop's doing: both
        loops wait for timers in whole milliseconds (an idle uvloop's 10 ms timer fired
        0.25 ms late at the median, up to 1.5 ms), and a process woken from idle (a virtual
        CPU, a core taken by the server) starts late by milliseconds at the tail: counted
        whole, that put every 16-client PostgreSQL and MySQL run here over the 1 ms
        `client-bound` line (lag p99 1.9-2.2 ms, workers at 7-15% of a core; the turns
        alone: p99 0.06-0.28 ms).

        A sample past the line also says what the thread did meanwhile (`lag_parts_us`):
        computed (its CPU time in the turn, and the timer's counted lateness), waited on the
        run queue for a core (Linux's /proc/thread-self/schedstat), or neither: blocked in a
        call, or asleep. The verdict names the largest part, so a run slowed by the server's
        processes on the same cores is not told to add workers. Reading the two clocks at
        each turn costs ~3 µs per 10 ms sample.

        Also reads the shared stop flag for the closed loops, which do not (see closed_loop).
        `stop_sampling_lag` stops it.
        """
        period_ns, line_ns = int(_LAG_SAMPLE_S * 1e9), int(LAG_LINE_MS * 1e6)
        samples, stopping, monotonic_ns = self.lag_us, self.control.stopping, time.monotonic_ns
        thread_time_ns = time.thread_time_ns
        self.runqueue_wait = _RunQueueWait.of_this_thread()
        waited_ns = self.runqueue_wait.read if self.runqueue_wait else (lambda: 0)
        parts = self.lag_parts_us
        if self.runqueue_wait is None:
            parts.pop("waiting_for_core", None)
        expected = monotonic_ns() + period_ns
        cpu_then = thread_time_ns()

        def fired() -> None:
            loop.call_soon(turn, monotonic_ns())

        # A sample's callbacks may still be queued when sampling stops (the timer is
        # cancelled, they are not): they end there, before the run-queue file, closed, is read.
        def turn(fired_ns: int) -> None:
            if self.lag_timer is not None:
                loop.call_soon(ran, fired_ns, monotonic_ns(), thread_time_ns(), waited_ns())

        def ran(fired_ns: int, turn_ns: int, turn_cpu_ns: int, turn_waited_ns: int) -> None:
            nonlocal expected, cpu_then
            if self.lag_timer is None:
                return
            now, cpu_now = monotonic_ns(), thread_time_ns()
            late = max(0, fired_ns - expected - _TIMER_RESOLUTION_NS)
            late = min(late, max(0, cpu_now - cpu_then - period_ns))  # the loop's own part
            lag = late + now - turn_ns
            samples[max(1, lag // 1000)] += 1
            if lag > line_ns:
                computing = late + cpu_now - turn_cpu_ns
                waiting = waited_ns() - turn_waited_ns
                parts["computing"] += computing // 1000
                if "waiting_for_core" in parts:
                    parts["waiting_for_core"] += waiting // 1000
                parts["blocked"] += max(0, lag - computing - waiting) // 1000
            cpu_then = cpu_now
            if self.stop or stopping():
                self.stop = True
                return
            expected = now + period_ns
            self.lag_timer = loop.call_later(_LAG_SAMPLE_S, fired)

        self.lag_timer = loop.call_later(_LAG_SAMPLE_S, fired)

    def stop_sampling_lag(self) -> None:
        """Stop the sampler (a sample under way is dropped) and close its run-queue file."""
        if self.lag_timer is not None:
            self.lag_timer.cancel()
            self.lag_timer = None
        if self.runqueue_wait is not None:
            self.runqueue_wait.close()
            self.runqueue_wait = None

    def lag_histogram(self) -> HdrHistogram:
        """The lag samples as an HDR histogram (µs)."""
        histogram = new_histogram()
        for value, count in self.lag_us.items():
            histogram.record_value(value, count)
        return histogram

    async def watch_parent(self, parent: int) -> None:
        """Backstop for PR_SET_PDEATHSIG: leave when the parent is gone."""
        while not self.stop:
            if os.getppid() != parent:
                os._exit(1)
            await asyncio.sleep(_PARENT_CHECK_S)

    def _run_one(
        self, loop: asyncio.AbstractEventLoop, slot: _ClientSlot, client: OpenedClient
    ) -> Awaitable[None]:
        if client.blocking_operation is not None and self.spec.rate is None:
            return loop.run_in_executor(client.executor, self.blocking_closed_loop, slot, client)
        if client.callback_loop is not None:
            return self.callback_closed_loop(slot, client)
        return self.closed_loop(slot, client)

    async def run(self, clients: dict[int, OpenedClient], parent: int) -> None:
        loop = asyncio.get_running_loop()
        watcher = asyncio.ensure_future(self.watch_parent(parent))
        self.control.ready(self.spec.worker)
        self.deadline = await loop.run_in_executor(None, self.control.wait_start)
        t0 = time.monotonic_ns()
        self.cpu0 = time.process_time()
        rate = self.spec.rate
        # Loop lag measures racebench only when clients run on the loop; blocking clients'
        # threads would show the GIL they hold, which their own CPU share already tells.
        if rate is not None or any(c.blocking_operation is None for c in clients.values()):
            self.sample_lag(loop)
        if rate is None:
            loops = [self._run_one(loop, self.slots[c], clients[c]) for c in self.spec.clients]
        else:
            backlog = _OPEN_LOOP_BACKLOG_PER_CLIENT * max(1, len(clients))
            due: asyncio.Queue[int | None] = asyncio.Queue(backlog)
            loops = [self.schedule(rate, due, t0)]
            loops += [self.open_loop_client(self.slots[c], clients[c], due) for c in clients]
        try:
            await asyncio.gather(*loops)
        finally:
            self.stop = True
            self.cpu_s = time.process_time() - self.cpu0
            self.wall_s = (time.monotonic_ns() - t0) / 1e9
            watcher.cancel()
            self.stop_sampling_lag()


async def _open_all(spec: WorkerSpec, control: WorkerControl) -> dict[int, OpenedClient]:
    """Open the worker's clients, `_CONNECT_CONCURRENCY` (or the store's own limit) at a time.

    A fixed set of openers takes the next client from a shared iterator: cheaper per client
    than a coroutine each behind a semaphore (whose wake-ups cost more as waiters pile up),
    and at 4,000 clients a worker, what it spends per client is its start-up time.
    """
    clients: dict[int, OpenedClient] = {}
    failures: list[BaseException] = []
    pending = iter(spec.clients)

    async def opener() -> None:
        for client_id in pending:
            if failures:  # one failed: the run will not start, stop connecting
                return
            try:
                clients[client_id] = await spec.open_client(client_id, control.probe)
            except BaseException as exc:  # raised below, once the others are closed
                failures.append(exc)

    # A store may ask for fewer connects at once (a server that forks per session).
    limit = getattr(spec.open_client, "connect_concurrency", None) or _CONNECT_CONCURRENCY
    openers = min(limit, len(spec.clients))
    await asyncio.gather(*(opener() for _ in range(openers)))
    failure = failures[0] if failures else None
    if failure is not None:
        await _close_all(clients)
        raise failure
    return clients


async def _close_all(clients: dict[int, OpenedClient]) -> dict[str, int]:
    retry_codes: dict[str, int] = {}
    for client in clients.values():
        with contextlib.suppress(Exception):
            for code, n in (await client.close()).items():
                retry_codes[code] = retry_codes.get(code, 0) + n
        if client.executor is not None:
            client.executor.shutdown(wait=False)
    return retry_codes


def run_worker(spec: WorkerSpec, control: WorkerControl) -> WorkerOutput:
    """Connect the worker's clients, wait at the barrier, run them, hand back the output.

    Raises what opening a client raised (before the barrier was reached).
    """
    _raise_fd_limit(len(spec.clients))
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    worker = _Worker(spec, control)
    output = WorkerOutput(spec.worker)
    parent = os.getppid()
    try:
        clients = loop.run_until_complete(_open_all(spec, control))
        try:
            loop.run_until_complete(worker.run(clients, parent))
        finally:
            output.cpu_s, output.wall_s = worker.cpu_s, worker.wall_s
            output.retry_codes = loop.run_until_complete(_close_all(clients))
    finally:
        loop.close()
    for client, slot in worker.slots.items():
        slot.recorder.close()
        output.counts[client] = slot.seq
        output.errors[client] = list(slot.messages)
    output.lag_histogram = worker.lag_histogram().encode()
    output.late, output.dropped = worker.late, worker.dropped
    output.lag_parts_us = dict(worker.lag_parts_us)
    output.max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if spec.return_records:
        output.records = {
            c: np.fromfile(spec.workdir / f"client-{c}.bin", RECORD_DTYPE, count=n)
            for c, n in output.counts.items()
        }
    return output


def worker_process_main(spec: WorkerSpec, control: WorkerControl, parent: int) -> None:
    """Entry point of a forked worker process: run the worker, leave its output in a file."""
    die_with_parent()
    if os.getppid() != parent:  # the parent died between the fork and the prctl
        os._exit(1)
    # The parent owns Ctrl-C: it tells workers to stop through the control's stop flag.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sidecar = spec.workdir / f"worker-{spec.worker}.pkl"
    try:
        output: WorkerOutput | dict[str, Any] = run_worker(spec, control)
    except BaseException as exc:
        status = getattr(exc, "exit_status", ExitStatus.USAGE)
        message = str(exc) if isinstance(exc, RacebenchError) else f"{type(exc).__name__}: {exc}"
        output = {"startup_error": message, "exit_status": int(status)}
    tmp = sidecar.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(output))
    os.replace(tmp, sidecar)
    if isinstance(output, dict):
        control.failed(spec.worker)
