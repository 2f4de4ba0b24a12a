"""`--history-format jepsen`: EDN events that a real EDN parser reads as Jepsen's history."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path

import edn_format
import numpy as np
from edn_format import Keyword

from racebench.history import NO_VALUE, RECORD_DTYPE, Outcome, RunHistory
from racebench.output.history_edn import write_jepsen_edn
from tests.conftest import run_cli


def _parse(text: str) -> list[dict[str, object]]:
    """EDN maps -> dicts keyed by keyword name, with keyword values as their names."""

    def plain(value: object) -> object:
        return value.name if isinstance(value, Keyword) else value

    return [{k.name: plain(v) for k, v in event.items()} for event in edn_format.loads_all(text)]


def _history(ops: list[tuple[int, int, int, Outcome]], errors: list[str]) -> RunHistory:
    """Operations as (client, start, end, outcome); an error's index is its op's position."""
    records = np.zeros(len(ops), dtype=RECORD_DTYPE)
    records["start"] = [op[1] for op in ops]
    records["end"] = [op[2] for op in ops]
    records["outcome"] = [int(op[3]) for op in ops]
    records["error"] = [i if i < len(errors) else -1 for i in range(len(ops))]
    records["read"] = records["written"] = NO_VALUE
    clients = np.array([op[0] for op in ops], dtype=np.int32)
    seqs = np.array([sum(1 for o in ops[:i] if o[0] == op[0]) for i, op in enumerate(ops)])
    return RunHistory(records, clients, seqs.astype(np.int64), errors)


def test_outcomes_map_to_jepsen_types_and_info_retires_the_process() -> None:
    ops = [
        (0, 100, 150, Outcome.UNKNOWN),  # a timeout: process 0 may still be running it
        (1, 110, 130, Outcome.OK),
        (0, 200, 210, Outcome.OK),  # client 0's next operation: a fresh process, 0 + 2
        (1, 140, 160, Outcome.CONFLICT),
    ]
    out = io.StringIO()
    write_jepsen_edn(
        _history(ops, ['timed out "read"\nafter 5 s']), out, {"run": "r", "trial": 1}, "sale", 50, 2
    )
    events = _parse(out.getvalue())
    assert [(e["type"], e["process"], e["time"]) for e in events] == [
        ("invoke", 0, 50),
        ("invoke", 1, 60),
        ("ok", 1, 80),
        ("invoke", 1, 90),
        ("info", 0, 100),
        ("fail", 1, 110),
        ("invoke", 2, 150),
        ("ok", 2, 160),
    ]
    assert [e["index"] for e in events] == list(range(8))
    assert {e["f"] for e in events} == {"sale"}
    assert all(e["run"] == "r" and e["trial"] == 1 and e["value"] is None for e in events)
    info = events[4]
    assert info["error"] == 'timed out "read"\nafter 5 s' and info["outcome"] == "unknown"
    assert events[5]["outcome"] == "conflict"


def test_cli_writes_jepsen_edn_that_matches_the_result(tmp_path: Path) -> None:
    result_path, history_path = tmp_path / "q.json", tmp_path / "h.edn"
    proc = run_cli(
        "run",
        "scenarios/quickstart.yaml",
        "-q",
        "--operations",
        "80",
        "-o",
        str(result_path),
        "--history",
        str(history_path),
        "--history-format",
        "jepsen",
    )
    assert proc.returncode == 0, proc.stderr
    events = _parse(history_path.read_text())
    runs = json.loads(result_path.read_text())["runs"]
    for run in runs:
        mine = [e for e in events if e["run"] == run["label"]]
        invokes = [e for e in mine if e["type"] == "invoke"]
        completions = [e for e in mine if e["type"] != "invoke"]
        assert len(invokes) == len(completions) == 80
        assert sum(e["type"] == "ok" for e in completions) == run["operations"]["ok"]
        values = [_value(e) for e in completions if e["type"] == "ok"]
        if run["strategy"] == "atomic":  # one UPDATE: SQLite returns no value
            assert all(v is None for v in values)
        else:  # every sale read the stock and wrote one unit less
            assert all(v["write"] == v["read"] - 1 for v in values), values[:3]
        times = [e["time"] for e in mine]
        assert times == sorted(times)
        # Each process has at most one operation in flight, as Jepsen requires.
        in_flight: set[int] = set()
        for e in mine:
            if e["type"] == "invoke":
                assert e["process"] not in in_flight
                in_flight.add(e["process"])
            else:
                in_flight.remove(e["process"])
        assert not in_flight


def _value(event: dict[str, object]) -> object:
    """An event's :value with keyword keys as their names (nested maps too)."""
    value = event["value"]
    if isinstance(value, Mapping):  # edn_format's ImmutableDict is a Mapping, not a dict
        return {k.name: v for k, v in value.items()}
    return value


def test_completions_carry_the_values_each_workload_recorded() -> None:
    from racebench.workloads.rows import pack_transfer

    records = np.zeros(6, dtype=RECORD_DTYPE)
    records["start"] = np.arange(6) * 100
    records["end"] = records["start"] + 50
    records["error"] = -1
    records["read"] = [42, 30, 0, 120, 998, NO_VALUE]
    records["written"] = [41, -20, 3, pack_transfer(1, 3, 5), NO_VALUE, NO_VALUE]
    history = RunHistory(records, np.zeros(6, dtype=np.int32), np.arange(6, dtype=np.int64), [])
    expected = {
        "sale": {"read": 42, "write": 41},
        "withdraw": {"balance": 30, "withdraw": 20},
        "book": {"seat": 3, "seen": 0},
        "transfer": {"from": 1, "to": 3, "amount": 5, "from-balance": 120},
    }
    for index, (kind, value) in enumerate(expected.items()):
        out = io.StringIO()
        write_jepsen_edn(history, out, {}, kind, 0, 1)
        events = list(edn_format.loads_all(out.getvalue()))
        invoke, done = events[2 * index], events[2 * index + 1]
        assert invoke[Keyword("value")] is None  # values are learnt as the operation runs
        assert _value({"value": done[Keyword("value")]}) == value
    out = io.StringIO()
    write_jepsen_edn(history, out, {}, "transfer", 0, 1)
    *_, reader, _, nothing = [
        _value({"value": e[Keyword("value")]}) for e in edn_format.loads_all(out.getvalue())
    ]
    assert reader == {"total": 998} and nothing is None
