"""The /kpis board's reads: the delivery KPIs of mesflow/delivery_kpis.py on the board's pool.

The same query and the same CSV as `mesflow report --kpis --csv`, so the board's export and
the report's are the same bytes for the same filters.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from dashboards.queries import Database
from mesflow.delivery_kpis import (
    DeliveryKpiRow,
    Dimension,
    MonthRange,
    dimension_values,
    query_delivery_kpis,
    to_csv,
)

__all__ = ["choices", "kpi_csv", "kpi_rows"]


def kpi_rows(
    db: Database,
    tz: ZoneInfo,
    by: Dimension,
    months: MonthRange,
    customer: str | None = None,
    product: str | None = None,
) -> list[DeliveryKpiRow]:
    return db.run(lambda conn: query_delivery_kpis(conn, tz, by, months, customer, product))


def kpi_csv(
    db: Database,
    tz: ZoneInfo,
    by: Dimension,
    months: MonthRange,
    customer: str | None = None,
    product: str | None = None,
) -> str:
    return to_csv(kpi_rows(db, tz, by, months, customer, product), by)


# Dash builds every page's layout once on a process's first request (its validation
# layout), whoever asks: with the database away, the filters must not hold that request.
CHOICES_TIMEOUT_S = 0.5


def choices(db: Database, tz: ZoneInfo) -> tuple[list[str], list[str], list[str]]:
    """Customers, products, months for the filters."""
    return db.run(lambda conn: dimension_values(conn, tz), timeout=CHOICES_TIMEOUT_S)
