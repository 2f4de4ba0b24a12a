"""Read scenario YAML defensively: duplicate keys, alias bombs and binary files are refused.

PyYAML's safe loader shares one object between an anchor and its aliases, so loading a
billion-laughs file is cheap; whatever walks the result afterwards (`${VAR}` expansion, the
matrix copies, validation) visits every alias again and would take minutes and gigabytes.
The composed node graph is therefore measured first, memoized per node, and a document
that would expand beyond `MAX_EXPANDED_NODES` values (or nest deeper than `MAX_DEPTH`)
is refused before it is constructed.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_FILE_BYTES = 1 << 20
# A real scenario has a few hundred values; this leaves ample room for big matrices.
# Counted with aliases expanded, long strings weighing one per 100 characters.
MAX_EXPANDED_NODES = 100_000
MAX_DEPTH = 100
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlInputError(ValueError):
    """The text is not an acceptable scenario document; the message is one line."""


def measure(root: Node, limit: int) -> tuple[int, int]:
    """(size, depth) of the document once every alias is expanded; size stops past `limit`.

    Size counts nodes, a long string once per 100 characters (an alias to a 100 kB string
    repeated a thousand times is a bomb for everything that reads strings, like `${VAR}`
    expansion). Iterative, with one memo entry per distinct node, so a 9-level bomb costs
    9 steps and deep nesting cannot exhaust the Python stack. A node that contains itself
    (a recursive alias) expands forever: it counts as over the limit.
    """
    sizes: dict[int, tuple[int, int]] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if children_done:
            on_path.discard(key)
            own = 1 + (len(node.value) // 100 if isinstance(node.value, str) else 0)
            size = own + sum(sizes[id(c)][0] for c in children)
            depth = 1 + max((sizes[id(c)][1] for c in children), default=0)
            sizes[key] = (min(limit + 1, size), depth)
            continue
        if key in on_path:
            return limit + 1, len(on_path)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


# LibYAML's parser when PyYAML was built with it: 10-100 times faster than the pure-Python
# scanner, which needs seconds for a 100 kB string or a line of 3000 brackets.
_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _ScenarioLoader(_BaseLoader):
    """The safe loader, refusing duplicate keys and documents that nest or expand too far."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # `<<: *base` may override keys on purpose
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base constructor reports unhashable keys
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (lines {first_line[key]} and {line})",
                    key_node.start_mark,
                )
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        size, depth = measure(node, MAX_EXPANDED_NODES)
        if size > MAX_EXPANDED_NODES:
            raise YamlInputError(
                f"aliases expand to more than {MAX_EXPANDED_NODES:,} values (a YAML bomb?)"
            )
        if depth > MAX_DEPTH:
            raise YamlInputError(f"malformed YAML: nested deeper than {MAX_DEPTH} levels")
        return self.construct_document(node)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_yaml(data: bytes) -> Any:
    """Parse one scenario document; raise YamlInputError with a one-line reason."""
    if len(data) > MAX_FILE_BYTES:
        raise YamlInputError(f"file is larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlInputError(
            f"not a UTF-8 text file (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None
    try:
        return yaml.load(text, Loader=_ScenarioLoader)  # SafeConstructor: plain types only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlInputError(f"malformed YAML: {where}{_one_line(problem)}") from None
