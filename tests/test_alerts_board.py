"""The alerts board, the acknowledgement writer and the /ack/<token> link, on a real database.

Alert rows are inserted straight into ENGINE's tables (`alert`, sql/018_alerts.sql) and
DELIVERY's (`alert_delivery`, `alert_channel`, sql/019_alert_delivery.sql) where running the
dataflow would only slow the test; tests/test_alerts_browser.py runs the dataflow end to end.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dash
import psycopg
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from dashboards import alert_ack, auth, context
from dashboards import alert_queries as aq
from dashboards.app import create_app
from dashboards.pages import alerts
from dashboards.pages.andon import _alerts_badge
from dashboards.queries import Database
from mesflow import users
from mesflow.events import parse_event
from mesflow.ingest_log import dedupe_key
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from notify.ack_links import SALT, ack_token
from streams.hour_clock import to_us
from streams.replay import replay_file
from streams.runner import run_flow
from tests.helpers import write_jsonl
from tests.test_dashboard import sign_in

SECRET = "alerts-test-secret-" + "s" * 32
PASSWORD = "a fine password 123"
NOW = datetime.now(UTC).replace(microsecond=0)
PLANT_TZ = ZoneInfo("Asia/Shanghai")  # the example plant's (test_history_filters_and_csv)
# The oldest alert of the default week (today and the 6 days before, in plant time): 02:00
# on its first day, whatever the hour the suite runs (NOW - 6 days 2 hours fell before the
# week's first day between 00:00 and 02:00 plant time, and CI failed then).
WEEK_OLDEST = datetime.combine(
    NOW.astimezone(PLANT_TZ).date() - timedelta(days=6), datetime.min.time(), PLANT_TZ
) + timedelta(hours=2)


def alert_row(alert_id: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "alert_id": alert_id,
        "rule": "im-down",
        "kind": "machine_down",
        "scope": "machine:IM-02",
        "machine": "IM-02",
        "line": "IM",
        "order_no": None,
        "severity": "critical",
        "level": 0,
        "started_at": NOW - timedelta(minutes=17),
        "opened_at": NOW - timedelta(minutes=12),
        "escalated_at": None,
        "acknowledged_at": None,
        "acknowledged_by": None,
        "resolved_at": None,
        "facts": {"reason": "hydraulic_fault"},
    }
    base.update(kw)
    if "opened_at" in kw and "started_at" not in kw:
        base["started_at"] = kw["opened_at"] - timedelta(minutes=5)
    return base


def insert_alert(conn: psycopg.Connection, row: dict[str, Any]) -> None:
    cols = list(row)
    values = [json.dumps(v) if isinstance(v, dict) else v for v in row.values()]
    conn.execute(
        f"INSERT INTO alert ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
        values,
    )


def insert_delivery(
    conn: psycopg.Connection,
    alert_id: str,
    target: str,
    channel: str,
    channel_type: str,
    status: str,
    person: str | None = None,
    error_code: str | None = None,
    last_error: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO alert_delivery (dedupe, alert_id, step, level, severity, target, person,"
        " channel, channel_type, payload, event_at, status, error_code, last_error, sent_at)"
        " VALUES (%s, %s, 'opened', 0, 'critical', %s, %s, %s, %s, '{}', %s, %s, %s, %s, %s)",
        (
            f"{alert_id}|opened|0|{target}",
            alert_id,
            target,
            person,
            channel,
            channel_type,
            NOW,
            status,
            error_code,
            last_error,
            NOW if status == "sent" else None,
        ),
    )


def seed(db_url: str) -> None:
    """Two open alerts (one with a failed robot), one acknowledged, one resolved last week,
    and a robot with a bad key."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        insert_alert(conn, alert_row("im-down:machine:IM-02:1"))
        insert_alert(
            conn,
            alert_row(
                "silent:machine:CNC-03:2",
                rule="silent",
                kind="silent",
                scope="machine:CNC-03",
                machine="CNC-03",
                line="CNC",
                severity="warning",
                facts={},
                opened_at=NOW - timedelta(minutes=3),
            ),
        )
        insert_alert(
            conn,
            alert_row(
                "cnc-down:machine:CNC-01:3",
                rule="cnc-down",
                scope="machine:CNC-01",
                machine="CNC-01",
                line="CNC",
                severity="warning",
                level=1,
                acknowledged_at=NOW - timedelta(minutes=1),
                acknowledged_by="chen",
                facts={},
            ),
        )
        insert_alert(
            conn,
            alert_row(
                "im-down:machine:IM-01:4",
                scope="machine:IM-01",
                machine="IM-01",
                opened_at=WEEK_OLDEST,
                resolved_at=WEEK_OLDEST + timedelta(hours=1),
                severity="info",
                facts={},
            ),
        )
        insert_delivery(
            conn, "im-down:machine:IM-02:1", "email:zhang", "email", "email", "sent", "zhang"
        )
        insert_delivery(
            conn,
            "im-down:machine:IM-02:1",
            "channel:im-wecom",
            "im-wecom",
            "wecom",
            "failed",
            error_code="93000",
            last_error="invalid webhook url",
        )
        conn.execute(
            "INSERT INTO alert_channel (name, channel_type, state, last_error, error_code,"
            " last_error_at) VALUES ('im-wecom', 'wecom', 'bad_key', 'invalid webhook url',"
            " '93000', %s)",
            (NOW,),
        )


