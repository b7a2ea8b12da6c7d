"""Sources (/sources, manager): is every collector connected, and is every machine heard from?

One row per collector and endpoint (an MQTT broker, an OPC UA endpoint, a Sparkplug broker):
connected (green) / disconnected (red) / stale (grey: the collector stopped reporting, so its
state is unknown), since when, last message, messages per second, errors with the last one.
Below, per machine, the last input the ingest log holds and where it came from; machines
silent longer than the andon's threshold (settings.andon_silent_s) stand out.
Refreshed every 5 s; times in plant time. docs/collectors.md explains the rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Any, Final

import dash
import psycopg
from dash import Input, Output, State, dcc, html

from dashboards import auth, context
from dashboards import source_queries as sq
from dashboards.nav import page_header
from dashboards.widgets import page_text

log = logging.getLogger(__name__)

PATH: Final = "/sources"
ROLE: Final = "manager"
REFRESH_MS: Final = 5000

_P = "sources-"
_LANG = f"{_P}lang"
_TICK = f"{_P}tick"
_BODY = f"{_P}body"

STRINGS: Final[dict[str, dict[str, str]]] = {
    "title": {"zh": "数据源", "en": "Sources"},
    "hint": {
        "zh": "每个采集程序及其连接的端点：是否连接、自何时、最后一条消息、每秒消息数和错误。灰色：采集程序已停止上报，状态未知。",
        "en": "Each collector and the endpoints it reads: connected or not, since when, last "
              "message, messages per second, errors. Grey: the collector stopped reporting, "
              "so its state is unknown.",
    },
    "kind": {"zh": "类型", "en": "Kind"},
    "instance": {"zh": "实例", "en": "Instance"},
    "endpoint": {"zh": "端点", "en": "Endpoint"},
    "state": {"zh": "状态", "en": "State"},
    "since": {"zh": "自", "en": "Since"},
    "last_message": {"zh": "最后消息", "en": "Last message"},
    "rate": {"zh": "消息/秒", "en": "Msg/s"},
    "errors": {"zh": "错误", "en": "Errors"},
    "connected": {"zh": "已连接", "en": "connected"},
    "disconnected": {"zh": "已断开", "en": "disconnected"},
    "stale": {"zh": "无上报", "en": "not reporting"},
    "no_sources": {
        "zh": "还没有采集程序上报状态（mesflow run collector-mqtt / opcua / sparkplug）。",
        "en": "No collector has reported yet (mesflow run collector-mqtt / opcua / sparkplug).",
    },
    "machines": {"zh": "设备最后输入", "en": "Last input per machine"},
    "machine": {"zh": "设备", "en": "Machine"},
    "line": {"zh": "产线", "en": "Line"},
    "last_input": {"zh": "最后输入", "en": "Last input"},
    "source": {"zh": "来源", "en": "Source"},
    "event_time": {"zh": "最新事件时间", "en": "Latest event time"},
    "silent": {"zh": "超过 {m} 分钟无数据", "en": "silent over {m} min"},
    "never": {"zh": "从未收到", "en": "never heard from"},
    "machines_more": {
        "zh": "显示 {total} 台中的 {n} 台：无数据的设备在前（{silent} 台），其余均在正常接收",
        "en": "{n} of {total} machines shown: the silent ones first ({silent}); the others are"
        " all receiving",
    },
    "db_error": {"zh": "数据库不可用", "en": "Database unreachable"},
}  # fmt: skip


# Columns whose cells are right-aligned figures and times: their headers too.
_NUMERIC: Final = frozenset({"since", "last_message", "rate", "last_input", "event_time"})


def s(key: str, lang: str, **kw: Any) -> str:
    return page_text(STRINGS, key, lang, **kw)


def register(app: dash.Dash) -> None:
    dash.register_page(
        __name__,
        path=PATH,
        name="Sources",
        order=60,
        nav=True,
        nav_label={"zh": "数据源", "en": "Sources"},
        layout=layout,
        title="Sources · mesflow",
        min_role=ROLE,
    )
    auth.callback(
        app,
        ROLE,
        Output(_BODY, "children"),
        Input(_TICK, "n_intervals"),
        State(_LANG, "data"),
    )(_refresh)


def layout(lang: str | None = None, **_q: str) -> html.Div:
    ctx = context.current()
    lang = ctx.lang(lang)
    plant = ctx.plant
    return html.Div(
        className=f"orders sources-page lang-{lang}",
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
            html.P(s("hint", lang), className="orders-note"),
            html.Div(id=_BODY, className="sources-body"),
        ],
    )


def _t(ts: datetime | None, tz: tzinfo) -> str:
    return ts.astimezone(tz).strftime("%m-%d %H:%M:%S") if ts is not None else "—"


def _secs(now: datetime, ts: datetime | None) -> float | None:
    return (now - ts).total_seconds() if ts is not None else None


def render(
    sources: list[sq.SourceRow],
    machines: list[sq.MachineInput],
    now: datetime,
    tz: tzinfo,
    silent_after_s: float,
    lang: str,
) -> list[Any]:
    out: list[Any] = []
    if not sources:
        out.append(html.Div(s("no_sources", lang), className="orders-empty"))
    else:
        head = html.Tr(
            [html.Th(s(k, lang), className="num" if k in _NUMERIC else None)
             for k in ("kind", "instance", "endpoint", "state", "since", "last_message", "rate",
                       "errors")]
        )  # fmt: skip
        rows = []
        for r in sources:
            st = sq.status(r)
            rate = "—" if r.messages_per_s is None or st == "stale" else f"{r.messages_per_s:.1f}"
            err: list[Any] = [html.Span(str(r.errors_total), className="num")]
            if r.last_error:
                err.append(
                    html.Div(
                        f"{_t(r.last_error_at, tz)} {r.last_error}", className="source-last-error"
                    )
                )
            rows.append(
                html.Tr(
                    className=f"source-row source-{st}",
                    children=[
                        html.Td(r.kind),
                        html.Td(r.instance),
                        html.Td(r.endpoint, className="source-endpoint"),
                        html.Td(html.Span(s(st, lang), className=f"source-badge {st}")),
                        html.Td(_t(r.since, tz), className="num"),
                        html.Td(
                            sq.ago(_secs(now, r.last_message_at), lang),
                            title=_t(r.last_message_at, tz),
                            className="num",
                        ),
                        html.Td(rate, className="num"),
                        html.Td(
                            err,
                            className="source-errors" + (" has-errors" if r.errors_total else ""),
                        ),
                    ],
                )
            )
        out.append(
            html.Div(
                html.Table([html.Thead(head), html.Tbody(rows)], className="orders-table"),
                className="orders-table-wrap",
            )
        )
    out.append(html.H2(s("machines", lang), className="sources-subtitle"))
    shown, silent_n = machines_shown(machines, silent_after_s)
    if len(shown) < len(machines):
        out.append(
            html.P(
                s("machines_more", lang, n=len(shown), total=len(machines), silent=silent_n),
                className="orders-note sources-more",
            )
        )
    head = html.Tr(
        [
            html.Th(s(k, lang), className="num" if k in _NUMERIC else None)
            for k in ("machine", "line", "last_input", "source", "event_time")
        ]
    )
    mrows = []
    for m in shown:
        silent = sq.is_silent(m, silent_after_s)
        if m.received_at is None:
            when: Any = html.Span(s("never", lang), className="source-silent-badge")
        else:
            when = [html.Span(sq.ago(m.silent_s, lang), title=_t(m.received_at, tz))]
            if silent:
                when.append(
                    html.Span(
                        s("silent", lang, m=round(silent_after_s / 60)),
                        className="source-silent-badge",
                    )
                )
        mrows.append(
            html.Tr(
                className="machine-input-row" + (" silent" if silent else ""),
                children=[
                    html.Td(m.machine),
                    html.Td(m.line),
                    html.Td(when, className="num"),
                    html.Td(m.source or "—", className="source-endpoint"),
                    html.Td(_t(m.last_event_ts, tz), className="num"),
                ],
            )
        )
    out.append(
        html.Div(
            html.Table([html.Thead(head), html.Tbody(mrows)], className="orders-table"),
            className="orders-table-wrap",
        )
    )
    return out


# Machine rows on the page, which refreshes every few seconds: a row is several components
# and the browser's Dash renderer takes time that grows faster than them (500 machines'
# rows would block it for tens of seconds at each refresh; docs/performance.md "Boards at
# scale"). What the page is for is finding the silent ones, so they come first.
MACHINES_SHOWN: Final = 50


def machines_shown(
    machines: Sequence[sq.MachineInput], silent_after_s: float
) -> tuple[list[sq.MachineInput], int]:
    """(the rows to show, how many machines are silent): every machine in plant order when
    they fit, else the silent ones first (each group in plant order), MACHINES_SHOWN rows."""
    silent = [m for m in machines if sq.is_silent(m, silent_after_s)]
    if len(machines) <= MACHINES_SHOWN:
        return list(machines), len(silent)
    heard = [m for m in machines if not sq.is_silent(m, silent_after_s)]
    return (silent + heard)[:MACHINES_SHOWN], len(silent)


def _refresh(_n: Any, lang: Any) -> Any:
    ctx = context.current()
    lang = ctx.lang(lang)
    try:
        sources, machines, now = ctx.db.run(sq.read_all)
    except psycopg.Error as err:
        log.warning("sources: cannot read source health: %s", type(err).__name__)
        return html.Div(s("db_error", lang), className="orders-empty")
    return render(sources, machines, now, ctx.plant.tz, ctx.settings.andon_silent_s, lang)
