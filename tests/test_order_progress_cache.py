"""The order step computes a routed work order's per-operation figures once per change
(streams/order_progress.py `_WorkOrder.derived`): its rows and callbacks must be exactly
those of computing them afresh on every read, whatever the inputs, and a snapshot neither
carries the cached figures nor resumes with stale ones."""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow.events import WorkOrderEvent
from streams.order_progress import IdealCycles, OrderProgress
from tests.test_order_progress import at, dt, order
from tests.test_routings import PLANT, three_steps

MACHINES = ("IM-01", "CNC-03", "CNC-01")
WOS = ("WO-1", "WO-2")
OPS = ("", "10", "20", "30")
ROUTINGS: tuple[list[dict[str, Any]] | None, ...] = (
    None,  # the product's (P-100: plant routing), once a start names an operation
    three_steps(),
    [{"op": "10"}, {"op": "30", "machines": ["CNC-01"]}],
)


def wo_event(work_order: str, routing: int, product: str, qty: int, minute: int) -> Any:
    r = ROUTINGS[routing]
    return WorkOrderEvent.model_validate(
        {
            "type": "work_order",
            "ts": dt(at(minute)),
            "work_order": work_order,
            "order_no": "SO-1",
            "product": product,
            "qty": qty,
            **({"routing": r} if r is not None else {}),
        }
    )


minutes = st.integers(0, 120)
inputs = st.lists(
    st.one_of(
        st.tuples(
            st.just("wo"),
            st.sampled_from(WOS),
            st.integers(0, len(ROUTINGS) - 1),
            st.sampled_from(["P-100", "P-400"]),
            st.integers(1, 60),
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
                st.tuples(st.sampled_from(OPS), st.integers(0, 40), st.integers(0, 4)), max_size=3
            ),
        ),
        st.tuples(st.just("flush")),
        st.tuples(st.just("snapshot")),
    ),
    max_size=30,
)


def feed(p: OrderProgress, x: tuple[Any, ...]) -> None:
    kind = x[0]
    if kind == "wo":
        _, w, routing, product, qty, minute = x
        p.on_work_order(wo_event(w, routing, product, qty, minute))
    elif kind == "start":
        _, w, m, minute, op = x
        p.on_wo_started(w, m, at(minute), ((op, at(minute)),) if op else ())
    else:
        _, w, m, minute, split = x
        ops = {o: (g, s) for o, g, s in split}  # one figure per operation
        good, scrap = sum(g for g, _ in ops.values()), sum(s for _, s in ops.values())
        p.on_parts(w, m, at(minute), good, scrap, tuple((o, g, s) for o, (g, s) in ops.items()))


def forget_figures(p: OrderProgress) -> None:
    for wo in p.wos.values():
        wo.changed()


@settings(max_examples=50, deadline=None)
@given(inputs)
def test_cached_figures_equal_figures_computed_afresh(xs: list[tuple[Any, ...]]) -> None:
    ideal = IdealCycles.from_plant(PLANT)
    cached, fresh = OrderProgress("SO-1", ideal), OrderProgress("SO-1", ideal)
    for p in (cached, fresh):
        p.on_order(order(qty=80))
    for x in xs:
        if x[0] == "snapshot":  # a restart: the cached one resumes from its snapshot
            cached = pickle.loads(pickle.dumps(cached))
            continue
        if x[0] == "flush":
            forget_figures(fresh)
            assert cached.flush() == fresh.flush()
            continue
        forget_figures(fresh)
        feed(cached, x)
        feed(fresh, x)
    forget_figures(fresh)
    assert cached.flush() == fresh.flush()


def test_a_snapshot_leaves_the_cached_figures_out() -> None:
    p = OrderProgress("SO-1", IdealCycles.from_plant(PLANT))
    p.on_work_order(wo_event("WO-1", 1, "P-100", 40, 0))
    p.on_wo_started("WO-1", "IM-01", at(1), (("10", at(1)),))
    p.on_parts("WO-1", "IM-01", at(30), 50, 5, (("10", 50, 5),))
    rows = p.flush()
    assert p.wos["WO-1"].derived is not None
    resumed = pickle.loads(pickle.dumps(p))
    assert resumed.wos["WO-1"].derived is None
    assert b"derived" not in pickle.dumps(p)
    p.on_parts("WO-1", "IM-01", at(40), 60, 5, (("10", 60, 5),))
    resumed.on_parts("WO-1", "IM-01", at(40), 60, 5, (("10", 60, 5),))
    assert p.flush() == resumed.flush() != rows
