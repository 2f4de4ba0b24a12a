"""The history of a run: one fixed-size record per operation, like Jepsen's invoke/complete.

Clients write records into a memory-mapped file of their own, so recording an operation costs
one `pack_into` and no syscall or lock; records also survive a client killed mid-run. The
parent reads all files into numpy arrays for the checkers and metrics.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import IO

import numpy as np


class Outcome(IntEnum):
    """How one logical operation ended. Jepsen: OK is ok; UNKNOWN is info; the rest are fail."""

    OK = 0  # acknowledged: the write happened
    REJECTED = 1  # the business rule said no (out of stock, insufficient funds)
    CONFLICT = 2  # gave up after the allowed retries of a conflict (serialization, CAS)
    ERROR = 3  # a definite failure: nothing was written
    UNKNOWN = 4  # a timeout or lost connection mid-write: it may or may not have happened
    STALE = 5  # a fenced access carried an outdated token and the store refused it
    LOCK_TIMEOUT = 6  # the lock was not granted within the acquire timeout


OUTCOME_NAMES = {o: o.name.lower() for o in Outcome}

# start_ns, end_ns, cs_start_ns, cs_end_ns, token, outcome, retries, error index,
# intended_ns: when the operation was due (the open loop's schedule; = start_ns in a closed
# loop), from which latency is measured so that a stalled server is not hidden by clients
# that simply stopped sending (coordinated omission); and the values the operation read and
# wrote (NO_VALUE when it has none), whose meaning is the workload's (docs/results.md,
# "History records").
RECORD = struct.Struct("<qqqqqBxHiqqq")
RECORD_DTYPE = np.dtype(
    [
        ("start", "<i8"),
        ("end", "<i8"),
        ("cs_start", "<i8"),
        ("cs_end", "<i8"),
        ("token", "<i8"),
        ("outcome", "u1"),
        ("pad", "u1"),
        ("retries", "<u2"),
        ("error", "<i4"),
        ("intended", "<i8"),
        ("read", "<i8"),
        ("written", "<i8"),
    ]
)
assert RECORD_DTYPE.itemsize == RECORD.size
# "No value": an operation that read or wrote nothing (a failure before its read, an atomic
# statement whose server does not return the value). Stored values are bounded far below it
# (each store's `max_integer`, checked before a run).
NO_VALUE = -(2**63)
# The same record for an operation that left nothing but its times and outcome (an atomic
# statement applied or refused, no retry, no message): start, end, the constant middle
# (critical section, token, outcome, retries, error index), intended (= start), the
# constant values. Two byte strings instead of eight integers halve the packing, which
# showed against an embedded SQLite statement (benchmarks/overhead.py).
TIMES_RECORD = struct.Struct("<qq32sq16s")
assert TIMES_RECORD.size == RECORD.size


def constant_parts(outcome: int) -> tuple[bytes, bytes]:
    """The middle and tail of TIMES_RECORD for an operation that ended in `outcome`."""
    record = outcome_record(outcome)
    return record[16:48], record[56:]


def outcome_record(outcome: int) -> bytes:
    """The whole record of an operation that ended in `outcome` and left nothing but its
    times, with 0 for them: the C loop copies it and writes the times at TIMES_AT."""
    return RECORD.pack(0, 0, 0, 0, 0, outcome, 0, -1, 0, NO_VALUE, NO_VALUE)


# Where TIMES_RECORD's start, end and intended start lie in a record.
TIMES_AT = (0, 8, 48)


_SEGMENT_RECORDS = 65536
# The first segment is small, so that thousands of clients of one worker map little memory.
_FIRST_SEGMENT_RECORDS = 1024


class Recorder:
    """A client's memory-mapped history file, grown by segments (doubling up to 64 Ki).

    The client's loop packs records straight into `buffer` (RECORD.pack_into at a running
    offset) and calls `grow()` when the offset reaches `capacity_bytes`: a method call per
    record costs as much as the packing itself, which racebench measures in its own figures.
    """

    def __init__(self, path: Path) -> None:
        self._file = open(path, "w+b")  # noqa: SIM115 - lives as long as the client
        self.capacity_bytes = 0
        # Always a mapping (never None) so that the hot loop packs into it without a check.
        self.buffer = self._map_next_segment()

    def _map_next_segment(self) -> mmap.mmap:
        records = self.capacity_bytes // RECORD.size
        step = min(_SEGMENT_RECORDS, max(_FIRST_SEGMENT_RECORDS, records))
        self.capacity_bytes += step * RECORD.size
        self._file.truncate(self.capacity_bytes)
        return mmap.mmap(self._file.fileno(), self.capacity_bytes)

    def grow(self) -> mmap.mmap:
        """Extend the file by one segment; return the new mapping (the old one is closed)."""
        self.buffer.close()
        self.buffer = self._map_next_segment()
        return self.buffer

    def close(self) -> None:
        if not self.buffer.closed:
            self.buffer.close()
        self._file.close()


def append_record(path: Path, index: int, start: int, end: int) -> None:
    """Write record `index` of a dead client's file: an operation with an unknown outcome."""
    with open(path, "r+b") as out:
        out.seek(index * RECORD.size)
        out.write(
            RECORD.pack(start, end, 0, 0, 0, Outcome.UNKNOWN, 0, -1, start, NO_VALUE, NO_VALUE)
        )


