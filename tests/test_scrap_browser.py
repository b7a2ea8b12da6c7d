"""The analytics page's "Scrap by reason and product" panel in a real chromium, on the replayed
simulated history of tests/test_analytics.py: it renders in both languages, its table is the
view's figures, its CSV download equals the query's rows, and screenshots of the panel go to
docs/screenshots/analytics-scrap-<lang>-<w>x<h>.png."""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from pathlib import Path

import pytest

from dashboards import scrap_queries as sq
from dashboards.pages import analytics_scrap
from dashboards.queries import Database
from mesflow.plant import PlantConfig
from mesflow.report import Scope
from tests.conftest import require
from tests.test_analytics import _filters, replayed  # noqa: F401  (the fixture)
from tests.test_analytics_browser import PASSWORD, QUERY, _size, app_url  # noqa: F401
from tests.test_dashboard import Chromium

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
_ROWS = "document.querySelectorAll('.an-scrap-table tbody tr').length"
_CHART = "!!document.querySelector('#an-scrap-chart .main-svg .bars')"


@pytest.mark.browser
def test_scrap_panel_in_browser(
    app_url: str,  # noqa: F811
    replayed: Database,  # noqa: F811
    plant: PlantConfig,
    tmp_path: Path,
) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    tz = plant.tz
    f = _filters(Scope("plant"))  # QUERY's dates (the picker's end day included)
    rows = sq.scrap_by_reason(replayed, f, tz)
    # The simulator's operators report scrap with reasons on work orders with products.
    assert any(r.reason != "unspecified" and r.product != "unknown" for r in rows), rows
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    b = Chromium(tmp_path)
    try:
        b.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        b.goto(f"{app_url}/analytics?lang=en&{QUERY}")
        b.wait_for("location.pathname === '/login' && !!document.querySelector('#password')")
        for sel, value in {"#username": "boss", "#password": PASSWORD}.items():
            b.eval(f"document.querySelector({json.dumps(sel)}).value = {json.dumps(value)}")
        b.eval("document.querySelector('button[type=submit]').click()")
        b.wait_for(f"{_ROWS} === {len(rows)} && {_CHART}")
        cells = b.eval(
            "Array.from(document.querySelectorAll('.an-scrap-table tbody tr'))"
            ".map(r => Array.from(r.children).map(c => c.textContent))"
        )
        assert [(c[0], c[2], int(c[3])) for c in cells] == [
            (
                analytics_scrap.reason_name(r, plant, "en"),
                analytics_scrap.product_name(r.product, plant, "en"),
                r.qty,
            )
            for r in rows
        ]

        # The CSV download is the query's rows, as analytics_scrap.export writes them.
        b.eval("document.querySelector('#an-csv-scrap').click()")
        deadline = time.monotonic() + 30
        while not list(downloads.glob("*.csv")) and time.monotonic() < deadline:
            time.sleep(0.2)
        files = list(downloads.glob("*.csv"))
        assert [p.name for p in files] == [analytics_scrap.export(replayed, f, tz)[0]]
        got = list(csv.DictReader(io.StringIO(files[0].read_text(encoding="utf-8"))))
        assert [(r["reason"], r["product"], int(r["qty"])) for r in got] == [
            (r.reason, r.product, r.qty) for r in rows
        ]

        for lang, title in (("en", "Scrap by reason and product"), ("zh", "废品原因与产品分析")):
            for w, h in ((1280, 800), (1920, 1080)):
                _size(b, w, h)
                b.goto(f"{app_url}/analytics?lang={lang}&{QUERY}")
                b.wait_for(
                    f"document.querySelector('.analytics.lang-{lang}') && "
                    f"{_ROWS} === {len(rows)} && {_CHART}"
                )
                assert b.eval("document.querySelector('.an-scrap h2').textContent") == title
                clipped = b.eval(
                    "Array.from(document.querySelectorAll('.an-scrap h2, .an-scrap .an-csv'))"
                    ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)"
                )
                assert clipped == [], (lang, w)
                b.eval("document.querySelector('.an-scrap').scrollIntoView()")
                time.sleep(0.3)
                png = SCREENSHOTS / f"analytics-scrap-{lang}-{w}x{h}.png"
                b.screenshot(png)
                assert png.stat().st_size > 10_000
    finally:
        b.close()
