"""The Dash boards: pure tile rendering, then the andon page in a real browser.

The browser test runs Debian's chromium headless against the app served by waitress on a free
port, over a fresh database: it signs in through the login page, then reads the DOM that Dash
rendered.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
import waitress

from dashboards import context
from dashboards.app import create_app
from dashboards.i18n import format_duration, normalize_lang, state_label
from dashboards.pages.andon import format_clock, render_board, render_tile, state_class
from dashboards.queries import AndonTile, Database, andon_tiles
from mesflow import users
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from tests.conftest import require

# -- helpers for Dash component trees ------------------------------------------------------


def _walk(node: Any) -> Iterator[Any]:
    if isinstance(node, list | tuple):
        for item in node:
            yield from _walk(item)
        return
    yield node
    children = getattr(node, "children", None)
    if children is not None:
        yield from _walk(children)


def _text(node: Any) -> str:
    return " ".join(n for n in _walk(node) if isinstance(n, str))


def _by_class(node: Any, css: str) -> list[Any]:
    return [n for n in _walk(node) if css in (getattr(n, "className", None) or "").split()]


def _row(**kw: Any) -> AndonTile:
    now = datetime(2024, 5, 6, 9, 23, 45, tzinfo=UTC)
    base: dict[str, Any] = dict(
        machine="IM-01",
        line="IM",
        name_en="Press 1",
        name_zh="1号注塑机",
        state="running",
        since=datetime(2024, 5, 6, 8, 0, tzinfo=UTC),
        reason=None,
        reason_en=None,
        reason_zh=None,
        work_order=None,
        product=None,
        wo_qty=None,
        wo_good=None,
        last_event_ts=now,
        db_now=now,
        ref_ts=now,
        state_seconds=5025.0,
        silent_seconds=0.0,
        shift_start=None,
        shift_end=None,
        shift_name=None,
        shift_good=None,
        shift_scrap=None,
        shift_planned_s=None,
        shift_apt_s=None,
        shift_ideal_s=None,
        shift_oee=None,
        ideal_cycle_s=30.0,
        machine_position=0,
        line_position=0,
    )
    base.update(kw)
    return AndonTile(**base)


_PLANT: PlantConfig | None = None


@pytest.fixture(autouse=True)
def _plant_for_tiles(plant: PlantConfig) -> None:
    global _PLANT
    _PLANT = plant


def _tile(row: AndonTile, lang: str) -> Any:
    assert _PLANT is not None
    return render_tile(row, lang, _PLANT)


# -- pure rendering ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "css"),
    [
        ("running", "state-running"),
        ("idle", "state-idle"),
        ("down", "state-down"),
        ("setup", "state-setup"),
        ("planned_stop", "state-planned-stop"),
        ("offline", "state-offline"),
        ("exploded", "state-unknown"),
    ],
)
def test_state_colour_class(state: str, css: str) -> None:
    assert state_class(state) == css
    tile = _tile(_row(state=state, state_seconds=60.0), "zh")
    assert tile.to_plotly_json()["props"]["className"].split() == ["tile", css]


@pytest.mark.parametrize(
    ("seconds", "zh", "en"),
    [
        (0, "0:00:00", "0:00:00"),
        (59.9, "0:00:59", "0:00:59"),
        (5025, "1:23:45", "1:23:45"),
        (86_399, "23:59:59", "23:59:59"),
        (2 * 86_400 + 5 * 3600 + 120, "2天05小时", "2 d 05 h"),
        (-3, "0:00:00", "0:00:00"),  # a machine clock ahead of the database
        (None, "—", "—"),
    ],
)
def test_duration_format(seconds: float | None, zh: str, en: str) -> None:
    assert format_duration(seconds, "zh") == zh
    assert format_duration(seconds, "en") == en


def test_tile_language_switch() -> None:
    row = _row(
        state="down",
        reason="hydraulic_fault",
        reason_en="Hydraulic fault",
        reason_zh="液压故障",
        work_order="WO-2024-0042",
    )
    zh, en = _text(_tile(row, "zh")), _text(_tile(row, "en"))
    for part in ("1号注塑机", "故障停机", "1:23:45", "液压故障", "WO-2024-0042"):
        assert part in zh
    for part in ("Press 1", "Down", "1:23:45", "Hydraulic fault", "WO-2024-0042"):
        assert part in en
    assert "液压故障" not in en and "Hydraulic fault" not in zh


def test_reason_without_name_shows_code_and_no_reason_shows_nothing() -> None:
    unnamed = _tile(_row(state="down", reason="E-4711"), "zh")
    assert [_text(n) for n in _by_class(unnamed, "tile-reason")] == ["E-4711"]
    running = _tile(_row(), "en")
    assert _by_class(running, "tile-reason") == []
    assert _text(_by_class(running, "tile-wo")) == ""


def test_offline_machine_never_seen_has_no_duration() -> None:
    tile = _tile(_row(state="offline", since=None, state_seconds=None), "en")
    assert "Offline" in _text(tile)
    assert _text(_by_class(tile, "tile-duration")) == "—"


def test_board_groups_by_line_with_plant_line_names(plant: PlantConfig) -> None:
    rows = [
        _row(machine="IM-01", line="IM"),
        _row(machine="IM-02", line="IM", state="idle"),
        _row(machine="CNC-01", line="CNC", line_position=1),
        _row(machine="X-1", line="ghost", line_position=2),  # line unknown to the config
    ]
    for lang, names in (
        ("zh", ["注塑线", "数控加工线", "ghost"]),
        ("en", ["Injection molding", "CNC machining", "ghost"]),
    ):
        sections = render_board(rows, plant, lang)
        assert [_text(_by_class(s, "line-name")) for s in sections] == names
        tiles = [[t.__dict__["data-machine"] for t in _by_class(s, "tile")] for s in sections]
        assert tiles == [["IM-01", "IM-02"], ["CNC-01"], ["X-1"]]
    summary = _text(_by_class(render_board(rows, plant, "en")[0], "line-summary"))
    assert summary == "Running 1/2"
    assert "暂无设备数据" in _text(render_board([], plant, "zh"))


def test_language_choice_and_plant_clock() -> None:
    assert normalize_lang("en", "zh") == "en"
    assert normalize_lang("zh-CN", "en") == "zh"
    assert normalize_lang("fr", "en") == "en"
    assert normalize_lang(None, "zh") == "zh"
    assert state_label("planned_stop", "zh") == "计划停机"
    utc = datetime(2024, 5, 6, 23, 30, tzinfo=UTC)
    assert format_clock(utc, ZoneInfo("Asia/Shanghai")) == "2024-05-07 07:30:00"


def test_app_can_be_created_twice(db_url: str, plant: PlantConfig) -> None:
    # Dash's page registry is process-wide; each app must still get its own callbacks.
    with psycopg.connect(db_url, autocommit=True) as conn:
        users.add_user(conn, "viewer1", "viewer", "viewer-password")
    apps = [create_app(_settings(), plant, db_url) for _ in range(2)]
    try:
        for app in apps:
            client = app.server.test_client()
            assert client.get("/_dash-dependencies").status_code == 401  # closed by default
            sign_in(client, "viewer1", "viewer-password")
            deps = client.get("/_dash-dependencies").get_json()
            outputs = " ".join(d["output"] for d in deps)
            assert "andon-board.children" in outputs
            assert client.get("/andon?lang=en").status_code == 200
    finally:
        for app in apps:
            context.of(app.server).db.close()


def _settings(**kw: Any) -> Settings:
    return Settings(auth_session_secret="test-secret-" + "x" * 32, **kw)


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def sign_in(client: Any, username: str, password: str, next_url: str = "/") -> Any:
    """Sign in through the login form as a browser would (GET for the CSRF token, POST)."""
    page = client.get(f"/login?next={next_url}").get_data(as_text=True)
    match = _CSRF.search(page)
    assert match, page
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf": match.group(1), "next": next_url},
    )


# -- real browser -------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = {"zh": Path("/tmp/andon.png"), "en": Path("/tmp/andon-en.png")}

# One machine per state and a few extras: reasons with and without names, work orders,
# a long duration, and IM-06/CNC-06 left without a status row (offline from the view).
STATUS_ROWS: list[tuple[str, str, float, str | None, str | None]] = [
    ("IM-01", "running", 5_025, None, "WO-24051"),
    ("IM-02", "down", 754, "hydraulic_fault", "WO-24052"),
    ("IM-03", "setup", 2_410, "mold_change", "WO-24060"),
    ("IM-04", "idle", 312, "material_shortage", None),
    ("IM-05", "running", 190_000, None, "WO-24049"),
    ("CNC-01", "running", 7_322, None, "WO-24101"),
    ("CNC-02", "planned_stop", 1_800, "preventive_maintenance", None),
    ("CNC-03", "down", 95, "E-4711", "WO-24103"),  # a code missing from the reason tree
    ("CNC-04", "running", 42, None, "WO-24110"),
    ("CNC-05", "offline", 3_600, None, None),
]


def _insert_status(db_url: str) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(db_url) as conn:
        for machine, state, age, reason, wo in STATUS_ROWS:
            since = now - timedelta(seconds=age)
            conn.execute(
                "INSERT INTO machine_status (machine, state, since, reason, work_order,"
                " last_event_ts) VALUES (%s, %s, %s, %s, %s, %s)",
                (machine, state, since, reason, wo, now),
            )


@dataclass
class _Tile:
    css: list[str]
    text: list[str] = field(default_factory=list)


class _TileParser(HTMLParser):
    """Collects every element with data-machine: its classes and all text inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.tiles: dict[str, _Tile] = {}
        self._open: list[tuple[str, int]] = []  # (machine, depth where its tile opened)
        self._depth = 0
        self.lang_attr: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self._depth += 1
        if tag == "div" and "andon" in (a.get("class") or "").split():
            self.lang_attr = a.get("lang")
        machine = a.get("data-machine")
        if machine:
            self.tiles[machine] = _Tile(css=(a.get("class") or "").split())
            self._open.append((machine, self._depth))

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][1] == self._depth:
            self._open.pop()
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._open and data.strip():
            self.tiles[self._open[-1][0]].text.append(data.strip())


