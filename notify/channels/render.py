"""Alert message text (pure): what, where, since, how long, level, an acknowledgement link.

Input is a delivery's payload (notify/alert_outbox.py `step_payload`), the reader's
language (zh | en) and the plant's time zone. Everything that came from outside (machine
names, facts) is cleaned of control characters, capped in length, and escaped for the
markup it goes into, so a machine named `**[x](http://evil)**` is shown, not rendered.

Sizes are UTF-8 bytes (a Chinese character is 3): the robots' limits count bytes.
"""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from mesflow.change_control import localized

Flavour = Literal["markdown", "text"]

MARKDOWN_LIMIT: Final = 4096  # WeCom markdown.content; used for DingTalk and Feishu too
TEXT_LIMIT: Final = 2048  # WeCom text.content
MAX_VALUE_CHARS: Final = 200  # one fact's value, shown
MAX_FACTS: Final = 12

_SEVERITY = {
    "zh": {"critical": "严重", "warning": "警告", "info": "提示"},
    "en": {"critical": "CRITICAL", "warning": "WARNING", "info": "INFO"},
}
_KIND = {
    "zh": {
        "machine_down": "停机",
        "no_reason": "停机未填原因",
        "kpi_below": "指标低于目标",
        "scrap_rate": "废品率过高",
        "silent": "无数据",
        "order_at_risk": "订单有延期风险",
        "process_limit": "工艺参数超限",
        "first_article": "首检未做或不合格",
        "patrol_missed": "巡检漏检",
    },
    "en": {
        "machine_down": "machine down",
        "no_reason": "stop without a reason",
        "kpi_below": "KPI below target",
        "scrap_rate": "scrap rate high",
        "silent": "no data",
        "order_at_risk": "order at risk",
        "process_limit": "process value out of limits",
        "first_article": "first article missing or failed",
        "patrol_missed": "patrol inspection missed",
    },
}
_WORDS = {
    "zh": {
        "opened": "新告警",
        "escalated": "已升级到第 {level} 级",
        "resolved": "已恢复，持续 {minutes} 分钟",
        "acknowledged": "已确认",
        "back_on_track": "已恢复正常进度",
        "where": "位置",
        "since": "开始于",
        "duration": "已持续",
        "minutes": "{minutes} 分钟",
        "level": "级别",
        "ack": "确认告警",
        "alerts": "{n} 条告警",
        "machine": "设备",
        "line": "产线",
        "order": "订单",
        "plant": "全厂",
        "notify": "通知",
    },
    "en": {
        "opened": "new alert",
        "escalated": "escalated to level {level}",
        "resolved": "resolved after {minutes} min",
        "acknowledged": "acknowledged",
        "back_on_track": "back on track",
        "where": "Where",
        "since": "Since",
        "duration": "For",
        "minutes": "{minutes} min",
        "level": "Level",
        "ack": "Acknowledge",
        "alerts": "{n} alerts",
        "machine": "machine",
        "line": "line",
        "order": "order",
        "plant": "plant",
        "notify": "For",
    },
}

# C0/C1 controls (NUL included) and the Unicode line/paragraph separators and bidi
# overrides: they break robots' JSON parsers or reorder what a reader sees.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# Characters that make markup in the robots' markdown (emphasis, links, code, WeCom's
# <@userid> and <font>). The robots do not honour backslash escapes (they would show), so
# these are replaced by their full-width look-alikes: the text reads the same, nothing renders.
_MD_SPECIAL = str.maketrans(
    {
        "*": "＊",
        "[": "［",
        "]": "］",
        "<": "＜",
        ">": "＞",
        "`": "｀",
        "\\": "＼",
        "_": "＿",
        "~": "～",
        "#": "＃",
    }
)
# Kinds that are notices, not alerts: nothing behind them to acknowledge (the floor
# confirms an order change on the andon/tablet), so their messages carry no ack link.
NOTICE_KINDS: Final = frozenset({"order_change"})
_ORDER_CHANGE = {
    "zh": {
        "head": "订单 {order} 已变更",
        "status": "已推送到相关机台（在安灯/平板上确认）",
        "change": "变更内容",
        "machines": "受影响设备",
        "line": "产线",
        "at": "变更时间",
        "request": "变更单",
    },
    "en": {
        "head": "order {order} changed",
        "status": "sent to the machines concerned (confirmed on the andon/tablet)",
        "change": "Change",
        "machines": "Machines",
        "line": "Line",
        "at": "Changed at",
        "request": "Change request",
    },
}
_ISO_IN_TEXT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:\d\d)")
# Facts the message already shows in its own lines.
_SHOWN = frozenset({"since", "minutes", "duration_s", "level"})
_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d")


def clean(value: object, max_chars: int = MAX_VALUE_CHARS) -> str:
    """A value from outside as one safe line: controls become spaces, long text is cut."""
    text = _CONTROL.sub(" ", str(value)).strip()
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return text


