"""Queries of the manager analytics page, on the public KPI views only.

The KPI rows come from `mesflow.report`'s own SQL (`kpi_query`), and every total is
`report.total_row` (times and parts summed, then divided): the page and `mesflow report` cannot
disagree. Aggregation into trends, Paretos and the loss waterfall is pure Python on those rows,
so it is tested without a browser.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql
from psycopg.rows import args_row, class_row

from dashboards.queries import Database
from mesflow.report import (
    KpiRow,
    Period,
    ReasonRow,
    Scope,
    _scope_filter,
    kpi_query,
    total_row,
)

# At most this many stops in the drill-down table (a month of a noisy plant is tens of
# thousands; nobody reads those in a browser, the CSV of a narrower filter is the way).
STOPS_LIMIT = 2_000
# The timeline draws at most this many days (the last ones of the range): 50 lanes of a
# month would be tens of thousands of rectangles, unreadable and slow to send.
TIMELINE_DAYS = 2
# Above this many machines the plant's timeline draws a lane per line with each bucket's state
# shares (timeline_shares), not a lane per machine: 500 machines' lanes are 14,000 pixels high
# and 144,000 bars (0.57 s to read alone); a line's scope still draws every interval.
TIMELINE_MACHINE_LANES = 60


@dataclass(frozen=True, slots=True)
class Filters:
    """What the page's filters select: plant-local dates [start, end), scope, shift name."""

    start: date
    end: date
    scope: Scope
    shift: str | None = None  # a shift name ("day"), every instance of it in the range

    def period(self) -> Period:
        return Period(self.start, self.end)

    def bounds(self, tz: ZoneInfo) -> tuple[datetime, datetime]:
        return datetime.combine(self.start, time(), tz), datetime.combine(self.end, time(), tz)


@dataclass(frozen=True, slots=True)
class StopRow:
    machine: str
    line: str | None
    start_ts: datetime
    end_ts: datetime | None
    state: str
    duration_s: float
    reason: str
    category: str
    work_order: str | None
    is_open: bool


@dataclass(frozen=True, slots=True)
class IntervalRow:
    machine: str
    start_ts: datetime
    end_ts: datetime | None
    state: str
    reason: str | None
    duration_s: float


@dataclass(frozen=True, slots=True)
class LineHour:
    """A line's machines' seconds in each state within one plant-local hour."""

    line: str
    hour_start: datetime
    running_s: float
    idle_s: float
    down_s: float
    setup_s: float
    planned_stop_s: float
    offline_s: float

    def seconds(self, state: str) -> float:
        return float(getattr(self, f"{state}_s"))


@dataclass(frozen=True, slots=True)
class ShiftSpan:
    shift_name: str
    bucket_start: datetime
    bucket_end: datetime


@dataclass(frozen=True, slots=True)
class MachineReliability:
    machine: str
    failures: int
    failure_s: float
    apt_s: float
    mttr_s: float | None
    mtbf_s: float | None


@dataclass(frozen=True, slots=True)
class CategoryRow:
    category: str
    seconds: float
    stops: int
    share: float | None


@dataclass(frozen=True, slots=True)
class LossStep:
    """One bar of the loss waterfall: `kind` is total, loss or result."""

    key: str
    label_key: str  # category code for availability losses, else a UI string key
    seconds: float
    kind: str


# -- queries ----------------------------------------------------------------------------------


def kpis(db: Database, f: Filters, tz: ZoneInfo) -> list[KpiRow]:
    """Shift rows of the scope in the range (report's query), only the chosen shift's."""
    query, params = kpi_query(f.scope, f.period(), "shift", tz)

    def run(conn: psycopg.Connection) -> list[KpiRow]:
        with conn.cursor(row_factory=class_row(KpiRow)) as cur:
            return cur.execute(query, params).fetchall()

    rows = db.run(run)
    return [r for r in rows if f.shift is None or r.shift_name == f.shift]


def _params(f: Filters, tz: ZoneInfo, **extra: Any) -> dict[str, Any]:
    start_ts, end_ts = f.bounds(tz)
    return {
        "scope_id": f.scope.id,
        "start": f.start,
        "end": f.end,
        "shift": f.shift,
        "start_ts": start_ts,
        "end_ts": end_ts,
        **extra,
    }


