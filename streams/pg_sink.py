"""Bytewax sink writing result rows to PostgreSQL with idempotent upserts.

One transaction per batch. Within a batch only the last row per key is written (rows
are absolute values, so the last one is the truth), which keeps the write volume
proportional to the machines touched, not to the events.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import psycopg
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from mesflow.db import connect
from notify.outbox import enqueue
from streams.order_progress import Callback, OrderProgressRow, WorkOrderProgressRow
from streams.records import (
    HourRow,
    IntervalDelete,
    IntervalRow,
    KpiRow,
    Progress,
    ReasonSetRow,
    Rejection,
    StatusRow,
)

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
CREATE TEMP TABLE IF NOT EXISTS stage_kpi (LIKE machine_kpi INCLUDING DEFAULTS)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_bucket (machine text, bucket text, bucket_start timestamptz)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_gone (machine text, start_ts timestamptz)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_order (LIKE order_progress INCLUDING DEFAULTS)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_wo (LIKE work_order_progress INCLUDING DEFAULTS)
    ON COMMIT DELETE ROWS;
"""

INTERVAL_COLUMNS = "machine, start_ts, end_ts, state, reason, work_order, duration_s, is_microstop"
INTERVAL_TYPES = ["text", "timestamptz", "timestamptz", "text", "text", "text", "float8", "bool"]
UPSERT_INTERVAL = f"""
INSERT INTO machine_state_interval ({INTERVAL_COLUMNS}, updated_at)
SELECT {INTERVAL_COLUMNS}, clock_timestamp() FROM stage_interval
ON CONFLICT (machine, start_ts) DO UPDATE SET
    end_ts = EXCLUDED.end_ts, state = EXCLUDED.state, reason = EXCLUDED.reason,
    work_order = EXCLUDED.work_order, duration_s = EXCLUDED.duration_s,
    is_microstop = EXCLUDED.is_microstop, updated_at = EXCLUDED.updated_at"""

DELETE_INTERVALS = """
DELETE FROM machine_state_interval i USING stage_gone g
WHERE i.machine = g.machine AND i.start_ts = g.start_ts"""

KPI_COLUMNS = (
    "machine, bucket, bucket_start, bucket_end, shift_date, shift_name, planned_s, running_s, "
    "microstop_s, microstop_count, idle_s, down_s, setup_s, offline_s, planned_stop_s, good, "
    "scrap, ideal_s, failures, failure_s, all_good, all_scrap"
)
KPI_TYPES = [
    "text", "text", "timestamptz", "timestamptz", "date", "text", "float8", "float8",
    "float8", "int4", "float8", "float8", "float8", "float8", "float8", "int8",
    "int8", "float8", "int4", "float8", "int8", "int8",
]  # fmt: skip
_KPI_SET = ", ".join(f"{c} = EXCLUDED.{c}" for c in KPI_COLUMNS.split(", ")[3:])
UPSERT_KPI = f"""
INSERT INTO machine_kpi ({KPI_COLUMNS}, updated_at)
SELECT {KPI_COLUMNS}, clock_timestamp() FROM stage_kpi
ON CONFLICT (machine, bucket, bucket_start) DO UPDATE SET {_KPI_SET},
    updated_at = EXCLUDED.updated_at"""

ORDER_COLUMNS = (
    "order_no, customer, priority, product, qty, due, status, version, good, scrap, "
    "progress, eta, at_risk, last_event_ts"
)
ORDER_TYPES = [
    "text", "text", "int4", "text", "int4", "timestamptz", "text", "int8", "int8", "int8",
    "float8", "timestamptz", "bool", "timestamptz",
]  # fmt: skip
UPSERT_ORDER = f"""
INSERT INTO order_progress ({ORDER_COLUMNS}, updated_at)
SELECT {ORDER_COLUMNS}, clock_timestamp() FROM stage_order
ON CONFLICT (order_no) DO UPDATE SET {
    ", ".join(f"{c} = EXCLUDED.{c}" for c in ORDER_COLUMNS.split(", ")[1:])
}, updated_at = EXCLUDED.updated_at"""

