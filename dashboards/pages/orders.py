"""Order board and an order's page (docs/orders.md, "The order board").

The board (/orders) ranks the CRM orders as `v_order_board` does: at risk first, then
priority, then due date, with a progress bar and the ETA against the due date. An order's
page (/orders/<order_no>) shows its work orders, its change history, the callbacks sent to
the CRM and why it is late (`v_order_losses`: the time lost on its machines since it
started, by stop reason, speed loss and scrap).

Roles: the board is for `viewer` (the floor must see which orders are late; customer,
product and quantity are what a job card shows anyway). An order's page needs `manager`:
its change history names the CRM clients and users who changed the order and its callback
log shows the CRM's delivery errors, which is office audit data, not wall-screen data.

Rendering is a pure function of the rows (`render_board`, `render_order`, `loss_text`),
tested without a browser.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Any, Final
from urllib.parse import quote

import dash
import psycopg
from dash import Input, Output, State, dcc, html

from dashboards import auth, context
from dashboards.i18n import t
from dashboards.nav import page_header
from dashboards.order_queries import (
    BOARD_PAGE,
    BoardRow,
    CallbackRow,
    HistoryRow,
    LossRow,
    OrderDetail,
    WorkOrderRow,
    customers,
    order_board,
    order_board_page,
    order_detail,
)
from dashboards.pages import order_changes, order_customer_link, order_dispatch, order_routing
from mesflow.terms import ORDER_STATUSES

log = logging.getLogger(__name__)

PATH = "/orders"
ORDER_PATH = "/orders/<order_no>"
BOARD_ROLE = "viewer"
ORDER_ROLE = "manager"
REFRESH_MS = 10_000  # orders move in minutes; a 10 s refresh is live enough and cheap
STATUSES = ("open", "on_hold", "cancelled", "closed")

_P = "orders-"
_TICK = f"{_P}tick"
_LANG = f"{_P}lang"
_STATUS = f"{_P}status"
_CUSTOMER = f"{_P}customer"
_TABLE = f"{_P}table"
_BANNER = f"{_P}banner"
_CSV = f"{_P}csv"
_PAGE = f"{_P}page"  # the page shown, from 0 (order_board_page clamps it)
_PREV = f"{_P}prev"
_NEXT = f"{_P}next"
_PAGER = f"{_P}pager"
_DOWNLOAD = f"{_P}download"
_O_TICK = f"{_P}o-tick"
_O_KEY = f"{_P}o-key"
_O_BODY = f"{_P}o-body"
_O_LANG = f"{_P}o-lang"  # an id of its own: Dash validates all layouts together

STRINGS: dict[str, dict[str, str]] = {
    "board": {"zh": "订单看板", "en": "Order board"},
    "order": {"zh": "订单", "en": "Order"},
    "rank": {"zh": "排序", "en": "#"},
    "customer": {"zh": "客户", "en": "Customer"},
    "product": {"zh": "产品", "en": "Product"},
    "qty": {"zh": "数量", "en": "Qty"},
    "progress": {"zh": "进度", "en": "Progress"},
    "eta": {"zh": "预计完成", "en": "ETA"},
    "due": {"zh": "交期", "en": "Due"},
    "slack": {"zh": "余量", "en": "Slack"},
    "priority": {"zh": "优先级", "en": "Prio."},
    "status": {"zh": "状态", "en": "Status"},
    "all": {"zh": "全部", "en": "All"},
    "all_customers": {"zh": "全部客户", "en": "All customers"},
    "csv": {"zh": "导出 CSV", "en": "Export CSV"},
    "at_risk": {"zh": "有延期风险", "en": "At risk"},
    "on_track": {"zh": "正常", "en": "On track"},
    "no_orders": {"zh": "暂无订单", "en": "No orders"},
    "prev": {"zh": "上一页", "en": "Previous"},
    "next": {"zh": "下一页", "en": "Next"},
    "pager": {"zh": "第 {first}–{last} 条，共 {total} 条", "en": "{first}–{last} of {total}"},
    "db_error": {
        "zh": "数据库连接中断，显示的是最后一次读取的数据",
        "en": "Database unreachable: showing the last figures read",
    },
    **ORDER_STATUSES,
    "back": {"zh": "返回订单看板", "en": "Back to the order board"},
    "unknown_order": {"zh": "没有这个订单：{order_no}", "en": "No such order: {order_no}"},
    "why_late": {"zh": "为什么延期", "en": "Why it is late"},
    "why_note": {
        "zh": "自订单开工以来其设备上损失的时间（按停机原因、速度损失和报废）",
        "en": "Time lost on its machines since the order started, by stop reason, "
        "speed loss and scrap",
    },
    "no_losses": {"zh": "没有损失记录", "en": "No losses recorded"},
    "work_orders": {"zh": "工单", "en": "Work orders"},
    "work_order": {"zh": "工单", "en": "Work order"},
    "machine": {"zh": "设备", "en": "Machine"},
    "good": {"zh": "良品", "en": "Good"},
    "scrap": {"zh": "报废", "en": "Scrap"},
    "rate": {"zh": "速率 (件/小时)", "en": "Rate (parts/h)"},
    "started": {"zh": "开工", "en": "Started"},
    "completed": {"zh": "完工", "en": "Completed"},
    "history": {"zh": "变更记录", "en": "Change history"},
    "when": {"zh": "时间", "en": "When"},
    "who": {"zh": "变更人", "en": "Who"},
    "what": {"zh": "变更内容", "en": "What"},
    "version": {"zh": "版本", "en": "Version"},
    "no_history": {"zh": "没有变更记录", "en": "No changes recorded"},
    "no_change": {"zh": "无变化", "en": "no change"},
    # Fields of a work order's history (collectors/crm_api.py WORK_ORDER_FIELDS).
    "order_no": {"zh": "订单", "en": "Order"},
    "routing": {"zh": "工艺路线", "en": "Routing"},
    "callbacks": {"zh": "发送给 CRM 的回调", "en": "Callbacks sent to the CRM"},
    "event": {"zh": "事件", "en": "Event"},
    "attempts": {"zh": "尝试次数", "en": "Attempts"},
    "delivered": {"zh": "送达时间", "en": "Delivered"},
    "error": {"zh": "错误", "en": "Error"},
    "no_callbacks": {"zh": "没有回调", "en": "No callbacks"},
    "pending": {"zh": "待发送", "en": "Pending"},
    "failed": {"zh": "失败", "en": "Failed"},
    # Loss sentences.
    "speed_loss": {"zh": "速度损失", "en": "speed loss"},
    "scrap_loss": {"zh": "报废（{n} 件）", "en": "scrap ({n} parts)"},
    "unassigned": {"zh": "未填原因", "en": "reason missing"},
    "no_data": {"zh": "无数据", "en": "no data"},
    "on": {"zh": "{machine} {what} {time}", "en": "{time} {what} on {machine}"},
    "hours": {"zh": "{h:.1f} 小时", "en": "{h:.1f} h"},
    "minutes": {"zh": "{m:.0f} 分钟", "en": "{m:.0f} min"},
    "seconds": {"zh": "{sec:.0f} 秒", "en": "{sec:.0f} s"},
}


def s(key: str, lang: str, **fields: Any) -> str:
    entry = STRINGS.get(key)
    text = t(key, lang) if entry is None else entry.get(lang, entry["en"])
    return text.format(**fields) if fields else text


def register(app: dash.Dash) -> None:
    dash.register_page(
        __name__,
        path=PATH,
        name="Orders",
        order=20,
        nav=True,
        nav_label={"zh": "订单看板", "en": "Orders"},
        layout=board_layout,
        title="Orders · mesflow",
        min_role=BOARD_ROLE,
    )
    dash.register_page(
        f"{__name__}.order",
        path_template=ORDER_PATH,
        name="Order",
        nav=False,
        layout=order_layout,
        title="Order · mesflow",
        min_role=ORDER_ROLE,
    )
    auth.callback(
        app,
        BOARD_ROLE,
        Output(_TABLE, "children"),
        Output(_CUSTOMER, "options"),
        Output(_BANNER, "children"),
        Output(_PAGE, "data"),
        Output(_PAGER, "children"),
        Input(_TICK, "n_intervals"),
        Input(_STATUS, "value"),
        Input(_CUSTOMER, "value"),
        Input(_PREV, "n_clicks"),
        Input(_NEXT, "n_clicks"),
        State(_LANG, "data"),
        State(_PAGE, "data"),
    )(_refresh_board)
    auth.callback(
        app,
        BOARD_ROLE,
        Output(_DOWNLOAD, "data"),
        Input(_CSV, "n_clicks"),
        State(_STATUS, "value"),
        State(_CUSTOMER, "value"),
        prevent_initial_call=True,
    )(_export_csv)
    auth.callback(
        app,
        ORDER_ROLE,
        Output(_O_BODY, "children"),
        Input(_O_TICK, "n_intervals"),
        State(_O_KEY, "data"),
        State(_O_LANG, "data"),
    )(_refresh_order)
    order_customer_link.register(app)
    order_changes.register(app)  # change control (CHANGE)
    order_routing.register(app)  # operations and WIP of routed work orders (ROUTING)


# -- layouts (no database reads: Dash also calls them to validate callbacks) -----------------


def _header(lang: str, title: str, current_path: str) -> html.Header:
    plant = context.current().plant
    return page_header(
        lang,
        title,
        current_path,
        plant.plant.name.get(lang),
        prefix="orders",
        title_class="board-name",
    )


def board_layout(lang: str | None = None, **_query: str) -> html.Div:
    lang = context.current().lang(lang)
    return html.Div(
        className=f"orders lang-{lang}",
        lang="zh-CN" if lang == "zh" else "en",
        children=[
            dcc.Store(id=_LANG, data=lang),
            dcc.Interval(id=_TICK, interval=REFRESH_MS),
            _header(lang, s("board", lang), PATH),
            html.Div(
                className="orders-filters",
                children=[
                    html.Label(s("status", lang), className="orders-label"),
                    dcc.Dropdown(
                        id=_STATUS,
                        options=[{"label": s(x, lang), "value": x} for x in STATUSES],
                        value="open",
                        placeholder=s("all", lang),
                        className="orders-dropdown",
                    ),
                    html.Label(s("customer", lang), className="orders-label"),
                    dcc.Dropdown(
                        id=_CUSTOMER,
                        options=[],
                        value=None,
                        placeholder=s("all_customers", lang),
                        className="orders-dropdown",
                    ),
                    html.Button(s("csv", lang), id=_CSV, className="orders-csv"),
                    dcc.Download(id=_DOWNLOAD),
                ],
            ),
            html.Div(id=_BANNER, className="orders-banner"),
            dcc.Store(id=_PAGE, data=0),
            html.Div(id=_TABLE, className="orders-table-wrap"),
            html.Div(
                className="orders-pager",
                children=[
                    html.Button(s("prev", lang), id=_PREV, className="orders-prev"),
                    html.Span(id=_PAGER, className="orders-pager-text"),
                    html.Button(s("next", lang), id=_NEXT, className="orders-next"),
                ],
            ),
        ],
    )


def order_layout(order_no: str | None = None, lang: str | None = None, **_q: str) -> html.Div:
    lang = context.current().lang(lang)
    return html.Div(
        className=f"orders order-page lang-{lang}",
        lang="zh-CN" if lang == "zh" else "en",
        children=[
            dcc.Store(id=_O_LANG, data=lang),
            dcc.Store(id=_O_KEY, data=order_no),
            dcc.Interval(id=_O_TICK, interval=REFRESH_MS),
            _header(lang, f"{s('order', lang)} {order_no or ''}", PATH),
            html.A(s("back", lang), href=f"{PATH}?lang={lang}", className="orders-back"),
            html.Div(id=_O_BODY, className="order-body"),
            order_routing.link(order_no, lang),  # its work orders' operations (ROUTING)
            *order_customer_link.panel(order_no, lang),  # trace link, customer link (TRACE)
            *order_changes.panel(order_no, lang),  # change requests and decisions (CHANGE)
        ],
    )


# -- callbacks -------------------------------------------------------------------------------


def _refresh_board(
    _n: int | None,
    status: str | None,
    customer: str | None,
    _prev: int | None,
    _next: int | None,
    lang: str | None,
    page: Any,
) -> tuple[Any, Any, Any, Any, Any]:
    ctx = context.current()
    lang = ctx.lang(lang)
    want = _page_after(dash.ctx.triggered_id, page)
    try:
        rows, total, shown = order_board_page(
            ctx.db, status=_clean(status, STATUSES), customer=_text(customer), page=want
        )
        names = customers(ctx.db)
    except psycopg.Error as err:
        log.warning("orders: cannot read v_order_board: %s", err)
        no = dash.no_update
        return no, no, html.Div(s("db_error", lang), className="error"), no, no
    options = [{"label": c, "value": c} for c in names]
    pager = pager_text(shown, len(rows), total, lang)
    return render_board(rows, ctx.plant.tz, lang), options, "", shown, pager


def _page_after(trigger: Any, page: Any) -> int:
    """The page to show: the next or previous one on a click, the first on a new filter, the
    same one on a refresh (anything but a small int from the browser: the first)."""
    current = page if isinstance(page, int) and 0 <= page < 1_000_000 else 0
    if trigger in (_STATUS, _CUSTOMER):
        return 0
    if trigger == _PREV:
        return max(0, current - 1)
    if trigger == _NEXT:
        return current + 1
    return current


def pager_text(shown: int, on_page: int, total: int, lang: str) -> str:
    """'201–400 of 18,000': the page's place on the filtered board; empty when it is empty."""
    if not on_page:
        return ""
    first = shown * BOARD_PAGE + 1
    return s("pager", lang, first=f"{first:,}", last=f"{first + on_page - 1:,}", total=f"{total:,}")


