"""Labor board (/labor, manager): who is at which station now, labor hours per shift and
person, and per work order and operation (docs/labor.md).

Filters: shift dates (plant-local, default the last 7 days, at most 92), a person and a
station. Figures come from the public views of sql/031_labor.sql
(dashboards/labor_queries.py). Hours are attendance: a person at two stations at once books
half of each hour to each, so a person's hours add up to the time they were signed in.
"""

from __future__ import annotations

import logging
from datetime import datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import dash
import psycopg
from dash import Input, Output, State, dcc, html

from dashboards import auth, context
from dashboards import labor_queries as lq
from dashboards.nav import page_header
from dashboards.queries import Database
from dashboards.widgets import day_range, filter_pick, page_text, picked_days, text_table
from mesflow.plant import PlantConfig

log = logging.getLogger(__name__)

PATH: Final = "/labor"
ROLE: Final = "manager"
DEFAULT_DAYS: Final = 7
MAX_DAYS: Final = 92

_P = "lab-"
_LANG = f"{_P}lang"
_RANGE = f"{_P}range"
_PERSON = f"{_P}person"
_STATION = f"{_P}station"
_BODY = f"{_P}body"
_TICK = f"{_P}tick"

STRINGS: Final[dict[str, dict[str, str]]] = {
    "title": {"zh": "人员工时", "en": "Labor: people at stations"},
    "nav": {"zh": "工时", "en": "Labor"},
    "range": {"zh": "班次日期", "en": "Shift dates"},
    "person": {"zh": "人员", "en": "Person"},
    "station": {"zh": "工位", "en": "Station"},
    "all": {"zh": "全部", "en": "All"},
    "now": {"zh": "当前在岗", "en": "Signed in now"},
    "since": {"zh": "上岗时间", "en": "Since"},
    "hours": {"zh": "工时 (h)", "en": "Hours"},
    "share": {"zh": "分摊", "en": "Share"},
    "work_order": {"zh": "工单", "en": "Work order"},
    "work_orders": {"zh": "工单数", "en": "Work orders"},
    "operation": {"zh": "工序", "en": "Operation"},
    "order": {"zh": "订单", "en": "Order"},
    "product": {"zh": "产品", "en": "Product"},
    "people": {"zh": "人员", "en": "People"},
    "stations": {"zh": "工位", "en": "Stations"},
    "shift_date": {"zh": "班次日期", "en": "Shift date"},
    "shift": {"zh": "班次", "en": "Shift"},
    "no_shift": {"zh": "班外", "en": "off shift"},
    "no_wo": {"zh": "（无工单）", "en": "(no work order)"},
    "open": {"zh": "（进行中）", "en": " (open)"},
    "by_shift": {"zh": "按班次与人员", "en": "By shift and person"},
    "by_wo": {"zh": "按工单与工序", "en": "By work order and operation"},
    "issues": {"zh": "异常记录", "en": "Odd reports"},
    "kind": {"zh": "类型", "en": "Kind"},
    "count": {"zh": "次数", "en": "Count"},
    "last": {"zh": "最近", "en": "Latest"},
    "total": {"zh": "总工时", "en": "Total hours"},
    "present": {"zh": "在岗人数", "en": "People signed in"},
    "forgotten": {"zh": "忘记离岗", "en": "Forgotten sign-outs"},
    "expired": {"zh": "忘记离岗（超时自动结束）", "en": "Forgotten sign-out (closed at the limit)"},
    "duplicate_sign_in": {"zh": "重复上岗（已忽略）", "en": "Sign-in where already signed in (ignored)"},
    "sign_out_without_sign_in": {"zh": "未上岗即离岗", "en": "Sign-out without sign-in"},
    "late": {"zh": "迟到的报工（按已记账时间生效）", "en": "Late report (applied at the booked time)"},
    "nobody": {"zh": "无人在岗", "en": "Nobody signed in"},
    "empty": {"zh": "所选范围内没有数据", "en": "No figures for this selection"},
    "more": {
        "zh": "只显示前 {n} 行，共 {total} 行：请缩小日期范围，或按人员、工位筛选",
        "en": "The first {n} of {total} rows: narrow the dates, or pick a person or station",
    },
    "db_error": {"zh": "数据库不可用", "en": "Database unreachable"},
    "note": {
        "zh": "工时为在岗时间（含休息）：同时在 k 个工位上岗时，每个工位各计 1/k。"
              "班次按工厂时区与各工位的班次日历；进行中的时段计到现在。",
        "en": "Hours are time signed in (breaks included): a person at k stations at once books "
              "1/k to each. Shifts follow the plant's time zone and each station's calendar; "
              "open segments count up to now.",
    },
}  # fmt: skip


