"""Retention: delete what is old and no longer needed, in short batches.

Tables and what always stays, whatever its age (docs/operations.md, "Retention"):

- `ingest_log`: rows the dataflow has not consumed, or that a resume from its newest
  Bytewax snapshot (`log_bound`) or a machine rebuild from a checkpoint (`_log_may_go`)
  would read again. Unresolved dead letters get their payload copied out first.
- `dead_letter`: resolved ones after `dead_letter_days`; unresolved ones only when
  `unresolved_dead_letter_days` is set.
- `outbox`: delivered callbacks only; pending and failed ones stay.
- `intake_delivery`: the CRM inbox (a redelivery older than this is answered by the order
  version guard instead).
- `order_history`: changes of orders that are closed or cancelled (or gone); the history
  of an open or held order stays whole.
- `late_merge`: events merged late whose machine's figures are stored since (what a
  running `mesflow replay` waits on stays, LATE_MERGE_WHERE), and pending ones of a
  machine no longer in the plant (never merged).
- `alert_delivery`: alert messages sent, stale or failed; pending ones stay.
- `alert` (with its `alert_step` rows): resolved alerts; open and acknowledged ones stay.
- `labor_issue`: sign-in anomalies (a duplicate sign-in, a forgotten sign-out) by their time.
- `robot_budget`: a robot's row once its newest send is far outside any budget window
  (the dispatcher creates it again on the next send).

Every batch is its own short transaction, so a run holds no lock for long, and a run
killed at any point leaves a consistent database; the next run goes on from there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import click
import psycopg
from psycopg import sql

from mesflow.db import connect, timescaledb_available, unreachable
from mesflow.plant import PlantConfig
from mesflow.settings import Settings

log = logging.getLogger(__name__)

# One retention run per database at a time (several `mesflow run notify` may run).
RETENTION_LOCK = 0x6D726574
CHECKPOINT_TABLE = "machine_checkpoint"
ROBOT_BUDGET_DAYS = 1  # a robot's budget row goes after a day without a send (not a setting)
_CHECKPOINT_SEQ_COLUMNS = ("log_seq", "seq", "last_seq", "upto_seq")


class RetentionBusy(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Days to keep per table (0 = forever) and how to delete."""

    ingest_log_days: int = 30
    dead_letter_days: int = 90  # resolved dead letters
    unresolved_dead_letter_days: int = 0
    outbox_days: int = 30  # delivered callbacks
    intake_days: int = 30
    order_history_days: int = 365  # closed or cancelled orders
    late_merge_days: int = 30  # late events merged (or never mergeable)
    process_value_days: int = 7  # raw process values
    process_minute_days: int = 180  # their per-minute rollup
    alert_delivery_days: int = 90  # alert messages sent, stale or failed
    alert_days: int = 365  # resolved alerts (their steps go with them)
    labor_issue_days: int = 365  # sign-in anomalies
    batch_rows: int = 2000
    # The log is the dedupe index: a row stays at least as long as a resent copy of its
    # input could still be accepted (the plant's max_event_age_days + max_clock_skew).
    dedupe_window: timedelta = timedelta(days=30, seconds=300)
    # How long before the dataflow's latest commit a position must have been seen before
    # the log is pruned up to it (many snapshot intervals: the resume point is past it).
    resume_margin: timedelta = timedelta(minutes=10)

    @classmethod
    def from_settings(cls, s: Settings, plant: PlantConfig) -> RetentionPolicy:
        return cls(
            dedupe_window=timedelta(
                days=plant.plant.max_event_age_days, seconds=plant.plant.max_clock_skew_seconds
            ),
            ingest_log_days=s.retention_ingest_log_days,
            dead_letter_days=s.retention_dead_letter_days,
            unresolved_dead_letter_days=s.retention_unresolved_dead_letter_days,
            outbox_days=s.retention_outbox_days,
            intake_days=s.retention_intake_days,
            order_history_days=s.retention_order_history_days,
            late_merge_days=s.retention_late_merge_days,
            process_value_days=s.retention_process_value_days,
            process_minute_days=s.retention_process_minute_days,
            alert_delivery_days=s.retention_alert_delivery_days,
            alert_days=s.retention_alert_days,
            labor_issue_days=s.retention_labor_issue_days,
            batch_rows=s.retention_batch_rows,
            resume_margin=timedelta(seconds=s.retention_resume_margin_s),
        )


