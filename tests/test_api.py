"""The Python API and the pytest plug-in: typed results, nothing printed, the fixture."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

import racebench
from racebench.errors import ScenarioError
from tests.conftest import REPO

SEATS = yaml.safe_load((REPO / "examples" / "seat-booking-unique.yaml").read_text())


def test_run_a_mapping_returns_a_typed_result_and_prints_nothing(
    capfd: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = racebench.run({**SEATS, "store": {"backend": "sqlite"}}, clients=4, operations=80)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert isinstance(result, racebench.Result)
    assert result.safe and result.passed
    (run,) = result.runs
    assert run.label == "seat-booking-unique"
    assert run.operations["attempted"] == 80
    assert run.invariants[0].name == "seat booked twice" and run.invariants[0].holds
    assert result.anomalies == {"seat booked twice": 0, "acknowledged booking missing": 0}
    assert result.result_path is None and list(tmp_path.iterdir()) == []
    assert "seat-booking-unique: safe (80 operations" in result.explain()


def test_run_a_file_writes_a_result_only_when_asked(tmp_path: Path) -> None:
    scenario = tmp_path / "seats.yaml"
    scenario.write_text(yaml.safe_dump({**SEATS, "store": {"backend": "sqlite"}}))
    output = tmp_path / "out.json"
    result = racebench.run(scenario, operations=40, output=output)
    assert result.result_path == output
    assert json.loads(output.read_text())["runs"][0]["verdict"] == "safe"


def test_a_bad_scenario_raises_the_same_error_the_cli_prints() -> None:
    with pytest.raises(ScenarioError, match=r"workload\.operation: required key is missing"):
        racebench.run({"workload": {"type": "sql", "invariants": [{"name": "x", "sql": "x"}]}})


def test_the_racebench_fixture_in_a_projects_own_tests(pytester: pytest.Pytester) -> None:
    racy = {**SEATS, "store": {"backend": "sqlite"}}
    racy["workload"] = {**SEATS["workload"], "setup": SEATS["workload"]["setup"][:1]}
    # Three seats and a 20 ms window between the count and the insert: eight clients that
    # start together double-book on any machine (rejected operations skip the window).
    racy["workload"]["params"] = {"seat": "random_int(1, 3)"}
    racy["race_window_ms"] = 20
    racy["name"] = "racy"
    pytester.makefile(".yaml", fixed=yaml.safe_dump({**SEATS, "store": {"backend": "sqlite"}}))
    pytester.makefile(".yaml", racy=yaml.safe_dump(racy))
    pytester.makepyfile(
        textwrap.dedent(
            """
            def test_fixed_is_safe(racebench):
                result = racebench.run("fixed.yaml", clients=4, operations=100)
                assert result.safe, result.explain()

            def test_racy_is_not(racebench):
                result = racebench.run("racy.yaml", clients=8, operations=400)
                assert result.safe, result.explain()
            """
        )
    )
    outcome = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    outcome.assert_outcomes(passed=1, failed=1)
    outcome.stdout.fnmatch_lines(
        [
            "*racy: UNEXPECTED*",
            "*invariant BROKEN: seat booked twice: * offending rows*",
            "*the strategy claims safety, yet the run showed anomalies*",
        ]
    )