def s(key: str, lang: str, **kw: Any) -> str:
    return page_text(STRINGS, key, lang, **kw)


def register(app: dash.Dash) -> None:
    dash.register_page(
        __name__,
        path=PATH,
        name="Labor",
        order=48,
        nav=True,
        nav_label={"zh": STRINGS["nav"]["zh"], "en": STRINGS["nav"]["en"]},
        layout=layout,
        title="Labor · mesflow",
        min_role=ROLE,
    )
    auth.callback(
        app,
        ROLE,
        Output(_BODY, "children"),
        State(_LANG, "data"),
        Input(_RANGE, "start_date"),
        Input(_RANGE, "end_date"),
        Input(_PERSON, "value"),
        Input(_STATION, "value"),
        Input(_TICK, "n_intervals"),
    )(_update)


def parse_filters(
    plant: PlantConfig, start: Any, end: Any, person: Any, station: Any
) -> lq.LaborFilters:
    """The filter values from the browser (hostile or broken) as filters; bad ones: defaults."""
    today = datetime.now(plant.tz).date()
    first, last = picked_days(start, end, today, DEFAULT_DAYS, MAX_DAYS)
    who = person if isinstance(person, str) and 0 < len(person) <= 200 else None
    where = station if isinstance(station, str) and station in plant.machines else None
    return lq.LaborFilters(first, last + timedelta(days=1), who, where)


def layout(lang: str | None = None, **_q: str) -> html.Div:
    ctx = context.current()
    lang = ctx.lang(lang)
    plant = ctx.plant
    f = parse_filters(plant, None, None, None, None)
    try:
        people = lq.people(ctx.db)
    except psycopg.Error as err:  # PoolTimeout is one
        log.warning("labor: cannot read the people: %s", type(err).__name__)
        people = []
    stations = [
        {"label": f"{m.id} · {m.name.get(lang)}", "value": m.id}
        for line in plant.lines
        for m in line.machines
    ]
    return html.Div(
        className=f"orders labor-page lang-{lang}",
        lang="zh-CN" if lang == "zh" else "en",
        children=[
            dcc.Store(id=_LANG, data=lang),
            dcc.Interval(id=_TICK, interval=60_000),  # open segments grow
            page_header(
                lang,
                s("title", lang),
                PATH,
                plant.plant.name.get(lang),
                prefix="orders",
                title_class="board-name",
            ),
            html.Div(
                className="orders-filters labor-filters",
                children=[
                    html.Label(s("range", lang)),
                    day_range(_RANGE, f.start, (f.end - timedelta(days=1))),
                    filter_pick(
                        s("person", lang),
                        _PERSON,
                        [{"label": p, "value": p} for p in people],
                        s("all", lang),
                    ),
                    filter_pick(s("station", lang), _STATION, stations, s("all", lang)),
                ],
            ),
            html.Div(id=_BODY, className="order-body labor-body"),
            html.P(s("note", lang), className="orders-note"),
        ],
    )


# -- callback ------------------------------------------------------------------------------------


def _update(lang: Any, start: Any, end: Any, person: Any, station: Any, _tick: Any) -> Any:
    ctx = context.current()
    lang = ctx.lang(lang)
    tz = ctx.plant.tz
    f = parse_filters(ctx.plant, start, end, person, station)
    t0 = datetime.combine(f.start, time(), tz)
    t1 = datetime.combine(f.end, time(), tz)
    try:
        data = lq.board(ctx.db, f, t0, t1)
    except psycopg.Error as err:
        log.warning("labor: cannot read: %s", type(err).__name__)
        return html.Div(s("db_error", lang), className="orders-empty")
    return render(data, ctx.plant, lang)


# -- rendering (pure) ----------------------------------------------------------------------------


def _h(hours: float) -> str:
    return f"{hours:.2f}"


def _when(ts: datetime, tz: ZoneInfo) -> str:
    return ts.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def _card(title: str, body: Any) -> html.Section:
    return html.Section(className="order-card", children=[html.H2(title), body])


def _tile(label: str, value: str) -> html.Div:
    return html.Div(
        className="lab-kpi",
        children=[
            html.Div(value, className="lab-kpi-value"),
            html.Div(label, className="lab-kpi-label"),
        ],
    )


