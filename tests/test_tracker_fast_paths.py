"""The machine tracker's cheaper hot path changes no figure.

- `hour_clock.to_us` computes fixed-offset times from their wall-clock fields: it must
  equal the aware subtraction to the microsecond, for any offset, zone and instant.
- In-order counts keep only sums, added to their buckets at once (`_drain_counts`): a
  snapshot taken between flushes must still carry every part counted so far, and a stream
  snapshotted and restored at any point must end with the rows of one never snapshotted.
"""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow.events import parse_event
from streams.hour_clock import EPOCH, to_us
from streams.machine_tracker import MachineSpec, MachineTracker
from tests.test_machine_tracker import PLANT, _json, ev, streams

_US = timedelta(microseconds=1)

offsets = st.timedeltas(
    min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
)
zones = st.one_of(
    offsets.map(timezone),
    st.just(UTC),
    st.sampled_from(["Asia/Shanghai", "Europe/Berlin", "America/New_York"]).map(ZoneInfo),
)


@settings(max_examples=50, deadline=None)
@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)), zones)
def test_to_us_equals_the_aware_subtraction(naive: datetime, tz: Any) -> None:
    ts = naive.replace(tzinfo=tz)
    want = (ts - EPOCH) // _US
    assert to_us(ts) == want
    assert to_us(ts) == want  # the second time from the offset remembered


def test_to_us_refuses_a_naive_time() -> None:
    with pytest.raises(TypeError):
        to_us(datetime(2026, 11, 20, 10, 50))


def _tracker() -> MachineTracker:
    return MachineTracker(MachineSpec.from_plant(PLANT, "IM-01"))


def test_a_snapshot_between_flushes_carries_every_count() -> None:
    events = [
        ev("state", 0, state="running"),
        ev("wo_start", 1, work_order="WO-1"),
        *(ev("count", 2 + k, good=1) for k in range(5)),
        ev("count", 8, good=1, scrap=1),
    ]
    tracker = _tracker()
    for i, e in enumerate(events):
        assert tracker.apply(i, parse_event(_json(e))) is None  # type: ignore[arg-type]
    restored = pickle.loads(pickle.dumps(tracker))
    assert restored.flush() == tracker.flush()
    assert (tracker.good_total, tracker.scrap_total) == (6, 1)


@settings(max_examples=30, deadline=None)
@given(streams(), st.integers(min_value=1, max_value=40))
def test_a_restored_snapshot_ends_with_the_same_rows(
    events: list[dict[str, Any]], cut: int
) -> None:
    def rows(snapshot_at: int | None) -> list[Any]:
        tracker, out = _tracker(), []
        for i, e in enumerate(events):
            if i == snapshot_at:
                tracker = pickle.loads(pickle.dumps(tracker))
            r = tracker.apply(i, parse_event(_json(e)))  # type: ignore[arg-type]
            if r is not None:
                out.append(r)
        return out + tracker.flush()

    assert rows(cut % max(len(events), 1)) == rows(None)
