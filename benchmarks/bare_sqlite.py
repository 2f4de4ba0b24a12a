"""The bare-driver twin of racebench's `atomic` stock operation on SQLite."""

from __future__ import annotations

import sqlite3

STRATEGY = "atomic"


def bare_loop(url: str, namespace: str, operations: int) -> None:
    conn = sqlite3.connect(url, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    sql = (
        f"UPDATE {namespace}_counter SET value = value + ? "
        "WHERE id = 1 AND (? IS NULL OR value + ? >= ?)"
    )
    for _ in range(operations):
        conn.execute(sql, (-1, 0, -1, 0))
    conn.close()
