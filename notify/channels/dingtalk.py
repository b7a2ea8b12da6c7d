"""DingTalk custom robot: `POST .../robot/send?access_token=<t>&timestamp=<ms>&sign=<s>`.

Signing ("加签"): sign = urlencode(base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}"))),
timestamp in milliseconds, accepted within an hour. Mentions: `at.atMobiles`, and the
`@<mobile>` text in the message so the client highlights it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote_plus

import httpx

from notify.channels import OK, SendResult, http_failure, json_body

RATE_LIMITED: Final = 130101  # send too fast, exceed 20 times per minute
# 310000: signature mismatch, keyword missing or IP not allowed (a configuration error);
# 300001 / 400101 / 300005: the access token does not exist (robot removed or mistyped).
_BAD_KEY_CODES: Final = frozenset({310000, 300001, 300005, 400101})


def sign(secret: str, timestamp_ms: int) -> str:
    """The `sign` query value (already URL-encoded)."""
    mac = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256)
    return quote_plus(base64.b64encode(mac.digest()).decode())


def signed_url(url: str, secret: str | None, timestamp_ms: int) -> str:
    if not secret:
        return url
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}timestamp={timestamp_ms}&sign={sign(secret, timestamp_ms)}"


def mention_suffix(mentions: Sequence[Mapping[str, Any]]) -> str:
    mobiles = [f"@{m['mobile']}" for m in mentions if m.get("mobile")]
    return ("\n\n" + " ".join(mobiles)) if mobiles else ""


def body(title: str, content: str, mentions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "msgtype": "markdown",
        "markdown": {"title": title[:64], "text": content + mention_suffix(mentions)},
        "at": {"atMobiles": [m["mobile"] for m in mentions if m.get("mobile")], "isAtAll": False},
    }


def classify(resp: httpx.Response) -> SendResult:
    if resp.status_code != 200:
        return http_failure(resp.status_code, resp.text)
    data = json_body(resp)
    if data is None or not isinstance(data.get("errcode"), int):
        return SendResult("retry", "no errcode", f"unreadable answer: {resp.text[:200]!r}")
    code = data["errcode"]
    if code == 0:
        return OK
    error = f"DingTalk errcode {code}: {str(data.get('errmsg', ''))[:200]}"
    if code == RATE_LIMITED:
        return SendResult("rate_limited", str(code), error)
    if code in _BAD_KEY_CODES:
        return SendResult("bad_key", str(code), error)
    return SendResult("retry", str(code), error)
