"""Bytewax wiring of the inspection step (logic: streams/inspections.py), and its stores.

One key for the plant ("inspections"): a run ends at the next wo_start of any work order at
its machine, so the step needs every machine's history; inspections and work-order reports
are few, and the parts rows it takes are a small share of the rows stream.

Live, a timer moves the clock with the wall clock (less a lag for rows still on their way)
while a run is open, so an overdue patrol shows without new events; a replay decides at its
end from its last event time (on_eof), so it stays deterministic.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import psycopg
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic
from psycopg.types.json import Jsonb

from mesflow.events import (
    InspectionReport,
    WorkOrderEndReport,
    WorkOrderEvent,
    WorkOrderStartReport,
)
from mesflow.plant import PlantConfig
from streams import row_stores
from streams.inspection_snapshot import InspectionSnapshots, decode
from streams.inspections import (
    InspectionFlag,
    InspectionRecord,
    InspectionRun,
    InspectionRunSet,
    Inspections,
    Row,
)
from streams.records import FloorInput, WorkOrderParts
from streams.validate import OrderInput

_FLOOR = (InspectionReport, WorkOrderStartReport, WorkOrderEndReport)
LIVE_LAG_S = 10.0


def _inputs(lists: list[list[Any]]) -> list[tuple[str, Any]]:
    # One call per batch: this stream carries every machine row, most of them not ours.
    out: list[tuple[str, Any]] = []
    for rows in lists:
        for x in rows:
            t = type(x)
            if (
                t is WorkOrderParts
                or (t is FloorInput and type(x.event) in _FLOOR)
                or (t is OrderInput and type(x.event) is WorkOrderEvent)
            ):
                out.append(("inspections", x))
    return out


def rows_of(keyed: list[tuple[str, list[Any]]]) -> list[list[Any]]:
    """A keyed step's outputs as one list per call (none if empty): the dataflow carries
    rows in lists (streams/dataflow.py)."""
    rows = [r for _, out in keyed for r in out]
    return [rows] if rows else []


class InspectionLogic(StatefulBatchLogic[Any, list[Row], bytes]):
    TICK = timedelta(seconds=15)

    def __init__(self, resume: bytes | None, plant: PlantConfig, live: bool) -> None:
        state = decode(resume) if resume else None
        self.steps = Inspections(plant, state, lag_s=LIVE_LAG_S if live else None)
        self.live = live
        self.snapshots = InspectionSnapshots()

    def on_batch(self, values: list[Any]) -> tuple[list[list[Row]], bool]:
        return [self.steps.feed(values)], self.RETAIN

    def notify_at(self) -> datetime | None:
        if not self.live or not self.steps.wants_clock():
            return None
        return datetime.now(UTC) + self.TICK

    def on_notify(self) -> tuple[list[list[Row]], bool]:
        now = time.time_ns() // 1000 - round(LIVE_LAG_S * 1_000_000)
        return [self.steps.tick(now)], self.RETAIN

    def on_eof(self) -> tuple[list[list[Row]], bool]:
        if self.live:
            return [], self.RETAIN
        return [self.steps.settle()], self.RETAIN

    def snapshot(self) -> bytes:
        return self.snapshots.encode(self.steps.state)


def inspection_rows(plant: PlantConfig, rest: Stream[Any], live: bool) -> Stream[Any]:
    """Inspection records, run rows and flag episodes from the floor reports, work orders
    and part counts (`rest` and the result: lists of rows)."""
    keyed = op.flat_map_batch("inspection_inputs", rest, _inputs)
    step = op.stateful_batch(
        "inspections", keyed, lambda resume: InspectionLogic(resume, plant, live)
    )
    return op.flat_map_batch("inspection_rows", step, rows_of)


# -- storing (the results sink calls these in its transaction: streams/row_stores.py) ------

_RECORD_SQL = """
INSERT INTO inspection (seq, ts, machine, work_order, operation, stage, result, sample_qty,
                        characteristics, defects, note, operator, product, all_ok)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (seq) DO UPDATE SET
    ts = EXCLUDED.ts, machine = EXCLUDED.machine, work_order = EXCLUDED.work_order,
    operation = EXCLUDED.operation, stage = EXCLUDED.stage, result = EXCLUDED.result,
    sample_qty = EXCLUDED.sample_qty, characteristics = EXCLUDED.characteristics,
    defects = EXCLUDED.defects, note = EXCLUDED.note, operator = EXCLUDED.operator,
    product = EXCLUDED.product, all_ok = EXCLUDED.all_ok
