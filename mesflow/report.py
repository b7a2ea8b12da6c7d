"""`mesflow report`: the KPI table of a machine, a line or the plant for a shift or dates.

Reads the public KPI views (sql/006_metrics_views.sql) and nothing else, so a report shows
exactly what a BI tool or a board shows. Totals are time-weighted: times and parts are added
up first and then divided, with the null rules of the SQL functions in sql/005_metrics.sql.
"""

from __future__ import annotations

import csv
import io
import json
import math
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from mesflow.plant import PlantConfig, ShiftCalendar

Bucket = Literal["hour", "shift"]
Format = Literal["table", "csv", "json"]


class ReportError(ValueError):
    """A report that cannot be made as asked; the message says why and what is valid."""


# -- what to report ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    kind: Literal["machine", "line", "plant"]
    id: str | None = None

    def describe(self, plant: PlantConfig, lang: str) -> str:
        if self.kind == "machine" and self.id:
            return f"machine {self.id} ({plant.machines[self.id].name.get(lang)})"
        if self.kind == "line" and self.id:
            line = next(ln for ln in plant.lines if ln.id == self.id)
            return f"line {self.id} ({line.name.get(lang)})"
        return f"plant {plant.plant.id} ({plant.plant.name.get(lang)})"


@dataclass(frozen=True)
class Period:
    """Plant-local dates [start, end), or one shift instance (start's date and shift name)."""

    start: date
    end: date
    shift: str | None = None

    def describe(self) -> str:
        if self.shift:
            return f"shift {self.start.isoformat()}/{self.shift}"
        if self.end - self.start == timedelta(days=1):
            return self.start.isoformat()
        last = self.end - timedelta(days=1)
        return f"{self.start.isoformat()} to {last.isoformat()} (inclusive)"


def resolve_scope(plant: PlantConfig, machine: str | None, line: str | None) -> Scope:
    if machine and line:
        raise ReportError("give --machine or --line, not both")
    if machine:
        if machine not in plant.machines:
            raise ReportError(
                f"unknown machine {machine!r}; valid machines: {', '.join(plant.machines)}"
            )
        return Scope("machine", machine)
    if line:
        lines = [ln.id for ln in plant.lines]
        if line not in lines:
            raise ReportError(f"unknown line {line!r}; valid lines: {', '.join(lines)}")
        return Scope("line", line)
    return Scope("plant")


# Words for a day, relative to the plant-local date of now.
DAY_WORDS = {"today": 0, "yesterday": -1}
CURRENT_SHIFT = "current"


def _parse_date(text: str, option: str, today: date | None = None) -> date:
    word = text.strip().lower()
    if word in DAY_WORDS:
        assert today is not None
        return today + timedelta(days=DAY_WORDS[word])
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ReportError(
            f"{option}: {text!r} is not a date like 2026-11-20 (or today, yesterday)"
        ) from None


def _calendars(plant: PlantConfig, scope: Scope) -> list[ShiftCalendar]:
    if scope.kind == "machine" and scope.id:
        return [plant.calendar_for(scope.id)]
    if scope.kind == "line" and scope.id:
        line = next(ln for ln in plant.lines if ln.id == scope.id)
        return [line.shift_calendar or plant.shift_calendar]
    # The plant's own calendar first: it names the shift most lines work.
    return [plant.shift_calendar, *(ln.shift_calendar or plant.shift_calendar for ln in plant.lines)]  # fmt: skip


def _shift_names(plant: PlantConfig, scope: Scope) -> list[str]:
    names: list[str] = []
    for cal in _calendars(plant, scope):
        names += [s.name for s in cal.shifts if s.name not in names]
    return names


def current_shift(plant: PlantConfig, scope: Scope, now: datetime) -> tuple[date, str]:
    """The shift instance running at `now` (breaks included) in the scope's calendar: the
    date it started on (plant-local) and its name."""
    from streams.shift_calendar import CalendarIndex

    t = int(now.timestamp() * 1_000_000)
    for cal in _calendars(plant, scope):
        inst = CalendarIndex(cal, plant.plant.timezone).shift_at(t)
        if inst is not None:
            return inst.date, inst.name
    local = now.astimezone(plant.tz).strftime("%Y-%m-%d %H:%M")
    raise ReportError(
        f"--shift current: no shift is running now ({local}, plant time); "
        "give one as DATE/NAME, e.g. today/day"
    )


