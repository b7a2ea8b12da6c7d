"""Standard Webhooks (v1) signing and verification, in the standard library.

Signed content is `f"{webhook-id}.{webhook-timestamp}.{body}"`, HMAC-SHA256 with the
base64-decoded part of a `whsec_` secret, sent as `webhook-signature: v1,<base64>`. The
reference `standardwebhooks` package verifies what `sign` makes (tests/test_outbox.py);
it is only a test dependency, because signing is a few lines of `hmac`.

Requests *to* mesflow (the CRM intake) sign the same way, but over `request_payload`:
`f"{METHOD} {request-target}\n"` followed by the body, so a signature is bound to its
method and path (and query) and cannot be replayed on another route (docs/crm.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import time
import uuid
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

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


def request_target(path: str, query: str = "") -> str:
    """The request-target as signed: the path as sent (percent-encoded), then `?query`."""
    return f"{path}?{query}" if query else path


def request_payload(method: str, target: str, body: bytes) -> bytes:
    """What a signed request to mesflow signs in place of the bare body.

    Neither the method nor a request-target can hold a space or a newline, so the
    boundaries are unambiguous: no body can be moved into the path or the other way round.
    """
    if any(c in target for c in " \r\n") or not method.isalpha():
        raise ValueError("a request-target may not contain spaces or line breaks")
    return f"{method.upper()} {target}\n".encode() + body


def signed_request_headers(
    secret: str,
    method: str,
    target: str,
    body: bytes,
    *,
    msg_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """The Standard Webhooks headers for a request to mesflow (method and path signed)."""
    return signed_headers(
        secret,
        msg_id or new_message_id(),
        request_payload(method, target, body),
        timestamp=timestamp,
    )


def check_headers(
    headers: Mapping[str, str], *, tolerance_s: int = TOLERANCE_S, now: float | None = None
) -> tuple[str, int]:
    """The cheap checks, before any body is read: the three headers are there, the id has
    no '.', the timestamp is integer seconds within the tolerance. Returns (id, timestamp)."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id", "")
    ts_text = lower.get("webhook-timestamp", "")
    given = lower.get("webhook-signature", "")
    if not (msg_id and ts_text and given):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if "." in msg_id or len(msg_id) > 200:
        raise SignatureError("a webhook-id has at most 200 characters and no '.'")
    if not ts_text.isascii() or not ts_text.isdigit() or len(ts_text) > 12:
        raise SignatureError("webhook-timestamp must be integer Unix seconds")
    ts = int(ts_text)
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        raise SignatureError(f"webhook-timestamp is more than {tolerance_s} s from now")
    if not any(c.startswith("v1,") for c in given.split()):
        raise SignatureError("webhook-signature has no v1,<base64> signature")
    return msg_id, ts


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


_TOKENISH = re.compile(r"(?=[^/]*\d)(?=[^/]*[A-Za-z])[A-Za-z0-9_\-~.=+%]{16,}")


def redact_url(url: str) -> str:
    """A URL fit for a log line: no password, no query values, no token-like path segment.

    Callback URLs often carry their credential (`?token=...`, `https://user:pw@...`, or a
    long random path segment as chat robots use): none of it may reach a log (issue 8).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port is not None else "")
    if parts.username is not None:
        netloc = ("***:***@" if parts.password is not None else "***@") + netloc
    path = "/".join(
        "***" if _TOKENISH.fullmatch(segment) else segment for segment in parts.path.split("/")
    )
    query = "&".join(
        f"{key}=***" if sep else key
        for key, sep, _ in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def redact_text(text: str, *secrets: str) -> str:
    """`text` with each of `secrets` (and each one's URL-redacted form kept) replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, redact_url(secret) if "://" in secret else "***")
    return text
