"""Delivery KPIs (docs/kpis.md): `mesflow report --kpis` and the /kpis board.

Both read the per-order and per-change rows of sql/025_delivery_kpis.sql (v_order_delivery,
v_change_delivery) and aggregate them here with the same formulas as the v_kpi_* views, so
medians and p90s of a customer over several months are true medians, not medians of
monthly medians. Months are in the plant's time zone: the session's time zone is set to it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql
from psycopg.rows import class_row

Dimension = Literal["customer", "product", "month"]
DIMENSIONS: tuple[Dimension, ...] = ("customer", "product", "month")
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class KpiError(ValueError):
    """A KPI query that cannot be made as asked; the message says why."""


@dataclass(frozen=True)
class MonthRange:
    """Calendar months, both ends inclusive ('YYYY-MM'); None: open on that side."""

    first: str | None = None
    last: str | None = None

    def describe(self) -> str:
        if self.first and self.first == self.last:
            return self.first
        if not self.first and not self.last:
            return "all months"
        return f"{self.first or '…'} to {self.last or '…'}"


def parse_month(text: str, option: str) -> str:
    text = text.strip()
    if not _MONTH.match(text):
        raise KpiError(f"{option}: {text!r} is not a month YYYY-MM, e.g. 2026-11")
    return text


def month_range(month: str | None, first: str | None, last: str | None) -> MonthRange:
    if month and (first or last):
        raise KpiError("give --month or --from/--to, not both")
    if month:
        m = parse_month(month, "--month")
        return MonthRange(m, m)
    rng = MonthRange(
        parse_month(first, "--from") if first else None,
        parse_month(last, "--to") if last else None,
    )
    if rng.first and rng.last and rng.last < rng.first:
        raise KpiError(f"--to {rng.last} is before --from {rng.first}")
    return rng


@dataclass(frozen=True, slots=True)
class DeliveryKpiRow:
    """One group of the KPI table; the column names of the CSV."""

    key: str  # the customer, product or month the row is about
    orders_started: int
    lead_time_avg_s: float | None
    lead_time_median_s: float | None
    lead_time_p90_s: float | None
    changes: int
    unacknowledged: int
    response_median_s: float | None
    response_p90_s: float | None
    completed: int
    on_time: int
    on_time_rate: float | None
    good: int
    scrap: int
    scrap_rate: float | None
    # Parts made and sent to rework by the orders' work orders (docs/quality.md).
    made: int
    sent_to_rework: int
    rework_rate: float | None


def kpi_query(
    by: Dimension,
    months: MonthRange,
    customer: str | None = None,
    product: str | None = None,
) -> tuple[sql.Composed, dict[str, Any]]:
    """One query, one row per value of `by`: the four KPIs over the filtered rows."""
    if by not in DIMENSIONS:
        raise KpiError(f"--by: {by!r}; valid: {', '.join(DIMENSIONS)}")

    def where(month_col: str) -> sql.Composed:
        conds = [
            sql.SQL("({m} IS NOT NULL)").format(m=sql.Identifier(month_col)),
            sql.SQL("(%(first)s::text IS NULL OR {m} >= %(first)s)").format(
                m=sql.Identifier(month_col)
            ),
            sql.SQL("(%(last)s::text IS NULL OR {m} <= %(last)s)").format(
                m=sql.Identifier(month_col)
            ),
            sql.SQL("(%(customer)s::text IS NULL OR customer = %(customer)s)"),
            sql.SQL("(%(product)s::text IS NULL OR product = %(product)s)"),
        ]
        return sql.SQL(" AND ").join(conds)

    def key(month_col: str) -> sql.Composable:
        return sql.Identifier(month_col if by == "month" else by)

    # v_order_delivery (and v_order_rework, built on it) computed once for the four KPIs,
    # not once per KPI: each computation aggregates every order's work orders and history
    # (three of them took 0.16-0.5 s at 18,000 orders). Same expressions as the views'.
    query = sql.SQL(
        """
