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
# One DELETE for the batch's work orders (the steps kept are in the staging table, filled
# first), then one upsert from it.
_DROP_SQL = """
DELETE FROM work_order_operation w WHERE w.work_order = ANY(%s) AND NOT EXISTS (
    SELECT 1 FROM stage_rows_work_order_operation s
    WHERE s.work_order = w.work_order AND s.op = w.op)"""

_COLUMNS = (
    "work_order", "op", "position", "order_no", "product", "wo_qty", "name", "machines",
    "ideal_cycle_seconds", "qty_in", "good", "scrap", "wip_before", "status", "first_at",
    "last_at", "last_event_ts",
)  # fmt: skip
_UPSERT = row_stores.Staged(
    "work_order_operation",
    _COLUMNS,
    ("work_order", "op"),
    "DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS[2:])
    + ", updated_at = clock_timestamp()",
)
_STAGE_COPY = f"COPY {_UPSERT.stage} ({', '.join(_COLUMNS)}) FROM STDIN"
_UPSERT_SQL = (
    f"INSERT INTO work_order_operation ({', '.join(_COLUMNS)}) "
    f"SELECT {', '.join(_COLUMNS)} FROM {_UPSERT.stage} "
    f"ON CONFLICT (work_order, op) {_UPSERT.action}; DELETE FROM {_UPSERT.stage}"
)


def store(cur: psycopg.Cursor[Any], rows: list[OperationSetRow]) -> None:
    ops: dict[tuple[str, str], tuple[Any, ...]] = {}  # the last of each, as executemany left it
    for r in rows:
        for f in r.ops:
            ops[(r.work_order, f.op)] = (
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
    with cur.copy(_STAGE_COPY.encode()) as copy:
        for row in ops.values():
            copy.write_row(row)
    cur.execute(_DROP_SQL.encode(), ([r.work_order for r in rows],))
    cur.execute(_UPSERT_SQL.encode(), prepare=False)


row_stores.register(
    OperationSetRow,
    "work_order_operation",
    store,
    key=lambda r: r.work_order,
    owner=lambda r: ("work_order", r.work_order),
)
