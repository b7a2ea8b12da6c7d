"""The operator tablet: taps become canonical reports in the ingest log, and reach v_stops.

Real database, real dataflow (run over the log as a replay does), the app's own Flask routes
for the callbacks, and chromium at 1280x800 for the tap-to-v_stops path and the screenshots.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dash
import psycopg
import pytest
import waitress

from dashboards import context
from dashboards import operator_reports as reports
from dashboards.app import create_app
from dashboards.operator_reports import Refused, Ticket
from mesflow import users
from mesflow.events import DowntimeReasonReport, ScrapReport, WorkOrderStartReport, parse_event
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from streams.runner import run_flow
from tests.conftest import require
from tests.helpers import feed, log_position, wait_until
from tests.test_dashboard import Chromium, sign_in

PASSWORD = "pw-for-tests-123"
MACHINE = "IM-01"
EARLIER_STOP = timedelta(minutes=8)
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


def _settings() -> Settings:
    return Settings(auth_session_secret="test-secret-" + "o" * 32, language="zh")


# -- pure: the reason tree and the events --------------------------------------------------------


def test_reason_lists_from_the_tree(plant: PlantConfig) -> None:
    stop = [r.code for r in reports.stop_reasons(plant)]
    scrap = [r.code for r in reports.scrap_reasons(plant)]
    assert "material_shortage" in stop and "first_article" in stop
    # Groups are headings, top-level defect codes are scrap reasons only.
    assert "technical" not in stop and "short_shot" not in stop
    assert set(scrap) >= {"short_shot", "flash", "dimension_out"}
    ordered = reports.most_used_first(
        reports.stop_reasons(plant), {"no_operator": 5, "mold_change": 2}
    )
    assert [r.code for r in ordered[:2]] == ["no_operator", "mold_change"]
    assert [r.code for r in ordered[2:]] == [
        c for c in stop if c not in ("no_operator", "mold_change")
    ]


def test_events_follow_the_contract(plant: PlantConfig) -> None:
    ticket = Ticket.new()
    now = datetime(2026, 11, 20, 1, 2, 33, tzinfo=UTC)
    at = "2026-11-20T00:55:00.123456+00:00"
    ev = reports.downtime_reason(plant, ticket, MACHINE, at, "material_shortage", "op7", now)
    parsed = parse_event(json.dumps(ev))
    assert isinstance(parsed, DowntimeReasonReport)
    assert parsed.at == datetime.fromisoformat(at) and parsed.ts == now.replace(second=0)
    sc = parse_event(json.dumps(reports.scrap(plant, ticket, MACHINE, 3, "flash", "op7", now)))
    assert isinstance(sc, ScrapReport) and sc.qty == 3
    wo = reports.work_order(plant, ticket, MACHINE, "wo_start", "WO-1", "op7", now)
    assert isinstance(parse_event(json.dumps(wo)), WorkOrderStartReport)
    # The same tap in the same minute is the same event; another ticket is another event.
    assert (
        reports.downtime_reason(plant, ticket, MACHINE, at, "material_shortage", "op7", now) == ev
    )
    other = reports.downtime_reason(plant, Ticket.new(), MACHINE, at, "material_shortage", "x", now)
    assert other["id"] != ev["id"]


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda p, t: reports.scrap(p, t, "NOPE", 1, "flash", "o"), "unknown_machine"),
        (lambda p, t: reports.scrap(p, t, ["IM-01"], 1, "flash", "o"), "unknown_machine"),
        (lambda p, t: reports.scrap(p, t, MACHINE, 0, "flash", "o"), "bad_qty"),
        (lambda p, t: reports.scrap(p, t, MACHINE, 1000, "flash", "o"), "bad_qty"),
        (lambda p, t: reports.scrap(p, t, MACHINE, True, "flash", "o"), "bad_qty"),
        (lambda p, t: reports.scrap(p, t, MACHINE, 2.0, "flash", "o"), "bad_qty"),
        (lambda p, t: reports.scrap(p, t, MACHINE, 1, "material_shortage", "o"), "unknown_reason"),
        (lambda p, t: reports.scrap(p, t, MACHINE, 1, "x\x00", "o"), "unknown_reason"),
        (
            lambda p, t: reports.downtime_reason(p, t, MACHINE, "yesterday", "no_operator", "o"),
            "unknown_stop",
        ),
        (
            lambda p, t: reports.downtime_reason(
                p, t, MACHINE, "2026-11-20T00:00:00", "no_operator", "o"
            ),
            "unknown_stop",
        ),
        (
            lambda p, t: reports.downtime_reason(
                p, t, MACHINE, "2026-11-20T00:00:00Z", "short_shot", "o"
            ),
            "unknown_reason",
        ),
        (
            lambda p, t: reports.work_order(p, t, MACHINE, "wo_start", "WO 1;DROP", "o"),
            "unknown_work_order",
        ),
        (
            lambda p, t: reports.work_order(p, t, MACHINE, "wo_start", "W" * 101, "o"),
            "unknown_work_order",
        ),
        (lambda p, t: reports.work_order(p, t, MACHINE, "delete", "WO-1", "o"), "bad_action"),
    ],
)
def test_hostile_taps_are_refused(plant: PlantConfig, call: Any, code: str) -> None:
    with pytest.raises(Refused) as err:
        call(plant, Ticket.new())
    assert err.value.code == code


@pytest.mark.parametrize("data", [None, 5, "", "zz" * 16, "a" * 65, {"key": "a" * 32}])
def test_forged_tickets_are_refused(data: Any) -> None:
    with pytest.raises(Refused):
        Ticket.from_data(data)


# -- a plant with a stop and a released work order, through the real dataflow --------------------


def _history(now: datetime) -> tuple[list[dict[str, Any]], datetime]:
    """IM-01 ran, was idle for 6 minutes (EARLIER_STOP after the start), ran again, then went
    down 10 minutes ago (open stop); WO-OP-1 is released to it."""
    run_at = (now - timedelta(minutes=30)).replace(microsecond=0)
    down_at = (now - timedelta(minutes=10)).replace(microsecond=0)
    events: list[dict[str, Any]] = [
        {"type": "state", "machine": MACHINE, "ts": run_at.isoformat(), "state": "running"},
        {
            "type": "count",
            "machine": MACHINE,
            "ts": (run_at + timedelta(minutes=5)).isoformat(),
            "good": 10,
        },
        {
            "type": "state",
            "machine": MACHINE,
            "ts": (run_at + EARLIER_STOP).isoformat(),
            "state": "idle",
        },
        {
            "type": "state",
            "machine": MACHINE,
            "ts": (run_at + EARLIER_STOP + timedelta(minutes=6)).isoformat(),
            "state": "running",
        },
        {"type": "state", "machine": MACHINE, "ts": down_at.isoformat(), "state": "down"},
        {
            "type": "order",
            "ts": run_at.isoformat(),
            "order_no": "SO-OP-1",
            "version": 1,
            "customer": "ACME",
            "priority": 1,
            "product": "P-100",
            "qty": 500,
            "due": (now + timedelta(days=2)).isoformat(),
            "status": "open",
        },
        {
            "type": "work_order",
            "ts": run_at.isoformat(),
            "work_order": "WO-OP-1",
            "order_no": "SO-OP-1",
            "product": "P-100",
            "qty": 500,
            "machine": MACHINE,
        },
    ]
    return events, down_at


def _process(plant: PlantConfig, db_url: str, recovery: Path) -> None:
    run_flow(plant, db_url, recovery, 1.0, upto_seq=log_position(db_url))


@pytest.fixture
def station(db_url: str, plant: PlantConfig, tmp_path: Path) -> datetime:
    """History fed and processed; the open stop's start."""
    events, down_at = _history(datetime.now(UTC))
    feed(db_url, events)
    _process(plant, db_url, tmp_path / "recovery")
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT start_ts, reason FROM v_stops WHERE machine = %s AND is_open", (MACHINE,)
        ).fetchone()
    assert row is not None and row[0] == down_at and row[1] == "unassigned", row
    return down_at


