"""/dispatch, /promise and the operator tablet's dispatch order on a seeded plant (real
PostgreSQL; the pages' own functions, then a real browser), zh/en; writes
docs/screenshots/dispatch-zh-1280x800.png.

Seed (relative to the wall clock, as the pages project from it), all on IM-01 at the ideal
27 s per P-100 part (nothing made yet, so no measured rate):
- SO-X, priority 3, 500 parts (3 h 45 min), due in 5.5 h: alone it finishes within
  3 h 45 min + at most 40 min of breaks + the at-risk order's 18 min: on time.
- SO-Z, priority 5, 40 parts, but at risk (order_progress): first whatever its priority.
- SO-VIP, priority 1, 400 parts (3 h): second, ahead of SO-X, which now finishes at least
  6 h 45 min from now: past its due date, and the page says SO-VIP pushed it.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from collectors.crm_api import create_app as create_api
from dashboards import context
from dashboards import dispatch_queries as dq
from dashboards.app import create_app
from dashboards.pages import dispatch, operator_dispatch, promise
from dashboards.queries import Database
from mesflow import users
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from tests.conftest import require
from tests.test_dashboard import Chromium, _sign_in_in_browser, andon_url, sign_in

__all__ = ["andon_url"]  # fixture

TOKEN = "tok-dispatch-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
_OVERFLOW = "document.documentElement.scrollWidth > window.innerWidth"


@pytest.fixture
def api(db_url: str, plant: PlantConfig) -> Iterator[TestClient]:
    with TestClient(create_api(plant, db_url, Settings(crm_tokens=f"crm-a:{TOKEN}"))) as client:
        yield client


def seed(api: TestClient, db_url: str) -> None:
    now = datetime.now(UTC)
    for order_no, prio, qty, due_h in (("SO-X", 3, 500, 5.5), ("SO-Z", 5, 40, 48),
                                       ("SO-VIP", 1, 400, 24)):  # fmt: skip
        order = {
            "order_no": order_no, "version": 1, "customer": "ACME" if prio > 1 else "VIP Co",
            "priority": prio, "product": "P-100", "qty": qty,
            "due": (now + timedelta(hours=due_h)).isoformat(), "status": "open",
            "ts": (now - timedelta(minutes=5)).isoformat(),
        }  # fmt: skip
        r = api.post("/api/v1/orders", json=order, headers=BEARER)
        assert r.status_code in (200, 201), r.text
        wo = {
            "work_order": "W" + order_no, "order_no": order_no, "product": "P-100", "qty": qty,
            "machine": "IM-01", "ts": (now - timedelta(minutes=5)).isoformat(),
        }  # fmt: skip
        r = api.post("/api/v1/work-orders", json=wo, headers=BEARER)
        assert r.status_code == 201, r.text
    with psycopg.connect(db_url) as conn:
        conn.execute(
            """INSERT INTO order_progress (order_no, customer, priority, product, qty, due, status,
                   version, good, scrap, progress, eta, at_risk, last_event_ts)
               SELECT order_no, customer, priority, product, qty, due, status, version, 0, 0, 0,
                      due + interval '1 hour', true, now()
               FROM crm_order WHERE order_no = 'SO-Z'"""
        )


def test_dispatch_lists_csv_promise_and_the_tablet_order(
    api: TestClient, db_url: str, plant: PlantConfig
) -> None:
    seed(api, db_url)
    db = Database(db_url)
    try:
        now, [ml] = dispatch.read_lists(plant, db, ["IM-01"])
        assert [e.job.order_no for e in ml.entries] == ["SO-Z", "SO-VIP", "SO-X"]
        x = ml.entries[2]
        assert x.late and x.slip_us is not None and x.slip_us > 0
        assert [s.job.order_no for s in ml.pushes["WSO-VIP"]] == ["SO-X"]
        assert dispatch.pushed_by_map(ml) == {"WSO-X": ["SO-VIP"]}
        # The page's rows and its CSV say the same.
        rows = list(csv.DictReader(io.StringIO(dispatch.csv_text(plant, [ml]))))
        assert [(r["position"], r["order_no"], r["late"], r["pushed_by"]) for r in rows] == [
            ("1", "SO-Z", "False", ""),
            ("2", "SO-VIP", "False", ""),
            ("3", "SO-X", "True", "SO-VIP"),
        ]
        assert rows[2]["finish"] == dispatch.iso(x.finish, plant.tz)
        assert float(rows[2]["slack_h"]) == pytest.approx(-x.slip_us / 3.6e9, abs=0.01)
        zh = str(dispatch.render(plant, now, [ml], "zh"))
        assert "被 SO-VIP 挤过交期" in zh and "使 SO-X 超过交期" in zh and "风险" in zh
        en = str(dispatch.render(plant, now, [ml], "en"))
        assert "pushed past due by SO-VIP" in en

        # The promise page: a second VIP order of 100 parts on IM-01 pushes SO-X further;
        # on any machine the earliest finish wins (an idle press).
        view = str(promise.answer_view(plant, db, "en", "P-100", 100, 1, "IM-01"))
        assert "would be done by" in view and "on IM-01" in view and "SO-X" not in view
        view = str(promise.answer_view(plant, db, "zh", "P-100", 10**9, 1, None))
        assert "天内无法完成" in view
        bad: list[tuple[Any, Any, Any]] = [
            (None, 1, 1), ("P-100", 0, 1), ("P-100", 1.5, 1), ("P-100", 5, float("nan"))
        ]  # fmt: skip
        for prod, qty, prio in bad:
            view = str(promise.answer_view(plant, db, "en", prod, qty, prio, None))
            assert "Choose a product" in view
        inputs = db.run(lambda conn: dq.read_inputs(conn, plant, now))
        direct = dq.promise_answer(plant, inputs, now, "P-100", 100, 1, None)
        assert direct is not None and direct.machine != "IM-01"  # IM-02 or IM-03 is idle

        # The operator tablet offers them in dispatch order (inside a board request).
        app = create_app(Settings(), plant, db_url)
        with app.server.app_context(), psycopg.connect(db_url) as conn:
            given: list[operator_dispatch.WorkOrderRow] = [
                ("WSO-X", "P-100", 500, 0),
                ("WSO-VIP", "P-100", 400, 0),
            ]
            got = operator_dispatch.in_dispatch_order(conn, "IM-01", given)
            assert [w[0] for w in got] == ["WSO-Z", "WSO-VIP", "WSO-X"]
            assert operator_dispatch.css("WSO-Z", got, None) == " next-up"
            assert operator_dispatch.css("WSO-VIP", got, "WSO-Z") == " next-up"
            assert operator_dispatch.css("WSO-X", got, None) == ""
    finally:
        db.close()


def test_a_large_plant_picks_a_line(
    api: TestClient, db_url: str, plant: PlantConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All machines of a plant larger than MACHINES_SHOWN: the first ones and a note (here
    6 of the example plant's 12); a line or a machine picked: all of them, no note."""
    seed(api, db_url)
    monkeypatch.setattr(dispatch, "MACHINES_SHOWN", 6)
    with psycopg.connect(db_url) as conn:
        users.add_user(conn, "view1", "viewer", "viewer-password-123")
    app = create_app(Settings(auth_session_secret="s" * 40), plant, db_url)

    def body(line: str | None, machine: str | None, lang: str) -> str:
        request = {
            "output": "dispatch-body.children",
            "outputs": {"id": "dispatch-body", "property": "children"},
            "inputs": [
                {"id": "dispatch-tick", "property": "n_intervals", "value": 1},
                {"id": "dispatch-line", "property": "value", "value": line},
                {"id": "dispatch-machine", "property": "value", "value": machine},
            ],
            "state": [{"id": "dispatch-lang", "property": "data", "value": lang}],
            "changedPropIds": [],
        }
        answer = client.post("/_dash-update-component", json=request)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        return json.dumps(answer.get_json(), ensure_ascii=False)

    try:
        client = app.server.test_client()
        sign_in(client, "view1", "viewer-password-123")
        everything = body(None, None, "en")
        assert everything.count('"dispatch-machine"') == 6
        assert "The first 6 of 12 machines: pick a line or a machine" in everything
        assert "WSO-VIP" in everything  # IM-01 comes first
        assert "前 6 台" in body(None, None, "zh")
        line = plant.line_of_machine["CNC-01"].id
        cnc = body(line, None, "en")
        assert cnc.count('"dispatch-machine"') == 6 and "pick a line" not in cnc
        one = body(None, "IM-01", "en")
        assert one.count('"dispatch-machine"') == 1 and "pick a line" not in one
    finally:
        context.of(app.server).db.close()


