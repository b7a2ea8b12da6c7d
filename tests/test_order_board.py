"""The order board and an order's page: ranking, content and "why it is late", on a real
database fed by the real dataflow (a replayed file)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dashboards import context
from dashboards.app import create_app
from dashboards.order_queries import order_board, order_detail
from dashboards.pages.orders import board_csv, fmt_slack, render_board, render_order
from dashboards.queries import Database
from mesflow import users
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from streams.replay import replay_file
from tests.helpers import write_jsonl
from tests.test_dashboard import sign_in

# A Friday morning inside the day shift (08:00-20:00, no break before 12:00).
T0 = datetime.fromisoformat("2026-11-20T09:00:00+08:00")


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def order(no: str, *, qty: int, due_h: float, priority: int, customer: str) -> dict[str, Any]:
    return {
        "type": "order",
        "ts": at(0),
        "order_no": no,
        "version": 1,
        "customer": customer,
        "priority": priority,
        "product": "P-100",
        "qty": qty,
        "due": at(due_h * 60),
        "status": "open",
        "id": f"o-{no}",
    }


def work_order(wo: str, no: str, machine: str, qty: int) -> dict[str, Any]:
    return {
        "type": "work_order",
        "ts": at(0),
        "work_order": wo,
        "order_no": no,
        "product": "P-100",
        "qty": qty,
        "machine": machine,
        "id": f"w-{wo}",
    }


def counts(machine: str, start: float, stop: float, **kw: int) -> list[dict[str, Any]]:
    """One part every 30 s in [start, stop) minutes."""
    out = []
    m = start
    while m < stop:
        out.append(
            {"type": "count", "machine": machine, "ts": at(m), "good": 1, "id": f"{machine}c{m}"}
        )
        m += 0.5
    return out


def scenario() -> list[dict[str, Any]]:
    """SO-LATE on IM-01 (P-100: ideal 27 s, made every 30 s) with an 18-minute hydraulic
    fault and two scrapped parts; SO-EASY and SO-LOW on IM-02, on time."""
    return [
        order("SO-LATE", qty=400, due_h=2, priority=2, customer="ACME"),
        order("SO-EASY", qty=10, due_h=8, priority=1, customer="Globex"),
        order("SO-LOW", qty=10, due_h=9, priority=3, customer="ACME"),
        work_order("WO-L1", "SO-LATE", "IM-01", 400),
        work_order("WO-E1", "SO-EASY", "IM-02", 10),
        work_order("WO-W1", "SO-LOW", "IM-02", 10),
        # Before the order started: not its loss.
        {
            "type": "state",
            "machine": "IM-01",
            "ts": at(-20),
            "state": "down",
            "reason": "no_operator",
            "id": "s0",
        },
        {"type": "state", "machine": "IM-01", "ts": at(0), "state": "running", "id": "s1"},
        {
            "type": "report",
            "kind": "wo_start",
            "machine": "IM-01",
            "ts": at(0),
            "work_order": "WO-L1",
            "id": "r1",
        },
        *counts("IM-01", 0.5, 30.5),  # 60 parts
        {
            "type": "state",
            "machine": "IM-01",
            "ts": at(30.5),
            "state": "down",
            "reason": "hydraulic_fault",
            "id": "s2",
        },
        {"type": "state", "machine": "IM-01", "ts": at(48.5), "state": "running", "id": "s3"},
        *counts("IM-01", 49, 59),  # 20 parts, the last at 58.5
        {
            "type": "report",
            "kind": "scrap",
            "machine": "IM-01",
            "ts": at(58.5),
            "qty": 2,
            "reason": "short_shot",
            "id": "x1",
        },
        {"type": "state", "machine": "IM-02", "ts": at(0), "state": "running", "id": "t1"},
        {
            "type": "report",
            "kind": "wo_start",
            "machine": "IM-02",
            "ts": at(0),
            "work_order": "WO-E1",
            "id": "r2",
        },
        *counts("IM-02", 0.5, 3),  # 5 of 10 parts: far ahead of an 8-hour due date
    ]


@pytest.fixture
def replayed(db_url: str, plant: PlantConfig, tmp_path: Path) -> Iterator[Database]:
    replay_file(
        write_jsonl(tmp_path / "orders.jsonl", scenario()),
        plant,
        db_url,
        tmp_path / "rec",
        progress=False,
    )
    db = Database(db_url)
    try:
        yield db
    finally:
        db.close()


def test_why_late_figures_match_hand_computed(replayed: Database, db_url: str) -> None:
    detail = order_detail(replayed, "SO-LATE")
    assert detail is not None
    got = {(r.machine, r.kind, r.reason): (round(r.seconds, 3), r.stops) for r in detail.losses}
    # Hand computed over the window 09:00-09:58:30 (first start to the latest event):
    # - the fault: 09:30:30-09:48:30 = 1080 s, one stop;
    # - running 0-30.5 and 48.5-58.5 min = 2430 s; 80 parts made (the scrap report moves 2 of
    #   them from good to scrap) at 27 s ideal = 2160 s: speed loss 2430 - 2160 = 270 s;
    # - scrap: the ideal time of the 2 scrapped parts, 2 x 27 = 54 s.
    assert got == {
        ("IM-01", "stop", "hydraulic_fault"): (1080.0, 1),
        ("IM-01", "speed", None): (270.0, 0),
        ("IM-01", "scrap", None): (54.0, 2),
    }
    assert [r.kind for r in detail.losses] == ["stop", "speed", "scrap"]  # largest first
    stop = detail.losses[0]
    assert (stop.reason_en, stop.reason_zh, stop.state) == ("Hydraulic fault", "液压故障", "down")
    # IM-02 ran other orders: none of its time is charged to SO-LATE.
    assert {r.machine for r in detail.losses} == {"IM-01"}


def test_board_ranks_at_risk_then_priority_then_due_and_filters(replayed: Database) -> None:
    rows = order_board(replayed)
    # SO-LATE needs 320 more parts at ~120/h with 1 h left: at risk, first despite priority 2.
    assert [r.order_no for r in rows] == ["SO-LATE", "SO-EASY", "SO-LOW"]
    late = rows[0]
    assert late.at_risk and late.customer == "ACME" and late.qty == 400 and late.good == 78
    assert late.slack_s is not None and late.slack_s < 0  # ETA after due
    assert not rows[1].at_risk and rows[1].priority == 1
    assert [r.order_no for r in order_board(replayed, customer="ACME")] == ["SO-LATE", "SO-LOW"]
    assert order_board(replayed, status="closed") == []


def test_order_page_data_work_orders_history_callbacks(replayed: Database, db_url: str) -> None:
    # The replay feeds the dataflow, not the intake API: write the history rows the intake
    # would (crm_api.py), a creation and a quantity change.
    with psycopg.connect(db_url) as conn:
        for version, change in (
            (1, '{"qty": {"old": null, "new": 300}}'),
            (2, '{"qty": {"old": 300, "new": 400}}'),
        ):
            conn.execute(
                "INSERT INTO order_history (order_no, version, changed_by, event_ts, change)"
                " VALUES ('SO-LATE', %s, 'crm-sales', %s, %s)",
                (version, T0 + timedelta(minutes=version), change),
            )
    detail = order_detail(replayed, "SO-LATE")
    assert detail is not None
    assert [(w.work_order, w.machine, w.good, w.scrap) for w in detail.work_orders] == [
        ("WO-L1", "IM-01", 78, 2)
    ]
    assert order_detail(replayed, "NO-SUCH") is None
    assert [(h.version, h.changed_by, h.change["qty"]["new"]) for h in detail.history] == [
        (2, "crm-sales", 400),
        (1, "crm-sales", 300),
    ]  # newest first
    kinds = [c.event_type for c in detail.callbacks]
    assert "order.at_risk" in kinds and "order.work_started" in kinds


# -- the pages: pure rendering, roles ------------------------------------------------------


def _text_of(node: Any) -> str:
    """All the text of a Dash component tree."""
    if isinstance(node, str | int | float):
        return str(node)
    if isinstance(node, list | tuple):
        return " ".join(_text_of(n) for n in node)
    children = getattr(node, "children", None)
    return "" if children is None else _text_of(children)


def test_order_page_says_why_late_in_both_languages(replayed: Database, plant: PlantConfig) -> None:
    detail = order_detail(replayed, "SO-LATE")
    assert detail is not None
    en = _text_of(render_order(detail, plant.tz, "en"))
    zh = _text_of(render_order(detail, plant.tz, "zh"))
    assert "18 min Hydraulic fault on IM-01" in en
    assert "IM-01 液压故障 18 分钟" in zh
    assert "4 min speed loss on IM-01" in en  # 270 s
    # Two parts at the ideal cycle: under a minute, in seconds (it read "1 min" rounded up).
    assert re.search(r"\b\d{1,2} s scrap \(2 parts\) on IM-01", en), en
    assert "WO-L1" in en and "At risk" in en and "有延期风险" in zh
    # The callbacks sent to the CRM, by name.
    assert "Work started" in en and "已开工" in zh and "work_started" not in zh
    # Plant-local times (Asia/Shanghai): the due date 11:00.
    assert "11-20 11:00" in en


def test_board_render_and_csv(replayed: Database, plant: PlantConfig) -> None:
    rows = order_board(replayed)
    table = render_board(rows, plant.tz, "en")
    trs = [tr for tr in table.children[1].children]
    assert [tr.className for tr in trs] == ["order-row at-risk", "order-row", "order-row"]
    assert "SO-LATE" in _text_of(trs[0]) and "78/400" in _text_of(trs[0])
    text = board_csv(rows, plant.tz)
    lines = text.splitlines()
    assert lines[0].startswith("rank,order_no,customer")
    assert lines[1].startswith("1,SO-LATE,ACME,2,P-100,400,78,2,19.5,")
    assert ",2026-11-20T11:00+08:00," in lines[1] and lines[1].endswith(",true,open")
    assert fmt_slack(-4_680, "en") == "-1.3 h" and fmt_slack(600, "zh") == "+10 分钟"


def _settings() -> Settings:
    return Settings(auth_session_secret="test-secret-" + "x" * 32)


def test_pages_refused_without_credentials_and_order_page_needs_manager(
    db_url: str, plant: PlantConfig
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        users.add_user(conn, "viewer1", "viewer", "viewer-password")
        users.add_user(conn, "boss", "manager", "manager-password")
    app = create_app(_settings(), plant, db_url)
    try:
        client = app.server.test_client()
        for path in ("/orders", "/orders/SO-1", "/orders?lang=en"):
            response = client.get(path)
            assert response.status_code == 302 and "/login" in response.location, path
        callback = {"output": "orders-table.children", "outputs": [], "inputs": []}
        assert client.post("/_dash-update-component", json=callback).status_code == 401

        sign_in(client, "viewer1", "viewer-password")
        assert client.get("/orders").status_code == 200
        assert client.get("/orders/SO-1").status_code == 403  # history and CRM log: manager

        manager = app.server.test_client()
        sign_in(manager, "boss", "manager-password", "/orders/SO-1")
        assert manager.get("/orders/SO-1").status_code == 200
    finally:
        context.of(app.server).db.close()


def _call(client: Any, output: str, inputs: list[tuple[str, str, Any]], state: list[Any]) -> Any:
    """One callback request as dash-renderer sends it."""
    outs = [
        dict(zip(("id", "property"), p.rsplit(".", 1), strict=True))
        for p in (output[2:-2].split("...") if output.startswith("..") else [output])
    ]
    body = {
        "output": output,
        "outputs": outs if output.startswith("..") else outs[0],
        "inputs": [{"id": i, "property": p, "value": v} for i, p, v in inputs],
        "state": [{"id": i, "property": p, "value": v} for i, p, v in state],
        "changedPropIds": [f"{inputs[0][0]}.{inputs[0][1]}"],
    }
    answer = client.post("/_dash-update-component", json=body)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_json()["response"]


def test_filters_and_csv_export_through_the_callbacks(
    replayed: Database, db_url: str, plant: PlantConfig
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        users.add_user(conn, "viewer1", "viewer", "viewer-password")
    app = create_app(_settings(), plant, db_url)
    try:
        client = app.server.test_client()
        sign_in(client, "viewer1", "viewer-password", "/orders")
        table = (
            "..orders-table.children...orders-customer.options...orders-banner.children"
            "...orders-page.data...orders-pager.children.."
        )

        def board(status: Any, customer: Any) -> list[str]:
            response = _call(
                client,
                table,
                [
                    ("orders-tick", "n_intervals", 1),
                    ("orders-status", "value", status),
                    ("orders-customer", "value", customer),
                    ("orders-prev", "n_clicks", None),
                    ("orders-next", "n_clicks", None),
                ],
                [("orders-lang", "data", "en"), ("orders-page", "data", 0)],
            )
            assert [o["value"] for o in response["orders-customer"]["options"]] == [
                "ACME",
                "Globex",
            ]
            return re.findall(r'"data-order": "([^"]+)"', json.dumps(response["orders-table"]))

        assert board("open", None) == ["SO-LATE", "SO-EASY", "SO-LOW"]
        assert board("open", "ACME") == ["SO-LATE", "SO-LOW"]
        assert board("closed", None) == []
        assert board(["not", "a", "string"], 7) == ["SO-LATE", "SO-EASY", "SO-LOW"]

        download = _call(
            client,
            "orders-download.data",
            [("orders-csv", "n_clicks", 1)],
            [("orders-status", "value", "open"), ("orders-customer", "value", "Globex")],
        )["orders-download"]["data"]
        assert download["filename"] == "orders.csv"
        assert (
            download["content"].splitlines()[1].startswith("2,SO-EASY,Globex,1,P-100,10,5,0,50.0,")
        )  # the rank on the whole board
    finally:
        context.of(app.server).db.close()
