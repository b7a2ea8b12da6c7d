"""Signed acknowledgement links in alert messages: `<public_url>/ack/<token>`.

The token names the alert and the person it was sent to and expires; whoever holds it may
acknowledge that one alert without signing in (the message went only to that person or
group). itsdangerous (Flask's own signer) does the signing and the expiry; the key is the
dashboard session secret with its own salt, so a session cookie is never a valid token.
"""

from __future__ import annotations

from typing import Final

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

SALT: Final = "mesflow-alert-ack"
DEFAULT_TTL_S: Final = 7 * 24 * 3600


class AckLinkError(ValueError):
    """A token that is forged, damaged or expired; the message says which, for the page."""


def _serializer(secret: str) -> URLSafeTimedSerializer:
    if not secret:
        raise ValueError("an acknowledgement link needs a secret")
    return URLSafeTimedSerializer(secret, salt=SALT)


def ack_token(secret: str, alert_id: str, person: str) -> str:
    """A token for `person` (a person or channel name from the alerts file)."""
    return _serializer(secret).dumps([alert_id, person])


def verify_ack_token(secret: str, token: str, ttl_s: int = DEFAULT_TTL_S) -> tuple[str, str]:
    """(alert_id, person) of a valid token; AckLinkError otherwise."""
    try:
        value = _serializer(secret).loads(token, max_age=ttl_s)
    except SignatureExpired as e:
        raise AckLinkError("expired") from e
    except BadSignature as e:
        raise AckLinkError("invalid") from e
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise AckLinkError("invalid")
    return value[0], value[1]


def ack_url(public_url: str, secret: str, alert_id: str, person: str) -> str:
    return f"{public_url.rstrip('/')}/ack/{ack_token(secret, alert_id, person)}"
