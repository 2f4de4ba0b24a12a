"""The bare PyMySQL loop that benchmarks/overhead.py compares racebench's mysql store with.

One connection opened as MysqlClient opens it (autocommit, no TLS on loopback), then the
statement the `atomic` stock strategy issues, `operations` times, on the counter table the
store's setup() created.
"""

from __future__ import annotations

import pymysql

from racebench.stores.mysql import connect_kwargs

STRATEGY = "atomic"


def bare_loop(url: str, namespace: str, operations: int) -> None:
    conn = pymysql.connect(**connect_kwargs(url))
    try:
        cur = conn.cursor()
        sql = f"UPDATE {namespace}_counter SET value = value + %s WHERE id = 1 AND value + %s >= %s"
        for _ in range(operations):
            cur.execute(sql, (-1, -1, 0))
    finally:
        conn.close()
