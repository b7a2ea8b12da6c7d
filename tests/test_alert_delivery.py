"""Alert delivery: the outbox, the channels against real servers, the budget, the dispatcher."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from mesflow.alert_channels import Channel, Person
from notify.alert_outbox import enqueue_alert
from streams.records import AlertRow

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
