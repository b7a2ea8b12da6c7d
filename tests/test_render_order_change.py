"""An order change pushed to a line's supervisors (mesflow/change_control.py
push_supervisors) reads as a notice in the reader's language: the order, what changed
(times in plant time), which machines, and no acknowledgement link in any flavour (the
floor confirms it on the andon/tablet). Alerts keep their link."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from notify.channels import render as r
from notify.channels import webhook

TZ = ZoneInfo("Asia/Shanghai")
AT = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
ACK = "https://mes.example/ack?t=abc"


def order_change() -> dict[str, Any]:
    # the payload notify/alert_outbox.step_payload makes of push_supervisors' AlertRow
    return {
        "alert_id": "order_change:12:L1",
        "rule": "order_changes",
        "kind": "order_change",
        "scope": "order:SO-1001",
        "machine": None,
        "line": "L1",
        "order_no": "SO-1001",
        "severity": "warning",
        "step": "opened",
        "level": 0,
        "at": AT.isoformat(),
        "opened_at": AT.isoformat(),
        "facts": {
            "change": "qty 1000 → 1500; due 2026-12-01T08:00:00+00:00 → 2026-12-02T08:00:00+00:00",
            "machines": "IM-01, IM-02",
            "change_request": 12,
        },
    }


def all_flavours(p: r.Parts, lang: str) -> str:
    return "\n".join([r.markdown_block(p, lang), r.text_block(p, lang), r.html_body(p, lang)])


def test_order_change_in_chinese() -> None:
    p = r.parts(order_change(), "zh", TZ, ACK)
    text = r.text_block(p, "zh")
    assert p.title == "[警告] 订单 SO-1001 已变更"
    assert "变更内容: 数量 1000 → 1500; 交期 2026-12-01 16:00 → 2026-12-02 16:00" in text
    assert "受影响设备: IM-01, IM-02" in text
    assert "产线: L1" in text
    assert "变更时间: 2026-11-30 10:00 (Asia/Shanghai)" in text
    assert "变更单: #12" in text
    out = all_flavours(p, "zh")
    assert "order_change" not in out and "级别" not in out and "已持续" not in out
    assert ACK not in out and "确认告警" not in out


def test_order_change_in_english() -> None:
    p = r.parts(order_change(), "en", TZ, ACK)
    text = r.text_block(p, "en")
    assert p.title == "[WARNING] order SO-1001 changed"
    assert "Change: qty 1000 → 1500; due 2026-12-01 16:00 → 2026-12-02 16:00" in text
    assert "Machines: IM-01, IM-02" in text
    out = all_flavours(p, "en")
    assert "order_change" not in out and "Level" not in out
    assert ACK not in out and "Acknowledge" not in out
    assert r.subject(p).startswith("[WARNING] order SO-1001 changed")


def test_names_from_outside_stay_text() -> None:
    ev = order_change()
    ev["order_no"] = "**[x](http://evil)**"
    block = r.markdown_block(r.parts(ev, "en", TZ, ACK), "en")
    assert "](http" not in block and "**[x]" not in block


def test_alerts_keep_their_link_and_webhooks_get_none_for_a_notice() -> None:
    alert = order_change() | {"kind": "machine_down", "machine": "IM-01", "facts": {}}
    assert r.acknowledgeable(alert) and not r.acknowledgeable(order_change())
    assert ACK in r.text_block(r.parts(alert, "en", TZ, ACK), "en")
    body = webhook.body(order_change(), None)
    assert ACK not in str(body)