WO_COLUMNS = (
    "work_order, order_no, product, qty, machine, good, scrap, progress, rate_per_h, eta, "
    "started_at, completed_at, last_event_ts"
)
WO_TYPES = [
    "text", "text", "text", "int4", "text", "int8", "int8", "float8", "float8",
    "timestamptz", "timestamptz", "timestamptz", "timestamptz",
]  # fmt: skip
UPSERT_WO = f"""
INSERT INTO work_order_progress ({WO_COLUMNS}, updated_at)
SELECT {WO_COLUMNS}, clock_timestamp() FROM stage_wo
ON CONFLICT (work_order) DO UPDATE SET {
    ", ".join(f"{c} = EXCLUDED.{c}" for c in WO_COLUMNS.split(", ")[1:])
}, updated_at = EXCLUDED.updated_at"""

# A bucket's reason set is replaced whole: a re-attributed stop moves its time away
# from a reason, which must then disappear from that bucket.
DELETE_REASONS = """
DELETE FROM machine_kpi_reason r USING stage_bucket b
WHERE r.machine = b.machine AND r.bucket = b.bucket AND r.bucket_start = b.bucket_start"""

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


class _Batch:
    """One sink batch, reduced to the last row per key (rows are absolute values)."""

    def __init__(self) -> None:
        self.intervals: dict[tuple[str, Any], IntervalRow | None] = {}  # None: delete it
        self.hours: dict[tuple[str, Any], HourRow] = {}
        self.kpis: dict[tuple[str, str, Any], KpiRow] = {}
        self.reasons: dict[tuple[str, str, Any], tuple[tuple[str, float, int], ...]] = {}
        self.status: dict[str, StatusRow] = {}
        self.dead: list[tuple[str, str, int]] = []
        self.last_seq = 0
        self.orders: dict[str, OrderProgressRow] = {}
        self.work_orders: dict[str, WorkOrderProgressRow] = {}
        self.callbacks: list[Callback] = []  # in order: delivered in this order per order

    def add(self, item: Any) -> None:
        t = type(item)
        if t is HourRow:
            self.hours[(item.machine, item.hour_start)] = item
        elif t is KpiRow:
            self.kpis[(item.machine, item.bucket, item.bucket_start)] = item
        elif t is ReasonSetRow:
            self.reasons[(item.machine, item.bucket, item.bucket_start)] = item.items
        elif t is IntervalRow:
            self.intervals[(item.machine, item.start_ts)] = item
        elif t is IntervalDelete:
            self.intervals[(item.machine, item.start_ts)] = None
        elif t is StatusRow:
            self.status[item.machine] = item
        elif t is Rejection:
            self.dead.append((item.reason, item.detail, item.seq))
        elif t is Progress:
            self.last_seq = max(self.last_seq, item.last_seq)
        elif t is OrderProgressRow:
            self.orders[item.order_no] = item
        elif t is WorkOrderProgressRow:
            self.work_orders[item.work_order] = item
        elif t is Callback:
            self.callbacks.append(item)


def _copy(
    cur: psycopg.Cursor[Any], table: str, columns: str, types: list[str], rows: list[Any]
) -> None:
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)".encode()) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


class ResultsSink(FixedPartitionedSink[Any, None]):
    """Writes result rows in a background thread, overlapped with the dataflow's work.

    A stateful (partitioned) sink because Bytewax calls its `snapshot()` at the end of
    every epoch: that call waits until every row of the epoch is committed, so a
    recovery snapshot never gets ahead of the stored results.
    """

    def __init__(self, database_url: str, flow_name: str = "machines") -> None:
        self.database_url = database_url
        self.flow_name = flow_name

    def list_parts(self) -> list[str]:
        return ["results"]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _ResultsPartition:
        return _ResultsPartition(self.database_url, self.flow_name)


