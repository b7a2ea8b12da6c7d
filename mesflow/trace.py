"""Traceability queries, both ways (docs/traceability.md).

From a lot (material or production) to its work orders, orders and customers; from an
order to its lots, work orders, machines, operators, stops and inspections. Everything is
read from the public views of sql/024_traceability.sql (and sql/017's v_order_machine,
sql/032's v_inspections), with psycopg; times come back in the plant's time zone. Used by
the /trace page (dashboards/pages/trace.py) and the CRM API (collectors/crm_trace.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

import psycopg
from psycopg.rows import dict_row

Row = dict[str, Any]

LOT_ROWS = """
SELECT lot_kind, lot, material, qty, machine, ts, work_order, order_no, customer, product,
       operator
FROM v_lot_trace WHERE lot = %(lot)s
ORDER BY ts, seq"""

# What a material lot went into: the production lots of the work orders that used it
# (the recall question: "which finished lots hold material from this lot?").
LOT_PRODUCTS = """
SELECT DISTINCT p.lot, p.qty, p.machine, p.ts, p.work_order, p.order_no, p.customer
FROM v_lot_trace p
WHERE p.lot_kind = 'production'
  AND p.work_order IN (SELECT work_order FROM material_lot_use WHERE lot = %(lot)s)
ORDER BY p.ts, p.lot"""

# And the other way: the material lots of the work orders that made a production lot.
LOT_MATERIALS = """
SELECT DISTINCT m.lot, m.material, m.qty, m.machine, m.ts, m.work_order
FROM v_lot_trace m
WHERE m.lot_kind = 'material'
  AND m.work_order IN (SELECT work_order FROM production_lot WHERE lot = %(lot)s)
ORDER BY m.ts, m.lot"""

ORDERS_OF_LOT = """
SELECT DISTINCT t.order_no, t.customer, t.product, o.qty, o.due, o.status
FROM v_lot_trace t LEFT JOIN crm_order o USING (order_no)
WHERE t.lot = %(lot)s AND t.order_no IS NOT NULL
ORDER BY t.order_no"""

ORDER = """
SELECT o.order_no, o.customer, o.product, o.qty, o.due, o.status, o.priority,
       p.good, p.scrap, p.eta
FROM crm_order o LEFT JOIN order_progress p USING (order_no)
WHERE o.order_no = %(o)s
UNION ALL
SELECT p.order_no, p.customer, p.product, p.qty, p.due, p.status, p.priority,
       p.good, p.scrap, p.eta
FROM order_progress p
WHERE p.order_no = %(o)s AND NOT EXISTS (SELECT 1 FROM crm_order c WHERE c.order_no = %(o)s)"""

WORK_ORDERS = """
SELECT work_order, COALESCE(p.machine, w.machine) AS machine,
       COALESCE(p.product, w.product) AS product, COALESCE(p.qty, w.qty) AS qty,
       p.good, p.scrap, p.started_at, p.completed_at
FROM work_order w FULL JOIN work_order_progress p USING (work_order)
WHERE COALESCE(w.order_no, p.order_no) = %(o)s
ORDER BY work_order"""

ORDER_LOTS = """
SELECT lot_kind, lot, material, qty, machine, ts, work_order, operator
FROM v_lot_trace WHERE order_no = %(o)s
ORDER BY ts, seq"""

# Where it ran (v_order_machine: its work orders' machines, while it ran), and any other
# machine a lot of it was reported at.
MACHINES = """
SELECT machine, min(from_ts) AS from_ts, max(to_ts) AS to_ts
FROM (
    SELECT machine, from_ts, to_ts FROM v_order_machine WHERE order_no = %(o)s
    UNION ALL
    SELECT machine, ts, ts FROM v_lot_trace WHERE order_no = %(o)s
) m
GROUP BY machine ORDER BY machine"""

OPERATORS = """
SELECT operator, kind, machine, ts, work_order
FROM v_order_operators WHERE order_no = %(o)s
ORDER BY ts, seq"""

STOPS = """
SELECT s.machine, s.start_ts, s.end_ts, s.seconds, s.state, s.reason,
       r.name_en AS reason_en, r.name_zh AS reason_zh, s.is_open
FROM v_order_stops s LEFT JOIN reason_code r ON r.code = s.reason
WHERE s.order_no = %(o)s AND s.seconds > 0
ORDER BY s.start_ts, s.machine"""


# An order's inspections (sql/032): every report on one of its work orders, with what it
# measured and found.
INSPECTIONS = """
SELECT ts, stage, result, machine, work_order, operation, operator, sample_qty,
       characteristics, defects, note
FROM v_inspections
WHERE work_order IN (SELECT work_order FROM work_order WHERE order_no = %(o)s
                     UNION SELECT work_order FROM work_order_progress WHERE order_no = %(o)s)
ORDER BY ts, seq"""


@dataclass(frozen=True, slots=True)
class LotTrace:
    lot: str
    reports: list[Row]  # every report of the lot (material use or production)
    orders: list[Row]  # its orders and customers
    products: list[Row]  # production lots made by the work orders that used it
    materials: list[Row]  # material lots used by the work orders that made it

    @property
    def found(self) -> bool:
        return bool(self.reports)


@dataclass(frozen=True, slots=True)
class OrderTrace:
    order_no: str
    order: Row | None
    work_orders: list[Row]
    lots: list[Row]
    machines: list[Row]
    operators: list[Row]
    stops: list[Row]
    inspections: list[Row]

    @property
    def found(self) -> bool:
        return self.order is not None or bool(self.work_orders) or bool(self.lots)


SECTIONS = ("work_orders", "lots", "machines", "operators", "stops", "inspections")


def _local(rows: list[Row], tz: tzinfo) -> list[Row]:
    """Every time of `rows` in the plant's zone (the rows are fresh dicts: changed in place)."""
    for r in rows:
        for k, v in r.items():
            if isinstance(v, datetime):
                r[k] = v.astimezone(tz)
    return rows


def _rows(cur: psycopg.Cursor[Row], sql: str, params: dict[str, Any], tz: tzinfo) -> list[Row]:
    return _local(cur.execute(sql.encode(), params).fetchall(), tz)  # sql: a constant


def lot_trace(conn: psycopg.Connection[Any], lot: str, tz: tzinfo) -> LotTrace:
    """Everything known about lot `lot` (exact match: lot ids are opaque)."""
    p = {"lot": lot}
    with conn.cursor(row_factory=dict_row) as cur:
        return LotTrace(
            lot,
            _rows(cur, LOT_ROWS, p, tz),
            _rows(cur, ORDERS_OF_LOT, p, tz),
            _rows(cur, LOT_PRODUCTS, p, tz),
            _rows(cur, LOT_MATERIALS, p, tz),
        )


def order_trace(conn: psycopg.Connection[Any], order_no: str, tz: tzinfo) -> OrderTrace:
    """Order `order_no`: its lots, work orders, machines, operators, stops and inspections."""
    p = {"o": order_no}
    with conn.cursor(row_factory=dict_row) as cur:
        order = _rows(cur, ORDER, p, tz)
        return OrderTrace(
            order_no,
            order[0] if order else None,
            _rows(cur, WORK_ORDERS, p, tz),
            _rows(cur, ORDER_LOTS, p, tz),
            _rows(cur, MACHINES, p, tz),
            _rows(cur, OPERATORS, p, tz),
            _rows(cur, STOPS, p, tz),
            _rows(cur, INSPECTIONS, p, tz),
        )


def jsonable(value: Any) -> Any:
    """Rows as JSON values: times as RFC 3339 text with the plant's offset."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value
