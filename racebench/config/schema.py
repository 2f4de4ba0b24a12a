"""The scenario file's JSON Schema (for editors) and the reference page generated from it.

Both come from the pydantic models that validate scenarios, so the reference cannot drift
from what `racebench validate` accepts: docs/scenario-reference.md is this module's output,
and a test fails when it is stale.
"""

from __future__ import annotations

import json
from typing import Any

from racebench.plugins.entry_points import FAULT_GROUP, LOCK_GROUP, STORE_GROUP

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
    return _with_durations(schema)


def _with_durations(schema: dict[str, Any]) -> dict[str, Any]:
    """Say that the duration keys take `250ms`, `10s`...: pydantic sees their parsed float."""
    # The models declare seconds (a float) and parse strings in a before-validator, so their
    # own schema would refuse `10s`; this states the accepted forms, and an editor flags
    # `10 sec` before a run does.
    for model in [schema, *schema.get("$defs", {}).values()]:
        for key, prop in model.get("properties", {}).items():
            if key in _DURATION_KEYS:
                prop.pop("anyOf", None)
                prop.pop("type", None)
                prop.update(_DURATION)
    return schema


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """The model a `$ref` points to (pydantic only emits local `#/$defs/Name` references)."""
    ref = node.get("$ref")
    if ref is None:
        return node
    return schema["$defs"][ref.rsplit("/", 1)[-1]]


def _type_of(schema: dict[str, Any], node: dict[str, Any]) -> str:
    """A property's type in words for the reference table.

    The `|` between alternatives is escaped because the text lands in a markdown table cell;
    `null` is left out of optional types, since the default column already shows it.
    """
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
    """Numeric bounds as `>= 1, <= 100`."""
    words = []
    for key, sign in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        # An optional field's bounds sit on its non-null variant inside `anyOf`.
        for variant in [node, *node.get("anyOf", [])]:
            if key in variant:
                words.append(f"{sign} {variant[key]}")
    return ", ".join(dict.fromkeys(words))


def _rows(schema: dict[str, Any], model: dict[str, Any], prefix: str) -> list[list[str]]:
    """One table row per key of `model`, nested sections flattened to dotted paths."""
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
        # An optional section is `anyOf: [$ref, null]`: follow the reference into its keys.
        target = _resolve(schema, next((n for n in prop.get("anyOf", []) if "$ref" in n), prop))
        if target is not prop and "properties" in target:
            rows += _rows(schema, target, f"{path}.")
    return rows


def _table(rows: list[list[str]]) -> list[str]:
    # Only the description is free text that may hold a `|`; the other cells are built here.
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
        *_table(
            [
                [row[0], _UNION_KEYS.get(row[0], row[1]), _DEFAULTS.get(row[0], row[2]), *row[3:]]
                for row in _rows(schema, schema, "")
            ]
        ),
    ]
    # The workload is a discriminated union on `type`: one section per kind, since each
    # kind has its own keys.
    workload = schema["properties"]["workload"]
    for option in workload.get("oneOf", []):
        model = _resolve(schema, option)
        kind = model["properties"]["type"].get("const") or model["title"]
        lines += ["", f"## workload: `{kind}`", ""]
        if model.get("description"):
            lines += [model["description"].strip(), ""]
        lines += _table(_rows(schema, model, "workload."))
    lines += _plugin_sections(STORE_GROUP, "store")
    lines += _plugin_sections(LOCK_GROUP, "guard.lock")
    lines += _plugin_sections(FAULT_GROUP, "faults[]")
    return "\n".join(lines) + "\n"


# The union keys: their type cell points to the sections, one per plug-in.
_UNION_KEYS = {
    "`store`": "one of the `store: <backend>` sections below",
    "`guard.lock`": "one of the `guard.lock: <service>` sections below",
    "`faults`": "list of the `faults[]: <kind>` sections below",
}


# Defaults the schema cannot show (a section built when it is left out).
_DEFAULTS = {"`store`": "backend sqlite"}


def _plugin_sections(group: str, prefix: str) -> list[str]:
    """A section per store, lock service or fault kind that racebench itself registers (the page
    must not depend on what else is installed; `racebench schema` shows those too)."""
    from racebench.config.scenario import plugin_models
    from racebench.plugins.entry_points import origin

    lines = []
    for name, model in plugin_models(group).items():
        if origin(group, name) != "racebench":
            continue
        schema = _with_durations(model.model_json_schema())
        lines += ["", f"## {prefix}: `{name}`", ""]
        if schema.get("description"):
            lines += [" ".join(schema["description"].split()), ""]
        lines += _table(_rows(schema, schema, f"{prefix}."))
    return lines
