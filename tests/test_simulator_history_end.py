"""The demo's history ends its running work orders (last piece and wo_end) so that the live
simulator, which starts work orders of its own, does not leave every machine flagged with a
missing last piece at the demo's start."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from collectors.simulator.model import generate_timed
from mesflow.plant import PlantConfig


def _open_runs(plant: PlantConfig, close: bool) -> tuple[dict[str, str], list[dict[str, Any]]]:
    start = datetime(2026, 11, 23, 13, 0, tzinfo=plant.tz)
    end = start + timedelta(days=1)
    events = [
        ev
        for t, ev in generate_timed(plant, seed=7, start=start, end=end, close_at_end=close)
        if ev is not None and datetime.fromisoformat(ev["ts"]) < end
    ]
    running: dict[str, str] = {}
    for ev in events:
        if ev.get("kind") == "wo_start":
            running[ev["machine"]] = ev["work_order"]
        elif ev.get("kind") == "wo_end" and running.get(ev["machine"]) == ev["work_order"]:
            del running[ev["machine"]]
    return running, events


def test_history_ends_its_running_work_orders(plant: PlantConfig) -> None:
    still_open, _ = _open_runs(plant, close=False)
    assert still_open, "without close_at_end some work order runs past the end (test is moot)"
    running, events = _open_runs(plant, close=True)
    assert running == {}
    # Each work order that was still open gets its last piece before its end.
    for machine, wo in still_open.items():
        kinds = [
            e.get("stage") or e["kind"]
            for e in events
            if e.get("machine") == machine and e.get("work_order") == wo
            and e.get("kind") in ("inspection", "wo_end")
        ]  # fmt: skip
        assert kinds[-1] == "wo_end"
        product = next(
            (e["product"] for e in events if e["type"] == "work_order" and e["work_order"] == wo),
            None,
        )
        if plant.inspection_policy(product).last_piece_required:
            assert "last" in kinds
