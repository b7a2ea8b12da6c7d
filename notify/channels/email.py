"""E-mail alerts: an HTML body with a plain-text part, in the recipient's language, over
SMTP with STARTTLS and login.

smtplib (stdlib), not aiosmtplib: the dispatcher is a synchronous worker (psycopg and httpx
clients in threads), so a blocking client fits it and adds no dependency; one connection
is reused for the round's messages (research/protocols.md §3.4 measured ~1 ms a message).
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from notify.channels import Outcome, SendResult
from notify.channels import render as r


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str
    port: int = 587
    user: str | None = None
    password: str | None = None
    sender: str = "mesflow@localhost"
    starttls: bool = True
    ca_file: Path | None = None
    timeout_s: float = 15.0

    def __repr__(self) -> str:  # never the password
        return f"SmtpConfig({self.host!r}, {self.port}, user={self.user!r})"


def message(
    payload: Mapping[str, Any],
    language: str,
    tz: ZoneInfo,
    ack_url: str | None,
    *,
    sender: str,
    to: str,
    alert_id: str,
) -> EmailMessage:
    p = r.parts(payload, language, tz, ack_url)
    msg = EmailMessage()
    msg["Subject"] = r.subject(p)
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    domain = sender.rpartition("@")[2] or "localhost"
    msg["Message-ID"] = make_msgid(domain=domain)
    # Lets mail rules and threads group the steps of one alert.
    msg["X-Mesflow-Alert-Id"] = r.clean(alert_id, 200)
    msg.set_content(r.text_block(p, language) + "\n")
    msg.add_alternative(r.html_body(p, language), subtype="html")
    return msg


class SmtpSender:
    """One SMTP session for a batch of messages (`with SmtpSender(cfg) as s: s.send(m)`)."""

    def __init__(self, cfg: SmtpConfig) -> None:
        self.cfg = cfg
        self.smtp: smtplib.SMTP | None = None

    def __enter__(self) -> SmtpSender:
        cfg = self.cfg
        smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
        try:
            smtp.ehlo()
            if cfg.starttls:
                # A verifying context: starttls() without one does not check the host name.
                ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
                smtp.starttls(context=ctx)
                smtp.ehlo()
            if cfg.user:
                smtp.login(cfg.user, cfg.password or "")
        except BaseException:
            smtp.close()
            raise
        self.smtp = smtp
        return self

    def __exit__(self, *exc: object) -> None:
        if self.smtp is not None:
            try:
                self.smtp.quit()
            except (smtplib.SMTPException, OSError):
                self.smtp.close()

    def send(self, msg: EmailMessage) -> SendResult:
        assert self.smtp is not None
        try:
            refused = self.smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as err:
            code = next(iter(err.recipients.values()))[0] if err.recipients else None
            return SendResult("failed", f"smtp {code}", f"recipient refused: {err.recipients}")
        except smtplib.SMTPResponseException as err:
            outcome: Outcome = "failed" if 500 <= err.smtp_code < 600 else "retry"
            text = (
                err.smtp_error.decode(errors="replace")
                if isinstance(err.smtp_error, bytes)
                else str(err.smtp_error)
            )
            return SendResult(
                outcome, f"smtp {err.smtp_code}", f"SMTP {err.smtp_code}: {text[:200]}"
            )
        except (smtplib.SMTPException, OSError) as err:
            return SendResult("retry", "smtp", f"{type(err).__name__}: {err}")
        if refused:
            return SendResult("failed", "smtp", f"recipient refused: {refused}")
        return SendResult("ok", "250")


def address_ok(addr: str) -> bool:
    try:
        Address(addr_spec=addr)
    except (ValueError, IndexError):
        return False
    return True