def md_escape(value: object, max_chars: int = MAX_VALUE_CHARS) -> str:
    """`clean`, then markdown's special characters neutralised, so they show as text."""
    return clean(value, max_chars).translate(_MD_SPECIAL)


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def cut_to_bytes(text: str, limit: int, tail: str = "…") -> str:
    """`text` shortened to at most `limit` UTF-8 bytes, never splitting a character."""
    if utf8_len(text) <= limit:
        return text
    room = max(0, limit - utf8_len(tail))
    cut = text.encode("utf-8")[:room].decode("utf-8", errors="ignore")
    return cut + tail


def lang_of(language: str) -> str:
    return language if language in _WORDS else "zh"


def _local(iso: str, tz: ZoneInfo) -> str:
    return datetime.fromisoformat(iso).astimezone(tz).strftime("%Y-%m-%d %H:%M")


def since(payload: Mapping[str, Any]) -> datetime:
    """When the condition began (the engine's `facts.since`), else when the alert opened."""
    facts = payload.get("facts")
    if isinstance(facts, Mapping) and isinstance(facts.get("since"), str):
        with contextlib.suppress(ValueError):
            value = datetime.fromisoformat(facts["since"])
            if value.tzinfo is not None:
                return value
    return datetime.fromisoformat(str(payload["opened_at"]))


def minutes_between(payload: Mapping[str, Any]) -> int:
    """How long the condition has lasted at this step (on the resolve: its whole duration)."""
    facts = payload.get("facts")
    if isinstance(facts, Mapping):
        dur = facts.get("duration_s")
        if isinstance(dur, int | float) and not isinstance(dur, bool) and dur >= 0:
            return round(dur / 60)
    at = datetime.fromisoformat(str(payload["at"]))
    return max(0, round((at - since(payload)).total_seconds() / 60))


@dataclass(frozen=True, slots=True)
class Parts:
    """The pieces of one alert message, already cleaned (not yet escaped for markup)."""

    title: str  # "[严重] IM-03 停机"
    sev: str  # "严重" (our own word: safe in markup)
    head: str  # "IM-03 停机" (holds a name from outside)
    status: str  # "新告警" / "resolved after 42 min"
    fields: tuple[tuple[str, str], ...]  # (label, value), in order
    ack_url: str | None
    severity: str


def acknowledgeable(payload: Mapping[str, Any]) -> bool:
    """Whether the message may carry an acknowledgement link (not for notices)."""
    return str(payload.get("kind", "")) not in NOTICE_KINDS


def _change_text(text: str, lang: str, tz: ZoneInfo) -> str:
    """mesflow/change_control.py `summary` ("qty 1000 → 1500; due <iso> → <iso>") in the
    reader's words, times in plant time."""

    def local(m: re.Match[str]) -> str:
        try:
            return _local(m.group(0).replace("Z", "+00:00"), tz)
        except ValueError:
            return m.group(0)

    # The field names and order states in the reader's language: as the boards show them.
    return localized(_ISO_IN_TEXT.sub(local, text), lang)


def _order_change_parts(payload: Mapping[str, Any], lang: str, tz: ZoneInfo) -> Parts:
    w = _ORDER_CHANGE[lang]
    severity = str(payload.get("severity", "warning"))
    sev = _SEVERITY[lang].get(severity, clean(severity, 20))
    facts = payload.get("facts")
    facts = facts if isinstance(facts, Mapping) else {}
    order = clean(payload.get("order_no") or "?", 64)
    fields: list[tuple[str, str]] = []
    if facts.get("change"):
        fields.append((w["change"], clean(_change_text(str(facts["change"]), lang, tz))))
    if facts.get("machines"):
        fields.append((w["machines"], clean(facts["machines"])))
    if payload.get("line"):
        fields.append((w["line"], clean(payload["line"], 64)))
    at = payload.get("at") or payload.get("opened_at")
    if isinstance(at, str):
        with contextlib.suppress(ValueError):
            fields.append((w["at"], f"{_local(at, tz)} ({tz.key})"))
    if facts.get("change_request") is not None:
        fields.append((w["request"], f"#{clean(facts['change_request'], 20)}"))
    head = w["head"].format(order=order)
    return Parts(f"[{sev}] {head}", sev, head, w["status"], tuple(fields), None, severity)


