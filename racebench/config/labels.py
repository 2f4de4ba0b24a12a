"""Run labels: `name[key=value,...]`, one part per matrix key, unique by construction.

`compare` matches runs by label, so two runs that share one would let a regression in one
hide behind the other. A mapping-valued matrix entry (`{strategy: lock, fencing: true,
lock: {service: advisory}}`) is labelled by its main value (strategy, backend, service,
type or kind) plus, in parentheses, every other value that differs from an entry with the
same main value: `guard=lock` and `guard=lock(fencing=True)`. `expand` still refuses a
matrix whose labels collide (e.g. `1` and `"1"`).
"""

from __future__ import annotations

import json
from typing import Any

from racebench.errors import printable
from racebench.util.redact import redact_text

# The value that names a mapping entry best, in order of preference.
_MAIN_KEYS = ("strategy", "backend", "service", "type", "kind")
_MISSING = object()


def format_scalar(value: Any) -> str:
    """A matrix value in a label: str() for scalars (True, 5, stock), compact JSON otherwise."""
    if isinstance(value, dict | list):
        try:
            return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
        except TypeError:  # keys of mixed types (YAML allows `1: x` beside `a: y`)
            return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _leaves(value: dict[Any, Any], prefix: str = "") -> dict[str, Any]:
    """{"lock.service": "advisory", "fencing": True} from a nested mapping."""
    leaves: dict[str, Any] = {}
    for key, child in value.items():
        path = f"{prefix}{key}"
        if isinstance(child, dict) and child:
            leaves.update(_leaves(child, path + "."))
        else:
            leaves[path] = child
    return leaves


def _main_key(value: dict[Any, Any]) -> str | None:
    for key in _MAIN_KEYS:
        if key in value and not isinstance(value[key], dict | list):
            return key
    return None


def value_parts(values: list[Any]) -> list[str]:
    """The label part of each value of one matrix key, telling apart every pair that differs."""
    leaves = [_leaves(v) if isinstance(v, dict) else None for v in values]
    mains = [
        (key, v[key]) if isinstance(v, dict) and (key := _main_key(v)) else None for v in values
    ]
    parts = []
    for i, value in enumerate(values):
        own = leaves[i]
        if own is None:
            parts.append(format_scalar(value))
            continue
        main = mains[i]
        peers = [p for j, p in enumerate(leaves) if p is not None and mains[j] == main]
        main_key = main[0] if main else None
        shown = [
            f"{path}={format_scalar(v)}"
            for path, v in own.items()
            if path != main_key and any(p.get(path, _MISSING) != v for p in peers)
        ]
        if main is None:
            parts.append(f"({','.join(shown)})" if shown else format_scalar(value))
        else:
            text = format_scalar(main[1])
            parts.append(f"{text}({','.join(shown)})" if shown else text)
    return parts


def matrix_labels(matrix: dict[str, list[Any]]) -> dict[str, list[str]]:
    """Label parts per matrix key, index-aligned with the key's values."""
    return {key: value_parts(values) for key, values in matrix.items()}


def run_label(name: str, parts: list[tuple[str, str]]) -> str:
    """`name[k=v,...]`, with any password masked and control characters escaped."""
    label = printable(name)
    if parts:
        label += "[" + ",".join(printable(f"{k}={v}") for k, v in parts) + "]"
    return redact_text(label)