# --- pure logic -----------------------------------------------------------------------


def log_cutoff(now: datetime, days: int, dedupe_window: timedelta) -> datetime:
    """Log rows received before this may go (age permitting everything else).

    Never less than the dedupe window: an input resent later (an edge gateway flushing its
    buffer, a file replayed again) is either still deduplicated by its row's key or so old
    that the clock policy refuses it as `too_old`; it is never counted a second time.
    """
    return now - max(timedelta(days=days), dedupe_window)


@dataclass(frozen=True, slots=True)
class Observation:
    flow: str
    last_seq: int
    observed_at: datetime


@dataclass(frozen=True, slots=True)
class FlowProgress:
    flow: str
    last_seq: int
    updated_at: datetime


def confirmed_position(
    progress: Sequence[FlowProgress], observations: Iterable[Observation], margin: timedelta
) -> int:
    """The highest log seq that every dataflow has surely snapshotted past.

    `dataflow_progress.last_seq` commits with the results, before the Bytewax snapshot
    that covers it (streams/pg_sink.py, streams/runner.py): a dataflow killed then resumes
    from an older position and reads those rows again. A position seen at least `margin`
    before the flow's latest commit is safe: the flow kept running and committing that
    long afterwards, through many snapshot intervals. No flow, or no such observation: 0.
    """
    if not progress:
        return 0
    obs = list(observations)
    bound: int | None = None
    for p in progress:
        seen = [
            o.last_seq for o in obs if o.flow == p.flow and o.observed_at <= p.updated_at - margin
        ]
        confirmed = min(max(seen), p.last_seq) if seen else 0
        bound = confirmed if bound is None else min(bound, confirmed)
    return bound or 0


def log_prune_upto(confirmed: int, aged_upto: int) -> int:
    """Highest seq that may go: consumed and confirmed, and older than the retention.
    Machine checkpoints may keep rows below it (`_log_may_go`)."""
    return max(min(confirmed, aged_upto), 0)


# --- database ---------------------------------------------------------------------------


@dataclass(slots=True)
class LogBound:
    """Why the ingest log may be pruned up to `upto` and no further."""

    upto: int
    confirmed: int
    progress: int | None  # lowest dataflow_progress.last_seq; None: no dataflow ran
    checkpoint: int | None  # oldest machine checkpoint's seq
    aged: int  # highest seq older than the retention
    checkpoint_column: str | None = None  # machine_checkpoint's seq column, if the table exists

    @property
    def params(self) -> dict[str, int]:
        """Parameters of `_log_may_go`."""
        return {"null_upto": self.upto if self.checkpoint is None else self.checkpoint}


@dataclass(slots=True)
class Removed:
    table: str
    rows: int = 0
    note: str = ""
    seconds: float = 0.0


@dataclass(slots=True)
class TableStatus:
    table: str
    rows: int
    bytes: int
    oldest: datetime | None
    would_go: int
    note: str = ""


@dataclass(frozen=True, slots=True)
class _Target:
    """One table's retention: the rows it governs (`scope`) and which of them may go."""

    table: str
    label: str  # as shown by `retention status`
    days: int
    scope: str  # SQL predicate: the rows this setting governs
    age: str  # SQL expression: the time a row's age counts from
    where: str  # SQL predicate with %(cutoff)s: old enough to go
    note: str
    # Batches by this key: ctid is cheapest, but a TimescaleDB hypertable repeats ctids
    # across its chunks, so a hypertable names its primary key.
    key: str = "ctid"
    before: str | None = None  # SQL with %(cutoff)s run in each batch's transaction first


# A `mesflow replay` waits while a late event of its lines is pending, or merged but its
# machine's rebuilt figures are not stored yet (streams/rebuild.py, wait_for_merges: the
# machine's status row, rewritten by every rebuild, older than the merge). A row goes only
# when that wait is over for it, so no running replay can see a merge it still waits on
# vanish. A pending row goes only when its machine is no longer in the plant model: no
# dataflow rebuilds it any more, and a replay gives up waiting ten minutes after its lines
# were processed, long before the days are up.
LATE_MERGE_WHERE = """(
    (merged_at < %(cutoff)s AND NOT EXISTS (
        SELECT 1 FROM machine_status s
        WHERE s.machine = late_merge.machine AND s.updated_at < late_merge.merged_at))
    OR (merged_at IS NULL AND seen_at < %(cutoff)s AND NOT EXISTS (
        SELECT 1 FROM plant_machine p WHERE p.machine = late_merge.machine)))"""


