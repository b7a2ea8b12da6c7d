"""The demo's mailbox: a local SMTP server that receives the alert e-mails and prints a line
for each, as the CRM stand-in prints the callbacks it receives.

Without it the demo's e-mail deliveries wait forever (no SMTP server configured) and the
alerts page says so ("Not sending"). With it the escalation can be watched end to end:
`mesflow run notify` sends to it as to a real server (no TLS: it listens on 127.0.0.1 only).
Each message is also kept as an .eml file under var/demo-mail/ (the newest KEEP), to open
in a mail client and see what a supervisor would get.
"""

from __future__ import annotations

import email
import email.policy
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

KEEP = 200  # .eml files kept


class DemoMailbox:
    """`start()` listens on 127.0.0.1:`port`; `stop()` closes it. `say` gets one line per
    message received; `received` counts them."""

    def __init__(self, folder: Path, port: int, say: Callable[[str], None]) -> None:
        from aiosmtpd.controller import Controller  # the demo extra (requirements/lock.txt)

        # aiosmtpd logs every connection at INFO on the demo's console: its own line per
        # message (`say`) is the one that matters.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        self.folder = folder
        self.port = port
        self.say = say
        self.received = 0
        self._controller = Controller(self, hostname="127.0.0.1", port=port)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """aiosmtpd's hook: one accepted message."""
        raw: bytes = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        subject = " ".join(str(msg.get("subject", "")).split())[:160]
        to = ", ".join(envelope.rcpt_tos)[:200]
        self.received += 1
        # Named by time: sorted names are the order received, across demo restarts too.
        name = f"{datetime.now():%Y%m%d-%H%M%S}-{self.received:04d}.eml"
        (self.folder / name).write_bytes(raw)
        for old in sorted(self.folder.glob("*.eml"))[:-KEEP]:
            old.unlink(missing_ok=True)
        self.say(f"mail: e-mail to {to}: {subject} ({self.folder / name})")
        return "250 OK"
