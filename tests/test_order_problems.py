"""Production problems go back to the CRM (streams/order_problems.py) through the real
dataflow: a machine running an order's work order down beyond 30 minutes, or stopped for a
reason in category `material`, puts one `order.production_problem` callback in the outbox,
with the reason, since, and the ETA before and after; a short stop none; replays no more."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from mesflow.plant import PlantConfig
from notify.dispatcher import Dispatcher
from streams.order_problems import OrderProblems
from streams.records import IntervalRow
from streams.replay import replay_file
from tests.helpers import write_jsonl
from tests.test_outbox import FAST, Receiver, _drain, _endpoints, receiver

__all__ = ["receiver"]  # fixture

T0 = datetime.fromisoformat("2026-11-20T09:00:00+08:00")


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def setup_events() -> list[dict[str, Any]]:
    return [
        {"type": "order", "ts": at(0), "order_no": "SO-1", "version": 1, "customer": "ACME",
         "priority": 1, "product": "P-100", "qty": 1000, "due": at(24 * 60), "status": "open",
         "id": "o1"},
        {"type": "work_order", "ts": at(0), "work_order": "WO-1", "order_no": "SO-1",
         "product": "P-100", "qty": 1000, "machine": "IM-01", "id": "w1"},
        {"type": "state", "machine": "IM-01", "ts": at(1), "state": "running", "id": "s1"},
        {"type": "report", "kind": "wo_start", "machine": "IM-01", "ts": at(1),
         "work_order": "WO-1", "id": "r1"},
        *production(1.5, 20),
    ]  # fmt: skip


def production(minutes_from: float, minutes_to: float) -> list[dict[str, Any]]:
    out = []
    m = minutes_from
    while m < minutes_to:
        out.append({"type": "count", "machine": "IM-01", "ts": at(m), "good": 1, "id": f"c{m:.3f}"})
        m += 0.5
    return out


def stop(start: float, minutes: float, state: str = "down", reason: str | None = None,
         tag: str = "x") -> list[dict[str, Any]]:  # fmt: skip
    ev: dict[str, Any] = {"type": "state", "machine": "IM-01", "ts": at(start), "state": state,
                          "id": f"{tag}-stop"}  # fmt: skip
    if reason:
        ev["reason"] = reason
    return [
        ev,
        {
            "type": "state",
            "machine": "IM-01",
            "ts": at(start + minutes),
            "state": "running",
            "id": f"{tag}-run",
        },
        *production(start + minutes + 0.5, start + minutes + 5),
    ]


def problems(url: str) -> list[tuple[str, dict[str, Any]]]:
    with psycopg.connect(url) as conn:
        return [
            (r[0], r[1])
            for r in conn.execute(
                "SELECT dedupe, payload FROM outbox"
                " WHERE event_type = 'order.production_problem' ORDER BY id"
            )
        ]


def replay(events: list[dict[str, Any]], name: str, plant: PlantConfig, url: str,
           tmp_path: Path) -> Path:  # fmt: skip
    path = write_jsonl(tmp_path / name, events)
    replay_file(path, plant, url, tmp_path / "rec", progress=False)
    return path


def test_long_stop_sends_one_callback_and_replays_send_no_more(
    db_url: str, plant: PlantConfig, tmp_path: Path, receiver: Receiver
) -> None:
    path = replay(
        [*setup_events(), *stop(20, 35, reason="hydraulic_fault")], "a.jsonl", plant, db_url,
        tmp_path,
    )  # fmt: skip
    sent = problems(db_url)
    assert len(sent) == 1
    dedupe, data = sent[0]
    assert dedupe == "problem:SO-1:IM-01:2026-11-20T01:20:00+00:00"  # the stop's start, UTC
    assert data["kind"] == "machine_down" and data["machine"] == "IM-01"
    assert data["reason"] == "hydraulic_fault" and data["order_no"] == "SO-1"
    assert datetime.fromisoformat(data["since"]) == datetime.fromisoformat(at(20))
    before, after = (datetime.fromisoformat(data[k]) for k in ("eta_before", "eta_after"))
    # The ETA moves by at least the 35 minutes the machine made nothing.
    assert after - before >= timedelta(minutes=35)
    # Replaying the same log twice sends nothing more.
    replay_file(path, plant, db_url, tmp_path / "rec", progress=False)
    replay_file(path, plant, db_url, tmp_path / "rec2", progress=False)
    assert len(problems(db_url)) == 1
    # The CRM (a local HTTP server, signatures verified) gets it once.
    _drain([Dispatcher(db_url, _endpoints(receiver.url), FAST)], db_url)
    got = [m for m in receiver.processed if m["type"] == "order.production_problem"]
    assert len(got) == 1 and receiver.repeats == 0
    assert got[0]["data"]["reason"] == "hydraulic_fault"
    assert got[0]["data"]["eta_before"] and got[0]["data"]["eta_after"]


def test_short_stop_sends_nothing(db_url: str, plant: PlantConfig, tmp_path: Path) -> None:
    replay([*setup_events(), *stop(20, 10)], "b.jsonl", plant, db_url, tmp_path)
    assert problems(db_url) == []


def test_threshold_is_the_plant_files(db_url: str, plant: PlantConfig, tmp_path: Path) -> None:
    five = plant.model_copy(
        update={"plant": plant.plant.model_copy(update={"order_problem_after_seconds": 300})}
    )
    replay([*setup_events(), *stop(20, 10)], "t.jsonl", five, db_url, tmp_path)
    assert [d["kind"] for _, d in problems(db_url)] == ["machine_down"]


def test_material_shortage_sends_one(db_url: str, plant: PlantConfig, tmp_path: Path) -> None:
    # A 10-minute idle stop, short of any threshold, but for want of material.
    replay(
        [*setup_events(), *stop(20, 10, state="idle", reason="material_shortage")],
        "c.jsonl", plant, db_url, tmp_path,
    )  # fmt: skip
    sent = problems(db_url)
    assert len(sent) == 1
    assert sent[0][1]["kind"] == "material_shortage"
    assert sent[0][1]["reason"] == "material_shortage"
    assert sent[0][1]["eta_before"] is not None


def test_material_reason_reported_after_the_stop(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    late_reason = {"type": "report", "kind": "downtime_reason", "machine": "IM-01",
                   "ts": at(40), "at": at(25), "reason": "material_shortage", "id": "dr1"}  # fmt: skip
    replay([*setup_events(), *stop(20, 10), late_reason], "d.jsonl", plant, db_url, tmp_path)
    assert [d["kind"] for _, d in problems(db_url)] == ["material_shortage"]


def test_live_guard_skips_old_stops() -> None:
    # Live, history catching up (a stop two hours of wall time ago) sends nothing.
    p = OrderProblems(["material_shortage"])
    start = T0
    row = IntervalRow("IM-01", start, start + timedelta(minutes=40), "down", None, "WO-1",
                      2400.0, False)  # fmt: skip
    from streams.order_progress import WorkOrderProgressRow

    wo = WorkOrderProgressRow("WO-1", "SO-1", "P", 10, "IM-01", 0, 0, 0.0, 0.0, None, None,
                              None, start)  # fmt: skip
    wall = int((start + timedelta(hours=2)).timestamp() * 1_000_000)
    assert p.feed([wo, row], wall_us=wall) == []
    fresh = OrderProblems(["material_shortage"])
    near = int((start + timedelta(minutes=50)).timestamp() * 1_000_000)
    assert len(fresh.feed([wo, row], wall_us=near)) == 1


def test_live_long_threshold_and_silent_machine() -> None:
    from streams.order_progress import WorkOrderProgressRow

    start = T0
    wo = WorkOrderProgressRow("WO-1", "SO-1", "P", 10, "IM-01", 0, 0, 0.0, 0.0, None, None,
                              None, start)  # fmt: skip

    def us(minutes: float) -> int:
        return int((start + timedelta(minutes=minutes)).timestamp() * 1_000_000)

    # A 2-hour threshold: the problem arises at 2 h, not too old to send at 2 h 10.
    p = OrderProblems([], threshold_s=7200)
    long = IntervalRow("IM-01", start, start + timedelta(hours=3), "down", None, "WO-1",
                       10800.0, False)  # fmt: skip
    assert len(p.feed([wo, long], wall_us=us(130))) == 1
    # Down and silent: an open stop row, then only the clock moves.
    q = OrderProblems([])
    still = IntervalRow("IM-01", start, None, "down", "hydraulic_fault", "WO-1", 0.0, False)
    assert q.feed([wo, still], wall_us=us(1)) == []
    assert q.tick(us(29), us(29)) == []
    sent = q.tick(us(31), us(31))
    assert [c.payload["kind"] for c in sent] == ["machine_down"]
    assert q.tick(us(60), us(60)) == []  # once


def test_status_rows_move_event_time_for_an_open_stop() -> None:
    from streams.order_progress import WorkOrderProgressRow
    from streams.records import StatusRow

    start = T0
    wo = WorkOrderProgressRow("WO-1", "SO-1", "P", 10, "IM-01", 0, 0, 0.0, 0.0, None, None,
                              None, start)  # fmt: skip
    p = OrderProblems([])
    still = IntervalRow("IM-01", start, None, "down", None, "WO-1", 0.0, False)
    assert p.feed([wo, still]) == []

    def status(minutes: float) -> StatusRow:
        return StatusRow("IM-01", "down", start, None, "WO-1", start + timedelta(minutes=minutes),
                         0, 0)  # fmt: skip

    assert p.feed([status(20)]) == []
    assert len(p.feed([status(30)])) == 1