def resolve_period(
    plant: PlantConfig,
    scope: Scope,
    *,
    shift: str | None = None,
    day: str | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    now: datetime | None = None,
) -> Period:
    """The period asked for. Dates may be `today` or `yesterday` and `--shift` may be
    `current`, all in the plant's time zone at `now` (default: the wall clock)."""
    now = now or datetime.now(plant.tz)
    today = now.astimezone(plant.tz).date()
    given = [o for o, v in (("--shift", shift), ("--date", day), ("--from", date_from)) if v]
    if date_to and not date_from:
        given.append("--to")
    if len(given) != 1:
        raise ReportError(
            "give one period: --shift DATE/NAME, --date DATE or --from DATE --to DATE"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if shift and shift.strip().lower() == CURRENT_SHIFT:
        start, name = current_shift(plant, scope, now)
        return Period(start, start + timedelta(days=1), name)
    if shift:
        text, sep, name = shift.partition("/")
        if not sep or not name:
            raise ReportError(f"--shift: {shift!r} is not DATE/NAME, e.g. 2026-11-20/day")
        valid = _shift_names(plant, scope)
        if name not in valid:
            raise ReportError(f"--shift: unknown shift {name!r}; valid shifts: {', '.join(valid)}")
        start = _parse_date(text, "--shift", today)
        return Period(start, start + timedelta(days=1), name)
    if day:
        start = _parse_date(day, "--date", today)
        return Period(start, start + timedelta(days=1))
    assert date_from is not None
    if not date_to:
        raise ReportError(
            "--from needs --to (exclusive: --from 2026-11-20 --to 2026-11-21 is one day)"
        )
    start, end = _parse_date(date_from, "--from", today), _parse_date(date_to, "--to", today)
    if end <= start:
        raise ReportError(f"--to {end} must be after --from {start} (--to is exclusive)")
    return Period(start, end)


# -- rows --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KpiRow:
    """One bucket of a KPI view; the column names of the CSV and JSON output."""

    bucket_start: datetime | None  # None only for the total row
    bucket_end: datetime | None
    shift_date: date | None
    shift_name: str | None
    planned_s: float
    apt_s: float
    downtime_s: float
    microstop_count: int
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    good: int
    scrap: int
    failures: int
    mttr_s: float | None
    mtbf_s: float | None
    # Not shown in the table, but needed to add rows up again (CSV/JSON users can too).
    ideal_s: float
    failure_s: float


@dataclass(frozen=True, slots=True)
class ReasonRow:
    reason: str
    category: str
    reason_en: str | None
    reason_zh: str | None
    seconds: float
    stops: int
    share: float | None  # of all downtime by reason in the period

    def name(self, lang: str) -> str:
        named = self.reason_zh if lang.startswith("zh") else self.reason_en
        return named or self.reason


# Python twins of kpi_availability() & co. in sql/005_metrics.sql: same null rules.
def kpi_availability(planned: float, apt: float) -> float | None:
    return apt / planned if planned > 0 else None


def kpi_performance(planned: float, apt: float, ideal: float) -> float | None:
    return ideal / apt if planned > 0 and apt > 0 else None


def kpi_quality(planned: float, good: int, scrap: int) -> float | None:
    return good / (good + scrap) if planned > 0 and good + scrap != 0 else None


def kpi_oee(planned: float, apt: float, ideal: float, good: int, scrap: int) -> float | None:
    if not planned > 0:
        return None
    a = kpi_availability(planned, apt)
    p = kpi_performance(planned, apt, ideal)
    q = kpi_quality(planned, good, scrap)
    # Nothing ran or nothing was made inside planned time: OEE is 0, not unknown.
    return a * p * q if a is not None and p is not None and q is not None else 0.0


def total_row(rows: Sequence[KpiRow]) -> KpiRow:
    """Time-weighted total: sums of times and parts, then the KPI formulas on the sums."""
    planned = sum(r.planned_s for r in rows)
    apt = sum(r.apt_s for r in rows)
    ideal = sum(r.ideal_s for r in rows)
    good = sum(r.good for r in rows)
    scrap = sum(r.scrap for r in rows)
    failures = sum(r.failures for r in rows)
    failure_s = sum(r.failure_s for r in rows)
    return KpiRow(
        bucket_start=None,
        bucket_end=None,
        shift_date=None,
        shift_name=None,
        planned_s=planned,
        apt_s=apt,
        downtime_s=sum(r.downtime_s for r in rows),
        microstop_count=sum(r.microstop_count for r in rows),
        availability=kpi_availability(planned, apt),
        performance=kpi_performance(planned, apt, ideal),
        quality=kpi_quality(planned, good, scrap),
        oee=kpi_oee(planned, apt, ideal, good, scrap),
        good=good,
        scrap=scrap,
        failures=failures,
        mttr_s=failure_s / failures if failures > 0 else None,
        mtbf_s=apt / failures if failures > 0 else None,
        ideal_s=ideal,
        failure_s=failure_s,
    )


# -- queries (public views only) ---------------------------------------------------------

_KPI_COLUMNS = sql.SQL(
    "v.bucket_start, v.bucket_end, {sd} AS shift_date, {sn} AS shift_name, "
    "v.planned_s, v.apt_s, v.downtime_s, v.microstop_count::int AS microstop_count, "
    "v.availability, v.performance, v.quality, v.oee, "
    # Line and plant views sum bigints into numeric: back to int for JSON and arithmetic.
    "v.good::bigint AS good, v.scrap::bigint AS scrap, v.failures::int AS failures, "
    "v.mttr_s, v.mtbf_s, v.ideal_s, v.failure_s"
)


def _view(scope: Scope, bucket: Bucket) -> sql.Identifier:
    return sql.Identifier(f"v_kpi_{scope.kind}_{bucket}")


def _scope_filter(scope: Scope, alias: str) -> sql.Composable:
    if scope.kind == "plant":
        return sql.SQL("true")
    return sql.SQL("{} = %(scope_id)s").format(sql.Identifier(alias, scope.kind))


def _shifts_cte(scope: Scope, period: Period) -> sql.Composable:
    """The shift instances of the period in this scope (hour rows take their shift from it)."""
    if period.shift:
        when = sql.SQL("s.shift_date = %(start)s AND s.shift_name = %(shift)s")
    else:
        # A shift is at most 24 h long: one starting the day before may hold the first hours.
        when = sql.SQL("s.shift_date >= %(start_prev)s AND s.shift_date < %(end)s")
    return sql.SQL(
        "shifts AS MATERIALIZED (SELECT s.shift_date, s.shift_name, s.bucket_start, "
        "s.bucket_end FROM {view} s WHERE {scope} AND {when})"
    ).format(view=_view(scope, "shift"), scope=_scope_filter(scope, "s"), when=when)


def _hour_filter(period: Period, alias: str) -> sql.Composable:
    col = sql.Identifier(alias, "bucket_start")
    if period.shift:
        # Hours that overlap the shift instance (a shift may start at 07:30); start + 1 h
        # because v_downtime_by_reason has no bucket_end.
        return sql.SQL(
            "EXISTS (SELECT 1 FROM shifts x WHERE x.bucket_start < {col} + interval '1 hour' "
            "AND {col} < x.bucket_end)"
        ).format(col=col)
    return sql.SQL("{col} >= %(start_ts)s AND {col} < %(end_ts)s").format(col=col)


def _shift_filter(period: Period, alias: str) -> sql.Composable:
    sd, sn = sql.Identifier(alias, "shift_date"), sql.Identifier(alias, "shift_name")
    if period.shift:
        return sql.SQL("{sd} = %(start)s AND {sn} = %(shift)s").format(sd=sd, sn=sn)
    # A shift belongs to the plant-local date it starts on, like `--date` hours.
    return sql.SQL("{sd} >= %(start)s AND {sd} < %(end)s").format(sd=sd)


def _params(scope: Scope, period: Period, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "scope_id": scope.id,
        "start": period.start,
        "end": period.end,
        "start_prev": period.start - timedelta(days=1),
        "shift": period.shift,
        # Plant-local midnights: zoneinfo gives each its own offset across a DST change.
        "start_ts": datetime.combine(period.start, time(), tz),
        "end_ts": datetime.combine(period.end, time(), tz),
    }


def kpi_query(
    scope: Scope, period: Period, by: Bucket, tz: ZoneInfo
) -> tuple[sql.Composed, dict[str, Any]]:
    if by == "shift":
        query = sql.SQL(
            "SELECT {cols} FROM {view} v WHERE {scope} AND {when} "
            "ORDER BY v.bucket_start, v.shift_name"
        ).format(
            cols=_KPI_COLUMNS.format(sd=sql.SQL("v.shift_date"), sn=sql.SQL("v.shift_name")),
            view=_view(scope, "shift"),
            scope=_scope_filter(scope, "v"),
            when=_shift_filter(period, "v"),
        )
    else:
        # An hour is labelled with the latest-starting shift instance that overlaps it.
        query = sql.SQL(
            "WITH {shifts} SELECT {cols} FROM {view} v "
            "LEFT JOIN LATERAL (SELECT s.shift_date, s.shift_name FROM shifts s "
            "  WHERE s.bucket_start < v.bucket_end AND v.bucket_start < s.bucket_end "
            "  ORDER BY s.bucket_start DESC LIMIT 1) sh ON true "
            "WHERE {scope} AND {when} ORDER BY v.bucket_start"
        ).format(
            shifts=_shifts_cte(scope, period),
            cols=_KPI_COLUMNS.format(sd=sql.SQL("sh.shift_date"), sn=sql.SQL("sh.shift_name")),
            view=_view(scope, "hour"),
            scope=_scope_filter(scope, "v"),
            when=_hour_filter(period, "v"),
        )
    return query, _params(scope, period, tz)


def reasons_query(
    scope: Scope, period: Period, by: Bucket, tz: ZoneInfo
) -> tuple[sql.Composed, dict[str, Any]]:
    """Downtime by reason summed over the period, longest first (a Pareto)."""
    with_: sql.Composable = sql.SQL("")
    if by == "shift":
        when = _shift_filter(period, "r")
    else:
        if period.shift:  # the hours of one shift instance: its bounds come from the KPI view
            with_ = sql.SQL("WITH {} ").format(_shifts_cte(scope, period))
        when = _hour_filter(period, "r")
    query = sql.SQL(
        "{with_}SELECT r.reason, max(r.category) AS category, max(r.reason_en) AS reason_en, "
        "max(r.reason_zh) AS reason_zh, sum(r.seconds) AS seconds, "
        "sum(r.stops)::bigint AS stops, "
        "sum(r.seconds) / NULLIF(sum(sum(r.seconds)) OVER (), 0) AS share "
        "FROM v_downtime_by_reason r WHERE r.bucket = %(bucket)s AND {scope} AND {when} "
        "GROUP BY r.reason ORDER BY seconds DESC, r.reason"
    ).format(with_=with_, scope=_scope_filter(scope, "r"), when=when)
    params = _params(scope, period, tz)
    params["bucket"] = by
    return query, params


def fetch_kpis(url: str, scope: Scope, period: Period, by: Bucket, tz: ZoneInfo) -> list[KpiRow]:
    query, params = kpi_query(scope, period, by, tz)
    with (
        psycopg.connect(url, application_name="mesflow report") as conn,
        conn.cursor(row_factory=class_row(KpiRow)) as cur,
    ):
        return cur.execute(query, params).fetchall()


def fetch_reasons(
    url: str, scope: Scope, period: Period, by: Bucket, tz: ZoneInfo
) -> list[ReasonRow]:
    query, params = reasons_query(scope, period, by, tz)
    with (
        psycopg.connect(url, application_name="mesflow report") as conn,
        conn.cursor(row_factory=class_row(ReasonRow)) as cur,
    ):
        return cur.execute(query, params).fetchall()


# -- formatting --------------------------------------------------------------------------


def fmt_pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f}%"