def ack_rows(db_url: str) -> list[tuple[str, dict[str, Any]]]:
    """(source, event) of every alert_ack in the ingest log."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT source, payload, error FROM ingest_log ORDER BY seq").fetchall()
    out = []
    for source, payload, error in rows:
        event = json.loads(bytes(payload))
        if event.get("type") == "alert_ack":
            assert error is None
            out.append((source, event))
    return out


@pytest.fixture
def app(db_url: str, plant: PlantConfig) -> Iterator[dash.Dash]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for role in ("viewer", "operator"):
            users.add_user(conn, role, role, PASSWORD)
    built = create_app(Settings(auth_session_secret=SECRET, language="zh"), plant, db_url)
    try:
        yield built
    finally:
        context.of(built.server).db.close()


# -- the acknowledgement writer ---------------------------------------------------------------


def test_ack_event_has_the_contract_shape_and_is_stored_once(db_url: str) -> None:
    seed(db_url)
    alert_id = "im-down:machine:IM-02:1"
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = alert_ack.acknowledge(conn, alert_id, "operator", "board")
        again = alert_ack.acknowledge(conn, alert_id, "operator", "board")
        from_link = alert_ack.acknowledge(conn, alert_id, "zhang", "link")
        assert alert_ack.pending_acks(conn, [alert_id, "other"]) == frozenset({alert_id})
    assert (first.stored, again.stored, from_link.stored) == (True, False, False)
    [(source, event)] = ack_rows(db_url)
    assert source == "board:operator"
    assert set(event) == {"type", "ts", "alert_id", "by", "via"}
    assert (event["type"], event["alert_id"], event["by"], event["via"]) == (
        "alert_ack",
        alert_id,
        "operator",
        "board",
    )
    assert abs(datetime.fromisoformat(event["ts"]) - datetime.now(UTC)) < timedelta(minutes=1)
    parse_event(json.dumps(event).encode())  # the dataflow accepts it
    with psycopg.connect(db_url) as conn:
        (key,) = conn.execute(
            "SELECT dedupe_key FROM ingest_log WHERE source = 'board:operator'"
        ).fetchone() or (None,)
    assert bytes(key) == dedupe_key(alert_ack.ack_key(alert_id))


def test_concurrent_acks_store_one_event_and_no_conflict_row(db_url: str) -> None:
    alert_id = "im-down:machine:IM-02:9"
    results: list[bool] = []
    barrier = threading.Barrier(6)

    def ack(i: int) -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            barrier.wait()
            results.append(alert_ack.acknowledge(conn, alert_id, f"user{i}", "board").stored)

    threads = [threading.Thread(target=ack, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(results) == [False] * 5 + [True]
    with psycopg.connect(db_url) as conn:
        count = conn.execute("SELECT count(*) FROM ingest_log").fetchone()
    assert count == (1,)  # no id_conflict error rows either


@pytest.mark.parametrize(
    ("alert_id", "by", "via"),
    [("", "x", "board"), ("a\x00b", "x", "board"), ("a", "", "link"), ("a", "x", "phone")],
)
def test_ack_refuses_bad_input(alert_id: str, by: str, via: Any) -> None:
    with pytest.raises(alert_ack.AckRefused):
        alert_ack.ack_event(alert_id, by, via)


# -- queries and rendering ----------------------------------------------------------------------


def test_open_board_reads_alerts_deliveries_and_channels(db_url: str, plant: PlantConfig) -> None:
    seed(db_url)
    db = Database(db_url)
    try:
        board = aq.open_board(db)
        count = aq.open_count(db)
    finally:
        db.close()
    # Open first (critical before warning), then the acknowledged one; resolved ones not at all.
    assert [a.alert_id for a in board.alerts] == [
        "im-down:machine:IM-02:1",
        "silent:machine:CNC-03:2",
        "cnc-down:machine:CNC-01:3",
    ]
    assert count == aq.OpenCount(open=2, critical=1, acknowledged=1)
    targets = {d.target: d.status for d in board.deliveries["im-down:machine:IM-02:1"]}
    assert targets == {"email:zhang": "sent", "channel:im-wecom": "failed"}
    assert (board.channels[0].channel, board.channels[0].status) == ("im-wecom", "bad_key")
    opts = alerts.RenderOptions(tz=plant.tz, lang="en", can_ack=False, now=NOW)
    html = str(alerts.render_open(board, plant, opts))
    assert "Hydraulic fault" in html and "IM-02" in html
    assert "93000" in html and "zhang" in html
    banner = alerts.render_banner(board.channels, "zh", plant.tz)
    assert "im-wecom" in str(banner) and "密钥无效" in str(banner)


def test_a_channel_nobody_sends_on_shows_as_not_sending(db_url: str, plant: PlantConfig) -> None:
    """Pending messages due long ago on a channel without errors: no dispatcher sends on it
    (`mesflow run notify` down, or without SMTP). It must not read "OK" while alerts pile
    up unseen; messages due only just now, or a robot's rate limit, are not that."""
    seed(db_url)
    late = aq.STALLED_AFTER_MIN + 5
    with psycopg.connect(db_url, autocommit=True) as conn:
        for i, ago in enumerate([late, 1]):
            insert_delivery(conn, "silent:machine:CNC-03:2", f"email:p{i}", "email", "email",
                            "pending", f"p{i}")  # fmt: skip
            conn.execute(
                "UPDATE alert_delivery SET next_attempt_at = now() - %s * interval '1 minute'"
                " WHERE target = %s",
                (ago, f"email:p{i}"),
            )
        insert_delivery(conn, "silent:machine:CNC-03:2", "channel:cnc-ding", "cnc-ding",
                        "dingtalk", "pending")  # fmt: skip
        conn.execute("UPDATE alert_delivery SET next_attempt_at = now() WHERE channel = 'cnc-ding'")

    def read() -> dict[str, aq.ChannelStatus]:
        db = Database(db_url)
        try:
            return {c.channel: c for c in aq.open_board(db).channels}
        finally:
            db.close()

    channels = read()
    assert channels["email"].status == "stalled" and channels["email"].pending == 2
    assert channels["cnc-ding"].status == "ok"  # due now: the dispatcher has it in hand
    assert channels["im-wecom"].status == "bad_key"  # its own trouble first
    assert list(channels)[:2] == ["im-wecom", "email"]
    opts = alerts.RenderOptions(tz=plant.tz, lang="en", can_ack=False, now=NOW)
    table = str(alerts.render_channels(list(channels.values()), opts))
    assert "Not sending" in table
    banner = str(alerts.render_banner(list(channels.values()), "en", plant.tz))
    assert "Nothing is sending on email" in banner and "mesflow run notify" in banner
    assert "没有程序在发送" in str(alerts.render_banner(list(channels.values()), "zh", plant.tz))
    # The dispatcher comes back and sends the overdue one: the channel is ok again.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE alert_delivery SET status = 'sent', sent_at = now() WHERE target = 'email:p0'"
        )
    assert read()["email"].status == "ok"


