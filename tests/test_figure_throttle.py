"""Live figures (streams/dataflow.py MachineLogic): a busy machine's hour, shift and
work-order figures are written once per throttle, by the timer, not by the timer and again
at the next batch; and the plant's machines are due at different phases of the throttle,
so that their figure flushes do not all land in one activation."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from mesflow.events import parse_event
from mesflow.plant import PlantConfig, load_plant_config
from mesflow.settings import REPO_ROOT
from streams.dataflow import MachineLogic, _phase
from streams.records import KpiRow, StatusRow

PLANT: PlantConfig = load_plant_config(REPO_ROOT / "config" / "plant.example.yaml")
THROTTLE = timedelta(milliseconds=300)


class _Feed:
    def __init__(self, machine: str) -> None:
        self.machine = machine
        self.seq = 0
        self.t = datetime.now(UTC) - timedelta(minutes=10)

    def __call__(self, *events: dict[str, Any]) -> list[list[Any]]:
        group = []
        for fields in events:
            self.seq += 1
            self.t += timedelta(seconds=1)
            body = {"machine": self.machine, "ts": self.t.isoformat(), **fields}
            group.append((self.seq, parse_event(json.dumps(body))))
        return [group]


RUNNING = {"type": "state", "state": "running"}
PART = {"type": "count", "good": 1}


def _kinds(out: tuple[list[list[Any]], bool]) -> set[type]:
    return {type(r) for rows in out[0] for r in rows}


def test_a_busy_machine_writes_its_figures_once_per_throttle() -> None:
    logic = MachineLogic(None, PLANT, THROTTLE, None)
    feed = _Feed("IM-01")
    before = datetime.now(UTC)
    assert KpiRow in _kinds(logic.on_batch(feed(RUNNING, PART)))  # first: full
    assert logic.next_full is not None
    wait = logic.next_full - before
    assert THROTTLE <= wait <= THROTTLE * 1.5 + timedelta(milliseconds=50)  # its phase
    assert KpiRow not in _kinds(logic.on_batch(feed(PART)))  # within: held back
    due = logic.notify_at()
    assert due == logic.next_full  # the timer takes what was held back
    time.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.01)
    assert {KpiRow, StatusRow} <= _kinds(logic.on_notify())
    # The batch right after the timer's flush: figures not written again at once.
    assert KpiRow not in _kinds(logic.on_batch(feed(PART)))
    assert logic.notify_at() is not None  # but due at the next throttle
    assert logic.next_full is not None
    assert logic.next_full - datetime.now(UTC) > THROTTLE / 2


def test_machines_are_due_at_different_phases() -> None:
    machines = sorted(PLANT.machines)
    phases = [_phase(m) for m in machines]
    assert all(0 <= p < 0.5 for p in phases)
    assert len(set(phases)) >= len(machines) * 3 // 4  # spread, not one value


def test_a_batch_after_the_due_time_writes_the_figures() -> None:
    """The due time is compared as a POSIX time (no datetime.now() per batch): a batch
    after it writes the figures and moves it a throttle ahead; one before it does not."""
    logic = MachineLogic(None, PLANT, THROTTLE, None)
    feed = _Feed("IM-01")
    logic.on_batch(feed(RUNNING, PART))
    assert KpiRow not in _kinds(logic.on_batch(feed(PART)))
    logic.next_full = datetime.now(UTC) - timedelta(milliseconds=1)  # due, timer not run
    before = datetime.now(UTC)
    assert KpiRow in _kinds(logic.on_batch(feed(PART)))
    assert logic.next_full is not None and logic.next_full >= before + THROTTLE
    assert KpiRow not in _kinds(logic.on_batch(feed(PART)))