def _targets(policy: RetentionPolicy) -> list[_Target]:
    return [
        _Target(
            "dead_letter",
            "dead_letter resolved",
            policy.dead_letter_days,
            "resolved_at IS NOT NULL",
            "resolved_at",
            "resolved_at < %(cutoff)s",
            "resolved (requeued or discarded) dead letters",
        ),
        _Target(
            "dead_letter",
            "dead_letter open",
            policy.unresolved_dead_letter_days,
            "resolved_at IS NULL",
            "recorded_at",
            "resolved_at IS NULL AND recorded_at < %(cutoff)s",
            "open dead letters",
        ),
        _Target(
            "outbox",
            "outbox",
            policy.outbox_days,
            "true",
            "created_at",
            "status = 'delivered' AND delivered_at < %(cutoff)s",
            "delivered callbacks (pending and failed ones stay)",
        ),
        _Target(
            "intake_delivery",
            "intake_delivery",
            policy.intake_days,
            "true",
            "received_at",
            "received_at < %(cutoff)s",
            "CRM deliveries (inbox)",
        ),
        _Target(
            "order_history",
            "order_history",
            policy.order_history_days,
            "true",
            "accepted_at",
            "accepted_at < %(cutoff)s AND NOT EXISTS (SELECT 1 FROM crm_order o "
            "WHERE o.order_no = order_history.order_no AND o.status IN ('open', 'on_hold'))",
            "changes of closed, cancelled or removed orders",
        ),
        _Target(
            "late_merge",
            "late_merge",
            policy.late_merge_days,
            "true",
            "seen_at",
            LATE_MERGE_WHERE,
            "late events merged and stored (pending ones stay)",
        ),
        # Raw process values: the horizon goes up with each batch, so the sink never
        # stores a pruned value again (it would count twice in the rollup, sql/021).
        _Target(
            "process_value",
            "process_value",
            policy.process_value_days,
            "true",
            "ts",
            "ts < %(cutoff)s",
            "raw process values (the per-minute rollup stays)",
            key="machine, name, ts",
            before="UPDATE process_value_horizon "
            "SET pruned_before = GREATEST(pruned_before, %(cutoff)s)",
        ),
        _Target(
            "process_value_minute",
            "process_value_minute",
            policy.process_minute_days,
            "true",
            "minute",
            "minute < %(cutoff)s",
            "per-minute process value rollup",
            key="machine, name, minute",
        ),
        _Target(
            "alert_delivery",
            "alert_delivery",
            policy.alert_delivery_days,
            "true",
            "created_at",
            "status IN ('sent', 'stale', 'failed') AND created_at < %(cutoff)s",
            "alert messages sent, stale or failed (pending ones stay)",
        ),
        # alert_step rows go with their alert (ON DELETE CASCADE, sql/018).
        _Target(
            "alert",
            "alert (+ alert_step)",
            policy.alert_days,
            "true",
            "opened_at",
            "resolved_at < %(cutoff)s",
            "resolved alerts and their steps (open and acknowledged ones stay)",
        ),
        # The labour board lists them by their time (a range of at most 92 days); a rebuild
        # from the log writes back only what the log still holds, younger than this.
        _Target(
            "labor_issue",
            "labor_issue",
            policy.labor_issue_days,
            "true",
            "ts",
            "ts < %(cutoff)s",
            "sign-in anomalies (duplicate sign-ins, forgotten sign-outs)",
        ),
        # A budget window is seconds long: a robot silent for a day has nothing in it. The
        # dispatcher's upsert locks the row (notify/robot_budget.py), so none vanishes
        # between its insert and its read.
        _Target(
            "robot_budget",
            "robot_budget",
            ROBOT_BUDGET_DAYS,
            "true",
            "sends[1]",
            "NOT EXISTS (SELECT 1 FROM unnest(sends) t WHERE t >= %(cutoff)s)",
            "budget rows of robots with every send",
        ),
    ]


def _now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    at: datetime = row[0]
    return at


def _checkpoint_column(conn: psycopg.Connection[Any]) -> str | None:
    """The log-seq column of machine_checkpoint, if that table exists (helper migration)."""
    cols = [
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s",
            (CHECKPOINT_TABLE,),
        )
    ]
    for name in _CHECKPOINT_SEQ_COLUMNS:
        if name in cols:
            return name
    return next((c for c in cols if c.endswith("seq")), None)