def _buttons(tree: Any) -> list[Any]:
    found = []

    def walk(node: Any) -> None:
        if isinstance(node, list | tuple):
            for n in node:
                walk(n)
            return
        if type(node).__name__ == "Button":
            found.append(node)
        children = getattr(node, "children", None)
        if children is not None:
            walk(children)

    walk(tree)
    return found


def test_acknowledge_button_only_for_operators(plant: PlantConfig) -> None:
    open_alert = aq.Alert(**{**alert_row("a:1"), "status": "open", "duration_s": 720.0})
    acked = aq.Alert(
        **{
            **alert_row("a:2"),
            "status": "acknowledged",
            "acknowledged_at": NOW,
            "acknowledged_by": "li",
            "duration_s": 60.0,
        }
    )
    board = aq.OpenBoard([open_alert, acked], {}, [], frozenset())
    for can_ack, lang in ((False, "zh"), (True, "en")):
        opts = alerts.RenderOptions(tz=plant.tz, lang=lang, can_ack=can_ack, now=NOW)
        buttons = _buttons(alerts.render_open(board, plant, opts))
        assert len(buttons) == 1  # the acknowledged alert has none
        if can_ack:
            assert buttons[0].id == {"type": alerts.ACK_BUTTON, "alert": "a:1"}
            assert not getattr(buttons[0], "disabled", False)
        else:
            assert buttons[0].disabled is True
            assert not hasattr(buttons[0], "id") or buttons[0].id is None
    pending = aq.OpenBoard([open_alert], {}, [], frozenset({"a:1"}))
    opts = alerts.RenderOptions(tz=plant.tz, lang="en", can_ack=True, now=NOW)
    assert _buttons(alerts.render_open(pending, plant, opts)) == []


