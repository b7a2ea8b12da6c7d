"""/kpis in a real browser (chromium over the DevTools pipe) on test_delivery_kpis's seeded
orders; writes docs/screenshots/kpis-en-1280x800.png. The board's CSV is the report's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from dashboards import kpi_queries
from dashboards.queries import Database
from mesflow.delivery_kpis import Dimension, MonthRange, fetch_delivery_kpis, to_csv
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from tests.conftest import require
from tests.test_dashboard import Chromium, _sign_in_in_browser, andon_url
from tests.test_delivery_kpis import kpi_db

__all__ = ["andon_url", "kpi_db"]  # fixtures

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
TZ = ZoneInfo("Asia/Shanghai")


def test_board_csv_is_the_reports(kpi_db: str) -> None:
    db = Database(kpi_db)
    try:
        by: Dimension
        for by in ("customer", "product", "month"):
            board = kpi_queries.kpi_csv(db, TZ, by, MonthRange("2026-11", "2026-11"))
            report = to_csv(
                fetch_delivery_kpis(kpi_db, TZ, by, MonthRange("2026-11", "2026-11")),
                by,
            )
            assert board == report and board.count("\n") >= 2
        assert kpi_queries.choices(db, TZ) == (
            ["ACME", "BETA"], ["P1", "P2"], ["2026-10", "2026-11"],
        )  # fmt: skip
    finally:
        db.close()


@pytest.mark.browser
def test_kpis_page_in_browser(kpi_db: str, andon_url: str, tmp_path: Path) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser = Chromium(tmp_path)
    try:
        _sign_in_in_browser(browser, f"{andon_url}/kpis?lang=en")
        browser.wait_for("location.pathname === '/kpis'")
        browser.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        browser.wait_for("window.innerWidth === 1280")
        browser.goto(f"{andon_url}/kpis?lang=en")
        browser.wait_for("!!document.querySelector('.kpis-table table')")
        table = str(browser.eval("document.querySelector('.kpis-table').innerText"))
        assert "2026-10" in table and "2026-11" in table, table
        assert "50.0%" in table  # November's on-time rate
        browser.wait_for("!!document.querySelector('#kpis-trend .scatterlayer')")
        browser.screenshot(SHOTS / "kpis-en-1280x800.png")
        wide = browser.eval(
            "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right"
            " > window.innerWidth + 1).slice(0, 5).map(e => e.tagName + '.' + e.className)"
        )
        assert not browser.eval("document.documentElement.scrollWidth > window.innerWidth"), wide
        # By customer: the rows change.
        browser.eval("document.querySelector('#kpis-by input[value=\"customer\"]').click()")
        browser.wait_for(
            "document.querySelector('.kpis-table') &&"
            " document.querySelector('.kpis-table').innerText.includes('BETA')"
        )
        # Chinese: the same figures, Chinese labels.
        browser.goto(f"{andon_url}/kpis?lang=zh")
        browser.wait_for("!!document.querySelector('#kpis-trend .scatterlayer')")
        browser.wait_for("!!document.querySelector('.kpis-table table')")  # Markdown, drawn last
        zh = str(browser.eval("document.body.innerText"))
        assert "交付指标" in zh and "准时率" in zh and "50.0%" in zh
        browser.screenshot(SHOTS / "kpis-zh-1280x800.png")
    finally:
        browser.close()
    assert (SHOTS / "kpis-en-1280x800.png").stat().st_size > 10_000


def _export_request(app: Any, by: str, month: str | None) -> dict[str, Any]:
    """The request dash-renderer sends when Export CSV is pressed."""
    output = next(k for k in app.callback_map if k.startswith("kpis-download."))
    return {
        "output": output,
        "outputs": {"id": "kpis-download", "property": "data"},
        "inputs": [{"id": "kpis-csv", "property": "n_clicks", "value": 1}],
        "state": [
            {"id": "kpis-from", "property": "value", "value": month},
            {"id": "kpis-to", "property": "value", "value": month},
            {"id": "kpis-customer", "property": "value", "value": None},
            {"id": "kpis-product", "property": "value", "value": None},
            {"id": "kpis-by", "property": "value", "value": by},
        ],
        "changedPropIds": ["kpis-csv.n_clicks"],
    }


def test_export_is_for_managers_and_is_the_reports_csv(kpi_db: str, plant: PlantConfig) -> None:
    from dashboards import context
    from dashboards.app import create_app
    from mesflow import users
    from tests.test_dashboard import sign_in

    with psycopg.connect(kpi_db, autocommit=True) as conn:
        users.add_user(conn, "view1", "viewer", "pw-for-tests-123")
        users.add_user(conn, "boss", "manager", "pw-for-tests-123")
    app = create_app(Settings(auth_session_secret="s" * 40), plant, kpi_db)
    try:
        viewer = app.server.test_client()
        assert sign_in(viewer, "view1", "pw-for-tests-123").status_code == 303
        refused = viewer.post("/_dash-update-component", json=_export_request(app, "month", None))
        assert refused.status_code == 403
        boss = app.server.test_client()
        assert sign_in(boss, "boss", "pw-for-tests-123").status_code == 303
        r = boss.post("/_dash-update-component", json=_export_request(app, "customer", "2026-11"))
        assert r.status_code == 200, r.get_data(as_text=True)
        data = json.loads(r.get_data(as_text=True))["response"]["kpis-download"]["data"]
        report = to_csv(
            fetch_delivery_kpis(kpi_db, TZ, "customer", MonthRange("2026-11", "2026-11")),
            "customer",
        )
        assert data["content"] == report and "BETA" in report
    finally:
        context.of(app.server).db.close()