def fmt_hm(seconds: float | None) -> str:
    """Seconds as h:mm, rounded to the minute (blank for null)."""
    if seconds is None:
        return ""
    minutes = round(seconds / 60)
    return f"{minutes // 60}:{minutes % 60:02d}"


def _iso(value: datetime | date | None, tz: ZoneInfo) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(tz).isoformat()
    return value.isoformat()


# CSV and JSON carry numbers a spreadsheet shows as they are, without float noise
# (13895.642999999998): durations (`*_s`, `seconds`) to 0.1 s, ratios to 4 decimals
# (0.1 percentage point). Totals are added up before rounding, so they stay exact.
SECONDS_DECIMALS = 1
RATIO_DECIMALS = 4


def _raw(value: Any, tz: ZoneInfo, decimals: int | None = None) -> Any:
    if isinstance(value, datetime | date):
        return _iso(value, tz)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None  # JSON has no NaN/Infinity
        if decimals is not None:
            return round(value, decimals) + 0.0  # + 0.0: no "-0.0"
    return value


def _decimals(name: str) -> int:
    return SECONDS_DECIMALS if name.endswith("_s") or name == "seconds" else RATIO_DECIMALS


def _records(rows: Sequence[Any], tz: ZoneInfo) -> list[dict[str, Any]]:
    return [{k: _raw(v, tz, _decimals(k)) for k, v in asdict(r).items()} for r in rows]