def test_a_flood_of_open_alerts_shows_the_most_urgent(plant: PlantConfig) -> None:
    """The page shows OPEN_SHOWN unresolved alerts in the board's order (the query's: open
    before acknowledged, critical first, oldest first) and says how many there are."""
    flood = [
        aq.Alert(**{**alert_row(f"a:{i}"), "status": "open", "duration_s": 60.0})
        for i in range(aq.OPEN_SHOWN + 80)
    ]
    board = aq.OpenBoard(flood, {}, [], frozenset())
    opts = alerts.RenderOptions(tz=plant.tz, lang="en", can_ack=True, now=NOW)
    page = alerts.render_open(board, plant, opts)
    buttons = _buttons(page)
    assert [b.id["alert"] for b in buttons] == [f"a:{i}" for i in range(aq.OPEN_SHOWN)]
    text = str(page)
    assert f"The {aq.OPEN_SHOWN} most urgent of {aq.OPEN_SHOWN + 80} unresolved alerts" in text
    zh_opts = alerts.RenderOptions(tz=plant.tz, lang="zh", can_ack=True, now=NOW)
    zh = str(alerts.render_open(board, plant, zh_opts))
    assert f"最紧急的 {aq.OPEN_SHOWN} 条" in zh
    few = aq.OpenBoard(flood[:3], {}, [], frozenset())
    assert "most urgent" not in str(alerts.render_open(few, plant, opts))
    assert len(_buttons(alerts.render_open(few, plant, opts))) == 3


def test_history_filters_and_csv(db_url: str, plant: PlantConfig) -> None:
    seed(db_url)
    tz = plant.tz
    assert tz == PLANT_TZ
    today = datetime.now(tz).date()
    db = Database(db_url)
    try:
        week = alerts.parse_filters(plant, None, None, None, None, None)
        assert (week.start, week.end) == (today - timedelta(days=6), today + timedelta(days=1))
        assert len(aq.history(db, week)) == 4
        cnc = alerts.parse_filters(plant, None, None, "CNC", None, None)
        assert {a.machine for a in aq.history(db, cnc)} == {"CNC-01", "CNC-03"}
        one = alerts.parse_filters(plant, None, None, None, "IM-02", None)
        assert [a.alert_id for a in aq.history(db, one)] == ["im-down:machine:IM-02:1"]
        info = alerts.parse_filters(plant, None, None, None, None, "info")
        assert [a.alert_id for a in aq.history(db, info)] == ["im-down:machine:IM-01:4"]
        today_only = alerts.parse_filters(plant, today.isoformat(), today.isoformat(), *[None] * 3)
        assert "im-down:machine:IM-01:4" not in {a.alert_id for a in aq.history(db, today_only)}
        name, text = alerts.export(db, info, tz)
    finally:
        db.close()
    assert name == f"alerts_{week.start.isoformat()}_{today.isoformat()}_info.csv"
    [row] = list(csv.DictReader(io.StringIO(text)))
    assert row["alert_id"] == "im-down:machine:IM-01:4" and row["severity"] == "info"
    opened = datetime.fromisoformat(row["opened_at"])
    assert opened.utcoffset() == datetime.now(tz).utcoffset()  # plant time, with its offset
    assert abs(opened - WEEK_OLDEST) < timedelta(seconds=1)
    assert float(row["duration_s"]) == 3900.0  # from the condition's start to the resolve


