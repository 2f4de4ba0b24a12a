"""Histories in Jepsen's EDN format, for Elle, Knossos and elle-cli.

Each operation becomes two events, as Jepsen records them: `{:type :invoke ...}` when it
started and `{:type :ok|:fail|:info ...}` when it ended, each with `:f` (the operation kind),
`:value`, `:process` and `:time` (nanoseconds since the run started). racebench's outcomes map
onto Jepsen's: ok is :ok; unknown (a timeout: it may have happened) is :info; every other
outcome (rejected, conflict, error, stale, lock_timeout) is a definite :fail.

Jepsen's rule for :info: the process that issued it may still be running that operation, so it
never invokes again; the next operation of that client gets a fresh process number (the old
one plus the number of clients), as Jepsen's own clients do after a crash.

`:value` is nil on invocations (racebench learns the values as the operation runs) and, on
completions, a map of what the operation read and wrote, by workload: `{:read 42, :write 41}`
(stock, likes, custom), `{:balance 30, :withdraw 20}`, `{:seat 3, :seen 0}` (bookings of the
seat the check counted), `{:from 1, :to 3, :amount 5, :from-balance 120}` for a transfer and
`{:total 998}` for a transfer reader; nil when it recorded none (it failed before reading, or
an atomic statement whose server returns no value).

One map per line, events ordered by time, with racebench's extras as further keys (`:run`,
`:trial`, `:client`, `:seq`, `:outcome`, `:retries`, `:token`, `:error`); Jepsen's checkers
ignore keys they do not know. The histories hold only keywords, integers, strings and nil,
so a dozen lines of printing do here what an EDN library would (and keep it a dev-only
dependency, used by the tests to parse what this writes).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO

import numpy as np

from racebench.history import NO_VALUE, OUTCOME_NAMES, Outcome, RunHistory
from racebench.workloads.rows import transfer_parts

_JEPSEN_TYPE = {o: ":fail" for o in Outcome} | {Outcome.OK: ":ok", Outcome.UNKNOWN: ":info"}
_NOT_KEYWORD = re.compile(r"[^A-Za-z0-9*+!_?<>=.-]")
EdnScalar = int | str | None | tuple[str]  # a 1-tuple: a keyword
EdnValue = EdnScalar | dict[str, EdnScalar]


def _keyword(name: str) -> str:
    return ":" + (_NOT_KEYWORD.sub("-", name) or "_")


def _string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def _value(value: EdnValue) -> str:
    """EDN for an int, a string, nil (None), a keyword (a 1-tuple holding its name), or a
    map of those under keyword keys."""
    if value is None:
        return "nil"
    if isinstance(value, dict):
        return _map(value)
    if isinstance(value, tuple):
        return _keyword(value[0])
    if isinstance(value, int):
        return str(value)
    return _string(value)


def _map(entries: dict[str, EdnValue] | dict[str, EdnScalar]) -> str:
    return "{" + ", ".join(f"{_keyword(k)} {_value(v)}" for k, v in entries.items()) + "}"


def operation_value(kind: str, read: int, written: int) -> dict[str, EdnScalar] | None:
    """The `:value` of a completion: what the operation read and wrote (module docstring)."""
    has_read, has_written = read != NO_VALUE, written != NO_VALUE
    if not (has_read or has_written):
        return None
    value: dict[str, EdnScalar] = {}
    if kind == "transfer" and not has_written:
        return {"total": read}
    if kind == "transfer":
        source, target, amount = transfer_parts(written)
        value = {"from": source, "to": target, "amount": amount}
        return value | ({"from-balance": read} if has_read else {})
    if kind == "book":
        value = {"seat": written} if has_written else {}
        return value | ({"seen": read} if has_read else {})
    read_name, written_name = ("balance", "withdraw") if kind == "withdraw" else ("read", "write")
    if has_read:
        value[read_name] = read
    if has_written:
        value[written_name] = -written if kind == "withdraw" else written
    return value


def iter_jepsen_edn(
    history: RunHistory, base: dict[str, EdnValue], kind: str, t0_ns: int, clients: int
) -> Iterator[str]:
    """One EDN map per event (invoke and completion of every operation), ordered by time."""
    records = history.records
    events: list[tuple[int, int, int, bool]] = []  # (time, op order, index, is completion)
    order = np.argsort(records["start"], kind="stable").tolist()
    crashes: dict[int, int] = {}  # client -> how many :info it has issued so far
    process = np.zeros(len(records), dtype=np.int64)
    for rank, i in enumerate(order):
        client = int(history.client[i])
        process[i] = client + crashes.get(client, 0) * clients
        if records["outcome"][i] == Outcome.UNKNOWN:
            crashes[client] = crashes.get(client, 0) + 1
        events.append((int(records["start"][i]), rank, i, False))
        events.append((int(records["end"][i]), rank, i, True))
    events.sort()
    for index, (time_ns, _, i, completion) in enumerate(events):
        r = records[i]
        outcome = Outcome(int(r["outcome"]))
        entry: dict[str, EdnValue] = {
            "index": index,
            "type": (_JEPSEN_TYPE[outcome][1:],) if completion else ("invoke",),
            "f": (kind,),
            "value": operation_value(kind, int(r["read"]), int(r["written"]))
            if completion
            else None,
            "process": int(process[i]),
            "time": time_ns - t0_ns,
            **base,
            "client": int(history.client[i]),
            "seq": int(history.seq[i]),
        }
        if completion:
            entry["outcome"] = (OUTCOME_NAMES[outcome],)
            entry["retries"] = int(r["retries"])
            if r["token"]:
                entry["token"] = int(r["token"])
            if r["error"] >= 0:
                entry["error"] = history.errors[int(r["error"])]
        yield _map(entry)


def write_jepsen_edn(
    history: RunHistory,
    out: IO[str],
    base: dict[str, EdnValue],
    kind: str,
    t0_ns: int,
    clients: int,
) -> None:
    """Write the history's events to `out`, one EDN map per line."""
    for line in iter_jepsen_edn(history, base, kind, t0_ns, clients):
        out.write(line)
        out.write("\n")
