"""The analytics page in a real chromium, on a replayed simulated history: it renders in both
languages with the report's figures, the scope filter and the Pareto drill-down work, no text is
clipped, and screenshots go to docs/screenshots/analytics-<lang>-<w>x<h>.png."""

from __future__ import annotations

import base64
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import waitress

from dashboards import context
from dashboards.app import create_app
from dashboards.pages import analytics
from dashboards.queries import Database
from mesflow import users
from mesflow.plant import PlantConfig
from mesflow.report import Scope, fmt_pct
from mesflow.settings import Settings
from tests.conftest import require
from tests.test_analytics import _filters, replayed  # noqa: F401  (the fixture)
from tests.test_dashboard import CHROMIUM, Chromium

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
PASSWORD = "manager password 123"
QUERY = "start=2026-11-16&end=2026-11-17"
_READY = (
    "!!document.querySelector('#an-trend .main-svg') && "
    "(document.querySelector('[data-kpi=oee] .an-kpi-value')||{}).textContent"
)


@pytest.fixture
def app_url(replayed: Database, db_url: str, plant: PlantConfig) -> Iterator[str]:  # noqa: F811
    with psycopg.connect(db_url, autocommit=True) as conn:
        users.add_user(conn, "boss", "manager", PASSWORD)
    app = create_app(Settings(auth_session_secret="k" * 40, language="zh"), plant, db_url)
    server = waitress.create_server(app.server, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        thread.join(timeout=5)
        context.of(app.server).db.close()


def _oee(b: Chromium) -> str:
    return str(b.eval("document.querySelector('[data-kpi=oee] .an-kpi-value').textContent"))


def _clipped(b: Chromium) -> list[str]:
    """Text elements whose content is wider than their box (cut off or spilling)."""
    return list(
        b.eval(
            "Array.from(document.querySelectorAll('.an-kpi-label, .an-kpi-value, .an-card h2,"
            " .an-title h1, .an-links a, .an-label, .an-csv'))"
            ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)"
        )
    )


def _legend_overlaps(b: Chromium) -> list[str]:
    """Figures whose legend covers one of their x-axis labels (slanted labels grow down
    into a legend placed below the plot)."""
    return list(
        b.eval(
            "Array.from(document.querySelectorAll('.js-plotly-plot')).filter(f => {"
            " const l = f.querySelector('g.legend'); if (!l) return false;"
            " const a = l.getBoundingClientRect();"
            " return Array.from(f.querySelectorAll('g.xtick text')).some(t => {"
            "  const r = t.getBoundingClientRect();"
            "  return r.width > 0 && r.left < a.right && a.left < r.right"
            "   && r.top < a.bottom && a.top < r.bottom; });"
            "}).map(f => f.id || f.parentElement.id)"
        )
    )


