"""Promise dates for sales (/promise, manager): "if we take N of product P with priority K now,
when would it be done, and what would slip?" (docs/dispatch.md). The same answer as the CRM
API's POST /api/v1/promise (dashboards/dispatch_queries.py); nothing is stored or changed.

Role: manager (sales and planning), as the order page: the answer names customers' orders.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Final

import dash
import psycopg
from dash import Input, Output, State, dcc, html

from dashboards import auth, context
from dashboards import dispatch_queries as dq
from dashboards.nav import page_header
from dashboards.pages.dispatch import fmt
from dashboards.widgets import page_text
from mesflow.plant import PlantConfig

log = logging.getLogger(__name__)

PATH: Final = "/promise"
ROLE: Final = "manager"
MAX_QTY: Final = 1_000_000_000
MAX_PRIORITY: Final = 1_000_000

_P = "promise-"
_LANG = f"{_P}lang"
_PRODUCT = f"{_P}product"
_QTY = f"{_P}qty"
_PRIORITY = f"{_P}priority"
_MACHINE = f"{_P}machine"
_GO = f"{_P}go"
_BODY = f"{_P}body"

STRINGS: Final[dict[str, dict[str, str]]] = {
    "title": {"zh": "交期承诺", "en": "Promise dates"},
    "hint": {
        "zh": "如果现在接下这笔订单，什么时候能完成？哪些订单会因此超过交期？按派工队列、实际产能和班次日历推算，不改变任何数据。",
        "en": "If we take this order now, when would it be done, and what would slip? Projected "
              "from the dispatch lists, real rates and calendars; nothing is changed.",
    },
    "product": {"zh": "产品", "en": "Product"},
    "qty": {"zh": "数量", "en": "Quantity"},
    "priority": {"zh": "优先级（1 最急）", "en": "Priority (1 = most urgent)"},
    "machine": {"zh": "设备（可选）", "en": "Machine (optional)"},
    "any": {"zh": "任意可生产设备", "en": "Any machine that can make it"},
    "ask": {"zh": "推算", "en": "Ask"},
    "bad_input": {
        "zh": "请选择产品，并填写数量（1–10亿）和优先级（≥1 的整数）。",
        "en": "Choose a product and give a quantity (1 to 1,000,000,000) and a priority "
              "(a whole number from 1).",
    },
    "no_machine": {"zh": "没有设备能生产 {p}", "en": "No machine can make {p}"},
    "db_error": {"zh": "数据库不可用", "en": "Database unreachable"},
    "answer": {
        "zh": "{qty} 件 {p} 预计 {finish} 在 {m} 完成（{start} 开始，产能 {rate:.0f} 件/时，{src}）。",
        "en": "{qty} × {p} would be done by {finish} on {m} (starting {start}, at {rate:.0f} "
              "parts/h, {src}).",
    },
    "beyond": {
        "zh": "{qty} 件 {p} 在 {d} 天内无法完成。",
        "en": "{qty} × {p} cannot be done within {d} days.",
    },
    "measured": {"zh": "近期实测", "en": "measured recently"},
    "ideal": {"zh": "按理论节拍", "en": "at the ideal cycle time"},
    "no_slips": {"zh": "没有其他订单会因此超过交期。", "en": "No other order would finish after its due date."},
    "slips": {"zh": "以下订单将超过交期：", "en": "These orders would finish after their due date:"},
    "order_no": {"zh": "订单", "en": "Order"},
    "work_order": {"zh": "工单", "en": "Work order"},
    "due": {"zh": "交期", "en": "Due"},
    "before": {"zh": "原预计完成", "en": "Finish now"},
    "after": {"zh": "接单后完成", "en": "Finish with it"},
}  # fmt: skip


def s(key: str, lang: str, **kw: Any) -> str:
    return page_text(STRINGS, key, lang, **kw)


def register(app: dash.Dash) -> None:
    dash.register_page(
        __name__,
        path=PATH,
        name="Promise",
        order=43,
        nav=True,
        nav_label={"zh": "交期承诺", "en": "Promise"},
        layout=layout,
        title="Promise · mesflow",
        min_role=ROLE,
    )
    auth.callback(
        app,
        ROLE,
        Output(_BODY, "children"),
        Input(_GO, "n_clicks"),
        State(_PRODUCT, "value"),
        State(_QTY, "value"),
        State(_PRIORITY, "value"),
        State(_MACHINE, "value"),
        State(_LANG, "data"),
        prevent_initial_call=True,
    )(_ask)


def layout(lang: str | None = None, **_q: str) -> html.Div:
    ctx = context.current()
    lang = ctx.lang(lang)
    plant = ctx.plant
    return html.Div(
        className=f"orders promise-page lang-{lang}",
        lang="zh-CN" if lang == "zh" else "en",
        children=[
            dcc.Store(id=_LANG, data=lang),
            page_header(
                lang,
                s("title", lang),
                PATH,
                plant.plant.name.get(lang),
                prefix="orders",
                title_class="board-name",
            ),
            html.P(s("hint", lang), className="orders-note"),
            html.Div(
                className="orders-filters promise-form",
                children=[
                    html.Label(s("product", lang), className="orders-label"),
                    dcc.Dropdown(
                        id=_PRODUCT,
                        options=[
                            {"label": f"{p.id} {p.name.get(lang)}", "value": p.id}
                            for p in plant.products
                        ],
                        value=plant.products[0].id if plant.products else None,
                        className="orders-dropdown",
                    ),
                    html.Label(s("qty", lang), className="orders-label"),
                    dcc.Input(id=_QTY, type="number", min=1, max=MAX_QTY, step=1, value=100),
                    html.Label(s("priority", lang), className="orders-label"),
                    dcc.Input(id=_PRIORITY, type="number", min=1, step=1, value=1),
                    html.Label(s("machine", lang), className="orders-label"),
                    dcc.Dropdown(
                        id=_MACHINE,
                        options=[{"label": m, "value": m} for m in plant.machines],
                        placeholder=s("any", lang),
                        className="orders-dropdown",
                    ),
                    html.Button(s("ask", lang), id=_GO, className="orders-csv"),
                ],
            ),
            html.Div(id=_BODY, className="promise-body"),
        ],
    )


def _whole(value: Any, lo: int, hi: int) -> int | None:
    """A whole number in [lo, hi] from a form field (a float 3.0 is 3; NaN, 2.5, text: None)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        return None
    n = int(value)
    return n if lo <= n <= hi else None


