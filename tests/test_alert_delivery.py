"""Alert delivery: the outbox, the channels against real servers, the budget, the dispatcher."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as email_default
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import psycopg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from standardwebhooks import Webhook as StandardWebhook

from mesflow.alert_channels import Channel, Person
from mesflow.settings import REPO_ROOT
from notify.ack_links import verify_ack_token
from notify.alert_dispatcher import AlertDispatchConfig, AlertDispatcher
from notify.alert_outbox import enqueue_alert
from notify.channels.email import SmtpConfig
from notify.webhooks import new_secret
from streams.records import AlertRow
from tests.robots import Received, RobotServer

T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


@dataclass
class Config:
    people: dict[str, Person] = field(default_factory=dict)
    channels: dict[str, Channel] = field(default_factory=dict)


def people() -> dict[str, Person]:
    return {
        "zhang": Person(
            display="张伟",
            email="zhang@plant.example",
            mobile="13800000001",
            wecom_userid="zhangwei",
            language="zh",
        ),
        "li": Person(display="Li Na", email="li@plant.example", language="en"),
        "wang": Person(display="王芳", mobile="13800000003"),
    }


def channel(name: str, type_: str, url: str, secret: str | None = None) -> Channel:
    env = {"URL": url, **({"SECRET": secret} if secret else {})}
    data: dict[str, Any] = {"name": name, "type": type_, "url_env": "URL"}
    if secret:
        data["secret_env"] = "SECRET"
    return Channel.model_validate(data, context={"environ": env})


def alert(
    n: int = 0,
    *,
    step: str = "opened",
    level: int = 0,
    at: datetime = T0,
    people_: tuple[str, ...] = ("zhang", "li"),
    channels: tuple[str, ...] = (),
    machine: str = "IM-03",
    facts: dict[str, object] | None = None,
    quiet_until: datetime | None = None,
) -> AlertRow:
    return AlertRow(
        alert_id=f"down-long:machine:{machine}:{n}",
        rule="down-long",
        kind="machine_down",
        scope=f"machine:{machine}",
        machine=machine,
        line="L1",
        order_no=None,
        severity="critical",
        step=step,
        level=level,
        at=at,
        opened_at=T0 - timedelta(minutes=5),
        facts=facts if facts is not None else {"minutes": 5, "reason": "mould change"},
        people=people_,
        channels=channels,
        quiet_until=quiet_until,
    )


def statuses(db_url: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT alert_id, target, status FROM v_alert_deliveries ORDER BY id"
        ).fetchall()
    return [(str(a), str(t), str(s)) for a, t, s in rows]


def test_enqueue_one_delivery_per_email_and_channel_idempotent(db_url: str) -> None:
    cfg = Config(people(), {"line1": channel("line1", "wecom", "https://robot.example/x?key=k")})
    row = alert(people_=("zhang", "li", "wang"), channels=("line1",))
    with psycopg.connect(db_url) as conn:
        assert enqueue_alert(conn, row, cfg, now=T0) == 3  # wang has no e-mail: mentions only
        assert enqueue_alert(conn, row, cfg, now=T0) == 0
    assert [t for _, t, _ in statuses(db_url)] == ["email:zhang", "email:li", "channel:line1"]
    assert {s for _, _, s in statuses(db_url)} == {"pending"}


def test_old_steps_are_stale_and_quiet_hours_delay(db_url: str) -> None:
    cfg = Config(people())
    with psycopg.connect(db_url) as conn:
        enqueue_alert(conn, alert(1, at=T0 - timedelta(hours=2)), cfg, now=T0)
        enqueue_alert(conn, alert(2, quiet_until=T0 + timedelta(hours=4)), cfg, now=T0)
        due = conn.execute(
            "SELECT DISTINCT next_attempt_at FROM alert_delivery WHERE alert_id LIKE '%%:2'"
        ).fetchall()
    assert due == [(T0 + timedelta(hours=4),)]
    assert {s for a, _, s in statuses(db_url) if a.endswith(":1")} == {"stale"}


def test_unknown_recipient_is_a_visible_failure(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        enqueue_alert(conn, alert(people_=("nobody",), channels=("gone",)), Config(), now=T0)
    assert [s for _, _, s in statuses(db_url)] == ["failed", "failed"]


# --- against real servers ----------------------------------------------------------------

TZ = ZoneInfo("Asia/Shanghai")
SECRET = "test-session-secret"


@pytest.fixture
def robots() -> Iterator[RobotServer]:
    server = RobotServer(
        wecom_keys={"good-key"},
        ding_secrets={"ding-token": "SECdingsecret"},
        feishu_secrets={"fs-token": "feishusecret"},
    ).start()
    try:
        yield server
    finally:
        server.stop()


def dispatcher(
    db_url: str,
    chans: dict[str, Channel],
    smtp: SmtpConfig | None = None,
    **cfg: Any,
) -> AlertDispatcher:
    base: dict[str, Any] = {"backoff_base_s": 0.05, "backoff_cap_s": 0.2, "timeout_s": 5.0}
    return AlertDispatcher(
        db_url,
        chans,
        public_url="https://mes.plant.example",
        ack_secret=SECRET,
        tz=TZ,
        smtp=smtp,
        config=AlertDispatchConfig(**{**base, **cfg}),
    )


def drain(d: AlertDispatcher, done: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "deliveries did not finish in time"
        if not d.run_once():
            time.sleep(0.05)


def count(db_url: str, where: str = "TRUE") -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM alert_delivery WHERE {where}").fetchone()
    assert row is not None
    return int(row[0])


def enqueue(db_url: str, cfg: Config, rows: Sequence[AlertRow], now: datetime = T0) -> None:
    with psycopg.connect(db_url) as conn:
        for row in rows:
            enqueue_alert(conn, row, cfg, now=now)


def content(rec: Received) -> str:
    b = rec.body
    if rec.platform == "wecom":
        return str(b[b["msgtype"]]["content"])
    if rec.platform == "dingtalk":
        return str(b["markdown"]["text"])
    return str(b["card"]["elements"][0]["content"])


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[tuple[SmtpConfig, list[EmailMessage]]]:
    certs = tmp_path / "certs"
    certs.mkdir()

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=certs, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=mesflow test CA")  # fmt: skip
    (certs / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=localhost")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "srv.crt", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs / "srv.crt", certs / "srv.key")
    got: list[EmailMessage] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            assert session.ssl is not None, "mail accepted without TLS"
            assert session.authenticated, "mail accepted without login"
            got.append(
                cast(EmailMessage, message_from_bytes(envelope.content, policy=email_default))
            )
            return "250 OK"

    def auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = data.login == b"alerts" and data.password == b"s3cret"
        return AuthResult(success=ok)

    port = free_port()
    ctl = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=port,
        tls_context=ctx,
        require_starttls=True,
        authenticator=auth,
        auth_require_tls=True,
    )
    ctl.start()
    cfg = SmtpConfig(
        host="127.0.0.1",
        port=port,
        user="alerts",
        password="s3cret",
        sender="mesflow@plant.example",
        starttls=True,
        ca_file=certs / "ca.crt",
    )
    try:
        yield cfg, got
    finally:
        ctl.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_email_arrives_with_text_and_html_in_each_language(
    db_url: str, smtp_server: tuple[SmtpConfig, list[EmailMessage]]
) -> None:
    smtp, got = smtp_server
    cfg = Config(people())
    now = datetime.now(UTC)
    opened = alert(at=now)._replace(opened_at=now - timedelta(minutes=5))
    resolved = opened._replace(step="resolved", at=now + timedelta(minutes=37))
    enqueue(db_url, cfg, [opened, resolved], now=now)
    d = dispatcher(db_url, {}, smtp)
    drain(d, lambda: count(db_url, "status = 'sent'") == 4)
    assert count(db_url, "status <> 'sent'") == 0
    by_to = {
        (str(m["To"]), "resolved" in str(m["Subject"]) or "恢复" in str(m["Subject"])): m
        for m in got
    }
    zh = by_to[("zhang@plant.example", False)]
    en = by_to[("li@plant.example", False)]
    assert "严重" in str(zh["Subject"]) and "IM-03" in str(zh["Subject"])
    assert "CRITICAL" in str(en["Subject"]) and "IM-03" in str(en["Subject"])
    for m, words in (
        (zh, ["停机", "确认告警", "Asia/Shanghai"]),
        (en, ["machine down", "Acknowledge"]),
    ):
        plain = m.get_body(("plain",))
        html = m.get_body(("html",))
        assert plain is not None and html is not None
        text, markup = plain.get_content(), html.get_content()
        for w in words:
            assert w in text and w in markup
        # The link acknowledges this alert for this person.
        link = next(x for x in text.split() if x.startswith("https://mes.plant.example/ack/"))
        token = link.rsplit("/", 1)[1]
        person = "zhang" if m is zh else "li"
        assert verify_ack_token(SECRET, token) == (opened.alert_id, person)
    done_en = by_to[("li@plant.example", True)].get_body(("plain",))
    assert done_en is not None and "resolved after 42 min" in done_en.get_content()
    done_zh = by_to[("zhang@plant.example", True)].get_body(("plain",))
    assert done_zh is not None and "持续 42 分钟" in done_zh.get_content()


def test_robots_receive_signed_well_formed_messages(db_url: str, robots: RobotServer) -> None:
    chans = {
        "line1": channel("line1", "wecom", robots.wecom_url("good-key")),
        "mgmt": channel("mgmt", "dingtalk", robots.ding_url("ding-token"), "SECdingsecret"),
        "ops": channel("ops", "feishu", robots.feishu_url("fs-token"), "feishusecret"),
    }
    cfg = Config(people(), chans)
    now = datetime.now(UTC)
    enqueue(
        db_url,
        cfg,
        [
            alert(1, at=now, people_=("zhang",), channels=("line1", "mgmt", "ops")),
            # wang has only a mobile number: WeCom mentions him in a text message.
            alert(2, at=now, people_=("wang",), channels=("line1",)),
        ],
        now=now,
    )
    d = dispatcher(db_url, chans)
    drain(d, lambda: count(db_url, "channel <> 'email' AND status = 'pending'") == 0)
    assert count(db_url, "channel <> 'email' AND status = 'sent'") == 4
    assert [a for a in robots.answers if a[2] != 0] == []  # every signature verified
    w1, w2 = robots.of("wecom:good-key")
    assert w1.body["msgtype"] == "markdown"
    assert "<@zhangwei>" in w1.body["markdown"]["content"]
    assert "**【严重】IM-03 停机**" in w1.body["markdown"]["content"]
    assert w2.body["msgtype"] == "text"
    assert w2.body["text"]["mentioned_mobile_list"] == ["13800000003"]
    (ding,) = robots.of("ding:ding-token")
    assert ding.body["at"]["atMobiles"] == ["13800000001"]
    assert "@13800000001" in ding.body["markdown"]["text"]
    (fs,) = robots.of("feishu:fs-token")
    assert fs.body["card"]["header"]["template"] == "red"
    assert "停机" in fs.body["card"]["header"]["title"]["content"]


def test_a_wrong_signature_is_a_bad_key_not_a_send(db_url: str, robots: RobotServer) -> None:
    chans = {"mgmt": channel("mgmt", "dingtalk", robots.ding_url("ding-token"), "SECwrong")}
    enqueue(db_url, Config(people(), chans), [alert(channels=("mgmt",), at=datetime.now(UTC))],
            now=datetime.now(UTC))  # fmt: skip
    drain(
        dispatcher(db_url, chans),
        lambda: count(db_url, "channel = 'mgmt' AND status = 'failed'") == 1,
    )
    assert robots.of("ding:ding-token") == []
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT status, error_code FROM v_channel_status WHERE channel = 'mgmt'"
        ).fetchone()
    assert row == ("bad_key", "310000")


def test_bad_key_fails_loudly_and_nothing_counts_as_sent(
    db_url: str, robots: RobotServer, caplog: pytest.LogCaptureFixture
) -> None:
    chans = {"line1": channel("line1", "wecom", robots.wecom_url("deleted-key"))}
    cfg = Config(people(), chans)
    now = datetime.now(UTC)
    enqueue(db_url, cfg, [alert(n, at=now, channels=("line1",)) for n in range(3)], now=now)
    d = dispatcher(db_url, chans)
    with caplog.at_level(logging.ERROR, logger="notify.alerts"):
        drain(d, lambda: count(db_url, "channel = 'line1' AND status = 'pending'") == 0)
    assert any("bad_key" in r.getMessage() for r in caplog.records)
    # A step enqueued afterwards fails too: the key is still the same bad one.
    enqueue(db_url, cfg, [alert(9, at=now, channels=("line1",))], now=now)
    drain(d, lambda: count(db_url, "channel = 'line1' AND status = 'pending'") == 0)
    with psycopg.connect(db_url) as conn:
        status = conn.execute(
            "SELECT status, error_code, pending, sent, failed FROM v_channel_status"
            " WHERE channel = 'line1'"
        ).fetchone()
        sent = conn.execute(
            "SELECT count(*) FROM v_alert_deliveries WHERE channel = 'line1' AND sent_at IS NOT NULL"
        ).fetchone()
    assert status == ("bad_key", "93000", 0, 0, 4)
    assert sent == (0,)
    assert robots.of("wecom:deleted-key") == []
    # One attempt only: a bad key is not retried (the platform would never accept it).
    assert len([a for a in robots.answers if a[2] == 93000]) == 1
    # The key is fixed (a new URL in the variable, notify restarted): the channel is ok
    # again and the recent alerts that failed for the bad key go out after all.
    fixed = {"line1": channel("line1", "wecom", robots.wecom_url("good-key"))}
    drain(
        dispatcher(db_url, fixed),
        lambda: count(db_url, "channel = 'line1' AND status = 'sent'") == 4,
    )
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT status FROM v_channel_status WHERE channel = 'line1'").fetchone()
    assert row == ("ok",)


def test_rate_limited_45009_is_retried_and_then_sent(
    db_url: str, robots: RobotServer, caplog: pytest.LogCaptureFixture
) -> None:
    chans = {"line1": channel("line1", "wecom", robots.wecom_url("good-key"))}
    now = datetime.now(UTC)
    enqueue(db_url, Config(people(), chans), [alert(channels=("line1",), at=now)], now=now)
    robots.script["wecom:good-key"].extend([45009, 45009])
    d = dispatcher(db_url, chans, rate_limited_retry_s=0.2)
    with caplog.at_level(logging.DEBUG):
        drain(d, lambda: count(db_url, "channel = 'line1' AND status = 'sent'") == 1)
    assert "45009" in caplog.text and "good-key" not in caplog.text  # logged, key redacted
    assert [a[2] for a in robots.answers] == [45009, 45009, 0]
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT attempts, error_code, status FROM v_alert_deliveries WHERE channel = 'line1'"
        ).fetchone()
        state = conn.execute(
            "SELECT status FROM v_channel_status WHERE channel = 'line1'"
        ).fetchone()
    assert row == (3, "45009", "sent")  # the last error stays for the record
    assert state == ("ok",)
    assert len(robots.of("wecom:good-key")) == 1


def _machines_in(rec: Received) -> list[str]:
    # Not inside an ack link: its base64url token can hold "M-123" by chance.
    text = re.sub(r"https?://\S+", "", content(rec))
    return sorted(set(re.findall(r"(?<![\w-])M-(\d{3})(?!\d)", text)))


def test_burst_of_100_is_merged_within_budget_and_size_nothing_lost(
    db_url: str, robots: RobotServer
) -> None:
    """The real numbers: 20 a minute, 4,096 bytes; a burst of 100 Chinese alerts."""
    chans = {"line1": channel("line1", "wecom", robots.wecom_url("good-key"))}
    now = datetime.now(UTC)
    rows = [
        alert(
            n,
            at=now,
            machine=f"M-{n:03d}",
            channels=("line1",),
            people_=("zhang",),
            facts={"原因": "模具更换，等待质检确认" * 3},
        )
        for n in range(100)
    ]
    enqueue(db_url, Config(people(), chans), rows, now=now)
    d = dispatcher(db_url, chans)
    drain(d, lambda: count(db_url, "channel = 'line1' AND status = 'pending'") == 0)
    got = robots.of("wecom:good-key")
    assert [a for a in robots.answers if a[2] != 0] == []  # never over the robot's limit
    assert 1 < len(got) <= 20
    for rec in got:
        assert len(content(rec).encode()) <= 4096
    seen = [m for rec in got for m in _machines_in(rec)]
    assert sorted(seen) == [f"{n:03d}" for n in range(100)]  # each exactly once
    assert count(db_url, "channel = 'line1' AND status = 'sent'") == 100


def test_burst_over_several_windows_with_a_small_budget(db_url: str, robots: RobotServer) -> None:
    """Shrunk budget (2 per 1.5 s) and size (1,000 bytes): the rest waits, nothing lost."""
    robots.limit, robots.window_s = 2, 1.0  # lenient by 0.5 s: send-time jitter
    chans = {"line1": channel("line1", "wecom", robots.wecom_url("good-key"))}
    now = datetime.now(UTC)
    rows = [alert(n, at=now, machine=f"M-{n:03d}", channels=("line1",)) for n in range(30)]
    enqueue(db_url, Config(people(), chans), rows, now=now)
    d = dispatcher(db_url, chans, robot_limit=2, robot_window_s=1.5, markdown_limit=1000)
    drain(d, lambda: count(db_url, "channel = 'line1' AND status = 'pending'") == 0, 60)
    got = robots.of("wecom:good-key")
    assert [a for a in robots.answers if a[2] != 0] == []
    assert all(len(content(r).encode()) <= 1000 for r in got)
    assert sorted(m for r in got for m in _machines_in(r)) == [f"{n:03d}" for n in range(30)]
    assert len(got) > 2  # it took more than one window


def test_two_dispatchers_together_keep_the_budget(db_url: str, robots: RobotServer) -> None:
    robots.limit, robots.window_s = 3, 1.6
    chans = {"line1": channel("line1", "wecom", robots.wecom_url("good-key"))}
    now = datetime.now(UTC)
    rows = [alert(n, at=now, machine=f"M-{n:03d}", channels=("line1",)) for n in range(24)]
    enqueue(db_url, Config(people(), chans), rows, now=now)
    cfg: dict[str, Any] = {"robot_limit": 3, "robot_window_s": 2.4, "markdown_limit": 700}
    pair = [dispatcher(db_url, chans, **cfg), dispatcher(db_url, chans, **cfg)]
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,)) for p in pair]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while count(db_url, "channel = 'line1' AND status = 'pending'"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for p in pair:
            p.close()
    got = robots.of("wecom:good-key")
    assert [a for a in robots.answers if a[2] != 0] == []  # the robot never refused one
    assert sum(p.sent_messages for p in pair) == len(got)
    times = [r.at for r in got]
    for i in range(len(times) - 3):
        assert times[i + 3] - times[i] >= 1.6 - 1e-3
    assert sorted(m for r in got for m in _machines_in(r)) == [f"{n:03d}" for n in range(24)]


def test_stale_steps_are_not_sent(db_url: str, robots: RobotServer) -> None:
    chans = {"line1": channel("line1", "wecom", robots.wecom_url("good-key"))}
    now = datetime.now(UTC)
    enqueue(db_url, Config(people(), chans),
            [alert(1, at=now - timedelta(days=3), channels=("line1",))], now=now)  # fmt: skip
    d = dispatcher(db_url, chans)
    assert d.run_once() == 0
    assert robots.received == []
    assert count(db_url, "channel = 'line1' AND status = 'stale'") == 1


def test_restart_mid_burst_does_not_send_twice(db_url: str, robots: RobotServer) -> None:
    chans = {"line1": channel("line1", "wecom", robots.wecom_url("good-key"))}
    now = datetime.now(UTC)
    rows = [alert(n, at=now, machine=f"M-{n:03d}", channels=("line1",)) for n in range(12)]
    enqueue(db_url, Config(people(), chans), rows, now=now)
    cfg: dict[str, Any] = {"robot_limit": 2, "robot_window_s": 1.0, "markdown_limit": 600}
    first = dispatcher(db_url, chans, **cfg)
    first.run_once()  # sends what the budget allows, then "crashes"
    first.close()
    sent_before = count(db_url, "channel <> 'email' AND status = 'sent'")
    assert 0 < sent_before < 12
    second = dispatcher(db_url, chans, **cfg)
    drain(second, lambda: count(db_url, "channel <> 'email' AND status = 'pending'") == 0)
    seen = sorted(m for r in robots.of("wecom:good-key") for m in _machines_in(r))
    assert seen == [f"{n:03d}" for n in range(12)]


def test_hostile_values_are_shown_safely(
    db_url: str, robots: RobotServer, smtp_server: tuple[SmtpConfig, list[EmailMessage]]
) -> None:
    smtp, mails = smtp_server
    chans = {
        "line1": channel("line1", "wecom", robots.wecom_url("good-key")),
        "ops": channel("ops", "feishu", robots.feishu_url("fs-token"), "feishusecret"),
    }
    now = datetime.now(UTC)
    evil = "**[点我](http://evil.example)**\x00\x07<@all>\u202e#"
    row = alert(
        at=now,
        machine=evil,
        channels=("line1", "ops"),
        people_=("zhang",),
        facts={"huge": "长" * 1_000_000, "ctl\x00key": "a\x00b\x1bc\nd", "n": 3},
    )
    enqueue(db_url, Config(people(), chans), [row], now=now)
    d = dispatcher(db_url, chans, smtp)
    drain(d, lambda: count(db_url, "status = 'pending'") == 0)
    assert count(db_url, "status = 'sent'") == 3
    (w,) = robots.of("wecom:good-key")
    text = content(w)
    assert len(text.encode()) <= 4096
    assert "\x00" not in text and "\x1b" not in text and "\u202e" not in text
    assert "[点我](http" not in text and "［点我］(http" in text  # shown, not a link
    assert "<@all>" not in text  # no mention smuggled in
    (m,) = mails
    plain = m.get_body(("plain",))
    assert plain is not None and "\x00" not in plain.get_content()
    html = m.get_body(("html",))
    assert html is not None and "<@all>" not in html.get_content()


@contextmanager
def notify_processes(
    n: int, db_url: str, robots: RobotServer, tmp_path: Path, **settings: str
) -> Iterator[list[Path]]:
    """`n` processes of `mesflow run notify` with one WeCom channel `line1`."""
    alerts_file = tmp_path / "alerts.yaml"
    alerts_file.write_text(
        "people:\n"
        "  zhang: {display: 张伟, mobile: '13800000001', wecom_userid: zhangwei}\n"
        "channels:\n"
        "  line1: {type: wecom, url_env: TEST_WECOM_URL}\n",
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "MESFLOW_DATABASE_URL": db_url,
        "MESFLOW_ALERTS_CONFIG": str(alerts_file),
        "MESFLOW_DATA_DIR": str(tmp_path / "data"),
        "TEST_WECOM_URL": robots.wecom_url("good-key"),
        "PYTHONPATH": str(REPO_ROOT),
        **settings,
    }
    outs = [tmp_path / f"notify-{i}.log" for i in range(n)]
    procs = []
    for out in outs:
        with out.open("wb") as sink:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "mesflow.cli", "run", "notify"],
                    env=env,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    cwd=REPO_ROOT,
                )
            )
    try:
        deadline = time.monotonic() + 30
        for proc, out in zip(procs, outs, strict=True):
            while "notify: alerts to line1" not in out.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
                time.sleep(0.1)
        yield outs
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(30) for proc in procs]
    for code, out in zip(codes, outs, strict=True):
        assert code == 0, out.read_text()
        assert "good-key" not in out.read_text()  # the robot's key never reaches the log


def wait_for(what: str, done: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_mesflow_run_notify_delivers_alerts(
    db_url: str, robots: RobotServer, tmp_path: Path
) -> None:
    """The wiring: `mesflow run notify` reads the alerts file and sends to its robot."""
    with notify_processes(1, db_url, robots, tmp_path):
        now = datetime.now(UTC)
        chans = {"line1": channel("line1", "wecom", robots.wecom_url("good-key"))}
        enqueue(db_url, Config(people(), chans), [alert(channels=("line1",), at=now)], now=now)
        wait_for("the message", lambda: bool(robots.of("wecom:good-key")), 30)
    assert count(db_url, "channel = 'line1' AND status = 'sent'") == 1


def test_two_notify_processes_keep_one_robot_budget(
    db_url: str, robots: RobotServer, tmp_path: Path
) -> None:
    """The budget is held in PostgreSQL: two processes together stay within it."""
    # The robot counts arrivals, the budget counts takes: a margin for send-time jitter.
    robots.limit, robots.window_s = 3, 1.7
    chans = {"line1": channel("line1", "wecom", robots.wecom_url("good-key"))}
    limits = {"MESFLOW_ALERT_ROBOT_LIMIT": "3", "MESFLOW_ALERT_ROBOT_WINDOW_S": "2.5"}
    with notify_processes(2, db_url, robots, tmp_path, **limits):
        now = datetime.now(UTC)
        rows = [
            alert(n, at=now, machine=f"M-{n:03d}", channels=("line1",), facts={"x": "长" * 190})
            for n in range(60)
        ]
        enqueue(db_url, Config(people(), chans), rows, now=now)
        wait_for("all sent", lambda: count(db_url, "channel = 'line1' AND status = 'sent'") == 60)
    got = robots.of("wecom:good-key")
    assert len(got) > 3  # more than one window's worth
    assert [a for a in robots.answers if a[2] != 0] == []  # never over the limit
    assert sorted(m for r in got for m in _machines_in(r)) == [f"{n:03d}" for n in range(60)]


def test_too_long_40058_is_shortened_and_sent(db_url: str, robots: RobotServer) -> None:
    chans = {"line1": channel("line1", "wecom", robots.wecom_url("good-key"))}
    now = datetime.now(UTC)
    row = alert(channels=("line1",), at=now, facts={f"k{i}": "模具" * 60 for i in range(12)})
    enqueue(db_url, Config(people(), chans), [row], now=now)
    robots.script["wecom:good-key"].append(40058)  # the platform counts differently
    drain(
        dispatcher(db_url, chans),
        lambda: count(db_url, "channel = 'line1' AND status = 'sent'") == 1,
    )
    assert [a[2] for a in robots.answers] == [40058, 0]
    (rec,) = robots.of("wecom:good-key")
    assert len(content(rec).encode()) <= 2048  # half the limit on the retry
    with psycopg.connect(db_url) as conn:
        row2 = conn.execute(
            "SELECT attempts, shorten FROM alert_delivery WHERE channel = 'line1'"
        ).fetchone()
    assert row2 == (2, 1)


def test_feishu_five_a_second_is_kept(db_url: str, robots: RobotServer) -> None:
    chans = {"ops": channel("ops", "feishu", robots.feishu_url("fs-token"), "feishusecret")}
    now = datetime.now(UTC)
    rows = [alert(n, at=now, machine=f"M-{n:03d}", channels=("ops",)) for n in range(16)]
    enqueue(db_url, Config(people(), chans), rows, now=now)
    d = dispatcher(db_url, chans, markdown_limit=600)  # about one alert a message
    drain(d, lambda: count(db_url, "channel = 'ops' AND status = 'pending'") == 0)
    got = robots.of("feishu:fs-token")
    assert [a for a in robots.answers if a[2] != 0] == []  # no 11232
    assert len(got) > 5
    assert sorted(m for r in got for m in _machines_in(r)) == [f"{n:03d}" for n in range(16)]


def test_generic_webhook_is_signed_like_the_crm_callbacks(db_url: str, robots: RobotServer) -> None:
    secret = new_secret()
    env = {"S": secret}
    hook = Channel.model_validate(
        {"name": "it", "type": "webhook", "url": f"{robots.base}/hook", "secret_env": "S"},
        context={"environ": env},
    )
    chans = {"it": hook}
    now = datetime.now(UTC)
    enqueue(db_url, Config(people(), chans), [alert(channels=("it",), at=now)], now=now)
    robots.hook_status.append(503)  # one failure first: the retry has the same webhook-id
    drain(
        dispatcher(db_url, chans), lambda: count(db_url, "channel = 'it' AND status = 'sent'") == 1
    )
    (h1, _), (h2, raw2) = robots.hooks
    assert h1["webhook-id"] == h2["webhook-id"]
    headers = {k.lower(): v for k, v in h2.items()}
    data = StandardWebhook(secret).verify(raw2, headers)
    assert data["type"] == "alert.opened"
    assert data["data"]["alert_id"] == "down-long:machine:IM-03:0"
    assert data["data"]["ack_url"].startswith("https://mes.plant.example/ack/")
    assert data["data"]["people"] == ["zhang", "li"]


def test_smtp_down_or_refusing_login_is_retried_not_sent(
    db_url: str, smtp_server: tuple[SmtpConfig, list[EmailMessage]]
) -> None:
    smtp, got = smtp_server
    now = datetime.now(UTC)
    enqueue(db_url, Config(people()), [alert(at=now, people_=("zhang",))], now=now)
    for bad in (replace(smtp, password="wrong", timeout_s=3), replace(smtp, port=free_port())):
        d = dispatcher(db_url, {}, bad, backoff_base_s=60.0, backoff_cap_s=60.0)
        d.run_once()
        d.close()
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT status, attempts, sent_at FROM v_alert_deliveries WHERE channel = 'email'"
        ).fetchone()
        ch = conn.execute(
            "SELECT status, pending FROM v_channel_status WHERE channel = 'email'"
        ).fetchone()
    assert got == []
    assert row is not None and row[0] == "pending" and row[2] is None
    assert row[1] >= 1  # counted as an attempt, to be retried
    assert ch == ("failing", 1)
    # Once the server takes the login, the mail goes out.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE alert_delivery SET next_attempt_at = now()")
    drain(dispatcher(db_url, {}, smtp), lambda: count(db_url, "status = 'sent'") == 1)
    assert len(got) == 1