def reasons(db: Database, f: Filters, tz: ZoneInfo) -> list[ReasonRow]:
    """Downtime by reason over the shifts of the range, longest first (report's columns).

    The whole plant reads v_downtime_by_reason_plant (sql/036: the same sums per shift date,
    shift name and reason, kept on write) instead of every machine's reason rows.
    """
    if f.scope.kind == "plant":
        return _plant_reasons(db, f, tz)
    query = sql.SQL(
        "SELECT r.reason, max(r.category) AS category, max(r.reason_en) AS reason_en, "
        "max(r.reason_zh) AS reason_zh, sum(r.seconds) AS seconds, "
        "sum(r.stops)::bigint AS stops, "
        "sum(r.seconds) / NULLIF(sum(sum(r.seconds)) OVER (), 0) AS share "
        "FROM v_downtime_by_reason r WHERE r.bucket = 'shift' AND {scope} "
        "AND r.shift_date >= %(start)s AND r.shift_date < %(end)s "
        "AND (%(shift)s::text IS NULL OR r.shift_name = %(shift)s) "
        "GROUP BY r.reason ORDER BY seconds DESC, r.reason"
    ).format(scope=_scope_filter(f.scope, "r"))
    params = _params(f, tz)

    def run(conn: psycopg.Connection) -> list[ReasonRow]:
        with conn.cursor(row_factory=class_row(ReasonRow)) as cur:
            return cur.execute(query, params).fetchall()

    return db.run(run)


# The plant's reasons from v_downtime_by_reason_plant (sql/036: every machine's shift rows
# added up per shift date, shift name and reason, kept on write), as the scoped query below.
_PLANT_REASONS = (
    "SELECT r.reason, max(r.category) AS category, max(r.reason_en) AS reason_en, "
    "max(r.reason_zh) AS reason_zh, sum(r.seconds) AS seconds, "
    "sum(r.stops)::bigint AS stops, "
    "sum(r.seconds) / NULLIF(sum(sum(r.seconds)) OVER (), 0) AS share "
    "FROM v_downtime_by_reason_plant r "
    "WHERE r.shift_date >= %(start)s AND r.shift_date < %(end)s "
    "AND (%(shift)s::text IS NULL OR r.shift_name = %(shift)s) "
    "GROUP BY r.reason ORDER BY seconds DESC, r.reason"
)


def _plant_reasons(db: Database, f: Filters, tz: ZoneInfo) -> list[ReasonRow]:
    params = _params(f, tz)

    def run(conn: psycopg.Connection) -> list[ReasonRow]:
        with conn.cursor(row_factory=class_row(ReasonRow)) as cur:
            return cur.execute(_PLANT_REASONS, params).fetchall()

    return db.run(run)


def stops(
    db: Database,
    f: Filters,
    tz: ZoneInfo,
    *,
    reason: str | None = None,
    category: str | None = None,
    limit: int = STOPS_LIMIT,
) -> list[StopRow]:
    """The stops themselves (micro-stops left out), longest first: the Pareto's drill-down.

    The stops that have ended are read longest first by an index (v_stops_closed, sql/034),
    only as many as the limit; the open ones (one per machine at most) are added, and the
    whole sorted again. With a shift filter, a stop belongs to the shift instance of its
    machine it starts in.
    """
    if f.shift is None:
        in_shift = sql.SQL("true")
    else:
        # The machine's instances do not overlap (streams/shift_calendar.py): the one that
        # holds the stop's start, if any, is the latest to start before it (one probe of
        # the primary key). A scalar subquery, so the ended stops stay in index order.
        in_shift = sql.SQL(
            "(SELECT CASE WHEN s.start_ts < k.bucket_end THEN k.shift_name END "
            "FROM v_kpi_machine_shift k WHERE k.machine = s.machine "
            "AND k.bucket_start <= s.start_ts ORDER BY k.bucket_start DESC LIMIT 1) = %(shift)s"
        )
    where = sql.SQL(
        "{scope} AND NOT s.is_microstop "
        "AND s.start_ts >= %(start_ts)s AND s.start_ts < %(end_ts)s "
        "AND (%(reason)s::text IS NULL OR s.reason = %(reason)s) "
        "AND (%(category)s::text IS NULL OR s.category = %(category)s) AND {in_shift}"
    ).format(scope=_machines_of(f.scope, "s"), in_shift=in_shift)
    cols = sql.SQL(
        "s.machine, s.line, s.start_ts, s.end_ts, s.state, s.duration_s, s.reason, "
        "s.category, s.work_order, s.is_open"
    )
    order = sql.SQL("ORDER BY s.duration_s DESC, s.start_ts, s.machine LIMIT %(limit)s")
    query = sql.SQL(
        "SELECT {cols} FROM ("
        "(SELECT {cols} FROM v_stops_closed s WHERE {where} {order}) "
        "UNION ALL (SELECT {cols} FROM v_stops s WHERE s.is_open AND {where})"
        ") s {order}"
    ).format(cols=cols, where=where, order=order)
    params = _params(f, tz, reason=reason, category=category, limit=limit)

    def run(conn: psycopg.Connection) -> list[StopRow]:
        with conn.transaction(), conn.cursor(row_factory=class_row(StopRow)) as cur:
            if f.shift is not None and f.scope.kind == "plant":
                # PostgreSQL cannot know how many stops a shift keeps (a subquery's value):
                # it guesses 0.5 %, fewer than the limit, and then reads and sorts every
                # stop of the range (5 s for a month of 500 machines) instead of reading
                # the longest first until the limit is reached (60 ms).
                cur.execute("SET LOCAL enable_bitmapscan = off")
            return cur.execute(query, params).fetchall()

    return db.run(run)


