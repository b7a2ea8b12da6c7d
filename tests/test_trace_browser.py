"""/trace, the order page's customer-link panel and /c/<token> in a real browser (chromium
over the DevTools pipe) on test_traceability's seeded plant; writes
docs/screenshots/trace-en-1280x800.png and customer-zh-1280x800.png."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mesflow.plant import PlantConfig
from tests.conftest import require
from tests.test_dashboard import UNREADABLE_FIELDS, Chromium, _sign_in_in_browser, andon_url
from tests.test_traceability import api, seed

__all__ = ["andon_url", "api"]  # fixtures

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
_OVERFLOW = "document.documentElement.scrollWidth > window.innerWidth"


def _size(browser: Chromium, w: int, h: int) -> None:
    browser.page(
        "Emulation.setDeviceMetricsOverride",
        {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": False},
    )
    browser.wait_for(f"window.innerWidth === {w}")


def _text(browser: Chromium, selector: str) -> str:
    return str(browser.eval(f"document.querySelector({json.dumps(selector)}).innerText"))


@pytest.mark.browser
def test_trace_page_and_customer_link_in_browser(
    api: TestClient, db_url: str, andon_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    seed(api, db_url, plant, tmp_path / "rec")
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser = Chromium(tmp_path)
    try:
        _sign_in_in_browser(browser, f"{andon_url}/trace?lang=en&order=SO-A")
        browser.wait_for("location.pathname === '/trace'")
        browser.goto(f"{andon_url}/trace?lang=en&order=SO-A")
        browser.wait_for("!!document.querySelector('.trace-stops table')")
        stops = _text(browser, ".trace-stops")
        assert "2026-11-20 08:30" in stops and "hydraulic_fault" in stops, stops
        assert "PA-2" in _text(browser, ".trace-lots")
        assert "li" in _text(browser, ".trace-operators")
        browser.wait_for("!!document.querySelector('.trace-inspections table')")
        found = _text(browser, ".trace-inspections")
        assert "Inspections (2)" in found and "First article" in found and "Patrol" in found
        assert "✗ diameter 10.32 mm (9.9–10.1); ✗ look; Flash ×2" in found, found
        assert "burr at the gate" in found and "Fail" in found
        assert "Work order start" in _text(browser, ".trace-operators")
        _size(browser, 1280, 800)
        assert not browser.eval(_OVERFLOW)
        # The search box shows what it holds (it was dark on dark under Dash 4).
        assert browser.eval("document.querySelector('#trace-query').value") == "SO-A"
        assert browser.eval(UNREADABLE_FIELDS) == []
        browser.screenshot(SHOTS / "trace-en-1280x800.png")

        # In Chinese, the codes read as words: stages, results, report kinds, the status.
        browser.goto(f"{andon_url}/trace?lang=zh&order=SO-A")
        browser.wait_for("!!document.querySelector('.trace-inspections table')")
        found = _text(browser, ".trace-inspections")
        assert "首检" in found and "巡检" in found and "不合格" in found, found
        assert "披锋 ×2" in found and "flash" not in found  # the defect by its name
        people = _text(browser, ".trace-operators")
        assert "开工" in people and "检验" in people and "wo_start" not in people, people
        assert "进行中" in _text(browser, ".order-summary")

        # From the shared material lot: both orders, both customers.
        browser.goto(f"{andon_url}/trace?lang=en&lot=RESIN-7")
        browser.wait_for("!!document.querySelector('.trace-orders table')")
        orders = _text(browser, ".trace-orders")
        assert "SO-A" in orders and "SO-B" in orders and "ACME" in orders and "Beta" in orders

        # The order page: make a Chinese link for SO-A, then open it signed out.
        browser.goto(f"{andon_url}/orders/SO-A?lang=en")
        browser.wait_for("!!document.querySelector('#ocl-create')")
        # Every box of the page can be read: the customer link's and the order change's
        # (its comment box was light text on white).
        assert browser.eval("!!document.querySelector('#occ-comment')")
        assert browser.eval(UNREADABLE_FIELDS) == []
        # The link's language defaults to the page's: choose 中文.
        browser.eval("document.querySelector('#ocl-link-lang input[value=\"zh\"]').click()")
        browser.eval("document.querySelector('#ocl-create').click()")
        url = browser.wait_for(
            "document.querySelector('.customer-link-url') &&"
            " document.querySelector('.customer-link-url').innerText"
        )
        assert "/c/" in url
        assert "中文" in _text(browser, ".customer-link-table")
        browser.eval("document.cookie.split(';').forEach(c => document.cookie ="
                     " c.trim().split('=')[0] + '=; expires=Thu, 01 Jan 1970 00:00:00 GMT; path=/')")  # fmt: skip
        browser.goto(url)
        browser.wait_for("!!document.querySelector('.bar')")
        page = str(browser.eval("document.body.innerText"))
        assert "SO-A" in page and "订单生产进度" in page and "开始生产" in page
        assert "ACME" not in page and "IM-01" not in page and "SO-B" not in page
        _size(browser, 1280, 800)
        browser.screenshot(SHOTS / "customer-zh-1280x800.png")
    finally:
        browser.close()
    for name in ("trace-en-1280x800.png", "customer-zh-1280x800.png"):
        assert (SHOTS / name).stat().st_size > 10_000
