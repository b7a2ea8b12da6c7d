"""One machine's day: its state timeline, its stops, parts per hour and its work orders.

For a manager or maintenance lead asking "what happened on IM-03 yesterday". Same queries and
figures as the analytics page (dashboards/analytics_queries.py), narrowed to one machine and one
plant-local day: `/machine?machine=IM-03&date=2026-11-16`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

import dash
from dash import Input, Output, State, dcc, html

from dashboards import analytics_queries as aq
from dashboards import auth, context
from dashboards.nav import page_header
from dashboards.pages import machine_values
from dashboards.pages.analytics import (
    _DB_ERRORS,
    _fig,
    _local,
    s,
    stops_table,
    table,
    timeline_figure,
)
from mesflow.plant import PlantConfig
from mesflow.report import Scope, fmt_hm

log = logging.getLogger(__name__)

PATH = "/machine"
MIN_ROLE = "manager"

STRINGS: dict[str, dict[str, str]] = {
    "machine_day": {"zh": "设备日报", "en": "Machine day"},
    "parts_per_hour": {"zh": "每小时产量", "en": "Parts per hour"},
    "work_orders": {"zh": "工单", "en": "Work orders"},
    "first_seen": {"zh": "开始", "en": "First seen"},
    "last_seen": {"zh": "最后", "en": "Last seen"},
    "running": {"zh": "运行时间", "en": "Running"},
}

_P = "mc-"
_LANG, _MACHINE, _DATE = f"{_P}lang", f"{_P}machine", f"{_P}date"
_TIMELINE, _PARTS, _STOPS, _WOS, _BANNER = (
    f"{_P}{x}" for x in ("timeline", "parts", "stops", "wos", "banner")
)


def m(key: str, lang: str) -> str:
    entry = STRINGS.get(key)
    return entry.get(lang, entry["en"]) if entry else s(key, lang)


def register(app: dash.Dash) -> None:
    dash.register_page(
        __name__,
        path=PATH,
        name="Machine",
        order=11,
        nav=True,
        nav_label={"zh": "设备日报", "en": "Machine day"},
        layout=layout,
        title="Machine · mesflow",
        min_role=MIN_ROLE,
    )
    auth.callback(
        app,
        MIN_ROLE,
        Output(_BANNER, "children"),
        Output(_TIMELINE, "figure"),
        Output(_PARTS, "figure"),
        Output(_STOPS, "children"),
        Output(_WOS, "children"),
        Input(_MACHINE, "value"),
        Input(_DATE, "date"),
        State(_LANG, "data"),
    )(_refresh)
    machine_values.register(app, MIN_ROLE, _MACHINE, _DATE, _LANG)


def parse(plant: PlantConfig, machine: Any, day: Any) -> tuple[str, date]:
    """Machine and day from the browser; unknown ones fall back to the first machine, today."""
    mid = machine if isinstance(machine, str) and machine in plant.machines else None
    try:
        when = date.fromisoformat(str(day)[:10])
    except ValueError:
        when = datetime.now(plant.tz).date()
    return mid or next(iter(plant.machines)), when


def layout(
    lang: str | None = None, machine: str | None = None, date: str | None = None, **_q: str
) -> html.Div:
    ctx = context.current()
    lang = ctx.lang(lang)
    plant = ctx.plant
    mid, day = parse(plant, machine, date)

    def card(key: str, body: Any) -> html.Section:
        return html.Section([html.H2(m(key, lang)), body], className="an-card")

    def graph(gid: str) -> dcc.Graph:
        return dcc.Graph(id=gid, config={"displayModeBar": False}, className="an-graph")

    return html.Div(
        className=f"analytics machine-page lang-{lang}",
        lang="zh-CN" if lang == "zh" else "en",
        children=[
            dcc.Store(id=_LANG, data=lang),
            page_header(lang, m("machine_day", lang), PATH, plant.plant.name.get(lang)),
            html.Div(
                className="an-filters",
                children=[
                    html.Label(s("machine", lang), className="an-label"),
                    dcc.Dropdown(
                        id=_MACHINE,
                        options=[
                            {"label": f"{k} {v.name.get(lang)}", "value": k}
                            for k, v in plant.machines.items()
                        ],
                        value=mid,
                        clearable=False,
                        className="an-dropdown an-scope",
                    ),
                    html.Label(s("date", lang), className="an-label"),
                    dcc.DatePickerSingle(
                        id=_DATE, date=day.isoformat(), display_format="YYYY-MM-DD"
                    ),
                ],
            ),
            html.Div(id=_BANNER, className="an-banner"),
            html.Div(
                className="an-grid",
                children=[
                    card("timeline", graph(_TIMELINE)),
                    card("parts_per_hour", graph(_PARTS)),
                    card("work_orders", html.Div(id=_WOS, className="an-table-wrap")),
                    card("stops", html.Div(id=_STOPS, className="an-table-wrap")),
                    machine_values.card(lang),
                ],
            ),
        ],
    )


def parts_figure(rows: Sequence[aq.HourParts], tz: Any, lang: str) -> Any:
    fig = _fig()
    x = [r.bucket_start.astimezone(tz).strftime("%H:%M") for r in rows]
    fig.add_bar(x=x, y=[r.good for r in rows], name=s("good", lang), marker={"color": "#2e9d44"})
    fig.add_bar(x=x, y=[r.scrap for r in rows], name=s("scrap", lang), marker={"color": "#d62728"})
    fig.update_layout(barmode="stack")
    fig.update_xaxes(type="category")
    return fig


def wo_table(rows: Sequence[aq.WorkOrderSpan], tz: Any, lang: str) -> html.Table:
    heads = [m(k, lang) for k in ("work_orders", "first_seen", "last_seen", "running")]
    body = [
        [r.work_order, _local(r.first_ts, tz), _local(r.last_ts, tz), fmt_hm(r.running_s)]
        for r in rows
    ]
    return table(heads, body)


def build(db: Any, plant: PlantConfig, machine: str, day: date, lang: str) -> dict[str, Any]:
    """Every figure and table of the page for one machine and day."""
    tz = plant.tz
    f = aq.Filters(day, day + timedelta(days=1), Scope("machine", machine))
    intervals, spans, lo, hi = aq.timeline(db, f, tz)
    names = {code: r.name.get(lang) for code, r in plant.reasons_by_code.items()}
    return {
        "timeline": timeline_figure(intervals, spans, (lo, hi), plant, lang),
        "parts": parts_figure(aq.parts_per_hour(db, machine, day, tz), tz, lang),
        "stops": stops_table(aq.stops(db, f, tz), tz, names, lang),
        "wos": wo_table(aq.work_orders(db, machine, day, tz), tz, lang),
    }


def _refresh(machine: Any, day: Any, lang: Any) -> tuple[Any, ...]:
    ctx = context.current()
    lang = ctx.lang(lang)
    mid, when = parse(ctx.plant, machine, day)
    try:
        out = build(ctx.db, ctx.plant, mid, when, lang)
    except _DB_ERRORS as err:
        log.warning("machine page: cannot read the views: %s", err)
        return (html.Div(s("db_error", lang), className="an-error"), *([dash.no_update] * 4))
    return "", out["timeline"], out["parts"], out["stops"], out["wos"]