def _export_csv(_n: int | None, status: str | None, customer: str | None) -> dict[str, Any]:
    ctx = context.current()
    rows = order_board(ctx.db, status=_clean(status, STATUSES), customer=_text(customer))
    return dcc.send_string(board_csv(rows, ctx.plant.tz), "orders.csv")


def _refresh_order(_n: int | None, order_no: Any, lang: str | None) -> Any:
    ctx = context.current()
    lang = ctx.lang(lang)
    key = _text(order_no)
    if key is None:
        return html.Div(s("unknown_order", lang, order_no=""), className="orders-empty")
    try:
        detail = order_detail(ctx.db, key)
    except psycopg.Error as err:
        log.warning("orders: cannot read order %s: %s", key, err)
        return dash.no_update
    if detail is None:
        return html.Div(s("unknown_order", lang, order_no=key), className="orders-empty")
    return render_order(detail, ctx.plant.tz, lang)


def _text(value: Any) -> str | None:
    """A filter value from the browser: a non-empty string, else nothing (hostile input)."""
    return value if isinstance(value, str) and value else None


def _data(**attrs: str) -> dict[str, Any]:
    """`data-*` attributes for a Dash component (its typed signature cannot name them)."""
    return {f"data-{name}": value for name, value in attrs.items()}


def _clean(value: Any, allowed: Sequence[str]) -> str | None:
    return value if isinstance(value, str) and value in allowed else None