@pytest.mark.parametrize(
    "values",
    [
        ("nonsense", 42, ["CNC"], {"m": 1}, "loud"),
        ("2026-13-01", "2026-01-01\x00", "NOLINE", "NOMACHINE", None),
        (None, None, None, None, ["critical"]),
    ],
)
def test_hostile_filters_fall_back(plant: PlantConfig, values: tuple[Any, ...]) -> None:
    start, end, line, machine, severity = values
    f = alerts.parse_filters(plant, start, end, line, machine, severity, today=date(2026, 11, 20))
    assert (f.line, f.machine, f.severity) == (None, None, None)
    assert (f.end - f.start).days <= alerts.MAX_DAYS


def test_delivery_chip_says_when_a_quiet_hours_message_goes(plant: PlantConfig) -> None:
    tz = ZoneInfo("Asia/Shanghai")
    now = datetime(2026, 11, 20, 22, 30, tzinfo=tz)
    quiet = aq.Delivery(
        alert_id="a:1",
        step="opened",
        level=0,
        target="email:zhang",
        person="zhang",
        channel="email",
        channel_type="email",
        status="pending",
        attempts=0,
        last_error=None,
        error_code=None,
        sent_at=None,
        next_attempt_at=datetime(2026, 11, 21, 6, 0, tzinfo=tz),
    )
    opts = alerts.RenderOptions(tz=tz, lang="zh", can_ack=False, now=now)
    assert "待发送 06:00" in str(alerts.delivery_chip(quiet, opts))
    due_now = dataclasses.replace(quiet, next_attempt_at=now)
    assert "06:00" not in str(alerts.delivery_chip(due_now, opts))


def test_history_shows_the_newest_rows_and_says_there_are_more(plant: PlantConfig) -> None:
    rows = [
        aq.Alert(**{**alert_row(f"a:{i}"), "status": "resolved", "duration_s": 60.0})
        for i in range(aq.HISTORY_SHOWN + 1)
    ]
    full = alerts.render_history(rows, plant, plant.tz, "en")
    note, table = full
    assert f"newest {aq.HISTORY_SHOWN}:" in str(note)
    assert len(table.children[1].children) == aq.HISTORY_SHOWN
    exact = alerts.render_history(rows[:-1], plant, plant.tz, "en")
    assert type(exact).__name__ == "Table"


def test_andon_badge_counts_open_alerts(db_url: str, plant: PlantConfig) -> None:
    db = Database(db_url)
    ctx = context.BoardContext(Settings(auth_session_secret=SECRET), plant, db)
    try:
        assert _alerts_badge(ctx, "en") == ("", "andon-alerts hidden")
        seed(db_url)
        assert _alerts_badge(ctx, "en") == ("2 alerts", "andon-alerts critical")
        assert _alerts_badge(ctx, "zh") == ("2 条告警", "andon-alerts critical")
        # A screen showing some lines (?line=) counts their alerts only.
        assert _alerts_badge(ctx, "en", ("CNC",)) == ("1 alert", "andon-alerts")
        assert _alerts_badge(ctx, "en", ("IM",)) == ("1 alert", "andon-alerts critical")
        assert _alerts_badge(ctx, "en", ("IM", "CNC")) == ("2 alerts", "andon-alerts critical")
    finally:
        db.close()


# -- the page's access ------------------------------------------------------------------------------


def test_page_refused_without_credentials_and_ack_needs_operator(app: dash.Dash) -> None:
    anon = app.server.test_client()
    response = anon.get("/alerts")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    viewer = app.server.test_client()
    sign_in(viewer, "viewer", PASSWORD)
    assert viewer.get("/alerts?lang=en").status_code == 200
    roles = auth.declared_roles(app)
    ack_outputs = [k for k in roles if alerts.ACK_BUTTON in k]
    assert ack_outputs and all(roles[k] == "operator" for k in ack_outputs)
    assert all(
        roles[k] == "viewer"
        for k in roles
        if k.startswith(("..al-", "al-")) and k not in ack_outputs
    )


# -- /ack/<token> ------------------------------------------------------------------------------------


