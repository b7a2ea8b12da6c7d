"""Feishu/Lark custom bot: `POST .../open-apis/bot/v2/hook/<token>`, an interactive card
with a markdown element, signed in the body.

Signing: sign = base64(HMAC-SHA256(key=f"{timestamp}\\n{secret}", msg=b"")) — key and
message the other way round from DingTalk — with the timestamp in seconds.
Mentions in a custom bot's card need Feishu open ids, which the alerts file does not have:
people are named, not notified.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any, Final

import httpx

from notify.channels import OK, SendResult, http_failure, json_body

RATE_LIMITED: Final = 11232  # frequency limited
# 19021 signature / timestamp, 19022 IP not allowed, 19024 keyword missing, 19001 bad token.
_BAD_KEY_CODES: Final = frozenset({19001, 19021, 19022, 19024})
MAX_BODY_BYTES: Final = 20 * 1024
_TEMPLATE = {"critical": "red", "warning": "orange", "info": "blue"}


def sign(secret: str, timestamp_s: int) -> str:
    mac = hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def mention_suffix(mentions: Sequence[Mapping[str, Any]]) -> str:
    names = [str(m.get("display") or m.get("name")) for m in mentions]
    return ("\n" + " ".join(f"@{n}" for n in names)) if names else ""


def body(
    title: str,
    content: str,
    severity: str,
    mentions: Sequence[Mapping[str, Any]],
    secret: str | None,
    timestamp_s: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "msg_type": "interactive",
        "card": {
            "config": {"wide_screen_mode": True},
            "header": {
                "title": {"tag": "plain_text", "content": title[:100]},
                "template": _TEMPLATE.get(severity, "blue"),
            },
            "elements": [{"tag": "markdown", "content": content + mention_suffix(mentions)}],
        },
    }
    if secret:
        out["timestamp"] = str(timestamp_s)
        out["sign"] = sign(secret, timestamp_s)
    return out


def classify(resp: httpx.Response) -> SendResult:
    if resp.status_code != 200:
        return http_failure(resp.status_code, resp.text)
    data = json_body(resp)
    # Older bots answer {"StatusCode": 0, ...}; current ones {"code": 0, ...}.
    code = data.get("code", data.get("StatusCode")) if data is not None else None
    if not isinstance(code, int):
        return SendResult("retry", "no code", f"unreadable answer: {resp.text[:200]!r}")
    if code == 0:
        return OK
    assert data is not None
    error = f"Feishu code {code}: {str(data.get('msg', data.get('StatusMessage', '')))[:200]}"
    if code == RATE_LIMITED:
        return SendResult("rate_limited", str(code), error)
    if code in _BAD_KEY_CODES:
        return SendResult("bad_key", str(code), error)
    return SendResult("retry", str(code), error)