# -- pure rendering ---------------------------------------------------------------------------


def fmt_time(ts: datetime | None, tz: tzinfo) -> str:
    return "—" if ts is None else ts.astimezone(tz).strftime("%m-%d %H:%M")


def fmt_hours(seconds: float, lang: str) -> str:
    """'3.2 h' from an hour up, '18 min' below, '40 s' under a minute (a short loss read
    '0 min' beside its bar)."""
    if abs(seconds) >= 3_600:
        return s("hours", lang, h=seconds / 3_600)
    if abs(seconds) >= 59.5:
        return s("minutes", lang, m=seconds / 60)
    return s("seconds", lang, sec=seconds)


def fmt_slack(slack_s: float | None, lang: str) -> str:
    """Due minus ETA, signed: '+5.0 h' ahead, '-1.3 h' late."""
    if slack_s is None:
        return "—"
    sign = "+" if slack_s >= 0 else "-"
    return sign + fmt_hours(abs(slack_s), lang)


def progress_bar(progress: float | None) -> html.Div:
    pct = 0.0 if progress is None else max(0.0, min(progress, 1.0)) * 100
    return html.Div(
        className="progress",
        children=[
            html.Div(className="progress-fill", style={"width": f"{pct:.0f}%"}),
            html.Span(f"{pct:.0f}%", className="progress-text"),
        ],
    )


