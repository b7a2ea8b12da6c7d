"""A generic webhook: the alert step as JSON, signed like the CRM callbacks (Standard
Webhooks, notify/webhooks.py) when the channel has a `whsec_` secret. Any 2xx is success."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from notify import webhooks
from notify.channels import OK, SendResult, http_failure


def body(payload: Mapping[str, Any], ack_url: str | None) -> dict[str, Any]:
    data = {k: v for k, v in payload.items() if k != "mentions"}
    data["people"] = [m.get("name") for m in payload.get("mentions", [])]
    if ack_url:
        data["ack_url"] = ack_url
    return {"type": f"alert.{payload.get('step')}", "timestamp": payload.get("at"), "data": data}


def headers(secret: str | None, msg_id: str, raw: bytes) -> dict[str, str]:
    return webhooks.signed_headers(secret, msg_id, raw) if secret else {"webhook-id": msg_id}


def classify(resp: httpx.Response) -> SendResult:
    if 200 <= resp.status_code < 300:
        return OK
    if resp.status_code == 410:
        return SendResult("bad_key", "http 410", "HTTP 410 Gone: the receiver removed this hook")
    return http_failure(resp.status_code, resp.text)
