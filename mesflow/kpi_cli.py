"""`mesflow report --kpis`: the delivery KPIs in a terminal or as CSV (mesflow/delivery_kpis.py)."""

from __future__ import annotations

from typing import cast
from zoneinfo import ZoneInfo

import click
import psycopg

from mesflow.delivery_kpis import Dimension, KpiError, make_kpi_report, month_range


def kpi_report(
    url: str,
    tz: ZoneInfo,
    by: str | None,
    month: str | None,
    first: str | None,
    last: str | None,
    customer: str | None,
    product: str | None,
    csv_out: bool,
) -> None:
    if by in ("hour", "shift"):
        raise click.UsageError("--kpis: --by customer, product or month")
    try:
        months = month_range(month, first, last)
    except KpiError as err:
        raise click.UsageError(str(err)) from None
    try:
        text, notice = make_kpi_report(
            url, tz, cast(Dimension, by or "month"), months,
            csv_out=csv_out, customer=customer, product=product,
        )  # fmt: skip
    except psycopg.OperationalError:
        raise
    except psycopg.Error as err:  # missing migration: one line, no trace
        raise click.ClickException(f"database: {str(err).strip()}") from None
    click.echo(text, nl=False)
    if notice:  # an empty CSV stays parseable: the notice goes to stderr
        click.echo(notice, err=True)
