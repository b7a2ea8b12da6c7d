"""`/ack/<token>`: acknowledge an alert from the signed link in its message, without signing in.

The token (notify/ack_links.py) names one alert and the person or channel it was sent to, and
expires; it is the only credential, so the gate lets `/ack/` through (dashboards/auth.py).

- GET shows a small confirmation page naming the alert with one button. It never
  acknowledges: chat apps (WeCom, DingTalk, Feishu) and mail scanners fetch links to build
  previews, and a preview must not stop an escalation nobody has seen.
- POST (the button) writes the `alert_ack` event (`by` = the token's person, `via` = "link")
  once: a second POST, or an acknowledgement from the board, stores nothing more
  (dashboards/alert_ack.py).

CSRF: the POST carries no cookie and the gate gives it no session, so there is no ambient
authority for another site to borrow. What authorises it is the token in the URL, which is
secret, signed, expiring and good for one alert only; a page that knows it could as well send
the person to the link. So the token is the CSRF token, and no other is needed.

Hostile input: the token is capped (MAX_TOKEN_CHARS) and must be printable ASCII before it is
verified; a forged or damaged token is 400, an expired one 410, an unknown alert 404, the
database away 503, each a page in the reader's language, never a traceback. The page is not
cached, not framed and sends no Referer (the token is in its URL).
"""

from __future__ import annotations

import logging
from typing import Any, Final
from urllib.parse import quote

import dash
import flask
import psycopg
import psycopg_pool
from werkzeug.wrappers import Response

from dashboards import alert_ack, context
from dashboards import alert_queries as aq
from dashboards.auth import ACK_ENDPOINT, session_secret
from dashboards.i18n import LANGUAGES, format_duration, normalize_lang, t
from dashboards.pages.alerts import fmt_time, label, people_names, what_text, where_text
from notify.ack_links import AckLinkError, verify_ack_token

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS: Final = 2048  # real tokens are ~150; anything far longer is not one
PREFIX: Final = "/ack/"

STRINGS: dict[str, dict[str, str]] = {
    "title": {"zh": "确认告警", "en": "Acknowledge alert"},
    "confirm": {
        "zh": "确认您已收到此告警并正在处理？确认后将停止升级通知。",
        "en": "Acknowledge that you have this alert in hand? Escalation stops once you do.",
    },
    "button": {"zh": "确认收到", "en": "Acknowledge"},
    "done": {
        "zh": "已确认，谢谢。升级通知已停止。",
        "en": "Acknowledged, thank you: escalation stops.",
    },
    "already": {
        "zh": "此告警已被确认（{by} {at}）。",
        "en": "This alert was already acknowledged ({by}, {at}).",
    },
    "already_pending": {
        "zh": "此告警已被确认。",
        "en": "This alert was already acknowledged.",
    },
    "resolved": {
        "zh": "此告警已于 {at} 恢复，无需确认。",
        "en": "This alert resolved at {at}: nothing to acknowledge.",
    },
    "invalid": {
        "zh": "此确认链接无效（可能复制不完整）。请在看板上确认告警。",
        "en": "This acknowledgement link is not valid (perhaps not copied whole). "
        "Acknowledge the alert on the boards instead.",
    },
    "expired": {
        "zh": "此确认链接已过期。请在看板上确认告警。",
        "en": "This acknowledgement link has expired. Acknowledge the alert on the boards instead.",
    },
    "unknown": {
        "zh": "找不到此告警（可能已被清理）。",
        "en": "There is no such alert (it may have been cleaned up).",
    },
    "db_down": {
        "zh": "暂时无法连接数据库，请稍后再试。",
        "en": "The database cannot be reached: try again shortly.",
    },
    "where": {"zh": "位置", "en": "Where"},
    "what": {"zh": "内容", "en": "What"},
    "since": {"zh": "开始", "en": "Since"},
    "for": {"zh": "持续", "en": "For"},
    "severity": {"zh": "级别", "en": "Severity"},
    "by": {"zh": "确认人", "en": "As"},
    "boards": {"zh": "打开告警看板", "en": "Open the alerts board"},
}


