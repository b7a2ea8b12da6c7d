"""Scrap by reason and product for the analytics page (dashboards/pages/analytics_scrap.py) and
`mesflow report`-style CSV: reads the public view v_scrap_by_reason (sql/020_scrap_by_reason.sql),
and for the whole plant v_scrap_by_reason_plant (sql/036_board_rollups.sql).

The page's filters mean what they mean for its other panels: the plant-local dates of the shifts
(an hour belongs to the shift instance containing its start), a plant / line / machine scope,
and a shift name. Scrap in an hour between shifts counts on its own plant-local date and under
no shift name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from dashboards.analytics_queries import Filters
from dashboards.queries import Database
from mesflow.report import _scope_filter


@dataclass(frozen=True, slots=True)
class ScrapRow:
    """Scrapped parts of one reason and product over the filters (CSV columns, in order)."""

    reason: str
    category: str
    reason_en: str | None
    reason_zh: str | None
    product: str
    qty: int
    share: float | None  # of all scrap in the selection

    def name(self, lang: str) -> str:
        named = self.reason_zh if lang.startswith("zh") else self.reason_en
        return named or self.reason


def scrap_by_reason(db: Database, f: Filters, tz: ZoneInfo) -> list[ScrapRow]:
    """Scrap per (reason, product) in the selection, most first.

    The whole plant reads v_scrap_by_reason_plant (sql/036: the same sums per day, shift
    name, reason and product, kept on write) instead of every machine-hour's rows.
    """
    start_ts, end_ts = f.bounds(tz)
    if f.scope.kind == "plant":
        query: sql.SQL | sql.Composed = sql.SQL(_PLANT_SCRAP)
    else:
        query = _scope_scrap(f)
    params = {
        "scope_id": f.scope.id,
        "start": f.start,
        "end": f.end,
        "shift": f.shift,
        "lo": start_ts - timedelta(days=1),
        "hi": end_ts + timedelta(days=1),
    }

    def run(conn: psycopg.Connection) -> list[ScrapRow]:
        with conn.cursor(row_factory=class_row(ScrapRow)) as cur:
            return cur.execute(query, params).fetchall()

    return db.run(run)


# The plant's scrap from v_scrap_by_reason_plant (sql/036: every machine's scrap added up per
# day, shift name, reason and product, kept on write), as the scoped query below. No hour
# bounds: they only help the scoped query's index (an hour counts on the day of its shift).
_PLANT_SCRAP = (
    "SELECT v.reason, max(v.category) AS category, max(v.reason_en) AS reason_en, "
    "max(v.reason_zh) AS reason_zh, v.product, sum(v.qty)::bigint AS qty, "
    "(sum(v.qty) / NULLIF(sum(sum(v.qty)) OVER (), 0))::float8 AS share "
    "FROM v_scrap_by_reason_plant v "
    "WHERE v.day >= %(start)s AND v.day < %(end)s "
    "AND (%(shift)s::text IS NULL OR v.shift_name = %(shift)s) "
    "GROUP BY v.reason, v.product ORDER BY qty DESC, v.reason, v.product"
)


def _scope_scrap(f: Filters) -> sql.Composed:
    # A line's machines also as a list, so that each machine's hours are read by the primary
    # key (machine, hour_start, ...): on the line alone PostgreSQL read every machine's scrap
    # of the range and kept the line's (720,000 rows for 8,600 at 500 machines, 0.15 s).
    machines = (
        sql.SQL(
            " AND v.machine = ANY(ARRAY(SELECT m.machine FROM plant_machine m"
            " WHERE m.line = %(scope_id)s))"
        )
        if f.scope.kind == "line"
        else sql.SQL("")
    )
    return sql.SQL(
        "SELECT v.reason, max(v.category) AS category, max(v.reason_en) AS reason_en, "
        "max(v.reason_zh) AS reason_zh, v.product, sum(v.qty)::bigint AS qty, "
        "(sum(v.qty) / NULLIF(sum(sum(v.qty)) OVER (), 0))::float8 AS share "
        "FROM v_scrap_by_reason v WHERE {scope}{machines} "
        # The hours by time first (index), then the date they count on: a shift starting on
        # the range's last day ends the next morning, one from the day before may hold its
        # first hours.
        "AND v.hour_start >= %(lo)s AND v.hour_start < %(hi)s "
        "AND v.day >= %(start)s AND v.day < %(end)s "
        "AND (%(shift)s::text IS NULL OR v.shift_name = %(shift)s) "
        "GROUP BY v.reason, v.product ORDER BY qty DESC, v.reason, v.product"
    ).format(scope=_scope_filter(f.scope, "v"), machines=machines)


def by_reason(rows: Sequence[ScrapRow]) -> list[tuple[str, int]]:
    """Reasons, most scrap first (ties by code): the chart's order."""
    totals: dict[str, int] = {}
    for r in rows:
        totals[r.reason] = totals.get(r.reason, 0) + r.qty
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