def _token(alert_id: str, person: str = "zhang", age_s: int = 0) -> str:
    if not age_s:
        return ack_token(SECRET, alert_id, person)

    class Old(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - age_s

    return URLSafeTimedSerializer(SECRET, salt=SALT, signer=Old).dumps([alert_id, person])


_FORM = re.compile(r'<form method="post" action="([^"]+)">')


def test_ack_link_get_confirms_and_post_acknowledges_once(app: dash.Dash, db_url: str) -> None:
    seed(db_url)
    alert_id = "im-down:machine:IM-02:1"
    url = f"/ack/{_token(alert_id)}"
    client = app.server.test_client()  # not signed in: the token is the credential
    page = client.get(url, headers={"Accept-Language": "en-GB,en;q=0.9"})
    text = page.get_data(as_text=True)
    assert page.status_code == 200, text
    assert (
        "Acknowledge alert" in text
        and "Press 2 (Haitian 250t) (IM-02)" in text
        and "Hydraulic fault" in text
    )
    assert (_FORM.search(text) or [None, None])[1] == url
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "Set-Cookie" not in page.headers
    # Link previewers fetch: GET and HEAD, any number of times, write nothing.
    for _ in range(3):
        assert client.get(url).status_code == 200
        assert client.head(url).status_code == 200
    assert ack_rows(db_url) == []
    zh = client.get(url, headers={"Accept-Language": "zh-CN,zh;q=0.9"}).get_data(as_text=True)
    assert "确认告警" in zh and "2号注塑机" in zh
    assert "确认告警" in client.get(url + "?lang=zh").get_data(as_text=True)

    done = client.post(url, data={"lang": "en"})
    assert done.status_code == 200 and "Acknowledged, thank you" in done.get_data(as_text=True)
    again = client.post(url, data={"lang": "en"})
    assert again.status_code == 200 and "already acknowledged" in again.get_data(as_text=True)
    assert [(s, e["by"], e["via"]) for s, e in ack_rows(db_url)] == [
        ("link:zhang", "zhang", "link")
    ]
    # The GET now says so too, with no button.
    after = client.get(url + "?lang=en").get_data(as_text=True)
    assert "already acknowledged" in after and "<form" not in after


def test_ack_link_on_acknowledged_or_resolved_alert(app: dash.Dash, db_url: str) -> None:
    seed(db_url)
    client = app.server.test_client()
    acked = client.get(f"/ack/{_token('cnc-down:machine:CNC-01:3')}?lang=en")
    text = acked.get_data(as_text=True)
    assert acked.status_code == 200 and "already acknowledged (chen" in text and "<form" not in text
    url = f"/ack/{_token('im-down:machine:IM-01:4')}?lang=en"
    resolved = client.get(url)
    assert resolved.status_code == 200 and "resolved at" in resolved.get_data(as_text=True)
    assert "<form" not in resolved.get_data(as_text=True)
    assert client.post(url).status_code == 409
    assert ack_rows(db_url) == []


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/ack/", 400, "not valid"),
        ("/ack/not-a-token", 400, "not valid"),
        ("/ack/a%00b", 400, "not valid"),
        ("/ack/" + "A" * 3000, 400, "not valid"),
        ("/ack/../../etc/passwd", 400, "not valid"),
        ("/ack/%E4%BD%A0%E5%A5%BD", 400, "not valid"),
    ],
)
def test_ack_link_refuses_bad_tokens(app: dash.Dash, path: str, status: int, words: str) -> None:
    client = app.server.test_client()
    for method in ("GET", "POST"):
        response = client.open(path + "?lang=en", method=method)
        assert response.status_code == status, (method, response.get_data(as_text=True)[:300])
        text = response.get_data(as_text=True)
        assert words in text and "Traceback" not in text


def test_ack_link_forged_expired_and_unknown(app: dash.Dash, db_url: str) -> None:
    seed(db_url)
    client = app.server.test_client()
    alert_id = "im-down:machine:IM-02:1"
    forged = URLSafeTimedSerializer("another secret", salt=SALT).dumps([alert_id, "zhang"])
    tampered = _token(alert_id)[:-3] + "AAA"
    expired = _token(alert_id, age_s=8 * 24 * 3600)
    session_cookie_like = URLSafeTimedSerializer(SECRET).dumps([alert_id, "zhang"])  # no salt
    for token, status in (
        (forged, 400),
        (tampered, 400),
        (session_cookie_like, 400),
        (expired, 410),
    ):
        for method in ("GET", "POST"):
            response = client.open(f"/ack/{token}?lang=en", method=method)
            assert response.status_code == status, (token, method)
    assert "expired" in client.get(f"/ack/{expired}?lang=en").get_data(as_text=True)
    unknown = client.post(f"/ack/{_token('no-such-alert')}?lang=en")
    assert unknown.status_code == 404
    assert ack_rows(db_url) == []


