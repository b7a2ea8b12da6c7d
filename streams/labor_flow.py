"""Bytewax wiring of the labor step (logic: streams/labor.py), and how its rows are stored
(sql/031_labor.sql, registered with streams/row_stores.py at import).

One key for the plant: sign-ins are rare, and a person's time at several stations is split
between them, so all stations' bookings live in one state. Live, a timer books open
pieces up to the wall clock minus the plant's allowed lateness, so a shift boundary or a
forgotten sign-out is cut without new events; a replay is driven by event times only
(deterministic: the views count an open segment up to now, at most to its bound).
"""

from __future__ import annotations

import pickle
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import psycopg
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from mesflow.plant import PlantConfig
from streams import row_stores
from streams.inspections_flow import rows_of
from streams.labor import Labor, LaborIssue, LaborRow, LaborSegment, StationPresence, labor_events


class LaborLogic(StatefulBatchLogic[Any, list[LaborRow], bytes]):
    TICK = timedelta(seconds=60)

    def __init__(self, resume: bytes | None, plant: PlantConfig, live: bool) -> None:
        self.labor = Labor(plant, pickle.loads(resume) if resume else None)
        self.live = live
        self.lag_us = int(plant.plant.allowed_lateness_seconds * 1_000_000)
        self.next_tick: datetime | None = None

    def on_batch(self, values: list[Any]) -> tuple[list[list[LaborRow]], bool]:
        for seq, ev in values:
            self.labor.on_event(seq, ev)
        return [self.labor.take()], self.RETAIN

    def notify_at(self) -> datetime | None:
        if not self.live or not self.labor.anyone_signed_in():
            return None
        # Kept until it fires: a busy stream of reports must not push the timer on forever.
        if self.next_tick is None:
            self.next_tick = datetime.now(UTC) + self.TICK
        return self.next_tick

    def on_notify(self) -> tuple[list[list[LaborRow]], bool]:
        self.next_tick = None
        # Events up to the allowed lateness behind the wall clock may still come: leave
        # them room, so a live run books what a replay of the same log books.
        self.labor.tick(time.time_ns() // 1000 - self.lag_us)
        return [self.labor.take()], self.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.labor.state, protocol=pickle.HIGHEST_PROTOCOL)


def labor_rows(plant: PlantConfig, rest: Stream[Any], live: bool) -> Stream[Any]:
    """Labor segments, presence and issues from `rest` (FloorInput and OrderInput; `rest`
    and the result: lists of rows)."""
    inputs = op.flat_map_batch(
        "labor_inputs",
        rest,
        lambda lists: [("plant", x) for rows in lists for x in labor_events(rows)],
    )
    step = op.stateful_batch("labor", inputs, lambda resume: LaborLogic(resume, plant, live))
    return op.flat_map_batch("labor_rows", step, rows_of)


# -- storing (inside the results sink's transaction) -------------------------------------------

UPSERT_SEGMENT = """
INSERT INTO labor_segment AS s (person, station, start_ts, end_ts, bound_ts, work_order,
    operation, shift_date, shift_name, share, closed_by)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (person, station, start_ts) DO UPDATE SET
    end_ts = EXCLUDED.end_ts, bound_ts = EXCLUDED.bound_ts,
    work_order = EXCLUDED.work_order, operation = EXCLUDED.operation,
    shift_date = EXCLUDED.shift_date, shift_name = EXCLUDED.shift_name,
    share = EXCLUDED.share, closed_by = EXCLUDED.closed_by, updated_at = now()"""

UPSERT_PRESENCE = """
INSERT INTO labor_presence (station, person, since, sign_in_seq, work_order, operation, share)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (station, person) DO UPDATE SET
    since = EXCLUDED.since, sign_in_seq = EXCLUDED.sign_in_seq,
    work_order = EXCLUDED.work_order, operation = EXCLUDED.operation,
    share = EXCLUDED.share, updated_at = now()"""

DELETE_PRESENCE = "DELETE FROM labor_presence WHERE station = %s AND person = %s"

UPSERT_ISSUE = """
INSERT INTO labor_issue (seq, kind, station, person, ts, applied_ts)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (seq, kind) DO UPDATE SET
    station = EXCLUDED.station, person = EXCLUDED.person, ts = EXCLUDED.ts,
    applied_ts = EXCLUDED.applied_ts"""


def _staged(sql: str, table: str, key: tuple[str, ...]) -> row_stores.Staged:
    """The single-row upsert above as a staged one (row_stores.Staged): the same columns
    and the same DO UPDATE."""
    columns = tuple(c.strip() for c in sql.split("(", 1)[1].split(")", 1)[0].split(","))
    return row_stores.Staged(table, columns, key, "DO " + sql.split(") DO ", 1)[1].strip())


_SEGMENTS = _staged(UPSERT_SEGMENT, "labor_segment", ("person", "station", "start_ts"))
_PRESENCE = _staged(UPSERT_PRESENCE, "labor_presence", ("station", "person"))
_ISSUES = _staged(UPSERT_ISSUE, "labor_issue", ("seq", "kind"))


def store_segments(cur: psycopg.Cursor[Any], rows: list[LaborSegment]) -> None:
    _SEGMENTS.write(cur, [tuple(r) for r in rows])


def store_presence(cur: psycopg.Cursor[Any], rows: list[StationPresence]) -> None:
    here = [r[:7] for r in rows if r.present]
    gone = [(r.station, r.person) for r in rows if not r.present]
    if gone:
        cur.executemany(DELETE_PRESENCE, gone)
    _PRESENCE.write(cur, here)


def store_issues(cur: psycopg.Cursor[Any], rows: list[LaborIssue]) -> None:
    _ISSUES.write(cur, [tuple(r) for r in rows])


def _station(row: Any) -> tuple[str, Any]:
    return "machine", row.station


row_stores.register(
    LaborSegment,
    "labor_segment",
    store_segments,
    key=lambda r: (r.person, r.station, r.start),
    owner=_station,
)
row_stores.register(
    StationPresence,
    "labor_presence",
    store_presence,
    key=lambda r: (r.station, r.person),
    owner=_station,
)
row_stores.register(
    LaborIssue,
    "labor_issue",
    store_issues,
    key=lambda r: (r.seq, r.kind),
    owner=lambda r: ("seq", r.seq),
)
