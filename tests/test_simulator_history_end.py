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


def test_every_end_closes_every_work_order(plant: PlantConfig) -> None:
    """Wherever the history ends, no work order is left running: a machine that made
    something at the end itself (a counter at its segment's end, a first article checked
    then) used to hold its stream there, and its closing events were lost (in the demo,
    IM-04 started flagged "last piece missing")."""
    start = datetime(2026, 11, 23, 13, 0, tzinfo=plant.tz)
    for minutes in range(60, 24 * 60, 97):
        end = start + timedelta(minutes=minutes)
        running: dict[str, str] = {}
        for _t, ev in generate_timed(plant, seed=7, start=start, end=end, close_at_end=True):
            assert datetime.fromisoformat(ev["ts"]) < end
            if ev.get("kind") == "wo_start":
                running[ev["machine"]] = ev["work_order"]
            elif ev.get("kind") == "wo_end" and running.get(ev["machine"]) == ev["work_order"]:
                del running[ev["machine"]]
        assert running == {}, (minutes, running)


def test_a_first_article_due_at_the_end_is_checked_before_the_close(plant: PlantConfig) -> None:
    # 87 minutes in (seed 7), CNC-02's second work order waits for its first article.
    start = datetime(2026, 11, 23, 13, 0, tzinfo=plant.tz)
    end = start + timedelta(minutes=87)
    last = (end - timedelta(milliseconds=1)).isoformat(timespec="milliseconds")
    closing = [
        (ev.get("stage") or ev["kind"], ev.get("result"))
        for _t, ev in generate_timed(plant, seed=7, start=start, end=end, close_at_end=True)
        if ev["machine"] == "CNC-02" and ev["ts"] == last and ev["type"] == "report"
    ]
    assert closing == [("first", "pass"), ("last", "pass"), ("wo_end", None)]
