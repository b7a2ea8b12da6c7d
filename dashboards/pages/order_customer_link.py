"""The order page's customer-link panel and trace link (dashboards/pages/orders.py hooks it).

A manager makes a read-only link to this order for its customer (mesflow/customer_links.py:
days valid, language), sees it once (only its hash is kept), lists the order's links and
revokes one by id. A link to /trace for the order sits beside it.

The panel is static in the order page's layout (the order body re-renders every 10 s and
would wipe what is typed); one callback, manager only, creates, revokes and lists.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, tzinfo
from typing import Any, Final
from urllib.parse import quote

import dash
import flask
import psycopg
from dash import Input, Output, State, dcc, html

from dashboards import auth, context
from mesflow import customer_links as cl

log = logging.getLogger(__name__)

ROLE: Final = "manager"
_P = "ocl-"
_KEY = f"{_P}key"
_LANG = f"{_P}lang"
_DAYS = f"{_P}days"
_LINK_LANG = f"{_P}link-lang"
_CREATE = f"{_P}create"
_REVOKE_ID = f"{_P}revoke-id"
_REVOKE = f"{_P}revoke"
_MSG = f"{_P}msg"
_TABLE = f"{_P}table"

STRINGS: Final[dict[str, dict[str, str]]] = {
    "title": {"zh": "客户查看链接", "en": "Customer link"},
    "note": {
        "zh": "只读链接：仅显示本订单的进度、预计完成时间和里程碑。链接只显示一次，请立即复制。",
        "en": "A read-only link showing this order's progress, ETA and milestones only. "
        "It is shown once: copy it now.",
    },
    "days": {"zh": "有效天数", "en": "Valid for (days)"},
    "language": {"zh": "语言", "en": "Language"},
    "create": {"zh": "生成链接", "en": "Create link"},
    "revoke": {"zh": "撤销", "en": "Revoke"},
    "revoke_id": {"zh": "链接编号", "en": "Link id"},
    "created": {"zh": "已生成链接 {id}（请复制，之后不再显示）：", "en": "Link {id} created (copy it; it is not shown again):"},
    "revoked": {"zh": "链接 {id} 已撤销", "en": "Link {id} revoked"},
    "not_revoked": {"zh": "没有可撤销的链接 {id}", "en": "No active link {id} on this order"},
    "bad_days": {"zh": f"天数须为 1 到 {cl.MAX_DAYS}", "en": f"Days must be 1 to {cl.MAX_DAYS}"},
    "unknown_order": {"zh": "CRM 中没有此订单", "en": "The CRM has no such order"},
    "db_error": {"zh": "数据库不可用", "en": "Database unreachable"},
    "id": {"zh": "编号", "en": "Id"},
    "by": {"zh": "创建人", "en": "By"},
    "created_at": {"zh": "创建时间", "en": "Created"},
    "expires": {"zh": "到期", "en": "Expires"},
    "status": {"zh": "状态", "en": "Status"},
    "st_ok": {"zh": "有效", "en": "active"},
    "st_expired": {"zh": "已过期", "en": "expired"},
    "st_revoked": {"zh": "已撤销", "en": "revoked"},
    "none": {"zh": "尚无链接", "en": "No links yet"},
    "trace": {"zh": "追溯本订单（批次、设备、人员、停机）", "en": "Trace this order (lots, machines, people, stops)"},
}  # fmt: skip


def s(key: str, lang: str, **kw: Any) -> str:
    text = STRINGS[key].get(lang, STRINGS[key]["en"])
    return text.format(**kw) if kw else text


def panel(order_no: str | None, lang: str) -> list[Any]:
    """The panel's layout (no database reads: Dash also calls layouts to validate)."""
    return [
        html.A(
            s("trace", lang),
            href=f"/trace?order={quote(order_no or '', safe='')}&lang={lang}",
            className="orders-back order-trace-link",
        ),
        html.Section(
            className="order-card customer-link",
            children=[
                dcc.Store(id=_KEY, data=order_no),
                dcc.Store(id=_LANG, data=lang),
                html.H2(s("title", lang)),
                html.P(s("note", lang), className="orders-note"),
                html.Div(
                    className="orders-filters",
                    children=[
                        html.Label(s("days", lang), className="orders-label"),
                        dcc.Input(id=_DAYS, type="number", min=1, max=cl.MAX_DAYS, value=30),
                        html.Label(s("language", lang), className="orders-label"),
                        dcc.RadioItems(
                            id=_LINK_LANG,
                            options=[{"label": "中文", "value": "zh"}, {"label": "English", "value": "en"}],
                            value=lang,
                            inline=True,
                            className="trace-kind",
                        ),
                        html.Button(s("create", lang), id=_CREATE, className="orders-csv"),
                        html.Label(s("revoke_id", lang), className="orders-label"),
                        dcc.Input(id=_REVOKE_ID, type="number", min=1),
                        html.Button(s("revoke", lang), id=_REVOKE, className="orders-csv"),
                    ],
                ),
                html.Div(id=_MSG, className="customer-link-msg"),
                html.Div(id=_TABLE),
            ],
        ),
    ]  # fmt: skip


