"""The inspection step's snapshots (streams/inspection_snapshot.py): the state back whole,
whatever order its parts totals came in, at a cost that follows what changed. Pure; the
restart through the real dataflow is in tests/test_inspections_flow.py."""

from __future__ import annotations

import dataclasses
import json
import pickle
import random
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow.events import parse_event
from mesflow.plant import PlantConfig
from streams.hour_clock import to_us
from streams.inspection_snapshot import PIECE_US, InspectionSnapshots, decode
from streams.inspections import MAX_POINTS, Inspections, InspectionState
from streams.records import FloorInput, WorkOrderParts

T0 = datetime.fromisoformat("2026-11-30T06:00:00+08:00")
MACHINES = ("IM-01", "IM-02", "CNC-01")


def started(plant: PlantConfig) -> Inspections:
    steps = Inspections(plant, None, lag_s=10.0)
    for i, m in enumerate(MACHINES):
        body = {"type": "report", "kind": "wo_start", "machine": m, "work_order": f"WO-{m}",
                "operation": "OP10", "ts": T0.isoformat()}  # fmt: skip
        steps.feed([FloorInput(i + 1, parse_event(json.dumps(body)))])
    return steps


def parts(m: str, second: float, total: int) -> WorkOrderParts:
    t = to_us(T0 + timedelta(seconds=second))
    return WorkOrderParts("SO-1", f"WO-{m}", m, t, total, 0, (("OP10", total, 0),))


def same(a: InspectionState, b: InspectionState) -> bool:
    return pickle.dumps(dataclasses.astuple(a)) == pickle.dumps(dataclasses.astuple(b))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    points=st.integers(1, MAX_POINTS + 200),
    late_share=st.sampled_from([0.0, 0.05, 0.3]),
    every=st.integers(1, 120),
)
def test_every_snapshot_decodes_to_the_state_it_was_taken_of(
    plant: PlantConfig, seed: int, points: int, late_share: float, every: int
) -> None:
    """Totals a second apart, some arriving out of order (inserted inside a piece already
    encoded), past MAX_POINTS (the oldest dropped): each snapshot is the state then."""
    rnd = random.Random(seed)
    steps = started(plant)
    snaps = InspectionSnapshots()
    for k in range(points):
        m = rnd.choice(MACHINES)
        second = k - (rnd.uniform(1, 200) if rnd.random() < late_share else 0)
        steps.feed([parts(m, second, k)])
        if k % every == 0 or k == points - 1:
            assert same(decode(snaps.encode(steps.state)), steps.state)


def test_a_snapshot_encodes_the_newest_and_oldest_minute_of_each_list_not_all(
    plant: PlantConfig,
) -> None:
    steps = started(plant)
    snaps = InspectionSnapshots()
    second = 0
    for second in range(MAX_POINTS + 100):  # full lists: each new point drops the oldest
        steps.feed([parts(m, second, second) for m in MACHINES])
    snaps.encode(steps.state)
    lists = len(steps.state.parts)
    assert lists == 2 * len(MACHINES)  # all ("*") and OP10
    assert snaps.encoded == lists * MAX_POINTS
    for k in range(1, 11):  # 10 s, as between two snapshots
        steps.feed([parts(m, second + k, second + k) for m in MACHINES])
    before = snaps.encoded
    assert same(decode(snaps.encode(steps.state)), steps.state)
    per_minute = PIECE_US // 1_000_000
    # Each list: its first minute (points dropped) and its last (points added), at most.
    assert snaps.encoded - before <= lists * 2 * per_minute
    # Nothing new: nothing pickled.
    before = snaps.encoded
    snaps.encode(steps.state)
    assert snaps.encoded == before
    # A total arriving late, inside an inner minute of IM-01's two lists: that minute is
    # pickled again, and the first (the list is full: its oldest point is dropped).
    steps.feed([parts("IM-01", second - 200.5, second - 200)])
    late_minute = to_us(T0 + timedelta(seconds=second - 200.5)) // PIECE_US
    again = 0
    for key, points in steps.state.parts.items():
        if key[1] == "IM-01":
            minutes = [t // PIECE_US for t, _ in points]
            again += minutes.count(late_minute) + minutes.count(minutes[0])
    before = snaps.encoded
    assert same(decode(snaps.encode(steps.state)), steps.state)
    assert snaps.encoded - before == again > 2 * 60


def test_a_snapshot_of_an_earlier_mesflow_a_plain_pickle_still_resumes(
    plant: PlantConfig,
) -> None:
    steps = started(plant)
    for second in range(100):
        steps.feed([parts(m, second, second) for m in MACHINES])
    plain = pickle.dumps(steps.state, protocol=pickle.HIGHEST_PROTOCOL)
    assert same(decode(plain), steps.state)


def test_a_snapshot_of_a_newer_format_is_refused_by_name() -> None:
    data = pickle.dumps(("inspections/9", InspectionState(), {}))
    with pytest.raises(ValueError, match=r"unknown inspection snapshot format 'inspections/9'"):
        decode(data)
