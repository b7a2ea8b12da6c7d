"""Bytewax sink writing result rows to PostgreSQL with idempotent upserts.

One transaction per batch. Within a batch only the last row per key is written (rows
are absolute values, so the last one is the truth), which keeps the write volume
proportional to the machines touched, not to the events.

Faults, and what each does:
- PostgreSQL unreachable or restarted: the same batch is written again after a backoff,
  on a new connection, until it commits (rows are absolute values: rewriting is safe).
- A row the database refuses (a value out of a column's range, a CHECK, a NUL in text):
  the batch is written again row by row, each in a savepoint; each refused row is left
  out and its source event goes to the dead letters with reason `db_refused`. A result
  row sums many events, so the event named is the last one of the row's machine (or
  order) that the dataflow had read; the detail says which row it was.
- Anything else is a fault of ours: the next call from the dataflow raises it, so the
  process exits non-zero and its supervisor restarts it from the last snapshot.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import Any

import psycopg
import psycopg.errors
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from psycopg.types.json import Jsonb

from mesflow.alert_rules import AlertsConfig
from mesflow.db import connect
from mesflow.ingest_log import safe_text
from notify.alert_outbox import dumps as alert_dumps
from notify.alert_outbox import enqueue_alert
from notify.outbox import enqueue
from streams import limit_spans, lots, process_values, row_stores
from streams.alert_engine import AckInput
from streams.hour_clock import from_us
from streams.log_source import PARTS, ReadMark, part_name
from streams.order_progress import Callback, OrderProgressRow, WorkOrderProgressRow
from streams.records import (
    AlertRow,
    FloorInput,
    HourRow,
    IntervalDelete,
    IntervalRow,
    KpiRow,
    Progress,
    ReasonSetRow,
    Rejection,
    ScrapSetRow,
    StatusRow,
    WorkOrderParts,
    WorkOrderStarted,
)
from streams.validate import OrderInput

log = logging.getLogger(__name__)

# Inputs that ride to the sink in the steps' `rest` stream (streams/dataflow.py) and are
# stored by no table on purpose: the steps before the sink took them. Any other type that
# reaches the sink without a store is a bug, named once in the log (`unstored`).
PASSED_THROUGH: frozenset[type] = frozenset(
    {OrderInput, FloorInput, WorkOrderStarted, WorkOrderParts, AckInput}
)
_named_unstored: set[type] = set()


def unstored(t: type) -> None:
    """Log, once per type and process, that rows of `t` reached the sink and no store
    takes them: they are lost until a store is registered (streams/row_stores.py)."""
    if t in _named_unstored:
        return
    _named_unstored.add(t)
    log.error(
        "results sink: rows of type %s.%s reach the sink but no store takes them; "
        "they are not stored (a missing row_stores.register?)",
        t.__module__,
        t.__qualname__,
    )


# How the database (or psycopg, before sending) refuses one row's values: the row is
# wrong, not the connection and not our SQL. ValueError: the outbox refuses a payload.
REFUSALS: tuple[type[BaseException], ...] = (
    psycopg.DataError,
    psycopg.IntegrityError,
    OverflowError,
    ValueError,
)
_INT4 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class Upsert:
    """A results table written by one INSERT ... SELECT ... ON CONFLICT DO UPDATE for the
    batch: far less work for both sides than one statement per row, and idempotent (rows
    carry absolute values).

    The rows reach that INSERT through a binary COPY into a temporary staging table
    (`staged`), which psycopg encodes in C: passing them as one array per column
    (`unnest`, `sql`) made psycopg dump every element in Python, half of the writer's CPU in
    a live plant. The staging table is ON COMMIT PRESERVE ROWS and emptied by the INSERT
    itself (DELETE ... RETURNING): PostgreSQL empties every ON COMMIT DELETE ROWS table of a
    session at the commit of any transaction that touched one, 10-70 ms per commit
    (docs/performance.md). Its columns have the types below, as the arrays had, so the
    INSERT casts the same values the same way. The array path stays: a batch the staged
    path refuses is written again by it (then row by row), so refusals read as before."""

    table: str
    key: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]  # (column, binary COPY type)

    @property
    def stage(self) -> str:
        return f"stage_{self.table}"

    @property
    def names(self) -> str:
        return ", ".join(c for c, _ in self.columns)

    @property
    def types(self) -> list[str]:
        return [t for _, t in self.columns]

    @property
    def int4_columns(self) -> tuple[int, ...]:
        return tuple(i for i, (_, t) in enumerate(self.columns) if t == "int4")

    def check(self, rows: list[Any]) -> None:
        """psycopg's binary int4 dumper wraps out-of-range integers silently (2**40 + 5 is
        stored as 5): refuse them here, as PostgreSQL refuses an int8 out of range."""
        lo, hi = _INT4
        for i in self.int4_columns:
            for row in rows:
                v = row[i]
                if v is not None and not lo <= v <= hi:
                    raise psycopg.errors.NumericValueOutOfRange(
                        f"{self.table}.{self.columns[i][0]} = {v} is out of the int4 range"
                    )

    @cached_property
    def _on_conflict(self) -> str:
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c, _ in self.columns if c not in self.key)
        return (
            f"ON CONFLICT ({', '.join(self.key)}) DO UPDATE SET {updates}, "
            f"updated_at = EXCLUDED.updated_at"
        )

    @cached_property
    def sql(self) -> bytes:
        """The array path: one array parameter per column."""
        return (
            f"INSERT INTO {self.table} ({self.names}, updated_at) "
            f"SELECT {self.names}, clock_timestamp() "
            f"FROM {_unnest(self.types, self.names, self.stage)} {self._on_conflict}"
        ).encode()

    # -- the staged path ---------------------------------------------------------------

    @property
    def staged(self) -> str:
        return f"stage_rows_{self.table}"

    @cached_property
    def staging_ddl(self) -> str:
        columns = ", ".join(f"{c} {t}" for c, t in self.columns)
        return f"CREATE TEMP TABLE IF NOT EXISTS {self.staged} ({columns}) ON COMMIT PRESERVE ROWS;"

    @cached_property
    def copy_sql(self) -> bytes:
        return f"COPY {self.staged} ({self.names}) FROM STDIN (FORMAT BINARY)".encode()

    @cached_property
    def copy_types(self) -> list[int]:
        return [psycopg.adapters.types[t].oid for t in self.types]

    @cached_property
    def from_stage_sql(self) -> bytes:
        """One statement (so psycopg prepares it): the staged rows go into the table and
        leave the staging table empty for the next write (and for a row-by-row retry)."""
        return (
            f"WITH s AS (DELETE FROM {self.staged} RETURNING {self.names}) "
            f"INSERT INTO {self.table} ({self.names}, updated_at) "
            f"SELECT {self.names}, clock_timestamp() FROM s {self._on_conflict}"
        ).encode()


TS, TEXT, F8, I8, I4 = "timestamptz", "text", "float8", "int8", "int4"
INTERVALS = Upsert(
    "machine_state_interval",
    ("machine", "start_ts"),
    (("machine", TEXT), ("start_ts", TS), ("end_ts", TS), ("state", TEXT), ("reason", TEXT),
     ("work_order", TEXT), ("duration_s", F8), ("is_microstop", "bool")),
)  # fmt: skip
STATUS = Upsert(
    "machine_status",
    ("machine",),
    (("machine", TEXT), ("state", TEXT), ("since", TS), ("reason", TEXT), ("work_order", TEXT),
     ("last_event_ts", TS), ("good_total", I8), ("scrap_total", I8)),
)  # fmt: skip
HOURS = Upsert(
    "machine_hour",
    ("machine", "hour_start"),
    (("machine", TEXT), ("hour_start", TS), ("running_s", F8), ("idle_s", F8), ("down_s", F8),
     ("setup_s", F8), ("planned_stop_s", F8), ("offline_s", F8), ("good", I8), ("scrap", I8)),
)  # fmt: skip
KPIS = Upsert(
    "machine_kpi",
    ("machine", "bucket", "bucket_start"),
    (("machine", TEXT), ("bucket", TEXT), ("bucket_start", TS), ("bucket_end", TS),
     ("shift_date", "date"), ("shift_name", TEXT), ("planned_s", F8), ("running_s", F8),
     ("microstop_s", F8), ("microstop_count", I4), ("idle_s", F8), ("down_s", F8),
     ("setup_s", F8), ("offline_s", F8), ("planned_stop_s", F8), ("good", I8), ("scrap", I8),
     ("ideal_s", F8), ("failures", I4), ("failure_s", F8), ("all_good", I8),
     ("all_scrap", I8)),
)  # fmt: skip
ORDERS = Upsert(
    "order_progress",
    ("order_no",),
    (("order_no", TEXT), ("customer", TEXT), ("priority", I4), ("product", TEXT), ("qty", I4),
     ("due", TS), ("status", TEXT), ("version", I8), ("good", I8), ("scrap", I8),
     ("progress", F8), ("eta", TS), ("at_risk", "bool"), ("last_event_ts", TS)),
)  # fmt: skip
WORK_ORDERS = Upsert(
    "work_order_progress",
    ("work_order",),
    (("work_order", TEXT), ("order_no", TEXT), ("product", TEXT), ("qty", I4),
     ("machine", TEXT), ("good", I8), ("scrap", I8), ("progress", F8), ("rate_per_h", F8),
     ("eta", TS), ("started_at", TS), ("completed_at", TS), ("last_event_ts", TS)),
)  # fmt: skip

# Their staging tables, created with the steps' on each sink connection (_connection).
row_stores.STAGING.extend(
    u.staging_ddl for u in (INTERVALS, STATUS, HOURS, KPIS, ORDERS, WORK_ORDERS)
)


def _unnest(types: list[str], names: str, alias: str) -> str:
    """`unnest(%s::t1[], ...) AS alias(names)`: a batch's rows as a table, one array
    parameter per column: the array path (see Upsert)."""
    arrays = ", ".join(f"%s::{t}[]" for t in types)
    return f"unnest({arrays}) AS {alias}({names})"


DELETE_INTERVALS = """
DELETE FROM machine_state_interval i
USING unnest(%s::text[], %s::timestamptz[]) AS g(machine, start_ts)
WHERE i.machine = g.machine AND i.start_ts = g.start_ts"""

# A bucket's reason set is replaced whole: a re-attributed stop moves its time away
# from a reason, which must then disappear from that bucket.
DELETE_REASONS = """
DELETE FROM machine_kpi_reason r
USING unnest(%s::text[], %s::text[], %s::timestamptz[]) AS b(machine, bucket, bucket_start)
WHERE r.machine = b.machine AND r.bucket = b.bucket AND r.bucket_start = b.bucket_start"""

# Scrap by reason and product: the same, per machine-hour (sql/020_scrap_by_reason.sql).
DELETE_SCRAP = """
DELETE FROM machine_scrap s
USING unnest(%s::text[], %s::timestamptz[]) AS b(machine, hour_start)
WHERE s.machine = b.machine AND s.hour_start = b.hour_start"""

# The raw payload stays in the log (one copy: NULL here, see sql/014); retention copies
# it into the dead letter before it prunes the log row.
INSERT_DEAD = """
INSERT INTO dead_letter (log_seq, received_at, source, payload, reason, detail)
SELECT seq, received_at, source, NULL, %s, %s FROM ingest_log WHERE seq = %s
ON CONFLICT (log_seq) DO NOTHING"""

# Where a refused row came from: the newest events up to the dataflow's position.
RECENT_EVENTS = """
SELECT seq, payload FROM ingest_log WHERE seq <= %s AND error IS NULL
ORDER BY seq DESC LIMIT %s"""
_SOURCE_SEARCH_ROWS = 20_000
LAST_OF_MACHINE = """
SELECT max(seq) FROM ingest_log WHERE machine = %s AND seq <= %s AND error IS NULL"""

# Progress per log partition ("machines:p00".., sql/035): one statement for all of them.
UPSERT_PROGRESS = """
INSERT INTO dataflow_progress (flow, last_seq, updated_at)
SELECT f, s, now() FROM unnest(%s::text[], %s::bigint[]) AS p(f, s)
ON CONFLICT (flow) DO UPDATE SET last_seq = GREATEST(dataflow_progress.last_seq,
    EXCLUDED.last_seq), updated_at = now()"""


def _record_progress(
    cur: psycopg.Cursor[Any], flow: str, batch: _Batch, ledger: _MarkLedger | None
) -> None:
    """One reader (no ledger): a batch's Progress is every partition's position (it read
    them all, in seq order), committed with the batch. A cluster: the readers' ReadMarks,
    per partition, go to the ledger."""
    if ledger is not None:
        ledger.arrive(batch.read)
    elif batch.last_seq:
        _upsert_progress(cur, flow, dict.fromkeys(PARTS, batch.last_seq))


def _upsert_progress(cur: psycopg.Cursor[Any], flow: str, read: dict[int, int]) -> None:
    if read:
        parts = sorted(read)
        names = [f"{flow}:{part_name(k)}" for k in parts]
        cur.execute(UPSERT_PROGRESS, (names, [read[k] for k in parts]))


class _MarkLedger:
    """A cluster's read marks, committed one epoch late. A mark travels from its reader
    straight to the sink, ahead of the rows of the events read before it (they go through
    the machines' and the other steps, maybe in another process). Every row of an epoch is
    written when Bytewax ends the epoch (`snapshot`); so marks that had arrived by the end
    of the previous epoch are covered by then: committed at this one's end. Progress in a
    cluster lags by one snapshot interval; it never runs ahead of the results."""

    def __init__(self, database_url: str, flow: str) -> None:
        self.database_url = database_url
        self.flow = flow
        self.lock = threading.Lock()  # the writer thread adds, the dataflow thread commits
        self.arrived: dict[int, int] = {}
        self.ripe: dict[int, int] = {}
        self.conn: psycopg.Connection | None = None

    def arrive(self, read: dict[int, int]) -> None:
        with self.lock:
            _merge_max(self.arrived, read)

    def epoch_ended(self) -> None:
        with self.lock:
            due, self.ripe, self.arrived = self.ripe, self.arrived, {}
        self._commit(due)

    def closing(self) -> None:
        """Every row is written (a clean stop): every mark holds."""
        with self.lock:
            due = _merge_max(self.ripe, self.arrived)
            self.ripe, self.arrived = {}, {}
        self._commit(due)
        if self.conn is not None:
            self.conn.close()

    def _commit(self, due: dict[int, int]) -> None:
        if not due:
            return
        try:
            if self.conn is None or self.conn.closed:
                self.conn = connect(self.database_url, autocommit=True)
            with self.conn.cursor() as cur:
                _upsert_progress(cur, self.flow, due)
        except psycopg.OperationalError as err:  # the next epoch commits them
            log.warning("progress not recorded (%s); next epoch", err)
            self.conn = None
            with self.lock:
                _merge_max(self.ripe, due)


def _merge_max(into: dict[int, int], more: dict[int, int]) -> dict[int, int]:
    for k, pos in more.items():
        if pos > into.get(k, 0):
            into[k] = pos
    return into


class _Batch:
    """One sink batch, reduced to the last row per key (rows are absolute values)."""

    def __init__(self) -> None:
        self.intervals: dict[tuple[str, Any], IntervalRow | None] = {}  # None: delete it
        self.hours: dict[tuple[str, Any], HourRow] = {}
        self.kpis: dict[tuple[str, str, Any], KpiRow] = {}
        self.reasons: dict[tuple[str, str, Any], tuple[tuple[str, float, int], ...]] = {}
        self.scrap: dict[tuple[str, Any], ScrapSetRow] = {}
        self.status: dict[str, StatusRow] = {}
        self.dead: list[tuple[str, str, int]] = []
        self.last_seq = 0
        self.max_seq = 0  # the highest seq this batch names (Progress or a rejection)
        self.orders: dict[str, OrderProgressRow] = {}
        self.work_orders: dict[str, WorkOrderProgressRow] = {}
        self.callbacks: list[Callback] = []  # in order: delivered in this order per order
        self.alerts: list[AlertRow] = []  # every step, in order
        self.values: list[process_values.ValueRow] = []  # raw process values: every one
        self.lots: list[lots.LotRow | lots.OperatorActivity] = []  # traceability: every one
        # Out-of-limit spans and product runs (streams/limit_spans.py): the last of each.
        self.spans: dict[tuple[str, str, Any], limit_spans.LimitSpan] = {}
        self.runs: dict[tuple[str, Any], limit_spans.ProductRun] = {}
        self.registered = row_stores.Pending()  # people and quality rows (issue 13)
        self.read: dict[int, int] = {}  # a cluster: how far each log partition is read

    def add_all(self, items: list[Any]) -> None:
        """`add` for each, the most frequent row types inline (one call per list)."""
        intervals, status, hours, kpis = self.intervals, self.status, self.hours, self.kpis
        add = self.add
        for item in items:
            t = type(item)
            if t is IntervalRow:
                intervals[(item.machine, item.start_ts)] = item
            elif t is StatusRow:
                status[item.machine] = item
            elif t is HourRow:
                hours[(item.machine, item.hour_start)] = item
            elif t is KpiRow:
                kpis[(item.machine, item.bucket, item.bucket_start)] = item
            else:
                add(item)

    def add(self, item: Any) -> None:
        t = type(item)
        if t is HourRow:
            self.hours[(item.machine, item.hour_start)] = item
        elif t is KpiRow:
            self.kpis[(item.machine, item.bucket, item.bucket_start)] = item
        elif t is ReasonSetRow:
            self.reasons[(item.machine, item.bucket, item.bucket_start)] = item.items
        elif t is ScrapSetRow:
            self.scrap[(item.machine, item.hour_start)] = item
        elif t is IntervalRow:
            self.intervals[(item.machine, item.start_ts)] = item
        elif t is IntervalDelete:
            self.intervals[(item.machine, item.start_ts)] = None
        elif t is StatusRow:
            self.status[item.machine] = item
        elif t is Rejection:
            self.dead.append((item.reason, item.detail, item.seq))
            self.max_seq = max(self.max_seq, item.seq)
        elif t is Progress:
            self.last_seq = max(self.last_seq, item.last_seq)
            self.max_seq = max(self.max_seq, item.last_seq)
        elif t is OrderProgressRow:
            self.orders[item.order_no] = item
        elif t is WorkOrderProgressRow:
            self.work_orders[item.work_order] = item
        elif t is Callback:
            self.callbacks.append(item)
        elif t is AlertRow:
            self.alerts.append(item)
        elif t is process_values.ProcessValues:
            self.values.extend(item.rows)
        elif t is lots.LotRow or t is lots.OperatorActivity:
            self.lots.append(item)
        elif t is limit_spans.LimitSpan:
            self.spans[(item.machine, item.name, item.start)] = item
        elif t is limit_spans.ProductRun:
            self.runs[(item.machine, item.start)] = item
        elif t is ReadMark:
            _merge_max(self.read, dict(item.positions))
        elif not self.registered.add(item) and t not in PASSED_THROUGH:
            unstored(t)


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


    One partition, in a cluster too: every row crosses to the worker that owns it, and one
    writer commits them in the order each worker sent them (a machine's rows stay in order).
    `marks`: the log's readers send ReadMarks (a cluster), recorded per log partition in
    dataflow_progress; else a batch's Progress is every partition's position.
    """

    def __init__(
        self,
        database_url: str,
        flow_name: str = "machines",
        alerts: AlertsConfig | None = None,
        *,
        marks: bool = False,
        gather: timedelta | None = None,
    ) -> None:
        self.database_url = database_url
        self.flow_name = flow_name
        self.alerts = alerts  # the alerts file: who each alert step is delivered to
        self.marks = marks
        self.gather = gather

    def list_parts(self) -> list[str]:
        return ["results"]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _ResultsPartition:
        part = _ResultsPartition(self.database_url, self.flow_name, self.alerts, self.gather)
        if self.marks:
            part.ledger = _MarkLedger(self.database_url, self.flow_name)
        return part


# Put by snapshot() and close(): the writer ends its gather window at once.
_FLUSH: list[Any] = []


class _ResultsPartition(StatefulSinkPartition[Any, None]):
    def __init__(
        self,
        database_url: str,
        flow_name: str,
        alerts: AlertsConfig | None = None,
        gather: timedelta | None = None,
    ) -> None:
        self.database_url = database_url
        self.flow_name = flow_name
        self.alerts = alerts
        # Live: how long the writer, once it has rows, waits for more before it writes.
        # One poll reaches the sink as several batches (the machines', the timers', the
        # orders'), and each was its own transaction: ~2 per poll, 105 a second at 5,000
        # events/s, each costing the writer and PostgreSQL the same whatever its size.
        self.gather_s = gather.total_seconds() if gather else 0.0
        self.conn: psycopg.Connection | None = None
        # Bounded: when PostgreSQL falls behind, the dataflow waits here.
        self.queue: queue.Queue[list[Any] | None] = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.seen_seq = 0  # the highest ingest_log seq the sink has seen named
        self.ledger: _MarkLedger | None = None  # a cluster: progress from ReadMarks
        self.writer = threading.Thread(target=self._run, name="results-writer", daemon=True)
        self.writer.start()

    def write_batch(self, values: list[Any]) -> None:
        self._raise_if_failed()
        self.queue.put(values)

    def snapshot(self) -> None:
        if self.gather_s:
            self.queue.put(_FLUSH)  # the writer stops gathering: the flow waits on it
        self.queue.join()  # everything of this epoch is committed
        self._raise_if_failed()
        if self.ledger is not None:
            self.ledger.epoch_ended()

    def close(self) -> None:
        if self.gather_s:
            self.queue.put(_FLUSH)
        self.queue.join()
        self.queue.put(None)
        self.writer.join(timeout=30)
        if self.conn is not None:
            self.conn.close()
        self._raise_if_failed()
        if self.ledger is not None:
            self.ledger.closing()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise RuntimeError("writing results to PostgreSQL failed") from self.error

    def _run(self) -> None:
        while True:
            values = self.queue.get()
            if values is None:
                self.queue.task_done()
                return
            if values is _FLUSH:  # nothing was being gathered
                self.queue.task_done()
                continue
            # Merge what else is waiting, or arrives within the gather window: fewer,
            # larger transactions (last row per key wins).
            batches = [values]
            until = time.monotonic() + self.gather_s
            while True:
                try:
                    wait = until - time.monotonic()
                    more = self.queue.get(timeout=wait) if wait > 0 else self.queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self.queue.put(None)  # keep the stop signal for the outer loop
                    self.queue.task_done()
                    break
                if more is _FLUSH:  # a snapshot or the end waits: write now
                    self.queue.task_done()
                    break
                batches.append(more)
            try:
                if self.error is None:
                    batch = _Batch()
                    for vals in batches:
                        for item in vals:
                            # The dataflow sends rows in lists (streams/dataflow.py).
                            if type(item) is list:
                                batch.add_all(item)
                            else:
                                batch.add(item)
                    self._write_retrying(batch)
            except BaseException as err:  # surfaced to the dataflow by the next call
                self.error = err
            finally:
                for _ in batches:
                    self.queue.task_done()

    def _write_retrying(self, batch: _Batch) -> None:
        # Keep writing through a database restart: retrying the same absolute rows is safe.
        self.seen_seq = max(self.seen_seq, batch.max_seq)
        delay = 0.5
        while True:
            try:
                try:
                    self._write(batch)
                except psycopg.OperationalError:
                    raise
                except Exception as err:
                    # Whatever the staged path refuses (a value PostgreSQL refuses, one its
                    # binary encoding does not take), the array path decides as it always
                    # did: stored, or refused and written row by row. A warning: a staged
                    # path failing on every write would double the writer's work unseen.
                    log.warning("staged write failed (%s); writing the batch as arrays", err)
                    try:
                        self._write(batch, arrays=True)
                    except REFUSALS as err:
                        log.warning("the database refused a row (%s); writing row by row", err)
                        self._write_row_by_row(batch)
                return
            except psycopg.OperationalError as err:
                log.warning("results database unreachable (%s); retrying in %.1fs", err, delay)
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _connection(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.database_url, autocommit=True)
            # The staging tables of the steps' row types (row_stores.Staged), registered
            # at their import, after this module's.
            if row_stores.STAGING:
                self.conn.execute("\n".join(row_stores.STAGING).encode())
        return self.conn

    def _tables(self, batch: _Batch) -> list[tuple[Upsert, list[Any]]]:
        return [
            (INTERVALS, [r for r in batch.intervals.values() if r is not None]),
            (HOURS, list(batch.hours.values())),
            (KPIS, list(batch.kpis.values())),
            (STATUS, list(batch.status.values())),
            (ORDERS, list(batch.orders.values())),
            (WORK_ORDERS, list(batch.work_orders.values())),
        ]

    def _write(self, batch: _Batch, arrays: bool = False) -> None:
        conn = self._connection()
        gone = [(m, s) for (m, s), r in batch.intervals.items() if r is None]
        upsert_rows = _upsert_arrays if arrays else _upsert
        with conn.transaction(), conn.cursor() as cur:
            if gone:
                _delete_intervals(cur, gone)
            for upsert, rows in self._tables(batch):
                if rows:
                    upsert_rows(cur, upsert, rows)
            if batch.reasons:
                _replace_reasons(cur, list(batch.reasons.items()))
            if batch.scrap:
                _replace_scrap(cur, list(batch.scrap.items()))
            if batch.values:
                process_values.store(cur, batch.values)
            if batch.lots:
                lots.store(cur, batch.lots)
            if batch.spans or batch.runs:
                limit_spans.store(cur, list(batch.spans.values()), list(batch.runs.values()))
            for spec, rows in batch.registered.groups():
                spec.store(cur, rows)
            # Callbacks commit with the figures that caused them (transactional outbox).
            for cb in batch.callbacks:
                _enqueue(cur, cb)
            # Alert steps, and their deliveries, commit with the figures that caused them.
            for alert in batch.alerts:
                _store_alert(cur, alert, self.alerts)
            if batch.dead:
                cur.executemany(INSERT_DEAD, batch.dead)
            _record_progress(cur, self.flow_name, batch, self.ledger)

    def _write_row_by_row(self, batch: _Batch) -> None:
        """The batch again, each row in its own savepoint: a refused row is left out and
        dead-lettered, the others are stored, and the flow goes on."""
        conn = self._connection()
        refused: list[tuple[str, Any, BaseException]] = []
        with conn.transaction(), conn.cursor() as cur:

            def attempt(table: str, row: Any, write: Any, *args: Any) -> None:
                try:
                    with conn.transaction():  # a savepoint
                        write(cur, *args)
                except REFUSALS as err:
                    refused.append((table, row, err))

            for key, r in batch.intervals.items():
                if r is None:
                    attempt(INTERVALS.table, key, _delete_intervals, [key])
            for upsert, rows in self._tables(batch):
                for row in rows:
                    attempt(upsert.table, row, _upsert_arrays, upsert, [row])
            for bucket, items in batch.reasons.items():
                attempt("machine_kpi_reason", bucket, _replace_reasons, [(bucket, items)])
            for hour, scrap in batch.scrap.items():
                attempt("machine_scrap", hour, _replace_scrap, [(hour, scrap)])
            for value in batch.values:
                attempt("process_value", value, process_values.store, [value])
            for lot in batch.lots:
                attempt("lot", lot, lots.store, [lot])
            for span in batch.spans.values():
                attempt("process_limit_span", span, limit_spans.store, [span], [])
            for run in batch.runs.values():
                attempt("process_product_run", run, limit_spans.store, [], [run])
            for spec, rows in batch.registered.groups():
                for row in rows:
                    attempt(spec.table, row, spec.store, [row])
            for cb in batch.callbacks:
                attempt("outbox", cb, _enqueue, cb)
            for alert in batch.alerts:
                attempt("alert", alert, _store_alert, alert, self.alerts)
            for dead in batch.dead:
                attempt("dead_letter", dead[2], _insert_dead, *dead)
            for table, row, err in refused:
                field, value = _row_owner(table, row)
                seq = self._source_seq(cur, field, value)
                detail = (
                    f"{table} row {_describe(row)} refused: {str(err).strip()}; "
                    f"a result row sums many events: seq {seq} is the last event of "
                    f"{field} {value!r} the dataflow had read"
                )
                log.error("dead-lettering seq %s: %s", seq, detail)
                cur.execute(INSERT_DEAD, ("db_refused", safe_text(detail), seq))
            _record_progress(cur, self.flow_name, batch, self.ledger)

    def _source_seq(self, cur: psycopg.Cursor[Any], field: str, value: Any) -> int:
        """The newest event, up to the dataflow's position, whose `field` is `value`."""
        if field == "seq":
            return int(value)
        # No position seen yet (the batch's progress comes later): the newest in the log.
        bound = self.seen_seq or 2**62
        if field == "machine":  # the log keeps each event's machine (sql/010)
            row = cur.execute(LAST_OF_MACHINE, (value, bound)).fetchone()
            if row is not None and row[0] is not None:
                return int(row[0])
        rows = cur.execute(RECENT_EVENTS, (bound, _SOURCE_SEARCH_ROWS)).fetchall()
        for seq, payload in rows:
            try:
                body = json.loads(bytes(payload))
            except ValueError:
                continue
            if isinstance(body, dict) and body.get(field) == value:
                return int(seq)
        # Not among the recent events: the position itself, or the newest event.
        if self.seen_seq or not rows:
            return self.seen_seq
        return int(rows[0][0])


def _upsert(cur: psycopg.Cursor[Any], upsert: Upsert, rows: list[Any]) -> None:
    """The staged path (see Upsert): a binary COPY into the staging table, one INSERT."""
    upsert.check(rows)
    row_stores.truncate_now_and_then(cur, upsert.staged)
    with cur.copy(upsert.copy_sql) as copy:
        copy.set_types(upsert.copy_types)
        write = copy.write_row
        for row in rows:
            write(row)
    cur.execute(upsert.from_stage_sql)


def _upsert_arrays(cur: psycopg.Cursor[Any], upsert: Upsert, rows: list[Any]) -> None:
    """The array path (see Upsert): a batch the staged path refused, and row by row."""
    upsert.check(rows)
    # The SQL is built from constants.
    cur.execute(upsert.sql, row_stores.columns(rows, len(upsert.columns)))


def _delete_intervals(cur: psycopg.Cursor[Any], gone: list[tuple[str, Any]]) -> None:
    cur.execute(DELETE_INTERVALS.encode(), row_stores.columns(gone, 2))


def _replace_reasons(
    cur: psycopg.Cursor[Any],
    sets: list[tuple[tuple[str, str, Any], tuple[tuple[str, float, int], ...]]],
) -> None:
    cur.execute(DELETE_REASONS.encode(), row_stores.columns([key for key, _ in sets], 3))
    reason_rows = [
        (m, b, s, reason, seconds, stops)
        for (m, b, s), items in sets
        for reason, seconds, stops in items
    ]
    lo, hi = _INT4
    for row in reason_rows:
        if not lo <= row[5] <= hi:
            raise psycopg.errors.NumericValueOutOfRange(f"stops = {row[5]} is out of range")
    if reason_rows:
        _copy(cur, "machine_kpi_reason",
              "machine, bucket, bucket_start, reason, seconds, stops",
              ["text", "text", "timestamptz", "text", "float8", "int4"],
              reason_rows)  # fmt: skip


def _replace_scrap(
    cur: psycopg.Cursor[Any], sets: list[tuple[tuple[str, Any], ScrapSetRow]]
) -> None:
    """Each machine-hour's scrap set replaced whole: one DELETE, one COPY for the batch."""
    cur.execute(DELETE_SCRAP.encode(), row_stores.columns([key for key, _ in sets], 2))
    rows = [
        (r.machine, r.hour_start, r.day, r.shift_name, reason, product, qty)
        for _, r in sets
        for reason, product, qty in r.items
    ]
    if rows:
        _copy(cur, "machine_scrap", "machine, hour_start, day, shift_name, reason, product, qty",
              ["text", "timestamptz", "date", "text", "text", "text", "int8"],
              rows)  # fmt: skip


def _enqueue(cur: psycopg.Cursor[Any], cb: Callback) -> None:
    enqueue(cur, aggregate=cb.order_no, event_type=cb.event_type,
            payload=cb.payload, dedupe=cb.dedupe)  # fmt: skip


# The alert row only moves forward (highest level, first acknowledgement, the resolve):
# a replayed or re-sent older step changes nothing.
UPSERT_ALERT = """
INSERT INTO alert AS a (alert_id, rule, kind, scope, machine, line, order_no, severity, level,
    started_at, opened_at, escalated_at, acknowledged_at, acknowledged_by, resolved_at, facts)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (alert_id) DO UPDATE SET
    level = GREATEST(a.level, EXCLUDED.level),
    escalated_at = CASE WHEN EXCLUDED.level > a.level THEN EXCLUDED.escalated_at
                        ELSE a.escalated_at END,
    acknowledged_by = CASE WHEN a.acknowledged_at IS NULL THEN EXCLUDED.acknowledged_by
                           ELSE a.acknowledged_by END,
    acknowledged_at = COALESCE(a.acknowledged_at, EXCLUDED.acknowledged_at),
    resolved_at = COALESCE(a.resolved_at, EXCLUDED.resolved_at),
    facts = a.facts || EXCLUDED.facts,
    updated_at = now()"""
INSERT_ALERT_STEP = """
INSERT INTO alert_step (alert_id, step, level, at, facts, people, channels, quiet_until)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (alert_id, step, level) DO NOTHING"""


def _store_alert(cur: psycopg.Cursor[Any], row: AlertRow, config: AlertsConfig | None) -> None:
    """One alert step: the alert row, the step, and (if the step is new) its deliveries."""
    started = from_us(int(row.alert_id.rsplit(":", 1)[1]))
    facts = Jsonb(row.facts, dumps=alert_dumps)
    acked = row.step == "acknowledged"
    by = row.facts.get("by") if acked else None
    cur.execute(
        UPSERT_ALERT,
        (row.alert_id, row.rule, row.kind, row.scope, row.machine, row.line, row.order_no,
         row.severity, row.level, started, row.opened_at,
         row.at if row.step == "escalated" else None,
         row.at if acked else None, None if by is None else str(by),
         row.at if row.step == "resolved" else None, facts),
    )  # fmt: skip
    cur.execute(
        INSERT_ALERT_STEP,
        (row.alert_id, row.step, row.level, row.at, facts, list(row.people),
         list(row.channels), row.quiet_until),
    )  # fmt: skip
    if cur.rowcount == 1 and config is not None:  # a new step: deliver it (once)
        enqueue_alert(cur, row, config)


def _insert_dead(cur: psycopg.Cursor[Any], reason: str, detail: str, seq: int) -> None:
    cur.execute(INSERT_DEAD, (reason, detail, seq))


def _row_owner(table: str, row: Any) -> tuple[str, Any]:
    """What a refused row belongs to, to find its source event: (payload field, value)."""
    if table == "dead_letter":
        return "seq", row
    spec = row_stores.REGISTRY.get(type(row))
    if spec is not None:
        return row_stores.owner_of(spec, row)
    if table == "outbox" or isinstance(row, OrderProgressRow):
        return "order_no", row.order_no
    if isinstance(row, AlertRow):
        return ("machine", row.machine) if row.machine else ("order_no", row.order_no)
    if isinstance(row, WorkOrderProgressRow):
        return "work_order", row.work_order
    if isinstance(row, tuple) and not hasattr(row, "_fields"):  # a (machine, ...) key
        return "machine", row[0]
    return "machine", row.machine


def _describe(row: Any) -> str:
    text = repr(row)
    return text if len(text) <= 300 else text[:300] + "..."