def oldest_checkpoint_seq(conn: psycopg.Connection[Any]) -> int | None:
    column = _checkpoint_column(conn)
    if column is None:
        return None
    row = conn.execute(
        sql.SQL("SELECT min({}) FROM {}").format(
            sql.Identifier(column), sql.Identifier(CHECKPOINT_TABLE)
        )
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _aged_upto(conn: psycopg.Connection[Any], cutoff: datetime, upto: int) -> int:
    """Highest seq <= upto received before `cutoff`, by binary search on the primary key.

    seq follows commit order and received_at the append time, so received_at rises with
    seq (to within one append's duration): no index on received_at is needed, and
    collectors' appends stay as cheap as before.
    """

    def first_at_or_after(seq: int) -> tuple[int, datetime] | None:
        row = conn.execute(
            "SELECT seq, received_at FROM ingest_log WHERE seq >= %s ORDER BY seq LIMIT 1",
            (seq,),
        ).fetchone()
        return None if row is None else (int(row[0]), row[1])

    head = first_at_or_after(0)
    if head is None or head[0] > upto or head[1] >= cutoff:
        return 0
    lo, hi = head[0], upto  # lo is old enough; find the last old-enough seq up to hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        found = first_at_or_after(mid)
        if found is None or found[0] > hi or found[1] >= cutoff:
            hi = mid - 1
        else:
            lo = found[0]
    return lo


def log_bound(
    conn: psycopg.Connection[Any], policy: RetentionPolicy, *, observe: bool = True
) -> LogBound:
    """How far the ingest log may be pruned now; records this run's observation."""
    now = _now(conn)
    progress = [
        FlowProgress(str(f), int(s), u)
        for f, s, u in conn.execute("SELECT flow, last_seq, updated_at FROM dataflow_progress")
    ]
    if observe and progress:
        with conn.transaction():
            conn.cursor().executemany(
                "INSERT INTO retention_observation (flow, last_seq, observed_at) "
                "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                [(p.flow, p.last_seq, now) for p in progress],
            )
    observations = [
        Observation(str(f), int(s), t)
        for f, s, t in conn.execute("SELECT flow, last_seq, observed_at FROM retention_observation")
    ]
    confirmed = confirmed_position(progress, observations, policy.resume_margin)
    if observe:
        _forget_superseded(conn, progress, policy.resume_margin)
    column = _checkpoint_column(conn)
    checkpoint = oldest_checkpoint_seq(conn)
    if policy.ingest_log_days == 0:
        aged = 0
    else:
        cutoff = log_cutoff(now, policy.ingest_log_days, policy.dedupe_window)
        aged = _aged_upto(conn, cutoff, confirmed)
    return LogBound(
        upto=log_prune_upto(confirmed, aged),
        confirmed=confirmed,
        progress=min((p.last_seq for p in progress), default=None),
        checkpoint=checkpoint,
        aged=aged,
        checkpoint_column=column,
    )


def _log_may_go(checkpoint_column: str | None) -> sql.Composable:
    """Which log rows `l` (at or below the bound) no machine rebuild needs.

    A late event makes the dataflow rebuild its machine from a checkpoint, reading the
    rows of that machine, and the rows naming no machine (orders, work orders), after the
    checkpoint's seq; a machine without a checkpoint is rebuilt from an empty tracker, so
    from the start of the log. Hence a row of machine M goes only up to M's oldest
    checkpoint, nothing of a plant machine without a checkpoint goes, and a row naming no
    machine goes only up to the oldest checkpoint of all. Rows of machines that are not in
    the plant (no tracker, no rebuild) go. Per machine, so that one idle machine's old
    checkpoint does not keep every machine's rows.
    """
    if checkpoint_column is None:
        return sql.SQL("true")
    return sql.SQL(
        """l.seq <= CASE
               WHEN l.machine IS NULL THEN %(null_upto)s
               ELSE COALESCE(
                   (SELECT min(c.{col}) FROM machine_checkpoint c WHERE c.machine = l.machine),
                   CASE WHEN EXISTS (SELECT 1 FROM plant_machine p WHERE p.machine = l.machine)
                        THEN 0 ELSE l.seq END)
           END"""
    ).format(col=sql.Identifier(checkpoint_column))


def _forget_superseded(
    conn: psycopg.Connection[Any], progress: Sequence[FlowProgress], margin: timedelta
) -> None:
    """Keep per flow the newest observation that already counts, and every newer one."""
    with conn.transaction():
        for p in progress:
            conn.execute(
                """DELETE FROM retention_observation
                   WHERE flow = %(flow)s AND observed_at < (
                       SELECT max(observed_at) FROM retention_observation
                       WHERE flow = %(flow)s AND observed_at <= %(limit)s)""",
                {"flow": p.flow, "limit": p.updated_at - margin},
            )


Progress = Callable[[str], None]
_PROGRESS_EVERY_S = 2.0


def _prune_log(
    conn: psycopg.Connection[Any],
    bound: LogBound,
    batch_rows: int,
    progress: Progress | None,
    stop: Callable[[], bool],
) -> int:
    removed = 0
    last_note = time.monotonic()
    upto = bound.upto
    may_go = _log_may_go(bound.checkpoint_column)
    row = conn.execute("SELECT min(seq) FROM ingest_log").fetchone()
    if row is None or row[0] is None or upto <= 0:
        return 0
    after = int(row[0]) - 1
    while after < upto and not stop():
        with conn.transaction():
            row = conn.execute(
                """SELECT max(seq), count(*) FROM (
                       SELECT seq FROM ingest_log WHERE seq > %s AND seq <= %s
                       ORDER BY seq LIMIT %s) b""",
                (after, upto, batch_rows),
            ).fetchone()
            if row is None or row[1] == 0:
                break
            hi = int(row[0])
            # The one copy of an unresolved dead letter's payload moves out of the log.
            params = {"lo": after, "hi": hi, **bound.params}
            conn.execute(
                sql.SQL(
                    """UPDATE dead_letter d SET payload = l.payload
                       FROM ingest_log l
                       WHERE d.log_seq > %(lo)s AND d.log_seq <= %(hi)s AND l.seq = d.log_seq
                         AND d.payload IS NULL AND d.resolved_at IS NULL AND {}"""
                ).format(may_go),
                params,
            )
            cur = conn.execute(
                sql.SQL(
                    "DELETE FROM ingest_log l WHERE l.seq > %(lo)s AND l.seq <= %(hi)s AND {}"
                ).format(may_go),
                params,
            )
            removed += cur.rowcount
        after = hi
        if progress and time.monotonic() - last_note >= _PROGRESS_EVERY_S:
            progress(f"ingest_log: {removed:,} rows removed so far (up to seq {after} of {upto})")
            last_note = time.monotonic()
    return removed


def _prune_table(
    conn: psycopg.Connection[Any],
    target: _Target,
    cutoff: datetime,
    batch_rows: int,
    progress: Progress | None,
    stop: Callable[[], bool],
) -> int:
    # ctid batches: one short transaction per batch whatever the table's key.
    batch = f"SELECT {target.key} FROM {{t}} WHERE {target.where} LIMIT %(n)s"
    statement = sql.SQL(
        f"DELETE FROM {{t}} WHERE ctid = ANY(ARRAY({batch}))"
        if target.key == "ctid"
        else f"DELETE FROM {{t}} WHERE ({target.key}) IN ({batch})"
    ).format(t=sql.Identifier(target.table))
    removed = 0
    last_note = time.monotonic()
    while not stop():
        with conn.transaction():
            if target.before:
                conn.execute(target.before, {"cutoff": cutoff})
            cur = conn.execute(statement, {"cutoff": cutoff, "n": batch_rows})
        removed += cur.rowcount
        if cur.rowcount < batch_rows:
            break
        if progress and time.monotonic() - last_note >= _PROGRESS_EVERY_S:
            progress(f"{target.label}: {removed:,} rows removed so far ({target.note})")
            last_note = time.monotonic()
    return removed


def _lock(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (RETENTION_LOCK,)).fetchone()
    if not row or not row[0]:
        raise RetentionBusy("another retention run is in progress on this database")


def run_retention(
    database_url: str,
    policy: RetentionPolicy,
    *,
    progress: Progress | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> list[Removed]:
    """Delete what the policy lets go; returns what was removed per table."""
    results: list[Removed] = []
    with connect(database_url, autocommit=True) as conn:
        _lock(conn)  # released when the connection closes
        started = time.monotonic()
        bound = log_bound(conn, policy)
        rows = _prune_log(conn, bound, policy.batch_rows, progress, stop)
        results.append(
            Removed("ingest_log", rows, _describe_bound(bound), time.monotonic() - started)
        )
        now = _now(conn)
        for target in _targets(policy):
            if target.days == 0:
                results.append(Removed(target.label, 0, f"{target.note}: kept forever"))
                continue
            started = time.monotonic()
            rows = _prune_table(
                conn,
                target,
                now - timedelta(days=target.days),
                policy.batch_rows,
                progress,
                stop,
            )
            results.append(
                Removed(
                    target.label,
                    rows,
                    f"{target.note} older than {target.days} days",
                    time.monotonic() - started,
                )
            )
    return results


def _describe_bound(b: LogBound) -> str:
    if b.progress is None:
        return "kept whole: no dataflow has consumed it yet"
    parts = [f"up to seq {b.upto}" if b.upto else "nothing removable"]
    parts.append(f"dataflow at {b.progress}, confirmed up to {b.confirmed}")
    if b.checkpoint_column is not None:
        parts.append(
            "machine rows up to their machine's oldest checkpoint"
            + (f", others up to {b.checkpoint}" if b.checkpoint is not None else "")
        )
    parts.append(f"old enough up to {b.aged}")
    return "; ".join(parts)


def retention_status(database_url: str, policy: RetentionPolicy) -> list[TableStatus]:
    """Sizes, oldest rows and what a run would remove now (changes nothing)."""
    out: list[TableStatus] = []
    with connect(database_url, autocommit=True) as conn:
        now = _now(conn)
        bound = log_bound(conn, policy, observe=False)
        row = conn.execute(
            sql.SQL(
                """SELECT count(*), pg_total_relation_size('ingest_log'),
                          (SELECT received_at FROM ingest_log ORDER BY seq LIMIT 1),
                          count(*) FILTER (WHERE l.seq <= %(upto)s AND {})
                   FROM ingest_log l"""
            ).format(_log_may_go(bound.checkpoint_column)),
            {"upto": bound.upto, **bound.params},
        ).fetchone()
        assert row is not None
        out.append(
            TableStatus("ingest_log", row[0], row[1], row[2], row[3], _describe_bound(bound))
        )
        shown: set[str] = set()
        for target in _targets(policy):
            cutoff = now - timedelta(days=target.days) if target.days else None
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*) FILTER (WHERE " + target.scope + "), "
                    "pg_total_relation_size(%(t)s), "
                    "min(" + target.age + ") FILTER (WHERE " + target.scope + "), "
                    "count(*) FILTER (WHERE " + target.where + ") FROM {}"
                ).format(sql.Identifier(target.table)),
                {"t": target.table, "cutoff": cutoff or datetime.min.replace(tzinfo=now.tzinfo)},
            ).fetchone()
            assert row is not None
            keep = f"{target.days} days" if target.days else "kept forever"
            out.append(
                TableStatus(
                    target.label,
                    row[0],
                    0 if target.table in shown else row[1],  # a table's size once
                    row[2],
                    row[3] if target.days else 0,
                    f"{target.note}: {keep}",
                )
            )
            shown.add(target.table)
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE resolved_at IS NULL AND payload IS NOT NULL), "
            "coalesce(sum(octet_length(payload)), 0) FROM dead_letter"
        ).fetchone()
        assert row is not None
        out.append(
            TableStatus(
                "dead_letter payloads",
                int(row[0]),
                int(row[1]),
                None,
                0,
                "unresolved dead letters holding their own copy (log row pruned)",
            )
        )
    return out


