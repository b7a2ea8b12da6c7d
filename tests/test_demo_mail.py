"""The demo's mailbox (mesflow/demo_mail.py): the notifier's own SMTP sender, with the
settings the demo gives it, delivers to it; each e-mail is one printed line and one .eml
file, the newest KEEP kept."""

from __future__ import annotations

import logging
from email.message import EmailMessage
from pathlib import Path

import pytest

from mesflow import demo_mail
from mesflow.demo_mail import DemoMailbox
from mesflow.services import free_port
from notify.channels.email import SmtpConfig, SmtpSender


def _mail(subject: str, to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = "mesflow@localhost"
    msg["To"] = to
    msg.set_content("IM-02 停机 0:16:02\n")
    return msg


def test_alert_e_mails_reach_the_demo_mailbox_and_are_printed_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(demo_mail, "KEEP", 3)
    lines: list[str] = []
    box = DemoMailbox(tmp_path / "demo-mail", free_port(), lines.append)
    box.start()
    try:
        # As `mesflow run notify` sends with the demo's MESFLOW_SMTP_* settings.
        cfg = SmtpConfig("127.0.0.1", box.port, starttls=False, timeout_s=5)
        with SmtpSender(cfg) as sender:
            for i in range(5):
                result = sender.send(
                    _mail(f"[严重] 3号注塑机 停机：加热圈故障 #{i}", "zhao@plant.cn")
                )
                assert result.outcome == "ok", result
            # A hostile subject: one line, bounded, no line breaks in what is printed.
            sender.send(_mail("x" * 5000, "li@plant.cn"))
    finally:
        box.stop()
    assert box.received == 6
    assert len(lines) == 6
    assert lines[0].startswith(
        "mail: e-mail to zhao@plant.cn: [严重] 3号注塑机 停机：加热圈故障 #0"
    )
    assert all("\n" not in line and len(line) < 500 for line in lines)
    # aiosmtpd's own INFO line per connection stays off the demo's console.
    assert not [r for r in caplog.records if r.name == "mail.log" and r.levelno < logging.WARNING]
    kept = sorted((tmp_path / "demo-mail").glob("*.eml"))
    assert len(kept) == 3  # the newest KEEP
    assert b"li@plant.cn" in kept[-1].read_bytes()
