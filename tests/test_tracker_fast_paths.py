"""The machine tracker's cheaper hot path changes no figure.

- `hour_clock.to_us` computes fixed-offset times from their wall-clock fields: it must
  equal the aware subtraction to the microsecond, for any offset, zone and instant.
- In-order counts keep only sums, added to their buckets at once (`_drain_counts`): a
  snapshot taken between flushes must still carry every part counted so far, and a stream
  snapshotted and restored at any point must end with the rows of one never snapshotted.
- Live, the board flush after each batch (`flush_board`) leaves those sums undrained until
  the next full flush: live batches, full flushes and snapshots in any mix end with the
  rows of a full flush after every event.
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
from streams.records import IntervalDelete, ScrapSetRow, WorkOrderParts
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


@settings(max_examples=40, deadline=None)
@given(
    streams(),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=0, max_value=60),
)
def test_live_board_flushes_and_snapshots_end_as_full_flushes(
    events: list[dict[str, Any]], batch: int, every: int, cut: int
) -> None:
    """Live: a board flush (`flush_board`, intervals and status only, counts left undrained)
    after every batch of one to three events, a full flush every few batches, and a
    snapshot restored on the way end with the rows of a full flush after every event."""
    from streams.machine_tracker import Row
    from streams.tracker_snapshot import TrackerSnapshots, decode
    from tests.test_machine_tracker import _key, run

    def final(rows: list[Row]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for row in rows:
            if isinstance(row, WorkOrderParts):
                row = row._replace(t=0)  # when the totals were observed depends on batching
            out[_key(row)] = None if isinstance(row, IntervalDelete) else row
        return {
            k: v
            for k, v in out.items()
            if v is not None
            and not (isinstance(v, WorkOrderParts) and v.good_total == v.scrap_total == 0)
            and not (isinstance(v, ScrapSetRow) and not v.items)
        }

    tracker, snapshots, rows = _tracker(), TrackerSnapshots(), []
    batches = [events[i : i + batch] for i in range(0, len(events), batch)]
    for k, group in enumerate(batches):
        if k == cut % len(batches):
            restored = decode(snapshots.encode(tracker))
            assert restored is not None
            tracker = restored
        for e in group:
            tracker.apply(k, parse_event(_json(e)))  # type: ignore[arg-type]
        out = tracker.flush() if k % every == every - 1 else tracker.flush_board()
        snapshots.note(out)
        rows.extend(out)
    rows.extend(tracker.flush())
    want, _ = run(events, batch=1)
    assert final(rows) == want
