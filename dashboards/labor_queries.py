"""The /labor board's reads, from the public views of sql/031_labor.sql.

A period is a range of shift dates [start, end): a segment counts on the date its shift
started (time outside shifts on its plant-local date), so a night shift's hours after
midnight stay with the shift. Hours are the views' figures: a person at k stations books
1/k of their time to each, and an open segment counts up to now (at most to its bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import psycopg
from psycopg.rows import class_row

from dashboards.queries import Database


@dataclass(frozen=True, slots=True)
class LaborFilters:
    start: date  # shift date, inclusive
    end: date  # shift date, exclusive
    person: str | None = None
    station: str | None = None


@dataclass(frozen=True, slots=True)
class PersonNow:
    station: str
    person: str
    since: datetime
    work_order: str | None
    operation: str | None
    share: float
    hours_signed_in: float


@dataclass(frozen=True, slots=True)
class ShiftPerson:
    shift_date: date
    shift_name: str | None
    person: str
    hours: float
    stations: list[str]
    work_orders: int
    is_open: bool


@dataclass(frozen=True, slots=True)
class WorkOrderLabor:
    work_order: str | None
    operation: str | None
    order_no: str | None
    product: str | None
    hours: float
    people: list[str]
    stations: list[str]
    is_open: bool


@dataclass(frozen=True, slots=True)
class IssueCount:
    kind: str
    n: int
    last_ts: datetime


@dataclass(frozen=True, slots=True)
class Board:
    now: list[PersonNow]
    by_shift: list[ShiftPerson]
    by_work_order: list[WorkOrderLabor]
    issues: list[IssueCount]

    @property
    def total_hours(self) -> float:
        return sum(r.hours for r in self.by_shift)


_FILTER = """
    AND (%(person)s::text IS NULL OR person = %(person)s)
    AND (%(station)s::text IS NULL OR station = %(station)s)"""

NOW_SQL = (
    """
SELECT station, person, since, work_order, operation, share, hours_signed_in
FROM v_station_people
WHERE true"""
    + _FILTER
    + """
ORDER BY station, since, person"""
)

# From the segments (not v_labor_by_shift_person) so that the station filter applies.
BY_SHIFT_SQL = (
    """
SELECT shift_date, shift_name, person, sum(hours) AS hours,
       array_agg(DISTINCT station ORDER BY station) AS stations,
       count(DISTINCT work_order)::int AS work_orders, bool_or(is_open) AS is_open
FROM v_labor_segments
WHERE shift_date >= %(d0)s AND shift_date < %(d1)s"""
    + _FILTER
    + """
GROUP BY shift_date, shift_name, person
ORDER BY shift_date DESC, shift_name NULLS LAST, person"""
)

BY_WORK_ORDER_SQL = (
    """
SELECT work_order, operation, order_no, product, sum(hours) AS hours,
       array_agg(DISTINCT person ORDER BY person) AS people,
       array_agg(DISTINCT station ORDER BY station) AS stations, bool_or(is_open) AS is_open
FROM v_labor_segments
WHERE shift_date >= %(d0)s AND shift_date < %(d1)s"""
    + _FILTER
    + """
GROUP BY work_order, operation, order_no, product
ORDER BY work_order NULLS LAST, operation NULLS FIRST"""
)

ISSUES_SQL = (
    """
SELECT kind, count(*)::int AS n, max(ts) AS last_ts
FROM v_labor_issues
WHERE ts >= %(t0)s AND ts < %(t1)s"""
    + _FILTER
    + """
GROUP BY kind ORDER BY kind"""
)


def board(db: Database, f: LaborFilters, t0: datetime, t1: datetime) -> Board:
    """Everything the page shows; `t0`/`t1`: the period's instants (for the issues)."""
    params = {
        "d0": f.start,
        "d1": f.end,
        "t0": t0,
        "t1": t1,
        "person": f.person,
        "station": f.station,
    }

    def read(conn: psycopg.Connection) -> Board:
        with conn.cursor(row_factory=class_row(PersonNow)) as cur:
            now = cur.execute(NOW_SQL, params).fetchall()
        with conn.cursor(row_factory=class_row(ShiftPerson)) as cur:
            by_shift = cur.execute(BY_SHIFT_SQL, params).fetchall()
        with conn.cursor(row_factory=class_row(WorkOrderLabor)) as cur:
            by_wo = cur.execute(BY_WORK_ORDER_SQL, params).fetchall()
        with conn.cursor(row_factory=class_row(IssueCount)) as cur:
            issues = cur.execute(ISSUES_SQL, params).fetchall()
        return Board(now, by_shift, by_wo, issues)

    return db.run(read)


def people(db: Database) -> list[str]:
    """Everyone with booked time (the person filter's choices)."""

    def read(conn: psycopg.Connection) -> list[str]:
        rows = conn.execute(
            "SELECT DISTINCT person FROM labor_segment ORDER BY person LIMIT 2000"
        ).fetchall()
        return [r[0] for r in rows]

    # At most 0.5 s: Dash builds every layout on a process's first request, and with the
    # database away every board would wait the pool's full timeout for this list.
    return db.run(read, timeout=0.5)


def people_by_station(db: Database) -> dict[str, list[str]]:
    """Who is signed in at each station now (the andon tiles' people line)."""

    def read(conn: psycopg.Connection) -> dict[str, list[str]]:
        rows = conn.execute(
            "SELECT station, person FROM v_station_people ORDER BY station, since, person"
        ).fetchall()
        out: dict[str, list[str]] = {}
        for station, person in rows:
            out.setdefault(station, []).append(person)
        return out

    return db.run(read, timeout=0.5)
