"""Dispatch lists (/dispatch, viewer): per machine, the released work orders in the order they
should run, with projected start and finish in plant time, slack against the due date, at-risk
and priority badges, and the orders a higher-priority one pushes past their due date
(docs/dispatch.md). `?line=IM` or `?machine=IM-01` narrows it; CSV export of what shows.

Computed on every read (dashboards/dispatch_queries.py): the projections start from the wall
clock, so they move with it. Role viewer, as the order board: supervisors and the floor must
see what runs next.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from datetime import datetime, tzinfo
from typing import Any, Final

import dash
import psycopg
from dash import Input, Output, State, dcc, html

from dashboards import auth, context
from dashboards import dispatch_queries as dq
from dashboards.nav import page_header
from dashboards.widgets import page_text
from mesflow.dispatch import Entry
from mesflow.plant import PlantConfig
from streams.hour_clock import from_us

log = logging.getLogger(__name__)

PATH: Final = "/dispatch"
ROLE: Final = "viewer"
REFRESH_MS: Final = 30_000

_P = "dispatch-"
_LANG = f"{_P}lang"
_LINE = f"{_P}line"
_MACHINE = f"{_P}machine"
_BODY = f"{_P}body"
_TICK = f"{_P}tick"
_CSV = f"{_P}csv"
_DOWNLOAD = f"{_P}download"

STRINGS: Final[dict[str, dict[str, str]]] = {
    "title": {"zh": "派工队列", "en": "Dispatch lists"},
    "hint": {
        "zh": "每台设备的已下达工单按执行顺序：风险订单优先，然后按客户优先级（1 最急）和交期。"
              "开始/完成时间按实际产能和班次日历（班次、休息、计划停机）推算。",
        "en": "Each machine's released work orders in run order: at risk first, then customer "
              "priority (1 = most urgent), then due date. Start and finish are projected from the "
              "machine's real rate and its calendar (shifts, breaks, planned stops).",
    },
    "line": {"zh": "产线", "en": "Line"},
    "machine": {"zh": "设备", "en": "Machine"},
    "all": {"zh": "全部", "en": "All"},
    "csv": {"zh": "导出 CSV", "en": "Export CSV"},
    "db_error": {"zh": "数据库不可用", "en": "Database unreachable"},
    "empty": {"zh": "无已下达工单", "en": "No released work orders"},
    "pos": {"zh": "序", "en": "#"},
    "work_order": {"zh": "工单", "en": "Work order"},
    "order_no": {"zh": "订单", "en": "Order"},
    "customer": {"zh": "客户", "en": "Customer"},
    "product": {"zh": "产品", "en": "Product"},
    "remaining": {"zh": "剩余", "en": "Left"},
    "rate": {"zh": "产能/时", "en": "Rate/h"},
    "start": {"zh": "预计开始", "en": "Start"},
    "finish": {"zh": "预计完成", "en": "Finish"},
    "due": {"zh": "交期", "en": "Due"},
    "slack": {"zh": "余量", "en": "Slack"},
    "flags": {"zh": "标记", "en": "Flags"},
    "at_risk": {"zh": "风险", "en": "At risk"},
    "late": {"zh": "将延误", "en": "Will be late"},
    "prio": {"zh": "P{p}", "en": "P{p}"},
    "measured": {"zh": "实测", "en": "measured"},
    "ideal": {"zh": "理论", "en": "ideal"},
    "beyond": {"zh": "{d} 天内无法完成", "en": "not within {d} days"},
    "pushes": {"zh": "使 {orders} 超过交期", "en": "pushes {orders} past due"},
    "pushed": {"zh": "被 {by} 挤过交期", "en": "pushed past due by {by}"},
    "as_of": {"zh": "推算起点 {t}", "en": "Projected from {t}"},
    "more": {
        "zh": "只显示 {total} 台设备中的前 {n} 台：请选择产线或设备（导出 CSV 含全部）",
        "en": "The first {n} of {total} machines: pick a line or a machine (the CSV has them all)",
    },
    "hours": {"zh": "{h:+.1f} 小时", "en": "{h:+.1f} h"},
}  # fmt: skip


def s(key: str, lang: str, **kw: Any) -> str:
    return page_text(STRINGS, key, lang, **kw)


def register(app: dash.Dash) -> None:
    dash.register_page(
        __name__,
        path=PATH,
        name="Dispatch",
        order=42,
        nav=True,
        nav_label={"zh": "派工", "en": "Dispatch"},
        layout=layout,
        title="Dispatch · mesflow",
        min_role=ROLE,
    )
    auth.callback(
        app,
        ROLE,
        Output(_BODY, "children"),
        Input(_TICK, "n_intervals"),
        Input(_LINE, "value"),
        Input(_MACHINE, "value"),
        State(_LANG, "data"),
    )(_refresh)
    auth.callback(
        app,
        ROLE,
        Output(_DOWNLOAD, "data"),
        Input(_CSV, "n_clicks"),
        State(_LINE, "value"),
        State(_MACHINE, "value"),
        prevent_initial_call=True,
    )(_export)


def layout(
    lang: str | None = None, line: str | None = None, machine: str | None = None, **_q: str
) -> html.Div:
    ctx = context.current()
    lang = ctx.lang(lang)
    plant = ctx.plant
    lines = [ln.id for ln in plant.lines]
    return html.Div(
        className=f"orders dispatch-page lang-{lang}",
        lang="zh-CN" if lang == "zh" else "en",
        children=[
            dcc.Store(id=_LANG, data=lang),
            dcc.Interval(id=_TICK, interval=REFRESH_MS),
            page_header(
                lang,
                s("title", lang),
                PATH,
                plant.plant.name.get(lang),
                prefix="orders",
                title_class="board-name",
            ),
            html.P(s("hint", lang), className="orders-note dispatch-hint"),
            html.Div(
                className="orders-filters",
                children=[
                    html.Label(s("line", lang), className="orders-label"),
                    dcc.Dropdown(
                        id=_LINE,
                        options=[
                            {"label": f"{ln.id} {ln.name.get(lang)}", "value": ln.id}
                            for ln in plant.lines
                        ],
                        value=line if line in lines else None,
                        placeholder=s("all", lang),
                        className="orders-dropdown",
                    ),
                    html.Label(s("machine", lang), className="orders-label"),
                    dcc.Dropdown(
                        id=_MACHINE,
                        options=[{"label": m, "value": m} for m in plant.machines],
                        value=machine if machine in plant.machines else None,
                        placeholder=s("all", lang),
                        className="orders-dropdown",
                    ),
                    html.Button(s("csv", lang), id=_CSV, className="orders-csv"),
                    dcc.Download(id=_DOWNLOAD),
                ],
            ),
            html.Div(id=_BODY, className="dispatch-body"),
        ],
    )


# -- reading ---------------------------------------------------------------------------------


def selected(plant: PlantConfig, line: Any, machine: Any) -> list[str]:
    if isinstance(machine, str) and machine in plant.machines:
        return [machine]
    if isinstance(line, str):
        return [m for m, ln in plant.line_of_machine.items() if ln.id == line]
    return list(plant.machines)


def read_lists(
    plant: PlantConfig, db: Any, machines: list[str], now: int | None = None
) -> tuple[int, list[dq.MachineList]]:
    now = time.time_ns() // 1000 if now is None else now
    one = machines[0] if len(machines) == 1 else None
    inputs = db.run(lambda conn: dq.read_inputs(conn, plant, now, one))
    return now, dq.machine_lists(plant, inputs, now, machines)


def pushed_by_map(ml: dq.MachineList) -> dict[str, list[str]]:
    """work order -> the orders ahead of it that push it past its due date."""
    out: dict[str, list[str]] = {}
    for by, slips in ml.pushes.items():
        by_order = next(e.job.order_no for e in ml.entries if e.job.work_order == by)
        for sl in slips:
            out.setdefault(sl.job.work_order, []).append(by_order)
    return out


# -- rendering -------------------------------------------------------------------------------


def fmt(t: int | None, tz: tzinfo) -> str:
    return "—" if t is None else from_us(t).astimezone(tz).strftime("%m-%d %H:%M")


def iso(t: int | None, tz: tzinfo) -> str:
    return "" if t is None else from_us(t).astimezone(tz).isoformat(timespec="minutes")


def _slack_h(e: Entry) -> float | None:
    return None if e.slip_us is None else -e.slip_us / 3_600_000_000


def render(plant: PlantConfig, now: int, lists: list[dq.MachineList], lang: str) -> list[Any]:
    tz = plant.tz
    out: list[Any] = [html.Div(s("as_of", lang, t=fmt(now, tz)), className="dispatch-asof")]
    for ml in lists:
        m = plant.machines[ml.machine]
        pushed = pushed_by_map(ml)
        head = html.Tr(
            [
                html.Th(s(k, lang))
                for k in ("pos", "work_order", "order_no", "customer", "product", "remaining",
                          "rate", "start", "finish", "due", "slack", "flags")
            ]
        )  # fmt: skip
        rows: list[Any] = []
        for e in ml.entries:
            j = e.job
            slack = _slack_h(e)
            badges: list[Any] = [html.Span(s("prio", lang, p=j.priority), className="badge prio")]
            if j.at_risk:
                badges.append(html.Span(s("at_risk", lang), className="badge risk"))
            if e.late:
                badges.append(html.Span(s("late", lang), className="badge late"))
            if j.work_order in ml.pushes:
                orders = ", ".join(sl.job.order_no for sl in ml.pushes[j.work_order])
                badges.append(html.Span(s("pushes", lang, orders=orders), className="badge pushes"))
            if j.work_order in pushed:
                badges.append(
                    html.Span(
                        s("pushed", lang, by=", ".join(pushed[j.work_order])),
                        className="badge pushed",
                    )
                )
            css = "dispatch-row"
            if e.position == 1:
                css += " next"
            if j.at_risk:
                css += " at-risk"
            if j.work_order in pushed:
                css += " pushed"
            rows.append(
                html.Tr(
                    className=css,
                    children=[
                        html.Td(str(e.position), className="num"),
                        html.Td(j.work_order),
                        html.Td(j.order_no),
                        html.Td(j.customer or ""),
                        html.Td(j.product),
                        html.Td(str(j.remaining), className="num"),
                        html.Td(
                            f"{e.rate.per_hour:.0f} ({s(e.rate.source, lang)})", className="num"
                        ),
                        html.Td(fmt(e.start, tz), className="num"),
                        html.Td(
                            fmt(e.finish, tz)
                            if e.finish is not None
                            else s("beyond", lang, d=dq.HORIZON_DAYS),
                            className="num",
                        ),
                        html.Td(fmt(j.due, tz), className="num"),
                        html.Td(
                            "—" if slack is None else s("hours", lang, h=slack),
                            className="num slack late" if e.late else "num slack",
                        ),
                        html.Td(badges, className="flags"),
                    ],
                )
            )
        out.append(
            html.Section(
                className="dispatch-machine",
                children=[
                    html.H2([html.Span(ml.machine, className="mid"), " ", m.name.get(lang)]),
                    html.Table([html.Thead(head), html.Tbody(rows)], className="orders-table")
                    if rows
                    else html.Div(s("empty", lang), className="orders-empty"),
                ],
            )
        )
    return out


CSV_COLUMNS: Final = (
    "machine", "position", "work_order", "order_no", "customer", "product", "priority",
    "at_risk", "remaining", "rate_per_h", "rate_source", "start", "finish", "due",
    "slack_h", "late", "pushes", "pushed_by",
)  # fmt: skip


def csv_text(plant: PlantConfig, lists: list[dq.MachineList]) -> str:
    tz = plant.tz
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for ml in lists:
        pushed = pushed_by_map(ml)
        for e in ml.entries:
            j = e.job
            slack = _slack_h(e)
            w.writerow(
                [
                    ml.machine, e.position, j.work_order, j.order_no, j.customer or "", j.product,
                    j.priority, j.at_risk, j.remaining, f"{e.rate.per_hour:.2f}", e.rate.source,
                    iso(e.start, tz), iso(e.finish, tz), iso(j.due, tz),
                    "" if slack is None else f"{slack:.2f}", e.late,
                    " ".join(sl.job.order_no for sl in ml.pushes.get(j.work_order, [])),
                    " ".join(pushed.get(j.work_order, [])),
                ]
            )  # fmt: skip
    return buf.getvalue()


# -- callbacks -------------------------------------------------------------------------------


# Machines' lists on the page at once: each row is a dozen components, and the browser's Dash
# renderer takes time that grows faster than them (docs/performance.md "Boards at scale"). A
# larger plant picks a line or a machine; the CSV has every list.
MACHINES_SHOWN: Final = 20


def _refresh(_n: Any, line: Any, machine: Any, lang: Any) -> Any:
    ctx = context.current()
    lang = ctx.lang(lang)
    picked = selected(ctx.plant, line, machine)
    try:
        now, lists = read_lists(ctx.plant, ctx.db, picked[:MACHINES_SHOWN])
    except psycopg.Error as err:
        log.warning("dispatch: cannot read the lists: %s", type(err).__name__)
        return html.Div(s("db_error", lang), className="orders-empty")
    body = render(ctx.plant, now, lists, lang)
    if len(picked) > MACHINES_SHOWN:
        note = s("more", lang, n=MACHINES_SHOWN, total=len(picked))
        body.insert(1, html.P(note, className="orders-note dispatch-more"))
    return body


def _export(_n: Any, line: Any, machine: Any) -> Any:
    ctx = context.current()
    try:
        _now, lists = read_lists(ctx.plant, ctx.db, selected(ctx.plant, line, machine))
    except psycopg.Error:
        return dash.no_update
    stamp = datetime.now(ctx.plant.tz).strftime("%Y%m%d-%H%M")
    return dcc.send_string(csv_text(ctx.plant, lists), f"dispatch-{stamp}.csv")
