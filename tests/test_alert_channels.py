"""Alert channels, pure: the alerts file's people/channels models, message rendering,
merging within the robots' byte limit, signatures, error codes and the budget window."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from mesflow.alert_channels import Channels, People, Person
from notify.channels import dingtalk, feishu, wecom
from notify.channels import render as r
from notify.robot_budget import Hold, window

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


class File(BaseModel):
    people: People = {}
    channels: Channels = {}


def errors(data: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    try:
        File.model_validate(data, context={"environ": environ or {}})
    except ValidationError as err:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
    return []


# --- the alerts file --------------------------------------------------------------------


def test_people_validate_with_clear_errors() -> None:
    ok = {"display": "张伟", "email": "zhang@plant.example", "mobile": 13800000001}
    assert errors({"people": {"zhang": ok}}) == []
    assert Person.model_validate(ok).mobile == "13800000001"  # unquoted YAML number
    (e,) = errors({"people": {"zhang": {**ok, "email": "zhang.plant.example"}}})
    assert e.startswith("people.zhang.email:") and "not an e-mail address" in e
    (e,) = errors({"people": {"zhang": {**ok, "mobile": "138 0000 0001"}}})
    assert "people.zhang.mobile" in e and "digits" in e
    (e,) = errors({"people": {"zhang": {**ok, "language": "de"}}})
    assert "people.zhang.language" in e
    (e,) = errors({"people": {"li": {"display": "Li"}}})
    assert "nothing can reach this person" in e
    (e,) = errors({"people": {"li": {"display": "Li", "email": "li@x.example", "phone": "1"}}})
    assert "people.li.phone" in e and "Extra inputs" in e


def test_channel_url_env_is_resolved_at_load_and_named_when_unset() -> None:
    data = {"channels": {"line1-wecom": {"type": "wecom", "url_env": "MESFLOW_WECOM_LINE1"}}}
    (e,) = errors(data)
    assert e.startswith("channels.line1-wecom")
    assert "line1-wecom" in e.split(":", 1)[1] and "MESFLOW_WECOM_LINE1" in e
    url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc"
    f = File.model_validate(data, context={"environ": {"MESFLOW_WECOM_LINE1": url}})
    ch = f.channels["line1-wecom"]
    assert ch.endpoint == url and ch.name == "line1-wecom"
    assert "abc" not in repr(ch) and "abc" not in json.dumps(ch.model_dump())


def test_channel_rules() -> None:
    env = {"U": "https://x.example/h", "S": "SECabc"}
    ding = {"type": "dingtalk", "url_env": "U", "secret_env": "S2"}
    (e,) = errors({"channels": {"mgmt": ding}}, env)
    assert "mgmt" in e and "S2" in e and "not set" in e
    assert errors({"channels": {"mgmt": {**ding, "secret_env": "S"}}}, env) == []
    # A robot URL in the file would put its key in git.
    (e,) = errors({"channels": {"w": {"type": "wecom", "url": "https://q.example/?key=1"}}}, env)
    assert "url_env" in e
    (e,) = errors({"channels": {"w": {"type": "wecom", "url_env": "U", "secret_env": "S"}}}, env)
    assert "not signed" in e
    (e,) = errors({"channels": {"w": {"type": "wecom", "url_env": "K"}}}, {"K": "abc-key"})
    assert "full URL" in e
    (e,) = errors({"channels": {"w": {"type": "sms", "url_env": "U"}}}, env)
    assert "channels.w.type" in e
    hook = {"type": "webhook", "url": "https://it.example/hook"}
    assert errors({"channels": {"it": hook}}) == []
    (e,) = errors({"channels": {"it": {**hook, "url_env": "U"}}}, env)
    assert "exactly one of url, url_env" in e


# --- rendering --------------------------------------------------------------------------


def payload(machine: str = "IM-03", step: str = "opened", **facts: object) -> dict[str, Any]:
    return {
        "alert_id": f"down-long:machine:{machine}:1",
        "kind": "machine_down",
        "machine": machine,
        "line": "L1",
        "order_no": None,
        "severity": "critical",
        "step": step,
        "level": 1,
        "at": (T0 + timedelta(minutes=42)).isoformat(),
        "opened_at": T0.isoformat(),
        "facts": facts or {"reason": "模具更换"},
    }


def test_render_in_both_languages_in_plant_time() -> None:
    zh = r.text_block(r.parts(payload(), "zh", TZ, "https://mes/ack/t"), "zh")
    assert "[严重] IM-03 停机" in zh and "已升级" not in zh
    assert "2026-11-30 10:00 (Asia/Shanghai)" in zh  # 02:00 UTC in plant time
    assert "42 分钟" in zh and "级别: 2" in zh and "确认告警: https://mes/ack/t" in zh
    en = r.text_block(r.parts(payload(step="resolved"), "en", TZ, "https://mes/ack/t"), "en")
    assert "[CRITICAL] IM-03 machine down resolved after 42 min" in en
    assert "Acknowledge" not in en  # nothing left to acknowledge
    esc = r.markdown_block(r.parts(payload(step="escalated"), "zh", TZ, None), "zh")
    assert "已升级到第 2 级" in esc


def test_markdown_injection_and_controls_are_neutralised() -> None:
    evil = "x**](http://e)\n# big\x00\u202e<@all>"
    md = r.markdown_block(r.parts(payload(machine=evil, note=evil), "en", TZ, None), "en")
    assert "\x00" not in md and "\u202e" not in md and "<@all>" not in md
    assert "\n# big" not in md  # no heading injected: one line per field
    assert "](http://e)" not in md


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=3000), st.integers(256, 4096))
def test_cut_to_bytes_never_exceeds_nor_splits(text: str, limit: int) -> None:
    out = r.cut_to_bytes(text, limit)
    assert len(out.encode("utf-8")) <= limit
    out.encode("utf-8").decode("utf-8")


def test_pack_real_limit_100_chinese_alerts_all_kept_in_order() -> None:
    blocks = [
        r.markdown_block(
            r.parts(
                payload(machine=f"注塑机-{n:03d}", 原因="模具更换，等待质检" * 5),
                "zh",
                TZ,
                "https://mes.plant.example/ack/" + "t" * 80,
            ),
            "zh",
        )
        for n in range(100)
    ]
    reserve = len(wecom.mention_suffix([{"wecom_userid": "zhangwei"}]).encode())
    msgs = r.pack(blocks, r.MARKDOWN_LIMIT, "zh", markdown=True, reserve=reserve)
    assert [i for idx, _ in msgs for i in idx] == list(range(100))  # nothing lost, in order
    for idx, text in msgs:
        assert len(text.encode("utf-8")) <= r.MARKDOWN_LIMIT - reserve
        if len(idx) > 1:
            assert text.startswith(f"**{len(idx)} 条告警**")
        for i in idx:
            assert f"注塑机-{i:03d}" in text
    # Well filled, by bytes (Chinese is 3 a character): few messages for the burst.
    assert max(len(t.encode()) for _, t in msgs) > 0.8 * r.MARKDOWN_LIMIT
    assert any(len(t) <= 0.8 * r.MARKDOWN_LIMIT for _, t in msgs)
    assert len(msgs) <= 20  # a burst of 100 fits in one minute's budget


def test_pack_shortens_a_single_oversized_alert() -> None:
    block = r.markdown_block(r.parts(payload(big="长" * 100_000), "zh", TZ, None), "zh")
    ((idx, text),) = r.pack([block], 4096, "zh", markdown=True)
    assert idx == [0] and len(text.encode()) <= 4096


# --- signatures and answers ---------------------------------------------------------------


def test_dingtalk_signature_matches_the_documented_algorithm() -> None:
    secret, ts = "SEC0123456789abcdef", 1764460800000
    url = dingtalk.signed_url("https://oapi.dingtalk.com/robot/send?access_token=t", secret, ts)
    sign = unquote(url.rsplit("sign=", 1)[1])
    mac = hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
    assert sign == base64.b64encode(mac).decode()
    assert f"&timestamp={ts}&" in url


def test_feishu_signature_matches_the_documented_algorithm() -> None:
    secret, ts = "feishu-secret", 1764460800
    body = feishu.body("t", "c", "critical", [], secret, ts)
    mac = hmac.new(f"{ts}\n{secret}".encode(), b"", hashlib.sha256).digest()
    assert body["sign"] == base64.b64encode(mac).decode() and body["timestamp"] == str(ts)


def answer(data: object, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=data)


@pytest.mark.parametrize(
    ("classify", "data", "outcome"),
    [
        (wecom.classify, {"errcode": 0, "errmsg": "ok"}, "ok"),
        (wecom.classify, {"errcode": 45009, "errmsg": "api freq out of limit"}, "rate_limited"),
        (wecom.classify, {"errcode": 93000, "errmsg": "invalid webhook url"}, "bad_key"),
        (wecom.classify, {"errcode": 40058, "errmsg": "exceed max length"}, "too_long"),
        (wecom.classify, {"errcode": -1, "errmsg": "system busy"}, "retry"),
        (wecom.classify, {"errmsg": "ok"}, "retry"),  # no errcode: not counted as sent
        (dingtalk.classify, {"errcode": 130101, "errmsg": "send too fast"}, "rate_limited"),
        (dingtalk.classify, {"errcode": 310000, "errmsg": "sign not match"}, "bad_key"),
        (dingtalk.classify, {"errcode": 0, "errmsg": "ok"}, "ok"),
        (feishu.classify, {"code": 11232, "msg": "frequency limited"}, "rate_limited"),
        (feishu.classify, {"code": 19021, "msg": "sign match fail"}, "bad_key"),
        (feishu.classify, {"code": 0, "msg": "success"}, "ok"),
        (feishu.classify, {"StatusCode": 0, "StatusMessage": "success"}, "ok"),
        (feishu.classify, "not an object", "retry"),
    ],
)
def test_only_code_zero_counts_as_sent(classify: Any, data: object, outcome: str) -> None:
    assert classify(answer(data)).outcome == outcome


def test_http_errors_are_retried_and_429_is_a_rate_limit() -> None:
    assert wecom.classify(answer({}, 502)).outcome == "retry"
    assert dingtalk.classify(answer({}, 429)).outcome == "rate_limited"


# --- the budget window, with the real numbers ----------------------------------------------


def test_window_twenty_a_minute() -> None:
    sends = [T0 + timedelta(seconds=i) for i in range(20)]
    w = window(sends, T0 + timedelta(seconds=30))
    assert w.available == 0 and w.next_free_in_s == pytest.approx(30.0)
    w = window(sends, T0 + timedelta(seconds=60.5))
    assert w.available == 1 and len(w.sends) == 19  # the first left the window
    assert window([], T0).available == 20


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 300), max_size=200))
def test_a_sliding_window_never_holds_more_than_the_limit(offsets: list[float]) -> None:
    """Granting only what `window` allows keeps every 60 s span at <= 20 sends."""
    granted: list[datetime] = []
    for off in sorted(offsets):
        now = T0 + timedelta(seconds=off)
        if window(granted, now).available:
            granted.append(now)
    for i, t in enumerate(granted):
        inside = [u for u in granted[i:] if u - t < timedelta(seconds=60)]
        assert len(inside) <= 20


def test_hold_keeps_every_limit() -> None:
    h = Hold(T0, (), ((20, 60.0), (4, 1.0)))
    assert h.take(10) == 4  # the per-second limit
    assert h.next_free_after_in_s == pytest.approx(1.0)
    later = Hold(T0 + timedelta(seconds=1.5), tuple(h.kept()), ((20, 60.0), (4, 1.0)))
    assert later.available == 4
    full = Hold(T0, tuple(T0 - timedelta(seconds=i) for i in range(20)), ((20, 60.0),))
    assert full.available == 0 and full.take(1) == 0
    assert full.next_free_after_in_s == pytest.approx(41.0)


def test_since_and_duration_come_from_the_condition_start() -> None:
    """The engine's facts: `since` (condition start, plant time) and `duration_s` on the
    resolve; the alert itself opened after level 0's delay."""
    p = payload(step="resolved")
    p["facts"] = {"since": "2026-11-30T09:55:00+08:00", "minutes": 47.0, "duration_s": 2820.0}
    text = r.text_block(r.parts(p, "en", TZ, None), "en")
    assert "resolved after 47 min" in text and "Since: 2026-11-30 09:55" in text
    assert "duration_s" not in text  # shown in its own words, not repeated as a fact
    p = payload(step="escalated")
    p["facts"] = {"since": "2026-11-30T09:55:00+08:00"}
    assert "已持续: 47 分钟" in r.text_block(r.parts(p, "zh", TZ, None), "zh")