def _machines_of(scope: Scope, alias: str) -> sql.Composable:
    """`scope`'s filter on the machine column: a line's machines as a list the primary key
    (machine, start_ts) can look up one by one, not a join the planner may turn into a scan
    of every machine's stops."""
    if scope.kind != "line":
        return _scope_filter(scope, alias)
    return sql.SQL(
        "{} = ANY(ARRAY(SELECT v.machine FROM v_machine_status v WHERE v.line = %(scope_id)s))"
    ).format(sql.Identifier(alias, "machine"))


def timeline(
    db: Database, f: Filters, tz: ZoneInfo
) -> tuple[list[IntervalRow], list[ShiftSpan], datetime, datetime]:
    """State intervals of the last TIMELINE_DAYS of the range, and the shift instances there."""
    start_ts, end_ts = f.bounds(tz)
    start_ts = max(start_ts, datetime.combine(f.end - timedelta(days=TIMELINE_DAYS), time(), tz))
    # The intervals that overlap [from, to): the ended ones start at most the longest ended
    # interval's length before `from` (found by sql/036's index on end_ts - start_ts), so each
    # machine's are read by its primary key from there; the open ones (one per machine) by
    # the end_ts index. The plain `end_ts > from OR end_ts IS NULL` made PostgreSQL read every
    # interval ending after `from` once per machine of a line (0.15 s for 6 machines). Seconds,
    # not the interval itself: a day subtracted from a timestamptz is a calendar day (23 or
    # 25 hours across a DST change).
    intervals = sql.SQL(
        "SELECT s.machine, s.start_ts, s.end_ts, s.state, s.reason, s.duration_s "
        "FROM v_state_intervals s WHERE {scope} "
        "AND s.start_ts < %(to)s AND s.end_ts > %(from)s "
        "AND s.start_ts >= %(from)s - make_interval(secs => (SELECT COALESCE(extract(epoch "
        "FROM max(i.end_ts - i.start_ts)), 0) FROM machine_state_interval i)) "
        "UNION ALL "
        "SELECT s.machine, s.start_ts, s.end_ts, s.state, s.reason, s.duration_s "
        "FROM v_state_intervals s WHERE {scope} AND s.start_ts < %(to)s AND s.end_ts IS NULL "
        "ORDER BY 1, 2"
    ).format(scope=_scope_filter(f.scope, "s"))
    spans = _spans(f)
    params = {"scope_id": f.scope.id, "from": start_ts, "to": end_ts}

    def run(conn: psycopg.Connection) -> tuple[list[IntervalRow], list[ShiftSpan]]:
        with conn.transaction():
            if f.scope.kind == "plant":
                # A plant's two days are ~150,000 intervals (500 machines): sorted in memory
                # (15 MB), not in temporary files (the default 4 MB spilled: +0.15 s).
                conn.execute("SET LOCAL work_mem = '64MB'")
            # Positional (the columns are IntervalRow's fields in order): class_row's keyword
            # arguments cost more than the query for a plant's 150,000 intervals.
            with conn.cursor(row_factory=args_row(IntervalRow)) as cur:
                rows = cur.execute(intervals, params).fetchall()
            with conn.cursor(row_factory=class_row(ShiftSpan)) as cur:
                return rows, cur.execute(spans, params).fetchall()

    rows, shift_spans = db.run(run)
    return rows, shift_spans, start_ts, end_ts


