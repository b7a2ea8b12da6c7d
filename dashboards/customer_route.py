"""`/c/<token>`: a customer's read-only view of one order, without signing in.

The token (mesflow/customer_links.py) opens one order, in the link's language, until it
expires or is revoked; it is the only credential, so the gate lets `/c/` through
(dashboards/auth.py, CUSTOMER_ENDPOINT). The page is plain HTML from a Flask route, not a
Dash page: no app scripts, no callbacks, no navigation into the app, nothing to click but
the language switch.

What it shows, and only that: order number, product, quantity, good so far, a progress bar,
ETA against due date, milestones (the callbacks the CRM was sent). Not the customer's name,
not other orders, not machines, work orders or people: a machine name tells a customer
which presses run whose parts and how busy the plant is, and nothing a customer needs to
know when the order will arrive (docs/crm.md).

Answers: a well-formed, live token 200; revoked or expired 410, saying so and showing
nothing of the order; unknown or malformed 404; the database away 503. Never a
traceback. Not cached (Cache-Control: no-store), no Referer (the token is in the URL), not
framed, not indexed; the token is never logged (only the link's id is).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, tzinfo
from typing import Any, Final

import dash
import flask
import psycopg
import psycopg_pool
from werkzeug.wrappers import Response

from dashboards import context
from dashboards.auth import CUSTOMER_ENDPOINT
from dashboards.i18n import normalize_lang
from mesflow import customer_links as cl

log = logging.getLogger(__name__)

PREFIX: Final = "/c/"

STRINGS: Final[dict[str, dict[str, str]]] = {
    "title": {"zh": "订单生产进度", "en": "Order progress"},
    "order": {"zh": "订单号", "en": "Order"},
    "product": {"zh": "产品", "en": "Product"},
    "qty": {"zh": "订单数量", "en": "Quantity"},
    "good": {"zh": "已完成合格品", "en": "Good parts so far"},
    "due": {"zh": "交期", "en": "Due"},
    "eta": {"zh": "预计完成", "en": "Expected completion"},
    "on_time": {"zh": "预计按期完成", "en": "On schedule"},
    "late": {"zh": "预计晚于交期", "en": "Expected after the due date"},
    "no_eta": {"zh": "尚未开始生产", "en": "Production has not started yet"},
    "done": {"zh": "已完成", "en": "Completed"},
    "milestones": {"zh": "里程碑", "en": "Milestones"},
    "no_milestones": {"zh": "暂无", "en": "None yet"},
    "m_started": {"zh": "开始生产", "en": "Production started"},
    "m_percent": {"zh": "完成 {pct}%", "en": "{pct}% made"},
    "m_completed": {"zh": "生产完成", "en": "Production completed"},
    "status_on_hold": {"zh": "订单暂停", "en": "Order on hold"},
    "status_cancelled": {"zh": "订单已取消", "en": "Order cancelled"},
    "status_closed": {"zh": "订单已关闭", "en": "Order closed"},
    "updated": {"zh": "数据时间", "en": "As of"},
    "gone": {
        "zh": "此链接已失效（已撤销或已过期）。如需查看订单进度，请联系您的销售代表。",
        "en": "This link is no longer valid (revoked or expired). "
        "Please ask your sales contact for a new one.",
    },
    "unknown": {
        "zh": "找不到此链接。请检查链接是否完整。",
        "en": "This link does not exist. Please check that it was copied whole.",
    },
    "db_down": {
        "zh": "暂时无法显示，请稍后再试。",
        "en": "This page cannot be shown right now: please try again shortly.",
    },
}


def s(key: str, lang: str, **fmt: Any) -> str:
    text = STRINGS[key].get(lang, STRINGS[key]["en"])
    return text.format(**fmt) if fmt else text


def register(app: dash.Dash) -> None:
    """Add the route to the app's Flask server (`/c/...` wins over Dash's `/<path>`: more
    static parts)."""
    server = app.server
    server.add_url_rule(PREFIX, CUSTOMER_ENDPOINT, _view, defaults={"token": ""})
    server.add_url_rule(PREFIX + "<path:token>", CUSTOMER_ENDPOINT, _view)


def _browser_lang() -> str:
    """For pages without a link (unknown token): ?lang=, else the browser's language."""
    request = flask.request
    asked = request.args.get("lang")
    if asked:
        return normalize_lang(asked, "en")
    best = request.accept_languages.best_match(["zh", "zh-CN", "en"])
    return normalize_lang(best, "en") if best else "en"


def _view(token: str) -> Response:
    ctx = context.current()
    if not cl.well_formed(token):  # checked before any lookup; never logged
        return _page(404, _browser_lang(), message=s("unknown", _browser_lang()))
    try:
        return ctx.db.run(lambda conn: _answer(conn, token))
    except (psycopg.Error, psycopg_pool.PoolTimeout) as err:
        log.warning("customer link: database unreachable (%s)", type(err).__name__)
        return _page(503, _browser_lang(), message=s("db_down", _browser_lang()))


def _answer(conn: psycopg.Connection, token: str) -> Response:
    ctx = context.current()
    status, link = cl.resolve(conn, token)
    if link is None:
        return _page(404, _browser_lang(), message=s("unknown", _browser_lang()))
    lang = normalize_lang(flask.request.args.get("lang") or link.language, link.language)
    if status != "ok":
        log.info("customer link %d refused: %s", link.id, status)
        return _page(410, lang, message=s("gone", lang))
    tz = ctx.plant.tz
    view = cl.customer_view(conn, link.order_no, tz)
    if view is None:  # the order is gone (the link's foreign key makes this rare)
        return _page(404, lang, message=s("unknown", lang))
    return _page(200, lang, body=_order_body(view, lang, tz))