WITH d AS MATERIALIZED (
    SELECT order_no, customer, product, started_at, completed, on_time, lead_time_s, good,
           scrap, start_month, completed_month
    FROM v_order_delivery
    WHERE (%(customer)s::text IS NULL OR customer = %(customer)s)
      AND (%(product)s::text IS NULL OR product = %(product)s)
), lead AS (
    SELECT {k_start} AS key, count(*) AS orders_started,
           avg(lead_time_s) AS lead_time_avg_s,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY lead_time_s) AS lead_time_median_s,
           percentile_cont(0.9) WITHIN GROUP (ORDER BY lead_time_s) AS lead_time_p90_s,
           sum(good)::bigint AS good, sum(scrap)::bigint AS scrap,
           sum(scrap)::double precision / NULLIF(sum(good + scrap), 0) AS scrap_rate
    FROM d WHERE {w_start} GROUP BY 1
), chg AS (
    SELECT {k_chg} AS key, count(*) AS changes,
           count(*) FILTER (WHERE acknowledged_at IS NULL) AS unacknowledged,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY response_s) AS response_median_s,
           percentile_cont(0.9) WITHIN GROUP (ORDER BY response_s) AS response_p90_s
    FROM v_change_delivery WHERE {w_chg} GROUP BY 1
), ontime AS (
    SELECT {k_done} AS key, count(*) AS completed,
           count(*) FILTER (WHERE on_time) AS on_time,
           count(*) FILTER (WHERE on_time)::double precision / count(*) AS on_time_rate
    FROM d WHERE completed AND {w_done} GROUP BY 1
), order_rework AS (
    -- v_order_rework (sql/033) on d
    SELECT d.order_no, d.customer, d.product, d.start_month,
           sum(y.made)::bigint            AS made,
           sum(y.sent_to_rework)::bigint  AS sent_to_rework
    FROM quality_yield y
    JOIN work_order_progress p ON p.work_order = y.work_order
    JOIN d ON d.order_no = p.order_no
    WHERE d.started_at IS NOT NULL
    GROUP BY d.order_no, d.customer, d.product, d.start_month
), rwk AS (
    SELECT {k_start} AS key, sum(made)::bigint AS made,
           sum(sent_to_rework)::bigint AS sent_to_rework,
           sum(sent_to_rework)::double precision / NULLIF(sum(made), 0) AS rework_rate
    FROM order_rework WHERE {w_start} GROUP BY 1
), keys AS (
    SELECT key FROM lead UNION SELECT key FROM chg UNION SELECT key FROM ontime
)
SELECT k.key,
       COALESCE(l.orders_started, 0)::int AS orders_started,
       l.lead_time_avg_s, l.lead_time_median_s, l.lead_time_p90_s,
       COALESCE(c.changes, 0)::int AS changes,
       COALESCE(c.unacknowledged, 0)::int AS unacknowledged,
       c.response_median_s, c.response_p90_s,
       COALESCE(o.completed, 0)::int AS completed,
       COALESCE(o.on_time, 0)::int AS on_time,
       o.on_time_rate,
       COALESCE(l.good, 0)::bigint AS good,
       COALESCE(l.scrap, 0)::bigint AS scrap,
       l.scrap_rate,
       COALESCE(r.made, 0)::bigint AS made,
       COALESCE(r.sent_to_rework, 0)::bigint AS sent_to_rework,
       r.rework_rate
FROM keys k
LEFT JOIN lead l USING (key)
LEFT JOIN chg c USING (key)
LEFT JOIN ontime o USING (key)
LEFT JOIN rwk r USING (key)
ORDER BY k.key
"""
    ).format(
        k_start=key("start_month"),
        w_start=where("start_month"),
        k_chg=key("month"),
        w_chg=where("month"),
        k_done=key("completed_month"),
        w_done=where("completed_month"),
    )
    params = {
        "first": months.first,
        "last": months.last,
        "customer": customer,
        "product": product,
    }
    return query, params


def fetch_delivery_kpis(
    url: str,
    tz: ZoneInfo,
    by: Dimension,
    months: MonthRange,
    customer: str | None = None,
    product: str | None = None,
) -> list[DeliveryKpiRow]:
    with psycopg.connect(url, autocommit=True) as conn:
        return query_delivery_kpis(conn, tz, by, months, customer, product)


def query_delivery_kpis(
    conn: psycopg.Connection[Any],
    tz: ZoneInfo,
    by: Dimension,
    months: MonthRange,
    customer: str | None = None,
    product: str | None = None,
) -> list[DeliveryKpiRow]:
    """On the caller's connection (a board's pool): the time zone is set for this
    transaction only, so the pooled connection keeps its own."""
    query, params = kpi_query(by, months, customer, product)
    with conn.transaction(), conn.cursor(row_factory=class_row(DeliveryKpiRow)) as cur:
        # Months in the plant's time zone: to_char of a timestamptz uses the session's.
        cur.execute("SELECT set_config('TimeZone', %s, true)", (tz.key,))
        return cur.execute(query, params).fetchall()


def dimension_values(
    conn: psycopg.Connection[Any], tz: ZoneInfo
) -> tuple[list[str], list[str], list[str]]:
    """Customers, products and months (plant time zone) the board's filters offer."""
    with conn.transaction():
        conn.execute("SELECT set_config('TimeZone', %s, true)", (tz.key,))
        return _dimension_values(conn)


