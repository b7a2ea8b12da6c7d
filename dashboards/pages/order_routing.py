"""An order's work orders operation by operation (docs/routings.md): what went in, came out
good and was scrapped at each step of the routing, and the parts waiting between steps (WIP).

Reached from the order page (dashboards/pages/orders.py: `link`), at /routing?order=...; a
work order without a routing has no rows here (its progress is on the order page as ever).
Reads `v_work_order_operations` and `v_wip` (dashboards/routing_queries.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Any, Final
from urllib.parse import quote

import dash
import psycopg
from dash import Input, Output, State, dcc, html

from dashboards import auth, context
from dashboards.nav import page_header
from dashboards.routing_queries import OperationRow, WipRow, order_operations
from mesflow.plant import PlantConfig

log = logging.getLogger(__name__)

PATH: Final = "/routing"
ROLE: Final = "manager"  # as the order page it hangs from
REFRESH_MS: Final = 10_000
MAX_KEY: Final = 128  # an order number longer than the contract allows is no order

_P = "rt-"
_TICK = f"{_P}tick"
_KEY = f"{_P}key"
_LANG = f"{_P}lang"
_BODY = f"{_P}body"

STRINGS: Final[dict[str, dict[str, str]]] = {
    "title": {"zh": "工序与在制品", "en": "Operations and WIP"},
    "link": {"zh": "工序与在制品（投入、良品、报废、在制）", "en": "Operations and WIP (in, good, scrap, waiting)"},
    "back": {"zh": "返回订单", "en": "Back to the order"},
    "work_order": {"zh": "工单", "en": "Work order"},
    "step": {"zh": "工序", "en": "Step"},
    "name": {"zh": "名称", "en": "Name"},
    "machines": {"zh": "设备", "en": "Machines"},
    "ideal": {"zh": "理想节拍 (秒)", "en": "Ideal cycle (s)"},
    "qty_in": {"zh": "投入", "en": "In"},
    "good": {"zh": "良品", "en": "Good"},
    "scrap": {"zh": "报废", "en": "Scrap"},
    "wip": {"zh": "待加工 (在制)", "en": "Waiting (WIP)"},
    "yield": {"zh": "良率", "en": "Yield"},
    "status": {"zh": "状态", "en": "Status"},
    "first": {"zh": "开始", "en": "First"},
    "last": {"zh": "最近", "en": "Latest"},
    "not_started": {"zh": "未开始", "en": "not started"},
    "running": {"zh": "进行中", "en": "running"},
    "done": {"zh": "已完成", "en": "done"},
    "last_op": {"zh": "（末道工序：订单进度按此计）", "en": " (last step: the order's progress)"},
    "wip_title": {"zh": "工序间在制品（按产品）", "en": "Work in progress between steps, by product"},
    "from": {"zh": "从工序", "en": "From step"},
    "to": {"zh": "到工序", "en": "To step"},
    "product": {"zh": "产品", "en": "Product"},
    "work_orders": {"zh": "工单数", "en": "Work orders"},
    "none": {"zh": "此订单没有按工艺路线生产的工单", "en": "No work order of this order follows a routing"},
    "no_order": {"zh": "未指定订单", "en": "No order given"},
    "db_error": {"zh": "数据库不可用，稍后自动重试", "en": "Database unreachable; retrying"},
}  # fmt: skip


def s(key: str, lang: str) -> str:
    return STRINGS[key].get(lang, STRINGS[key]["en"])


def link(order_no: str | None, lang: str) -> Any:
    """The order page's link here (one line in dashboards/pages/orders.py)."""
    return html.A(
        s("link", lang),
        href=f"{PATH}?order={quote(order_no or '', safe='')}&lang={lang}",
        className="orders-back order-routing-link",
    )


def register(app: dash.Dash) -> None:
    dash.register_page(
        __name__,
        path=PATH,
        name="Routing",
        nav=False,
        layout=layout,
        title="Operations · mesflow",
        min_role=ROLE,
    )
    auth.callback(
        app,
        ROLE,
        Output(_BODY, "children"),
        Input(_TICK, "n_intervals"),
        State(_KEY, "data"),
        State(_LANG, "data"),
    )(_refresh)