@pytest.fixture
def app(db_url: str, plant: PlantConfig) -> Iterator[dash.Dash]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for role in users.ROLES:
            users.add_user(conn, role, role, PASSWORD)
    built = create_app(_settings(), plant, db_url)
    try:
        yield built
    finally:
        context.of(built.server).db.close()


def _client(app: dash.Dash, role: str | None) -> Any:
    client = app.server.test_client()
    if role is not None:
        assert sign_in(client, role, PASSWORD).status_code == 303
    return client


def _act_output(app: dash.Dash) -> str:
    return next(k for k in app.callback_map if "op-feedback.children" in k)


def _tap(
    client: Any, app: dash.Dash, tap: dict[str, Any], *, ticket: str, qty: int | None = None
) -> Any:
    """The request dash-renderer sends when assets/operator.js reports a tap."""
    output = _act_output(app)
    outputs = [
        dict(zip(("id", "property"), p.rsplit(".", 1), strict=True))
        for p in output[2:-2].split("...")
    ]
    body = {
        "output": output,
        "outputs": outputs,
        "inputs": [{"id": "op-tap", "property": "data", "value": {**tap, "t": time.time()}}],
        "state": [
            {"id": "op-station", "property": "data", "value": MACHINE},
            {"id": "op-ticket", "property": "data", "value": ticket},
            {"id": "op-qty", "property": "data", "value": qty},
            {"id": "op-lang", "property": "data", "value": "en"},
        ],
        "changedPropIds": ["op-tap.data"],
    }
    return client.post("/_dash-update-component", json=body)


