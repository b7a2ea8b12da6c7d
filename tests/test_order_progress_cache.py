"""The order step computes a routed work order's per-operation figures once per change
(streams/order_progress.py `_WorkOrder.derived`): its rows and callbacks must be exactly
those of computing them afresh on every read, whatever the inputs, and a snapshot neither
carries the cached figures nor resumes with stale ones."""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow.events import RoutingStep, WorkOrderEvent
from streams.order_progress import IdealCycles, OrderProgress
from streams.routing import OpFigures, OpInput, from_event, op_figures
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


def work_order_inputs(
    wos: tuple[str, ...], minutes: st.SearchStrategy[int], qty_max: int, parts_max: int
) -> list[st.SearchStrategy[tuple[Any, ...]]]:
    """A work order (its routing, product, quantity), an operation's start, a part report
    of up to `parts_max` operations: the inputs every order-step test draws from."""
    return [
        st.tuples(
            st.just("wo"),
            st.sampled_from(wos),
            st.integers(0, len(ROUTINGS) - 1),
            st.sampled_from(["P-100", "P-400"]),
            st.integers(1, qty_max),
            minutes,
        ),
        st.tuples(
            st.just("start"),
            st.sampled_from(wos),
            st.sampled_from(MACHINES),
            minutes,
            st.sampled_from(OPS),
        ),
        st.tuples(
            st.just("parts"),
            st.sampled_from(wos),
            st.sampled_from(MACHINES),
            minutes,
            st.lists(
                st.tuples(st.sampled_from(OPS), st.integers(0, 40), st.integers(0, 4)),
                max_size=parts_max,
            ),
        ),
    ]


inputs = st.lists(
    st.one_of(
        *work_order_inputs(WOS, st.integers(0, 120), 60, 3),
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


def reference_op_figures(route: Any, done: list[OpInput], qty: int | None) -> list[OpFigures]:
    """streams/routing.py op_figures as first written (a list and a sum per step)."""
    by_op: dict[str, list[OpInput]] = {}
    for d in done:
        by_op.setdefault(d.op, []).append(d)
    out: list[OpFigures] = []
    prev_good: int | None = None
    for i, s in enumerate(route, start=1):
        mine = by_op.get(s.op, [])
        good = sum(d.good for d in mine)
        scrap = sum(d.scrap for d in mine)
        firsts = [d.first_t for d in mine if d.first_t is not None]
        lasts = [d.last_t for d in mine if d.last_t is not None]
        machines = tuple(sorted({d.machine for d in mine})) or s.machines
        qty_in = good + scrap if prev_good is None else prev_good
        wip = 0 if prev_good is None else max(prev_good - good - scrap, 0)
        if qty is not None and good >= qty > 0:
            status = "done"
        elif mine:
            status = "running"
        else:
            status = "not_started"
        out.append(
            OpFigures(
                i,
                s.op,
                s.name,
                machines,
                s.ideal_cycle_seconds,
                qty_in,
                good,
                scrap,
                wip,
                status,
                min(firsts, default=None),
                max(lasts, default=None),
            )
        )
        prev_good = good
    return out


op_inputs = st.lists(
    st.builds(
        OpInput,
        st.sampled_from(OPS[1:]),
        st.sampled_from(MACHINES),
        st.integers(0, 50),
        st.integers(0, 5),
        st.none() | st.integers(0, 100),
        st.none() | st.integers(0, 100),
    ),
    max_size=6,
)


@settings(max_examples=50, deadline=None)
@given(op_inputs, st.none() | st.integers(0, 60))
def test_op_figures_equal_the_reference(done: list[OpInput], qty: int | None) -> None:
    """op_figures takes a step's one input as it is (most steps have one): the same
    figures as summing every step's inputs."""
    route = from_event(
        RoutingStep.model_validate(s)
        for s in [{"op": "10", "machines": ["IM-01"]}, {"op": "20"}, {"op": "30"}]
    )
    assert op_figures(route, done, qty) == reference_op_figures(route, done, qty)
