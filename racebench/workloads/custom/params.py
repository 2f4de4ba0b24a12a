"""What templates share: per-operation parameters and namespaced object names.

`params` are drawn fresh for every operation: `random_int(1, 100)` (inclusive), `client` (the
client's number), `seq` (the operation's number within its client), or a literal number or
string. Object names in a template are written `{{table:items}}` (SQL) or `{{key:hits}}`
(Redis) and become names under the run's namespace, which racebench drops at the end.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

_RANDOM_INT = re.compile(r"^random_int\(\s*(-?\d+)\s*,\s*(-?\d+)\s*\)$")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z]+)\s*:\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_ANY_PLACEHOLDER = re.compile(r"\{\{[^}]*\}\}")
RESERVED_NAMES = frozenset({"client", "seq", "token"})

# A parameter's value for (client, seq).
Draw = Callable[[int, int], Any]


def parse_param(name: str, spec: Any) -> Draw:
    """One `params` entry as a function of (client, seq); ValueError names what is wrong."""
    if name in RESERVED_NAMES:
        raise ValueError(f"{name!r} is always bound (:{name}); choose another name")
    if isinstance(spec, bool) or not isinstance(spec, int | float | str):
        raise ValueError(f"{name}: expected random_int(a, b), client, seq or a literal")
    if spec == "client":
        return lambda client, seq: client
    if spec == "seq":
        return lambda client, seq: seq
    if isinstance(spec, str) and (match := _RANDOM_INT.match(spec.strip())):
        low, high = int(match.group(1)), int(match.group(2))
        if low > high:
            raise ValueError(f"{name}: random_int({low}, {high}) is empty")
        return lambda client, seq: random.randint(low, high)
    if isinstance(spec, str) and "(" in spec:
        raise ValueError(f"{name}: unknown function in {spec!r} (known: random_int(a, b))")
    return lambda client, seq: spec


def parse_params(specs: dict[str, Any]) -> dict[str, Draw]:
    return {name: parse_param(name, spec) for name, spec in specs.items()}


def draw_params(draws: dict[str, Draw], client: int, seq: int) -> dict[str, Any]:
    """The bound names an operation starts with: its params, `client` and `seq`."""
    bound = {name: draw(client, seq) for name, draw in draws.items()}
    bound["client"] = client
    bound["seq"] = seq
    return bound


def namespaced(text: str, kind: str, render: Callable[[str], str], found: set[str]) -> str:
    """Replace `{{kind:name}}` with `render(name)`, adding each name to `found`.

    Any other `{{...}}` is refused, so a typo never reaches the server as literal text.
    """

    def substitute(match: re.Match[str]) -> str:
        if match.group(1) != kind:
            raise ValueError(f"unknown placeholder {match.group(0)} (known: {{{{{kind}:name}}}})")
        found.add(match.group(2))
        return render(match.group(2))

    result = _PLACEHOLDER.sub(substitute, text)
    if stray := _ANY_PLACEHOLDER.search(result):
        raise ValueError(f"malformed placeholder {stray.group(0)} (write {{{{{kind}:name}}}})")
    return result
