"""Routings through the real dataflow and PostgreSQL: per-operation quantities, WIP and order
progress (v_work_order_operations, v_wip, v_order_board), a restart in the middle, and a
routing that comes with the work order through the CRM API (collectors/crm_api.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from collectors.crm_api import create_app
from mesflow.events import WorkOrderEvent, parse_event
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from streams.replay import replay_file
from tests.helpers import write_jsonl

T0 = datetime.fromisoformat("2026-11-20T09:00:00+08:00")  # a Friday: both lines work
TOKEN = "tok-routing-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}

# The plant of these tests: the example plant with a routing of its own for P-100 (the
# example's routings are the demo's to change).
P100_ROUTING: dict[str, Any] = {
    "product": "P-100",
    "operations": [
        {"op": "10", "name": {"en": "Molding", "zh": "注塑"}, "machines": ["IM-01", "IM-02", "IM-03"]},
        {"op": "20", "name": {"en": "Drilling", "zh": "钻孔"}, "machines": ["CNC-03"],
         "ideal_cycle_seconds": 45},
    ],
}  # fmt: skip


def with_routing(plant: PlantConfig) -> PlantConfig:
    """`plant` with P100_ROUTING as its only routing, validated anew."""
    return PlantConfig.model_validate({**plant.model_dump(), "routings": [P100_ROUTING]})


@pytest.fixture
def routed(plant: PlantConfig) -> PlantConfig:
    return with_routing(plant)


THREE_STEPS: list[dict[str, Any]] = [
    {"op": "10", "name": "Molding", "machines": ["IM-01"]},
    {"op": "20", "name": "Drilling", "machines": ["CNC-03"], "ideal_cycle_seconds": 45},
    {"op": "30", "name": "Final check", "machines": ["CNC-01"]},
]


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def order(order_no: str, product: str, qty: int) -> dict[str, Any]:
    return {
        "type": "order",
        "ts": at(0),
        "order_no": order_no,
        "version": 1,
        "customer": "ACME",
        "priority": 1,
        "product": product,
        "qty": qty,
        "due": at(24 * 60),
        "status": "open",
        "id": f"o-{order_no}",
    }


def work_order(wo: str, order_no: str, product: str, qty: int, **kw: Any) -> dict[str, Any]:
    return {
        "type": "work_order",
        "ts": at(0),
        "work_order": wo,
        "order_no": order_no,
        "product": product,
        "qty": qty,
        "id": f"w-{wo}",
        **kw,
    }


def start(machine: str, minutes: float, wo: str, op: str | None = None) -> dict[str, Any]:
    e = {
        "type": "report",
        "kind": "wo_start",
        "machine": machine,
        "ts": at(minutes),
        "work_order": wo,
        "id": f"s-{machine}-{minutes}",
    }
    if op is not None:
        e["operation"] = op
    return e


def running(machine: str, minutes: float) -> dict[str, Any]:
    return {
        "type": "state",
        "machine": machine,
        "ts": at(minutes),
        "state": "running",
        "id": f"r-{machine}-{minutes}",
    }


def parts(machine: str, minutes: float, good: int, scrap: int) -> list[dict[str, Any]]:
    """`good` then `scrap` single-part counts, 20 s apart from `minutes` on."""
    out = []
    for i in range(good + scrap):
        m = minutes + i / 3
        out.append(
            {
                "type": "count",
                "machine": machine,
                "ts": at(m),
                "good": int(i < good),
                "scrap": int(i >= good),
                "id": f"c-{machine}-{m:.4f}",
            }
        )
    return out


def plant_events() -> list[dict[str, Any]]:
    """SO-R: WO-R1 with its own three-step routing, WO-R2 on the plant file's P-100
    routing (molding "10" at IM-01..03, drilling "20" at CNC-03); SO-N: WO-N without one."""
    return [
        order("SO-R", "P-100", 100),
        order("SO-N", "P-400", 50),
        work_order("WO-R1", "SO-R", "P-100", 30, routing=THREE_STEPS),
        work_order("WO-R2", "SO-R", "P-100", 40),
        work_order("WO-N", "SO-N", "P-400", 50),
        *(running(m, 0.5) for m in ("IM-01", "IM-02", "IM-03", "CNC-01", "CNC-03", "CNC-04")),
        # WO-R1: 55 molded (5 scrap), 43 drilled (3 scrap), 32 checked (2 scrap).
        start("IM-01", 1, "WO-R1", "10"),
        *parts("IM-01", 1.2, 50, 5),
        start("CNC-03", 10, "WO-R1"),  # no operation named: CNC-03's step, "20"
        *parts("CNC-03", 10.2, 40, 3),
        start("CNC-01", 20, "WO-R1", "30"),
        *parts("CNC-01", 20.2, 30, 2),
        # WO-R2: molded at IM-02; IM-03 named "20" explicitly (its machine list says "10").
        start("IM-02", 2, "WO-R2", "10"),
        *parts("IM-02", 2.2, 20, 1),
        start("IM-03", 12, "WO-R2", "20"),
        *parts("IM-03", 12.2, 8, 0),
        # WO-N: no routing at all.
        start("CNC-04", 3, "WO-N"),
        *parts("CNC-04", 3.2, 10, 1),
    ]


def operations(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            """SELECT work_order, position, op, qty_in, good, scrap, wip_before, status,
                      machines
               FROM v_work_order_operations ORDER BY work_order, position"""
        ).fetchall()


def wip(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT work_order, product, from_op, to_op, wip FROM v_wip ORDER BY work_order, to_op"
        ).fetchall()


def progress(url: str) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT work_order, good, scrap, progress FROM work_order_progress"
        ).fetchall()
        orders = conn.execute("SELECT order_no, good, scrap, progress FROM order_progress")
        return {r[0]: r[1:] for r in [*rows, *orders.fetchall()]}


def test_three_operations_with_scrap_at_each(
    db_url: str, ref_db_url: str, routed: PlantConfig, tmp_path: Path
) -> None:
    plant = routed
    events = plant_events()
    replay_file(
        write_jsonl(tmp_path / "all.jsonl", events), plant, db_url, tmp_path / "a", progress=False
    )
    assert operations(db_url) == [
        ("WO-R1", 1, "10", 55, 50, 5, 0, "done", ["IM-01"]),
        ("WO-R1", 2, "20", 50, 40, 3, 7, "done", ["CNC-03"]),
        ("WO-R1", 3, "30", 40, 30, 2, 8, "done", ["CNC-01"]),
        ("WO-R2", 1, "10", 21, 20, 1, 0, "running", ["IM-02"]),
        ("WO-R2", 2, "20", 20, 8, 0, 12, "running", ["IM-03"]),
    ]
    assert wip(db_url) == [
        ("WO-R1", "P-100", "10", "20", 7),
        ("WO-R1", "P-100", "20", "30", 8),
        ("WO-R2", "P-100", "10", "20", 12),
    ]
    got = progress(db_url)
    # A routed work order's good is its last operation's; its scrap, all its operations'.
    assert got["WO-R1"] == (30, 10, 1.0)
    assert got["WO-R2"] == (8, 1, 8 / 40)
    assert got["SO-R"] == (38, 11, 0.38)
    # Without a routing: all its parts, as before routings; no operation rows.
    assert got["WO-N"] == (10, 1, 10 / 50) and got["SO-N"] == (10, 1, 0.2)
    with psycopg.connect(db_url) as conn:
        board = conn.execute(
            "SELECT good, remaining FROM v_order_board WHERE order_no = 'SO-R'"
        ).fetchone()
    assert board == (38, 62)

    # A restart in the middle (a snapshot, then the rest) stores the same operations.
    half = len(events) // 2
    first, rest = events[:half], events[half:]
    rec = tmp_path / "b"
    replay_file(write_jsonl(tmp_path / "1.jsonl", first), plant, ref_db_url, rec, progress=False)
    middle = operations(ref_db_url)
    assert middle != operations(db_url)  # the cut really is in the middle of the work
    replay_file(write_jsonl(tmp_path / "2.jsonl", rest), plant, ref_db_url, rec, progress=False)
    assert operations(ref_db_url) == operations(db_url)
    assert wip(ref_db_url) == wip(db_url)


@pytest.fixture
def api(db_url: str, routed: PlantConfig) -> Iterator[TestClient]:
    settings = Settings(crm_tokens=f"crm-r:{TOKEN}")
    with TestClient(create_app(routed, db_url, settings)) as client:
        yield client


def test_a_routing_from_the_crm_api_reaches_the_boards(
    api: TestClient, db_url: str, routed: PlantConfig, tmp_path: Path
) -> None:
    plant = routed
    o = order("SO-API", "P-300", 20)
    body = {k: o[k] for k in ("order_no", "version", "customer", "priority", "product", "qty")}
    body |= {"due": o["due"], "status": "open", "ts": at(-10)}
    assert api.post("/api/v1/orders", json=body, headers=BEARER).status_code == 201
    wo = {"work_order": "WO-API", "order_no": "SO-API", "product": "P-300", "qty": 20}
    wo["ts"] = at(-9)
    bad = [{**THREE_STEPS[0], "machines": ["NOPE"]}]
    resp = api.post("/api/v1/work-orders", json={**wo, "routing": bad}, headers=BEARER)
    assert resp.status_code == 422
    assert resp.json()["fields"][0]["field"] == "routing.0.machines"
    twice = [THREE_STEPS[0], THREE_STEPS[0]]
    resp = api.post("/api/v1/work-orders", json={**wo, "routing": twice}, headers=BEARER)
    assert resp.status_code == 422 and "listed twice" in resp.text
    resp = api.post("/api/v1/work-orders", json={**wo, "routing": THREE_STEPS}, headers=BEARER)
    assert resp.status_code == 201
    same = api.post("/api/v1/work-orders", json={**wo, "routing": THREE_STEPS}, headers=BEARER)
    assert same.json()["status"] == "unchanged"
    got = api.get("/api/v1/orders/SO-API", headers=BEARER).json()["work_orders"][0]
    assert [s["op"] for s in got["routing"]] == ["10", "20", "30"]
    with psycopg.connect(db_url) as conn:
        logged = [
            parse_event(bytes(r[0]))
            for r in conn.execute("SELECT payload FROM ingest_log ORDER BY seq")
        ]
    [event] = [e for e in logged if isinstance(e, WorkOrderEvent)]
    assert event.routing is not None
    assert [s.model_dump(exclude_none=True) for s in event.routing] == THREE_STEPS

    floor = [
        *(running(m, 0.5) for m in ("IM-01", "CNC-03")),
        start("IM-01", 1, "WO-API"),  # IM-01 is in the API routing's step "10" only
        *parts("IM-01", 1.2, 12, 2),
        start("CNC-03", 8, "WO-API", "20"),
        *parts("CNC-03", 8.2, 9, 1),
    ]
    replay_file(
        write_jsonl(tmp_path / "f.jsonl", floor), plant, db_url, tmp_path / "r", progress=False
    )
    assert operations(db_url) == [
        ("WO-API", 1, "10", 14, 12, 2, 0, "running", ["IM-01"]),
        ("WO-API", 2, "20", 12, 9, 1, 2, "running", ["CNC-03"]),
        ("WO-API", 3, "30", 9, 0, 0, 9, "not_started", ["CNC-01"]),
    ]
    assert progress(db_url)["WO-API"] == (0, 3, 0.0)

    # The CRM drops the final check: a change, and the step leaves the board.
    two = THREE_STEPS[:2]
    wo["ts"] = at(30)
    resp = api.post("/api/v1/work-orders", json={**wo, "routing": two}, headers=BEARER)
    assert resp.json()["status"] == "accepted" and resp.json()["changed"] == ["routing"]
    more = parts("CNC-03", 31, 1, 0)
    replay_file(
        write_jsonl(tmp_path / "g.jsonl", more), plant, db_url, tmp_path / "r", progress=False
    )
    assert [r[2] for r in operations(db_url)] == ["10", "20"]
    assert progress(db_url)["WO-API"] == (10, 3, 0.5)
