"""Promise dates (POST /api/v1/promise, collectors/crm_dispatch.py) and the dispatch lists
read from sql/023_dispatch.sql, on a real PostgreSQL.

Hand-worked example on the demo plant's CNC cell (Asia/Shanghai; Monday to Friday, one day
shift 07:30-19:30 with lunch 11:30-12:30; CNC-04 and CNC-05 make the shaft P-400 at an
ideal 55 s per part). "Now" is Friday 2026-03-06 15:30.

- CNC-04 made 120 good P-400 in WO-0 from 09:30 to 12:30 today: 2 planned hours (the lunch
  hour is not planned time), so its measured rate is 60 parts/h.
- Released to CNC-04: WO-1 of SO-P1 (priority 2, due Monday 09:00), 300 parts, none made.
  Alone it runs 15:30-19:30 today (240 parts) and 07:30-08:30 Monday: on time.
- Ask: 120 P-400 at priority 1 on CNC-04. It goes first: 120 / 60 = 2 h, 15:30-17:30.
  WO-1 then runs 17:30-19:30 (120 parts) and 3 h on Monday, 07:30-10:30: 1.5 h past its due.
- Ask without a machine: CNC-05 is idle, 120 × 55 s = 1 h 50 min: 15:30-17:20, earlier than
  CNC-04's 17:30, and it pushes nothing. CNC-05 is the answer, at the ideal rate.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from collectors import crm_dispatch
from collectors.crm_api import create_app
from dashboards import dispatch_queries as dq
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from streams.hour_clock import to_us

TOKEN = "tok-promise-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
CST = timezone(timedelta(hours=8))


def local(d: int, h: int, m: int = 0) -> datetime:
    return datetime(2026, 3, d, h, m, tzinfo=CST)


NOW = local(6, 15, 30)


@pytest.fixture
def api(db_url: str, plant: PlantConfig, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr(crm_dispatch, "_wall_us", lambda: to_us(NOW))
    app = create_app(plant, db_url, Settings(crm_tokens=f"crm-a:{TOKEN}"))
    with TestClient(app) as client:
        yield client


def seed(api: TestClient, db_url: str) -> None:
    order = {
        "order_no": "SO-P1", "version": 1, "customer": "ACME", "priority": 2,
        "product": "P-400", "qty": 300, "due": local(9, 9).isoformat(), "status": "open",
        "ts": local(6, 8).isoformat(),
    }  # fmt: skip
    assert api.post("/api/v1/orders", json=order, headers=BEARER).status_code in (200, 201)
    wo = {
        "work_order": "WO-1", "order_no": "SO-P1", "product": "P-400", "qty": 300,
        "machine": "CNC-04", "ts": local(6, 8).isoformat(),
    }  # fmt: skip
    r = api.post("/api/v1/work-orders", json=wo, headers=BEARER)
    assert r.status_code == 201, r.text
    # What the dataflow wrote for an earlier, finished work order (its figures only).
    with psycopg.connect(db_url) as conn:
        conn.execute(
            """INSERT INTO work_order_progress (work_order, order_no, product, qty, machine, good,
                   scrap, progress, rate_per_h, eta, started_at, completed_at, last_event_ts)
               VALUES ('WO-0', 'SO-P0', 'P-400', 120, 'CNC-04', 120, 0, 1.0, 0, %s, %s, %s, %s)""",
            (local(6, 12, 30), local(6, 9, 30), local(6, 12, 30), local(6, 12, 30)),
        )


def ask(api: TestClient, **body: Any) -> Any:
    return api.post("/api/v1/promise", json=body, headers=BEARER)


def test_the_dispatch_views_and_lists(api: TestClient, db_url: str, plant: PlantConfig) -> None:
    seed(api, db_url)
    with psycopg.connect(db_url) as conn:
        inputs = dq.read_inputs(conn, plant, to_us(NOW))
        one = dq.read_inputs(conn, plant, to_us(NOW), "CNC-04")  # the tablet's narrower read
        none = dq.read_inputs(conn, plant, to_us(NOW), "CNC-05")
    assert inputs.measured == {("CNC-04", "P-400"): 60.0}
    assert one == inputs and none == dq.Inputs({}, {})
    [cnc4] = dq.machine_lists(plant, inputs, to_us(NOW), ["CNC-04"])
    [e] = cnc4.entries
    assert (e.job.work_order, e.job.order_no, e.job.priority, e.job.remaining) == (
        "WO-1", "SO-P1", 2, 300,
    )  # fmt: skip
    assert (e.start, e.finish, e.late) == (to_us(NOW), to_us(local(9, 8, 30)), False)


def test_a_promise_matches_the_hand_worked_example(api: TestClient, db_url: str) -> None:
    seed(api, db_url)
    with psycopg.connect(db_url) as conn:
        before = conn.execute("SELECT count(*) FROM ingest_log").fetchone()
    r = ask(api, product="P-400", qty=120, priority=1, machine="CNC-04")
    assert r.status_code == 200, r.text
    got = r.json()
    assert datetime.fromisoformat(got["finish"]) == local(6, 17, 30)
    assert datetime.fromisoformat(got["start"]) == NOW
    assert got["machine"] == "CNC-04"
    assert got["basis"] == {"rate_per_hour": 60.0, "source": "measured"}
    [slip] = got["slips"]
    assert (slip["order_no"], slip["work_order"]) == ("SO-P1", "WO-1")
    assert datetime.fromisoformat(slip["due"]) == local(9, 9)
    assert datetime.fromisoformat(slip["finish_before"]) == local(9, 8, 30)
    assert datetime.fromisoformat(slip["finish_after"]) == local(9, 10, 30)
    # Any machine: CNC-05, idle, at the ideal 55 s: 15:30 + 1 h 50 min.
    r = ask(api, product="P-400", qty=120, priority=1)
    got = r.json()
    assert (got["machine"], got["slips"]) == ("CNC-05", [])
    assert datetime.fromisoformat(got["finish"]) == local(6, 17, 20)
    assert got["basis"] == {"rate_per_hour": round(3600 / 55, 3), "source": "ideal"}
    # Nothing changed: no event logged, the list is as before.
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM ingest_log").fetchone() == before


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"product": "P-400", "qty": 0, "priority": 1}, 422),
        ({"product": "P-400", "qty": -5, "priority": 1}, 422),
        ({"product": "P-400", "qty": 10**12, "priority": 1}, 422),
        ({"product": "NOPE", "qty": 10, "priority": 1}, 422),
        ({"product": "P-400", "qty": 10, "priority": 1.5}, 422),
        ({"product": "P-400", "qty": 10, "priority": "1"}, 422),
        ({"product": "P-400", "qty": 10, "priority": 0}, 422),
        ({"product": "P-400", "qty": 10, "priority": 1, "machine": "IM-01"}, 422),
        ({"product": "P-400", "qty": 10, "priority": 1, "machine": "X-9"}, 422),
        ({"product": "P-400", "qty": 10, "priority": 1, "extra": True}, 422),
        ({"qty": 10, "priority": 1}, 422),
    ],
)
def test_hostile_promise_queries_get_clean_422s(
    api: TestClient, body: dict[str, Any], status: int
) -> None:
    r = ask(api, **body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/")
    assert r.json()["error"] == "invalid_request"


def test_nan_priority_huge_qty_and_no_auth(api: TestClient, db_url: str) -> None:
    seed(api, db_url)
    raw = '{"product": "P-400", "qty": 10, "priority": NaN}'
    r = api.post(
        "/api/v1/promise",
        content=raw,
        headers={**BEARER, "content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    # A billion shafts are not made within the horizon: a clean answer, not an error.
    r = ask(api, product="P-400", qty=1_000_000_000, priority=1)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["finish"] is None and got["start"] is not None
    assert "not within 60 days" in got["message"]
    assert got["within_days"] == 60
    assert (
        api.post("/api/v1/promise", json={"product": "P-400", "qty": 1, "priority": 1}).status_code
        == 401
    )
    json.dumps(got)  # plain JSON


def test_an_unclosed_work_order_ends_where_the_next_one_starts(db_url: str) -> None:
    """WO-A was never completed and its order step still ticks (last_event_ts = now); the
    machine moved on to WO-B at 12:30. WO-A's rate span is 09:30-12:30, not 09:30-now."""
    rows = [
        # work_order, good, started, completed, last event
        ("WO-A", 120, local(6, 9, 30), None, local(6, 15, 30)),
        ("WO-B", 30, local(6, 12, 30), None, local(6, 15, 30)),
    ]
    with psycopg.connect(db_url) as conn:
        for wo, good, started, completed, last in rows:
            conn.execute(
                """INSERT INTO work_order_progress (work_order, order_no, product, qty, machine,
                       good, scrap, progress, rate_per_h, eta, started_at, completed_at,
                       last_event_ts)
                   VALUES (%s, 'STOCK', 'P-400', 500, 'CNC-04', %s, 0, 0.1, 0, NULL, %s, %s, %s)""",
                (wo, good, started, completed, last),
            )
        spans = conn.execute(
            "SELECT good, start_ts, end_ts FROM v_dispatch_rate_spans WHERE machine = 'CNC-04'"
            " ORDER BY start_ts"
        ).fetchall()
    assert spans == [
        (120, local(6, 9, 30), local(6, 12, 30)),
        (30, local(6, 12, 30), local(6, 15, 30)),
    ]