def timeline_shares(
    db: Database, f: Filters, tz: ZoneInfo
) -> tuple[list[LineHour], list[ShiftSpan], datetime, datetime]:
    """timeline()'s window an hour at a time: per line and plant-local hour, the seconds its
    machines spent in each state (`v_machine_hour`: the dataflow keeps every state's time per
    machine and hour on write, the same time the intervals give clipped to the hour).

    A plant's two days are 144,000 intervals (0.2 s of server time alone to read and clip them,
    more to send and build in Python) but 24,000 machine hours summed to lines x 48 rows.
    tests/test_board_scale_pages.py compares it with timeline()'s intervals summed in Python.
    """
    start_ts, end_ts = f.bounds(tz)
    start_ts = max(start_ts, datetime.combine(f.end - timedelta(days=TIMELINE_DAYS), time(), tz))
    query = sql.SQL(
        "SELECT h.line, h.hour_start, sum(h.running_s), sum(h.idle_s), sum(h.down_s), "
        "sum(h.setup_s), sum(h.planned_stop_s), sum(h.offline_s) "
        "FROM v_machine_hour h WHERE {scope} AND h.line IS NOT NULL "
        "AND h.hour_start >= %(from)s AND h.hour_start < %(to)s "
        # Hashed, sorted in Python: sorting 24,000 machine hours by the line's name under the
        # database's collation took longer than the rest of the query.
        "GROUP BY 1, 2"
    ).format(scope=_scope_filter(f.scope, "h"))
    params = {"scope_id": f.scope.id, "from": start_ts, "to": end_ts}

    def run(conn: psycopg.Connection) -> tuple[list[LineHour], list[ShiftSpan]]:
        with conn.transaction():
            with conn.cursor(row_factory=args_row(LineHour)) as cur:
                rows = cur.execute(query, params).fetchall()
            with conn.cursor(row_factory=class_row(ShiftSpan)) as cur:
                return rows, cur.execute(_spans(f), params).fetchall()

    rows, shift_spans = db.run(run)
    rows.sort(key=lambda r: (r.line, r.hour_start))
    return rows, shift_spans, start_ts, end_ts


def _spans(f: Filters) -> sql.Composed:
    """The shift instances of the scope overlapping [from, to), in time order."""
    return sql.SQL(
        "SELECT DISTINCT k.shift_name, k.bucket_start, k.bucket_end FROM v_kpi_machine_shift k "
        "WHERE {scope} AND k.bucket_start < %(to)s AND k.bucket_end > %(from)s "
        "ORDER BY k.bucket_start"
    ).format(scope=_scope_filter(f.scope, "k"))


def reliability(db: Database, f: Filters, tz: ZoneInfo) -> list[MachineReliability]:
    """MTTR and MTBF per machine over the range: sums first, then the ratios (report's rule)."""
    query = sql.SQL(
        "SELECT v.machine, sum(v.failures)::int AS failures, sum(v.failure_s) AS failure_s, "
        "sum(v.apt_s) AS apt_s FROM v_kpi_machine_shift v WHERE {scope} "
        "AND v.shift_date >= %(start)s AND v.shift_date < %(end)s "
        "AND (%(shift)s::text IS NULL OR v.shift_name = %(shift)s) "
        "GROUP BY v.machine ORDER BY v.machine"
    ).format(scope=_scope_filter(f.scope, "v"))
    params = _params(f, tz)

    def run(conn: psycopg.Connection) -> list[tuple[str, int, float, float]]:
        return conn.execute(query, params).fetchall()

    return [
        MachineReliability(
            machine=m,
            failures=n,
            failure_s=fs,
            apt_s=apt,
            mttr_s=fs / n if n > 0 else None,
            mtbf_s=apt / n if n > 0 else None,
        )
        for m, n, fs, apt in db.run(run)
    ]


# -- pure aggregation -------------------------------------------------------------------------


def by_day(rows: Sequence[KpiRow]) -> list[tuple[date, KpiRow]]:
    """One time-weighted total per shift date (the plant-local date a shift starts on)."""
    days: dict[date, list[KpiRow]] = {}
    for r in rows:
        if r.shift_date is not None:
            days.setdefault(r.shift_date, []).append(r)
    return [(d, total_row(rs)) for d, rs in sorted(days.items())]


def by_shift_name(rows: Sequence[KpiRow]) -> list[tuple[str, KpiRow]]:
    """Shift comparison: every instance of a shift name added up, in first-seen order."""
    names: dict[str, list[KpiRow]] = {}
    for r in rows:
        names.setdefault(r.shift_name or "", []).append(r)
    return [(n, total_row(rs)) for n, rs in names.items()]


def by_category(rows: Iterable[ReasonRow]) -> list[CategoryRow]:
    """The reason Pareto folded into the reason tree's categories, longest first."""
    seconds: dict[str, float] = {}
    count: dict[str, int] = {}
    for r in rows:
        seconds[r.category] = seconds.get(r.category, 0.0) + r.seconds
        count[r.category] = count.get(r.category, 0) + r.stops
    total = sum(seconds.values())
    return sorted(
        (CategoryRow(c, s, count[c], s / total if total > 0 else None) for c, s in seconds.items()),
        key=lambda c: (-c.seconds, c.category),
    )


