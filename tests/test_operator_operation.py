"""The tablet names the operation: a work order started or ended at a station runs the step
of its routing (its own from the CRM, else its product's in the plant file) that lists the
station, so its parts land on that operation (docs/routings.md, docs/operator.md).

Pure event building, then the CRM API + the Flask callback + the real dataflow + PostgreSQL.
"""

from __future__ import annotations

import json
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
from fastapi.testclient import TestClient

from collectors.crm_api import create_app as create_crm
from dashboards import context
from dashboards import operator_reports as reports
from dashboards.app import create_app
from dashboards.operator_reports import Operation, Ticket
from dashboards.pages import operator as page
from mesflow import users
from mesflow.events import WorkOrderEndReport, WorkOrderStartReport, parse_event
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from streams.runner import run_flow
from tests.conftest import require
from tests.helpers import feed, log_position
from tests.test_dashboard import Chromium, sign_in
from tests.test_operator import open_tablet

STATION = "CNC-03"  # the example plant's P-100 routing: "10" at IM-01..03, "20" at CNC-03
NOW = datetime(2026, 11, 20, 1, 2, 33, tzinfo=UTC)
PASSWORD = "pw-for-tests-123"
TOKEN = "tok-operation-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
# A work order's own routing: CNC-03 is its step "30" (the plant file says "20" for P-100).
OWN = [
    {"op": "10", "name": "Molding", "machines": ["IM-01"]},
    {"op": "30", "name": "Deburr", "machines": ["CNC-03"]},
]


# -- pure ----------------------------------------------------------------------------------------


def test_a_plant_file_routing_names_the_stations_step(plant: PlantConfig) -> None:
    op = reports.operation_at(plant, STATION, "P-100", None)
    assert op is not None and op.op == "20"
    assert (op.label("zh"), op.label("en")) == ("20 钻孔攻丝", "20 Drill and tap")
    assert reports.operation_at(plant, "IM-02", "P-100", None) == Operation("10", op_name(plant))
    ticket = Ticket.new()
    for kind, model in (("wo_start", WorkOrderStartReport), ("wo_end", WorkOrderEndReport)):
        ev = reports.work_order(plant, ticket, STATION, kind, "WO-1", "op7", NOW, operation=op)
        parsed = parse_event(json.dumps(ev))
        assert isinstance(parsed, model) and parsed.operation == "20"
        # A double tap (same ticket, same minute) is the same event, operation included.
        again = reports.work_order(plant, ticket, STATION, kind, "WO-1", "op7", NOW, operation=op)
        assert again == ev


def op_name(plant: PlantConfig) -> Any:
    return plant.routings_by_product["P-100"].operations[0].name


def test_the_work_orders_own_routing_wins_over_the_plant_file(plant: PlantConfig) -> None:
    op = reports.operation_at(plant, STATION, "P-100", OWN)
    assert op == Operation("30", "Deburr") and op.label("zh") == "30 Deburr"
    # An empty own routing is none: the plant file's applies (as in the dataflow).
    assert reports.operation_at(plant, STATION, "P-100", []) == reports.operation_at(
        plant, STATION, "P-100", None
    )


def test_an_unrouted_product_sends_no_operation(plant: PlantConfig) -> None:
    assert reports.operation_at(plant, STATION, "P-200", None) is None
    assert reports.operation_at(plant, STATION, None, None) is None
    ticket = Ticket.new()
    ev = reports.work_order(plant, ticket, STATION, "wo_start", "WO-1", "op7", NOW)
    assert "operation" not in ev
    routed = reports.work_order(
        plant, ticket, STATION, "wo_start", "WO-1", "op7", NOW, operation=Operation("20", None)
    )
    assert routed["id"] != ev["id"]  # another operation is another event


def test_step_choice_first_listing_then_any_machine_then_none(plant: PlantConfig) -> None:
    two = [
        {"op": "A", "machines": []},
        {"op": "B", "machines": [STATION]},
        {"op": "C", "machines": [STATION]},
    ]
    assert reports.operation_at(plant, STATION, None, two) == Operation("B", None)
    assert reports.operation_at(plant, "CNC-01", None, two) == Operation("A", None)
    # No step lists the station and none is open to any machine: no operation.
    assert reports.operation_at(plant, "CNC-01", None, two[1:]) is None
    # A stored routing that is not one (hand-edited) falls back to the plant file.
    bad = [{"op": "x" * 500}]
    assert reports.operation_at(plant, STATION, "P-100", bad) == reports.operation_at(
        plant, STATION, "P-100", None
    )


