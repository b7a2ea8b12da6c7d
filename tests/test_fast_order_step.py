"""The order step's work stays proportional to the change (streams/order_progress.py
`OrderProgress._evaluate`): after an input it looks again only at the work order the input
changed, and leaves settled work orders (made, no part in the rate window) out of the ETA
until they change. Its rows and callbacks must be exactly those of a full pass over every
work order after every input, whatever the inputs, clock ticks and restarts."""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from streams.order_progress import IdealCycles, OrderProgress, WorkOrderProgressRow
from tests.test_order_progress import at, order
from tests.test_order_progress_cache import feed, forget_figures, wo_event, work_order_inputs
from tests.test_routings import PLANT

WOS = ("WO-1", "WO-2", "WO-3", "WO-4")
minutes = st.integers(0, 400)  # several rate windows: work orders settle and wake up
one_input = st.one_of(
    *work_order_inputs(WOS, minutes, 30, 2),
    st.tuples(st.just("clock"), minutes),
    st.tuples(st.just("order"), st.integers(20, 120), st.sampled_from(["open", "on_hold"])),
    st.tuples(st.just("flush")),
    st.tuples(st.just("snapshot")),
)
inputs = st.lists(one_input, max_size=40)


def full_pass(p: OrderProgress) -> None:
    """Forget every cache: the next input looks at every work order afresh."""
    forget_figures(p)
    p._no_caches()


@settings(max_examples=50, deadline=None)
@given(inputs, st.booleans())
# Parts 25 minutes before a tick are still in the rate window: the rate then decays at the
# next tick (a work order is dormant, its figures moved by the clock, only once no part is
# in the window).
@example(
    xs=[
        ("wo", "WO-1", 0, "P-400", 30, 0),
        ("start", "WO-1", "IM-01", 0, ""),
        ("parts", "WO-1", "IM-01", 10, [("", 10, 0)]),
        ("clock", 35),
        ("flush",),
        ("clock", 50),
        ("flush",),
        ("clock", 70),
    ],
    crm=True,
)
# A flush trims the rate samples of a work order that had one when it last trimmed.
@example(
    xs=[
        ("parts", "WO-1", "IM-01", 10, [("", 5, 0)]),
        ("flush",),
        ("parts", "WO-1", "IM-01", 20, [("", 8, 0)]),
        ("parts", "WO-1", "IM-01", 25, [("", 9, 0)]),
        ("clock", 100),
        ("flush",),
    ],
    crm=True,
)
# Without a CRM order (stock), nothing evaluates figures between flushes: the flush moves
# a dormant work order's ETA itself.
@example(
    xs=[
        ("wo", "WO-1", 0, "P-400", 30, 0),
        ("start", "WO-1", "IM-01", 0, ""),
        ("parts", "WO-1", "IM-01", 5, [("", 10, 0)]),
        ("clock", 40),
        ("flush",),
        ("clock", 60),
        ("flush",),
    ],
    crm=False,
)
def test_incremental_evaluation_equals_a_full_pass(xs: list[tuple[Any, ...]], crm: bool) -> None:
    """`crm`: the order's CRM snapshot comes first (else only with an "order" input)."""
    ideal = IdealCycles.from_plant(PLANT)
    fast, full = OrderProgress("SO-1", ideal), OrderProgress("SO-1", ideal)
    version = 1
    for p in (fast, full):
        if crm:
            p.on_order(order(qty=80))
    for x in xs:
        if x[0] == "snapshot":  # a restart: resumes from its snapshot
            fast = pickle.loads(pickle.dumps(fast))
            continue
        full_pass(full)
        if x[0] == "flush":
            assert fast.flush() == full.flush()
            # Its state too: the flush trims the same rate samples.
            assert fast.__getstate__() == full.__getstate__()
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


class _EveryStartEvaluated(OrderProgress):
    """The order step without the repeated-start shortcut: every start is applied."""

    def _repeats_start(self, *_: Any) -> bool:
        return False


# The inputs above, and a start seen before sent again (the k-th, as it was or at minute m).
with_repeats = st.lists(
    st.one_of(one_input, st.tuples(st.just("again"), st.integers(0, 9), st.none() | minutes)),
    max_size=40,
)


@settings(max_examples=50, deadline=None)
@given(with_repeats)
# A start sent again later than anything seen (it moves "now"), earlier than its work
# order's start (parts of none made first), earlier than its run's first time only.
@example([("start", "WO-1", "IM-01", 5, ""), ("again", 0, 50)])
@example([("start", "WO-1", "IM-01", 5, "10"), ("again", 0, 2)])
@example([("parts", "WO-1", "IM-01", 3, []), ("start", "WO-1", "IM-01", 5, "10"), ("again", 0, 4)])
@example(
    [
        ("wo", "WO-1", 1, "P-100", 30, 0),  # routed: its rate is its last step's
        ("start", "WO-1", "CNC-03", 1, ""),
        ("start", "WO-1", "IM-01", 5, "30"),
        ("again", 1, 3),
        ("parts", "WO-1", "IM-01", 20, [("30", 10, 0)]),
    ]
)
def test_a_repeated_start_changes_nothing(xs: list[tuple[Any, ...]]) -> None:
    """A machine repeats its work order's start with every batch of its parts: the step
    skips a start that changes nothing, and must give what applying it gives."""
    ideal = IdealCycles.from_plant(PLANT)
    fast, slow = OrderProgress("SO-1", ideal), _EveryStartEvaluated("SO-1", ideal)
    version = 1
    for p in (fast, slow):
        p.on_order(order(qty=80))
    starts: list[tuple[Any, ...]] = []
    for x in xs:
        if x[0] == "snapshot":
            fast = pickle.loads(pickle.dumps(fast))
        elif x[0] == "flush":
            assert fast.flush() == slow.flush()
        elif x[0] == "clock":
            for p in (fast, slow):
                p.on_clock(at(x[1]))
        elif x[0] == "order":
            version += 1
            for p in (fast, slow):
                p.on_order(order(qty=x[1], status=x[2], version=version))
        elif x[0] == "again":
            if starts:
                _, w, m, minute, op = starts[x[1] % len(starts)]
                t = at(minute if x[2] is None else x[2])
                for p in (fast, slow):
                    p.on_wo_started(w, m, t, ((op, at(minute)),) if op else ())
        else:
            feed(fast, x)
            feed(slow, x)
            if x[0] == "start":
                starts.append(x)
    assert fast.flush() == slow.flush()
