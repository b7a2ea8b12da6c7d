"""Change control (mesflow/change_control.py, collectors/crm_change.py) on real PostgreSQL,
through the real CRM API app, with the real dispatcher delivering the decision to a local
HTTP CRM and the real dataflow picking up an approved change."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from collectors.crm_api import create_app
from collectors.simulator.crm import Received, start_receiver
from mesflow import change_control as cc
from mesflow.ingest_log import append, record_for
from mesflow.plant import PlantConfig
from mesflow.services import free_port
from mesflow.settings import Settings
from notify import webhooks
from notify.dispatcher import DispatchConfig, Dispatcher, Endpoint
from streams.replay import replay_file
from tests.conftest import require
from tests.helpers import write_jsonl
from tests.test_dashboard import Chromium, _sign_in_in_browser, andon_url

__all__ = ["andon_url"]  # the fixture: the app on waitress with an admin user

TOKEN = "tok-change-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
# Near the wall clock: an approval's `order` event is dated now, and the dataflow's
# lateness rules must see the production around it as live.
T0 = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


@pytest.fixture
def api(db_url: str, plant: PlantConfig) -> Iterator[TestClient]:
    settings = Settings(crm_tokens=f"crm-a:{TOKEN}")
    with TestClient(create_app(plant, db_url, settings)) as client:
        yield client


def order(version: int, **changes: Any) -> dict[str, Any]:
    return {
        "order_no": "SO-1",
        "version": version,
        "customer": "ACME",
        "priority": 2,
        "product": "P-100",
        "qty": 100,
        "due": (T0 + timedelta(hours=30)).isoformat(),
        "status": "open",
        "ts": at(0),
        **changes,
    }


def setup_order(api: TestClient) -> None:
    assert api.post("/api/v1/orders", json=order(1), headers=BEARER).status_code == 201
    wo = {"work_order": "WO-1", "order_no": "SO-1", "product": "P-100", "qty": 100}
    r = api.post("/api/v1/work-orders", json={**wo, "machine": "IM-01"}, headers=BEARER)
    assert r.status_code == 201


def start_work(db_url: str) -> None:
    """An operator starts WO-1: a wo_start report in the ingest log (no dataflow ran yet:
    the lock must see the start in the log itself)."""
    event = {
        "type": "report",
        "kind": "wo_start",
        "machine": "IM-01",
        "ts": at(1),
        "work_order": "WO-1",
        "id": "start-1",
    }
    with psycopg.connect(db_url) as conn:
        append(conn, [record_for("test", event)])


def one(db_url: str, sql: str, *args: Any) -> Any:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(sql, args).fetchone()
    return None if row is None else (row[0] if len(row) == 1 else row)


def stored(db_url: str) -> tuple[int, int]:
    return one(db_url, "SELECT version, qty FROM crm_order WHERE order_no = 'SO-1'")


def decide(db_url: str, plant: PlantConfig, cr: int, decision: Any, comment: str = "ok") -> str:
    with psycopg.connect(db_url) as conn, conn.transaction():
        return cc.decide(conn, plant, None, cr, decision, by="planner1", comment=comment)


def test_unlocked_order_changes_at_once(api: TestClient, db_url: str) -> None:
    setup_order(api)
    r = api.post("/api/v1/orders", json=order(2, qty=150), headers=BEARER)
    assert r.status_code == 200 and r.json()["status"] == "accepted"
    assert stored(db_url) == (2, 150)
    # Recorded as applied, and the released work order's machine hears of it.
    assert one(db_url, "SELECT status FROM change_request WHERE order_no = 'SO-1'") == "applied"
    assert one(db_url, "SELECT machine FROM floor_notice") == "IM-01"


def test_locked_change_waits_for_approval_and_the_crm_hears(
    api: TestClient, db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    setup_order(api)
    start_work(db_url)
    new_due = (T0 + timedelta(hours=50)).isoformat()
    r = api.post("/api/v1/orders", json=order(2, qty=150, due=new_due), headers=BEARER)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "held" and body["changed"] == ["due", "qty"]
    cr = body["change_request"]
    assert stored(db_url) == (1, 100)  # not applied
    got = api.get(f"/api/v1/change-requests/{cr}", headers=BEARER).json()
    assert got["status"] == "pending" and got["change"]["qty"] == {"old": 100, "new": 150}
    assert api.get("/api/v1/change-requests/999999", headers=BEARER).status_code == 404
    # The same delivery repeated (same version, same snapshot): the same request, no new one.
    again = api.post("/api/v1/orders", json=order(2, qty=150, due=new_due), headers=BEARER)
    assert again.status_code == 202 and again.json()["change_request"] == cr
    assert one(db_url, "SELECT count(*) FROM change_request") == 1

    with pytest.raises(cc.ChangeError, match="comment_required"):
        decide(db_url, plant, cr, "approved", comment="  ")
    decide(db_url, plant, cr, "approved", comment="customer confirmed by phone")
    assert stored(db_url) == (2, 150)
    got = api.get(f"/api/v1/change-requests/{cr}", headers=BEARER).json()
    assert got["status"] == "approved" and got["decided_by"] == "planner1"
    history = one(db_url, "SELECT changed_by, change FROM order_history WHERE version = 2")
    assert history[0] == "planner1" and history[1]["qty"]["new"] == 150

    # The CRM hears the decision: the real dispatcher, a local signed HTTP receiver.
    secret = webhooks.new_secret()
    received = Received()
    port = free_port()
    server = start_receiver("127.0.0.1", port, secret, received, show=lambda _m: None)
    try:
        url = f"http://127.0.0.1:{port}/cb"
        d = Dispatcher(db_url, {"crm": Endpoint("crm", url, secret)}, DispatchConfig())
        try:
            while d.run_once():
                pass
        finally:
            d.close()
    finally:
        server.shutdown()
    decisions = [m for m in received.callbacks if m["type"] == "order.change_decision"]
    assert len(decisions) == 1
    data = decisions[0]["data"]
    assert data["change_id"] == cr and data["decision"] == "approved"
    assert data["by"] == "planner1" and data["comment"] == "customer confirmed by phone"

    # The dataflow sees the approved change: order_progress has the new qty and due.
    parts: list[dict[str, Any]] = [
        {"type": "state", "machine": "IM-01", "ts": at(1), "state": "running", "id": "s1"},
        *(
            {"type": "count", "machine": "IM-01", "ts": at(2 + i), "good": 1, "id": f"c{i}"}
            for i in range(10)
        ),
    ]
    replay_file(write_jsonl(tmp_path / "p.jsonl", parts), plant, db_url, tmp_path / "rec",
                progress=False)  # fmt: skip
    row = one(db_url, "SELECT qty, due, version, good FROM order_progress WHERE order_no='SO-1'")
    assert row[0] == 150 and row[1] == datetime.fromisoformat(new_due) and row[2] == 2
    assert row[3] == 10
    # Now the dataflow knows the start (work_order_progress) and the log's tail is past it:
    # the order stays locked.
    with psycopg.connect(db_url) as conn:
        assert conn.execute(
            "SELECT started_at IS NOT NULL FROM work_order_progress WHERE work_order = 'WO-1'"
        ).fetchone() == (True,)
        assert cc.is_locked(conn, "SO-1")
        # ... from work_order_progress alone: the log's wo_start is behind the dataflow.
        behind = conn.execute(
            "SELECT (SELECT min(last_seq) FROM dataflow_progress) >= "
            "(SELECT max(seq) FROM ingest_log WHERE source = 'test')"
        ).fetchone()
        assert behind == (True,)
    r = api.post("/api/v1/orders", json=order(3, qty=160, due=new_due), headers=BEARER)
    assert r.status_code == 202 and r.json()["status"] == "held"


def test_rejected_change_leaves_the_order(api: TestClient, db_url: str, plant: PlantConfig) -> None:
    setup_order(api)
    start_work(db_url)
    cr = api.post("/api/v1/orders", json=order(2, status="cancelled"), headers=BEARER).json()[
        "change_request"
    ]
    decide(db_url, plant, cr, "rejected", comment="half the parts are made; call sales")
    assert stored(db_url) == (1, 100)
    assert one(db_url, "SELECT status FROM crm_order") == "open"
    payload = one(db_url, "SELECT payload FROM outbox WHERE event_type = 'order.change_decision'")
    assert payload["decision"] == "rejected" and payload["change_id"] == cr
    assert one(db_url, "SELECT count(*) FROM floor_notice") == 0
    with pytest.raises(cc.ChangeError, match="not_pending"):
        decide(db_url, plant, cr, "approved")


def test_newer_version_supersedes_a_pending_request(api: TestClient, db_url: str) -> None:
    setup_order(api)
    start_work(db_url)
    first = api.post("/api/v1/orders", json=order(2, qty=150), headers=BEARER).json()
    second = api.post("/api/v1/orders", json=order(3, qty=180), headers=BEARER).json()
    assert second["status"] == "held" and second["superseded"] == first["change_request"]
    rows: dict[int, str] = dict(
        psycopg.connect(db_url).execute("SELECT id, status FROM change_request").fetchall()
    )
    assert rows == {first["change_request"]: "superseded", second["change_request"]: "pending"}
    # An older version than the pending one is stale.
    old = api.post("/api/v1/orders", json=order(2, qty=170), headers=BEARER).json()
    assert old["status"] == "ignored" and old["reason"] == "stale_version"
    # A newer version that only moves the priority applies at once and withdraws it.
    prio = api.post("/api/v1/orders", json=order(4, priority=1), headers=BEARER)
    assert prio.status_code == 200 and prio.json()["superseded"] == second["change_request"]
    assert stored(db_url) == (4, 100)
    assert one(db_url, "SELECT count(*) FROM change_request WHERE status = 'pending'") == 0
    # The order page's history says so in the planner's language: field names, states and
    # mesflow's own comment translated, the CRM's words as sent.
    from dashboards.pages import order_changes

    with psycopg.connect(db_url) as conn:
        data = order_changes.read(conn, "SO-1")
    pages = {
        lang: json.dumps(
            order_changes.render(data, UTC, lang, datetime.now(UTC))[0],
            default=str,
            ensure_ascii=False,
        )
        for lang in ("zh", "en")
    }
    assert "数量: 100 → 150" in pages["zh"] and "已被新版本取代" in pages["zh"]
    assert "已被取代" in pages["zh"] and "superseded" not in pages["zh"]
    assert "qty: 100 → 150" in pages["en"] and "superseded by a newer version" in pages["en"]
    assert (
        order_changes._change(
            {"status": {"old": "open", "new": "on_hold"}, "customer": {"old": "A", "new": "open"}},
            UTC,
            "zh",
        )
        == "状态: 进行中 → 暂停; 客户: A → open"
    )  # only a state's value is a state


def test_concurrent_decisions_never_both_apply(
    api: TestClient, db_url: str, plant: PlantConfig
) -> None:
    setup_order(api)
    start_work(db_url)
    cr = api.post("/api/v1/orders", json=order(2, qty=150), headers=BEARER).json()["change_request"]
    outcomes: list[str] = []
    barrier = threading.Barrier(3)

    def approve() -> None:
        barrier.wait()
        try:
            decide(db_url, plant, cr, "approved")
            outcomes.append("ok")
        except cc.ChangeError as err:
            outcomes.append(err.code)

    def crm_newer() -> None:
        barrier.wait()
        r = api.post("/api/v1/orders", json=order(3, qty=200), headers=BEARER)
        outcomes.append(f"crm:{r.json()['status']}")

    threads = [threading.Thread(target=approve) for _ in range(2)]
    threads.append(threading.Thread(target=crm_newer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # At most one approval applied; the CRM's newer version is held or superseded it.
    assert outcomes.count("ok") <= 1 and "crm:held" in outcomes
    assert one(db_url, "SELECT count(*) FROM order_history WHERE version = 2") == outcomes.count(
        "ok"
    )
    assert one(db_url, "SELECT count(*) FROM change_request WHERE status = 'pending'") == 1
    assert stored(db_url)[1] in (100, 150)


@pytest.mark.parametrize(
    "bad",
    [
        {"qty": 0},
        {"qty": -5},
        {"qty": 10**12},
        {"due": "1969-12-31T23:00:00+00:00"},
        {"customer": "AC\u0000ME"},
        {"product": "P-100\u0000"},
    ],
)
def test_hostile_changes_are_refused_as_today(
    api: TestClient, db_url: str, bad: dict[str, Any]
) -> None:
    setup_order(api)
    start_work(db_url)
    r = api.post("/api/v1/orders", json=order(2, **bad), headers=BEARER)
    assert r.status_code == 422
    assert one(db_url, "SELECT count(*) FROM change_request") == 0
    assert stored(db_url) == (1, 100)


def test_a_planner_proposes_on_the_order_page_path(
    api: TestClient, db_url: str, plant: PlantConfig
) -> None:
    setup_order(api)
    with psycopg.connect(db_url) as conn, conn.transaction():
        done = cc.propose(conn, plant, None, "SO-1", cc.Proposal(qty=120), by="planner1")
    assert done.status == "applied" and stored(db_url) == (2, 120)
    # The CRM hears of the person's change (and its new version) by the same callback.
    payload = one(db_url, "SELECT payload FROM outbox WHERE event_type = 'order.change_decision'")
    assert payload["version"] == 2 and payload["by"] == "planner1"
    start_work(db_url)
    with psycopg.connect(db_url) as conn, conn.transaction():
        held = cc.propose(conn, plant, None, "SO-1", cc.Proposal(cancel=True), by="planner1")
    assert held.status == "held" and one(db_url, "SELECT status FROM crm_order") == "open"
    for bad in (cc.Proposal(qty=0), cc.Proposal(qty=-1), cc.Proposal(qty=10**10),
                cc.Proposal(due=datetime(1969, 1, 1, tzinfo=UTC))):  # fmt: skip
        with psycopg.connect(db_url) as conn, pytest.raises(cc.ChangeError):
            cc.propose(conn, plant, None, "SO-1", bad, by="planner1")


def test_projection_is_a_simple_rate_extrapolation() -> None:
    now = datetime(2026, 11, 20, 8, tzinfo=UTC)
    p = cc.project(good=60, qty_now=100, qty_new=180, rate_per_h=60.0, eta_now=None,
                   due_new=now + timedelta(hours=1), now=now)  # fmt: skip
    assert p.eta_new == now + timedelta(hours=2) and p.late_s == 3600
    assert cc.project(good=60, qty_now=100, qty_new=50, rate_per_h=0, eta_now=None,
                      due_new=None, now=now).eta_new == now  # fmt: skip
    assert cc.project(good=0, qty_now=100, qty_new=50, rate_per_h=0, eta_now=None,
                      due_new=None, now=now).eta_new is None  # fmt: skip


def _type(browser: Any, selector: str, text: str) -> None:
    """Type into a React-controlled field: the native setter, then an input event."""
    browser.eval(
        f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
        " const proto = el.tagName === 'TEXTAREA' ? HTMLTextAreaElement : HTMLInputElement;"
        " Object.getOwnPropertyDescriptor(proto.prototype, 'value').set.call(el, "
        f"{json.dumps(text)}); el.dispatchEvent(new Event('input', {{bubbles: true}})); }})()"
    )


@pytest.mark.browser
def test_a_planner_decides_on_the_order_page(
    db_url: str,
    andon_url: str,
    api: TestClient,
    plant: PlantConfig,
    tmp_path: Path,
) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    setup_order(api)
    start_work(db_url)
    cr = api.post("/api/v1/orders", json=order(2, qty=150), headers=BEARER).json()["change_request"]
    browser = Chromium(tmp_path)
    try:
        _sign_in_in_browser(browser, f"{andon_url}/orders/SO-1?lang=en")
        pending = f"document.querySelector('.occ-pending[data-request=\"{cr}\"]')"
        browser.wait_for(f"{pending} != null")
        text = browser.eval(f"{pending}.textContent")
        assert "ETA for the new quantity" in text and "WO-1" in text and "IM-01" in text
        # No comment: refused, nothing applied.
        browser.eval("document.querySelector('#occ-approve').click()")
        browser.wait_for("document.querySelector('#occ-msg').textContent.includes('required')")
        assert stored(db_url) == (1, 100)
        _type(browser, "#occ-comment", "customer confirmed")
        browser.eval("document.querySelector('#occ-approve').click()")
        browser.wait_for("document.querySelector('#occ-msg').textContent.includes('Approved')")
        browser.wait_for("document.querySelector('.occ-pending') == null")
        history = browser.wait_for(
            "document.querySelector('.occ-history table')?.textContent.includes('customer"
            " confirmed') && document.querySelector('.occ-history').textContent"
        )
        assert "customer confirmed" in history and "approved" in history
        # A planner's own change of the (locked) order is held.
        _type(browser, "#occ-qty", "175")
        browser.eval("document.querySelector('#occ-propose').click()")
        browser.wait_for("document.querySelector('#occ-msg').textContent.includes('waits')")
        browser.wait_for("document.querySelector('.occ-pending') != null")
    finally:
        browser.close()
    assert stored(db_url) == (2, 150)
    assert (
        one(db_url, "SELECT requested_by FROM change_request WHERE status = 'pending'") == "admin"
    )


def test_the_lock_holds_when_another_source_names_the_work_order(
    api: TestClient, db_url: str
) -> None:
    """The demo's simulator names the same work order ids for its stock orders: the
    progress row's order_no may say another order for a moment. The intake's work_order
    table says whose it is, so the order stays locked and the change is held."""
    setup_order(api)
    with psycopg.connect(db_url) as conn:
        conn.execute(
            """INSERT INTO work_order_progress (work_order, order_no, product, qty, machine,
                   good, scrap, progress, rate_per_h, started_at, last_event_ts)
               VALUES ('WO-1', 'STOCK-P-100', 'P-100', 100, 'IM-01', 5, 0, 0.05, 0, %s, %s)""",
            (at(1), at(2)),
        )
        # The dataflow has taken in the whole log: the lock cannot come from the log itself.
        conn.execute(
            """INSERT INTO dataflow_progress (flow, last_seq)
               VALUES ('machines', (SELECT max(seq) FROM ingest_log))"""
        )
    r = api.post("/api/v1/orders", json=order(2, qty=150), headers=BEARER)
    assert r.status_code == 202 and r.json()["status"] == "held"