class Chromium:
    """Headless chromium driven over the DevTools protocol on a pipe (no port, no library).

    `--remote-debugging-pipe` reads JSON commands on fd 3 and writes replies on fd 4, each
    message ended by a NUL byte. Enough of the protocol to type into the login form, wait for
    Dash to render, read the DOM and take screenshots.
    """

    def __init__(self, tmp: Path) -> None:
        # A profile per run: parallel chromiums cannot share one, and none is left behind.
        profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp)
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Moved above 9 so the 3<& 4>& redirections cannot clobber each other (bash: dash
        # takes only one-digit descriptors).
        a = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        b = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)
        args = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1920,1080",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{a} 4>&{b} {a}<&- {b}>&-', "bash", *args],
            pass_fds=(a, b),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=profile,
        )
        os.close(a)
        os.close(b)
        self._buf = b""
        self._next_id = 0
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        self.page("Page.enable")
        self.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1920, "height": 1080, "deviceScaleFactor": 1, "mobile": False},
        )

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return dict(reply.get("result", {}))
            ready, _, _ = select.select([self._from_browser], [], [], 1.0)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed its DevTools pipe")
                self._buf += chunk
        raise TimeoutError(method)

    def page(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.send(method, params, self._session)

    def eval(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.page("Page.navigate", {"url": url})

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.eval(expression)
            except RuntimeError as err:
                # A click that navigates (a plain link) can land between two polls: the page
                # being evaluated is gone, the next one not there yet. Ask again.
                if not any(m in str(err) for m in _NAVIGATING):
                    raise
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}; page: {self.eval(_HTML)[:2000]}")

    def dom(self) -> str:
        return str(self.eval(_HTML))

    def screenshot(self, path: Path) -> None:
        data = self.page("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


_HTML = "document.documentElement.outerHTML"
# DevTools' answers to an evaluation while the page navigates away.
_NAVIGATING = ("Inspected target navigated or closed", "Execution context was destroyed")
_TILES_READY = "document.querySelectorAll('[data-machine]').length >= 12"

# The contrast of an element's text with its background (the first opaque one above it, a
# translucent plate counted as opaque), as WCAG computes it.
_CONTRAST = r"""
  const bg = el => { for (; el; el = el.parentElement) { const c = getComputedStyle(el)
    .backgroundColor; if (c && c !== 'transparent' && !/, 0\)$/.test(c)) return c; }
    return 'rgb(255, 255, 255)'; };
  const lum = c => { const [r, g, b] = c.match(/[\d.]+/g).map(Number).map(v => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const low = (els, least) => [...els].filter(e => e.offsetWidth).map(e => {
    const c = getComputedStyle(e).color, b = bg(e), l1 = lum(c), l2 = lum(b);
    const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    return [e.id || e.className, c, b, Math.round(ratio * 10) / 10]; })
    .filter(r => r[3] < least);"""

# Every visible text field whose text contrasts less than WCAG AA's 4.5 : 1 with its box, as
# [id or class, text colour, background, ratio]. Dash 4 draws its boxes white while the
# office pages' text is light: a rule for one box can darken another's text on a dark box
# (it did: /trace's search box showed nothing).
UNREADABLE_FIELDS = f"""(() => {{ {_CONTRAST}
  return low(document.querySelectorAll(
    'input:not([type=hidden]):not([type=radio]):not([type=checkbox]), textarea, select'), 4.5);
}})()"""


def unreadable(selector: str, least: float = 4.5) -> str:
    """JS: the elements matching `selector` whose text contrasts less than `least` : 1."""
    return f"(() => {{ {_CONTRAST}\n  return low(document.querySelectorAll({json.dumps(selector)}), {least}); }})()"


def _tiles(html_text: str) -> tuple[dict[str, _Tile], str | None]:
    parser = _TileParser()
    parser.feed(html_text)
    return parser.tiles, parser.lang_attr


ADMIN_PASSWORD = "correct horse battery staple"


@pytest.fixture
def andon_url(db_url: str, plant: PlantConfig) -> Iterator[str]:
    """The app on waitress (as `mesflow run dashboard` serves it), with an admin user."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        users.add_user(conn, "admin", "admin", ADMIN_PASSWORD)
    app = create_app(_settings(language="zh"), plant, db_url)
    server = waitress.create_server(app.server, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        thread.join(timeout=5)
        context.of(app.server).db.close()


def _sign_in_in_browser(browser: Chromium, url: str) -> None:
    browser.goto(url)
    browser.wait_for("location.pathname === '/login' && !!document.querySelector('#password')")
    form = {"#username": "admin", "#password": ADMIN_PASSWORD}
    for selector, value in form.items():
        browser.eval(f"document.querySelector({json.dumps(selector)}).value = {json.dumps(value)}")
    browser.eval("document.querySelector('button[type=submit]').click()")


@pytest.mark.browser
def test_andon_board_in_browser(
    db_url: str, andon_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    _insert_status(db_url)
    expected = {m: "offline" for m in plant.machines} | {r[0]: r[1] for r in STATUS_ROWS}
    browser = Chromium(tmp_path)
    try:
        # Not signed in: the board sends the browser to the login page, which comes back to
        # the board (with its ?lang=) once the form is sent.
        _sign_in_in_browser(browser, f"{andon_url}/andon?lang=en")
        browser.wait_for(_TILES_READY)
        assert browser.eval("location.pathname + location.search") == "/andon?lang=en"
        en, en_lang = _tiles(browser.dom())
        SCREENSHOTS["en"].unlink(missing_ok=True)
        browser.screenshot(SCREENSHOTS["en"])

        # Chinese by default at "/", in the same session.
        browser.goto(f"{andon_url}/")
        browser.wait_for(f"document.querySelector('.andon.lang-zh') && {_TILES_READY}")
        zh, zh_lang = _tiles(browser.dom())
        SCREENSHOTS["zh"].unlink(missing_ok=True)
        browser.screenshot(SCREENSHOTS["zh"])

        assert (zh_lang, en_lang) == ("zh-CN", "en")
        assert set(zh) == set(plant.machines) == set(en)
        for machine, state in expected.items():
            for tiles, lang in ((zh, "zh"), (en, "en")):
                tile = tiles[machine]
                assert state_class(state) in tile.css, (machine, lang, tile)
                assert plant.machines[machine].name.get(lang) in tile.text
                assert state_label(state, lang) in tile.text
        assert "液压故障" in zh["IM-02"].text and "Hydraulic fault" in en["IM-02"].text
        assert "E-4711" in zh["CNC-03"].text  # no name in the reason tree: the code
        assert "WO-24051" in zh["IM-01"].text
        assert "2天04小时" in zh["IM-05"].text and "2 d 04 h" in en["IM-05"].text

        # The board follows the database on its next refresh, without a reload.
        with psycopg.connect(db_url) as conn:
            conn.execute(
                "UPDATE machine_status SET state = 'down', reason = 'tool_break', since = now()"
                " WHERE machine = 'CNC-01'"
            )
        browser.wait_for(
            "document.querySelector('[data-machine=\"CNC-01\"]').classList.contains('state-down')"
        )
        again, _ = _tiles(browser.dom())
        assert "断刀" in again["CNC-01"].text and "故障停机" in again["CNC-01"].text

        # Signed out while watching (password changed elsewhere): the next refresh gets 401
        # and the page goes to the sign-in form instead of freezing.
        with psycopg.connect(db_url, autocommit=True) as conn:
            users.set_password(conn, "admin", "another password")
        browser.wait_for("location.pathname === '/login'", timeout=15)
    finally:
        browser.close()
    # Written for a person to look at (is it readable from across the hall?); here only
    # checked to exist.
    assert all(png.exists() and png.stat().st_size > 10_000 for png in SCREENSHOTS.values())


def test_queries_read_the_view_and_survive_a_dropped_connection(db_url: str) -> None:
    db = Database(db_url)
    try:
        rows = andon_tiles(db)
        assert len(rows) == 12
        assert all(r.state == "offline" and r.since is None for r in rows)
        assert [r.machine for r in rows][:2] == ["IM-01", "IM-02"]
        # What a database restart does to the pooled session: the next read reconnects.
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'mesflow-dashboard'"
            )
        assert len(andon_tiles(db)) == 12
    finally:
        db.close()
