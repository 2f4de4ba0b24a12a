"""The small, safe expression language of a template's `when:` guards.

An expression compares and combines values bound by earlier steps (written `:name`, as in the
SQL) with numbers and strings: `:stock >= :quantity and :status == 'open'`. It is parsed with
Python's own `ast` after `:name` is rewritten, then every node is checked against a short
allow-list and evaluated by the interpreter below. Nothing is ever passed to `eval`: a call,
an attribute, a subscript or a bare name is refused when the scenario is loaded, before any
client runs.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# `:name` outside quotes; `::` (a PostgreSQL cast) is not a bound name.
_TOKENS = re.compile(r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|(?<![:\w]):([A-Za-z_]\w*)""")
# `:name` is not Python; it is rewritten to `_bound_name` so that `ast` can parse it.
_BOUND_PREFIX = "_bound_"
# Spelt as YAML and SQL spell them, since guards sit in YAML next to SQL.
_LITERAL_NAMES = {"true": True, "false": False, "null": None}

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_ARITHMETIC: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


class ExpressionError(ValueError):
    """An expression that is malformed or uses something outside the language."""


@dataclass(frozen=True)
class Expression:
    """A parsed, checked expression and the bound names it reads."""

    text: str
    tree: ast.expr
    names: frozenset[str]

    def evaluate(self, bound: Mapping[str, Any]) -> Any:
        """The expression's value with `bound` supplying every `:name`."""
        return _evaluate(self.tree, bound)


def _describe(node: ast.AST) -> str:
    """A refused node in the user's words, for the one-line scenario error."""
    kinds = {
        ast.Call: "a function call",
        ast.Attribute: "an attribute",
        ast.Subscript: "a subscript",
        ast.Lambda: "a lambda",
        ast.IfExp: "a conditional expression",
        ast.NamedExpr: "an assignment",
    }
    return kinds.get(type(node), f"{type(node).__name__}")


def parse_expression(text: str) -> Expression:
    """Parse `text`, refusing anything but comparisons, boolean logic and arithmetic."""

    def rewrite(match: re.Match[str]) -> str:
        return match.group(1) or _BOUND_PREFIX + match.group(2)

    # Quoted strings are matched first and kept, so a `:` inside 'a:b' is not a name.
    source = _TOKENS.sub(rewrite, text.strip())
    try:
        tree = ast.parse(source, mode="eval").body
    except SyntaxError:
        raise ExpressionError(f"not a valid expression: {text!r}") from None
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id.startswith(_BOUND_PREFIX):
                names.add(node.id.removeprefix(_BOUND_PREFIX))
            elif node.id not in _LITERAL_NAMES:
                raise ExpressionError(
                    f"{node.id!r} in {text!r}: a bound value is written :{node.id}"
                )
        elif isinstance(node, ast.Constant):
            # Bytes, complex numbers and `...` parse as constants too; nothing binds them.
            if not isinstance(node.value, int | float | str | bool | type(None)):
                raise ExpressionError(f"unsupported literal in {text!r}")
        elif isinstance(node, ast.Compare):
            if not all(type(op) in _COMPARE for op in node.ops):
                raise ExpressionError(f"only ==, !=, <, <=, >, >= compare in {text!r}")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _ARITHMETIC:
                raise ExpressionError(f"only + - * / // % are arithmetic in {text!r}")
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.Not | ast.USub | ast.UAdd):
                raise ExpressionError(f"unsupported operator in {text!r}")
        # An allow-list, not a deny-list: a node type a later Python adds is refused too.
        elif not isinstance(
            node, ast.BoolOp | ast.And | ast.Or | ast.Load | ast.cmpop | ast.operator | ast.unaryop
        ):
            raise ExpressionError(f"{_describe(node)} is not allowed in {text!r}")
    return Expression(text, tree, frozenset(names))


def _evaluate(node: ast.expr, bound: Mapping[str, Any]) -> Any:
    """Interpret a tree that parse_expression admitted (no other node type can reach here)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in _LITERAL_NAMES:
            return _LITERAL_NAMES[node.id]
        return bound[node.id.removeprefix(_BOUND_PREFIX)]
    if isinstance(node, ast.BoolOp):
        # Lazy, so it short-circuits like `and`/`or`, but yields a bool rather than an operand.
        values = (_evaluate(v, bound) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, bound)
        if isinstance(node.op, ast.Not):
            return not value
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp):
        return _ARITHMETIC[type(node.op)](_evaluate(node.left, bound), _evaluate(node.right, bound))
    assert isinstance(node, ast.Compare)
    # A chain (`0 < :n <= 10`) as Python reads it: each pair compared, all must hold.
    left = _evaluate(node.left, bound)
    for op, right_node in zip(node.ops, node.comparators, strict=True):
        right = _evaluate(right_node, bound)
        # An order comparison with NULL is not true, as in SQL (== and != may test for NULL).
        if (left is None or right is None) and type(op) not in (ast.Eq, ast.NotEq):
            return False
        if not _COMPARE[type(op)](left, right):
            return False
        left = right
    return True
