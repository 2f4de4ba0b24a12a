"""The scenario file's JSON Schema (for editors) and the reference page generated from it.

Both come from the pydantic models that validate scenarios, so the reference cannot drift
from what `racebench validate` accepts: docs/scenario-reference.md is this module's output,
and a test fails when it is stale.
"""

from __future__ import annotations

import json
from typing import Any

# Keys of a scenario file that are not fields of one run: the matrix expands into runs.
_MATRIX_SCHEMA = {
    "type": "object",
    "description": "One run per combination of the listed values, in the order listed: "
    "keys are dotted paths to any key (guard.strategy, clients, faults.0.instances, ...).",
    "additionalProperties": {"type": "array", "minItems": 1},
}
# Durations are written as 250ms, 10s, 2m or 1h (or a number of seconds).
_DURATION = {
    "anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h)$"}]
}
_DURATION_KEYS = {"duration", "warmup", "at"}


def scenario_json_schema() -> dict[str, Any]:
    """The JSON Schema of a scenario file (what `racebench schema` prints)."""
    from racebench.config.scenario import Scenario

    schema = Scenario.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "racebench scenario"
    schema["properties"]["matrix"] = _MATRIX_SCHEMA
    # `name` defaults to the file's stem when the file leaves it out.
    schema["required"] = [k for k in schema.get("required", []) if k != "name"]
    for model in [schema, *schema.get("$defs", {}).values()]:
        for key, prop in model.get("properties", {}).items():
            if key in _DURATION_KEYS:
                prop.pop("anyOf", None)
                prop.pop("type", None)
                prop.update(_DURATION)
    return schema


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    return schema["$defs"][ref.rsplit("/", 1)[-1]]


def _type_of(schema: dict[str, Any], node: dict[str, Any]) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    if "$ref" in node:
        return node["$ref"].rsplit("/", 1)[-1]
    for union in ("anyOf", "oneOf"):
        if union in node:
            parts = [_type_of(schema, n) for n in node[union] if n.get("type") != "null"]
            return " \\| ".join(dict.fromkeys(parts))
    kind = node.get("type", "any")
    if kind == "array" and "items" in node:
        return f"list of {_type_of(schema, node['items'])}"
    return str(kind)


def _constraints(node: dict[str, Any]) -> str:
    words = []
    for key, sign in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        for variant in [node, *node.get("anyOf", [])]:
            if key in variant:
                words.append(f"{sign} {variant[key]}")
    return ", ".join(dict.fromkeys(words))


def _rows(schema: dict[str, Any], model: dict[str, Any], prefix: str) -> list[list[str]]:
    rows = []
    required = set(model.get("required", []))
    for key, prop in model.get("properties", {}).items():
        path = f"{prefix}{key}"
        value = prop.get("default")
        # A nested section's default is its keys' defaults, listed in the rows below it.
        default = "" if isinstance(value, dict) else json.dumps(value)
        if key in required or (key == "type" and "const" in prop):
            default = "required"
        elif path == "name":
            default = "the file's stem"
        description = prop.get("description", "").replace("\n", " ")
        rows.append([f"`{path}`", _type_of(schema, prop), default, _constraints(prop), description])
        target = _resolve(schema, next((n for n in prop.get("anyOf", []) if "$ref" in n), prop))
        if target is not prop and "properties" in target:
            rows += _rows(schema, target, f"{path}.")
    return rows


def _table(rows: list[list[str]]) -> list[str]:
    lines = ["| key | type | default | limits | meaning |", "|---|---|---|---|---|"]
    lines += [
        "| "
        + " | ".join(cell.replace("|", "\\|") if i == 4 else cell for i, cell in enumerate(row))
        + " |"
        for row in rows
    ]
    return lines


def scenario_reference_markdown() -> str:
    """docs/scenario-reference.md: every key of a scenario file, generated from the schema."""
    schema = scenario_json_schema()
    lines = [
        "# Scenario reference",
        "",
        "Generated from the schema that validates scenario files (`racebench schema --format "
        "markdown`); `racebench schema` prints the JSON Schema itself, for editors. Every key "
        "not listed here is refused.",
        "",
        "## Top level",
        "",
        *_table(_rows(schema, schema, "")),
    ]
    workload = schema["properties"]["workload"]
    for option in workload.get("oneOf", []):
        model = _resolve(schema, option)
        kind = model["properties"]["type"].get("const") or model["title"]
        lines += ["", f"## workload: `{kind}`", ""]
        if model.get("description"):
            lines += [model["description"].strip(), ""]
        lines += _table(_rows(schema, model, "workload."))
    faults = schema["properties"].get("faults", {})
    if "items" in faults:
        lines += ["", "## faults[]", ""]
        lines += _table(_rows(schema, _resolve(schema, faults["items"]), "faults[]."))
    return "\n".join(lines) + "\n"