def _tablet_events(db_url: str) -> list[tuple[str, Any]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT source, payload FROM ingest_log WHERE source LIKE 'tablet:%%' ORDER BY seq"
        ).fetchall()
    return [(src, parse_event(bytes(payload))) for src, payload in rows]


def _wait_minute_start() -> None:
    # A double tap across a minute boundary is two events by design: not what is tested here.
    if datetime.now(UTC).second >= 55:
        time.sleep(6)


def test_callbacks_write_reports_and_a_double_tap_is_one_event(
    app: dash.Dash, db_url: str, plant: PlantConfig, station: datetime, tmp_path: Path
) -> None:
    client = _client(app, "operator")
    ticket = Ticket.new().key
    tap = {"a": "reason", "start": station.isoformat(), "reason": "material_shortage"}
    _wait_minute_start()
    first = _tap(client, app, tap, ticket=ticket)
    second = _tap(client, app, tap, ticket=ticket)
    assert first.status_code == 200 and second.status_code == 200
    assert "Stop reason recorded" in first.get_data(as_text=True)
    assert "double tap" in second.get_data(as_text=True)
    scrap = {"a": "scrap", "reason": "short_shot"}
    assert _tap(client, app, scrap, ticket=ticket, qty=5).status_code == 200
    assert _tap(client, app, scrap, ticket=ticket, qty=5).status_code == 200
    wo = {"a": "wo", "kind": "wo_start", "wo": "WO-OP-1"}
    assert _tap(client, app, wo, ticket=ticket).status_code == 200

    events = _tablet_events(db_url)
    assert [src for src, _ in events] == ["tablet:operator"] * 3
    reason, scrap_ev, start = (e for _, e in events)
    assert isinstance(reason, DowntimeReasonReport)
    assert (reason.machine, reason.at, reason.reason, reason.operator) == (
        MACHINE,
        station,
        "material_shortage",
        "operator",
    )
    assert isinstance(scrap_ev, ScrapReport) and (scrap_ev.qty, scrap_ev.reason) == (
        5,
        "short_shot",
    )
    assert isinstance(start, WorkOrderStartReport) and start.work_order == "WO-OP-1"

    # The dataflow applies them: the stop has its reason.
    _process(plant, db_url, tmp_path / "recovery")
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT reason FROM v_stops WHERE machine = %s AND start_ts = %s", (MACHINE, station)
        ).fetchone()
    assert row == ("material_shortage",)


