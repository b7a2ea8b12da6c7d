"""Process values (event type `process_value`): from a validated event to stored rows.

They change no machine figure, so they skip the per-machine trackers: the validator turns
each event into one `ProcessValues` record and the results sink stores it (raw rows and the
per-minute rollup, sql/021_process_values.sql) in the transaction of its batch.

Idempotent: a raw row is keyed by (machine, name, ts) and the rollup merges only the rows
that were really inserted, so a replay, a dataflow resumed from an older snapshot or a
resent message changes nothing. Order-free: the rollup merges count, exact sum, min and
max, so values arriving late or out of order land in their own minute with the same result.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import psycopg

from mesflow.events import ProcessValueEvent
from streams.row_stores import columns

# (machine, ts, name, value): the column order of `process_value`.
ValueRow = tuple[str, datetime, str, float]


class ProcessValues(NamedTuple):
    """The values of one `process_value` event, for the sink."""

    seq: int
    machine: str
    rows: tuple[ValueRow, ...]


def from_event(seq: int, ev: ProcessValueEvent) -> ProcessValues:
    m, ts = ev.machine, ev.ts
    return ProcessValues(seq, m, tuple((m, ts, name, v) for name, v in ev.values.items()))


COLUMNS = "machine, ts, name, value"

# One statement: insert the new raw rows, then fold exactly those into their minutes.
# FOR SHARE on the horizon waits for a retention batch in flight (it raises the horizon
# and deletes in one transaction), so a value is never re-inserted after its raw row was
# pruned (it would be counted twice). date_bin: minutes independent of the session's zone.
STORE = f"""
WITH horizon AS (
    SELECT pruned_before FROM process_value_horizon FOR SHARE
), inserted AS (
    INSERT INTO process_value (machine, ts, name, value)
    SELECT s.machine, s.ts, s.name, s.value
    FROM unnest(%s::text[], %s::timestamptz[], %s::text[], %s::float8[]) AS s({COLUMNS}),
         horizon h
    WHERE s.ts >= h.pruned_before
    ON CONFLICT (machine, name, ts) DO NOTHING
    RETURNING machine, ts, name, value
)
INSERT INTO process_value_minute AS p (machine, name, minute, n, sum, min, max)
SELECT machine, name, date_bin('1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
       count(*), sum(value::text::numeric), min(value), max(value)
FROM inserted GROUP BY 1, 2, 3
ON CONFLICT (machine, name, minute) DO UPDATE SET
    n = p.n + EXCLUDED.n,
    sum = p.sum + EXCLUDED.sum,
    min = LEAST(p.min, EXCLUDED.min),
    max = GREATEST(p.max, EXCLUDED.max)"""


def store(cur: psycopg.Cursor[Any], rows: list[ValueRow]) -> None:
    """Store raw values and merge them into the rollup (inside the caller's transaction).
    The rows go as one array per column (psycopg dumps them in Python: fine for a few
    values per batch; the machine figures go by COPY into a staging table, pg_sink.Upsert)."""
    cur.execute(STORE.encode(), columns(rows, 4))  # built from constants
