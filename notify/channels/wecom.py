"""WeCom (企业微信) group robot: `POST .../cgi-bin/webhook/send?key=<key>` (the key is the
credential; no signing).

Markdown mentions only by user id (`<@userid>`); `mentioned_mobile_list` works only in
`text` messages (official doc 91770/99110). So a step that must mention someone known only
by mobile number goes as `text` (≤ 2,048 bytes), otherwise as `markdown` (≤ 4,096 bytes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import httpx

from notify.channels import OK, SendResult, http_failure, json_body
from notify.channels.render import MARKDOWN_LIMIT, TEXT_LIMIT

RATE_LIMITED: Final = 45009  # api freq out of limit (20 messages a minute)
BAD_KEY: Final = 93000  # invalid webhook url: deleted robot or wrong key
TOO_LONG: Final = 40058  # markdown.content exceed max length 4096
# 93000 is the documented one; these also mean the URL/key itself is wrong.
_BAD_KEY_CODES: Final = frozenset({93000, 40013, 40014, 42001})


def use_text(mentions: Sequence[Mapping[str, Any]]) -> bool:
    """Text (which can mention by mobile) when someone has a mobile but no user id."""
    return any(m.get("mobile") and not m.get("wecom_userid") for m in mentions)


def limit(mentions: Sequence[Mapping[str, Any]]) -> int:
    return TEXT_LIMIT if use_text(mentions) else MARKDOWN_LIMIT


def mention_suffix(mentions: Sequence[Mapping[str, Any]]) -> str:
    """What markdown appends to mention people (text messages mention in their fields)."""
    if use_text(mentions):
        return ""
    ids = [f"<@{m['wecom_userid']}>" for m in mentions if m.get("wecom_userid")]
    return ("\n" + " ".join(ids)) if ids else ""


def body(content: str, mentions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """`content` is markdown, or plain text when `use_text(mentions)`."""
    if use_text(mentions):
        return {
            "msgtype": "text",
            "text": {
                "content": content,
                "mentioned_list": [m["wecom_userid"] for m in mentions if m.get("wecom_userid")],
                "mentioned_mobile_list": [m["mobile"] for m in mentions if m.get("mobile")],
            },
        }
    return {"msgtype": "markdown", "markdown": {"content": content + mention_suffix(mentions)}}


def classify(resp: httpx.Response) -> SendResult:
    if resp.status_code != 200:
        return http_failure(resp.status_code, resp.text)
    data = json_body(resp)
    if data is None or not isinstance(data.get("errcode"), int):
        return SendResult("retry", "no errcode", f"unreadable answer: {resp.text[:200]!r}")
    code = data["errcode"]
    msg = str(data.get("errmsg", ""))[:200]
    if code == 0:
        return OK
    error = f"WeCom errcode {code}: {msg}"
    if code == RATE_LIMITED:
        return SendResult("rate_limited", str(code), error)
    if code in _BAD_KEY_CODES:
        return SendResult("bad_key", str(code), error)
    if code == TOO_LONG:
        return SendResult("too_long", str(code), error)
    return SendResult("retry", str(code), error)