def test_hostile_callback_requests_store_nothing(
    app: dash.Dash, db_url: str, station: datetime
) -> None:
    client = _client(app, "operator")
    ticket = Ticket.new().key
    bad = [
        # a stop the machine does not have, a reason outside the tree, a work order not released
        {
            "a": "reason",
            "start": (station - timedelta(hours=1)).isoformat(),
            "reason": "no_operator",
        },
        {"a": "reason", "start": station.isoformat(), "reason": "<script>"},
        {"a": "wo", "kind": "wo_start", "wo": "WO-OTHER"},
        {"a": "scrap", "reason": "flash"},
    ]
    for trigger in bad:
        response = _tap(client, app, trigger, ticket=ticket, qty=10_000)
        assert response.status_code == 200, trigger
    assert _tap(client, app, bad[0], ticket="not-a-ticket").status_code == 200
    assert _tablet_events(db_url) == []


@pytest.mark.parametrize("role", ["viewer", None])
def test_viewer_and_anonymous_are_refused(
    app: dash.Dash, db_url: str, station: datetime, role: str | None
) -> None:
    client = _client(app, role)
    page = client.get("/operator")
    assert page.status_code == (403 if role else 302)
    tap = {"a": "reason", "start": station.isoformat(), "reason": "no_operator"}
    response = _tap(client, app, tap, ticket=Ticket.new().key)
    assert response.status_code == (403 if role else 401)
    assert _tablet_events(db_url) == []
    # An operator may open the page.
    assert _client(app, "operator").get("/operator").status_code == 200


def _router(client: Any, app: dash.Dash, path: str, search: str = "") -> str:
    dep = next(
        d for d in client.get("/_dash-dependencies").get_json() if "_pages_content" in d["output"]
    )
    values = {"pathname": path, "search": search}
    body = {
        "output": dep["output"],
        "outputs": [
            dict(zip(("id", "property"), p.rsplit(".", 1), strict=True))
            for p in dep["output"][2:-2].split("...")
        ],
        "inputs": [{**i, "value": values.get(i["property"])} for i in dep["inputs"]],
        "state": [{**s, "value": None} for s in dep["state"]],
        "changedPropIds": [f"{i['id']}.{i['property']}" for i in dep["inputs"]],
    }
    response = client.post("/_dash-update-component", json=body)
    assert response.status_code == 200
    return json.dumps(response.get_json(), ensure_ascii=False)


def test_styled_404_in_both_languages(app: dash.Dash) -> None:
    client = _client(app, "viewer")
    zh = _router(client, app, "/no-such-page")
    assert "找不到此页面" in zh and "/no-such-page" in zh and '"/?lang=zh"' in zh
    assert "not-found" in zh
    en = _router(client, app, "/no-such-page", "?lang=en")
    assert "Page not found" in en and '"/?lang=en"' in en
    assert "404 - Page not found" not in en
    # A real page is not the 404 page.
    assert "not-found" not in _router(client, app, "/")


# -- the tablet in a real browser ---------------------------------------------------------------


