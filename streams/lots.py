"""Traceability records: lot reports and who reported what, from validated events to rows.

Lot reports (`material_lot`, `production_lot`) change no machine figure, so, like process
values, they skip the per-machine trackers: the validator turns each into one `LotRow` and
the results sink stores it (sql/024_traceability.sql) in the transaction of its batch.
Every report that names an operator also gives an `OperatorActivity` row, so an order's
people can be listed without reading the ingest log back.

Idempotent: every row is keyed by the ingest log `seq` of its event and inserted with
ON CONFLICT DO NOTHING, so a replay of the log, a dataflow resumed from an older snapshot
or a resent message (the log stores it once) adds nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import psycopg

from mesflow.events import MaterialLotReport, ProductionLotReport
from streams import row_stores


class LotRow(NamedTuple):
    """One lot report, for the sink (`material` is None for a production lot)."""

    seq: int
    kind: str  # material_lot | production_lot
    machine: str
    ts: datetime
    work_order: str
    lot: str
    material: str | None
    qty: int | None
    operator: str | None
    event_id: str | None


class OperatorActivity(NamedTuple):
    """A report an operator made (any kind), for the sink."""

    seq: int
    machine: str
    ts: datetime
    kind: str
    operator: str
    work_order: str | None


def lot_row(seq: int, ev: MaterialLotReport | ProductionLotReport) -> LotRow:
    material = ev.material if isinstance(ev, MaterialLotReport) else None
    return LotRow(
        seq, ev.kind, ev.machine, ev.ts, ev.work_order, ev.lot, material, ev.qty, ev.operator, ev.id
    )


def activity(seq: int, ev: Any) -> OperatorActivity | None:
    """The activity row of a report (None if it names no operator)."""
    operator: str | None = ev.operator
    if not operator:
        return None
    return OperatorActivity(
        seq, ev.machine, ev.ts, ev.kind, operator, getattr(ev, "work_order", None)
    )


# Stored through staging tables (streams/row_stores.py): one statement per batch.
MATERIAL = row_stores.Staged(
    "material_lot_use",
    ("seq", "machine", "ts", "work_order", "lot", "material", "qty", "operator", "event_id"),
    ("seq",),
    "DO NOTHING",
)
PRODUCTION = row_stores.Staged(
    "production_lot",
    ("seq", "machine", "ts", "work_order", "lot", "qty", "operator", "event_id"),
    ("seq",),
    "DO NOTHING",
)
ACTIVITY = row_stores.Staged(
    "operator_activity",
    ("seq", "machine", "ts", "kind", "operator", "work_order"),
    ("seq",),
    "DO NOTHING",
)


def store(cur: psycopg.Cursor[Any], rows: list[LotRow | OperatorActivity]) -> None:
    """Insert the rows not yet stored (inside the caller's transaction)."""
    material: list[tuple[Any, ...]] = []
    production: list[tuple[Any, ...]] = []
    people: list[tuple[Any, ...]] = []
    for r in rows:
        if isinstance(r, OperatorActivity):
            people.append(r)
        elif r.kind == "material_lot":
            material.append(
                (r.seq, r.machine, r.ts, r.work_order, r.lot, r.material, r.qty, r.operator,
                 r.event_id)
            )  # fmt: skip
        else:
            production.append(
                (r.seq, r.machine, r.ts, r.work_order, r.lot, r.qty, r.operator, r.event_id)
            )
    MATERIAL.write(cur, material)
    PRODUCTION.write(cur, production)
    ACTIVITY.write(cur, people)