def _size(b: Chromium, w: int, h: int) -> None:
    b.page(
        "Emulation.setDeviceMetricsOverride",
        {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": False},
    )


@pytest.mark.browser
def test_analytics_in_browser(
    app_url: str,
    replayed: Database,  # noqa: F811
    plant: PlantConfig,
    tmp_path: Path,
) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    tz = plant.tz
    plant_total = analytics.load(replayed, _filters(Scope("plant")), tz).total
    machine_total = analytics.load(replayed, _filters(Scope("machine", "IM-01")), tz).total
    assert plant_total.oee != machine_total.oee
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    b = Chromium(tmp_path)
    try:
        b.goto(f"{app_url}/analytics?lang=en&{QUERY}")
        b.wait_for("location.pathname === '/login' && !!document.querySelector('#password')")
        for sel, value in {"#username": "boss", "#password": PASSWORD}.items():
            b.eval(f"document.querySelector({json.dumps(sel)}).value = {json.dumps(value)}")
        b.eval("document.querySelector('button[type=submit]').click()")
        b.wait_for(_READY)
        assert b.eval("location.pathname") == "/analytics"
        assert _oee(b) == fmt_pct(plant_total.oee)
        assert (
            b.eval("document.querySelector('.an-title h1').textContent") == "Production analytics"
        )

        # The scope filter: the same change a person makes in the dropdown.
        b.eval("dash_clientside.set_props('an-scope', {value: 'machine:IM-01'})")
        b.wait_for(f"{_READY} === {json.dumps(fmt_pct(machine_total.oee))}")

        # Drill-down: a click on the first Pareto bar lists that reason's stops.
        top = analytics.aq.reasons(replayed, _filters(Scope("machine", "IM-01")), tz)[0]
        click = {"points": [{"customdata": top.reason}]}
        b.eval(f"dash_clientside.set_props('an-pareto-reason', {{clickData: {json.dumps(click)}}})")
        name = top.name("en")
        b.wait_for(
            "(document.querySelector('.an-stops-filter')||{}).textContent"
            f"?.includes({json.dumps(name)})"
        )
        cells = b.eval(
            "Array.from(document.querySelectorAll('.an-stops-table tbody tr'))"
            ".map(r => r.children[5].textContent)"
        )
        assert cells and set(cells) == {name}
        want = analytics.aq.stops(
            replayed, _filters(Scope("machine", "IM-01")), tz, reason=top.reason
        )
        assert len(cells) == len(want)
        # The Markdown table shows its text as it is (no escape marks, no markup).
        starts = b.eval(
            "Array.from(document.querySelectorAll('.an-stops-table tbody tr'))"
            ".map(r => r.children[1].textContent)"
        )
        assert starts == [analytics._local(r.start_ts, tz) for r in want]

        for lang, title in (("en", "Production analytics"), ("zh", "生产分析")):
            for w, h in ((1280, 800), (1920, 1080)):
                _size(b, w, h)
                b.goto(f"{app_url}/analytics?lang={lang}&{QUERY}")
                b.wait_for(f"document.querySelector('.analytics.lang-{lang}') && {_READY}")
                b.wait_for("document.querySelectorAll('.main-svg').length >= 7")
                # The filters and the stops table are lazily loaded chunks: drawn before the
                # screenshot, now that the plots no longer take a minute.
                b.wait_for(
                    "document.querySelector('#an-range')?.value === '2026-11-16' && "
                    "document.querySelector('#an-scope')?.innerText.trim().length > 0 && "
                    "!!document.querySelector('.an-stops-table tbody tr')"
                )
                assert b.eval("document.querySelector('.an-title h1').textContent") == title
                assert _oee(b) == fmt_pct(plant_total.oee)
                assert _clipped(b) == [], (lang, w)
                assert _legend_overlaps(b) == [], (lang, w)
                png = SCREENSHOTS / f"analytics-{lang}-{w}x{h}.png"
                b.screenshot(png)
                assert png.stat().st_size > 10_000
        # Between the screenshot sizes, where the Pareto's reason names slant (long
        # English names) and once ran into the legend below the plot.
        for lang in ("en", "zh"):
            _size(b, 1600, 900)
            b.goto(f"{app_url}/analytics?lang={lang}&{QUERY}")
            b.wait_for(f"document.querySelector('.analytics.lang-{lang}') && {_READY}")
            b.wait_for("document.querySelectorAll('.main-svg').length >= 7")
            assert _legend_overlaps(b) == [], (lang, 1600)
        _size(b, 1920, 1080)
        # The machine page: one machine's day, in both languages.
        for lang, title in (("en", "Machine day"), ("zh", "设备日报")):
            b.goto(f"{app_url}/machine?lang={lang}&machine=IM-01&date=2026-11-16")
            b.wait_for(
                f"document.querySelector('.machine-page.lang-{lang}') && "
                "document.querySelectorAll('#mc-timeline .main-svg, #mc-parts .main-svg').length"
                " >= 2 && document.querySelectorAll('#mc-wos tbody tr').length > 0"
                " && !!document.querySelector('.machine-page .an-stops-table tbody tr')"
            )
            assert b.eval("document.querySelector('.an-title h1').textContent") == title
            assert _clipped(b) == [], lang
            # This history has no process values: their card says so, with no empty
            # picker and no empty axes under the sentence.
            b.wait_for("document.querySelector('#mv-empty')?.textContent.length > 0")
            hidden = b.eval("getComputedStyle(document.querySelector('#mv-body')).display")
            assert hidden == "none", (lang, hidden)
            b.screenshot(SCREENSHOTS / f"machine-{lang}-1920x1080.png")
        # The whole page, for a person checking the lower cards (not kept in docs/).
        full = b.page("Page.getLayoutMetrics")["cssContentSize"]
        data = b.page(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": full["width"],
                    "height": full["height"],
                    "scale": 1,
                },
            },
        )["data"]
        (tmp_path / "analytics-full.png").write_bytes(base64.b64decode(data))
    finally:
        b.close()
    assert CHROMIUM
