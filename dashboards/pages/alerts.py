"""Alerts page (/alerts, docs/alerts.md "On the boards").

Open alerts first: severity colour, where (machine, line or order), what, since when and for
how long (counting in the browser between refreshes), the escalation level, who was notified
and whether each message went out (`v_alert_deliveries`), and who acknowledged it. An
operator (or higher) acknowledges an alert with its button; that writes an `alert_ack` event
into the ingest log (dashboards/alert_ack.py), exactly as the signed link in a message does.
Then the channels (`v_channel_status`): a failing robot or a bad key stands out, and a bad
key also shows in the banner at the top, since nothing reaches that group until someone fixes
it. Last, the history with range, line, machine and severity filters and a CSV export.

Roles: the page is for `viewer` (a wall screen may show it); acknowledging needs `operator`.
Rendering is a pure function of the rows (`render_open`, `render_channels`,
`render_history`), tested without a browser.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dash
import psycopg
import psycopg_pool
from dash import MATCH, Input, Output, State, dcc, html
from pydantic import ValidationError

from dashboards import alert_ack, auth, context
from dashboards import alert_queries as aq
from dashboards.i18n import format_duration, t
from dashboards.nav import page_header
from dashboards.widgets import csv_download, picked_days
from mesflow import users
from mesflow.alert_channels import Person
from mesflow.plant import PlantConfig
from mesflow.report import to_csv
from mesflow.settings import Settings
from mesflow.yaml_lines import YamlError, load_with_lines

log = logging.getLogger(__name__)

PATH = "/alerts"
MIN_ROLE = "viewer"
ACK_ROLE = "operator"
REFRESH_MS = 5_000  # durations tick in the browser (assets/alerts.js); rows change slowly
HISTORY_REFRESH_MS = 60_000  # the history (up to 500 rows) follows its filters at once
DEFAULT_DAYS = 7
MAX_DAYS = 92

_P = "al-"
_TICK = f"{_P}tick"
_H_TICK = f"{_P}h-tick"
_LANG = f"{_P}lang"
_BANNER = f"{_P}banner"
_OPEN = f"{_P}open"
_CHANNELS = f"{_P}channels"
_HISTORY = f"{_P}history"
_RANGE = f"{_P}range"
_LINE = f"{_P}line"
_MACHINE = f"{_P}machine"
_SEVERITY = f"{_P}severity"
_CSV = f"{_P}csv"
_DOWNLOAD = f"{_P}download"
ACK_BUTTON = f"{_P}ack"  # pattern-matching id {"type": ACK_BUTTON, "alert": <alert_id>}
_DB_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout)
_SOON = timedelta(minutes=1)  # a pending message due later than this shows when it goes

STRINGS: dict[str, dict[str, str]] = {
    "title": {"zh": "告警", "en": "Alerts"},
    "open_alerts": {"zh": "未恢复的告警", "en": "Open alerts"},
    "no_open": {"zh": "当前没有告警", "en": "No open alerts"},
    "channels": {"zh": "通知渠道", "en": "Channels"},
    "no_channels": {"zh": "还没有发送过通知", "en": "No messages sent yet"},
    "history": {"zh": "告警历史", "en": "History"},
    "no_history": {"zh": "此范围内没有告警", "en": "No alerts in this range"},
    "open_more": {
        "zh": "显示 {total} 条未解除告警中最紧急的 {n} 条（未确认、严重、最早的在前）",
        "en": "The {n} most urgent of {total} unresolved alerts (unacknowledged, critical and"
        " oldest first)",
    },
    "history_more": {
        "zh": "只显示最新的 {n} 条；导出 CSV 包含全部，或缩小日期范围",
        "en": "Showing the newest {n}: the CSV has them all, or narrow the dates",
    },
    "range": {"zh": "日期", "en": "Dates"},
    "line": {"zh": "产线", "en": "Line"},
    "machine": {"zh": "设备", "en": "Machine"},
    "severity": {"zh": "级别", "en": "Severity"},
    "all_lines": {"zh": "全部产线", "en": "All lines"},
    "all_machines": {"zh": "全部设备", "en": "All machines"},
    "all_severities": {"zh": "全部级别", "en": "All severities"},
    "csv": {"zh": "导出 CSV", "en": "Export CSV"},
    "where": {"zh": "位置", "en": "Where"},
    "what": {"zh": "内容", "en": "What"},
    "since": {"zh": "开始", "en": "Since"},
    "duration": {"zh": "持续", "en": "Duration"},
    "level": {"zh": "升级", "en": "Level"},
    "level_n": {"zh": "第 {n} 级", "en": "level {n}"},
    "notified": {"zh": "已通知", "en": "Notified"},
    "nobody": {"zh": "无人（未配置接收人）", "en": "nobody (no recipients)"},
    "acknowledged": {"zh": "确认", "en": "Acknowledged"},
    "ack_by": {"zh": "{by} 于 {at} 确认", "en": "by {by} at {at}"},
    "ack_pending": {"zh": "已确认，处理中", "en": "acknowledged, updating"},
    "acknowledge": {"zh": "确认收到", "en": "Acknowledge"},
    "ack_done": {"zh": "已确认", "en": "Acknowledged"},
    "ack_already": {"zh": "已被确认", "en": "Already acknowledged"},
    "ack_needs_role": {"zh": "需要操作员或更高角色", "en": "Operators and above acknowledge"},
    "ack_failed": {"zh": "确认失败，请重试", "en": "Failed: try again"},
    "ack_gone": {"zh": "告警已恢复", "en": "Already resolved"},
    "resolved": {"zh": "恢复", "en": "Resolved"},
    "status": {"zh": "状态", "en": "Status"},
    "channel": {"zh": "渠道", "en": "Channel"},
    "type": {"zh": "类型", "en": "Type"},
    "pending": {"zh": "待发送", "en": "Pending"},
    "sent": {"zh": "已发送", "en": "Sent"},
    "failed": {"zh": "失败", "en": "Failed"},
    "stale": {"zh": "过期未发", "en": "Not sent (old)"},
    "ok": {"zh": "正常", "en": "OK"},
    "failing": {"zh": "发送失败", "en": "Failing"},
    "bad_key": {"zh": "密钥无效", "en": "Bad key"},
    "stalled": {"zh": "未在发送", "en": "Not sending"},
    "stalled_banner": {
        "zh": "渠道 {names} 有消息自 {since} 起待发送，但没有程序在发送：请确认 "
        "`mesflow run notify` 正在运行，并已配置该渠道（邮件：MESFLOW_SMTP_HOST）",
        "en": "Nothing is sending on {names}: messages have waited since {since}. Is "
        "`mesflow run notify` running, with this channel configured (e-mail: "
        "MESFLOW_SMTP_HOST)?",
    },
    "last_error": {"zh": "最近错误", "en": "Last error"},
    "last_success": {"zh": "最近成功", "en": "Last success"},
    "bad_key_banner": {
        "zh": "渠道 {names} 的密钥无效：消息发不出去，请检查机器人地址/密钥",
        "en": "Bad key on {names}: nothing reaches these groups until the robot URL or "
        "secret is fixed",
    },
    "db_error": {
        "zh": "数据库连接中断，显示的是最后一次读取的数据",
        "en": "Database unreachable: showing the last figures read",
    },
    "email": {"zh": "邮件", "en": "e-mail"},
    "wecom": {"zh": "企业微信", "en": "WeCom"},
    "dingtalk": {"zh": "钉钉", "en": "DingTalk"},
    "feishu": {"zh": "飞书", "en": "Feishu"},
    "webhook": {"zh": "Webhook", "en": "webhook"},
    "order": {"zh": "订单", "en": "Order"},
    "plant": {"zh": "全厂", "en": "Plant"},
}


def s(key: str, lang: str, **fmt: Any) -> str:
    entry = STRINGS.get(key)
    text = t(key, lang) if entry is None else entry.get(lang, entry["en"])
    return text.format(**fmt) if fmt else text


def label(prefix: str, value: str, lang: str) -> str:
    """An i18n label (alert kind, severity, status), or the raw value if there is none."""
    key = f"{prefix}_{value}"
    text = t(key, lang)
    return value if text == key else text


def register(app: dash.Dash) -> None:
    dash.register_page(
        __name__,
        path=PATH,
        name="Alerts",
        order=25,
        nav=True,
        nav_label={"zh": "告警", "en": "Alerts"},
        layout=layout,
        title="Alerts · mesflow",
        min_role=MIN_ROLE,
    )
    auth.callback(
        app,
        MIN_ROLE,
        Output(_OPEN, "children"),
        Output(_CHANNELS, "children"),
        Output(_BANNER, "children"),
        Input(_TICK, "n_intervals"),
        State(_LANG, "data"),
    )(_refresh_open)
    auth.callback(
        app,
        MIN_ROLE,
        Output(_HISTORY, "children"),
        Input(_H_TICK, "n_intervals"),
        Input(_RANGE, "start_date"),
        Input(_RANGE, "end_date"),
        Input(_LINE, "value"),
        Input(_MACHINE, "value"),
        Input(_SEVERITY, "value"),
        State(_LANG, "data"),
    )(_refresh_history)
    auth.callback(
        app,
        MIN_ROLE,
        Output(_DOWNLOAD, "data"),
        Input(_CSV, "n_clicks"),
        State(_RANGE, "start_date"),
        State(_RANGE, "end_date"),
        State(_LINE, "value"),
        State(_MACHINE, "value"),
        State(_SEVERITY, "value"),
        prevent_initial_call=True,
    )(_export_csv)
    auth.callback(
        app,
        ACK_ROLE,
        Output({"type": ACK_BUTTON, "alert": MATCH}, "children"),
        Output({"type": ACK_BUTTON, "alert": MATCH}, "disabled"),
        Input({"type": ACK_BUTTON, "alert": MATCH}, "n_clicks"),
        State({"type": ACK_BUTTON, "alert": MATCH}, "id"),
        State(_LANG, "data"),
        prevent_initial_call=True,
    )(_acknowledge)


# -- layout (no database reads: Dash also calls it to validate callbacks) ---------------------


def layout(lang: str | None = None, **_query: str) -> html.Div:
    ctx = context.current()
    lang = ctx.lang(lang)
    plant = ctx.plant
    f = parse_filters(plant, None, None, None, None, None)
    return html.Div(
        className=f"alerts lang-{lang}",
        lang="zh-CN" if lang == "zh" else "en",
        children=[
            dcc.Store(id=_LANG, data=lang),
            dcc.Interval(id=_TICK, interval=REFRESH_MS),
            dcc.Interval(id=_H_TICK, interval=HISTORY_REFRESH_MS),
            page_header(lang, s("title", lang), PATH, plant.plant.name.get(lang), prefix="al"),
            html.Div(id=_BANNER, className="al-banner"),
            html.Section(
                className="al-card",
                children=[html.H2(s("open_alerts", lang)), html.Div(id=_OPEN)],
            ),
            html.Section(
                className="al-card",
                children=[html.H2(s("channels", lang)), html.Div(id=_CHANNELS)],
            ),
            html.Section(
                className="al-card",
                children=[
                    html.Div(
                        className="al-card-head",
                        children=[
                            html.H2(s("history", lang)),
                            html.Button(s("csv", lang), id=_CSV, className="al-csv"),
                            dcc.Download(id=_DOWNLOAD),
                        ],
                    ),
                    html.Div(
                        className="al-filters",
                        children=[
                            html.Label(s("range", lang), className="al-label"),
                            dcc.DatePickerRange(
                                id=_RANGE,
                                start_date=f.start.isoformat(),
                                end_date=(f.end - timedelta(days=1)).isoformat(),
                                display_format="YYYY-MM-DD",
                                first_day_of_week=1,
                            ),
                            dcc.Dropdown(
                                id=_LINE,
                                options=[
                                    {"label": ln.name.get(lang), "value": ln.id}
                                    for ln in plant.lines
                                ],
                                placeholder=s("all_lines", lang),
                                className="al-dropdown",
                            ),
                            dcc.Dropdown(
                                id=_MACHINE,
                                options=[
                                    {"label": f"{m.name.get(lang)} ({mid})", "value": mid}
                                    for mid, m in plant.machines.items()
                                ],
                                placeholder=s("all_machines", lang),
                                className="al-dropdown",
                            ),
                            dcc.Dropdown(
                                id=_SEVERITY,
                                options=[
                                    {"label": label("alert_severity", v, lang), "value": v}
                                    for v in aq.SEVERITIES
                                ],
                                placeholder=s("all_severities", lang),
                                className="al-dropdown al-severity",
                            ),
                        ],
                    ),
                    html.Div(id=_HISTORY, className="al-table-wrap"),
                ],
            ),
        ],
    )


# -- filters --------------------------------------------------------------------------------------


def parse_filters(
    plant: PlantConfig,
    start: Any,
    end: Any,
    line: Any,
    machine: Any,
    severity: Any,
    today: date | None = None,
) -> aq.HistoryFilters:
    """Filter values from the browser (hostile or broken) as HistoryFilters; bad ones are
    dropped. The picker's end date is inclusive for a person; the filter's end is exclusive."""
    today = today or datetime.now(plant.tz).date()
    first, last = picked_days(start, end, today, DEFAULT_DAYS, MAX_DAYS)
    return aq.HistoryFilters(
        start=first,
        end=last + timedelta(days=1),
        tz=plant.tz,
        line=line if isinstance(line, str) and any(x.id == line for x in plant.lines) else None,
        machine=machine if isinstance(machine, str) and machine in plant.machines else None,
        severity=severity if severity in aq.SEVERITIES else None,
    )


# -- callbacks ------------------------------------------------------------------------------------


def _can_ack() -> bool:
    principal = auth.current_principal()
    return principal is not None and users.has_role(principal.role, ACK_ROLE)


def _refresh_open(_n: int | None, lang: Any) -> tuple[Any, Any, Any]:
    ctx = context.current()
    lang = ctx.lang(lang if isinstance(lang, str) else None)
    try:
        board = aq.open_board(ctx.db)
    except _DB_ERRORS as err:
        log.warning("alerts: cannot read the alert views: %s", err)
        return dash.no_update, dash.no_update, html.Div(s("db_error", lang), className="al-error")
    now = datetime.now(UTC)
    opts = RenderOptions(
        tz=ctx.plant.tz,
        lang=lang,
        can_ack=_can_ack(),
        now=now,
        names=people_names(ctx.settings),
    )
    return (
        render_open(board, ctx.plant, opts),
        render_channels(board.channels, opts),
        render_banner(board.channels, lang, opts.tz),
    )


def _refresh_history(
    _n: int | None, start: Any, end: Any, line: Any, machine: Any, severity: Any, lang: Any
) -> Any:
    ctx = context.current()
    lang = ctx.lang(lang if isinstance(lang, str) else None)
    f = parse_filters(ctx.plant, start, end, line, machine, severity)
    try:
        rows = aq.history(ctx.db, f, limit=aq.HISTORY_SHOWN + 1)
    except _DB_ERRORS as err:
        log.warning("alerts: cannot read v_alerts: %s", err)
        return html.Div(s("db_error", lang), className="al-error")
    return render_history(rows, ctx.plant, ctx.plant.tz, lang, people_names(ctx.settings))


def _export_csv(
    _n: int | None, start: Any, end: Any, line: Any, machine: Any, severity: Any
) -> dict[str, Any]:
    ctx = context.current()
    f = parse_filters(ctx.plant, start, end, line, machine, severity)
    try:
        name, text = export(ctx.db, f, ctx.plant.tz)
    except _DB_ERRORS as err:
        log.warning("alerts: cannot export the history: %s", err)
        raise dash.exceptions.PreventUpdate from None  # the banner already says why
    return csv_download(text, name)


def _acknowledge(n_clicks: Any, button_id: Any, lang: Any) -> tuple[str, bool]:
    principal = auth.require(ACK_ROLE)  # the gate checked already; a route mistake opens nothing
    ctx = context.current()
    lang = ctx.lang(lang if isinstance(lang, str) else None)
    alert_id = button_id.get("alert") if isinstance(button_id, dict) else None
    if not n_clicks or not isinstance(alert_id, str):
        return s("acknowledge", lang), False  # not clicked (or not one of ours): as it was
    try:
        outcome = ctx.db.run(lambda conn: ack_on_board(conn, alert_id, principal.name))
    except alert_ack.AckRefused:
        return s("ack_failed", lang), True
    except _DB_ERRORS as err:
        log.warning("alerts: cannot store the acknowledgement of %s: %s", alert_id, err)
        return s("ack_failed", lang), False
    if outcome == "stored":
        log.info("alert %s acknowledged on the board by %s", alert_id, principal.name)
    return s(outcome if outcome != "stored" else "ack_done", lang), True


def ack_on_board(conn: psycopg.Connection, alert_id: str, by: str) -> str:
    """Acknowledge an alert the board showed: "stored", "ack_already", or "ack_gone" when
    there is no such open alert (the id comes from the browser: only real, open alerts get
    an event in the log)."""
    alert = aq.alert_by_id(conn, alert_id)
    if alert is None or alert.status == "resolved" or alert.resolved_at is not None:
        return "ack_gone"
    if alert.acknowledged_at is not None:
        return "ack_already"
    return "stored" if alert_ack.acknowledge(conn, alert_id, by, "board").stored else "ack_already"


# -- pure rendering -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderOptions:
    tz: tzinfo
    lang: str
    can_ack: bool
    now: datetime
    names: Mapping[str, str] = field(default_factory=dict)  # person -> display name

    def person(self, name: str | None) -> str:
        return "?" if not name else self.names.get(name, name)


# (path, mtime) -> the people's display names; re-read when the file changes.
_NAMES: dict[tuple[str, float], dict[str, str]] = {}


def people_names(settings: Settings) -> dict[str, str]:
    """Display names of the alerts file's people (zhang -> 张伟), for chips and "by" texts.

    Only the `people` section is read (no channel secrets are needed for names); a missing
    or broken file gives {} and the board shows the names as the file spells them (the
    dataflow's loader reports what is wrong with the file)."""
    path = settings.alerts_config
    if path is None:
        return {}
    try:
        key = (str(path), Path(path).stat().st_mtime)
    except OSError:
        return {}
    cached = _NAMES.get(key)
    if cached is not None:
        return cached
    names: dict[str, str] = {}
    try:
        data, _lines = load_with_lines(Path(path))
    except YamlError:
        data = None
    people = data.get("people") if isinstance(data, dict) else None
    for name, body in people.items() if isinstance(people, dict) else ():
        try:
            names[str(name)] = Person.model_validate(body).display
        except ValidationError:
            continue
    _NAMES.clear()
    _NAMES[key] = names
    return names


def fmt_time(ts: datetime | None, tz: tzinfo, with_date: bool = True) -> str:
    if ts is None:
        return "—"
    return ts.astimezone(tz).strftime("%m-%d %H:%M" if with_date else "%H:%M")


def where_text(alert: aq.Alert, plant: PlantConfig, lang: str) -> str:
    """Machine name (and id), line name, order number or the plant, as a person reads it."""
    if alert.machine:
        m = plant.machines.get(alert.machine)
        return f"{m.name.get(lang)} ({alert.machine})" if m else alert.machine
    if alert.order_no:
        return f"{s('order', lang)} {alert.order_no}"
    if alert.line:
        names = {ln.id: ln.name.get(lang) for ln in plant.lines}
        return names.get(alert.line, alert.line)
    return s("plant", lang)


def what_text(alert: aq.Alert, plant: PlantConfig, lang: str) -> str:
    """The kind of alert, with the facts a person acts on (a stop's reason, a figure)."""
    text = label("alert_kind", alert.kind, lang)
    reason = alert.facts.get("reason")
    if isinstance(reason, str) and reason:
        r = plant.reasons_by_code.get(reason)
        text += f" · {r.name.get(lang) if r else reason}"
    return text


def _data(**attrs: str) -> dict[str, Any]:
    """`data-*` attributes for a Dash component (its typed signature cannot name them)."""
    return {f"data-{name}": value for name, value in attrs.items()}


def _ack_cell(alert: aq.Alert, pending: bool, opts: RenderOptions) -> Any:
    lang = opts.lang
    if alert.acknowledged_at is not None:
        return html.Span(
            s(
                "ack_by",
                lang,
                by=opts.person(alert.acknowledged_by),
                at=fmt_time(alert.acknowledged_at, opts.tz),
            ),
            className="al-acked",
        )
    if pending:
        return html.Span(s("ack_pending", lang), className="al-acked")
    if not opts.can_ack:
        return html.Button(
            s("acknowledge", lang),
            disabled=True,
            className="al-ack",
            title=s("ack_needs_role", lang),
        )
    return html.Button(
        s("acknowledge", lang),
        id={"type": ACK_BUTTON, "alert": alert.alert_id},
        className="al-ack",
        n_clicks=0,
    )


def delivery_chip(d: aq.Delivery, opts: RenderOptions) -> html.Span:
    """One message of one step: who, how, and whether it went ("pending 06:00" in quiet
    hours or while a rate-limited robot waits; the platform's code when it failed)."""
    lang = opts.lang
    who = opts.person(d.person) if d.person else d.channel
    kind = s(d.channel_type, lang) if d.channel_type in STRINGS else d.channel_type
    status = s(d.status, lang) if d.status in STRINGS else d.status
    if d.status == "pending" and d.next_attempt_at and d.next_attempt_at > opts.now + _SOON:
        status += " " + fmt_time(d.next_attempt_at, opts.tz, with_date=False)
    title = f"{d.step} L{d.level + 1}"  # stored 0-based; people count from 1
    if d.error_code or d.last_error:
        title += f": {d.error_code or ''} {d.last_error or ''}"
    return html.Span(
        [html.B(who), f" {kind} · {status}" + (f" ({d.error_code})" if d.error_code else "")],
        className=f"al-chip al-delivery-{d.status}",
        title=title[:300],
        **_data(target=d.target, status=d.status),
    )


def render_open(board: aq.OpenBoard, plant: PlantConfig, opts: RenderOptions) -> Any:
    lang = opts.lang
    if not board.alerts:
        return html.Div(s("no_open", lang), className="al-empty")
    heads = ["severity", "where", "what", "since", "duration", "level", "notified", "acknowledged"]
    head = html.Thead(html.Tr([html.Th(s(h, lang)) for h in heads]))
    body = []
    now_ms = str(int(opts.now.timestamp() * 1000))
    for a in board.alerts[: aq.OPEN_SHOWN]:
        deliveries = board.deliveries.get(a.alert_id, [])
        since_ms = str(int(a.started_at.timestamp() * 1000))
        body.append(
            html.Tr(
                className=f"al-row al-sev-{a.severity} al-status-{a.status}",
                **_data(alert=a.alert_id, status=a.status, severity=a.severity),
                children=[
                    html.Td(
                        html.Span(label("alert_severity", a.severity, lang), className="al-sev")
                    ),
                    html.Td(where_text(a, plant, lang), className="al-where"),
                    html.Td(
                        [
                            html.Div(what_text(a, plant, lang)),
                            html.Div(a.rule, className="al-rule"),
                        ],
                        className="al-what",
                    ),
                    html.Td(fmt_time(a.started_at, opts.tz), className="al-since"),
                    html.Td(
                        format_duration((opts.now - a.started_at).total_seconds(), lang),
                        className="al-duration",
                        # assets/alerts.js ticks this every second, from the server's clock.
                        **_data(since=since_ms, now=now_ms, lang=lang),
                    ),
                    html.Td(str(a.level + 1), className="al-level"),  # stored 0-based
                    html.Td(
                        [delivery_chip(d, opts) for d in deliveries]
                        or html.Span(s("nobody", lang), className="al-muted"),
                        className="al-notified",
                    ),
                    html.Td(
                        _ack_cell(a, a.alert_id in board.pending_acks, opts), className="al-ackcell"
                    ),
                ],
            )
        )
    table = html.Table([head, html.Tbody(body)], className="al-table al-open-table")
    if len(board.alerts) <= aq.OPEN_SHOWN:
        return table
    note = s("open_more", lang, n=aq.OPEN_SHOWN, total=f"{len(board.alerts):,}")
    return [html.Div(note, className="al-muted al-open-more"), table]


def render_channels(channels: Sequence[aq.ChannelStatus], opts: RenderOptions) -> Any:
    lang = opts.lang
    if not channels:
        return html.Div(s("no_channels", lang), className="al-empty")
    heads = ["channel", "type", "status", "pending", "failed", "last_error", "last_success"]
    rows = []
    for c in channels:
        status = s(c.status, lang) if c.status in STRINGS else c.status
        error = c.last_error or ""
        if c.error_code:
            error = f"{c.error_code} {error}".strip()
        rows.append(
            html.Tr(
                className=f"al-channel al-channel-{c.status}",
                **_data(channel=c.channel, status=c.status),
                children=[
                    html.Td(c.channel),
                    html.Td(
                        s(c.channel_type, lang) if c.channel_type in STRINGS else c.channel_type
                    ),
                    html.Td(html.Span(status, className="al-channel-state")),
                    html.Td(str(c.pending)),
                    html.Td(str(c.failed)),
                    html.Td(
                        [
                            error[:120],
                            f" ({fmt_time(c.last_error_at, opts.tz)})" if c.last_error_at else "",
                        ],
                        title=error[:500],
                        className="al-error-text",
                    ),
                    html.Td(fmt_time(c.last_success_at, opts.tz)),
                ],
            )
        )
    return html.Table(
        [html.Thead(html.Tr([html.Th(s(h, lang)) for h in heads])), html.Tbody(rows)],
        className="al-table al-channels-table",
    )


def render_banner(channels: Sequence[aq.ChannelStatus], lang: str, tz: tzinfo) -> Any:
    bad = [c.channel for c in channels if c.status == "bad_key"]
    stalled = [c for c in channels if c.status == "stalled"]
    out = []
    if bad:
        out.append(
            html.Div(s("bad_key_banner", lang, names=", ".join(bad)), className="al-bad-key")
        )
    if stalled:
        since = min(c.due_since for c in stalled if c.due_since is not None)
        names = ", ".join(c.channel for c in stalled)
        text = s("stalled_banner", lang, names=names, since=fmt_time(since, tz))
        out.append(html.Div(text, className="al-bad-key al-stalled"))
    return out or ""


def render_history(
    rows: Sequence[aq.Alert],
    plant: PlantConfig,
    tz: tzinfo,
    lang: str,
    names: Mapping[str, str] | None = None,
) -> Any:
    """The newest HISTORY_SHOWN rows (a note says when there are more: the CSV has them)."""
    if not rows:
        return html.Div(s("no_history", lang), className="al-empty")
    more = len(rows) > aq.HISTORY_SHOWN
    rows = rows[: aq.HISTORY_SHOWN]
    heads = ["severity", "where", "what", "since", "duration", "level", "acknowledged", "resolved"]
    body = []
    for a in rows:
        ack = (
            s(
                "ack_by",
                lang,
                by=(names or {}).get(a.acknowledged_by or "", a.acknowledged_by or "?"),
                at=fmt_time(a.acknowledged_at, tz),
            )
            if a.acknowledged_at
            else "—"
        )
        body.append(
            html.Tr(
                className=f"al-row al-sev-{a.severity} al-status-{a.status}",
                **_data(alert=a.alert_id, severity=a.severity),
                children=[
                    html.Td(
                        html.Span(label("alert_severity", a.severity, lang), className="al-sev")
                    ),
                    html.Td(where_text(a, plant, lang)),
                    html.Td(what_text(a, plant, lang)),
                    html.Td(fmt_time(a.started_at, tz)),
                    html.Td(format_duration(a.duration_s, lang)),
                    html.Td(str(a.level + 1)),
                    html.Td(ack),
                    html.Td(
                        fmt_time(a.resolved_at, tz)
                        if a.resolved_at
                        else label("alert_status", a.status, lang)
                    ),
                ],
            )
        )
    table = html.Table(
        [html.Thead(html.Tr([html.Th(s(h, lang)) for h in heads])), html.Tbody(body)],
        className="al-table al-history-table",
    )
    if not more:
        return table
    note = s("history_more", lang, n=aq.HISTORY_SHOWN)
    return [html.Div(note, className="al-muted al-history-more"), table]


# -- CSV ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CsvAlert:
    """One line of the history CSV (times in the plant's zone with their offset, as the
    analytics page's exports and `mesflow report --format csv`)."""

    alert_id: str
    rule: str
    kind: str
    severity: str
    status: str
    machine: str | None
    line: str | None
    order_no: str | None
    # as on the page: 1 = the first level (the SQL views' `level` is 0-based)
    escalation_level: int
    started_at: datetime
    opened_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    duration_s: float | None


def history_csv(rows: Sequence[aq.Alert], tz: ZoneInfo) -> str:
    names = [f.name for f in fields(CsvAlert) if f.name != "escalation_level"]
    return to_csv(
        [CsvAlert(**{n: getattr(a, n) for n in names}, escalation_level=a.level + 1) for a in rows],
        CsvAlert,
        tz,
    )


def export(db: aq.Database, f: aq.HistoryFilters, tz: ZoneInfo) -> tuple[str, str]:
    """(file name, CSV text) of the history for these filters."""
    stem = f"alerts_{f.start.isoformat()}_{(f.end - timedelta(days=1)).isoformat()}"
    for part in (f.line, f.machine, f.severity):
        if part:
            stem += f"_{part}"
    return f"{stem}.csv", history_csv(aq.history(db, f), tz)


__all__ = ["register"]