def test_ack_link_with_unstorable_names_is_400(app: dash.Dash, db_url: str) -> None:
    """Signed by us but not a valid event (a person name with a newline, an alert id over
    the contract's 200 characters): a clean 400, nothing stored."""
    long_id = "x" * 150 + ":machine:IM-01:" + "1" * 60
    with psycopg.connect(db_url, autocommit=True) as conn:
        insert_alert(conn, alert_row(long_id))
        insert_alert(conn, alert_row("ok:machine:IM-01:1"))
    client = app.server.test_client()
    for alert_id, person in ((long_id, "zhang"), ("ok:machine:IM-01:1", "bad\nname")):
        response = client.post(f"/ack/{_token(alert_id, person)}?lang=en")
        assert response.status_code == 400, response.get_data(as_text=True)[-400:]
    assert ack_rows(db_url) == []


def test_ack_link_database_down_is_503(plant: PlantConfig) -> None:
    app = create_app(
        Settings(auth_session_secret=SECRET), plant, "postgresql://nobody@127.0.0.1:1/none"
    )
    try:
        context.of(app.server).db.pool.timeout = 0.5
        response = app.server.test_client().post(f"/ack/{_token('x:1')}?lang=en")
        assert response.status_code == 503
        assert "cannot be reached" in response.get_data(as_text=True)
    finally:
        context.of(app.server).db.close()


def test_plant_time_in_history_rows(plant: PlantConfig) -> None:
    a = aq.Alert(**{**alert_row("a:1"), "status": "open", "duration_s": 1.0})
    utc = datetime(2026, 11, 20, 23, 30, tzinfo=UTC)
    assert alerts.fmt_time(utc, ZoneInfo("Asia/Shanghai")) == "11-21 07:30"
    assert alerts.where_text(a, plant, "zh") == "2号注塑机 (IM-02)"
    assert alerts.what_text(a, plant, "en") == "Machine down · Hydraulic fault"


