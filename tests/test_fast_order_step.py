"""The order step's work stays proportional to the change (streams/order_progress.py
`OrderProgress._evaluate`): after an input it looks again only at the work order the input
changed, and leaves settled work orders (made, no part in the rate window) out of the ETA
until they change. Its rows and callbacks must be exactly those of a full pass over every
work order after every input, whatever the inputs, clock ticks and restarts."""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.order_progress import IdealCycles, OrderProgress, WorkOrderProgressRow
from tests.test_order_progress import at, order
from tests.test_order_progress_cache import MACHINES, OPS, ROUTINGS, feed, forget_figures, wo_event
from tests.test_routings import PLANT

WOS = ("WO-1", "WO-2", "WO-3", "WO-4")
minutes = st.integers(0, 400)  # several rate windows: work orders settle and wake up
inputs = st.lists(
    st.one_of(
        st.tuples(
            st.just("wo"),
            st.sampled_from(WOS),
            st.integers(0, len(ROUTINGS) - 1),
            st.sampled_from(["P-100", "P-400"]),
            st.integers(1, 30),
            minutes,
        ),
        st.tuples(
            st.just("start"),
            st.sampled_from(WOS),
            st.sampled_from(MACHINES),
            minutes,
            st.sampled_from(OPS),
        ),
        st.tuples(
            st.just("parts"),
            st.sampled_from(WOS),
            st.sampled_from(MACHINES),
            minutes,
            st.lists(
                st.tuples(st.sampled_from(OPS), st.integers(0, 40), st.integers(0, 4)), max_size=2
            ),
        ),
        st.tuples(st.just("clock"), minutes),
        st.tuples(st.just("order"), st.integers(20, 120), st.sampled_from(["open", "on_hold"])),
        st.tuples(st.just("flush")),
        st.tuples(st.just("snapshot")),
    ),
    max_size=40,
)


def full_pass(p: OrderProgress) -> None:
    """Forget every cache: the next input looks at every work order afresh."""
    forget_figures(p)
    p._no_caches()


@settings(max_examples=50, deadline=None)
@given(inputs)
def test_incremental_evaluation_equals_a_full_pass(xs: list[tuple[Any, ...]]) -> None:
    ideal = IdealCycles.from_plant(PLANT)
    fast, full = OrderProgress("SO-1", ideal), OrderProgress("SO-1", ideal)
    version = 1
    for p in (fast, full):
        p.on_order(order(qty=80))
    for x in xs:
        if x[0] == "snapshot":  # a restart: resumes from its snapshot
            fast = pickle.loads(pickle.dumps(fast))
            continue
        full_pass(full)
        if x[0] == "flush":
            assert fast.flush() == full.flush()
            continue
        if x[0] == "clock":
            for p in (fast, full):
                p.on_clock(at(x[1]))
        elif x[0] == "order":
            version += 1
            for p in (fast, full):
                p.on_order(order(qty=x[1], status=x[2], version=version))
        else:
            feed(fast, x)
            feed(full, x)
    full_pass(full)
    assert fast.flush() == full.flush()


def test_a_made_work_order_still_making_parts_is_not_settled() -> None:
    """A work order made within the rate window still has a rate (it moves with the
    clock, and counts in the order's ETA): it is settled only once the window passed."""
    ideal = IdealCycles.from_plant(PLANT)
    fast, full = OrderProgress("SO-1", ideal), OrderProgress("SO-1", ideal)
    for p in (fast, full):
        p.on_order(order(qty=80))
        p.on_wo_started("WO-1", "IM-01", at(0))
        p.on_work_order(wo_event("WO-1", 0, "P-100", 10, 0))
        p.on_parts("WO-1", "IM-01", at(5), 12, 0)  # made, 12 parts in the window
    for minute in (10, 20, 40, 90):
        full_pass(full)
        for p in (fast, full):
            p.on_clock(at(minute))
        rows = fast.flush()
        assert rows == full.flush()
        row = rows[0]
        assert isinstance(row, WorkOrderProgressRow)
        assert (row.rate_per_h > 0) == (minute < 35), minute  # the window: 30 min