@dataclass
class RunHistory:
    """All operations of one run (one trial), as columns; `client` and `seq` identify each."""

    records: np.ndarray  # RECORD_DTYPE
    client: np.ndarray  # int32, which client ran it
    seq: np.ndarray  # int64, the client's operation number
    errors: list[str]  # error messages, indexed by records["error"]

    @classmethod
    def load(cls, files: list[tuple[Path, int, list[str]]]) -> RunHistory:
        """Read (file, valid record count, error messages) of each client, in client order.

        Records are read straight into one preallocated array: the parent holds each
        operation once (1M operations: ~72 MB of records, plus client and seq columns).
        """
        total = sum(count for _, count, _ in files)
        records = np.empty(total, dtype=RECORD_DTYPE)
        clients = np.empty(total, dtype=np.int32)
        seqs = np.empty(total, dtype=np.int64)
        errors: list[str] = []
        filled = 0
        for client_id, (path, count, client_errors) in enumerate(files):
            if not count:
                continue
            with open(path, "rb") as source:
                # .data: the array's memoryview, a buffer to the type checker as well.
                read = source.readinto(records[filled : filled + count].view(np.uint8).data)
            n = read // RECORD.size
            part = records[filled : filled + n]
            has_error = part["error"] >= 0
            client_errors = list(client_errors)
            if has_error.any():
                # A client killed mid-run leaves records but not its message table.
                missing = int(part["error"].max()) + 1 - len(client_errors)
                client_errors += ["(message lost with its client)"] * max(0, missing)
                part["error"][has_error] += len(errors)
            errors.extend(client_errors)
            clients[filled : filled + n] = client_id
            seqs[filled : filled + n] = np.arange(n, dtype=np.int64)
            filled += n
        return cls(records[:filled], clients[:filled], seqs[:filled], errors)

    def __len__(self) -> int:
        return len(self.records)

    def count(self, outcome: Outcome) -> int:
        return int(np.count_nonzero(self.records["outcome"] == outcome))

    def outcome_counts(self) -> dict[str, int]:
        counts = np.bincount(self.records["outcome"], minlength=len(Outcome))
        return {OUTCOME_NAMES[o]: int(counts[o]) for o in Outcome}

    def acknowledged_ops(self) -> list[tuple[int, int]]:
        ok = self.records["outcome"] == Outcome.OK
        return list(zip(self.client[ok].tolist(), self.seq[ok].tolist(), strict=True))

    def critical_sections(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(client, start, end) of every critical section that was entered."""
        entered = self.records["cs_start"] > 0
        return (
            self.client[entered],
            self.records["cs_start"][entered],
            self.records["cs_end"][entered],
        )

    def error_messages(self, limit: int = 5) -> dict[str, int]:
        """The most frequent error messages with their counts."""
        idx = self.records["error"]
        idx = idx[idx >= 0]
        if not len(idx):
            return {}
        values, counts = np.unique(idx, return_counts=True)
        tally: dict[str, int] = {}
        for v, c in zip(values.tolist(), counts.tolist(), strict=True):
            tally[self.errors[v]] = tally.get(self.errors[v], 0) + c
        return dict(sorted(tally.items(), key=lambda kv: -kv[1])[:limit])

    def iter_json(self, base: Mapping[str, object], kind: str, t0_ns: int) -> Iterator[str]:
        """JSON lines, one per operation, ordered by start; times are relative to `t0_ns`."""
        order = np.argsort(self.records["start"], kind="stable")
        for i in order.tolist():
            r = self.records[i]
            line: dict[str, object] = {
                **base,
                "client": int(self.client[i]),
                "seq": int(self.seq[i]),
                "kind": kind,
                "start_ns": int(r["start"]) - t0_ns,
                "end_ns": int(r["end"]) - t0_ns,
                "outcome": OUTCOME_NAMES[Outcome(int(r["outcome"]))],
                "retries": int(r["retries"]),
            }
            if r["cs_start"]:
                line["cs_start_ns"] = int(r["cs_start"]) - t0_ns
                line["cs_end_ns"] = int(r["cs_end"]) - t0_ns
            if r["token"]:
                line["token"] = int(r["token"])
            if r["error"] >= 0:
                line["error"] = self.errors[int(r["error"])]
            if r["read"] != NO_VALUE:
                line["read"] = int(r["read"])
            if r["written"] != NO_VALUE:
                line["written"] = int(r["written"])
            yield json.dumps(line)

    def write_json_lines(
        self, out: IO[str], base: Mapping[str, object], kind: str, t0: int
    ) -> None:
        for line in self.iter_json(base, kind, t0):
            out.write(line)
            out.write("\n")
