"""The alerts page in a real chromium (DevTools over a pipe, tests/test_dashboard.py): refused
without sign-in; a viewer sees the open alerts without an acknowledge button; an operator
acknowledges one and the `alert_ack` event lands in the ingest log; the andon shows the count;
the history filters and its CSV; both languages; the /ack link page; screenshots
docs/screenshots/alerts-<lang>-<w>x<h>.png."""

from __future__ import annotations

import csv
import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import waitress

from dashboards import context
from dashboards.app import create_app
from mesflow import users
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from notify.ack_links import ack_token
from tests.conftest import require
from tests.test_alerts_board import PASSWORD, SECRET, ack_rows, seed
from tests.test_dashboard import Chromium

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
_OPEN_READY = "document.querySelectorAll('.al-open-table tr[data-alert]').length >= 3"
_HISTORY_ROWS = "document.querySelectorAll('.al-history-table tr[data-alert]').length"


@pytest.fixture
def board_url(db_url: str, plant: PlantConfig) -> Iterator[str]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for role in ("viewer", "operator"):
            users.add_user(conn, role, role, PASSWORD)
    app = create_app(Settings(auth_session_secret=SECRET, language="zh"), plant, db_url)
    server = waitress.create_server(app.server, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        thread.join(timeout=5)
        context.of(app.server).db.close()


def _sign_in(b: Chromium, url: str, user: str) -> None:
    b.goto(url)
    b.wait_for("location.pathname === '/login' && !!document.querySelector('#password')")
    for sel, value in {"#username": user, "#password": PASSWORD}.items():
        b.eval(f"document.querySelector({json.dumps(sel)}).value = {json.dumps(value)}")
    b.eval("document.querySelector('button[type=submit]').click()")


def _size(b: Chromium, w: int, h: int) -> None:
    b.page(
        "Emulation.setDeviceMetricsOverride",
        {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": False},
    )


def _row_button(alert_id: str) -> str:
    return f"document.querySelector('tr[data-alert={json.dumps(alert_id)}] button.al-ack')"


@pytest.mark.browser
def test_alerts_page_in_browser(
    board_url: str, db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    seed(db_url)
    target = "im-down:machine:IM-02:1"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    b = Chromium(tmp_path)
    try:
        # Refused without credentials: the page sends the browser to sign in.
        _sign_in(b, f"{board_url}/alerts?lang=en", "viewer")
        b.wait_for(_OPEN_READY)
        assert b.eval("location.pathname") == "/alerts"
        text = b.eval("document.querySelector('.al-open-table').innerText")
        assert (
            "Press 2 (Haitian 250t) (IM-02)" in text
            and "Hydraulic fault" in text
            and "93000" in text
        )
        # A viewer sees the button greyed out, with no id the server would act on.
        assert b.eval(f"{_row_button(target)}.disabled") is True
        assert b.eval("document.querySelectorAll('button.al-ack:not([disabled])').length") == 0
        # The bad key stands out at the top and in the channels table.
        assert "im-wecom" in b.eval("document.querySelector('.al-bad-key').innerText")
        assert b.eval("!!document.querySelector('tr.al-channel-bad_key')")
        # The duration counts in the browser between refreshes.
        first = b.eval(
            f"document.querySelector('tr[data-alert=\"{target}\"] .al-duration').textContent"
        )
        time.sleep(2.2)
        later = b.eval(
            f"document.querySelector('tr[data-alert=\"{target}\"] .al-duration').textContent"
        )
        assert first != later, (first, later)

        # The andon shows the open-alert count (2 open, one critical) and links here.
        b.goto(f"{board_url}/?lang=en")
        b.wait_for("(document.querySelector('.andon-alerts')||{}).textContent === '2 alerts'")
        assert (
            b.eval("document.querySelector('.andon-alerts').className") == "andon-alerts critical"
        )
        b.goto(f"{board_url}/?lang=zh&kiosk=1")
        b.wait_for("(document.querySelector('.andon-alerts')||{}).textContent === '2 条告警'")
        # The count fits next to the legend: the legend stays on one line at 1920x1080.
        assert b.eval("document.querySelector('.andon-legend').getClientRects().length") == 1
        assert b.eval(
            "(() => { const l = document.querySelector('.andon-legend');"
            " const items = l.querySelectorAll('.legend-item');"
            " return items[0].offsetTop === items[items.length - 1].offsetTop; })()"
        )
        b.screenshot(tmp_path / "andon-alerts.png")  # for a person checking the header

        # An operator acknowledges: one click, one event in the ingest log.
        b.goto(f"{board_url}/logout")
        _sign_in(b, f"{board_url}/alerts?lang=en", "operator")
        b.wait_for(_OPEN_READY)
        assert b.eval(f"{_row_button(target)}.disabled") is False
        b.eval(f"{_row_button(target)}.click()")
        b.wait_for(
            f"({_row_button(target)}||{{}}).textContent === 'Acknowledged'"
            f" || document.querySelector('tr[data-alert=\"{target}\"] .al-acked')"
        )
        deadline = time.monotonic() + 10
        while not ack_rows(db_url) and time.monotonic() < deadline:
            time.sleep(0.1)
        [(source, event)] = ack_rows(db_url)
        assert source == "board:operator"
        assert {k: event[k] for k in ("type", "alert_id", "by", "via")} == {
            "type": "alert_ack",
            "alert_id": target,
            "by": "operator",
            "via": "board",
        }
        # After the next refresh the row says so instead of offering the button again.
        b.wait_for(
            f"(document.querySelector('tr[data-alert=\"{target}\"] .al-acked')||{{}})"
            ".textContent === 'acknowledged, updating'",
            timeout=15,
        )
        assert len(ack_rows(db_url)) == 1

        # History: a week by default; the severity filter; the CSV of what is shown.
        b.wait_for(f"{_HISTORY_ROWS} === 4")
        b.eval("dash_clientside.set_props('al-severity', {value: 'info'})")
        b.wait_for(f"{_HISTORY_ROWS} === 1")
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        b.send(
            "Browser.setDownloadBehavior",
            {"behavior": "allow", "downloadPath": str(downloads)},
        )
        b.eval("document.querySelector('.al-csv').click()")
        deadline = time.monotonic() + 15
        while not list(downloads.glob("*.csv")) and time.monotonic() < deadline:
            time.sleep(0.2)
        [csv_file] = list(downloads.glob("*.csv"))
        assert csv_file.name.endswith("_info.csv")
        rows = list(csv.DictReader(io.StringIO(csv_file.read_text(encoding="utf-8"))))
        assert [r["alert_id"] for r in rows] == ["im-down:machine:IM-01:4"]
        b.eval("dash_clientside.set_props('al-line', {value: 'CNC'})")
        b.eval("dash_clientside.set_props('al-severity', {value: null})")
        b.wait_for(f"{_HISTORY_ROWS} === 2")

        # Both languages, two screen sizes; nothing cut off in the header.
        for lang, title in (("en", "Alerts"), ("zh", "告警")):
            for w, h in ((1280, 800), (1920, 1080)):
                _size(b, w, h)
                b.goto(f"{board_url}/alerts?lang={lang}")
                b.wait_for(f"document.querySelector('.alerts.lang-{lang}') && {_OPEN_READY}")
                b.wait_for(f"{_HISTORY_ROWS} === 4")
                assert b.eval("document.querySelector('.al-title h1').textContent") == title
                clipped = b.eval(
                    "Array.from(document.querySelectorAll('.al-title h1, .al-links a, .al-csv,"
                    " .al-ack, .al-sev')).filter(e => e.scrollWidth > e.clientWidth + 1)"
                    ".map(e => e.textContent)"
                )
                assert clipped == [], (lang, w, clipped)
                png = SCREENSHOTS / f"alerts-{lang}-{w}x{h}.png"
                b.screenshot(png)
                assert png.stat().st_size > 10_000

        # The link in a message, opened in a browser: a confirmation, then one POST.
        link = f"{board_url}/ack/{ack_token(SECRET, 'silent:machine:CNC-03:2', 'chen')}?lang=en"
        b.goto(link)
        b.wait_for("!!document.querySelector('#ack')")
        assert "CNC-03" in b.eval("document.body.innerText")
        assert len(ack_rows(db_url)) == 1  # the GET wrote nothing
        b.screenshot(tmp_path / "ack-page.png")  # for a person checking the page
        b.eval("document.querySelector('#ack').click()")
        b.wait_for("document.body.innerText.includes('Acknowledged, thank you')")
        by_alert = {e["alert_id"]: (s, e["via"]) for s, e in ack_rows(db_url)}
        assert by_alert["silent:machine:CNC-03:2"] == ("link:chen", "link")
    finally:
        b.close()
