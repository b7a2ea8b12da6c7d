"""SQL for a work order's operations (docs/routings.md), on the public views only:
`v_work_order_operations` and `v_wip` (sql/030_routings.sql)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row

from dashboards.queries import Database


@dataclass(frozen=True, slots=True)
class OperationRow:
    """One row of `v_work_order_operations`."""

    work_order: str
    product: str | None
    wo_qty: int | None
    position: int
    op: str
    name: str | None
    machines: list[str]
    ideal_cycle_seconds: float | None
    qty_in: int
    good: int
    scrap: int
    wip_before: int
    yield_: float | None
    status: str
    is_last: bool
    first_at: datetime | None
    last_at: datetime | None


@dataclass(frozen=True, slots=True)
class WipRow:
    """WIP of one product between two operations (`v_wip`, summed over work orders)."""

    product: str | None
    from_op: str
    to_op: str
    wip: int
    work_orders: int


_OPS_SQL = """
SELECT work_order, product, wo_qty, position, op, name, machines, ideal_cycle_seconds,
       qty_in, good, scrap, wip_before, yield AS yield_, status, is_last, first_at, last_at
FROM v_work_order_operations
WHERE order_no = %s
ORDER BY work_order, position
"""

_WIP_SQL = """
SELECT product, from_op, to_op, sum(wip)::bigint AS wip, count(*)::integer AS work_orders
FROM v_wip
WHERE order_no = %s
GROUP BY product, from_op, to_op
ORDER BY product, from_op, to_op
"""


def order_operations(db: Database, order_no: str) -> tuple[list[OperationRow], list[WipRow]]:
    """The order's routed work orders, operation by operation, and its WIP by product."""

    def query(conn: psycopg.Connection) -> tuple[list[OperationRow], list[WipRow]]:
        with conn.cursor(row_factory=class_row(OperationRow)) as cur:
            ops = cur.execute(_OPS_SQL, (order_no,)).fetchall()
        with conn.cursor(row_factory=class_row(WipRow)) as cur:
            wip = cur.execute(_WIP_SQL, (order_no,)).fetchall()
        return ops, wip

    return db.run(query)
