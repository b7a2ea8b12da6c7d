"""The machine page's process-value panel: one value's min/avg/max per minute over the day,
with its limits as lines, its out-of-limit spans shaded and its Cpk per shift.

Reads public views only: `v_process_values_minute` (sql/021_process_values.sql),
`v_process_limit_spans` and `v_process_cpk` (sql/026_process_limits.sql), and the product
runs the limits step stored (which product's limits applied when); the limits themselves
come from the plant file the dashboard loaded. The page
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
from mesflow.plant import PlantConfig
from mesflow.process_limits import ValueLimits
from streams.limit_spans import has_limits, limits_of

log = logging.getLogger(__name__)

STRINGS: dict[str, dict[str, str]] = {
    "process_values": {"zh": "工艺参数", "en": "Process values"},
    "band": {"zh": "每分钟最小–最大", "en": "min–max per minute"},
    "avg": {"zh": "平均", "en": "average"},
    "none": {"zh": "当天没有工艺参数", "en": "No process values this day"},
    "lsl": {"zh": "规格下限 LSL", "en": "LSL"},
    "usl": {"zh": "规格上限 USL", "en": "USL"},
    "alarm_low": {"zh": "报警下限", "en": "alarm low"},
    "alarm_high": {"zh": "报警上限", "en": "alarm high"},
    "cpk_title": {"zh": "每班 Cpk（总体标准差）", "en": "Cpk per shift (overall σ)"},
    "shift": {"zh": "班次", "en": "Shift"},
    "product": {"zh": "产品", "en": "Product"},
    "mean": {"zh": "均值", "en": "Mean"},
    "no_cpk": {"zh": "当天没有班次数据", "en": "No shift figures this day"},
}

NAME, GRAPH, EMPTY, CPK = "mv-name", "mv-graph", "mv-empty", "mv-cpk"
BODY = "mv-body"  # the picker and the chart: hidden on a day without process values
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


@dataclass(frozen=True, slots=True)
class SpanRow:
    start_ts: datetime
    end_ts: datetime | None
    limit_side: str
    bound: float
    worst: float
    product: str | None


@dataclass(frozen=True, slots=True)
class CpkRow:
    shift_date: date
    shift_name: str
    bucket_start: datetime
    product: str | None
    n: int
    mean: float
    stddev: float | None
    lsl: float | None
    usl: float | None
    cpk: float | None
    cp: float | None


def spans(db: Database, machine: str, name: str, day: date, tz: ZoneInfo) -> list[SpanRow]:
    lo, hi = day_bounds(day, tz)
    query = (
        "SELECT start_ts, end_ts, limit_side, bound, worst, product FROM v_process_limit_spans "
        "WHERE machine = %s AND name = %s AND start_ts < %s "
        "AND (end_ts IS NULL OR end_ts > %s) ORDER BY start_ts"
    )

    def run(conn: psycopg.Connection) -> list[SpanRow]:
        with conn.cursor(row_factory=class_row(SpanRow)) as cur:
            return cur.execute(query, (machine, name, hi, lo)).fetchall()

    return db.run(run)


def product_runs(
    db: Database, machine: str, day: date, tz: ZoneInfo
) -> list[tuple[datetime, str | None]]:
    """(from, product) over the day: the run in force at its start, then the changes."""
    lo, hi = day_bounds(day, tz)
    query = (
        "(SELECT start_ts, product FROM process_product_run WHERE machine = %s "
        "AND start_ts <= %s ORDER BY start_ts DESC LIMIT 1) UNION ALL "
        "(SELECT start_ts, product FROM process_product_run WHERE machine = %s "
        "AND start_ts > %s AND start_ts < %s) ORDER BY 1"
    )

    def run(conn: psycopg.Connection) -> list[tuple[datetime, str | None]]:
        rows = conn.execute(query, (machine, lo, machine, lo, hi)).fetchall()
        return [(max(t, lo), p) for t, p in rows]

    return db.run(run)


def cpk_rows(db: Database, machine: str, name: str, day: date) -> list[CpkRow]:
    query = (
        "SELECT shift_date, shift_name, bucket_start, product, n, mean, stddev, lsl, usl, cpk, "
        "cp FROM v_process_cpk WHERE machine = %s AND name = %s AND shift_date = %s "
        "ORDER BY bucket_start, product NULLS FIRST"
    )

    def run(conn: psycopg.Connection) -> list[CpkRow]:
        with conn.cursor(row_factory=class_row(CpkRow)) as cur:
            return cur.execute(query, (machine, name, day)).fetchall()

    return db.run(run)


LimitSegment = tuple[datetime, datetime, ValueLimits | None]


def limit_segments(
    plant: PlantConfig,
    machine: str,
    name: str,
    runs: Sequence[tuple[datetime, str | None]],
    lo: datetime,
    hi: datetime,
) -> list[LimitSegment]:
    """The limits of `name` on the machine from `lo` to `hi`, piece by piece (they change
    with the product that runs; machine entries win, as in streams/limit_spans.py)."""
    of = limits_of(plant, machine)
    starts = list(runs) if runs and runs[0][0] <= lo else [(lo, None), *runs]
    out: list[LimitSegment] = []
    for i, (t, product) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else hi
        if end > t:
            out.append((t, end, of(product).get(name)))
    return out


LIMIT_STYLE = {
    "usl": {"color": "#d62728", "width": 1.5, "dash": "dash"},
    "lsl": {"color": "#d62728", "width": 1.5, "dash": "dash"},
    "alarm_high": {"color": "#ff7f0e", "width": 1, "dash": "dot"},
    "alarm_low": {"color": "#ff7f0e", "width": 1, "dash": "dot"},
}


def limit_lines(
    segments: Sequence[LimitSegment], tz: ZoneInfo
) -> dict[str, tuple[list[datetime | None], list[float | None]]]:
    """Per limit kind present: step lines over its segments, broken where it is absent."""
    out: dict[str, tuple[list[datetime | None], list[float | None]]] = {}
    for kind in LIMIT_STYLE:
        xs: list[datetime | None] = []
        ys: list[float | None] = []
        for a, b, lim in segments:
            y = getattr(lim, kind) if lim is not None else None
            if y is None:
                continue
            if xs:
                xs.append(None)
                ys.append(None)
            xs += [a.astimezone(tz).replace(tzinfo=None), b.astimezone(tz).replace(tzinfo=None)]
            ys += [y, y]
        if xs:
            out[kind] = (xs, ys)
    return out


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


def figure(
    rows: Sequence[MinuteRow],
    name: str,
    tz: ZoneInfo,
    lang: str,
    segments: Sequence[LimitSegment] = (),
    out_spans: Sequence[SpanRow] = (),
    day_end: datetime | None = None,
) -> go.Figure:
    fig = _fig()
    for sp in out_spans:  # shaded: out of limit (an open span runs to the day's end)
        end = sp.end_ts or day_end
        if end is None:
            continue
        fig.add_vrect(
            x0=sp.start_ts.astimezone(tz).replace(tzinfo=None),
            x1=end.astimezone(tz).replace(tzinfo=None),
            fillcolor="rgba(214,39,40,0.15)",
            line_width=0,
            layer="below",
        )
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
    for kind, (xs_l, ys_l) in limit_lines(segments, tz).items():
        fig.add_scatter(
            x=xs_l,
            y=ys_l,
            mode="lines",
            line=LIMIT_STYLE[kind],
            name=v(kind, lang),
            hovertemplate=f"{v(kind, lang)} %{{y:.4g}}<extra></extra>",
        )
    fig.update_xaxes(tickformat="%H:%M")
    return fig


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}g}" if abs(x) >= 1000 else f"{x:.{digits}f}"


def cpk_table(rows: Sequence[CpkRow], plant: PlantConfig, lang: str) -> html.Div:
    if not rows:
        return html.Div(v("no_cpk", lang), className="an-empty")
    head = [v("shift", lang), v("product", lang), "n", v("mean", lang), "σ", "LSL", "USL"]
    head += ["Cpk", "Cp"]
    body = [
        html.Tr(
            [
                html.Td(plant.shift_label(r.shift_name, lang)),
                html.Td(r.product or "–"),
                html.Td(str(r.n)),
                html.Td(_num(r.mean)),
                html.Td(_num(r.stddev)),
                html.Td(_num(r.lsl)),
                html.Td(_num(r.usl)),
                html.Td(_num(r.cpk, 2), className="mv-cpk-value"),
                html.Td(_num(r.cp, 2)),
            ]
        )
        for r in rows
    ]
    return html.Div(
        [
            html.H3(v("cpk_title", lang)),
            html.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(body)]),
        ]
    )


def card(lang: str) -> html.Section:
    return html.Section(
        [
            html.H2(v("process_values", lang)),
            html.Div(id=EMPTY, className="an-empty"),
            html.Div(
                [
                    dcc.Dropdown(
                        id=NAME, options=[], value=None, clearable=False, className="an-dropdown"
                    ),
                    dcc.Graph(id=GRAPH, config={"displayModeBar": False}, className="an-graph"),
                ],
                id=BODY,
            ),
            html.Div(id=CPK, className="mv-cpk"),
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
            return [], None, s("db_error", lang), dash.no_update
        value = current if current in found else (found[0] if found else None)
        # No values that day: the sentence only, not an empty picker and empty axes.
        shown = {} if found else {"display": "none"}
        options = [{"label": n, "value": n} for n in found]
        return options, value, "" if found else v("none", lang), shown

    def chart(machine: Any, day: Any, name: Any, lang: Any) -> Any:
        ctx = context.current()
        lang = ctx.lang(lang)
        mid, when = parse(ctx.plant, machine, day)
        if not isinstance(name, str):
            return figure([], "", ctx.plant.tz, lang)
        tz = ctx.plant.tz
        lo, hi = day_bounds(when, tz)
        try:
            rows = minutes(ctx.db, mid, name, when, tz)
            limited = has_limits(ctx.plant)
            runs = product_runs(ctx.db, mid, when, tz) if limited else []
            out = spans(ctx.db, mid, name, when, tz) if limited else []
        except _DB_ERRORS as err:
            log.warning("machine page: cannot read process values: %s", err)
            return dash.no_update
        segments = limit_segments(ctx.plant, mid, name, runs, lo, hi) if limited else []
        return figure(rows, name, tz, lang, segments, out, hi)

    def cpk(machine: Any, day: Any, name: Any, lang: Any) -> Any:
        ctx = context.current()
        lang = ctx.lang(lang)
        mid, when = parse(ctx.plant, machine, day)
        if not isinstance(name, str):
            return ""
        try:
            rows = cpk_rows(ctx.db, mid, name, when)
        except _DB_ERRORS as err:
            log.warning("machine page: cannot read Cpk: %s", err)
            return dash.no_update
        return cpk_table(rows, ctx.plant, lang)

    auth.callback(
        app,
        role,
        Output(NAME, "options"),
        Output(NAME, "value"),
        Output(EMPTY, "children"),
        Output(BODY, "style"),
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
    auth.callback(
        app,
        role,
        Output(CPK, "children"),
        Input(machine_id, "value"),
        Input(date_id, "date"),
        Input(NAME, "value"),
        State(lang_id, "data"),
    )(cpk)