# Rows per table on the page: a long range is a list nobody reads on a screen, so it shows its
# first rows and says how many there are and how to narrow it. (The cap came first to stop a
# 449-row page blocking the browser for 41-44 s; text_table is now cheap at any length,
# docs/performance.md "Boards at scale".)
SHOWN: Final = 50


_TABLE = "orders-table labor-table"


def _table(head: list[str], rows: list[list[str]], lang: str) -> Any:
    """The first SHOWN rows, and a note saying how many there are when that is not all."""
    table = text_table(head, rows[:SHOWN], _TABLE, s("empty", lang))
    if len(rows) <= SHOWN:
        return table
    note = html.P(
        s("more", lang, n=SHOWN, total=f"{len(rows):,}"), className="orders-note lab-more"
    )
    return html.Div([table, note])


def render(data: lq.Board, plant: PlantConfig, lang: str) -> list[Any]:
    tz = plant.tz
    table = _TABLE
    now = text_table(
        [s("station", lang), s("person", lang), s("since", lang), s("work_order", lang),
         s("operation", lang), s("share", lang), s("hours", lang)],
        [
            [r.station, r.person, _when(r.since, tz), r.work_order or s("no_wo", lang),
             r.operation or "", f"1/{round(1 / r.share)}" if r.share < 1 else "1",
             _h(r.hours_signed_in)]
            for r in data.now
        ],
        table,
        s("nobody", lang),
    )  # fmt: skip
    by_shift = _table(
        [s("shift_date", lang), s("shift", lang), s("person", lang), s("hours", lang),
         s("stations", lang), s("work_orders", lang)],
        [
            [r.shift_date.isoformat(), plant.shift_label(r.shift_name, lang) or s("no_shift", lang), r.person,
             _h(r.hours) + (s("open", lang) if r.is_open else ""), ", ".join(r.stations),
             str(r.work_orders)]
            for r in data.by_shift
        ],
        lang,
    )  # fmt: skip
    by_wo = _table(
        [s("work_order", lang), s("operation", lang), s("order", lang), s("product", lang),
         s("hours", lang), s("people", lang), s("stations", lang)],
        [
            [r.work_order or s("no_wo", lang), r.operation or "", r.order_no or "",
             r.product or "", _h(r.hours) + (s("open", lang) if r.is_open else ""),
             ", ".join(r.people), ", ".join(r.stations)]
            for r in data.by_work_order
        ],
        lang,
    )  # fmt: skip
    issues = text_table(
        [s("kind", lang), s("count", lang), s("last", lang)],
        [[s(r.kind, lang), str(r.n), _when(r.last_ts, tz)] for r in data.issues],
        table,
        s("empty", lang),
    )
    forgotten = sum(r.n for r in data.issues if r.kind == "expired")
    return [
        html.Div(
            className="lab-kpis",
            children=[
                _tile(s("total", lang), _h(data.total_hours)),
                _tile(s("present", lang), str(len({r.person for r in data.now}))),
                _tile(s("forgotten", lang), str(forgotten)),
            ],
        ),
        _card(s("now", lang), now),
        _card(s("by_shift", lang), by_shift),
        _card(s("by_wo", lang), by_wo),
        _card(s("issues", lang), issues),
    ]


# -- the andon tile's people line --------------------------------------------------------------


def _walk(component: Any) -> Any:
    if isinstance(component, list | tuple):
        for item in component:
            yield from _walk(item)
        return
    yield component
    children = getattr(component, "children", None)
    if isinstance(children, list | tuple):
        for child in children:
            yield from _walk(child)
    elif children is not None and not isinstance(children, str | int | float):
        yield from _walk(children)


def add_people_to_tiles(board: Any, people: dict[str, list[str]], lang: str) -> Any:
    """Append who is signed in to each tile (found by its data-machine) that has anyone."""
    if not people:
        return board
    for comp in _walk(board):
        machine = getattr(comp, "data-machine", None)
        names = people.get(machine) if isinstance(machine, str) else None
        if not names:
            continue
        text = "👤 " + ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
        line = html.Div(
            text, className="tile-people", title=s("now", lang) + ": " + ", ".join(names)
        )
        kids = comp.children if isinstance(comp.children, list) else [comp.children]
        comp.children = [*kids, line]
    return board


def mark_andon(db: Database, board: Any, lang: str) -> Any:
    """The andon's hook: each tile shows who is at the station (unchanged on a DB error)."""
    try:
        people = lq.people_by_station(db)
    except psycopg.Error as err:  # e.g. migration 031 not applied: the tiles matter more
        log.debug("andon: cannot read v_station_people: %s", err)
        return board
    return add_people_to_tiles(board, people, lang)
