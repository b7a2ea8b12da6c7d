"""Reads of the inspection views (sql/032_inspections.sql) for the tablet, the andon and the
/inspections board (docs/inspections.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import psycopg
from psycopg.rows import class_row

from dashboards.queries import Database


@dataclass(frozen=True, slots=True)
class StationRun:
    """What a station's running work order owes (v_inspection_runs, end_ts NULL)."""

    work_order: str
    operation: str
    product: str | None
    start_ts: datetime
    first_article: str
    blocked: bool
    parts_made: int
    patrol_every_min: float
    next_patrol_due: datetime | None
    patrol_missed_since: datetime | None
    last_piece: str


@dataclass(frozen=True, slots=True)
class Flag:
    work_order: str
    machine: str
    line: str | None
    operation: str
    flag: str
    detail: str
    since: datetime
    product: str | None
    blocking: bool
    parts_made: int


@dataclass(frozen=True, slots=True)
class Compliance:
    key: str  # product, machine or stage
    due: int
    done_on_time: int
    done_late: int
    missed: int
    failed: int

    @property
    def on_time_rate(self) -> float | None:
        return self.done_on_time / self.due if self.due else None


def station_runs(conn: psycopg.Connection, machine: str) -> list[StationRun]:
    with conn.cursor(row_factory=class_row(StationRun)) as cur:
        return cur.execute(
            "SELECT work_order, operation, product, start_ts, first_article, blocked, "
            "parts_made, patrol_every_min, next_patrol_due, patrol_missed_since, last_piece "
            "FROM v_inspection_runs WHERE machine = %s AND end_ts IS NULL "
            "ORDER BY start_ts DESC LIMIT 5",
            (machine,),
        ).fetchall()


def blocked(conn: psycopg.Connection, machine: str, work_order: str | None = None) -> bool:
    """True while a run at `machine` (of `work_order`, if given) waits for its first article
    with the plant's block setting: production reports are refused meanwhile."""
    row = conn.execute(
        "SELECT 1 FROM v_inspection_runs WHERE machine = %s AND end_ts IS NULL AND blocked "
        "AND (%s::text IS NULL OR work_order = %s) LIMIT 1",
        (machine, work_order, work_order),
    ).fetchone()
    return row is not None


def open_flags(db: Database, machine: str | None = None) -> list[Flag]:
    def read(conn: psycopg.Connection) -> list[Flag]:
        with conn.cursor(row_factory=class_row(Flag)) as cur:
            return cur.execute(
                "SELECT work_order, machine, line, operation, flag, detail, since, product, "
                "blocking, parts_made FROM v_inspection_flags "
                "WHERE %s::text IS NULL OR machine = %s ORDER BY since DESC LIMIT 500",
                (machine, machine),
            ).fetchall()

    return db.run(read)


def flags_by_machine(db: Database) -> dict[str, list[str]]:
    """machine -> its open flag kinds ("blocked" first when production waits): the andon."""

    def read(conn: psycopg.Connection) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for machine, flag in conn.execute(
            "SELECT machine, flag FROM v_inspection_flags "
            "UNION SELECT machine, 'blocked' FROM v_inspection_runs "
            "WHERE end_ts IS NULL AND blocked ORDER BY 1, 2"
        ).fetchall():
            kinds = out.setdefault(machine, [])
            if flag == "blocked":
                kinds.insert(0, flag)
            else:
                kinds.append(flag)
        return out

    return db.run(read)


def compliance(db: Database, start: date, end: date, by: str) -> list[Compliance]:
    """Inspections due in [start, end) (plant-local days) grouped `by` product, machine or
    stage, first article, patrol and last piece together."""
    column = {"product": "COALESCE(product, '')", "machine": "machine", "stage": "stage"}[by]

    def read(conn: psycopg.Connection) -> list[Compliance]:
        with conn.cursor(row_factory=class_row(Compliance)) as cur:
            return cur.execute(
                f"SELECT {column} AS key, sum(due)::int AS due, "  # one of three fixed columns
                "sum(done_on_time)::int AS done_on_time, sum(done_late)::int AS done_late, "
                "sum(missed)::int AS missed, sum(failed)::int AS failed "
                "FROM v_inspection_compliance WHERE day >= %s AND day < %s "
                "GROUP BY 1 ORDER BY 1",
                (start, end),
            ).fetchall()

    return db.run(read)
