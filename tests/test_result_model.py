"""The typed, versioned result model: committed /1 files read back, what the writer writes
reads back unchanged, an older version is upgraded, a newer one or a broken file is one line
(exit 2)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pytest

from racebench import result_model
from racebench.errors import ResultFileError
from racebench.output.results import build_document, read_result, result_document, to_json
from racebench.result_model import SCHEMA, ResultDocument, RunEntry
from tests.conftest import REPO, run_cli

GOLDEN = REPO / "tests" / "golden"
# Written by an older racebench (no settings, load, samples or trial sequence): what a
# reader must still take, with defaults for what that writer left out.
OLDER_V1 = GOLDEN / "gc-pause.json"
# Written through the typed model (tests/golden/writer-v1.yaml): every field of /1.
WRITER_V1 = GOLDEN / "writer-v1.json"


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.name)
def test_committed_v1_files_read_into_the_model(path: Path) -> None:
    document = read_result(path)
    assert document.result_schema == "racebench.result/1"
    raw = json.loads(path.read_text())
    assert [run.label for run in document.runs] == [run["label"] for run in raw["runs"]]
    for run, entry in zip(document.runs, raw["runs"], strict=True):
        assert run.latency_ms.p99 == entry["latency_ms"]["p99"]
        assert run.operations.attempted == entry["operations"]["attempted"]
        assert run.anomalies == entry["anomalies"]
        assert len(run.trials) == len(entry["trials"])


def test_an_older_v1_file_gets_defaults_for_what_its_writer_left_out() -> None:
    raw = json.loads(OLDER_V1.read_text())
    assert "settings" not in raw["runs"][0] and "load" not in raw["runs"][0]
    run = read_result(OLDER_V1).runs[0]
    assert run.settings is None and run.load is None and run.history_sample is None
    assert run.lease_renewal is False and run.arrival == "closed loop"
    assert [t.sequence for t in run.trials] == [0]
    assert run.strategy_label == "lock:redis_lock"


def test_what_the_writer_wrote_reads_back_unchanged() -> None:
    raw = json.loads(WRITER_V1.read_text())
    document = read_result(WRITER_V1)
    assert document.to_dict() == raw  # no field lost, renamed or added on the way
    assert json.loads(to_json(document)) == raw
    assert document.runs[0].anomaly_examples[0].ops  # the operations behind a lost update
    locked = document.runs[1]
    assert locked.strategy_label == "lock:file_lock+fencing"
    assert locked.lock is not None and locked.lock.acquisitions == 60
    assert locked.load is not None and locked.load.open_loop is not None
    assert locked.service_time_ms is not None and locked.settings is not None
    assert all(t.samples is not None for t in locked.trials)


def test_build_document_redacts_and_turns_numpy_figures_into_numbers() -> None:
    run = json.loads(WRITER_V1.read_text())["runs"][0]
    run["operations"]["attempted"] = np.int64(60)  # what a numpy sum gives the engine
    run["throughput_ops_s"] = np.float64(401.5)
    run["params"] = {"store.url": "postgresql://u:Sekret-4711@db:5432/x"}
    entry = RunEntry.model_validate(run, strict=False)
    document = build_document(
        source="s.yaml",
        raw={"name": "s"},
        runs=[entry],
        started_at=dt.datetime.now(dt.UTC),
        partial=False,
        servers={},
    )
    text = to_json(document)
    assert "Sekret-4711" not in text
    back = result_document("s.json", json.loads(text))
    assert back.runs[0].operations.attempted == 60
    assert back.runs[0].throughput_ops_s == 401.5
    assert back.result_schema == SCHEMA and back.trial_order[0].label == entry.label


def test_unknown_keys_of_a_newer_writer_are_kept() -> None:
    raw = json.loads(WRITER_V1.read_text())
    raw["runs"][0]["attributed_anomalies"] = [{"kind": "lost_updates", "operations": [3, 7]}]
    raw["host"]["kernel"] = "6.18"
    document = result_document("r.json", raw)
    assert document.to_dict() == raw


def test_an_older_version_is_upgraded_on_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a /2 that renamed a field, a /1 file reads through its upgrade."""

    def rename_verdict(document: dict) -> dict:
        for run in document["runs"]:
            run["outcome"] = run.pop("verdict")
        return {**document, "schema": "racebench.result/2"}

    monkeypatch.setattr(result_model, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(result_model, "UPGRADES", {1: rename_verdict})
    upgraded = result_model.upgraded(json.loads(OLDER_V1.read_text()))
    assert upgraded["schema"] == "racebench.result/2"
    assert [run["outcome"] for run in upgraded["runs"]] == ["ANOMALIES", "safe"]


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ("racebench.result/2", "'racebench.result/2', written by a newer racebench; this"),
        ("racebench.result/0", "'racebench.result/0': not a racebench result file"),
        ("racebench.report/1", "'racebench.report/1': not a racebench result file"),
        (None, "None: not a racebench result file"),
        (1, "1: not a racebench result file"),
    ],
)
def test_a_version_this_racebench_cannot_read_is_one_error(schema: object, message: str) -> None:
    raw = json.loads(OLDER_V1.read_text())
    raw["schema"] = schema
    with pytest.raises(ResultFileError, match=f"^r.json: schema is {re.escape(message)}"):
        result_document("r.json", raw)


def test_a_future_version_or_a_broken_file_is_one_line_exit_2(tmp_path: Path) -> None:
    newer = json.loads(WRITER_V1.read_text())
    newer["schema"] = "racebench.result/3"
    future = tmp_path / "future.json"
    future.write_text(json.dumps(newer))
    wrong = json.loads(WRITER_V1.read_text())
    wrong["runs"][0]["clients"] = "two"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(wrong))
    for path, problem in (
        (future, "schema is 'racebench.result/3', written by a newer racebench"),
        (broken, "runs[0].clients: input should be a valid integer"),
    ):
        proc = run_cli("report", str(path))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"racebench: {path}: {problem}"), lines[0]


def test_the_model_module_is_light() -> None:
    """The output layer imports the model, so it must not drag in the engine or numpy."""
    code = (
        "import sys, racebench.result_model;"
        "loaded = {m for m in sys.modules if m.startswith('racebench.') or m == 'numpy'};"
        "assert loaded == {'racebench.result_model'}, loaded"
    )
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_document_field_names_are_the_files() -> None:
    fields = set(ResultDocument.model_fields) - {"result_schema"}
    assert fields | {"schema"} == set(json.loads(WRITER_V1.read_text()))
