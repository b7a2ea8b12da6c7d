"""The machine page's process-value panel: one value's min/avg/max per minute over the day.

Reads the public view `v_process_values_minute` (sql/021_process_values.sql) only. The page
(dashboards/pages/machine.py) places `card(...)` in its grid and calls `register(...)` with
the ids of its machine, date and language components, so this module needs nothing of it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import dash
import plotly.graph_objects as go
import psycopg
from dash import Input, Output, State, dcc, html
from psycopg.rows import class_row

from dashboards import auth, context
from dashboards.pages.analytics import _DB_ERRORS, _fig, s
from dashboards.queries import Database

log = logging.getLogger(__name__)

STRINGS: dict[str, dict[str, str]] = {
    "process_values": {"zh": "工艺参数", "en": "Process values"},
    "band": {"zh": "每分钟最小–最大", "en": "min–max per minute"},
    "avg": {"zh": "平均", "en": "average"},
    "none": {"zh": "当天没有工艺参数", "en": "No process values this day"},
}

NAME, GRAPH, EMPTY = "mv-name", "mv-graph", "mv-empty"
# A gap longer than this between two minutes breaks the band (the machine sent nothing):
# drawing across it would invent values.
GAP = timedelta(minutes=5)


def v(key: str, lang: str) -> str:
    entry = STRINGS[key]
    return entry.get(lang, entry["en"])


@dataclass(frozen=True, slots=True)
class MinuteRow:
    minute: datetime
    n: int
    min: float
    avg: float
    max: float


def day_bounds(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    lo = datetime.combine(day, time(), tz)
    return lo, datetime.combine(day + timedelta(days=1), time(), tz)


def value_names(db: Database, machine: str, day: date, tz: ZoneInfo) -> list[str]:
    lo, hi = day_bounds(day, tz)
    query = (
        "SELECT DISTINCT name FROM v_process_values_minute "
        "WHERE machine = %s AND minute >= %s AND minute < %s ORDER BY name"
    )

    def run(conn: psycopg.Connection) -> list[str]:
        return [r[0] for r in conn.execute(query, (machine, lo, hi)).fetchall()]

    return db.run(run)


def minutes(db: Database, machine: str, name: str, day: date, tz: ZoneInfo) -> list[MinuteRow]:
    lo, hi = day_bounds(day, tz)
    query = (
        "SELECT minute, n, min, avg, max FROM v_process_values_minute "
        "WHERE machine = %s AND name = %s AND minute >= %s AND minute < %s ORDER BY minute"
    )

    def run(conn: psycopg.Connection) -> list[MinuteRow]:
        with conn.cursor(row_factory=class_row(MinuteRow)) as cur:
            return cur.execute(query, (machine, name, lo, hi)).fetchall()

    return db.run(run)


def band(
    rows: Sequence[MinuteRow], tz: ZoneInfo
) -> tuple[list[datetime | None], list[float | None], list[float | None], list[float | None]]:
    """x, min, avg, max in plant time, with a None point in every gap longer than GAP."""
    xs: list[datetime | None] = []
    lo: list[float | None] = []
    avg: list[float | None] = []
    hi: list[float | None] = []
    prev: datetime | None = None
    for r in rows:
        if prev is not None and r.minute - prev > GAP:
            for col in (xs, lo, avg, hi):
                col.append(None)
        xs.append(r.minute.astimezone(tz).replace(tzinfo=None))
        lo.append(r.min)
        avg.append(r.avg)
        hi.append(r.max)
        prev = r.minute
    return xs, lo, avg, hi


def figure(rows: Sequence[MinuteRow], name: str, tz: ZoneInfo, lang: str) -> go.Figure:
    fig = _fig()
    xs, lo, avg, hi = band(rows, tz)
    line = {"width": 0, "color": "rgba(31,119,180,0.25)"}
    fig.add_scatter(x=xs, y=hi, mode="lines", line=line, showlegend=False, hoverinfo="skip")
    fig.add_scatter(
        x=xs,
        y=lo,
        mode="lines",
        line=line,
        fill="tonexty",
        fillcolor="rgba(31,119,180,0.25)",
        name=v("band", lang),
        hoverinfo="skip",
    )
    fig.add_scatter(
        x=xs,
        y=avg,
        mode="lines",
        line={"width": 1.5, "color": "#1f77b4"},
        name=f"{name} ({v('avg', lang)})",
        customdata=[[a, b] for a, b in zip(lo, hi, strict=True)],
        hovertemplate="%{x|%H:%M}  %{y:.4g}  [%{customdata[0]:.4g} – %{customdata[1]:.4g}]"
        "<extra></extra>",
    )
    fig.update_xaxes(tickformat="%H:%M")
    return fig


def card(lang: str) -> html.Section:
    return html.Section(
        [
            html.H2(v("process_values", lang)),
            dcc.Dropdown(id=NAME, options=[], value=None, clearable=False, className="an-dropdown"),
            html.Div(id=EMPTY, className="an-empty"),
            dcc.Graph(id=GRAPH, config={"displayModeBar": False}, className="an-graph"),
        ],
        className="an-card",
    )


def register(app: dash.Dash, role: str, machine_id: str, date_id: str, lang_id: str) -> None:
    from dashboards.pages.machine import parse  # the page's own reading of machine and day

    def names(machine: Any, day: Any, current: Any, lang: Any) -> tuple[Any, ...]:
        ctx = context.current()
        lang = ctx.lang(lang)
        mid, when = parse(ctx.plant, machine, day)
        try:
            found = value_names(ctx.db, mid, when, ctx.plant.tz)
        except _DB_ERRORS as err:
            log.warning("machine page: cannot read process values: %s", err)
            return [], None, s("db_error", lang)
        value = current if current in found else (found[0] if found else None)
        return [{"label": n, "value": n} for n in found], value, "" if found else v("none", lang)

    def chart(machine: Any, day: Any, name: Any, lang: Any) -> Any:
        ctx = context.current()
        lang = ctx.lang(lang)
        mid, when = parse(ctx.plant, machine, day)
        if not isinstance(name, str):
            return figure([], "", ctx.plant.tz, lang)
        try:
            rows = minutes(ctx.db, mid, name, when, ctx.plant.tz)
        except _DB_ERRORS as err:
            log.warning("machine page: cannot read process values: %s", err)
            return dash.no_update
        return figure(rows, name, ctx.plant.tz, lang)

    auth.callback(
        app,
        role,
        Output(NAME, "options"),
        Output(NAME, "value"),
        Output(EMPTY, "children"),
        Input(machine_id, "value"),
        Input(date_id, "date"),
        State(NAME, "value"),
        State(lang_id, "data"),
    )(names)
    auth.callback(
        app,
        role,
        Output(GRAPH, "figure"),
        Input(machine_id, "value"),
        Input(date_id, "date"),
        Input(NAME, "value"),
        State(lang_id, "data"),
    )(chart)
