"""The live simulator runs the CRM's work orders: a simulated work order at a machine takes
over an unstarted CRM work order planned there for the same product (real PostgreSQL, real
broker), so the demo's machines produce for the CRM's orders while the simulator's own work
orders keep ids the CRM stand-in never uses."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from collectors.simulator import run_simulator
from collectors.simulator.crm import crm_machines
from collectors.simulator.publisher import WorkOrderSink, write_state
from collectors.topics import parse_topic
from mesflow.events import parse_event
from mesflow.plant import PlantConfig
from mesflow.services import Broker
from tests.helpers import listening

MONDAY_9 = datetime.fromisoformat("2026-11-16T09:00:00+08:00")


def _crm(
    conn: psycopg.Connection[Any], order_no: str, status: str, *wos: tuple[str, str, str]
) -> None:
    conn.execute(
        "INSERT INTO crm_order (order_no, version, customer, priority, product, qty, due, "
        "status, event_ts, changed_by) VALUES (%s, 1, 'ACME', 1, %s, 10, now(), %s, now(), 'crm')",
        (order_no, wos[0][1], status),
    )
    for wo, product, machine in wos:
        conn.execute(
            "INSERT INTO work_order (work_order, order_no, product, qty, machine, event_ts, "
            "changed_by) VALUES (%s, %s, %s, 10, %s, now(), 'crm')",
            (wo, order_no, product, machine),
        )


def _sim(wo: str, product: str, machine: str = "IM-01") -> dict[str, Any]:
    return {"type": "work_order", "machine": machine, "ts": "2026-11-17T08:00:00+08:00",
            "work_order": wo, "order_no": f"STOCK-{product}", "product": product, "qty": 100,
            "id": f"sim42-x-{wo}"}  # fmt: skip


def test_a_simulated_work_order_takes_over_an_unstarted_crm_one(db_url: str) -> None:
    sink = WorkOrderSink(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        _crm(
            conn,
            "SO-1",
            "open",
            ("WO-IM-01-0001", "P-100", "IM-01"),
            ("WO-IM-01-0002", "P-100", "IM-01"),
        )
        _crm(conn, "SO-2", "on_hold", ("WO-IM-01-0003", "P-100", "IM-01"))
        _crm(conn, "SO-3", "open", ("WO-IM-03-0001", "P-200", "IM-03"))
        # Already started (the dataflow saw its wo_start): not taken over again.
        conn.execute(
            "INSERT INTO work_order_progress (work_order, order_no, good, scrap, rate_per_h, "
            "started_at, last_event_ts) VALUES ('WO-IM-01-0001', 'SO-1', 5, 0, 0, now(), now())"
        )
        sink.send(_sim("WO-IM-01-S1-0001", "P-100"))
        sink.send(_sim("WO-IM-01-S1-0002", "P-100"))  # the only free one is taken: its own
        sink.send(_sim("WO-IM-03-S1-0001", "P-100", "IM-03"))  # other product planned there
        # Later routing steps dispatch the work order to their machine: the CRM's stays
        # untouched, the simulator's own is dispatched (never taking over a CRM one there).
        _crm(conn, "SO-4", "open", ("WO-CNC-03-0001", "P-100", "CNC-03"))
        sink.send(_sim("WO-IM-01-S1-0001", "P-100", "CNC-03"))
        sink.send(_sim("WO-IM-01-S1-0002", "P-100", "CNC-03"))
        sink.close()
        rows = conn.execute("SELECT source, payload FROM ingest_log ORDER BY seq").fetchall()
    assert sink.taken == {"WO-IM-01-S1-0001": "WO-IM-01-0002"}
    assert sink.rename("WO-IM-01-S1-0001") == "WO-IM-01-0002"
    assert sink.rename("WO-IM-01-S1-0002") == "WO-IM-01-S1-0002"
    sent = [json.loads(bytes(p))["work_order"] for _, p in rows]
    assert sent == ["WO-IM-01-S1-0002", "WO-IM-03-S1-0001", "WO-IM-01-S1-0002"]
    assert sink.sent == 3 and json.loads(bytes(rows[-1][1]))["machine"] == "CNC-03"


def test_the_crm_stand_in_plans_routed_products_at_their_first_step(plant: PlantConfig) -> None:
    assert crm_machines(plant, "P-300") == ["CNC-01", "CNC-02"]  # not the EDM nor the Haas
    assert crm_machines(plant, "P-100") == ["IM-01", "IM-02", "IM-03"]
    assert crm_machines(plant, "P-400") == ["CNC-04", "CNC-05"]  # no routing


def test_live_events_carry_the_crm_work_order(
    broker: Broker, plant: PlantConfig, db_url: str
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _crm(conn, "SO-9", "open", ("WO-IM-01-0001", "P-100", "IM-01"))
    with listening(broker, "test-sim-claim") as got:
        run_simulator(
            plant, broker.url, seed=3, speed=3600, start=MONDAY_9, duration_s=600,
            database_url=db_url,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while (
            not [b for t, b in got if b.get("kind") == "wo_start"] and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        time.sleep(0.3)
    starts = {
        parse_topic(t).machine: b["work_order"] for t, b in got if b.get("kind") == "wo_start"
    }
    assert starts["IM-01"] == "WO-IM-01-0001"  # the CRM's, planned on IM-01 for P-100
    assert starts["IM-02"].startswith("WO-IM-02-S")  # nothing planned there: its own
    with psycopg.connect(db_url) as conn:
        logged = [json.loads(bytes(p)) for (p,) in conn.execute("SELECT payload FROM ingest_log")]
    wos = {e["work_order"] for e in logged}
    assert "WO-IM-01-0001" not in wos  # the CRM's stays the CRM's: no stock order for it
    assert any(w.startswith("WO-IM-02-S") for w in wos)


def _open_run(
    conn: psycopg.Connection[Any], machine: str, wo: str, op: str, product: str, start: str,
    end: str | None = None,
) -> None:  # fmt: skip
    conn.execute(
        "INSERT INTO inspection_run (work_order, machine, operation, start_ts, end_ts, product,"
        " first_article, blocked, parts_made, patrol_every_min, last_piece)"
        " VALUES (%s, %s, %s, %s, %s, %s, 'passed', false, 7, 0, %s)",
        (wo, machine, op, start, end, product, "pending" if end is None else "done"),
    )


def test_a_resumed_run_ends_the_work_orders_the_previous_run_left_running(
    broker: Broker, plant: PlantConfig, db_url: str, tmp_path: Path
) -> None:
    """A restart of the demo: the previous run's work orders, still running in the results,
    end where the new run starts (a passed last piece, then wo_end), before its own events;
    without that each was displaced unended and flagged "last piece missing"."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        _open_run(conn, "IM-01", "WO-IM-01-0001", "", "P-100", "2026-11-16T07:00+08:00")
        _open_run(conn, "CNC-01", "WO-CNC-01-0001", "10", "P-300", "2026-11-16T07:00+08:00")
        # Ended already: nothing to end.
        _open_run(conn, "IM-02", "WO-IM-02-0001", "", "P-100", "2026-11-16T06:00+08:00",
                  "2026-11-16T08:00+08:00")  # fmt: skip
        # Two open runs on one machine: only the newest is running there.
        _open_run(conn, "IM-03", "WO-OLD", "", "P-200", "2026-11-15T07:00+08:00")
        _open_run(conn, "IM-03", "WO-IM-03-0007", "", "P-200", "2026-11-16T08:00+08:00")
        # A machine the plant no longer has: skipped, not an error.
        _open_run(conn, "GONE-1", "WO-GONE", "", "P-100", "2026-11-16T07:00+08:00")
    state = tmp_path / "sim.json"
    write_state(state, MONDAY_9 - timedelta(hours=1))
    with listening(broker, "test-sim-resume") as got:
        run_simulator(
            plant, broker.url, seed=3, speed=3600, start=MONDAY_9, duration_s=60,
            state_file=state, database_url=db_url,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while sum(b.get("kind") == "wo_end" for _, b in got) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    at = MONDAY_9.isoformat(timespec="milliseconds")
    closing = [
        (parse_topic(t).machine, b["kind"], b["work_order"], b.get("operation"), b.get("stage"))
        for t, b in got
        if b.get("ts") == at and (b.get("kind") == "wo_end" or b.get("stage") == "last")
    ]
    assert sorted(closing) == [
        ("CNC-01", "inspection", "WO-CNC-01-0001", "10", "last"),
        ("CNC-01", "wo_end", "WO-CNC-01-0001", "10", None),
        ("IM-01", "inspection", "WO-IM-01-0001", None, "last"),
        ("IM-01", "wo_end", "WO-IM-01-0001", None, None),
        ("IM-03", "inspection", "WO-IM-03-0007", None, "last"),
        ("IM-03", "wo_end", "WO-IM-03-0007", None, None),
    ]
    # They come first, each last piece before its wo_end, and the collector takes them.
    assert [b.get("kind") for _, b in got[:6]] == ["inspection", "wo_end"] * 3
    for t, b in got[:6]:
        topic = parse_topic(t)
        parse_event(json.dumps({**b, "type": topic.type, "machine": topic.machine}))
    assert all(b["result"] == "pass" and b["characteristics"] for _, b in got[:6:2])


def test_a_first_run_ends_nothing(broker: Broker, plant: PlantConfig, db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _open_run(conn, "IM-01", "WO-IM-01-0001", "", "P-100", "2026-11-16T07:00+08:00")
    with listening(broker, "test-sim-first") as got:
        run_simulator(
            plant, broker.url, seed=3, speed=3600, start=MONDAY_9, duration_s=60,
            database_url=db_url,
        )  # fmt: skip
        time.sleep(0.5)
    assert got and not [b for _, b in got if b.get("work_order") == "WO-IM-01-0001"]