def _dimension_values(conn: psycopg.Connection[Any]) -> tuple[list[str], list[str], list[str]]:
    customers = [r[0] for r in conn.execute("SELECT DISTINCT customer FROM crm_order ORDER BY 1")]
    products = [r[0] for r in conn.execute("SELECT DISTINCT product FROM crm_order ORDER BY 1")]
    months = [
        r[0]
        for r in conn.execute(
            # Both months of one computation of the view (a UNION of two computed it twice).
            "SELECT DISTINCT x.m FROM v_order_delivery d,"
            " LATERAL (VALUES (d.start_month), (d.completed_month)) x (m)"
            " WHERE x.m IS NOT NULL ORDER BY 1"
        )
    ]
    return customers, products, months


# -- formatting --------------------------------------------------------------------------

# As `mesflow report`: durations to 0.1 s, ratios to 4 decimals, no float noise.
SECONDS_DECIMALS = 1
RATIO_DECIMALS = 4


def _raw(name: str, value: Any) -> Any:
    if isinstance(value, float):
        decimals = SECONDS_DECIMALS if name.endswith("_s") else RATIO_DECIMALS
        return round(value, decimals) + 0.0  # + 0.0: no "-0.0"
    return value


def records(rows: Sequence[DeliveryKpiRow], by: Dimension) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        rec: dict[str, Any] = {}
        for f in fields(DeliveryKpiRow):
            name = by if f.name == "key" else f.name
            rec[name] = _raw(f.name, getattr(r, f.name))
        out.append(rec)
    return out


def to_csv(rows: Sequence[DeliveryKpiRow], by: Dimension) -> str:
    """The CSV of `mesflow report --kpis --csv` and of the board's export (the same bytes)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(by if f.name == "key" else f.name for f in fields(DeliveryKpiRow))
    for rec in records(rows, by):
        writer.writerow(
            "" if v is None else _formula_safe(v) if isinstance(v, str) else v for v in rec.values()
        )
    return out.getvalue()


def _formula_safe(text: str) -> str:
    # A customer name from the CRM must not run as a spreadsheet formula.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def fmt_duration(seconds: float | None) -> str:
    """Seconds as d h:mm (days only when a day or more), rounded to the minute."""
    if seconds is None:
        return ""
    minutes = round(seconds / 60)
    days, rest = divmod(minutes, 24 * 60)
    hm = f"{rest // 60}:{rest % 60:02d}"
    return f"{days}d {hm}" if days else hm


def fmt_pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f}%"


HEADERS = (
    "started", "lead avg", "lead median", "lead p90", "changes", "unacked",
    "resp median", "resp p90", "completed", "on time", "on-time rate", "good", "scrap",
    "scrap rate", "made", "rework", "rework rate",
)  # fmt: skip


def cells(r: DeliveryKpiRow) -> list[str]:
    return [
        r.key,
        str(r.orders_started),
        fmt_duration(r.lead_time_avg_s),
        fmt_duration(r.lead_time_median_s),
        fmt_duration(r.lead_time_p90_s),
        str(r.changes),
        str(r.unacknowledged),
        fmt_duration(r.response_median_s),
        fmt_duration(r.response_p90_s),
        str(r.completed),
        str(r.on_time),
        fmt_pct(r.on_time_rate),
        str(r.good),
        str(r.scrap),
        fmt_pct(r.scrap_rate),
        str(r.made),
        str(r.sent_to_rework),
        fmt_pct(r.rework_rate),
    ]


def table(rows: Sequence[DeliveryKpiRow], by: Dimension) -> str:
    from mesflow.report import _grid

    return _grid((by, *HEADERS), [cells(r) for r in rows], left=1)


def make_kpi_report(
    url: str,
    tz: ZoneInfo,
    by: Dimension,
    months: MonthRange,
    *,
    csv_out: bool = False,
    customer: str | None = None,
    product: str | None = None,
) -> tuple[str, str | None]:
    """(standard output, notice for stderr or None)."""
    rows = fetch_delivery_kpis(url, tz, by, months, customer, product)
    empty = f"no delivery KPIs for {months.describe()}"
    if csv_out:
        return to_csv(rows, by), None if rows else empty
    if not rows:
        return empty + "\n", None
    title = f"delivery KPIs by {by}, {months.describe()} (months in {tz.key})"
    note = "rework rate: parts sent to rework / parts made (docs/quality.md)"
    return f"{title}\n\n{table(rows, by)}\n{note}\n", None