def timescaledb_policies(database_url: str) -> list[tuple[str, str]]:
    """(hypertable, drop-after) of TimescaleDB retention policies; [] without TimescaleDB."""
    with connect(database_url, autocommit=True) as conn:
        if not timescaledb_available(conn):
            return []
        installed = conn.execute(
            "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
        if installed is None:
            return []
        return [
            (str(t), str(d))
            for t, d in conn.execute(
                """SELECT hypertable_name, config->>'drop_after'
                   FROM timescaledb_information.jobs
                   WHERE proc_name = 'policy_retention' ORDER BY hypertable_name"""
            )
        ]


def format_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


class PeriodicRetention(threading.Thread):
    """Runs retention every `interval_s` inside a long-running component until `stop`.

    A failing run is logged and tried again at the next interval: retention must never
    take down the component it lives in, nor stop silently (every run logs a line).
    """

    def __init__(
        self,
        database_url: str,
        policy: RetentionPolicy,
        interval_s: float,
        stop: threading.Event,
        first_delay_s: float = 60.0,
    ) -> None:
        super().__init__(name="retention", daemon=True)
        self.database_url = database_url
        self.policy = policy
        self.interval_s = interval_s
        self.stop_event = stop
        self.first_delay_s = first_delay_s
        self.runs = 0

    def run(self) -> None:
        delay = min(self.first_delay_s, self.interval_s)
        while not self.stop_event.wait(delay):
            delay = self.interval_s
            try:
                removed = run_retention(self.database_url, self.policy, stop=self.stop_event.is_set)
                self.runs += 1
                total = sum(r.rows for r in removed)
                log.info(
                    "retention: %d row(s) removed (%s)",
                    total,
                    ", ".join(f"{r.table} {r.rows}" for r in removed if r.rows) or "nothing due",
                )
            except RetentionBusy:
                log.info("retention: another run is in progress; next try in %.0f s", delay)
            except Exception as err:  # logged, retried next interval
                log.warning("retention run failed (%s); next try in %.0f s", err, delay)


def start_periodic(
    database_url: str, stop: threading.Event, settings: Settings | None = None
) -> PeriodicRetention | None:
    """Start periodic retention unless MESFLOW_RETENTION_INTERVAL_S is 0."""
    if settings is None:
        from mesflow.settings import get_settings

        settings = get_settings()
    if settings.retention_interval_s <= 0:
        return None
    from mesflow.plant import load_plant_config

    # The component validated the plant file at start: a failure here is a real error.
    policy = RetentionPolicy.from_settings(settings, load_plant_config(settings.plant_config))
    worker = PeriodicRetention(database_url, policy, settings.retention_interval_s, stop)
    worker.start()
    return worker


# --- `mesflow retention run|status` ----------------------------------------------------


def _policy_url() -> tuple[RetentionPolicy, str]:
    from mesflow.plant import ConfigError, load_plant_config
    from mesflow.settings import get_settings

    settings = get_settings()
    if not settings.database_url:
        raise click.ClickException("MESFLOW_DATABASE_URL is not set")
    try:  # its clock policy bounds the log's dedupe window
        plant = load_plant_config(settings.plant_config)
    except ConfigError as err:
        raise click.ClickException(f"plant configuration: {err}") from None
    return RetentionPolicy.from_settings(settings, plant), settings.database_url


@click.group("retention")
def cli() -> None:
    """Delete old log rows, dead letters, callbacks, deliveries and order history.

    Days per table come from MESFLOW_RETENTION_* (0 = keep forever); what the dataflow
    has not consumed, or a resume still needs, always stays (docs/operations.md).
    """


@cli.command("run")
def cli_run() -> None:
    """Remove what is due now, in short batches; prints what went per table."""
    policy, url = _policy_url()
    try:
        removed = run_retention(url, policy, progress=lambda m: click.echo(m, err=True))
    except RetentionBusy as err:
        raise click.ClickException(str(err)) from None
    except psycopg.OperationalError as err:  # the same one line as every other command
        raise click.ClickException(unreachable(url, err)) from None
    for r in removed:
        click.echo(f"{r.table:<22} {r.rows:>10,} removed  {r.note}")
    click.echo(f"{sum(r.rows for r in removed):,} row(s) removed in total")


@cli.command("status")
def cli_status() -> None:
    """Sizes, oldest rows and what a run would remove now (changes nothing)."""
    policy, url = _policy_url()
    try:
        rows = retention_status(url, policy)
        policies = timescaledb_policies(url)
    except psycopg.OperationalError as err:  # the same one line as every other command
        raise click.ClickException(unreachable(url, err)) from None
    click.echo(f"{'table':<22} {'rows':>10} {'size':>10} {'oldest':<20} {'would go':>10}  kept")
    for s in rows:
        oldest = s.oldest.strftime("%Y-%m-%d %H:%M") if s.oldest else "-"
        click.echo(
            f"{s.table:<22} {s.rows:>10,} {format_bytes(s.bytes) if s.bytes else '':>10} "
            f"{oldest:<20} "
            f"{s.would_go:>10,}  {s.note}"
        )
    for table, after in policies:
        click.echo(f"TimescaleDB drops {table} chunks older than {after}")