def register(app: dash.Dash) -> None:
    auth.callback(
        app,
        ROLE,
        Output(_MSG, "children"),
        Output(_TABLE, "children"),
        Input(_CREATE, "n_clicks"),
        Input(_REVOKE, "n_clicks"),
        State(_KEY, "data"),
        State(_DAYS, "value"),
        State(_LINK_LANG, "value"),
        State(_REVOKE_ID, "value"),
        State(_LANG, "data"),
    )(_act)


def _act(
    _create: Any, _revoke: Any, order_no: Any, days: Any, link_lang: Any, revoke_id: Any, lang: Any
) -> tuple[Any, Any]:
    ctx = context.current()
    lang = ctx.lang(lang)
    principal = auth.require(ROLE)
    if not isinstance(order_no, str) or not order_no:
        return "", ""
    trigger = dash.ctx.triggered_id

    def work(conn: psycopg.Connection) -> tuple[Any, list[cl.CustomerLink]]:
        msg: Any = ""
        if trigger == _CREATE:
            if not isinstance(days, int) or isinstance(days, bool):
                msg = s("bad_days", lang)
            else:
                try:
                    link, token = cl.create(
                        conn,
                        order_no,
                        principal.name,
                        days,
                        link_lang if link_lang in cl.LANGS else lang,
                    )
                except cl.LinkError as err:
                    msg = s(err.code, lang) if err.code in STRINGS else str(err)
                else:
                    url = flask.request.host_url.rstrip("/") + "/c/" + token
                    log.info(
                        "customer link %d made for %s by %s", link.id, order_no, principal.name
                    )
                    msg = [
                        s("created", lang, id=link.id),
                        html.Code(url, className="customer-link-url"),
                    ]
        elif trigger == _REVOKE and isinstance(revoke_id, int):
            ok = cl.revoke(conn, revoke_id, principal.name, order_no=order_no)
            msg = s("revoked" if ok else "not_revoked", lang, id=revoke_id)
        return msg, cl.list_links(conn, order_no)

    try:
        msg, links = ctx.db.run(work)
    except psycopg.Error as err:
        log.warning("customer link panel: %s", type(err).__name__)
        return s("db_error", lang), dash.no_update
    return msg, render_links(links, ctx.plant.tz, lang)


def render_links(links: list[cl.CustomerLink], tz: tzinfo, lang: str) -> Any:
    if not links:
        return html.Div(s("none", lang), className="orders-empty")
    now = datetime.now(UTC)

    def fmt(ts: datetime) -> str:
        return ts.astimezone(tz).strftime("%Y-%m-%d %H:%M")

    heads = [s(k, lang) for k in ("id", "language", "by", "created_at", "expires", "status")]
    rows = [
        [
            str(x.id),
            "中文" if x.language == "zh" else "English",
            x.created_by,
            fmt(x.created_at),
            fmt(x.expires_at),
            s(f"st_{x.status(now)}", lang),
        ]
        for x in links
    ]
    return html.Table(
        className="orders-table customer-link-table",
        children=[
            html.Thead(html.Tr([html.Th(h) for h in heads])),
            html.Tbody([html.Tr([html.Td(c) for c in r]) for r in rows]),
        ],
    )
