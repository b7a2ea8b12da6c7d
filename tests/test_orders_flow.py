"""CRM orders joined with the work the machines did, through the real dataflow."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from mesflow.plant import PlantConfig
from streams.replay import replay_file
from tests.helpers import write_jsonl

T0 = datetime.fromisoformat("2026-11-20T09:00:00+08:00")


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def order(version: int, qty: int, due_h: float, minutes: float, **kw: Any) -> dict[str, Any]:
    return {
        "type": "order",
        "ts": at(minutes),
        "order_no": "SO-1",
        "version": version,
        "customer": "ACME",
        "priority": 1,
        "product": "P-100",
        "qty": qty,
        "due": at(due_h * 60),
        "status": kw.get("status", "open"),
        "id": f"o{version}",
    }


def production(minutes_from: float, minutes_to: float) -> list[dict[str, Any]]:
    out = []
    m = minutes_from
    while m < minutes_to:
        out.append({"type": "count", "machine": "IM-01", "ts": at(m), "good": 1, "id": f"c{m:.3f}"})
        m += 0.5  # 120 parts an hour
    return out


def callbacks(url: str) -> list[tuple[str, dict[str, Any]]]:
    with psycopg.connect(url) as conn:
        return [
            (r[0], r[1])
            for r in conn.execute(
                "SELECT replace(event_type, 'order.', ''), payload FROM outbox "
                "WHERE aggregate = 'SO-1' ORDER BY id"
            )
        ]


def board(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        cur = conn.execute("SELECT * FROM v_order_board WHERE order_no = 'SO-1'")
        row = cur.fetchone()
        assert row is not None and cur.description is not None
        return dict(zip([d.name for d in cur.description], row, strict=True))


def test_order_change_mid_production_moves_eta_and_risk(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    events = [
        order(1, 100, due_h=8, minutes=0),
        {
            "type": "work_order",
            "ts": at(0),
            "work_order": "WO-1",
            "order_no": "SO-1",
            "product": "P-100",
            "qty": 100,
            "machine": "IM-01",
            "id": "w1",
        },
        {"type": "state", "machine": "IM-01", "ts": at(1), "state": "running", "id": "s1"},
        {
            "type": "report",
            "kind": "wo_start",
            "machine": "IM-01",
            "ts": at(1),
            "work_order": "WO-1",
            "id": "r1",
        },
        *production(1.5, 31.5),  # 60 parts
    ]
    replay_file(
        write_jsonl(tmp_path / "a.jsonl", events), plant, db_url, tmp_path / "rec", progress=False
    )
    first = board(db_url)
    assert first["good"] == 60 and first["at_risk"] is False
    assert [t for t, _ in callbacks(db_url)] == ["work_started", "milestone", "milestone"]
    assert [p["percent"] for t, p in callbacks(db_url) if t == "milestone"] == [25, 50]

    # Sales raises the quantity tenfold, due in two hours: at 120 parts/h that is late.
    more = [order(2, 1000, due_h=2.5, minutes=32), *production(32, 40)]
    replay_file(
        write_jsonl(tmp_path / "b.jsonl", more), plant, db_url, tmp_path / "rec", progress=False
    )
    risky = board(db_url)
    assert risky["at_risk"] is True and risky["rank"] == 1
    assert risky["eta"] > risky["due"]
    kinds = [t for t, _ in callbacks(db_url)]
    assert kinds[-1] == "at_risk"
    assert callbacks(db_url)[-1][1]["eta"]  # the new ETA travels with the callback

    # The due date moves out: back on track, with a callback.
    later = [order(3, 1000, due_h=24, minutes=41), *production(41, 45)]
    replay_file(
        write_jsonl(tmp_path / "c.jsonl", later), plant, db_url, tmp_path / "rec", progress=False
    )
    assert board(db_url)["at_risk"] is False
    assert [t for t, _ in callbacks(db_url)][-1] == "back_on_track"

    # Replaying a file again changes nothing and sends nothing twice.
    n = len(callbacks(db_url))
    replay_file(tmp_path / "b.jsonl", plant, db_url, tmp_path / "rec", progress=False)
    assert len(callbacks(db_url)) == n


def test_cancellation_is_acknowledged_once(db_url: str, plant: PlantConfig, tmp_path: Path) -> None:
    events = [
        order(1, 50, due_h=8, minutes=0),
        order(2, 50, due_h=8, minutes=5, status="cancelled"),
        order(2, 50, due_h=8, minutes=6, status="cancelled"),
    ]
    events[-1]["id"] = "o2-again"
    replay_file(
        write_jsonl(tmp_path / "x.jsonl", events), plant, db_url, tmp_path / "rec", progress=False
    )
    assert [t for t, _ in callbacks(db_url)] == ["cancellation_acknowledged"]
    assert board(db_url)["status"] == "cancelled"