@pytest.fixture
def served(app: dash.Dash) -> Iterator[str]:
    server = waitress.create_server(app.server, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        thread.join(timeout=5)


_READY_STATION = "document.querySelectorAll('.op-stop').length > 0"


def open_tablet(browser: Chromium, served: str, machine: str) -> None:
    """Sign in as the operator on a tablet that has no station yet, and choose `machine`."""
    browser.goto(f"{served}/operator?lang=en")
    browser.wait_for("!!document.querySelector('#password')")
    browser.eval("document.querySelector('#username').value = 'operator'")
    browser.eval(f"document.querySelector('#password').value = {json.dumps(PASSWORD)}")
    browser.eval("document.querySelector('button[type=submit]').click()")
    browser.wait_for("document.querySelectorAll('.op-pick').length >= 12")
    browser.eval(
        "[...document.querySelectorAll('.op-pick')]"
        f".find(b => b.textContent.includes({json.dumps(machine)})).click()"
    )


@pytest.mark.browser
def test_tap_a_reason_in_the_browser_reaches_v_stops(
    db_url: str, plant: PlantConfig, station: datetime, served: str, tmp_path: Path
) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    browser = Chromium(tmp_path)
    try:
        browser.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        open_tablet(browser, served, MACHINE)  # first visit: choose the station
        browser.wait_for(_READY_STATION)
        # Every target is at least 48 px in both directions.
        small = browser.eval(
            "[...document.querySelectorAll('.op-btn')].filter(b => {"
            " const r = b.getBoundingClientRect(); return r.height < 48 || r.width < 48 })"
            ".map(b => b.textContent)"
        )
        assert small == [], small
        start = station.isoformat()
        browser.eval(
            f"[...document.querySelector('.op-stop[data-start=\"{start}\"]')"
            ".querySelectorAll('.op-reason')]"
            ".find(b => b.textContent === 'Material shortage').click()"
        )
        browser.wait_for(
            "document.querySelector('#op-feedback').textContent.includes('Material shortage')"
        )
        _process(plant, db_url, tmp_path / "recovery")
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                "SELECT reason FROM v_stops WHERE machine = %s AND start_ts = %s",
                (MACHINE, station),
            ).fetchone()
        assert row == ("material_shortage",)
        # An earlier stop: one tap shows its buttons, the second gives the reason.
        earlier = (station - timedelta(minutes=20) + EARLIER_STOP).isoformat()
        card = f"document.querySelector('.op-stop[data-start=\"{earlier}\"]')"
        assert browser.eval(f"{card}.querySelectorAll('.op-reason').length") == 0
        browser.eval(f"{card}.querySelector('button.op-stop-head').click()")
        browser.wait_for(f"{card}?.querySelectorAll('.op-reason').length > 0")
        browser.eval(
            f"[...{card}.querySelectorAll('.op-reason')]"
            ".find(b => b.textContent === 'No operator').click()"
        )
        browser.wait_for(
            "document.querySelector('#op-feedback').textContent.includes('No operator')"
        )
        _process(plant, db_url, tmp_path / "recovery")
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                "SELECT reason FROM v_stops WHERE machine = %s AND start_ts = %s",
                (MACHINE, datetime.fromisoformat(earlier)),
            ).fetchone()
        assert row == ("no_operator",)
        # The stop's card shows it on the next refresh; the station is remembered on reload.
        browser.goto(f"{served}/operator?lang=en")
        browser.wait_for(
            f"document.querySelector('.op-stop[data-start=\"{start}\"]')?.dataset.reason"
            " === 'material_shortage'"
        )
        assert browser.eval("document.querySelectorAll('.op-pick').length") == 0
        # Nothing overflows the 1280 px width (no sideways scrolling on the tablet).
        assert browser.eval("document.documentElement.scrollWidth") <= 1280
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        # The scrap panel with a quantity chosen, as an operator sees it mid-entry.
        browser.eval(
            "[...document.querySelectorAll('.op-qty')].find(b => b.textContent === '2').click()"
        )
        browser.wait_for("!document.querySelector('.op-scrap .op-reason').disabled")
        browser.screenshot(SCREENSHOTS / "operator-en-1280x800.png")
        browser.goto(f"{served}/operator?lang=zh")
        browser.wait_for("document.querySelector('.op-stop-reason')?.textContent === '缺料'")
        browser.screenshot(SCREENSHOTS / "operator-zh-1280x800.png")
        # An unknown address: the app's own 404 page, with a way home.
        browser.goto(f"{served}/no-such-board?lang=en")
        browser.wait_for("!!document.querySelector('.not-found')")
        home = browser.eval("document.querySelector('.not-found-home').getAttribute('href')")
        assert home == "/?lang=en"
        assert "Page not found" in browser.eval("document.querySelector('.not-found').textContent")
        browser.screenshot(tmp_path / "404-en.png")
    finally:
        browser.close()


