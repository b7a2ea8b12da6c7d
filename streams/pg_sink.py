"""Bytewax sink writing result rows to PostgreSQL with idempotent upserts.

One transaction per batch. Within a batch only the last row per key is written (rows
are absolute values, so the last one is the truth), which keeps the write volume
proportional to the machines touched, not to the events.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from mesflow.db import connect
from streams.records import HourRow, IntervalRow, Progress, Rejection, StatusRow

log = logging.getLogger(__name__)

# Rows go in by binary COPY into a staging table, then one INSERT ... ON CONFLICT per
# table: far less work for both sides than one statement per row.
_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS stage_interval (LIKE machine_state_interval INCLUDING DEFAULTS)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_status (LIKE machine_status INCLUDING DEFAULTS)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_hour (LIKE machine_hour INCLUDING DEFAULTS)
    ON COMMIT DELETE ROWS;
"""

INTERVAL_COLUMNS = "machine, start_ts, end_ts, state, reason, work_order, duration_s"
INTERVAL_TYPES = ["text", "timestamptz", "timestamptz", "text", "text", "text", "float8"]
UPSERT_INTERVAL = f"""
INSERT INTO machine_state_interval ({INTERVAL_COLUMNS}, updated_at)
SELECT {INTERVAL_COLUMNS}, clock_timestamp() FROM stage_interval
ON CONFLICT (machine, start_ts) DO UPDATE SET
    end_ts = EXCLUDED.end_ts, state = EXCLUDED.state, reason = EXCLUDED.reason,
    work_order = EXCLUDED.work_order, duration_s = EXCLUDED.duration_s,
    updated_at = EXCLUDED.updated_at"""

STATUS_COLUMNS = "machine, state, since, reason, work_order, last_event_ts, good_total, scrap_total"
STATUS_TYPES = ["text", "text", "timestamptz", "text", "text", "timestamptz", "int8", "int8"]
UPSERT_STATUS = f"""
INSERT INTO machine_status ({STATUS_COLUMNS}, updated_at)
SELECT {STATUS_COLUMNS}, clock_timestamp() FROM stage_status
ON CONFLICT (machine) DO UPDATE SET
    state = EXCLUDED.state, since = EXCLUDED.since, reason = EXCLUDED.reason,
    work_order = EXCLUDED.work_order, last_event_ts = EXCLUDED.last_event_ts,
    good_total = EXCLUDED.good_total, scrap_total = EXCLUDED.scrap_total,
    updated_at = EXCLUDED.updated_at"""

HOUR_COLUMNS = (
    "machine, hour_start, running_s, idle_s, down_s, setup_s, planned_stop_s, offline_s, "
    "good, scrap"
)
HOUR_TYPES = ["text", "timestamptz", *["float8"] * 6, "int8", "int8"]
UPSERT_HOUR = f"""
INSERT INTO machine_hour ({HOUR_COLUMNS}, updated_at)
SELECT {HOUR_COLUMNS}, clock_timestamp() FROM stage_hour
ON CONFLICT (machine, hour_start) DO UPDATE SET
    running_s = EXCLUDED.running_s, idle_s = EXCLUDED.idle_s, down_s = EXCLUDED.down_s,
    setup_s = EXCLUDED.setup_s, planned_stop_s = EXCLUDED.planned_stop_s,
    offline_s = EXCLUDED.offline_s, good = EXCLUDED.good, scrap = EXCLUDED.scrap,
    updated_at = EXCLUDED.updated_at"""

# The raw payload stays in the log; the dead letter copies it from there.
INSERT_DEAD = """
INSERT INTO dead_letter (log_seq, received_at, source, payload, reason, detail)
SELECT seq, received_at, source, payload, %s, %s FROM ingest_log WHERE seq = %s
ON CONFLICT (log_seq) DO NOTHING"""

UPSERT_PROGRESS = """
INSERT INTO dataflow_progress (flow, last_seq, updated_at) VALUES (%s, %s, now())
ON CONFLICT (flow) DO UPDATE SET last_seq = GREATEST(dataflow_progress.last_seq,
    EXCLUDED.last_seq), updated_at = now()"""


class ResultsSink(DynamicSink[Any]):
    def __init__(self, database_url: str, flow_name: str = "machines") -> None:
        self.database_url = database_url
        self.flow_name = flow_name

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ResultsPartition:
        return _ResultsPartition(self.database_url, self.flow_name)


class _ResultsPartition(StatelessSinkPartition[Any]):
    def __init__(self, database_url: str, flow_name: str) -> None:
        self.database_url = database_url
        self.flow_name = flow_name
        self.conn: psycopg.Connection | None = None

    def write_batch(self, items: list[Any]) -> None:
        intervals: dict[Any, IntervalRow] = {}
        hours: dict[Any, HourRow] = {}
        status: dict[Any, StatusRow] = {}
        dead: list[tuple[str, str, int]] = []
        last_seq = 0
        for item in items:
            t = type(item)
            if t is HourRow:
                hours[(item.machine, item.hour_start)] = item
            elif t is IntervalRow:
                intervals[(item.machine, item.start_ts)] = item
            elif t is StatusRow:
                status[item.machine] = item
            elif t is Rejection:
                dead.append((item.reason, item.detail, item.seq))
            elif t is Progress:
                last_seq = max(last_seq, item.last_seq)
        # Keep writing through a database restart: retrying the same absolute rows is safe.
        delay = 0.5
        while True:
            try:
                self._write(intervals, hours, status, dead, last_seq)
                return
            except psycopg.OperationalError as err:
                log.warning("results database unreachable (%s); retrying in %.1fs", err, delay)
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _write(
        self,
        intervals: dict[Any, IntervalRow],
        hours: dict[Any, HourRow],
        status: dict[Any, StatusRow],
        dead: list[tuple[str, str, int]],
        last_seq: int,
    ) -> None:
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.database_url, autocommit=True)
            self.conn.execute(_STAGING)
        with self.conn.transaction(), self.conn.cursor() as cur:
            for rows, table, columns, types, upsert in (
                (intervals, "stage_interval", INTERVAL_COLUMNS, INTERVAL_TYPES, UPSERT_INTERVAL),
                (hours, "stage_hour", HOUR_COLUMNS, HOUR_TYPES, UPSERT_HOUR),
                (status, "stage_status", STATUS_COLUMNS, STATUS_TYPES, UPSERT_STATUS),
            ):
                if not rows:
                    continue
                with cur.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(types)
                    for row in rows.values():
                        copy.write_row(row)
                cur.execute(upsert.encode())  # built from constants
            if dead:
                cur.executemany(INSERT_DEAD, dead)
            if last_seq:
                cur.execute(UPSERT_PROGRESS, (self.flow_name, last_seq))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
