"""The order's operations page (dashboards/pages/order_routing.py) on real data: the figures
of a replay through the dataflow, both languages, roles, and hostile query values."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import waitress

from dashboards import context
from dashboards.app import create_app
from dashboards.pages.orders import order_layout
from mesflow import users
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from streams.replay import replay_file
from tests.conftest import require
from tests.helpers import write_jsonl
from tests.test_dashboard import Chromium, sign_in
from tests.test_order_board import _call
from tests.test_routings_flow import plant_events, with_routing

BODY = "rt-body.children"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
PASSWORD = "pw-for-routing-tests"


def _cells(node: Any, out: list[list[Any]]) -> None:
    """The table rows of a Dash component tree (JSON), as lists of their cells' values."""
    if isinstance(node, list):
        for x in node:
            _cells(x, out)
    elif isinstance(node, dict):
        if node.get("type") == "Tr":
            tds = node["props"]["children"]
            if any(isinstance(td, dict) and td.get("type") == "Td" for td in tds):
                out.append([td["props"].get("children") for td in tds])
                return
        _cells(node.get("props", {}).get("children"), out)


def rows(client: Any, order: str, lang: str) -> list[list[Any]]:
    response = _call(
        client,
        BODY,
        [("rt-tick", "n_intervals", 1)],
        [("rt-key", "data", order), ("rt-lang", "data", lang)],
    )
    out: list[list[Any]] = []
    _cells(response["rt-body"]["children"], out)
    return out


def test_operations_page_shows_each_step_and_the_wip(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    plant = with_routing(plant)
    replay_file(
        write_jsonl(tmp_path / "e.jsonl", plant_events()),
        plant,
        db_url,
        tmp_path / "rec",
        progress=False,
    )
    with psycopg.connect(db_url, autocommit=True) as conn:
        users.add_user(conn, "viewer1", "viewer", "viewer-password")
        users.add_user(conn, "boss", "manager", "manager-password")
    app = create_app(Settings(auth_session_secret="test-secret-" + "x" * 32), plant, db_url)
    try:
        anonymous = app.server.test_client()
        response = anonymous.get("/routing?order=SO-R")
        assert response.status_code == 302 and "/login" in response.location
        callback = {"output": BODY, "outputs": [], "inputs": []}
        assert anonymous.post("/_dash-update-component", json=callback).status_code == 401
        viewer = app.server.test_client()
        sign_in(viewer, "viewer1", "viewer-password")
        assert viewer.get("/routing?order=SO-R").status_code == 403  # as the order page

        boss = app.server.test_client()
        sign_in(boss, "boss", "manager-password", "/orders/SO-R")
        assert boss.get("/routing?order=SO-R&lang=zh").status_code == 200
        # The order page links here (the link is static in its layout).
        with app.server.test_request_context("/orders/SO-R"):
            layout = order_layout("SO-R", "en").to_plotly_json()
            assert "/routing?order=SO-R&lang=en" in json.dumps(layout, default=str)

        def body(order: object, lang: str) -> str:
            response = _call(
                boss,
                BODY,
                [("rt-tick", "n_intervals", 1)],
                [("rt-key", "data", order), ("rt-lang", "data", lang)],
            )
            return json.dumps(response["rt-body"]["children"], ensure_ascii=False)

        en = body("SO-R", "en")
        # WO-R1, its own routing: in / good / scrap / waiting per step, then the last step.
        got = rows(boss, "SO-R", "en")
        assert got[0][:10] == ["1. 10", "Molding", "IM-01", "—", 55, 50, 5, 0, "90.9%", "done"]
        assert got[1][:10] == ["2. 20", "Drilling", "CNC-03", "45", 50, 40, 3, 7, "80.0%", "done"]
        assert got[2][:9] == ["3. 30", "Final check (last step: the order's progress)",
                              "CNC-01", "—", 40, 30, 2, 8, "75.0%"]  # fmt: skip
        assert "Final check (last step: the order's progress)" in en
        assert "Work order WO-R2 · P-100 · 40" in en
        # WO-R2 follows the plant file's routing: its steps' names come from there.
        zh = body("SO-R", "zh")
        assert "注塑" in zh and "钻孔（末道工序：订单进度按此计）" in zh
        assert "工序间在制品（按产品）" in zh
        # 7 (WO-R1) + 12 (WO-R2) waiting between molding and drilling, 8 after drilling.
        assert ["P-100", "10", "20", 19, 2] in rows(boss, "SO-R", "zh")
        assert ["P-100", "20", "30", 8, 1] in rows(boss, "SO-R", "zh")
        # An order without routed work orders, and hostile keys: a message, no error.
        assert "No work order of this order follows a routing" in body("SO-N", "en")
        for hostile in ("x" * 500, "SO-R\x00", ["SO-R"], {"a": 1}, 7, None, ""):
            assert "No order given" in body(hostile, "en")
    finally:
        context.of(app.server).db.close()


@pytest.fixture
def served(db_url: str, plant: PlantConfig, tmp_path: Path) -> Iterator[str]:
    """The boards over a replay of plant_events, served over HTTP, with a manager."""
    routed = with_routing(plant)
    replay_file(
        write_jsonl(tmp_path / "e.jsonl", plant_events()),
        routed,
        db_url,
        tmp_path / "rec",
        progress=False,
    )
    with psycopg.connect(db_url, autocommit=True) as conn:
        users.add_user(conn, "manager", "manager", PASSWORD)
    app = create_app(Settings(auth_session_secret="test-secret-" + "r" * 32), routed, db_url)
    server = waitress.create_server(app.server, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        thread.join(timeout=5)
        context.of(app.server).db.close()


@pytest.mark.browser
def test_operations_page_in_the_browser(served: str, tmp_path: Path) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    browser = Chromium(tmp_path)
    try:
        browser.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        # From the order page, through its link, as a manager would.
        browser.goto(f"{served}/orders/SO-R?lang=en")
        browser.wait_for("!!document.querySelector('#password')")
        browser.eval("document.querySelector('#username').value = 'manager'")
        browser.eval(f"document.querySelector('#password').value = {json.dumps(PASSWORD)}")
        browser.eval("document.querySelector('button[type=submit]').click()")
        browser.wait_for("!!document.querySelector('a.order-routing-link')")
        browser.eval("document.querySelector('a.order-routing-link').click()")
        browser.wait_for("document.querySelectorAll('.routing-table tbody tr').length === 5")
        text = browser.eval("document.querySelector('.order-body').textContent")
        assert "Work order WO-R1" in text and "Final check" in text and "80.0%" in text
        assert browser.eval("document.documentElement.scrollWidth") <= 1280
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        browser.screenshot(SCREENSHOTS / "routing-en-1280x800.png")
        browser.goto(f"{served}/routing?order=SO-R&lang=zh")
        browser.wait_for("document.querySelectorAll('.routing-table tbody tr').length === 5")
        text = browser.eval("document.querySelector('.order-body').textContent")
        assert "钻孔" in text and "工序间在制品" in text
        browser.screenshot(SCREENSHOTS / "routing-zh-1280x800.png")
    finally:
        browser.close()
