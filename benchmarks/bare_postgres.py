"""The bare psycopg loop that benchmarks/overhead.py compares racebench's postgres store with.

One connection opened as PostgresClient opens it, then the statement the `atomic` stock
strategy issues, `operations` times, on the counter table the store's setup() created.
"""

from __future__ import annotations

import psycopg

from racebench.stores.postgres import connect_args

STRATEGY = "atomic"


def bare_loop(url: str, namespace: str, operations: int) -> None:
    conninfo, kwargs = connect_args(url)
    with psycopg.connect(conninfo, **kwargs) as conn:
        cur = conn.cursor()
        sql = f"UPDATE {namespace}_counter SET value = value + %s WHERE id = 1 AND value + %s >= %s"
        for _ in range(operations):
            cur.execute(sql, (-1, -1, 0))