def test_the_start_button_line_shows_the_operation(plant: PlantConfig) -> None:
    op = reports.operation_at(plant, STATION, "P-100", None)
    assert op is not None
    view = page.StationView(
        [], {}, [("WO-1", "P-100", 10, 0), ("WO-2", "P-200", 5, 0)], None, {"WO-1": op}
    )
    zh = repr(page.render_station(plant, STATION, view, None, "zh", None))
    en = repr(page.render_station(plant, STATION, view, None, "en", None))
    assert "WO-1 · 20 钻孔攻丝" in zh and "WO-1 · 20 Drill and tap" in en
    assert "'WO-2'" in zh and "WO-2 ·" not in zh


# -- CRM API, tablet callback, dataflow, PostgreSQL ----------------------------------------------


def at(now: datetime, minutes: float) -> str:
    return (now + timedelta(minutes=minutes)).isoformat()


def _crm(plant: PlantConfig, db_url: str, now: datetime) -> None:
    """Orders and work orders through the CRM API (intake tables and ingest log)."""
    settings = Settings(crm_tokens=f"crm-o:{TOKEN}")
    with TestClient(create_crm(plant, db_url, settings)) as api:
        for no, product in (("SO-P1", "P-100"), ("SO-P2", "P-200")):
            body = {"order_no": no, "version": 1, "customer": "ACME", "priority": 1}
            body |= {"product": product, "qty": 100, "due": at(now, 2 * 24 * 60)}
            body |= {"status": "open", "ts": at(now, -40)}
            assert api.post("/api/v1/orders", json=body, headers=BEARER).status_code == 201
        for wo, no, product, own in (
            ("WO-PLANT", "SO-P1", "P-100", None),
            ("WO-OWN", "SO-P1", "P-100", OWN),
            ("WO-NONE", "SO-P2", "P-200", None),
        ):
            body = {"work_order": wo, "order_no": no, "product": product, "qty": 40}
            body |= {"machine": STATION, "ts": at(now, -39)}
            if own is not None:
                body["routing"] = own
            assert api.post("/api/v1/work-orders", json=body, headers=BEARER).status_code == 201


def _process(plant: PlantConfig, db_url: str, recovery: Path) -> None:
    run_flow(plant, db_url, recovery, 1.0, upto_seq=log_position(db_url))


@pytest.fixture
def app(db_url: str, plant: PlantConfig) -> Iterator[dash.Dash]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for role in users.ROLES:
            users.add_user(conn, role, role, PASSWORD)
    settings = Settings(auth_session_secret="test-secret-" + "o" * 32, language="zh")
    built = create_app(settings, plant, db_url)
    try:
        yield built
    finally:
        context.of(built.server).db.close()


def _tap(client: Any, app: dash.Dash, tap: dict[str, Any], ticket: str) -> str:
    """The request dash-renderer sends when assets/operator.js reports a tap; its text."""
    output = next(k for k in app.callback_map if "op-feedback.children" in k)
    outputs = [
        dict(zip(("id", "property"), p.rsplit(".", 1), strict=True))
        for p in output[2:-2].split("...")
    ]
    body = {
        "output": output,
        "outputs": outputs,
        "inputs": [{"id": "op-tap", "property": "data", "value": {**tap, "t": time.time()}}],
        "state": [
            {"id": "op-station", "property": "data", "value": STATION},
            {"id": "op-ticket", "property": "data", "value": ticket},
            {"id": "op-qty", "property": "data", "value": None},
            {"id": "op-lang", "property": "data", "value": "zh"},
        ],
        "changedPropIds": ["op-tap.data"],
    }
    resp = client.post("/_dash-update-component", json=body)
    assert resp.status_code == 200
    return str(resp.get_json()["response"]["op-feedback"]["children"])


def _operations(db_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT work_order, op, good, machines FROM v_work_order_operations"
            " WHERE good > 0 ORDER BY work_order, position"
        ).fetchall()


