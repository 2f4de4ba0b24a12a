"""Property-based fuzzing (hypothesis) of everything racebench reads from outside.

Scenario files (arbitrary bytes, arbitrary YAML documents, mutations of the shipped
scenarios) must end in "valid" or one RacebenchError (exit 2, one line), within a second
of CPU time and without growing memory by 200 MB; result files (mutations of a golden
result) given to report and compare must render or end in one RacebenchError, never an
internal error. The bulk calls the library in-process; two tests run the real CLI.

The suite keeps the budget small (a few seconds). Run longer with, e.g.:
    RACEBENCH_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_fuzz.py -q
"""

from __future__ import annotations

import copy
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from racebench.config.scenario import expand, load_raw
from racebench.errors import RacebenchError
from racebench.output.compare import compare_results
from racebench.output.compare_render import render_comparison
from racebench.output.report import render_report
from tests.conftest import REPO, run_cli

EXAMPLES = int(os.environ.get("RACEBENCH_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the bound below is CPU time, which other processes cannot inflate
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# A subprocess costs a second or two: the CLI checks get a twentieth of the examples.
CLI = settings(
    max_examples=max(2, EXAMPLES // 20), deadline=None, suppress_health_check=list(HealthCheck)
)
MAX_CPU_S = 1.0
MAX_GROWTH_KB = 200 * 1024

SCENARIOS = sorted((REPO / "scenarios").rglob("*.yaml"))
GOLDEN = REPO / "tests" / "golden" / "gc-pause.json"

# JSON-like values, the shape of both YAML documents and result files.
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["${HOME}", "${RB_UNSET}", "10s", "any", "lock", "stock", "sqlite", ""])
)
# YAML keys need not be strings (`1: x`, `null: x`, `true: x`).
keys = st.text(max_size=12) | st.integers() | st.booleans() | st.none()
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)


def _max_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@pytest.fixture(scope="module", autouse=True)
def _warm_imports() -> None:
    """Import every store and lock module once, so the first example is not charged for it."""
    for path in SCENARIOS:
        expand(load_raw(path), str(path))


def validate_bytes(tmp_path: Path, data: bytes) -> None:
    """What `racebench validate` does with a file, in-process: valid or one RacebenchError."""
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    rss_before = _max_rss_kb()
    started = time.process_time()
    try:
        expand(load_raw(path), str(path))
    except RacebenchError as error:
        assert str(error).startswith(str(path)), error
        assert "\n" not in str(error), error
    assert time.process_time() - started < MAX_CPU_S
    assert _max_rss_kb() - rss_before < MAX_GROWTH_KB


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON-like value (keys and list indexes)."""
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            found += _paths(child, (*prefix, i))
    return found


@st.composite
def mutated(draw: st.DrawFn, original: Any) -> Any:
    """`original` with a few random replacements, deletions and insertions."""
    document = copy.deepcopy(original)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(_paths(document)))
        if not path:
            continue
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "insert"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(keys)] = draw(values)
        else:
            parent.insert(path[-1], draw(values))
    return document


@st.composite
def mutated_scenarios(draw: st.DrawFn) -> Any:
    path = draw(st.sampled_from(SCENARIOS))
    return draw(mutated(yaml.safe_load(path.read_text())))


@FUZZ
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    validate_bytes(tmp_path, data)


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("ab:-[]{},&*!|>'\"#%@`\n ?.$0\t")), max_size=200))
def test_yaml_like_text(tmp_path: Path, text: str) -> None:
    validate_bytes(tmp_path, text.encode())


@FUZZ
@given(document=values)
def test_arbitrary_yaml_documents(tmp_path: Path, document: Any) -> None:
    validate_bytes(tmp_path, yaml.safe_dump(document).encode())


@FUZZ
@given(document=mutated_scenarios())
def test_mutated_scenarios(tmp_path: Path, document: Any) -> None:
    validate_bytes(tmp_path, yaml.safe_dump(document).encode())


@FUZZ
@given(document=mutated(json.loads(GOLDEN.read_text())))
def test_mutated_result_files_in_report_and_compare(tmp_path: Path, document: Any) -> None:
    path = tmp_path / "mutated.json"
    path.write_text(json.dumps(document))
    for render in (
        lambda: render_report([path], "markdown"),
        lambda: render_report([path, GOLDEN], "json"),
        lambda: render_comparison(compare_results(GOLDEN, path, 0.1), "text"),
        lambda: render_comparison(compare_results(path, GOLDEN, 0.1), "json"),
    ):
        try:
            render()
        except RacebenchError as error:
            assert "\n" not in str(error), error


def _assert_cli_outcome(proc, allowed: set[int]) -> None:
    assert proc.returncode in allowed, proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    if proc.returncode == 2:
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@CLI
@given(document=mutated_scenarios())
def test_cli_validate_mutated_scenario(tmp_path: Path, document: Any) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document))
    proc = run_cli("validate", str(path), timeout=30)
    _assert_cli_outcome(proc, {0, 2})
    if proc.returncode == 0:
        assert proc.stderr == ""


@CLI
@given(document=mutated(json.loads(GOLDEN.read_text())))
def test_cli_compare_mutated_result(tmp_path: Path, document: Any) -> None:
    path = tmp_path / "mutated.json"
    path.write_text(json.dumps(document))
    _assert_cli_outcome(run_cli("compare", str(GOLDEN), str(path), timeout=30), {0, 1, 2, 4})
