"""A checkout that reads the stock, then sells one unit: the plug-in example of racebench.

It runs on SQLite, PostgreSQL and MySQL through the autocommit DB-API connection racebench
hands it. The read and the write are separate statements, so concurrent checkouts sell the
same unit twice unless a strategy (a lock) serialises them.
"""

from __future__ import annotations

from typing import Any

from racebench.plugin import Check, Invariant, OperationContext, RunContext


def _sql(backend: str, text: str) -> str:
    """The statement with the driver's placeholder: `?` for sqlite3, `%s` otherwise."""
    return text.replace("?", "%s") if backend != "sqlite" else text


class Checkout:
    """Sell one unit per operation from `stock` units; never sell more than the stock."""

    backends = ("sqlite", "postgres", "mysql")

    def __init__(self, options: dict[str, Any]) -> None:
        unknown = set(options) - {"stock"}
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
        self.stock = int(options.get("stock", 100))

    def setup(self, conn: Any, run: RunContext) -> None:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE {run.namespace}_stock (id INTEGER PRIMARY KEY, units INTEGER)")
        cur.execute(f"CREATE TABLE {run.namespace}_orders (client INTEGER, seq INTEGER)")
        cur.execute(
            _sql(run.backend, f"INSERT INTO {run.namespace}_stock VALUES (1, ?)"), (self.stock,)
        )

    def operation(self, conn: Any, ctx: OperationContext) -> bool:
        cur = conn.cursor()
        cur.execute(f"SELECT units FROM {ctx.namespace}_stock WHERE id = 1")
        (units,) = cur.fetchone()
        ctx.pause()  # the race window between the read and the write
        if units < 1:
            return False  # out of stock: rejected
        cur.execute(
            _sql(ctx.backend, f"UPDATE {ctx.namespace}_stock SET units = ? WHERE id = 1"),
            (units - 1,),
        )
        cur.execute(
            _sql(ctx.backend, f"INSERT INTO {ctx.namespace}_orders VALUES (?, ?)"),
            (ctx.client, ctx.seq),
        )
        return True

    def check(self, conn: Any, run: RunContext, figures: dict[str, int]) -> Check:
        cur = conn.cursor()
        cur.execute(f"SELECT COUNT(*) FROM {run.namespace}_orders")
        (orders,) = cur.fetchone()
        oversold = max(0, orders - self.stock)
        return Check(
            invariants=[
                Invariant(
                    "never more orders than stock",
                    oversold == 0,
                    f"{orders} orders for {self.stock} units",
                )
            ],
            anomalies={"oversold_units": oversold},
        )

    def teardown(self, conn: Any, run: RunContext) -> None:
        cur = conn.cursor()
        for table in ("stock", "orders"):
            cur.execute(f"DROP TABLE IF EXISTS {run.namespace}_{table}")