def to_json(rows: Sequence[Any], tz: ZoneInfo) -> str:
    return json.dumps(_records(rows, tz), ensure_ascii=False, indent=2) + "\n"


def to_csv(rows: Sequence[Any], cls: type, tz: ZoneInfo) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(f.name for f in fields(cls))
    for rec in _records(rows, tz):
        writer.writerow("" if v is None else v for v in rec.values())
    return out.getvalue()


def display_width(text: str) -> int:
    """Terminal columns: CJK characters (reason and machine names in Chinese) take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _grid(headers: Sequence[str], body: Sequence[Sequence[str]], left: int) -> str:
    """Aligned columns: the first `left` columns left-aligned, the rest (numbers) right."""
    widths = [
        max(display_width(h), *(display_width(r[i]) for r in body)) for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, (cell, w) in enumerate(zip(cells, widths, strict=True)):
            pad = " " * (w - display_width(cell))
            out.append(cell + pad if i < left else pad + cell)
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in body)]) + "\n"


KPI_HEADERS = (
    "start", "shift", "planned h", "APT h", "downtime h", "microstops",
    "avail", "perf", "quality", "OEE", "good", "scrap", "failures", "MTTR", "MTBF",
)  # fmt: skip


def _kpi_cells(r: KpiRow, tz: ZoneInfo, label: str | None = None) -> list[str]:
    start = label or (
        r.bucket_start.astimezone(tz).strftime("%Y-%m-%d %H:%M") if r.bucket_start else ""
    )
    return [
        start,
        r.shift_name or "",
        fmt_hm(r.planned_s),
        fmt_hm(r.apt_s),
        fmt_hm(r.downtime_s),
        str(r.microstop_count),
        fmt_pct(r.availability),
        fmt_pct(r.performance),
        fmt_pct(r.quality),
        fmt_pct(r.oee),
        str(r.good),
        str(r.scrap),
        str(r.failures),
        fmt_hm(r.mttr_s),
        fmt_hm(r.mtbf_s),
    ]


def kpi_table(rows: Sequence[KpiRow], tz: ZoneInfo) -> str:
    body = [_kpi_cells(r, tz) for r in rows]
    body.append(_kpi_cells(total_row(rows), tz, label="total"))
    return _grid(KPI_HEADERS, body, left=2)


def reasons_table(rows: Sequence[ReasonRow], lang: str) -> str:
    body: list[list[str]] = []
    cumulative = 0.0
    for r in rows:
        cumulative += r.share or 0.0
        body.append(
            [r.reason, r.category, r.name(lang), fmt_hm(r.seconds), str(r.stops),
             fmt_pct(r.share), fmt_pct(cumulative if r.share is not None else None)]
        )  # fmt: skip
    total_s = sum(r.seconds for r in rows)
    body.append(["total", "", "", fmt_hm(total_s), str(sum(r.stops for r in rows)), "", ""])
    headers = ("reason", "category", "name", "time h", "stops", "share", "cumulative")
    return _grid(headers, body, left=3)


# -- the whole report --------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    text: str  # what goes to standard output
    notice: str | None = None  # "no figures for ...": stderr for csv/json, stdout for a table


def make_report(
    url: str,
    plant: PlantConfig,
    scope: Scope,
    period: Period,
    *,
    by: Bucket = "shift",
    fmt: Format = "table",
    reasons: bool = False,
    lang: str = "zh",
) -> Report:
    tz = plant.tz
    what = "downtime by reason" if reasons else f"KPIs by {by}"
    title = f"{what}, {scope.describe(plant, lang)}, {period.describe()}"
    fetch: Callable[..., Sequence[Any]] = fetch_reasons if reasons else fetch_kpis
    rows = fetch(url, scope, period, by, tz)
    cls: type = ReasonRow if reasons else KpiRow
    empty = f"no figures for {scope.describe(plant, lang)}, {period.describe()} ({by} buckets)"
    if fmt == "json":
        return Report(to_json(rows, tz), None if rows else empty)
    if fmt == "csv":
        return Report(to_csv(rows, cls, tz), None if rows else empty)
    if not rows:
        return Report(empty + "\n")
    table = reasons_table(rows, lang) if reasons else kpi_table(rows, tz)
    return Report(f"{title} (times in {plant.plant.timezone})\n\n{table}")