def test_a_tablet_started_work_order_follows_its_routing(
    app: dash.Dash, db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    _crm(plant, db_url, now)
    feed(db_url, [{"type": "state", "machine": STATION, "ts": at(now, -30), "state": "running"}])
    _process(plant, db_url, tmp_path / "rec")
    with psycopg.connect(db_url) as conn:
        ops = reports.read_operations(
            conn, plant, STATION, [("WO-PLANT", None), ("WO-OWN", None), ("WO-NONE", "P-200")]
        )
    assert {w: o.op for w, o in ops.items()} == {"WO-PLANT": "20", "WO-OWN": "30"}

    # WO-OWN and WO-NONE started 20 and 10 minutes ago (events as the tablet builds them),
    # each making parts; then WO-PLANT started by a tap on the tablet now, making parts.
    for minutes, wo, good in ((-20, "WO-OWN", 4), (-10, "WO-NONE", 5)):
        start = reports.work_order(
            plant, Ticket.new(), STATION, "wo_start", wo, "op7",
            now + timedelta(minutes=minutes), operation=ops.get(wo),
        )  # fmt: skip
        with psycopg.connect(db_url, autocommit=True) as conn:
            assert reports.submit(conn, "op7", start).new == 1
        part = {"type": "count", "machine": STATION, "ts": at(now, minutes + 1), "good": good}
        feed(db_url, [part], source="plc")

    client = app.server.test_client()
    assert sign_in(client, "operator", PASSWORD).status_code == 303
    text = _tap(client, app, {"a": "wo", "kind": "wo_start", "wo": "WO-PLANT"}, Ticket.new().key)
    assert text == "已开工：WO-PLANT · 20 钻孔攻丝", text
    # Its parts come after its start (the tap's ts is its minute).
    ts = max(datetime.now(UTC), reports.tap_time() + timedelta(seconds=1))
    feed(db_url, [{"type": "count", "machine": STATION, "ts": ts.isoformat(), "good": 3}], "plc")
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT payload FROM ingest_log WHERE source LIKE 'tablet:%%' ORDER BY seq"
        ).fetchall()
    starts = [parse_event(bytes(r[0])) for r in rows]
    assert [(e.work_order, e.operation) for e in starts] == [  # type: ignore[union-attr]
        ("WO-OWN", "30"),
        ("WO-NONE", None),
        ("WO-PLANT", "20"),
    ]
    _process(plant, db_url, tmp_path / "rec")
    assert _operations(db_url) == [
        ("WO-OWN", "30", 4, [STATION]),
        ("WO-PLANT", "20", 3, [STATION]),
    ]
    with psycopg.connect(db_url) as conn:
        made: dict[str, int] = dict(
            conn.execute(
                "SELECT work_order, good FROM v_work_order_progress WHERE machine = %s",
                (STATION,),
            ).fetchall()
        )
    # Routed: the good of their last operation ("30", "20": this station's); unrouted: all.
    assert (made["WO-NONE"], made["WO-PLANT"], made["WO-OWN"]) == (5, 3, 4)


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


_ROW = "[...document.querySelectorAll('.op-wo')].find(r => r.textContent.includes('WO-PLANT'))"


@pytest.mark.browser
def test_start_in_the_browser_names_the_operation(
    db_url: str, plant: PlantConfig, served: str, tmp_path: Path
) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    now = datetime.now(UTC).replace(microsecond=0)
    _crm(plant, db_url, now)
    feed(db_url, [{"type": "state", "machine": STATION, "ts": at(now, -30), "state": "running"}])
    _process(plant, db_url, tmp_path / "rec")
    browser = Chromium(tmp_path)
    try:
        browser.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        open_tablet(browser, served, STATION)
        browser.wait_for(f"!!{_ROW}")
        label = browser.eval(f"{_ROW}.querySelector('.op-wo-id').textContent")
        assert label == "WO-PLANT · 20 Drill and tap", label
        ids = browser.eval(
            "[...document.querySelectorAll('.op-wo-id')].map(e => e.textContent).sort()"
        )
        assert ids == ["WO-NONE", "WO-OWN · 30 Deburr", "WO-PLANT · 20 Drill and tap"], ids
        browser.eval(f"{_ROW}.querySelector('.op-wo-btn').click()")
        browser.wait_for(
            "document.querySelector('#op-feedback').textContent"
            " === 'Started: WO-PLANT · 20 Drill and tap'"
        )
        with psycopg.connect(db_url) as conn:
            [(payload,)] = conn.execute(
                "SELECT payload FROM ingest_log WHERE source = 'tablet:operator'"
            ).fetchall()
        start = parse_event(bytes(payload))
        assert isinstance(start, WorkOrderStartReport)
        assert (start.work_order, start.operation) == ("WO-PLANT", "20")
        # Once applied it is the running one: its line keeps the operation, in Chinese too.
        _process(plant, db_url, tmp_path / "rec")
        browser.goto(f"{served}/operator?lang=zh")
        browser.wait_for(
            "document.querySelector('.op-wo.active .op-wo-id')?.textContent"
            " === 'WO-PLANT · 20 钻孔攻丝'"
        )
        assert browser.eval("document.documentElement.scrollWidth") <= 1280
        browser.screenshot(tmp_path / "operator-operation-zh.png")
    finally:
        browser.close()
