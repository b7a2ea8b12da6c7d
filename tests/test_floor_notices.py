"""Changes reach the floor (issue 12, item 2): floor notices on the andon tile and the
operator tablet until acknowledged, the supervisor's push through the alert outbox, and the
change response time view; real PostgreSQL, the real CRM API app, one real browser."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from dash import html
from fastapi.testclient import TestClient

from collectors.crm_api import create_app
from dashboards.pages import operator_notices
from mesflow import change_control as cc
from mesflow.alert_rules import AlertsConfigError, load_alerts_config
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from tests.conftest import require
from tests.test_change_control import BEARER, TOKEN, one, order, setup_order, start_work
from tests.test_dashboard import Chromium, _sign_in_in_browser, andon_url

__all__ = ["andon_url"]  # the fixture: the app on waitress with an admin user

ALERTS = """
people:
  li: {display: Li Supervisor, email: li@example.com}
channels:
  floor: {type: webhook, url_env: FLOOR_HOOK_URL}
order_changes:
  - {line: IM, people: [li], channels: [floor]}
"""


def tile_attrs(machine: str) -> dict[str, Any]:
    return {"data-machine": machine}


@pytest.fixture
def alerts_file(tmp_path: Path) -> Path:
    path = tmp_path / "alerts.yaml"
    path.write_text(ALERTS, encoding="utf-8")
    return path


@pytest.fixture
def api_alerts(
    db_url: str, plant: PlantConfig, alerts_file: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv("FLOOR_HOOK_URL", "http://127.0.0.1:9/hook")
    settings = Settings(crm_tokens=f"crm-a:{TOKEN}", alerts_config=alerts_file)
    with TestClient(create_app(plant, db_url, settings)) as client:
        yield client


def held_and_approved(api: TestClient, db_url: str, plant: PlantConfig, alerts: Any) -> int:
    setup_order(api)
    start_work(db_url)
    cr = api.post("/api/v1/orders", json=order(2, qty=150), headers=BEARER).json()["change_request"]
    with psycopg.connect(db_url) as conn, conn.transaction():
        cc.decide(conn, plant, alerts, cr, "approved", by="planner1", comment="ok")
    return int(cr)


def test_applied_change_leaves_a_notice_until_acknowledged(
    api_alerts: TestClient, db_url: str, plant: PlantConfig
) -> None:
    cr = held_and_approved(api_alerts, db_url, plant, None)
    with psycopg.connect(db_url) as conn:
        notices = cc.open_notices(conn)
        assert [(n.machine, n.order_no, n.change_request_id) for n in notices] == [
            ("IM-01", "SO-1", cr)
        ]
        assert "qty 100 → 150" in notices[0].summary
        # The andon's tile of IM-01 gets the notice; IM-02's does not.
        board = html.Div([html.Div("a", **tile_attrs(m)) for m in ("IM-01", "IM-02")])
        marked = operator_notices.add_to_tiles(board, {"IM-01": notices}, "en")
        assert "qty 100 → 150" in str(marked.children[0].children)
        assert "tile-notice" not in str(marked.children[1].children)
        # Only on its own machine, and only the first acknowledgement counts.
        assert cc.acknowledge(conn, notices[0].id, "IM-02", "op1") is False
        assert cc.acknowledge(conn, notices[0].id, "IM-01", "op1") is True
        assert cc.acknowledge(conn, notices[0].id, "IM-01", "op2") is False
        conn.commit()
        assert cc.open_notices(conn) == []
        row = conn.execute(
            "SELECT acknowledged_by, notices, acknowledged FROM v_change_requests "
            "JOIN v_change_response ON change_request_id = id WHERE id = %s",
            (cr,),
        ).fetchone()
    assert row == ("op1", 1, 1)


def test_a_rejected_or_held_change_leaves_no_notice(api_alerts: TestClient, db_url: str) -> None:
    setup_order(api_alerts)
    start_work(db_url)
    api_alerts.post("/api/v1/orders", json=order(2, qty=150), headers=BEARER)
    assert one(db_url, "SELECT count(*) FROM floor_notice") == 0
    # A priority-only change applies at once and does not bother the floor.
    api_alerts.post("/api/v1/orders", json=order(3, priority=1), headers=BEARER)
    assert one(db_url, "SELECT count(*) FROM floor_notice") == 0


def test_change_response_time_on_a_hand_worked_example(
    api_alerts: TestClient, db_url: str, plant: PlantConfig
) -> None:
    cr = held_and_approved(api_alerts, db_url, plant, None)
    # Hand-worked: the change arrived 08:00:00, was applied 08:05:00; IM-01 acknowledged
    # at 08:12:34 (a second notice on another machine at 08:20:00 does not count): 754 s.
    t0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO floor_notice (change_request_id, order_no, summary, machine) "
            "VALUES (%s, 'SO-1', 'x', 'IM-02')",
            (cr,),
        )
        conn.execute(
            "UPDATE change_request SET received_at = %s, applied_at = %s WHERE id = %s",
            (t0, t0 + timedelta(minutes=5), cr),
        )
        before = conn.execute(
            "SELECT response_s FROM v_change_response WHERE change_request_id = %s", (cr,)
        ).fetchone()
        assert before == (None,)  # nobody acknowledged yet
        for machine, at in (("IM-01", timedelta(minutes=12, seconds=34)),
                            ("IM-02", timedelta(minutes=20))):  # fmt: skip
            conn.execute(
                "UPDATE floor_notice SET acknowledged_by = 'op', acknowledged_at = %s "
                "WHERE change_request_id = %s AND machine = %s",
                (t0 + at, cr, machine),
            )
        row = conn.execute(
            "SELECT received_at, applied_at, acknowledged_at, response_s FROM v_change_response "
            "WHERE change_request_id = %s",
            (cr,),
        ).fetchone()
    assert row == (t0, t0 + timedelta(minutes=5), t0 + timedelta(minutes=12, seconds=34), 754.0)


def test_the_line_supervisor_push_is_enqueued(
    api_alerts: TestClient, db_url: str, plant: PlantConfig, alerts_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("FLOOR_HOOK_URL", "http://127.0.0.1:9/hook")
    alerts = load_alerts_config(alerts_file, plant)
    cr = held_and_approved(api_alerts, db_url, plant, alerts)
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT target, channel, status, payload FROM alert_delivery ORDER BY target"
        ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("channel:floor", "floor", "pending"),
        ("email:li", "email", "pending"),
    ]
    payload = rows[0][3]
    assert payload["kind"] == "order_change" and payload["line"] == "IM"
    assert payload["order_no"] == "SO-1" and payload["facts"]["change_request"] == cr
    assert payload["facts"]["machines"] == "IM-01"
    # The CRM's own unlocked change goes the same way (the API reads the alerts file).
    api_alerts.post("/api/v1/orders", json=order(3, qty=150, due=order(1)["due"][:-6] + "+09:00"),
                    headers=BEARER)  # fmt: skip
    assert one(db_url, "SELECT count(*) FROM change_request WHERE status = 'pending'") == 1


def test_alerts_file_order_changes_are_checked(
    plant: PlantConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOOR_HOOK_URL", "http://127.0.0.1:9/hook")
    bad = tmp_path / "bad.yaml"
    bad.write_text(ALERTS.replace("people: [li]", "people: [wang]"), encoding="utf-8")
    with pytest.raises(AlertsConfigError, match=r"order_changes\.0\.people\.0"):
        load_alerts_config(bad, plant)
    bad.write_text(ALERTS.replace("line: IM,", "line: NOPE,"), encoding="utf-8")
    with pytest.raises(AlertsConfigError, match=r"order_changes\.0\.line"):
        load_alerts_config(bad, plant)


@pytest.mark.browser
def test_floor_sees_and_acknowledges_in_the_browser(
    db_url: str,
    andon_url: str,
    plant: PlantConfig,
    tmp_path: Path,
) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    with TestClient(create_app(plant, db_url, Settings(crm_tokens=f"crm-a:{TOKEN}"))) as api:
        cr = held_and_approved(api, db_url, plant, None)
    browser = Chromium(tmp_path)
    try:
        _sign_in_in_browser(browser, f"{andon_url}/andon?lang=en")
        tile = "document.querySelector('[data-machine=\"IM-01\"]')"
        browser.wait_for(f"{tile}?.querySelector('.tile-notice') != null")
        text = browser.eval(f"{tile}.querySelector('.tile-notice').textContent")
        assert "SO-1" in text and "qty 100 → 150" in text
        # The Chinese board names the fields in Chinese.
        browser.goto(f"{andon_url}/andon?lang=zh")
        browser.wait_for(f"{tile}?.querySelector('.tile-notice') != null")
        text = browser.eval(f"{tile}.querySelector('.tile-notice').textContent")
        assert "订单变更 SO-1: 数量 100 → 150" in text and "qty" not in text, text
        # The tablet of IM-01 (admin is above operator) shows it with an Acknowledge button.
        browser.goto(f"{andon_url}/operator?lang=en")
        browser.wait_for("document.querySelectorAll('.op-pick').length >= 12")
        browser.eval(
            "[...document.querySelectorAll('.op-pick')]"
            f".find(b => b.textContent.includes({json.dumps('IM-01')})).click()"
        )
        browser.wait_for("document.querySelector('.op-notice-ack') != null")
        browser.eval("document.querySelector('.op-notice-ack').click()")
        browser.wait_for("document.querySelector('.op-notice') == null")
        browser.goto(f"{andon_url}/andon?lang=en")
        browser.wait_for(f"{tile} != null && {tile}.querySelector('.tile-notice') == null")
    finally:
        browser.close()
    ack = one(
        db_url,
        "SELECT acknowledged_by, response_s > 0 FROM v_change_response "
        "WHERE change_request_id = %s",
        cr,
    )
    assert ack == ("admin", True)


def test_a_notice_reads_times_in_plant_time() -> None:
    """The CRM sends due dates in its own offset; the floor reads them in the plant's."""
    change = {
        "due": {"old": "2026-12-01T12:00:00+00:00", "new": "2026-12-01T08:00:00+08:00"},
        "qty": {"old": 600, "new": 1200},
    }
    text = cc.summary(change, ZoneInfo("Asia/Shanghai"))
    assert text == "qty 600 → 1200; due 2026-12-01 20:00 → 2026-12-01 08:00"
    assert cc.summary({"due": {"old": None, "new": "not a time"}}, ZoneInfo("UTC")) == (
        "due None → not a time"
    )


def test_a_notice_reads_in_the_boards_language() -> None:
    change = {
        "qty": {"old": 600, "new": 1200},
        "due": {"old": "2026-12-01T12:00:00+00:00", "new": "2026-12-02T08:00:00+08:00"},
        "status": {"old": "open", "new": "on_hold"},
        "priority": {"old": 3, "new": 1},
    }
    text = cc.summary(change, ZoneInfo("Asia/Shanghai"))
    assert cc.localized(text, "en") == text
    assert cc.localized(text, "zh") == (
        "数量 600 → 1200; 交期 2026-12-01 20:00 → 2026-12-02 08:00; "
        "状态 进行中 → 暂停; 优先级 3 → 1"
    )
    assert cc.localized(cc.summary({}), "zh") == "无字段变更"
    # A line not of summary()'s making (an older row, a hand-written one) is left as it is.
    assert cc.localized("顾客要求加急", "zh") == "顾客要求加急"
    assert cc.localized("qty", "zh") == "qty"