def waterfall(
    total: KpiRow, categories: Sequence[CategoryRow], microstop_s: float
) -> list[LossStep]:
    """Planned time down to fully productive time, the six big losses in between.

    Availability loss is planned - APT, split by the categories of the reason Pareto; what
    the categories do not explain (rounding, a stop without a reason row) is its own bar so the
    bars always add up. Performance loss is APT - ideal time: micro-stops, then speed. Quality
    loss is the ideal time of the scrapped parts. What is left is OEE x planned time.
    """
    planned, apt, ideal = total.planned_s, total.apt_s, total.ideal_s
    parts = total.good + total.scrap
    steps = [LossStep("planned", "wf_planned", planned, "total")]
    availability_loss = planned - apt
    explained = 0.0
    for c in categories:
        steps.append(LossStep(f"cat:{c.category}", c.category, -c.seconds, "loss"))
        explained += c.seconds
    rest = availability_loss - explained
    if abs(rest) >= 1.0:
        steps.append(LossStep("cat:other_loss", "wf_unexplained", -rest, "loss"))
    micro = min(microstop_s, max(apt - ideal, 0.0))
    steps.append(LossStep("microstops", "wf_microstops", -micro, "loss"))
    steps.append(LossStep("speed", "wf_speed", -(apt - ideal - micro), "loss"))
    scrap_s = ideal * total.scrap / parts if parts else 0.0
    steps.append(LossStep("scrap", "wf_scrap", -scrap_s, "loss"))
    steps.append(LossStep("productive", "wf_productive", ideal - scrap_s, "result"))
    return steps


def microstop_seconds(db: Database, f: Filters, tz: ZoneInfo) -> float:
    """Micro-stop time in the scope's shifts of the range (a column of the machine view)."""
    query = sql.SQL(
        "SELECT COALESCE(sum(v.microstop_s), 0) FROM v_kpi_machine_shift v WHERE {scope} "
        "AND v.shift_date >= %(start)s AND v.shift_date < %(end)s "
        "AND (%(shift)s::text IS NULL OR v.shift_name = %(shift)s)"
    ).format(scope=_scope_filter(f.scope, "v"))
    params = _params(f, tz)

    def run(conn: psycopg.Connection) -> float:
        row = conn.execute(query, params).fetchone()
        return float(row[0]) if row else 0.0

    return db.run(run)


# -- one machine's day (the machine page) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class HourParts:
    bucket_start: datetime
    good: int
    scrap: int


@dataclass(frozen=True, slots=True)
class WorkOrderSpan:
    work_order: str
    first_ts: datetime
    last_ts: datetime
    running_s: float


def parts_per_hour(db: Database, machine: str, day: date, tz: ZoneInfo) -> list[HourParts]:
    """Every part the machine made in each hour of the plant-local day (planned time or not)."""
    lo = datetime.combine(day, time(), tz)
    query = (
        "SELECT bucket_start, all_good::bigint AS good, all_scrap::bigint AS scrap "
        "FROM v_kpi_machine_hour WHERE machine = %(m)s "
        "AND bucket_start >= %(lo)s AND bucket_start < %(hi)s ORDER BY bucket_start"
    )
    params = {"m": machine, "lo": lo, "hi": lo + timedelta(days=1)}

    def run(conn: psycopg.Connection) -> list[HourParts]:
        with conn.cursor(row_factory=class_row(HourParts)) as cur:
            return cur.execute(query, params).fetchall()

    return db.run(run)


def work_orders(db: Database, machine: str, day: date, tz: ZoneInfo) -> list[WorkOrderSpan]:
    """The work orders active on the machine that day: first and last seen, time running."""
    lo = datetime.combine(day, time(), tz)
    query = (
        "SELECT work_order, min(start_ts) AS first_ts, "
        "max(COALESCE(end_ts, start_ts + make_interval(secs => duration_s))) AS last_ts, "
        "COALESCE(sum(duration_s) FILTER (WHERE state = 'running'), 0) AS running_s "
        "FROM v_state_intervals WHERE machine = %(m)s AND work_order IS NOT NULL "
        "AND start_ts >= %(lo)s AND start_ts < %(hi)s "
        "GROUP BY work_order ORDER BY first_ts"
    )
    params = {"m": machine, "lo": lo, "hi": lo + timedelta(days=1)}

    def run(conn: psycopg.Connection) -> list[WorkOrderSpan]:
        with conn.cursor(row_factory=class_row(WorkOrderSpan)) as cur:
            return cur.execute(query, params).fetchall()

    return db.run(run)