@pytest.mark.browser
def test_dispatch_page_in_browser(
    api: TestClient, db_url: str, andon_url: str, tmp_path: Path
) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    seed(api, db_url)
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser = Chromium(tmp_path)
    try:
        _sign_in_in_browser(browser, f"{andon_url}/dispatch?lang=zh&line=IM")
        browser.wait_for("location.pathname === '/dispatch'")
        browser.goto(f"{andon_url}/dispatch?lang=zh&line=IM")
        browser.wait_for("!!document.querySelector('.dispatch-row.pushed')")
        text: Any = browser.eval("document.querySelector('.dispatch-body').innerText")
        assert "SO-VIP" in text and "被 SO-VIP 挤过交期" in text
        browser.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        browser.wait_for("window.innerWidth === 1280")
        time.sleep(0.5)
        assert not browser.eval(_OVERFLOW)
        browser.screenshot(SHOTS / "dispatch-zh-1280x800.png")
        # The promise page: the form renders for a manager (admin here), without overflow.
        browser.goto(f"{andon_url}/promise?lang=zh")
        browser.wait_for("!!document.querySelector('#promise-go')")
        assert "交期承诺" in str(browser.eval("document.body.innerText"))
        assert not browser.eval(_OVERFLOW)
        # Its number boxes are as wide as a figure, not the row (Dash 4 draws each as a
        # container as wide as its parent), and their figures are dark on the white box.
        boxes = browser.eval(
            "['#promise-qty', '#promise-priority'].map(id => { const i = document.querySelector(id);"
            " const w = i.closest('.dash-input-container'); return [i.value,"
            " w.getBoundingClientRect().width, getComputedStyle(i).color,"
            " getComputedStyle(w).backgroundColor]; })"
        )
        assert [b[0] for b in boxes] == ["100", "1"]
        for _value, width, colour, background in boxes:
            assert 60 < width < 300, boxes
            assert colour != background and colour not in ("rgb(244, 246, 248)",), boxes
        # Ask (P-100 × 100 at priority 1 on any machine): the callback answers in words.
        browser.eval("document.querySelector('#promise-go').click()")
        answer = browser.wait_for(
            "document.querySelector('.promise-answer') &&"
            " document.querySelector('.promise-answer').innerText"
        )
        assert "100 件 P-100 预计" in answer, answer
    finally:
        browser.close()


def test_the_order_page_links_each_machine_to_its_dispatch_list() -> None:
    from dashboards.pages import order_dispatch

    link = order_dispatch.machine_link("IM-01", "zh")
    assert link.href == "/dispatch?machine=IM-01&lang=zh" and link.children == "IM-01"
    assert order_dispatch.machine_link(None, "en") == "—"