class _ResultsPartition(StatefulSinkPartition[Any, None]):
    def __init__(self, database_url: str, flow_name: str) -> None:
        self.database_url = database_url
        self.flow_name = flow_name
        self.conn: psycopg.Connection | None = None
        # Bounded: when PostgreSQL falls behind, the dataflow waits here.
        self.queue: queue.Queue[list[Any] | None] = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.writer = threading.Thread(target=self._run, name="results-writer", daemon=True)
        self.writer.start()

    def write_batch(self, values: list[Any]) -> None:
        self._raise_if_failed()
        self.queue.put(values)

    def snapshot(self) -> None:
        self.queue.join()  # everything of this epoch is committed
        self._raise_if_failed()

    def close(self) -> None:
        self.queue.join()
        self.queue.put(None)
        self.writer.join(timeout=30)
        if self.conn is not None:
            self.conn.close()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise RuntimeError("writing results to PostgreSQL failed") from self.error

    def _run(self) -> None:
        while True:
            values = self.queue.get()
            if values is None:
                self.queue.task_done()
                return
            # Merge what else is waiting: fewer, larger transactions (last row per key wins).
            batches = [values]
            while True:
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self.queue.put(None)  # keep the stop signal for the outer loop
                    self.queue.task_done()
                    break
                batches.append(more)
            try:
                if self.error is None:
                    batch = _Batch()
                    for vals in batches:
                        for item in vals:
                            batch.add(item)
                    self._write_retrying(batch)
            except BaseException as err:  # surfaced to the dataflow by the next call
                self.error = err
            finally:
                for _ in batches:
                    self.queue.task_done()

    def _write_retrying(self, batch: _Batch) -> None:
        # Keep writing through a database restart: retrying the same absolute rows is safe.
        delay = 0.5
        while True:
            try:
                self._write(batch)
                return
            except psycopg.OperationalError as err:
                log.warning("results database unreachable (%s); retrying in %.1fs", err, delay)
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _write(self, batch: _Batch) -> None:
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.database_url, autocommit=True)
            self.conn.execute(_STAGING.encode())
        intervals = [r for r in batch.intervals.values() if r is not None]
        gone = [(m, s) for (m, s), r in batch.intervals.items() if r is None]
        with self.conn.transaction(), self.conn.cursor() as cur:
            if gone:
                _copy(cur, "stage_gone", "machine, start_ts", ["text", "timestamptz"], gone)
                cur.execute(DELETE_INTERVALS.encode())
            for rows, table, columns, types, upsert in (
                (intervals, "stage_interval", INTERVAL_COLUMNS, INTERVAL_TYPES, UPSERT_INTERVAL),
                (list(batch.hours.values()), "stage_hour", HOUR_COLUMNS, HOUR_TYPES, UPSERT_HOUR),
                (list(batch.kpis.values()), "stage_kpi", KPI_COLUMNS, KPI_TYPES, UPSERT_KPI),
                (list(batch.status.values()), "stage_status", STATUS_COLUMNS, STATUS_TYPES,
                 UPSERT_STATUS),
                (list(batch.orders.values()), "stage_order", ORDER_COLUMNS, ORDER_TYPES,
                 UPSERT_ORDER),
                (list(batch.work_orders.values()), "stage_wo", WO_COLUMNS, WO_TYPES, UPSERT_WO),
            ):  # fmt: skip
                if rows:
                    _copy(cur, table, columns, types, rows)
                    cur.execute(upsert.encode())  # built from constants
            if batch.reasons:
                _copy(cur, "stage_bucket", "machine, bucket, bucket_start",
                      ["text", "text", "timestamptz"], list(batch.reasons))  # fmt: skip
                cur.execute(DELETE_REASONS.encode())
                reason_rows = [
                    (m, b, s, reason, seconds, stops)
                    for (m, b, s), items in batch.reasons.items()
                    for reason, seconds, stops in items
                ]
                if reason_rows:
                    _copy(cur, "machine_kpi_reason",
                          "machine, bucket, bucket_start, reason, seconds, stops",
                          ["text", "text", "timestamptz", "text", "float8", "int4"],
                          reason_rows)  # fmt: skip
            # Callbacks commit with the figures that caused them (transactional outbox).
            for cb in batch.callbacks:
                enqueue(cur, aggregate=cb.order_no, event_type=cb.event_type,
                        payload=cb.payload, dedupe=cb.dedupe)  # fmt: skip
            if batch.dead:
                cur.executemany(INSERT_DEAD, batch.dead)
            if batch.last_seq:
                cur.execute(UPSERT_PROGRESS, (self.flow_name, batch.last_seq))