def _status_text(row: BoardRow, lang: str) -> str:
    if row.status and row.status != "open":
        return s(row.status, lang)
    return s("at_risk", lang) if row.at_risk else s("on_track", lang)


def render_board(rows: Sequence[BoardRow], tz: tzinfo, lang: str) -> Any:
    if not rows:
        return html.Div(s("no_orders", lang), className="orders-empty")
    cols = (
        "rank",
        "order",
        "priority",
        "customer",
        "product",
        "qty",
        "progress",
        "eta",
        "due",
        "slack",
    )
    head = html.Tr([html.Th(s(c, lang)) for c in cols] + [html.Th(s("status", lang))])
    body = []
    for r in rows:
        body.append(
            html.Tr(
                className="order-row at-risk" if r.at_risk else "order-row",
                **_data(order=r.order_no, rank=str(r.rank)),
                children=[
                    html.Td(str(r.rank), className="num"),
                    html.Td(
                        html.A(r.order_no, href=f"{PATH}/{quote(r.order_no)}?lang={lang}"),
                        className="order-no",
                    ),
                    html.Td("—" if r.priority is None else str(r.priority), className="num"),
                    html.Td(r.customer or "—"),
                    html.Td(r.product or "—"),
                    html.Td(f"{r.good}/{r.qty}" if r.qty else str(r.good), className="num"),
                    html.Td(progress_bar(r.progress), className="progress-cell"),
                    html.Td(fmt_time(r.eta, tz), className="num"),
                    html.Td(fmt_time(r.due, tz), className="num"),
                    html.Td(
                        fmt_slack(r.slack_s, lang),
                        className="num slack late" if (r.slack_s or 0) < 0 else "num slack",
                    ),
                    html.Td(_status_text(r, lang), className="status"),
                ],
            )
        )
    return html.Table([html.Thead(head), html.Tbody(body)], className="orders-table")


