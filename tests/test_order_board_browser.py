"""The order board and an order's page in a real browser (chromium over the DevTools pipe),
on a database fed by a replay; writes docs/screenshots/orders-*.png."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mesflow.plant import PlantConfig
from streams.replay import replay_file
from tests.conftest import require
from tests.helpers import write_jsonl
from tests.test_dashboard import Chromium, _sign_in_in_browser, andon_url
from tests.test_order_board import T0, counts, order, scenario, work_order

__all__ = ["andon_url"]  # the fixture: the app on waitress with an admin user

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
SIZES = ((1280, 800), (1920, 1080))
_ROWS_READY = "document.querySelectorAll('[data-order]').length >= 6"
# Wider than the window: something is clipped or the page scrolls sideways.
_OVERFLOW = "document.documentElement.scrollWidth > window.innerWidth"


def _more_orders() -> list[dict[str, Any]]:
    """A few more orders so the board looks like a plant's."""
    extra = [
        order("SO-2411", qty=1200, due_h=30, priority=2, customer="Midea"),
        order("SO-2412", qty=300, due_h=6, priority=1, customer="Haier"),
        order("SO-2413", qty=50, due_h=48, priority=4, customer="BYD"),
        work_order("WO-2411", "SO-2411", "IM-03", 1200),
        work_order("WO-2412", "SO-2412", "IM-05", 300),
        {"type": "state", "machine": "IM-05", "ts": T0.isoformat(), "state": "running", "id": "u1"},
        {
            "type": "report",
            "kind": "wo_start",
            "machine": "IM-05",
            "ts": T0.isoformat(),
            "work_order": "WO-2412",
            "id": "u2",
        },
        *counts("IM-05", 0.5, 50),
    ]
    return extra


def _size(browser: Chromium, w: int, h: int) -> None:
    browser.page(
        "Emulation.setDeviceMetricsOverride",
        {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": False},
    )


@pytest.mark.browser
def test_order_board_and_order_page_in_browser(
    db_url: str, andon_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    replay_file(
        write_jsonl(tmp_path / "o.jsonl", scenario() + _more_orders()),
        plant,
        db_url,
        tmp_path / "rec",
        progress=False,
    )
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO order_history (order_no, version, changed_by, event_ts, change) VALUES"
            " ('SO-LATE', 1, 'crm-sales', %s, '{\"qty\": {\"old\": null, \"new\": 300}}'),"
            " ('SO-LATE', 2, 'crm-sales', %s, '{\"qty\": {\"old\": 300, \"new\": 400}}')",
            (T0, T0 + timedelta(minutes=5)),
        )
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser = Chromium(tmp_path)
    try:
        _sign_in_in_browser(browser, f"{andon_url}/orders?lang=en")
        browser.wait_for("location.pathname === '/orders'")
        for lang in ("en", "zh"):
            browser.goto(f"{andon_url}/orders?lang={lang}")
            browser.wait_for(f"document.querySelector('.orders.lang-{lang}') && {_ROWS_READY}")
            order_nos = browser.eval(
                "[...document.querySelectorAll('[data-order]')].map(r => r.dataset.order)"
            )
            assert order_nos[0] == "SO-LATE" and len(order_nos) == 6, order_nos
            first = "document.querySelector('[data-order=\"SO-LATE\"]')"
            assert browser.eval(f"{first}.classList.contains('at-risk')")
            risk = "At risk" if lang == "en" else "有延期风险"
            assert risk in browser.eval(f"{first}.innerText")
            for w, h in SIZES:
                _size(browser, w, h)
                browser.wait_for(f"window.innerWidth === {w}")
                assert not browser.eval(_OVERFLOW), (lang, w)
                browser.screenshot(SHOTS / f"orders-{lang}-{w}x{h}.png")

            # The order's page, reached from the board's link.
            browser.eval(f"{first}.querySelector('a').click()")
            browser.wait_for("document.querySelectorAll('.loss').length >= 3")
            assert browser.eval("location.pathname") == "/orders/SO-LATE"
            why = browser.eval("document.querySelector('.why-late').innerText")
            expected = (
                "18 min Hydraulic fault on IM-01" if lang == "en" else "IM-01 液压故障 18 分钟"
            )
            assert expected in why, why
            body = browser.eval("document.querySelector('.order-body').innerText")
            assert "WO-L1" in body and "crm-sales" in body
            assert ("Work started" if lang == "en" else "已开工") in body  # a callback's event
            # The change history names the field in the page's language.
            assert ("Qty: 300 → 400" if lang == "en" else "数量: 300 → 400") in body
            for w, h in SIZES:
                _size(browser, w, h)
                browser.wait_for(f"window.innerWidth === {w}")
                assert not browser.eval(_OVERFLOW), ("order page", lang, w)
            browser.screenshot(SHOTS / f"orders-page-{lang}-1920x1080.png")
    finally:
        browser.close()
    for lang in ("en", "zh"):
        for w, h in SIZES:
            png = SHOTS / f"orders-{lang}-{w}x{h}.png"
            assert png.stat().st_size > 10_000, png
