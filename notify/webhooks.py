"""Standard Webhooks (v1) signing and verification, in the standard library.

Signed content is `f"{webhook-id}.{webhook-timestamp}.{body}"`, HMAC-SHA256 with the
base64-decoded part of a `whsec_` secret, sent as `webhook-signature: v1,<base64>`. The
reference `standardwebhooks` package verifies what `sign` makes (tests/test_outbox.py);
it is only a test dependency, because signing is a few lines of `hmac`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
import uuid
from collections.abc import Mapping

PREFIX = "whsec_"
# The spec's and the reference library's tolerance for clock skew and replays.
TOLERANCE_S = 300


class SignatureError(ValueError):
    """A request whose Standard Webhooks headers are missing, stale or do not verify."""


def new_secret(nbytes: int = 32) -> str:
    """A fresh `whsec_` secret (the spec asks for 24 to 64 random bytes)."""
    return PREFIX + base64.b64encode(os.urandom(nbytes)).decode()


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret; raises ValueError if it is not one."""
    raw = secret.removeprefix(PREFIX)
    try:
        # Some issuers drop the base64 padding; the reference library accepts that too.
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from None
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for these exact body bytes."""
    if "." in msg_id:
        raise ValueError("a webhook id may not contain '.'")
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_headers(
    secret: str, msg_id: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers; the timestamp is the attempt's, now by default."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int = TOLERANCE_S,
    now: float | None = None,
) -> str:
    """Check a signed request; return its webhook-id, or raise SignatureError.

    Any of several space-separated `v1,` signatures may match (key rotation sends two).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id", "")
    ts_text = lower.get("webhook-timestamp", "")
    given = lower.get("webhook-signature", "")
    if not (msg_id and ts_text and given):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        ts = int(ts_text)
    except ValueError:
        raise SignatureError("webhook-timestamp must be integer Unix seconds") from None
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        raise SignatureError(f"webhook-timestamp is more than {tolerance_s} s from now")
    try:
        expected = sign(secret, msg_id, ts, body).encode()
    except ValueError as err:
        raise SignatureError(str(err)) from None
    for candidate in given.split():
        # compare_digest: no timing leak of how much of a forged signature matched.
        if candidate.startswith("v1,") and hmac.compare_digest(candidate.encode(), expected):
            return msg_id
    raise SignatureError("no webhook-signature matches the body")
