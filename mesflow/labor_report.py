"""`mesflow labor`: labor hours per shift and person, or per work order and operation, for a
day or a range of shift dates (docs/labor.md).

Reads the public view v_labor_segments (sql/031_labor.sql) and nothing else, so it shows
what the /labor board and a BI tool show: a person at k stations at once books 1/k to each,
open segments count up to now (at most to their bound), and a segment belongs to the date
its shift started on (a night shift's hours after midnight stay with it).
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import click
import psycopg

from mesflow.plant import PlantConfig
from mesflow.report import ReportError, _grid, _parse_date

By = Literal["shift", "work-order"]

BY_SHIFT = """
SELECT shift_date, COALESCE(shift_name, '') AS shift, person, sum(hours) AS hours,
       string_agg(DISTINCT station, ' ' ORDER BY station) AS stations, bool_or(is_open) AS open
FROM v_labor_segments
WHERE shift_date >= %(d0)s AND shift_date < %(d1)s
  AND (%(person)s::text IS NULL OR person = %(person)s)
  AND (%(station)s::text IS NULL OR station = %(station)s)
GROUP BY shift_date, shift_name, person
ORDER BY shift_date, shift_name NULLS LAST, person"""

BY_WORK_ORDER = """
SELECT COALESCE(work_order, '') AS work_order, COALESCE(operation, '') AS operation, person,
       sum(hours) AS hours,
       string_agg(DISTINCT station, ' ' ORDER BY station) AS stations, bool_or(is_open) AS open
FROM v_labor_segments
WHERE shift_date >= %(d0)s AND shift_date < %(d1)s
  AND (%(person)s::text IS NULL OR person = %(person)s)
  AND (%(station)s::text IS NULL OR station = %(station)s)
GROUP BY work_order, operation, person
ORDER BY work_order NULLS LAST, operation NULLS FIRST, person"""

HEADERS: dict[By, tuple[str, ...]] = {
    "shift": ("shift date", "shift", "person", "stations", "hours"),
    "work-order": ("work order", "operation", "person", "stations", "hours"),
}


def resolve_dates(
    plant: PlantConfig,
    day: str | None,
    date_from: str | None,
    date_to: str | None,
    now: datetime | None = None,
) -> tuple[date, date]:
    """[first, end) shift dates from --date or --from/--to (--to exclusive); default today."""
    today = (now or datetime.now(plant.tz)).astimezone(plant.tz).date()
    if day is not None and (date_from is not None or date_to is not None):
        raise ReportError("give --date or --from/--to, not both")
    if day is not None:
        first = _parse_date(day, "--date", today)
        return first, first + timedelta(days=1)
    if date_from is None and date_to is None:
        return today, today + timedelta(days=1)
    if date_from is None or date_to is None:
        raise ReportError("--from and --to go together (--to is exclusive)")
    first, end = _parse_date(date_from, "--from", today), _parse_date(date_to, "--to", today)
    if end <= first:
        raise ReportError("--to must be after --from (--to is exclusive)")
    if (end - first).days > 366:
        raise ReportError("at most 366 days at once")
    return first, end


def read(
    url: str, by: By, first: date, end: date, person: str | None, station: str | None
) -> list[tuple[Any, ...]]:
    sql = BY_SHIFT if by == "shift" else BY_WORK_ORDER
    params = {"d0": first, "d1": end, "person": person, "station": station}
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def render(rows: list[tuple[Any, ...]], by: By, fmt: Literal["table", "csv"]) -> str:
    """The rows as an aligned table (hours to 0.01, open ones marked `*`) or as CSV (raw
    hours, an `open` column)."""
    if fmt == "csv":
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow([*(h.replace(" ", "_") for h in HEADERS[by]), "open"])
        for a, b, person, hours, stations, is_open in rows:
            w.writerow([a, b, person, stations, f"{hours:.6f}", "true" if is_open else "false"])
        return out.getvalue()
    body = [
        [str(a), str(b) or "-", person, stations, f"{hours:.2f}" + ("*" if is_open else "")]
        for a, b, person, hours, stations, is_open in rows
    ]
    total = sum(r[3] for r in rows)
    text = _grid(HEADERS[by], body, left=4)
    note = "  (* still signed in: counted up to now)" if any(r[5] for r in rows) else ""
    return f"{text}total {total:.2f} h{note}\n"


def title(by: By, first: date, end: date, tz: ZoneInfo) -> str:
    last = end - timedelta(days=1)
    days = first.isoformat() if first == last else f"{first.isoformat()} to {last.isoformat()}"
    what = "by shift and person" if by == "shift" else "by work order, operation and person"
    return f"Labor hours {what}, shift dates {days} ({tz.key})\n\n"


@click.command("labor")
@click.option("--date", "day", metavar="DATE", help="One shift date: 2026-11-20, today, yesterday.")
@click.option("--from", "date_from", metavar="DATE", help="First shift date (inclusive).")
@click.option("--to", "date_to", metavar="DATE", help="Day after the last one (exclusive).")
@click.option(
    "--by", type=click.Choice(["shift", "work-order"]), default="shift", show_default=True,
    help="Rows per shift and person, or per work order, operation and person.",
)  # fmt: skip
@click.option("--person", metavar="CODE", help="One person (operator code).")
@click.option("--station", metavar="M", help="One station (machine).")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True
)
def cli(
    day: str | None,
    date_from: str | None,
    date_to: str | None,
    by: By,
    person: str | None,
    station: str | None,
    fmt: Literal["table", "csv"],
) -> None:
    """Labor hours (time signed in at stations) per shift and person, or per work order.

    Default: today's shifts. Shifts belong to the date they start on. See docs/labor.md.

    \b
    mesflow labor --date yesterday
    mesflow labor --from 2026-11-16 --to 2026-11-23 --by work-order --format csv > week.csv
    mesflow labor --date today --station IM-01
    """
    from mesflow.plant import ConfigError, load_plant_config
    from mesflow.settings import get_settings

    settings = get_settings()
    if not settings.database_url:
        raise click.ClickException("MESFLOW_DATABASE_URL is not set")
    try:
        plant = load_plant_config(settings.plant_config)
    except ConfigError as err:
        raise click.ClickException(f"plant configuration: {err}") from None
    if station is not None and station not in plant.machines:
        raise click.UsageError(f"unknown station {station!r}; valid: {', '.join(plant.machines)}")
    try:
        first, end = resolve_dates(plant, day, date_from, date_to)
    except ReportError as err:
        raise click.UsageError(str(err)) from None
    try:
        rows = read(settings.database_url, by, first, end, person, station)
    except psycopg.OperationalError:
        raise  # unreachable: the one line of the main command
    except psycopg.Error as err:  # missing migration: one line, no trace
        raise click.ClickException(f"database: {str(err).strip()}") from None
    if not rows:
        last = end - timedelta(days=1)
        click.echo(f"no labor booked for shift dates {first} to {last}", err=True)
        if fmt == "csv":
            click.echo(render(rows, by, fmt), nl=False)
        return
    if fmt == "table":
        click.echo(title(by, first, end, plant.tz), nl=False)
    click.echo(render(rows, by, fmt), nl=False)
