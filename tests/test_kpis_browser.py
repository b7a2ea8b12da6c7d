"""/kpis in a real browser (chromium over the DevTools pipe) on test_delivery_kpis's seeded
orders; writes docs/screenshots/kpis-en-1280x800.png. The board's CSV is the report's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from dashboards import kpi_queries
from dashboards.queries import Database
from mesflow.delivery_kpis import Dimension, MonthRange, fetch_delivery_kpis, to_csv
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
        browser.wait_for("!!document.querySelector('.kpis-table')")
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
        json.dumps(table)
    finally:
        browser.close()
    assert (SHOTS / "kpis-en-1280x800.png").stat().st_size > 10_000
