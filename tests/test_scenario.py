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


def test_store_section_is_its_backends_own_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """`store:` is a union on `backend` built from each registered store's `config_model`: a
    store's own key is accepted for it alone, and named as another store's elsewhere."""
    from pydantic import Field, ValidationError, create_model

    from racebench.config import scenario
    from racebench.plugins.entry_points import STORE_GROUP, store_class
    from racebench.util.plugin_config import StoreConfig

    class RedisOnly(StoreConfig):
        database: int = Field(default=0, ge=0)

    monkeypatch.setattr(store_class("redis"), "config_model", RedisOnly)
    scenario.plugin_models.cache_clear()
    try:
        # The scenario's `store` key, rebuilt from the registry as it is now.
        section = scenario._plugin_union(STORE_GROUP, StoreConfig)
        model = create_model("S", store=(section, ...))
        assert (
            model.model_validate({"store": {"backend": "redis", "database": 3}}).store.database == 3
        )
        assert model.model_validate({"store": {}}).store.backend == "sqlite"  # the default
        with pytest.raises(ValidationError) as caught:
            model.model_validate({"store": {"backend": "postgres", "database": 3}})
        error = scenario._pydantic_error("s.yaml", caught.value, "")
        assert str(error) == "s.yaml: store.database: database is a key of redis, not of postgres"
    finally:
        scenario.plugin_models.cache_clear()


@pytest.mark.parametrize(
    ("store", "field", "problem"),
    [
        ({"backend": "oracle"}, "store.backend", "unknown backend 'oracle' (known: "),
        ({"backend": "redis", "bogus": 1}, "store.bogus", "unknown key"),
        ({"url": "x.db", "bogus": 1}, "store.bogus", "unknown key"),
        ("postgres", "store.backend", "expected a mapping with a string `backend`"),
    ],
)
def test_bad_store_section_is_one_line(store, field: str, problem: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        expand({"name": "s", "workload": {"type": "stock"}, "store": store}, "s.yaml")
    assert caught.value.field == field
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        # A key no backend has: the backend's own keys, so the fix is in the message.
        (
            {"store": {"backend": "sqlite", "path": "/tmp/x.db"}},
            "store.path",
            "unknown key (known for sqlite: url, proxy, servers)",
        ),
        (
            {"faults": [{"kind": "server_pause", "durration_ms": 100}]},
            "faults.0.durration_ms",
            "unknown key (known for server_pause: at, when, client, target, duration_ms)",
        ),
        ({"client": 4}, "client", "unknown key (did you mean clients?)"),
        ({"zzz": 4}, "zzz", "unknown key"),
    ],
)
def test_an_unknown_key_says_what_was_meant(raw: dict, field: str, message: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        expand({"name": "s", "workload": {"type": "stock"}} | raw, "s.yaml")
    assert caught.value.field == field
    assert str(caught.value) == f"s.yaml: {field}: {message}"
