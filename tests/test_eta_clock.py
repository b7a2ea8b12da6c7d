"""ETAs move with the clock (streams/dataflow.py OrderLogic, streams/order_progress.py):
an order whose machine falls silent does not keep its last ETA forever.

Hand-worked: SO-9 wants 200 × P-100, due at 12:00 (+08:00). IM-01 starts WO-9 at 09:01 and
makes a part every 30 s (120/h) until 09:31: 60 good. Then IM-01 falls silent; IM-02 keeps
talking until 14:00. At 09:31 the ETA was 09:31 + 140/120 h = 10:41 (on time).
Replayed, the flow's clock is the last event time, 14:00: nothing made on WO-9 for 30 min,
so its rate is 0 and the ETA is 14:00 + 140 × 27 s (IM-01's ideal cycle for P-100) = 15:03,
after the due date: at risk. Another replay up to 15:40 moves it to 16:43.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from mesflow.events import parse_event
from mesflow.plant import PlantConfig
from streams.dataflow import OrderLogic
from streams.hour_clock import to_us
from streams.order_progress import IdealCycles, OrderProgressRow, WorkOrderProgressRow
from streams.replay import replay_file
from streams.validate import OrderInput
from tests.helpers import write_jsonl

T0 = datetime.fromisoformat("2026-11-20T09:00:00+08:00")


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def events() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"type": "order", "ts": at(0), "order_no": "SO-9", "version": 1, "customer": "ACME",
         "priority": 1, "product": "P-100", "qty": 200, "due": at(180), "status": "open",
         "id": "o1"},
        {"type": "work_order", "ts": at(0), "work_order": "WO-9", "order_no": "SO-9",
         "product": "P-100", "qty": 200, "machine": "IM-01", "id": "w1"},
        {"type": "state", "machine": "IM-01", "ts": at(1), "state": "running", "id": "s1"},
        {"type": "report", "kind": "wo_start", "machine": "IM-01", "ts": at(1),
         "work_order": "WO-9", "id": "r1"},
        {"type": "state", "machine": "IM-02", "ts": at(0), "state": "running", "id": "s2"},
    ]  # fmt: skip
    m = 1.5
    while m < 31.5:
        out.append({"type": "count", "machine": "IM-01", "ts": at(m), "good": 1, "id": f"c{m}"})
        m += 0.5
    out.append({"type": "state", "machine": "IM-02", "ts": at(300), "state": "idle", "id": "s3"})
    return out


def order_row(url: str) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT good, eta, at_risk, last_event_ts FROM order_progress WHERE order_no = 'SO-9'"
        ).fetchone()
        assert row is not None
        return tuple(row)


def risk_callbacks(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT event_type FROM outbox WHERE aggregate = 'SO-9'"
                " AND event_type IN ('order.at_risk', 'order.back_on_track') ORDER BY id"
            )
        ]


def t(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_a_silent_machine_s_order_eta_moves_with_the_replay_clock(
    db_url: str, ref_db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    first = write_jsonl(tmp_path / "a.jsonl", events())
    replay_file(first, plant, db_url, tmp_path / "rec", progress=False)
    good, eta, at_risk, as_of = order_row(db_url)
    assert good == 60
    assert as_of == t(300)
    assert eta == t(300) + timedelta(seconds=140 * 27)  # 15:03
    assert at_risk is True
    assert risk_callbacks(db_url) == ["order.at_risk"]

    # The clock moves on (another machine talks until 15:40): so does the ETA.
    later = [{"type": "state", "machine": "IM-02", "ts": at(400), "state": "running", "id": "s4"}]
    second = write_jsonl(tmp_path / "b.jsonl", later)
    replay_file(second, plant, db_url, tmp_path / "rec", progress=False)
    assert order_row(db_url)[1:3] == (t(400) + timedelta(seconds=140 * 27), True)
    assert risk_callbacks(db_url) == ["order.at_risk"]  # told once

    # Deterministic: the same log read in one go gives the same figures.
    both = write_jsonl(tmp_path / "ab.jsonl", [*events(), *later])
    replay_file(both, plant, ref_db_url, tmp_path / "rec2", progress=False)
    assert order_row(ref_db_url) == order_row(db_url)


def test_live_the_wall_clock_ticks_open_orders() -> None:
    logic = OrderLogic(None, IdealCycles(by_pair={("IM-01", "P-100"): 27.0}), live=True)
    ev = parse_event(json.dumps(events()[0]))
    logic.on_batch([OrderInput("SO-9", ev)])  # type: ignore[arg-type]
    due = logic.notify_at()
    assert due is not None and timedelta(0) < due - datetime.now(UTC) <= OrderLogic.TICK
    assert logic.notify_at() == due  # one pending tick, not pushed on by every call
    [rows], _ = logic.on_notify()
    [row] = [r for r in rows if isinstance(r, OrderProgressRow)]
    # Now is the wall clock: ETA = now + 200 × 27 s, long past the 2026-11-20 due date.
    assert abs(to_us(row.last_event_ts) - to_us(datetime.now(UTC))) < 5_000_000
    assert row.eta == row.last_event_ts + timedelta(seconds=200 * 27)
    assert row.at_risk is True
    # Replay: no wall-clock timer.
    assert OrderLogic(None, IdealCycles(), live=False).notify_at() is None


def test_live_an_order_is_written_at_most_once_per_throttle() -> None:
    """Live, a busy order's rows (all its work orders') go out at most once per throttle
    (at 20 ms polls they were rewritten 50 times a second); what a batch changed in
    between goes out by the timer, and a resumed order writes its rows at its first timer."""
    ideal = IdealCycles(by_pair={("IM-01", "P-100"): 27.0})
    logic = OrderLogic(None, ideal, live=True, throttle=timedelta(milliseconds=300))
    evs = [parse_event(json.dumps(e)) for e in events()[:2]]  # the order, its work order
    out, _ = logic.on_batch([OrderInput("SO-9", evs[0])])  # type: ignore[arg-type]
    assert len(out) == 1 and out[0]  # the first batch: at once
    later, _ = logic.on_batch([OrderInput("SO-9", e) for e in evs[1:]])  # type: ignore[arg-type]
    assert later == []  # within the throttle: held
    due = logic.notify_at()
    assert due is not None and due - datetime.now(UTC) <= timedelta(milliseconds=300)
    time.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.01)
    [rows], _ = logic.on_notify()
    held = [r for r in rows if isinstance(r, OrderProgressRow)]
    unthrottled = OrderLogic(None, ideal, live=True)
    unthrottled.on_batch([OrderInput("SO-9", evs[0])])  # type: ignore[arg-type]
    [expected], _ = unthrottled.on_batch([OrderInput("SO-9", e) for e in evs[1:]])  # type: ignore[arg-type]
    want = [r for r in expected if isinstance(r, OrderProgressRow)]
    assert [(r.good, r.qty, r.status) for r in held] == [(r.good, r.qty, r.status) for r in want]
    assert logic.notify_at() == logic.next_tick  # only the clock's tick is left
    # Snapshotted with a change held back, then restored: the change goes out at the first
    # timer, not only at the next batch (which may not come: a quiet order).
    held_back = OrderLogic(None, ideal, live=True, throttle=timedelta(seconds=60))
    held_back.on_batch([OrderInput("SO-9", evs[0])])  # type: ignore[arg-type]
    assert held_back.on_batch([OrderInput("SO-9", evs[1])])[0] == []  # type: ignore[arg-type]
    resumed = OrderLogic(held_back.snapshot(), ideal, live=True, throttle=timedelta(seconds=60))
    first = resumed.notify_at()
    assert first is not None and first <= datetime.now(UTC)
    [again], _ = resumed.on_notify()
    assert [r.work_order for r in again if isinstance(r, WorkOrderProgressRow)] == ["WO-9"]
    # Replay: every batch writes, no timer.
    replay = OrderLogic(None, ideal, live=False)
    assert replay.on_batch([OrderInput("SO-9", evs[0])])[0]  # type: ignore[arg-type]
    assert replay.on_batch([OrderInput("SO-9", evs[1])])[0]  # type: ignore[arg-type]
    assert replay.notify_at() is None