@pytest.mark.browser
def test_the_address_can_name_the_station_and_nothing_else(
    plant: PlantConfig, served: str, tmp_path: Path
) -> None:
    """`/operator?machine=IM-03` (a bookmark, a QR code on the machine) opens that station
    and the tablet keeps it; an address naming anything but a machine of the plant
    changes nothing."""
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    other = next(m for m in plant.machines if m != MACHINE)
    shown = "document.querySelector('.op-station-id')?.textContent"
    browser = Chromium(tmp_path)
    try:
        open_tablet(browser, served, MACHINE)
        browser.wait_for(f"{shown} === {json.dumps(MACHINE)}")
        browser.goto(f"{served}/operator?lang=en&machine={other}")
        browser.wait_for(f"{shown} === {json.dumps(other)}")
        browser.goto(f"{served}/operator?lang=en")  # kept, as a picked station is
        browser.wait_for(f"{shown} === {json.dumps(other)}")
        hostile = [
            "NO-SUCH",
            "im-01",
            "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
            f"{MACHINE}%00",
            "x" * 5000,
        ]
        for value in hostile:
            browser.goto(f"{served}/operator?lang=en&machine={value}")
            browser.wait_for(f"{shown} === {json.dumps(other)}")
            time.sleep(0.3)  # a wrong write would land after the first render
            assert browser.eval(shown) == other, value
            assert browser.eval("document.querySelectorAll('.op-pick').length") == 0
    finally:
        browser.close()


def test_a_tap_reaches_the_andon_status_within_2_s_with_the_live_dataflow(
    app: dash.Dash,
    db_url: str,
    plant: PlantConfig,
    station: datetime,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The live dataflow (run_flow without an end) applies a tap; v_machine_status, which
    the andon reads, shows the reason within 2 s of the tap's response."""
    caplog.set_level(logging.INFO, logger="streams.log_source")
    stop = threading.Event()
    flow = threading.Thread(
        target=run_flow,
        args=(plant, db_url, tmp_path / "recovery", 1.0),
        kwargs={"stop": stop},
        daemon=True,
    )
    flow.start()
    try:
        # Up and idle at the end of the log (its first read logs where it resumed): a
        # fixed sleep was too short on a loaded machine, and the 2 s below then timed the
        # dataflow's start rather than the tap.
        wait_until(
            lambda: "resuming the ingest log after seq" in caplog.text,
            timeout=60,
            what="the dataflow to follow the log",
        )
        client = _client(app, "operator")
        tap = {"a": "reason", "start": station.isoformat(), "reason": "no_operator"}
        _wait_minute_start()
        assert _tap(client, app, tap, ticket=Ticket.new().key).status_code == 200
        tapped = time.monotonic()
        reason = None
        while time.monotonic() - tapped < 10:
            with psycopg.connect(db_url) as conn:
                row = conn.execute(
                    "SELECT reason FROM v_machine_status WHERE machine = %s", (MACHINE,)
                ).fetchone()
            reason = row[0] if row else None
            if reason == "no_operator":
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - tapped
        print(f"tap to v_machine_status: {elapsed:.2f} s")
        assert reason == "no_operator" and elapsed < 2.0, (reason, elapsed)
    finally:
        stop.set()
        flow.join(timeout=30)