CSV_COLUMNS = (
    "rank",
    "order_no",
    "customer",
    "priority",
    "product",
    "qty",
    "good",
    "scrap",
    "progress_pct",
    "eta",
    "due",
    "slack_h",
    "at_risk",
    "status",
)


def board_csv(rows: Sequence[BoardRow], tz: tzinfo) -> str:
    """The board as CSV: plant-local ISO times, rounded figures (no float noise)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow(
            [
                r.rank,
                r.order_no,
                r.customer or "",
                r.priority if r.priority is not None else "",
                r.product or "",
                r.qty if r.qty is not None else "",
                r.good,
                r.scrap,
                "" if r.progress is None else f"{r.progress * 100:.1f}",
                "" if r.eta is None else r.eta.astimezone(tz).isoformat(timespec="minutes"),
                "" if r.due is None else r.due.astimezone(tz).isoformat(timespec="minutes"),
                "" if r.slack_s is None else f"{r.slack_s / 3600:.2f}",
                "true" if r.at_risk else "false",
                r.status or "",
            ]
        )
    return out.getvalue()


def loss_what(row: LossRow, lang: str) -> str:
    if row.kind == "speed":
        return s("speed_loss", lang)
    if row.kind == "scrap":
        return s("scrap_loss", lang, n=row.stops)
    named = row.reason_zh if lang == "zh" else row.reason_en
    if named:
        return named
    if row.reason in ("unassigned", "no_data"):
        return s(row.reason, lang)
    return row.reason or s("unassigned", lang)


def loss_text(row: LossRow, lang: str) -> str:
    """'3.2 h Hydraulic fault on IM-03' / 'IM-03 液压故障 3.2 小时'."""
    return s(
        "on",
        lang,
        time=fmt_hours(row.seconds, lang),
        what=loss_what(row, lang),
        machine=row.machine,
    )


def render_losses(losses: Sequence[LossRow], lang: str) -> Any:
    if not losses:
        return html.Div(s("no_losses", lang), className="orders-empty")
    top = max(r.seconds for r in losses) or 1.0
    return html.Ul(
        className="losses",
        children=[
            html.Li(
                className=f"loss loss-{r.kind}",
                **_data(machine=r.machine, kind=r.kind, seconds=f"{r.seconds:.0f}"),
                children=[
                    html.Div(
                        className="loss-bar", style={"width": f"{r.seconds / top * 100:.0f}%"}
                    ),
                    html.Span(loss_text(r, lang), className="loss-text"),
                ],
            )
            for r in losses
        ],
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], css: str) -> html.Table:
    return html.Table(
        className=f"orders-table {css}",
        children=[
            html.Thead(html.Tr([html.Th(h) for h in headers])),
            html.Tbody([html.Tr([html.Td(c) for c in row]) for row in rows]),
        ],
    )


def _work_orders(wos: Sequence[WorkOrderRow], tz: tzinfo, lang: str) -> Any:
    heads = [
        s(k, lang)
        for k in (
            "work_order",
            "machine",
            "product",
            "qty",
            "good",
            "scrap",
            "progress",
            "rate",
            "started",
            "completed",
            "eta",
        )
    ]
    rows = [
        [
            w.work_order,
            order_dispatch.machine_link(w.machine, lang),  # its dispatch list (issue 12)
            w.product or "—",
            w.qty or "—",
            w.good,
            w.scrap,
            progress_bar(w.progress),
            f"{w.rate_per_h:.0f}",
            fmt_time(w.started_at, tz),
            fmt_time(w.completed_at, tz),
            fmt_time(w.eta, tz),
        ]
        for w in wos
    ]
    return _table(heads, rows, "wo-table")


def change_text(change: dict[str, Any], tz: tzinfo, lang: str) -> str:
    """'Qty: 300 → 400; Due: 12-02 07:00 → 12-03 07:00' (old is empty on creation).

    Times (ISO strings in the CRM's offset) read in the plant's zone like the rest of the
    page; a version that changed no field (the CRM sent the same order again) says so."""
    parts = []
    for field, diff in change.items():
        label = s(field, lang) if field in STRINGS else field
        if isinstance(diff, dict) and ("old" in diff or "new" in diff):
            old, new = (
                _change_value(diff.get("old"), tz, lang, field),
                _change_value(diff.get("new"), tz, lang, field),
            )
            if old is None and new is None:
                continue  # created without it (a work order without a routing): nothing to say
            if old is None:
                parts.append(f"{label}: {new}")
            else:
                parts.append(f"{label}: {old} → {'—' if new is None else new}")
        else:
            parts.append(f"{label}: {json.dumps(diff, ensure_ascii=False)}")
    return "; ".join(parts) or s("no_change", lang)


def _change_value(value: Any, tz: tzinfo, lang: str, field: str = "") -> str | None:
    """One side of a change as a person reads it: plant-local time, a status's name, a
    routing as its operations ('10 Moulding > 20 Deburring')."""
    if value is None:
        return None
    if field == "routing" and isinstance(value, list):
        steps = (
            " ".join(str(x) for x in (step.get("op"), step.get("name")) if x)
            if isinstance(step, dict)
            else str(step)
            for step in value
            if step is not None
        )
        return " > ".join(x for x in steps if x) or "—"
    if isinstance(value, str):
        if value in STATUSES:
            return s(value, lang)
        if len(value) > 10 and value[4:5] == "-" and value[10:11] in ("T", " "):
            try:
                ts = datetime.fromisoformat(value)
            except ValueError:
                return value
            # A time without an offset is the plant's own (the CRM API requires one).
            return fmt_time(ts if ts.tzinfo else ts.replace(tzinfo=tz), tz)
        return value
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)


def _history(history: Sequence[HistoryRow], tz: tzinfo, lang: str) -> Any:
    if not history:
        return html.Div(s("no_history", lang), className="orders-empty")
    heads = [s(k, lang) for k in ("when", "who", "version", "work_order", "what")]
    rows = [
        [
            fmt_time(h.accepted_at, tz),
            h.changed_by,
            h.version,
            h.work_order or "—",
            change_text(h.change, tz, lang),
        ]
        for h in history
    ]
    return _table(heads, rows, "history-table")


# The CRM callbacks' events by name (notify/outbox.py: order.<event>); an unknown one as sent.
_CALLBACK_EVENTS: Final = {
    "work_started": {"zh": "已开工", "en": "Work started"},
    "milestone": {"zh": "进度节点", "en": "Milestone"},
    "completed": {"zh": "已完工", "en": "Completed"},
    "at_risk": {"zh": "有延期风险", "en": "At risk"},
    "back_on_track": {"zh": "恢复按期", "en": "Back on track"},
    "production_problem": {"zh": "生产异常", "en": "Production problem"},
    "change_decision": {"zh": "变更审批结果", "en": "Change decision"},
    "cancellation_acknowledged": {"zh": "已确认取消", "en": "Cancellation acknowledged"},
}


def callback_event_label(event_type: str, lang: str) -> str:
    name = event_type.removeprefix("order.")
    names = _CALLBACK_EVENTS.get(name)
    return names[lang] if names is not None and lang in names else name


def _callbacks(callbacks: Sequence[CallbackRow], tz: tzinfo, lang: str) -> Any:
    if not callbacks:
        return html.Div(s("no_callbacks", lang), className="orders-empty")
    heads = [s(k, lang) for k in ("when", "event", "status", "attempts", "delivered", "error")]
    rows = [
        [
            fmt_time(c.created_at, tz),
            callback_event_label(c.event_type, lang),
            s(c.status, lang) if c.status in ("pending", "failed") else "✓",
            c.attempts,
            fmt_time(c.delivered_at, tz),
            c.last_error or (str(c.last_http_status) if c.last_http_status else ""),
        ]
        for c in callbacks
    ]
    return _table(heads, rows, "callback-table")


def render_order(detail: OrderDetail, tz: tzinfo, lang: str) -> list[Any]:
    o = detail.order
    facts = [
        ("customer", o.customer or "—"),
        ("product", o.product or "—"),
        ("qty", f"{o.good}/{o.qty}" if o.qty else str(o.good)),
        ("priority", str(o.priority) if o.priority is not None else "—"),
        ("eta", fmt_time(o.eta, tz)),
        ("due", fmt_time(o.due, tz)),
        ("slack", fmt_slack(o.slack_s, lang)),
        ("status", _status_text(o, lang)),
    ]
    return [
        html.Section(
            className="order-summary at-risk" if o.at_risk else "order-summary",
            children=[
                # A div per pair (valid in a dl): label above value, whatever the grid wraps.
                html.Dl([html.Div([html.Dt(s(k, lang)), html.Dd(v)]) for k, v in facts]),
                progress_bar(o.progress),
            ],
        ),
        html.Section(
            className="order-card why-late",
            children=[
                html.H2(s("why_late", lang)),
                html.P(s("why_note", lang), className="orders-note"),
                render_losses(detail.losses, lang),
            ],
        ),
        html.Section(
            className="order-card",
            children=[html.H2(s("work_orders", lang)), _work_orders(detail.work_orders, tz, lang)],
        ),
        html.Section(
            className="order-card",
            children=[html.H2(s("history", lang)), _history(detail.history, tz, lang)],
        ),
        html.Section(
            className="order-card",
            children=[html.H2(s("callbacks", lang)), _callbacks(detail.callbacks, tz, lang)],
        ),
    ]