def parts(payload: Mapping[str, Any], language: str, tz: ZoneInfo, ack_url: str | None) -> Parts:
    lang = lang_of(language)
    if payload.get("kind") == "order_change":  # a notice: no level, no duration, no ack link
        return _order_change_parts(payload, lang, tz)
    w = _WORDS[lang]
    severity = str(payload.get("severity", "warning"))
    sev = _SEVERITY[lang].get(severity, clean(severity, 20))
    kind = str(payload.get("kind", ""))
    what = _KIND[lang].get(kind, clean(kind, 40))
    subject = payload.get("machine") or payload.get("order_no") or payload.get("line")
    subject_s = clean(subject, 64) if subject else w["plant"]
    step = str(payload.get("step", "opened"))
    minutes = minutes_between(payload)
    level = int(payload.get("level", 0))
    if step == "resolved" and kind == "order_at_risk":
        status = w["back_on_track"]
    elif step in ("escalated", "resolved", "acknowledged", "opened"):
        status = w[step].format(level=level + 1, minutes=minutes)
    else:
        status = clean(step, 20)
    where = []
    for key, label in (("machine", "machine"), ("line", "line"), ("order_no", "order")):
        if payload.get(key):
            where.append(f"{w[label]} {clean(payload[key], 64)}")
    fields: list[tuple[str, str]] = [
        (w["where"], " · ".join(where) or w["plant"]),
        (w["since"], f"{since(payload).astimezone(tz).strftime('%Y-%m-%d %H:%M')} ({tz.key})"),
        (w["duration"], w["minutes"].format(minutes=minutes)),
        (w["level"], str(level + 1)),
    ]
    facts = payload.get("facts") or {}
    if isinstance(facts, Mapping):
        extra = [(k, v) for k, v in facts.items() if k not in _SHOWN]
        for i, (key, value) in enumerate(extra):
            if i >= MAX_FACTS:
                fields.append(("…", f"+{len(extra) - MAX_FACTS}"))
                break
            if isinstance(value, str) and _ISO.match(value):
                with contextlib.suppress(ValueError):  # a due date or ETA: plant time
                    value = _local(value, tz)
            fields.append((clean(key, 40), clean(value)))
    if step in ("resolved", "acknowledged"):
        ack_url = None  # nothing left to acknowledge
    head = f"{subject_s} {what}"
    return Parts(f"[{sev}] {head}", sev, head, status, tuple(fields), ack_url, severity)


def markdown_block(p: Parts, language: str) -> str:
    """One alert as markdown (WeCom, DingTalk and Feishu understand this subset)."""
    w = _WORDS[lang_of(language)]
    lines = [f"**【{p.sev}】{md_escape(p.head)}** {md_escape(p.status)}"]
    lines += [f"> {md_escape(label, 40)}: {md_escape(value)}" for label, value in p.fields]
    if p.ack_url:
        lines.append(f"[{w['ack']}]({p.ack_url})")
    return "\n".join(lines)


def text_block(p: Parts, language: str) -> str:
    """One alert as plain text (e-mail's text part, WeCom text messages)."""
    w = _WORDS[lang_of(language)]
    lines = [f"{p.title} {p.status}"]
    lines += [f"{label}: {value}" for label, value in p.fields]
    if p.ack_url:
        lines.append(f"{w['ack']}: {p.ack_url}")
    return "\n".join(lines)


def html_body(p: Parts, language: str) -> str:
    w = _WORDS[lang_of(language)]
    esc = html.escape
    colour = {"critical": "#c62828", "warning": "#ef6c00"}.get(p.severity, "#1565c0")
    rows = "".join(
        f"<tr><th align='left' style='padding-right:1em'>{esc(label)}</th><td>{esc(value)}</td></tr>"
        for label, value in p.fields
    )
    ack = f"<p><a href='{esc(p.ack_url, quote=True)}'>{esc(w['ack'])}</a></p>" if p.ack_url else ""
    return (
        f"<html><body><h2 style='color:{colour}'>{esc(p.title)}</h2>"
        f"<p><b>{esc(p.status)}</b></p><table>{rows}</table>{ack}</body></html>"
    )


def subject(p: Parts) -> str:
    return clean(f"{p.title} — {p.status}", 150)


def merged_header(n: int, language: str, markdown: bool) -> str:
    text = _WORDS[lang_of(language)]["alerts"].format(n=n)
    return f"**{text}**" if markdown else text


SEPARATOR: Final = "\n\n"


def pack(
    blocks: Sequence[str],
    limit: int,
    language: str,
    *,
    markdown: bool,
    reserve: int = 0,
) -> list[tuple[list[int], str]]:
    """Group rendered alerts into messages of at most `limit` UTF-8 bytes.

    Each message is a header ("3 条告警") and as many blocks as fit, in order; the rest go
    into the next message, so nothing is dropped. A block too long for a message on its own
    is shortened to fit. `reserve` bytes are left free (for mentions). Returns
    (indices of the blocks, text) per message.
    """
    room = limit - reserve
    out: list[tuple[list[int], str]] = []
    current: list[int] = []

    def text_of(idx: list[int]) -> str:
        if len(idx) == 1:
            return fit(blocks[idx[0]])
        head = merged_header(len(idx), language, markdown)
        return SEPARATOR.join([head, *(fit(blocks[i]) for i in idx)])

    def fit(block: str) -> str:
        # The largest header ("999 条告警") and a separator always fit beside a block.
        return cut_to_bytes(block, room - 40)

    for i in range(len(blocks)):
        trial = [*current, i]
        if current and utf8_len(text_of(trial)) > room:
            out.append((current, text_of(current)))
            current = [i]
        else:
            current = trial
    if current:
        out.append((current, text_of(current)))
    return out
