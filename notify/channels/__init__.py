"""Alert channels: message bodies, signing and the reading of each platform's answer.

Each module is pure (bodies, signatures, `classify`) except `post`, the one HTTP call.
The robots answer HTTP 200 with an error code in the JSON body; only code 0 is success
(Apprise counts any 200 as sent, which is why it is not used: research/boards_alerts_collectors.md §3).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from notify import webhooks

Outcome = Literal["ok", "retry", "rate_limited", "too_long", "bad_key", "failed"]


@dataclass(frozen=True, slots=True)
class SendResult:
    """What one attempt came to. `code` is the platform's errcode/code, or `http <status>`."""

    outcome: Outcome
    code: str | None = None
    error: str | None = None
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


OK = SendResult("ok", "0")


def http_failure(status: int, text: str) -> SendResult:
    snippet = text[:200].replace("\n", " ")
    outcome: Outcome = "rate_limited" if status == 429 else "retry"
    return SendResult(outcome, f"http {status}", f"HTTP {status}: {snippet}".strip())


def json_body(resp: httpx.Response) -> Mapping[str, Any] | None:
    try:
        value = json.loads(resp.content)
    except ValueError:
        return None
    return value if isinstance(value, Mapping) else None


def post(
    http: httpx.Client,
    url: str,
    body: bytes,
    classify: Callable[[httpx.Response], SendResult],
    *,
    headers: Mapping[str, str] | None = None,
    timeout_s: float,
) -> SendResult:
    """POST `body`; timeouts and connection errors are retried (the URL, which holds the
    robot's key, is redacted from every error text)."""
    try:
        resp = http.post(
            url,
            content=body,
            headers={"content-type": "application/json; charset=utf-8", **(headers or {})},
            timeout=timeout_s,
        )
    except httpx.TimeoutException as err:
        return SendResult(
            "retry", "timeout", f"timeout after {timeout_s:g} s ({type(err).__name__})"
        )
    except httpx.HTTPError as err:
        return SendResult(
            "retry", "network", webhooks.redact_text(f"{type(err).__name__}: {err}", url)
        )
    return classify(resp)


def dumps(value: object) -> bytes:
    # ensure_ascii=False: Chinese stays 3 bytes a character, as the robots count it.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