def test_board_acknowledges_only_real_open_alerts(db_url: str) -> None:
    seed(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert alerts.ack_on_board(conn, "made-up:machine:IM-01:1", "operator") == "ack_gone"
        assert alerts.ack_on_board(conn, "im-down:machine:IM-01:4", "operator") == "ack_gone"
        assert alerts.ack_on_board(conn, "cnc-down:machine:CNC-01:3", "operator") == "ack_already"
        assert ack_rows(db_url) == []
        assert alerts.ack_on_board(conn, "silent:machine:CNC-03:2", "operator") == "stored"
        assert alerts.ack_on_board(conn, "silent:machine:CNC-03:2", "manager") == "ack_already"
    assert [(s, e["by"]) for s, e in ack_rows(db_url)] == [("board:operator", "operator")]


# -- end to end: the dataflow opens an alert, the link acknowledges it, the dataflow applies it --

E2E_RULES = """\
people:
  zhang: {display: 张伟, email: zhang@plant.example}
  li:    {display: Li Na, email: li@plant.example, language: en}
channels:
  it-hook: {type: webhook, url: "https://it.example/hook"}
rules:
  - name: down
    kind: machine_down
    scope: {line: IM}
    severity: critical
    levels:
      - {after_min: 5,  people: [zhang], channels: [it-hook]}
      - {after_min: 15, people: [li]}
      - {after_min: 30, people: [zhang, li], channels: [it-hook]}
"""


def test_end_to_end_dataflow_alert_on_board_acknowledged_by_link(
    db_url: str, plant: PlantConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A breakdown of the last 25 minutes goes through the real dataflow: the board lists the
    alert at level 1 with its pending deliveries; the link in li's message acknowledges it;
    the dataflow applies the acknowledgement (no level 2 at 30 min) and the board says so."""
    rules = tmp_path / "alerts.yaml"
    rules.write_text(E2E_RULES, encoding="utf-8")
    monkeypatch.setenv("MESFLOW_ALERTS_CONFIG", str(rules))
    # Live-like event times: the acknowledgement (now) comes before level 2 would (t0 + 31).
    t0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=26)

    def ts(minutes: int) -> str:
        return (t0 + timedelta(minutes=minutes)).isoformat()

    events: list[dict[str, Any]] = [
        {"type": "state", "machine": "IM-01", "ts": ts(0), "state": "running"},
        {"type": "state", "machine": "IM-02", "ts": ts(0), "state": "running"},
        {"type": "state", "machine": "IM-01", "ts": ts(1), "state": "down"},
    ]
    events += [
        {"type": "count", "machine": "IM-02", "ts": ts(m), "good": 1, "id": f"e2e-{m}"}
        for m in range(1, 25)  # the plant's clock: level 1 is due at +16, decided at +21
    ]
    summary = replay_file(
        write_jsonl(tmp_path / "breakdown.jsonl", events),
        plant,
        db_url,
        tmp_path / "rec",
        progress=False,
    )
    assert summary.dead_lettered == 0
    alert_id = f"down:machine:IM-01:{to_us(t0 + timedelta(minutes=1))}"

    db = Database(db_url)
    try:
        board = aq.open_board(db)
        assert [(a.alert_id, a.status, a.level) for a in board.alerts] == [(alert_id, "open", 1)]
        sent_to = {(d.target, d.status) for d in board.deliveries[alert_id]}
        assert sent_to == {
            ("email:zhang", "pending"),
            ("channel:it-hook", "pending"),
            ("email:li", "pending"),
        }
        assert aq.open_count(db) == aq.OpenCount(open=1, critical=1, acknowledged=0)

        app = create_app(Settings(auth_session_secret=SECRET), plant, db_url)
        client = app.server.test_client()
        url = f"/ack/{ack_token(SECRET, alert_id, 'li')}?lang=en"
        assert "Press 1" in client.get(url).get_data(as_text=True)
        assert client.post(url).status_code == 200
        [(source, event)] = ack_rows(db_url)
        assert (source, event["by"], event["via"]) == ("link:li", "li", "link")

        # The dataflow reads the acknowledgement from the log like any event.
        with psycopg.connect(db_url) as conn:
            end = conn.execute("SELECT max(seq) FROM ingest_log").fetchone()
        assert end is not None
        run_flow(plant, db_url, tmp_path / "rec", 1.0, upto_seq=end[0])
        [acked] = aq.open_board(db).alerts
        assert (acked.alert_id, acked.status, acked.acknowledged_by, acked.level) == (
            alert_id,
            "acknowledged",
            "li",
            1,
        )
        assert aq.open_count(db) == aq.OpenCount(open=0, critical=0, acknowledged=1)
        with psycopg.connect(db_url) as conn:
            steps = conn.execute(
                "SELECT step, level FROM v_alert_history WHERE alert_id = %s ORDER BY at, step",
                (alert_id,),
            ).fetchall()
        assert steps == [("opened", 0), ("escalated", 1), ("acknowledged", 1)]
        after = client.get(url).get_data(as_text=True)
        assert "already acknowledged (Li Na" in after and "<form" not in after  # its display name
        context.of(app.server).db.close()
    finally:
        db.close()


def test_people_show_by_their_display_names(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    """With the alerts file at hand, chips and "acknowledged by" show 张伟, not zhang; a broken
    file only means the names as the file spells them."""
    rules = tmp_path / "alerts.yaml"
    rules.write_text(E2E_RULES, encoding="utf-8")
    settings = Settings(auth_session_secret=SECRET, alerts_config=rules)
    assert alerts.people_names(settings) == {"zhang": "张伟", "li": "Li Na"}
    assert alerts.people_names(Settings(alerts_config=tmp_path / "missing.yaml")) == {}
    broken = tmp_path / "broken.yaml"
    broken.write_text("people: [\n", encoding="utf-8")
    assert alerts.people_names(Settings(alerts_config=broken)) == {}

    seed(db_url)
    app = create_app(settings, plant, db_url)
    try:
        client = app.server.test_client()
        page = client.get(f"/ack/{_token('im-down:machine:IM-02:1')}?lang=zh")
        assert "张伟" in page.get_data(as_text=True)
        db = context.of(app.server).db
        board = aq.open_board(db)
    finally:
        context.of(app.server).db.close()
    opts = alerts.RenderOptions(
        tz=plant.tz, lang="zh", can_ack=False, now=NOW, names=alerts.people_names(settings)
    )
    text = str(alerts.render_open(board, plant, opts))
    assert "张伟" in text and "'zhang'" not in text
