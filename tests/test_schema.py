"""`racebench schema`: the JSON Schema of scenario files, and the reference generated from it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from racebench.config.schema import scenario_json_schema, scenario_reference_markdown
from tests.conftest import REPO, cli_in_process


def test_the_scenario_reference_page_is_generated_from_the_schema() -> None:
    page = REPO / "docs" / "scenario-reference.md"
    assert page.read_text() == scenario_reference_markdown(), (
        "docs/scenario-reference.md is stale: racebench schema --format markdown > "
        "docs/scenario-reference.md"
    )


def test_schema_prints_a_json_schema_that_lists_every_top_level_key() -> None:
    result = cli_in_process("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["additionalProperties"] is False
    assert {"workload", "store", "guard", "clients", "matrix", "faults"} <= set(
        schema["properties"]
    )


def test_every_shipped_scenario_uses_only_keys_the_schema_knows() -> None:
    # Structural check against the schema's key sets: the same facts an editor would use.
    schema = scenario_json_schema()
    for path in sorted(Path(REPO / "scenarios").rglob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        unknown = set(data) - set(schema["properties"])
        assert not unknown, f"{path}: {unknown}"
