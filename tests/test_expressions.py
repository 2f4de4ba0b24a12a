"""The `when:` expression language: comparisons and arithmetic on bound values, nothing else."""

from __future__ import annotations

import re

import pytest

from racebench.workloads.custom.expressions import ExpressionError, parse_expression


@pytest.mark.parametrize(
    ("text", "bound", "expected"),
    [
        (":stock >= 1", {"stock": 1}, True),
        (":stock >= 1", {"stock": 0}, False),
        (
            ":stock - :qty >= 0 and :status == 'open'",
            {"stock": 3, "qty": 2, "status": "open"},
            True,
        ),
        ("not (:a < :b) or :a * 2 == 10", {"a": 5, "b": 9}, True),
        (":a // 2 + :a % 2", {"a": 7}, 4),
        ("1 <= :x < 10", {"x": 10}, False),
        (":x == null", {"x": None}, True),
        (":x >= 1", {"x": None}, False),  # as in SQL: NULL is not >= anything
        (":label == 'a:b'", {"label": "a:b"}, True),  # ':b' inside a string is text
        ("-:x > -5 and true", {"x": 3}, True),
    ],
)
def test_expressions_evaluate_on_bound_values(text: str, bound: dict, expected: object) -> None:
    assert parse_expression(text).evaluate(bound) == expected


def test_names_read_are_reported() -> None:
    assert parse_expression(":a + :b > :c").names == {"a", "b", "c"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("__import__('os').system('true')", "a function call"),
        (":x.__class__", "an attribute"),
        ("len(:x) > 1", "a function call"),
        (":x[0] == 1", "a subscript"),
        ("(lambda: 1)() == 1", "a function call"),
        ("stock >= 1", "a bound value is written :stock"),
        (":x if :y else :z", "a conditional expression"),
        ("[1, 2] == :x", "List"),
        (":x in (1, 2)", "only ==, !=, <, <=, >, >= compare"),
        (":x ** 99999", "only + - * / // % are arithmetic"),
        ("(:y := 1)", "an assignment"),
        ("~:x", "unsupported operator"),
        ("1 +", "not a valid expression"),
        ("b'x' == :x", "unsupported literal"),
    ],
)
def test_everything_else_is_refused(text: str, problem: str) -> None:
    with pytest.raises(ExpressionError, match=re.escape(problem)):
        parse_expression(text)
