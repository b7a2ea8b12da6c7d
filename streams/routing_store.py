"""Storing the per-operation rows of routed work orders (table work_order_operation).

The results sink calls `store` in its transaction (streams/row_stores.py); imported by
streams/order_progress.py, whose step emits the rows, so that any process with the sink
has it registered.
"""

from __future__ import annotations

from typing import Any

import psycopg

from streams import row_stores
from streams.hour_clock import from_us
from streams.routing import OperationSetRow

# A work order's operations are stored whole: the steps no longer in its routing (a
# corrected routing from the CRM) go, the others are upserted with absolute figures.
_DROP_SQL = "DELETE FROM work_order_operation WHERE work_order = %s AND NOT (op = ANY(%s))"

_UPSERT_SQL = """
INSERT INTO work_order_operation (work_order, op, position, order_no, product, wo_qty, name,
                                  machines, ideal_cycle_seconds, qty_in, good, scrap,
                                  wip_before, status, first_at, last_at, last_event_ts)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (work_order, op) DO UPDATE SET
    position = EXCLUDED.position, order_no = EXCLUDED.order_no, product = EXCLUDED.product,
    wo_qty = EXCLUDED.wo_qty, name = EXCLUDED.name, machines = EXCLUDED.machines,
    ideal_cycle_seconds = EXCLUDED.ideal_cycle_seconds, qty_in = EXCLUDED.qty_in,
    good = EXCLUDED.good, scrap = EXCLUDED.scrap, wip_before = EXCLUDED.wip_before,
    status = EXCLUDED.status, first_at = EXCLUDED.first_at, last_at = EXCLUDED.last_at,
    last_event_ts = EXCLUDED.last_event_ts, updated_at = clock_timestamp()
"""


def store(cur: psycopg.Cursor[Any], rows: list[OperationSetRow]) -> None:
    cur.executemany(_DROP_SQL, [(r.work_order, [f.op for f in r.ops]) for r in rows])
    cur.executemany(
        _UPSERT_SQL,
        [
            (
                r.work_order,
                f.op,
                f.position,
                r.order_no,
                r.product,
                r.qty,
                f.name,
                list(f.machines),
                f.ideal_cycle_seconds,
                f.qty_in,
                f.good,
                f.scrap,
                f.wip_before,
                f.status,
                None if f.first_t is None else from_us(f.first_t),
                None if f.last_t is None else from_us(f.last_t),
                r.last_event_ts,
            )
            for r in rows
            for f in r.ops
        ],
    )


row_stores.register(
    OperationSetRow,
    "work_order_operation",
    store,
    key=lambda r: r.work_order,
    owner=lambda r: ("work_order", r.work_order),
)