"""

_RUN_SQL = """
INSERT INTO inspection_run (work_order, machine, operation, start_ts, end_ts, product,
                            first_article, blocked, parts_made, patrol_every_min,
                            next_patrol_due, patrol_missed_since, last_piece, slots)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (work_order, machine, operation, start_ts) DO UPDATE SET
    end_ts = EXCLUDED.end_ts, product = EXCLUDED.product,
    first_article = EXCLUDED.first_article, blocked = EXCLUDED.blocked,
    parts_made = EXCLUDED.parts_made, patrol_every_min = EXCLUDED.patrol_every_min,
    next_patrol_due = EXCLUDED.next_patrol_due,
    patrol_missed_since = EXCLUDED.patrol_missed_since, last_piece = EXCLUDED.last_piece,
    slots = EXCLUDED.slots, updated_at = clock_timestamp()
"""

_RUN_GONE_SQL = """
DELETE FROM inspection_run
WHERE work_order = %s AND machine = %s AND operation = %s AND start_ts = %s
"""

_RUN_SET_SQL = """
DELETE FROM inspection_run r
WHERE r.machine = %s AND r.start_ts >= %s
  AND (r.work_order, r.operation, r.start_ts) NOT IN (
      SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[]))
"""

_FLAG_SQL = """
INSERT INTO inspection_flag (work_order, machine, operation, run_start, flag, since, until_ts,
                             detail, product, blocking, parts_made)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (work_order, machine, operation, run_start, flag, since) DO UPDATE SET
    until_ts = EXCLUDED.until_ts, detail = EXCLUDED.detail, product = EXCLUDED.product,
    blocking = EXCLUDED.blocking, parts_made = EXCLUDED.parts_made,
    updated_at = clock_timestamp()
"""


def _action(sql: str) -> str:
    """The `DO UPDATE SET ...` of a single-row upsert above (staged: row_stores.Staged)."""
    return "DO " + sql.split(") DO ", 1)[1].strip()


def _columns(sql: str) -> tuple[str, ...]:
    inside = sql.split("(", 1)[1].split(")", 1)[0]
    return tuple(c.strip() for c in inside.split(","))


_RECORDS = row_stores.Staged("inspection", _columns(_RECORD_SQL), ("seq",), _action(_RECORD_SQL))
_RUNS = row_stores.Staged(
    "inspection_run",
    _columns(_RUN_SQL),
    ("work_order", "machine", "operation", "start_ts"),
    _action(_RUN_SQL),
)
_FLAGS = row_stores.Staged(
    "inspection_flag",
    _columns(_FLAG_SQL),
    ("work_order", "machine", "operation", "run_start", "flag", "since"),
    _action(_FLAG_SQL),
)


def _iso(value: Any) -> Any:
    return value.isoformat() if value is not None else None


def store_records(cur: psycopg.Cursor[Any], rows: list[InspectionRecord]) -> None:
    _RECORDS.write(
        cur,
        [(*r[:8], Jsonb(list(r.characteristics)), Jsonb(list(r.defects)), *r[10:]) for r in rows],
    )


def store_runs(cur: psycopg.Cursor[Any], rows: list[InspectionRun]) -> None:
    def slots(r: InspectionRun) -> Jsonb:
        return Jsonb(
            [
                {
                    "stage": s,
                    "due": _iso(due),
                    "day": _iso(day),
                    "status": st,
                    "at": _iso(at),
                    "result": res,
                }
                for s, due, day, st, at, res in r.slots
            ]
        )

    gone = [r[:4] for r in rows if r.gone]
    if gone:
        cur.executemany(_RUN_GONE_SQL, gone)
    _RUNS.write(cur, [(*r[:13], slots(r)) for r in rows if not r.gone])


def store_run_sets(cur: psycopg.Cursor[Any], rows: list[InspectionRunSet]) -> None:
    cur.executemany(
        _RUN_SET_SQL,
        [
            (
                r.machine,
                r.since,
                [wo for wo, _, _ in r.runs],
                [op for _, op, _ in r.runs],
                [start for _, _, start in r.runs],
            )
            for r in rows
        ],
    )


def store_flags(cur: psycopg.Cursor[Any], rows: list[InspectionFlag]) -> None:
    _FLAGS.write(cur, rows)


row_stores.register(
    InspectionRecord,
    "inspection",
    store_records,
    key=lambda r: r.seq,
    owner=lambda r: ("seq", r.seq),
)
row_stores.register(
    InspectionRun,
    "inspection_run",
    store_runs,
    key=lambda r: (r.work_order, r.machine, r.operation, r.start_ts),
    owner=lambda r: ("work_order", r.work_order),
)
# After the run rows (row_stores stores types in registration order): the set is final.
row_stores.register(
    InspectionRunSet,
    "inspection_run",
    store_run_sets,
    key=lambda r: r.machine,
    owner=lambda r: ("machine", r.machine),
)
row_stores.register(
    InspectionFlag,
    "inspection_flag",
    store_flags,
    key=lambda r: (r.work_order, r.machine, r.operation, r.run_start, r.flag, r.since),
    owner=lambda r: ("work_order", r.work_order),
)