def s(key: str, lang: str, **fmt: Any) -> str:
    text = STRINGS[key].get(lang, STRINGS[key]["en"])
    return text.format(**fmt) if fmt else text


def register(app: dash.Dash) -> None:
    """Add the route to the app's Flask server (before Dash's catch-all page route wins:
    Werkzeug prefers the rule with more static parts, `/ack/...` over `/<path>`)."""
    server = app.server
    methods = ["GET", "POST"]
    server.add_url_rule(PREFIX, ACK_ENDPOINT, _view, defaults={"token": ""}, methods=methods)
    server.add_url_rule(PREFIX + "<path:token>", ACK_ENDPOINT, _view, methods=methods)


def _lang() -> str:
    """?lang= (or the form's lang), else the browser's Accept-Language, else the default."""
    ctx = context.current()
    request = flask.request
    asked = request.values.get("lang") if request.method == "POST" else request.args.get("lang")
    if asked:
        return normalize_lang(asked, ctx.settings.language)
    best = request.accept_languages.best_match(["zh", "zh-CN", "en"])
    return normalize_lang(best, ctx.settings.language) if best else ctx.lang(None)


def well_formed(token: str) -> bool:
    """Short enough and printable ASCII (itsdangerous tokens are URL-safe base64 and dots)."""
    return 0 < len(token) <= MAX_TOKEN_CHARS and all(0x21 <= ord(c) < 0x7F for c in token)


def _view(token: str) -> Response:
    ctx = context.current()
    lang = _lang()
    if not well_formed(token):
        return _page(400, lang, message=s("invalid", lang))
    try:
        alert_id, person = verify_ack_token(session_secret(ctx.settings), token)
    except AckLinkError as err:
        expired = str(err) == "expired"
        return _page(410 if expired else 400, lang, message=s(str(err), lang))
    try:
        return ctx.db.run(lambda conn: _answer(conn, lang, alert_id, person))
    except (psycopg.Error, psycopg_pool.PoolTimeout) as err:
        log.warning("ack link: database unreachable (%s)", err)
        return _page(503, lang, message=s("db_down", lang))


def _answer(conn: psycopg.Connection, lang: str, alert_id: str, person: str) -> Response:
    ctx = context.current()
    alert = aq.alert_by_id(conn, alert_id)
    if alert is None:
        return _page(404, lang, message=s("unknown", lang))
    tz = ctx.plant.tz
    details = _details(alert, person, lang)
    sev = alert.severity
    if alert.resolved_at is not None or alert.status == "resolved":
        msg = s("resolved", lang, at=fmt_time(alert.resolved_at, tz))
        return _page(
            200 if flask.request.method == "GET" else 409, lang, details, message=msg, severity=sev
        )
    if alert.acknowledged_at is not None:
        msg = s(
            "already",
            lang,
            by=_name(alert.acknowledged_by),
            at=fmt_time(alert.acknowledged_at, tz),
        )
        return _page(200, lang, details, message=msg, severity=sev)
    if flask.request.method != "POST":
        if alert_ack.already_acknowledged(conn, alert_id):
            return _page(200, lang, details, message=s("already_pending", lang), severity=sev)
        return _page(200, lang, details, message=s("confirm", lang), form=True, severity=sev)
    try:
        result = alert_ack.acknowledge(conn, alert_id, person, "link")
    except alert_ack.AckRefused:  # signed by us, but not storable (a name too long)
        return _page(400, lang, details, message=s("invalid", lang), severity=sev)
    if not result.stored:
        return _page(200, lang, details, message=s("already_pending", lang), severity=sev)
    log.info("alert %s acknowledged by %s through a link", alert_id, person)
    return _page(200, lang, details, message=s("done", lang), done=True, severity=sev)