def answer_view(
    plant: PlantConfig, db: Any, lang: str, product: Any, qty: Any, priority: Any, machine: Any,
    now: int | None = None,
) -> Any:  # fmt: skip
    products = {p.id for p in plant.products}
    n, prio = _whole(qty, 1, MAX_QTY), _whole(priority, 1, MAX_PRIORITY)
    if product not in products or n is None or prio is None:
        return html.Div(s("bad_input", lang), className="orders-empty promise-error")
    m = machine if isinstance(machine, str) and machine in plant.machines else None
    now = time.time_ns() // 1000 if now is None else now
    inputs = db.run(lambda conn: dq.read_inputs(conn, plant, now))
    got = dq.promise_answer(plant, inputs, now, product, n, prio, m)
    if got is None:
        return html.Div(s("no_machine", lang, p=product), className="orders-empty promise-error")
    tz = plant.tz
    new = got.impact.new
    text = (
        s(
            "answer", lang, qty=n, p=product, finish=fmt(got.finish, tz), m=got.machine,
            start=fmt(got.start, tz), rate=new.rate.per_hour, src=s(new.rate.source, lang),
        )
        if got.finish is not None
        else s("beyond", lang, qty=n, p=product, d=dq.HORIZON_DAYS)
    )  # fmt: skip
    out: list[Any] = [html.P(text, className="promise-answer")]
    if not got.impact.pushed:
        out.append(html.P(s("no_slips", lang), className="promise-ok"))
        return out
    out.append(html.P(s("slips", lang), className="promise-warn"))
    head = html.Tr(
        [html.Th(s(k, lang)) for k in ("order_no", "work_order", "due", "before", "after")]
    )
    rows = [
        html.Tr(
            className="dispatch-row pushed",
            children=[
                html.Td(sl.job.order_no),
                html.Td(sl.job.work_order),
                html.Td(fmt(sl.job.due, tz), className="num"),
                html.Td(fmt(sl.finish_before, tz), className="num"),
                html.Td(fmt(sl.finish_after, tz), className="num slack late"),
            ],
        )
        for sl in got.impact.pushed
    ]
    out.append(html.Table([html.Thead(head), html.Tbody(rows)], className="orders-table"))
    return out


def _ask(_n: Any, product: Any, qty: Any, priority: Any, machine: Any, lang: Any) -> Any:
    ctx = context.current()
    lang = ctx.lang(lang)
    try:
        return answer_view(ctx.plant, ctx.db, lang, product, qty, priority, machine)
    except psycopg.Error as err:
        log.warning("promise: cannot read the lists: %s", type(err).__name__)
        return html.Div(s("db_error", lang), className="orders-empty")
