"""The machine tracker's hot-path caches change no figure: how a stream is cut into
batches (one flush per batch, as the dataflow does) does not change the rows it ends with.

The count context (the classification and buckets of the previous part) is kept over
flushes; the first count after a flush must still mark its hour and shift to be written,
also in a break (an unplanned stretch of a shift, where crediting time marks no shift).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_machine_tracker import ev, kpi, run, streams


@settings(max_examples=40, deadline=None)
@given(streams(), st.sampled_from([1, 2, 5]))
def test_batching_does_not_change_the_rows(events: list[dict[str, Any]], batch: int) -> None:
    assert run(events, batch=batch) == run(events, batch=len(events))


def test_counts_in_a_break_after_a_flush_are_written() -> None:
    # Lunch is 12:00-12:30 of the day shift (config/plant.example.yaml); T0 is 10:50.
    events = [
        ev("state", 0, state="running"),
        ev("count", 75, good=2),  # 12:05, in the break: in the shift, not planned
        ev("count", 75, good=3),  # the same instant: the clock does not move
        ev("count", 75, good=4),
    ]
    for batch in (1, 2, 4):
        rows, _ = run(events, batch=batch)
        shift = kpi(rows, "shift", "2026-11-20T08:00:00+08:00")
        assert (shift.all_good, shift.good) == (9, 0), batch
        hour = kpi(rows, "hour", "2026-11-20T12:00:00+08:00")
        assert hour.all_good == 9, batch