def _details(alert: aq.Alert, person: str, lang: str) -> list[tuple[str, str]]:
    plant = context.current().plant
    return [
        (s("where", lang), where_text(alert, plant, lang)),
        (s("what", lang), what_text(alert, plant, lang)),
        (s("severity", lang), label("alert_severity", alert.severity, lang)),
        (s("since", lang), fmt_time(alert.started_at, plant.tz)),
        (s("for", lang), format_duration(alert.duration_s, lang)),
        (s("by", lang), _name(person)),
    ]


def _name(person: str | None) -> str:
    """The display name from the alerts file, if there is one, else the name as it is."""
    if not person:
        return "?"
    return people_names(context.current().settings).get(person, person)


_PAGE = """<!doctype html>
<html lang="{{ html_lang }}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{{ title }} · mesflow</title>
<style>
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;
background:#10151c;color:#e8edf2;font:18px/1.5 "Noto Sans CJK SC","Microsoft YaHei",system-ui,sans-serif}
main{background:#1b232d;padding:2rem 2.5rem;border-radius:10px;min-width:18rem;max-width:32rem;margin:1rem}
h1{margin:0 0 1rem;font-size:1.5rem}
dl{display:grid;grid-template-columns:auto 1fr;gap:.3rem 1rem;margin:0 0 1.2rem}
dt{color:#9fb3c8} dd{margin:0;font-weight:600;overflow-wrap:anywhere}
.sev-critical{border-left:6px solid #d11f1f;padding-left:1.8rem}
.sev-warning{border-left:6px solid #f2b01e;padding-left:1.8rem}
.sev-info{border-left:6px solid #1f63d1;padding-left:1.8rem}
.msg{background:#263241;padding:.6rem .8rem;border-radius:5px;margin-bottom:1rem}
.msg.error{background:#5c1e1e} .msg.done{background:#14532d}
button{width:100%;padding:.7rem;font-size:1.1rem;border:0;border-radius:5px;background:#2f81f7;color:#fff;cursor:pointer}
.lang{display:block;margin-top:1rem;text-align:right}
a{color:#9fb3c8}
</style></head><body><main class="{{ css }}">
<h1>{{ title }}</h1>
{% if details %}<dl>{% for k, v in details %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}</dl>{% endif %}
<div class="msg{{ ' error' if status >= 400 else '' }}{{ ' done' if done else '' }}" role="status">{{ message }}</div>
{% if form %}
<form method="post" action="{{ action }}">
<input type="hidden" name="lang" value="{{ lang }}">
<button type="submit" id="ack">{{ button }}</button>
</form>
{% endif %}
<p><a href="/alerts?lang={{ lang }}">{{ boards }}</a></p>
<a class="lang" href="{{ other_lang_url }}">{{ other_lang }}</a>
</main></body></html>
"""


def _page(
    status: int,
    lang: str,
    details: list[tuple[str, str]] | None = None,
    *,
    message: str,
    form: bool = False,
    done: bool = False,
    severity: str | None = None,
) -> Response:
    other = next(x for x in LANGUAGES if x != lang)
    path = quote(flask.request.path)  # the decoded path of a hostile URL, made a URL again
    body = flask.render_template_string(
        _PAGE,
        html_lang="zh-CN" if lang == "zh" else "en",
        lang=lang,
        status=status,
        title=s("title", lang),
        details=details or [],
        message=message,
        form=form,
        done=done,
        css=f"sev-{severity}" if severity else "",
        # The same path, so the POST goes to the token it was shown for.
        action=path,
        button=s("button", lang),
        boards=s("boards", lang),
        other_lang=t("language", lang),
        other_lang_url=f"{path}?lang={other}",
    )
    response = flask.make_response(body, status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the token is in this page's URL
    response.headers["X-Frame-Options"] = "DENY"  # no clickjacking of the button
    response.headers["X-Robots-Tag"] = "noindex"
    return response
