"""The /quality board's reads, from the public views of sql/033_quality.sql.

A period is a plant-local date range [start, end): a defect counts on its shift's date
(`v_defects.day`), a work order's yield at a machine counts when its figures span the period
(first_ts before the end and last_ts on or after the start), so a work order that runs over
several days shows in each. Yields are sums of parts divided once (never averages of rates).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import class_row

from dashboards.queries import Database


@dataclass(frozen=True, slots=True)
class QualityFilters:
    start: date  # plant-local, inclusive
    end: date  # plant-local, exclusive
    product: str | None = None
    machine: str | None = None


@dataclass(frozen=True, slots=True)
class YieldGroup:
    key: str  # the product, the machine, or "" for the whole selection
    made: int
    first_pass_good: int
    final_good: int
    sent_to_rework: int
    rework_pending: int

    @property
    def first_pass_yield(self) -> float | None:
        return self.first_pass_good / self.made if self.made else None

    @property
    def final_yield(self) -> float | None:
        return self.final_good / self.made if self.made else None

    @property
    def rework_rate(self) -> float | None:
        return self.sent_to_rework / self.made if self.made else None


@dataclass(frozen=True, slots=True)
class DefectCount:
    key: str  # a code, a product or a machine
    qty: int


@dataclass(frozen=True, slots=True)
class OpenRework:
    work_order: str
    machine: str
    product: str
    sent_to_rework: int
    rework_good: int
    rework_scrap: int
    rework_pending: int
    first_ts: datetime


def _bounds(f: QualityFilters, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "t0": datetime.combine(f.start, time(), tz),
        "t1": datetime.combine(f.end, time(), tz),
        "d0": f.start,
        "d1": f.end,
        "product": f.product,
        "machine": f.machine,
    }


_YIELD_WHERE = """
    first_ts < %(t1)s AND last_ts >= %(t0)s
    AND (%(product)s::text IS NULL OR product = %(product)s)
    AND (%(machine)s::text IS NULL OR machine = %(machine)s)
"""
_DEFECT_WHERE = """
    day >= %(d0)s AND day < %(d1)s
    AND (%(product)s::text IS NULL OR product = %(product)s)
    AND (%(machine)s::text IS NULL OR machine = %(machine)s)
"""
_GROUPS = {"all": "''", "product": "product", "machine": "machine"}
_DEFECT_GROUPS = {"code": "code", "root": "root", "product": "product", "machine": "machine"}


def yield_groups(
    conn: psycopg.Connection[Any], f: QualityFilters, tz: ZoneInfo, by: str
) -> list[YieldGroup]:
    """Yield per product, per machine, or of the whole selection (`by` = "all")."""
    key = _GROUPS[by]  # a fixed column name, never the caller's text
    query = f"""
        SELECT {key} AS key,
               COALESCE(sum(made), 0)::bigint            AS made,
               COALESCE(sum(first_pass_good), 0)::bigint AS first_pass_good,
               COALESCE(sum(final_good), 0)::bigint      AS final_good,
               COALESCE(sum(sent_to_rework), 0)::bigint  AS sent_to_rework,
               COALESCE(sum(rework_pending), 0)::bigint  AS rework_pending
        FROM v_yield WHERE {_YIELD_WHERE}
        GROUP BY 1 ORDER BY 1
    """
    with conn.cursor(row_factory=class_row(YieldGroup)) as cur:
        rows = cur.execute(query, _bounds(f, tz)).fetchall()
    if by == "all" and not rows:
        return [YieldGroup("", 0, 0, 0, 0, 0)]
    return rows


def defect_counts(
    conn: psycopg.Connection[Any], f: QualityFilters, tz: ZoneInfo, by: str, kind: str = "defect"
) -> list[DefectCount]:
    """Defective parts per code, family (`root`), product or machine, the largest first (a
    Pareto). `kind`: `defect` (parts scrapped or sent to rework) or `inspection` (found in
    inspection samples: counted apart, since the same parts may then be reported as defects)."""
    key = _DEFECT_GROUPS[by]
    query = f"""
        SELECT COALESCE({key}, '') AS key, sum(qty)::bigint AS qty
        FROM v_defects WHERE kind = %(kind)s AND {_DEFECT_WHERE}
        GROUP BY 1 ORDER BY 2 DESC, 1
    """
    with conn.cursor(row_factory=class_row(DefectCount)) as cur:
        return cur.execute(query, {**_bounds(f, tz), "kind": kind}).fetchall()


def open_rework(conn: psycopg.Connection[Any], f: QualityFilters) -> list[OpenRework]:
    """Rework still open (whatever the period: it is open now), oldest first."""
    with conn.cursor(row_factory=class_row(OpenRework)) as cur:
        return cur.execute(
            "SELECT work_order, machine, product, sent_to_rework, rework_good, rework_scrap,"
            " rework_pending, first_ts FROM v_rework"
            " WHERE (%(product)s::text IS NULL OR product = %(product)s)"
            " AND (%(machine)s::text IS NULL OR machine = %(machine)s)"
            " ORDER BY first_ts, work_order, machine LIMIT 200",
            {"product": f.product, "machine": f.machine},
        ).fetchall()


@dataclass(frozen=True, slots=True)
class Board:
    total: YieldGroup
    by_product: list[YieldGroup]
    by_machine: list[YieldGroup]
    by_code: list[DefectCount]
    by_family: list[DefectCount]  # by the top of each code's branch in the defect tree
    defects_by_product: list[DefectCount]
    defects_by_machine: list[DefectCount]
    found_by_code: list[DefectCount]  # in inspection samples
    rework: list[OpenRework]


def board(db: Database, f: QualityFilters, tz: ZoneInfo) -> Board:
    def read(conn: psycopg.Connection[Any]) -> Board:
        return Board(
            yield_groups(conn, f, tz, "all")[0],
            yield_groups(conn, f, tz, "product"),
            yield_groups(conn, f, tz, "machine"),
            defect_counts(conn, f, tz, "code"),
            defect_counts(conn, f, tz, "root"),
            defect_counts(conn, f, tz, "product"),
            defect_counts(conn, f, tz, "machine"),
            defect_counts(conn, f, tz, "code", "inspection"),
            open_rework(conn, f),
        )

    return db.run(read)


def products(db: Database) -> list[str]:
    """Products the filter offers (those with a yield row)."""
    return db.run(
        lambda conn: [
            r[0] for r in conn.execute("SELECT DISTINCT product FROM v_yield ORDER BY 1")
        ],
        timeout=0.5,  # as the KPI board: a database away must not hold the first layout
    )
