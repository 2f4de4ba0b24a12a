"""Scenario loading: environment expansion, matrix expansion, overrides, redaction."""

from __future__ import annotations

import pytest

from racebench.config.scenario import expand
from racebench.errors import ScenarioError
from racebench.util.redact import redact, redact_text


def test_env_vars_expand_with_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RB_DB", "/tmp/set.db")
    data = {"workload": {"type": "stock"}, "store": {"url": "${RB_DB}"}, "name": "${RB_NAME:-x}"}
    [spec] = expand(data, "s.yaml")
    assert spec.scenario.store.url == "/tmp/set.db"
    assert spec.scenario.name == "x"


def test_matrix_expands_in_order_listed_with_labels() -> None:
    data = {
        "name": "m",
        "workload": {"type": "likes"},
        "matrix": {"guard.strategy": ["none", "atomic"], "clients": [1, 4]},
    }
    specs = expand(data, "m.yaml")
    assert [s.label for s in specs] == [
        "m[guard.strategy=none,clients=1]",
        "m[guard.strategy=none,clients=4]",
        "m[guard.strategy=atomic,clients=1]",
        "m[guard.strategy=atomic,clients=4]",
    ]
    assert specs[3].params == {"guard.strategy": "atomic", "clients": 4}
    assert specs[3].scenario.clients == 4


def test_overrides_win_over_file_and_matrix() -> None:
    data = {"name": "o", "workload": {"type": "likes"}, "clients": 2, "matrix": {"clients": [1, 4]}}
    [spec] = expand(data, "o.yaml", {"clients": 8, "duration": "2s", "operations": None})
    assert spec.scenario.clients == 8
    assert spec.scenario.duration == 2.0
    assert spec.scenario.operations is None
    assert spec.label == "o"


def test_operations_default_and_impossible_numbers() -> None:
    [spec] = expand({"name": "d", "workload": {"type": "stock"}}, "d.yaml")
    assert spec.scenario.operations == 1000
    with pytest.raises(ScenarioError, match=r"operations: 4 is fewer than clients \(8\)"):
        expand(
            {"name": "d", "workload": {"type": "stock"}, "clients": 8, "operations": 4}, "d.yaml"
        )
    with pytest.raises(ScenarioError, match="warmup: 2s must be shorter than duration"):
        expand(
            {"name": "d", "workload": {"type": "stock"}, "duration": "1s", "warmup": "2s"}, "d.yaml"
        )


def test_passwords_are_redacted() -> None:
    assert redact_text("postgresql://bob:s3cr3t@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert redact_text("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact({"url": "mysql://root:pw@h/test", "password": "pw", "n": 1}) == {
        "url": "mysql://root:***@h/test",
        "password": "***",
        "n": 1,
    }


def test_an_empty_url_is_refused_not_taken_for_the_default() -> None:
    data = {"name": "u", "workload": {"type": "stock"}, "store": {"backend": "redis", "url": ""}}
    with pytest.raises(ScenarioError, match=r"u\.yaml: store\.url: String should have at least 1"):
        expand(data, "u.yaml")