def layout(order: str | None = None, lang: str | None = None, **_q: str) -> html.Div:
    """No database reads: Dash also calls layouts to validate callbacks."""
    ctx = context.current()
    lang = ctx.lang(lang)
    key = _key(order)
    back = f"/orders/{quote(key, safe='')}?lang={lang}" if key else f"/orders?lang={lang}"
    return html.Div(
        className=f"orders order-page lang-{lang}",
        lang="zh-CN" if lang == "zh" else "en",
        children=[
            dcc.Store(id=_KEY, data=key),
            dcc.Store(id=_LANG, data=lang),
            dcc.Interval(id=_TICK, interval=REFRESH_MS),
            page_header(
                lang,
                f"{s('title', lang)} {key or ''}",
                PATH,
                ctx.plant.plant.name.get(lang),
                prefix="orders",
                title_class="board-name",
            ),
            html.A(s("back", lang), href=back, className="orders-back"),
            html.Div(id=_BODY, className="order-body"),
        ],
    )


def _key(value: Any) -> str | None:
    """An order number from the query string, or None: hostile input reads as no order."""
    if not isinstance(value, str) or not value or len(value) > MAX_KEY:
        return None
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return None
    return value


def _refresh(_n: int | None, order_no: Any, lang: Any) -> Any:
    ctx = context.current()
    lang = ctx.lang(lang if isinstance(lang, str) else None)
    key = _key(order_no)
    if key is None:
        return html.Div(s("no_order", lang), className="orders-empty")
    try:
        ops, wip = order_operations(ctx.db, key)
    except psycopg.Error as err:
        log.warning("routing: cannot read order %s: %s", key, err)
        return html.Div(s("db_error", lang), className="orders-banner")
    return render(ops, wip, ctx.plant, ctx.plant.tz, lang)


# -- rendering (pure: tested without a browser) -----------------------------------------------


def op_name(plant: PlantConfig, product: str | None, op: str, stored: str | None, lang: str) -> str:
    """The step's name in `lang` when it is the plant file's step (its routing came from
    there, which stores the English name), else the name its work order's routing gave."""
    routing = plant.routings_by_product.get(product or "")
    if routing is not None:
        for step in routing.operations:
            if step.op == op and step.name is not None and step.name.en == stored:
                return str(step.name.get(lang))
    return stored or "—"


def _time(ts: datetime | None, tz: tzinfo) -> str:
    return "—" if ts is None else ts.astimezone(tz).strftime("%m-%d %H:%M")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], css: str) -> html.Table:
    return html.Table(
        className=f"orders-table {css}",
        children=[
            html.Thead(html.Tr([html.Th(h) for h in headers])),
            html.Tbody([html.Tr([html.Td(c) for c in row]) for row in rows]),
        ],
    )


def render(
    ops: Sequence[OperationRow],
    wip: Sequence[WipRow],
    plant: PlantConfig,
    tz: tzinfo,
    lang: str,
) -> list[Any]:
    if not ops:
        return [html.Div(s("none", lang), className="orders-empty")]
    heads = [
        s(k, lang)
        for k in (
            "step",
            "name",
            "machines",
            "ideal",
            "qty_in",
            "good",
            "scrap",
            "wip",
            "yield",
            "status",
            "first",
            "last",
        )
    ]
    out: list[Any] = []
    by_wo: dict[str, list[OperationRow]] = {}
    for r in ops:
        by_wo.setdefault(r.work_order, []).append(r)
    for wo, rows in by_wo.items():
        first = rows[0]
        qty = f" · {first.product or '—'} · {first.wo_qty if first.wo_qty is not None else '—'}"
        body = [
            [
                f"{r.position}. {r.op}",
                op_name(plant, r.product, r.op, r.name, lang)
                + (s("last_op", lang) if r.is_last else ""),
                ", ".join(r.machines) or "—",
                "—" if r.ideal_cycle_seconds is None else f"{r.ideal_cycle_seconds:g}",
                r.qty_in,
                r.good,
                r.scrap,
                r.wip_before,
                "—" if r.yield_ is None else f"{r.yield_:.1%}",
                s(r.status, lang) if r.status in STRINGS else r.status,
                _time(r.first_at, tz),
                _time(r.last_at, tz),
            ]
            for r in rows
        ]
        out.append(
            html.Section(
                className="order-card routing-card",
                children=[
                    html.H2(f"{s('work_order', lang)} {wo}{qty}"),
                    _table(heads, body, "routing-table"),
                ],
            )
        )
    if wip:
        heads = [s(k, lang) for k in ("product", "from", "to", "wip", "work_orders")]
        body = [[w.product or "—", w.from_op, w.to_op, w.wip, w.work_orders] for w in wip]
        out.append(
            html.Section(
                className="order-card routing-wip",
                children=[html.H2(s("wip_title", lang)), _table(heads, body, "wip-table")],
            )
        )
    return out
