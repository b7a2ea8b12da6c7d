"""Traceability (issue 12, item 7): lot reports through the ingest log and the real
dataflow into sql/024's tables, and the queries both ways on a seeded plant.

The seeded plant: orders SO-A (ACME) and SO-B (Beta). SO-A's work order WO-A1 ran on
IM-01 from 08:00 to 10:00 (plant time, UTC+8) with one breakdown 08:30-08:45 (reason
hydraulic_fault, reported by li) and made two production lots (PA-1, PA-2); SO-B's WO-B1
ran on IM-02 09:00-10:00 and made PB-1. Material lot RESIN-7 went into both work orders;
MB-9 into WO-B1 only.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.crm_api import create_app
from mesflow import trace
from mesflow.events import ContractError, parse_event
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from streams.lots import LotRow
from streams.runner import run_flow
from streams.validate import Validator
from tests.helpers import count, feed, log_position

TOKEN = "tok-trace-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
CST = timezone(timedelta(hours=8))
DAY = datetime(2026, 11, 20, tzinfo=CST)


def at(h: int, m: int = 0) -> datetime:
    return DAY.replace(hour=h, minute=m)


def iso(h: int, m: int = 0) -> str:
    return at(h, m).isoformat()


def _settings() -> Settings:
    return Settings(crm_tokens=f"crm-a:{TOKEN}")


@pytest.fixture
def api(db_url: str, plant: PlantConfig) -> Iterator[TestClient]:
    with TestClient(create_app(plant, db_url, _settings())) as client:
        yield client


def _order(order_no: str, customer: str, qty: int) -> dict[str, Any]:
    return {
        "order_no": order_no,
        "version": 1,
        "customer": customer,
        "priority": 2,
        "product": "P-100",
        "qty": qty,
        "due": "2026-11-28T18:00:00+08:00",
        "status": "open",
        "ts": "2026-11-19T08:00:00+08:00",
    }


def _wo(wo: str, order_no: str, machine: str) -> dict[str, Any]:
    return {
        "work_order": wo,
        "order_no": order_no,
        "product": "P-100",
        "qty": 500,
        "machine": machine,
        "ts": "2026-11-19T08:00:00+08:00",
    }


def rep(kind: str, machine: str, ts: str, **fields: Any) -> dict[str, Any]:
    return {"type": "report", "kind": kind, "machine": machine, "ts": ts, **fields}


def material(machine: str, ts: str, wo: str, lot: str, mat: str, **kw: Any) -> dict[str, Any]:
    return rep("material_lot", machine, ts, work_order=wo, lot=lot, material=mat, **kw)


def product(machine: str, ts: str, wo: str, lot: str, qty: int, **kw: Any) -> dict[str, Any]:
    return rep("production_lot", machine, ts, work_order=wo, lot=lot, qty=qty, **kw)


def state(machine: str, ts: str, s: str) -> dict[str, Any]:
    return {"type": "state", "machine": machine, "ts": ts, "state": s}


def plant_events() -> list[dict[str, Any]]:
    return [
        state("IM-01", iso(7, 50), "idle"),
        state("IM-02", iso(8, 50), "idle"),
        rep("wo_start", "IM-01", iso(8), work_order="WO-A1", operator="wang"),
        state("IM-01", iso(8), "running"),
        material("IM-01", iso(8, 2), "WO-A1", "RESIN-7", "PP-H30", qty=200, operator="wang"),
        {"type": "count", "machine": "IM-01", "ts": iso(8, 29), "good": 60},
        state("IM-01", iso(8, 30), "down"),
        state("IM-01", iso(8, 45), "running"),
        rep(
            "downtime_reason",
            "IM-01",
            iso(8, 50),
            at=iso(8, 30),
            reason="hydraulic_fault",
            operator="li",
        ),
        rep(
            "inspection",
            "IM-01",
            iso(8, 5),
            work_order="WO-A1",
            stage="first",
            result="pass",
            sample_qty=2,
            characteristics=[{"name": "diameter", "value": 10.02, "lsl": 9.9, "usl": 10.1}],
            operator="qc.sun",
        ),
        rep(
            "inspection",
            "IM-01",
            iso(9, 5),
            work_order="WO-A1",
            stage="patrol",
            result="fail",
            characteristics=[
                {"name": "diameter", "value": 10.32, "lsl": 9.9, "usl": 10.1, "unit": "mm"},
                {"name": "weight", "value": 12.5, "usl": 13},
                {"name": "look", "ok": False},
            ],
            defects=[{"code": "flash", "qty": 2}],
            note="burr at the gate",
            operator="qc.sun",
        ),
        rep("wo_start", "IM-02", iso(9), work_order="WO-B1", operator="zhao"),
        rep(
            "inspection",
            "IM-02",
            iso(9, 10),
            work_order="WO-B1",
            stage="first",
            result="pass",
            operator="qc.sun",
        ),
        state("IM-02", iso(9), "running"),
        material("IM-02", iso(9, 1), "WO-B1", "RESIN-7", "PP-H30", operator="zhao"),
        material("IM-02", iso(9, 2), "WO-B1", "MB-9", "BLACK-MB", qty=3, operator="zhao"),
        product("IM-01", iso(9, 15), "WO-A1", "PA-1", 100, operator="wang"),
        {"type": "count", "machine": "IM-01", "ts": iso(9, 59), "good": 140},
        {"type": "count", "machine": "IM-02", "ts": iso(9, 59), "good": 120},
        product("IM-01", iso(10), "WO-A1", "PA-2", 100, operator="wang"),
        # A collector's report: no operator.
        product("IM-02", iso(10), "WO-B1", "PB-1", 120),
        rep("wo_end", "IM-01", iso(10), work_order="WO-A1", operator="wang"),
        rep("wo_end", "IM-02", iso(10), work_order="WO-B1", operator="zhao"),
        state("IM-01", iso(10), "idle"),
        state("IM-02", iso(10), "idle"),
    ]


def seed(api: TestClient, db_url: str, plant: PlantConfig, recovery: Path) -> None:
    for order_no, customer in (("SO-A", "ACME"), ("SO-B", "Beta")):
        assert api.post("/api/v1/orders", json=_order(order_no, customer, 1000), headers=BEARER)
    for wo, order_no, m in (("WO-A1", "SO-A", "IM-01"), ("WO-B1", "SO-B", "IM-02")):
        r = api.post("/api/v1/work-orders", json=_wo(wo, order_no, m), headers=BEARER)
        assert r.status_code == 201, r.text
    feed(db_url, plant_events(), source="test")
    run(db_url, plant, recovery)


def run(url: str, plant: PlantConfig, recovery: Path) -> None:
    run_flow(plant, url, recovery, 10.0, upto_seq=log_position(url))


def tables(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY seq").fetchall()
            for t in ("material_lot_use", "production_lot", "operator_activity")
        }


# --- the contract -------------------------------------------------------------------------


def test_lot_reports_parse_and_bound_their_fields() -> None:
    ev = parse_event(
        '{"type":"report","kind":"material_lot","machine":"IM-01","ts":"2026-11-20T08:00:00Z",'
        '"work_order":"WO-1","lot":"L-1","material":"PP","qty":5,"operator":"op7"}'
    )
    assert (ev.kind, ev.lot, ev.material, ev.qty) == ("material_lot", "L-1", "PP", 5)  # type: ignore[union-attr]
    base = {"type": "report", "machine": "IM-01", "ts": "2026-11-20T08:00:00Z", "work_order": "W"}
    refused = [
        ({**base, "kind": "production_lot", "lot": "L"}, "missing_field"),  # qty required
        ({**base, "kind": "production_lot", "lot": "L", "qty": 0}, "invalid_field"),
        ({**base, "kind": "material_lot", "lot": "L"}, "missing_field"),  # material
        ({**base, "kind": "material_lot", "lot": "", "material": "M"}, "invalid_field"),
        ({**base, "kind": "material_lot", "lot": "a\x00b", "material": "M"}, "invalid_field"),
        ({**base, "kind": "material_lot", "lot": "x" * 201, "material": "M"}, "invalid_field"),
        ({**base, "kind": "production_lot", "lot": "L", "qty": "5"}, "invalid_field"),
    ]
    import json

    for payload, reason in refused:
        with pytest.raises(ContractError) as err:
            parse_event(json.dumps(payload))
        assert err.value.reason == reason, payload


def test_the_validator_routes_lot_reports_past_the_trackers(plant: PlantConfig) -> None:
    from mesflow.ingest_log import LogEntry

    ev = material("IM-01", "2026-11-20T08:00:00+00:00", "WO-1", "L-1", "PP", operator="op")
    import json

    out = list(Validator(plant)([LogEntry(7, json.dumps(ev).encode(), None, None)]))
    kinds = [type(x).__name__ for x in out]
    assert kinds == ["LotRow", "OperatorActivity", "Progress"]
    assert not any(type(x) is tuple for x in out)  # nothing for the machine trackers
    assert isinstance(out[0], LotRow) and out[0].seq == 7 and out[0].lot == "L-1"


# --- the dataflow and the queries ------------------------------------------------------------


def test_trace_queries_return_the_exact_sets(
    api: TestClient, db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    seed(api, db_url, plant, tmp_path / "rec")
    tz = plant.tz
    with psycopg.connect(db_url) as conn:
        # From the shared material lot: both orders and both customers.
        lt = trace.lot_trace(conn, "RESIN-7", tz)
        assert {(o["order_no"], o["customer"]) for o in lt.orders} == {
            ("SO-A", "ACME"),
            ("SO-B", "Beta"),
        }
        assert [(r["work_order"], r["machine"], r["qty"]) for r in lt.reports] == [
            ("WO-A1", "IM-01", 200),
            ("WO-B1", "IM-02", None),
        ]
        assert {p["lot"] for p in lt.products} == {"PA-1", "PA-2", "PB-1"}
        # From a production lot: its one order and customer, and the material that went in.
        pa = trace.lot_trace(conn, "PA-2", tz)
        assert [(o["order_no"], o["customer"]) for o in pa.orders] == [("SO-A", "ACME")]
        assert {m["lot"] for m in pa.materials} == {"RESIN-7"}
        pb = trace.lot_trace(conn, "PB-1", tz)
        assert {m["lot"] for m in pb.materials} == {"RESIN-7", "MB-9"}
        assert not trace.lot_trace(conn, "NO-SUCH", tz).found

        # From order SO-A: its lots, machine, operators and its one stop, in plant time.
        ot = trace.order_trace(conn, "SO-A", tz)
    assert ot.order is not None and ot.order["customer"] == "ACME"
    assert [(w["work_order"], w["machine"]) for w in ot.work_orders] == [("WO-A1", "IM-01")]
    assert [(r["lot_kind"], r["lot"]) for r in ot.lots] == [
        ("material", "RESIN-7"),
        ("production", "PA-1"),
        ("production", "PA-2"),
    ]
    # WO-A1 made 200 of 500: not complete, so its window runs to IM-01's latest event
    # (10:00; v_order_machine, sql/017).
    assert [(m["machine"], m["from_ts"], m["to_ts"]) for m in ot.machines] == [
        ("IM-01", at(8), at(10))
    ]
    assert ot.machines[0]["from_ts"].utcoffset() == timedelta(hours=8)  # plant time
    assert {(o["operator"], o["kind"]) for o in ot.operators} == {
        ("wang", "wo_start"),
        ("wang", "material_lot"),
        ("wang", "production_lot"),
        ("wang", "wo_end"),
        ("li", "downtime_reason"),
        ("qc.sun", "inspection"),
    }
    assert [(s["machine"], s["start_ts"], s["end_ts"], s["reason"]) for s in ot.stops] == [
        ("IM-01", at(8, 30), at(8, 45), "hydraulic_fault")
    ]
    assert ot.stops[0]["seconds"] == 900
    # Its inspections: WO-A1's two, in time order, with what each measured; not WO-B1's.
    assert [
        (i["ts"], i["stage"], i["result"], i["machine"], i["work_order"], i["operator"])
        for i in ot.inspections
    ] == [
        (at(8, 5), "first", "pass", "IM-01", "WO-A1", "qc.sun"),
        (at(9, 5), "patrol", "fail", "IM-01", "WO-A1", "qc.sun"),
    ]
    assert ot.inspections[0]["sample_qty"] == 2
    patrol = ot.inspections[1]
    assert [c["ok"] for c in patrol["characteristics"]] == [False, True, False]
    assert patrol["defects"] == [{"code": "flash", "qty": 2}]
    assert patrol["note"] == "burr at the gate"
    # SO-B never sees SO-A's things.
    with psycopg.connect(db_url) as conn:
        ob = trace.order_trace(conn, "SO-B", tz)
    assert {r["lot"] for r in ob.lots} == {"RESIN-7", "MB-9", "PB-1"}
    assert [m["machine"] for m in ob.machines] == ["IM-02"]
    assert {o["operator"] for o in ob.operators} == {"zhao", "qc.sun"}
    assert ob.stops == []
    assert [(i["work_order"], i["stage"]) for i in ob.inspections] == [("WO-B1", "first")]


def test_replaying_the_log_twice_adds_nothing(
    api: TestClient, db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    seed(api, db_url, plant, tmp_path / "rec")
    first = tables(db_url)
    assert len(first["material_lot_use"]) == 3 and len(first["production_lot"]) == 3
    # The same events sent again (their ids make the log store nothing new) ...
    events = [{**e, "id": f"e{i}"} for i, e in enumerate(plant_events()) if e["type"] == "report"]
    feed(db_url, events)
    feed(db_url, events)
    run(db_url, plant, tmp_path / "rec")
    # ... and the whole log read again from the start by a fresh dataflow.
    run(db_url, plant, tmp_path / "rec2")
    again = tables(db_url)
    # The resent copies are new log rows (the first copies had no id) and are stored once.
    assert len(again["production_lot"]) == 6
    run(db_url, plant, tmp_path / "rec3")
    assert tables(db_url) == again
    assert count(db_url, "SELECT count(*) FROM dead_letter") == 0  # no row was refused


HOSTILE = [
    "RESIN'; DROP TABLE production_lot; --",
    "批次-二〇二六-甲",
    "lot with spaces and \t tab",
    "😀" * 50,
    "%s %(lot)s {lot}",
    "x" * 200,
]


def test_hostile_lot_ids_are_stored_as_they_are_or_refused(
    api: TestClient, db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    seed(api, db_url, plant, tmp_path / "rec")
    events = [product("IM-01", iso(10, 5), "WO-A1", lot, 1) for lot in HOSTILE]
    bad = [
        product("IM-01", iso(10, 5), "WO-A1", "a\x00b", 1),
        product("IM-01", iso(10, 5), "WO-A1", "y" * 201, 1),
        product("IM-01", iso(10, 5), "WO-A1", "", 1),
    ]
    feed(db_url, [*events, *bad])
    run(db_url, plant, tmp_path / "rec")
    with psycopg.connect(db_url) as conn:
        for lot in HOSTILE:
            found = trace.lot_trace(conn, lot, plant.tz)
            assert [r["lot"] for r in found.reports] == [lot]
            assert [o["order_no"] for o in found.orders] == ["SO-A"]
    assert count(db_url, "SELECT count(*) FROM production_lot") == 3 + len(HOSTILE)
    assert count(db_url, "SELECT count(*) FROM dead_letter WHERE reason = 'invalid_field'") == 3


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lot=st.text(min_size=1, max_size=250))
def test_any_lot_id_is_refused_by_the_contract_or_queried_safely(lot: str) -> None:
    import json

    payload = json.dumps(product("IM-01", "2026-11-20T08:00:00Z", "W", lot, 1))
    try:
        ev = parse_event(payload)
    except ContractError as err:
        assert err.reason == "invalid_field"
        assert "\x00" in lot or len(lot) > 200
    else:
        assert ev.lot == lot  # type: ignore[union-attr]


# --- the API ------------------------------------------------------------------------------


def test_the_trace_api_requires_auth_and_answers_both_ways(
    api: TestClient, db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    seed(api, db_url, plant, tmp_path / "rec")
    for path in ("/api/v1/trace/lots/RESIN-7", "/api/v1/trace/orders/SO-A"):
        assert api.get(path).status_code == 401
        assert api.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    lot = api.get("/api/v1/trace/lots/RESIN-7", headers=BEARER)
    assert lot.status_code == 200, lot.text
    body = lot.json()
    assert {(o["order_no"], o["customer"]) for o in body["orders"]} == {
        ("SO-A", "ACME"),
        ("SO-B", "Beta"),
    }
    assert {p["lot"] for p in body["production_lots"]} == {"PA-1", "PA-2", "PB-1"}
    order = api.get("/api/v1/trace/orders/SO-A", headers=BEARER).json()
    assert [s["start_ts"] for s in order["stops"]] == ["2026-11-20T08:30:00+08:00"]
    assert {r["lot"] for r in order["lots"]} == {"RESIN-7", "PA-1", "PA-2"}
    assert [(i["ts"], i["stage"], i["result"]) for i in order["inspections"]] == [
        ("2026-11-20T08:05:00+08:00", "first", "pass"),
        ("2026-11-20T09:05:00+08:00", "patrol", "fail"),
    ]
    assert order["inspections"][1]["defects"] == [{"code": "flash", "qty": 2}]
    assert {o["operator"] for o in order["operators"]} == {"wang", "li", "qc.sun"}
    # Unknown: 404 problem; a control character: 422 naming the field; never a 500.
    missing = api.get("/api/v1/trace/lots/NOPE", headers=BEARER)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert api.get("/api/v1/trace/orders/NOPE", headers=BEARER).status_code == 404
    for bad in ("a%00b", "a%0Ab", "x" * 201):
        r = api.get(f"/api/v1/trace/lots/{bad}", headers=BEARER)
        assert r.status_code == 422, (bad, r.text)
    odd = api.get("/api/v1/trace/lots/RESIN'%3B%20DROP%20TABLE%20x%3B--", headers=BEARER)
    assert odd.status_code == 404


# --- the operator tablet's lots section --------------------------------------------------------


def _lots_request(app: Any, button: str, **values: Any) -> dict[str, Any]:
    """The request dash-renderer sends when a lots button is pressed."""
    output = next(k for k in app.callback_map if "op-lots-feedback.children" in k)
    outputs = [
        dict(zip(("id", "property"), p.rsplit(".", 1), strict=True))
        for p in output[2:-2].split("...")
    ]
    state = {
        "op-station": "IM-01",
        "op-lots-key": "ab" * 16,
        "op-lots-wo": "WO-A1",
        "op-lots-lot": "PA-9",
        "op-lots-material": None,
        "op-lots-qty": 50,
        "op-lots-lang": "en",
        **values,
    }
    return {
        "output": output,
        "outputs": outputs,
        "inputs": [
            {
                "id": "op-lots-used",
                "property": "n_clicks",
                "value": 1 if button == "used" else None,
            },
            {
                "id": "op-lots-made",
                "property": "n_clicks",
                "value": 1 if button == "made" else None,
            },
        ],
        "state": [
            {"id": k, "property": "value" if k in _VALUE_IDS else "data", "value": v}
            for k, v in state.items()
        ],
        "changedPropIds": [f"op-lots-{button}.n_clicks"],
    }


_VALUE_IDS = {"op-lots-wo", "op-lots-lot", "op-lots-material", "op-lots-qty"}


def test_the_operator_tablet_reports_lots_through_the_log(
    api: TestClient, db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    from datetime import UTC

    from dashboards import context
    from dashboards.app import create_app as create_board
    from mesflow import users
    from tests.test_dashboard import sign_in

    seed(api, db_url, plant, tmp_path / "rec")
    with psycopg.connect(db_url, autocommit=True) as conn:
        users.add_user(conn, "op1", "operator", "pw-for-tests-123")
        users.add_user(conn, "view1", "viewer", "pw-for-tests-123")
    app = create_board(Settings(auth_session_secret="s" * 40), plant, db_url)
    try:
        viewer = app.server.test_client()
        assert sign_in(viewer, "view1", "pw-for-tests-123").status_code == 303
        refused = viewer.post("/_dash-update-component", json=_lots_request(app, "made"))
        assert refused.status_code == 403
        client = app.server.test_client()
        assert sign_in(client, "op1", "pw-for-tests-123").status_code == 303
        if datetime.now(UTC).second >= 55:  # a double tap across a minute is two reports
            import time

            time.sleep(6)
        first = client.post("/_dash-update-component", json=_lots_request(app, "made"))
        again = client.post("/_dash-update-component", json=_lots_request(app, "made"))
        assert "Production lot PA-9 recorded" in first.get_data(as_text=True)
        assert "double tap" in again.get_data(as_text=True)
        used = _lots_request(app, "used", **{"op-lots-lot": "RESIN-8", "op-lots-material": "PP"})
        assert "RESIN-8 recorded" in client.post("/_dash-update-component", json=used).get_data(
            as_text=True
        )
        # Refused, and nothing stored: a work order not on this machine, a bad lot, no qty.
        for bad, words in (
            ({"op-lots-wo": "WO-B1"}, "not released"),
            ({"op-lots-lot": "a\x00b"}, "1 to 200"),
            ({"op-lots-lot": " "}, "1 to 200"),
            ({"op-lots-qty": None}, "whole number"),
            ({"op-lots-qty": 1.5}, "whole number"),
        ):
            r = client.post("/_dash-update-component", json=_lots_request(app, "made", **bad))
            assert words in r.get_data(as_text=True), (bad, r.get_data(as_text=True))
    finally:
        context.of(app.server).db.close()
    run(db_url, plant, tmp_path / "rec")
    with psycopg.connect(db_url) as conn:
        made = conn.execute(
            "SELECT lot, qty, machine, operator FROM production_lot WHERE lot = 'PA-9'"
        ).fetchall()
        assert made == [("PA-9", 50, "IM-01", "op1")]
        assert trace.lot_trace(conn, "RESIN-8", plant.tz).orders[0]["order_no"] == "SO-A"


def test_collectors_send_lot_reports_on_the_report_topic(plant: PlantConfig) -> None:
    import json

    from collectors.mqtt_json import map_message

    body = {"ts": "2026-11-20T08:00:00+08:00", "kind": "production_lot", "work_order": "WO-1"}
    topic = "mesflow/v1/suzhou/molding/IM/IM-01/report"
    ok = map_message(plant, topic, json.dumps({**body, "lot": "L-1", "qty": 4}).encode())
    assert ok.error is None and ok.machine == "IM-01"
    ev = parse_event(ok.payload)
    assert (ev.kind, ev.lot, ev.qty) == ("production_lot", "L-1", 4)  # type: ignore[union-attr]
    # No qty: stored as received; the dataflow's validator dead-letters it (missing_field).
    bad = map_message(plant, topic, json.dumps({**body, "lot": "L-1"}).encode())
    with pytest.raises(ContractError) as err:
        parse_event(bad.payload)
    assert err.value.reason == "missing_field"


def test_the_csv_holds_every_section_and_no_formula() -> None:
    import csv
    import io

    from dashboards.pages.trace import to_csv

    when = at(9)
    found = trace.OrderTrace(
        "SO-A",
        {"order_no": "SO-A"},
        work_orders=[{"work_order": "WO-A1", "machine": "IM-01", "started_at": when}],
        lots=[{"lot_kind": "production", "lot": "=HYPERLINK(1)", "qty": 5, "ts": when}],
        machines=[{"machine": "IM-01", "from_ts": when, "to_ts": None}],
        operators=[],
        stops=[{"machine": "IM-01", "start_ts": when, "end_ts": when, "seconds": 90.0}],
        inspections=[
            {
                "ts": when,
                "stage": "patrol",
                "result": "fail",
                "characteristics": [
                    {"name": "diameter", "value": 10.32, "lsl": 9.9, "usl": 10.1, "unit": "mm"},
                    {"name": "weight", "value": 12.5, "usl": 13.0, "ok": True},
                ],
                "defects": [{"code": "flash", "qty": 2}],
                "note": "-2 burrs",
            }
        ],
    )
    rows = list(csv.reader(io.StringIO(to_csv(found))))
    assert rows[0][0] == "section" and "lot" in rows[0] and "minutes" in rows[0]
    by = {r[0]: dict(zip(rows[0], r, strict=True)) for r in rows[1:]}
    assert set(by) == {"work_orders", "lots", "machines", "stops", "inspections"}
    assert by["inspections"]["findings"] == "✗ diameter 10.32 mm (9.9–10.1); flash ×2"
    assert by["inspections"]["note"] == "'-2 burrs"  # no formula either
    assert by["lots"]["lot"] == "'=HYPERLINK(1)"
    assert by["stops"]["minutes"] == "1.5"
    assert by["machines"]["from_ts"] == "2026-11-20T09:00:00+08:00"


def test_mesflow_replay_of_a_lot_file_twice_adds_nothing(
    api: TestClient, db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    from streams.replay import replay_file
    from tests.helpers import write_jsonl

    seed(api, db_url, plant, tmp_path / "rec")
    lots = [
        material("IM-01", iso(10, 10), "WO-A1", "RESIN-9", "PP-H30", qty=50, operator="wang"),
        product("IM-01", iso(10, 20), "WO-A1", "PA-3", 30, operator="wang"),
        product("IM-02", iso(10, 20), "WO-B1", "PB-2", 30),  # no ids: the file line is the key
    ]
    path = write_jsonl(tmp_path / "lots.jsonl", lots)
    replay_file(path, plant, db_url, tmp_path / "rep", progress=False)
    once = tables(db_url)
    assert {r[5] for r in once["production_lot"]} >= {"PA-3", "PB-2"}
    replay_file(path, plant, db_url, tmp_path / "rep", progress=False)
    replay_file(path, plant, db_url, tmp_path / "rep-fresh", progress=False)
    assert tables(db_url) == once


def test_findings_say_what_was_out_whatever_the_stored_shape() -> None:
    from dashboards.pages.trace import findings

    row = {
        "characteristics": [
            {"name": "d", "value": 10.32, "lsl": 9.9, "usl": 10.1, "ok": False},
            {"name": "unjudged", "value": 5, "usl": 4},  # no `ok`: judged from the limits
            {"name": "low", "value": 1.0, "lsl": 2.0},
            {"name": "inside", "value": 3, "lsl": 2, "usl": 4},
            {"name": "eye", "ok": False},
            {"name": "odd", "value": "abc", "lsl": None, "usl": "x", "ok": False},
            {"name": "fine", "value": 99, "ok": True},  # the report's word wins
            {"name": "text", "value": "n/a", "usl": 1},  # not a number: not judged
            "not a dict",
            None,
        ],
        "defects": [{"code": "flash", "qty": 2}, {"code": "sink"}, 7],
    }
    assert findings(row) == (
        "✗ d 10.32 (9.9–10.1); ✗ unjudged 5 (–4); ✗ low 1 (2–); ✗ eye; ✗ odd abc (–x);"
        " flash ×2; sink ×?"
    )
    assert findings({}) == findings({"characteristics": None, "defects": None}) == ""
    # On the page, defects by the plant's names in its language; a code it does not name
    # (or one of the wrong type) as sent.
    named = findings({"defects": [{"code": "flash", "qty": 2}, {"code": "sink"}, {"code": 5}]},
                     {"flash": "飞边"})  # fmt: skip
    assert named == "飞边 ×2; sink ×?; 5 ×?"