def _product_name(product: str, lang: str) -> str:
    for p in context.current().plant.products:
        if p.id == product:
            return f"{p.name.get(lang)} ({product})"
    return product


def _fmt(ts: datetime | None, tz: tzinfo) -> str:
    if ts is None:
        return "—"
    local = ts.astimezone(tz)
    offset = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M} (UTC{offset[:3]}:{offset[3:]})"


def _order_body(view: cl.CustomerView, lang: str, tz: tzinfo) -> dict[str, Any]:
    done = view.good >= view.qty
    if view.status in ("on_hold", "cancelled", "closed"):
        outlook, css = s(f"status_{view.status}", lang), "warn"
    elif done:
        outlook, css = s("done", lang), "ok"
    elif view.eta is None:
        outlook, css = s("no_eta", lang), ""
    elif view.eta <= view.due:
        outlook, css = s("on_time", lang), "ok"
    else:
        outlook, css = s("late", lang), "late"
    milestones = []
    for m in view.milestones:
        if m.kind == "percent":
            text = s("m_percent", lang, pct=m.percent if m.percent is not None else "?")
        else:
            text = s(f"m_{m.kind}", lang)
        milestones.append((_fmt(m.at, tz), text))
    pct = round(view.progress * 100)
    return {
        "facts": [
            (s("order", lang), view.order_no),
            (s("product", lang), _product_name(view.product, lang)),
            (s("qty", lang), f"{view.qty:,}"),
            (s("good", lang), f"{view.good:,}"),
            (s("due", lang), _fmt(view.due, tz)),
            (s("eta", lang), _fmt(view.eta, tz) if not done else "—"),
        ],
        "pct": pct,
        "outlook": outlook,
        "outlook_css": css,
        "milestones": milestones,
        "updated": _fmt(datetime.now(UTC), tz),
    }


_PAGE = """<!doctype html>
<html lang="{{ html_lang }}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<meta name="referrer" content="no-referrer">
<title>{{ title }}</title>
<style>
body{margin:0;background:#f3f5f8;color:#1b2430;
font:17px/1.5 "Noto Sans CJK SC","Microsoft YaHei","PingFang SC",system-ui,sans-serif}
main{max-width:44rem;margin:2rem auto;background:#fff;border-radius:10px;padding:2rem 2.5rem;
box-shadow:0 1px 4px rgba(0,0,0,.08)}
h1{margin:0 0 1.2rem;font-size:1.6rem}
h2{font-size:1.15rem;margin:1.6rem 0 .6rem}
dl{display:grid;grid-template-columns:auto 1fr;gap:.35rem 1.5rem;margin:0}
dt{color:#5b6b7c} dd{margin:0;font-weight:600;overflow-wrap:anywhere}
.bar{height:1.4rem;background:#e3e8ee;border-radius:.7rem;overflow:hidden;margin:1.4rem 0 .4rem}
.bar>div{height:100%;background:#2f81f7}
.pct{font-size:1.3rem;font-weight:700}
.outlook{display:inline-block;margin-left:1rem;padding:.15rem .7rem;border-radius:1rem;background:#e3e8ee}
.outlook.ok{background:#d3f3dd;color:#14532d} .outlook.late{background:#fde2e2;color:#8a1c1c}
.outlook.warn{background:#fdf0cf;color:#6b4a00}
ol{margin:0;padding-left:1.3rem} li{margin:.2rem 0} li time{color:#5b6b7c;margin-right:.8rem}
.msg{background:#eef2f6;padding:.8rem 1rem;border-radius:6px}
.msg.error{background:#fde2e2}
.foot{margin-top:1.6rem;color:#7a8896;font-size:.85rem;display:flex;justify-content:space-between}
a{color:#5b6b7c}
</style></head><body><main>
<h1>{{ title }}</h1>
{% if body %}
<dl>{% for k, v in body.facts %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}</dl>
<div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="{{ body.pct }}"><div style="width:{{ body.pct }}%"></div></div>
<span class="pct">{{ body.pct }}%</span><span class="outlook {{ body.outlook_css }}">{{ body.outlook }}</span>
<h2>{{ milestones_title }}</h2>
{% if body.milestones %}<ol>{% for at, text in body.milestones %}<li><time>{{ at }}</time>{{ text }}</li>{% endfor %}</ol>
{% else %}<p>{{ no_milestones }}</p>{% endif %}
<div class="foot"><span>{{ updated_label }}: {{ body.updated }}</span><a href="?lang={{ other }}">{{ other_label }}</a></div>
{% else %}
<div class="msg{{ ' error' if status >= 400 else '' }}" role="status">{{ message }}</div>
{% endif %}
</main></body></html>
"""


def _page(
    status: int, lang: str, *, body: dict[str, Any] | None = None, message: str = ""
) -> Response:
    other = "en" if lang == "zh" else "zh"
    html = flask.render_template_string(
        _PAGE,
        html_lang="zh-CN" if lang == "zh" else "en",
        title=s("title", lang),
        body=body,
        status=status,
        message=message,
        milestones_title=s("milestones", lang),
        no_milestones=s("no_milestones", lang),
        updated_label=s("updated", lang),
        other=other,
        other_label="English" if other == "en" else "中文",
    )
    response = flask.make_response(html, status)
    # A proxy or the browser must not keep it: a revoked link must show nothing at once.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the token is in this page's URL
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
    )
    return response
