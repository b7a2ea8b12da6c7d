"""Routings, pure logic: which operation parts belong to (streams/routing.py), the machine
trackers' split by operation (streams/machine_tracker.py), and order progress per operation
(streams/order_progress.py). Through the dataflow and PostgreSQL: tests/test_routings_flow.py.
"""

from __future__ import annotations

import pickle
import random
from datetime import datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow.events import RoutingStep, WorkOrderEvent, parse_event
from streams.hour_clock import to_us
from streams.machine_tracker import MachineSpec, MachineTracker
from streams.order_progress import IdealCycles, OrderProgress, WorkOrderProgressRow
from streams.records import WorkOrderParts, WorkOrderStarted
from streams.routing import (
    OperationSetRow,
    OpInput,
    Step,
    op_figures,
    op_for,
    plant_routes,
    route_of,
)
from tests.test_machine_tracker import PLANT as EXAMPLE
from tests.test_machine_tracker import T0, _json, ev, run, shuffled_within
from tests.test_routings_flow import with_routing

PLANT = with_routing(EXAMPLE)  # P-100: molding "10" at IM-01..03, drilling "20" at CNC-03

ROUTE = (
    Step("10", "Molding", ("IM-01", "IM-02"), None),
    Step("20", "Drilling", ("CNC-03",), 45.0),
    Step("30", "Check", (), None),
)


def us(minutes: float) -> int:
    return to_us(T0 + timedelta(minutes=minutes))


# -- which operation ---------------------------------------------------------------------------


def test_explicit_operation_wins_then_the_machine_then_the_first_step() -> None:
    assert op_for(ROUTE, "30", "IM-01") == "30"  # named: even on a machine of another step
    assert op_for(ROUTE, "", "CNC-03") == "20"  # the step listing the machine
    assert op_for(ROUTE, "", "CNC-01") == "10"  # listed nowhere: the first step
    assert op_for(ROUTE, "99", "CNC-03") == "20"  # not in the routing: as if unnamed


def test_a_work_order_s_own_routing_overrides_its_product_s() -> None:
    routes = plant_routes(PLANT)
    assert [s.op for s in routes["P-100"]] == ["10", "20"]
    own = [RoutingStep(op="A", machines=["IM-01"]), RoutingStep(op="B", ideal_cycle_seconds=9.5)]
    mine = route_of(own, "P-100", routes)
    assert mine == (Step("A", None, ("IM-01",), None), Step("B", None, (), 9.5))
    assert route_of(None, "P-100", routes) == routes["P-100"]
    assert route_of(None, "P-400", routes) is None


def test_quantities_in_good_scrap_and_wip_per_operation() -> None:
    done = [
        OpInput("10", "IM-01", 30, 2, us(0), us(50)),
        OpInput("10", "IM-02", 20, 3, us(1), us(40)),
        OpInput("20", "CNC-03", 40, 3, us(20), us(60)),
        OpInput("30", "CNC-01", 30, 2, us(30), us(70)),
    ]
    figs = op_figures(ROUTE, done, qty=30)
    got = [(f.op, f.qty_in, f.good, f.scrap, f.wip_before, f.status) for f in figs]
    assert got == [
        ("10", 55, 50, 5, 0, "done"),
        ("20", 50, 40, 3, 7, "done"),
        ("30", 40, 30, 2, 8, "done"),
    ]
    assert figs[0].machines == ("IM-01", "IM-02") and figs[0].first_t == us(0)
    assert figs[0].last_t == us(50)
    # Nothing at the last step yet: not started, with the parts waiting before it.
    figs = op_figures(ROUTE, done[:3], qty=100)
    assert [(f.status, f.wip_before) for f in figs] == [
        ("running", 0),
        ("running", 7),
        ("not_started", 40),
    ]
    assert figs[2].machines == ()  # the routing's own list (any machine)
    # More out of a step than went in (parts from stock): WIP never negative.
    over = op_figures(ROUTE, [OpInput("20", "CNC-03", 9, 0, None, None)], qty=None)
    assert [f.wip_before for f in over] == [0, 0, 9]


# -- the machine tracker's split by operation ----------------------------------------------------


def tracker_rows(events: list[dict[str, Any]], machine: str = "IM-01") -> list[Any]:
    tracker = MachineTracker(MachineSpec.from_plant(PLANT, machine))
    for i, e in enumerate(events):
        assert tracker.apply(i, parse_event(_json(e))) is None  # type: ignore[arg-type]
    return tracker.flush()


def work_order(minutes: float = 0) -> dict[str, Any]:
    return {
        "type": "work_order",
        "ts": (T0 + timedelta(minutes=minutes)).isoformat(),
        "work_order": "WO-1",
        "order_no": "SO-1",
        "product": "P-100",
        "qty": 100,
    }


def test_parts_belong_to_the_operation_the_running_wo_start_named() -> None:
    rows = tracker_rows(
        [
            work_order(),
            ev("state", 0, state="running"),
            ev("wo_start", 1, work_order="WO-1", operation="10"),
            *(ev("count", 2 + i / 10, good=1) for i in range(5)),
            ev("count", 3, good=0, scrap=1),
            # The same machine takes the work order's next operation.
            ev("wo_start", 4, work_order="WO-1", operation="20"),
            *(ev("count", 5 + i / 10, good=1) for i in range(3)),
            ev("scrap_report", 6, qty=1, reason="short_shot"),  # of operation 20's parts
        ]
    )
    parts = [r for r in rows if type(r) is WorkOrderParts]
    started = [r for r in rows if type(r) is WorkOrderStarted]
    assert len(parts) == 1 and len(started) == 1  # one row per work order and machine
    p = parts[0]
    assert (p.good_total, p.scrap_total) == (7, 2)  # the machine's totals are unchanged
    assert p.ops == (("10", 5, 1), ("20", 2, 1))
    assert started[0].t == us(1)
    assert started[0].ops == (("10", us(1)), ("20", us(4)))


def test_work_orders_without_operations_emit_what_they_always_did() -> None:
    rows = tracker_rows(
        [
            work_order(),
            ev("state", 0, state="running"),
            ev("wo_start", 1, work_order="WO-1"),
            *(ev("count", 2 + i / 10, good=1) for i in range(4)),
        ]
    )
    parts = [r for r in rows if type(r) is WorkOrderParts]
    started = [r for r in rows if type(r) is WorkOrderStarted]
    assert parts == [WorkOrderParts("SO-1", "WO-1", "IM-01", us(2.3), 4, 0)]
    assert started == [WorkOrderStarted("SO-1", "WO-1", "IM-01", us(1))]


def test_a_late_wo_start_moves_its_parts_to_its_operation() -> None:
    """A wo_start arriving after parts it covers (within the allowed lateness): the parts
    are re-attributed, as in-order input would have had them."""
    base = [work_order(), ev("state", 0, state="running")]
    start10 = ev("wo_start", 1, work_order="WO-1", operation="10")
    start20 = ev("wo_start", 3, work_order="WO-1", operation="20")
    counts = [ev("count", 2 + i, good=1) for i in range(3)]  # at 2, 3, 4 minutes
    in_order = tracker_rows([*base, start10, counts[0], start20, *counts[1:]])
    late = tracker_rows([*base, start10, *counts, start20])
    ops = [r.ops for r in in_order if type(r) is WorkOrderParts]
    assert ops == [(("10", 1, 0), ("20", 2, 0))]
    assert [r.ops for r in late if type(r) is WorkOrderParts] == ops


@st.composite
def op_streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    rng = random.Random(draw(st.integers(0, 10_000)))
    t = 0.0
    out: list[dict[str, Any]] = [ev("state", 0, state="running")]
    for _ in range(draw(st.integers(5, 80))):
        t += rng.choice([0.05, 0.3, 1, 2.5])
        r = rng.random()
        if r < 0.6:
            out.append(ev("count", t, good=rng.randint(0, 2), scrap=int(rng.random() < 0.1)))
        elif r < 0.7:
            out.append(ev("scrap_report", t, qty=1, reason="short_shot"))
        else:
            # No wo_end: whether one ends the running work order is decided on arrival
            # (an end before its start is ignored), so its effect depends on arrival order.
            wo = {"work_order": f"WO-{rng.randint(1, 2)}"}
            if rng.random() < 0.7:
                wo["operation"] = rng.choice(["10", "20"])
            out.append(ev("wo_start", t, **wo))
    for n in (1, 2):  # known from the start (their product applies from their ts)
        wo = work_order()
        wo["work_order"] = f"WO-{n}"
        out.insert(0, wo)
    return out


@settings(max_examples=40, deadline=None)
@given(op_streams(), st.integers(0, 1000))
def test_operation_split_adds_up_and_does_not_depend_on_arrival(
    events: list[dict[str, Any]], seed: int
) -> None:
    in_order, _ = run(events, batch=5)
    late, rejected = run(shuffled_within(events, 4.9, seed), batch=5)
    assert rejected == []
    assert late == in_order
    for row in in_order.values():
        if type(row) is WorkOrderParts and row.ops:
            assert sum(g for _, g, _ in row.ops) == row.good_total
            assert sum(s for _, _, s in row.ops) == row.scrap_total


def test_a_snapshot_from_before_routings_resumes() -> None:
    """A tracker pickled before the operation fields existed loads, and goes on to give
    the figures of a tracker that never stopped."""
    events = [
        work_order(),
        ev("state", 0, state="running"),
        ev("wo_start", 1, work_order="WO-1"),
        *(ev("count", 2 + i / 10, good=1) for i in range(5)),
    ]
    more = [ev("count", 3 + i / 10, good=1) for i in range(3)]
    more.append(ev("wo_start", 4, work_order="WO-1", operation="20"))
    more.extend(ev("count", 5 + i / 10, good=1, scrap=i % 2) for i in range(4))
    fresh = MachineTracker(MachineSpec.from_plant(PLANT, "IM-01"))
    old = MachineTracker(MachineSpec.from_plant(PLANT, "IM-01"))
    for i, e in enumerate(events):
        fresh.apply(i, parse_event(_json(e)))  # type: ignore[arg-type]
        old.apply(i, parse_event(_json(e)))  # type: ignore[arg-type]
    fresh.flush()
    old.flush()
    # What an earlier version pickled: no operation fields, six-element part classes.
    state = old.__getstate__()
    for name in ("wo_ops", "op_parts", "op_started"):
        del state[name]
    state["parts"] = [(*p[:6], p[6][:6]) for p in state["parts"]]  # type: ignore[attr-defined]
    state["runs"] = [((g, s, c[:6]), ts) for (g, s, c), ts in state["runs"]]  # type: ignore[attr-defined]
    resumed = MachineTracker.__new__(MachineTracker)
    resumed.__setstate__(pickle.loads(pickle.dumps(state)))
    for i, e in enumerate(more, start=len(events)):
        fresh.apply(i, parse_event(_json(e)))  # type: ignore[arg-type]
        resumed.apply(i, parse_event(_json(e)))  # type: ignore[arg-type]
    a, b = fresh.flush(), resumed.flush()
    assert a == b
    parts = [r for r in a if type(r) is WorkOrderParts]
    assert parts[0].ops == (("", 8, 0), ("20", 4, 2))
    # Rows pickled before the fields existed load with their defaults.
    assert WorkOrderParts(*parts[0][:6]).ops == ()
    assert pickle.loads(pickle.dumps(WorkOrderStarted("SO-1", "WO-1", "IM-01", 5))).ops == ()


# -- order progress per operation ----------------------------------------------------------------


def wo_event(routing: list[dict[str, Any]] | None, product: str = "P-100") -> WorkOrderEvent:
    return WorkOrderEvent.model_validate(
        {
            "type": "work_order",
            "ts": T0,
            "work_order": "WO-1",
            "order_no": "SO-1",
            "product": product,
            "qty": 40,
            **({"routing": routing} if routing is not None else {}),
        }
    )


def three_steps() -> list[dict[str, Any]]:
    return [
        {"op": "10", "machines": ["IM-01"]},
        {"op": "20", "machines": ["CNC-03"], "ideal_cycle_seconds": 45},
        {"op": "30", "machines": ["CNC-01"]},
    ]


def wo_row(rows: list[Any]) -> WorkOrderProgressRow:
    return next(r for r in reversed(rows) if type(r) is WorkOrderProgressRow)


def test_a_routed_work_order_progresses_with_its_last_operation() -> None:
    p = OrderProgress("SO-1", IdealCycles.from_plant(PLANT))
    p.on_work_order(wo_event(three_steps()))
    p.on_wo_started("WO-1", "IM-01", us(1), (("10", us(1)),))
    p.on_parts("WO-1", "IM-01", us(30), 50, 5, (("10", 50, 5),))
    p.on_wo_started("WO-1", "CNC-03", us(10))  # op inferred from the machine: 20
    p.on_parts("WO-1", "CNC-03", us(40), 40, 3)
    p.on_wo_started("WO-1", "CNC-01", us(20), (("30", us(20)),))
    p.on_parts("WO-1", "CNC-01", us(50), 30, 2, (("30", 30, 2),))
    rows = p.flush()
    w = wo_row(rows)
    assert (w.good, w.scrap, w.progress) == (30, 10, 30 / 40)
    ops = next(r for r in rows if type(r) is OperationSetRow).ops
    got = [(f.op, f.qty_in, f.good, f.scrap, f.wip_before, f.status) for f in ops]
    assert got == [
        ("10", 55, 50, 5, 0, "done"),
        ("20", 50, 40, 3, 7, "done"),
        ("30", 40, 30, 2, 8, "running"),
    ]
    assert ops[1].first_t == us(10) and ops[1].ideal_cycle_seconds == 45
    # Unpickled (a snapshot), the figures stay.
    again = pickle.loads(pickle.dumps(p))
    again.on_parts("WO-1", "CNC-01", us(55), 40, 2, (("30", 40, 2),))
    w = wo_row(again.flush())
    assert (w.good, w.progress, w.completed_at is not None) == (40, 1.0, True)


def test_a_plant_routing_applies_once_a_start_names_an_operation() -> None:
    p = OrderProgress("SO-1", IdealCycles.from_plant(PLANT))
    p.on_work_order(wo_event(None))  # P-100: molding "10" at IM-01..03, then drilling "20"
    p.on_wo_started("WO-1", "IM-01", us(1))
    p.on_parts("WO-1", "IM-01", us(30), 25, 1)
    rows = p.flush()
    assert wo_row(rows).good == 25  # started without operations: followed whole
    assert not [r for r in rows if type(r) is OperationSetRow]
    p.on_wo_started("WO-1", "CNC-03", us(31), (("20", us(31)),))
    p.on_parts("WO-1", "CNC-03", us(40), 10, 0, (("20", 10, 0),))
    rows = p.flush()
    assert (wo_row(rows).good, wo_row(rows).scrap) == (10, 1)  # now: the drilling's output
    ops = next(r for r in rows if type(r) is OperationSetRow).ops
    assert [(f.op, f.qty_in, f.good, f.wip_before) for f in ops] == [
        ("10", 26, 25, 0),
        ("20", 25, 10, 15),
    ]


def test_a_work_order_without_routing_is_unchanged() -> None:
    p = OrderProgress("SO-1", IdealCycles.from_plant(PLANT))
    p.on_work_order(wo_event(None, product="P-400"))
    p.on_wo_started("WO-1", "CNC-04", us(1), (("10", us(1)),))  # a name, but no routing
    p.on_parts("WO-1", "CNC-04", us(30), 12, 1, (("10", 12, 1),))
    p.on_parts("WO-1", "CNC-05", us(31), 8, 0)
    rows = p.flush()
    assert (wo_row(rows).good, wo_row(rows).scrap) == (20, 1)
    assert not [r for r in rows if type(r) is OperationSetRow]


def test_an_order_snapshot_from_before_routings_resumes() -> None:
    p = OrderProgress("SO-1", IdealCycles.from_plant(PLANT))
    p.on_work_order(wo_event(None, product="P-400"))
    p.on_parts("WO-1", "CNC-04", us(30), 12, 1)
    p.flush()
    # Objects of the earlier version lack the new slots, and its IdealCycles has no routes.
    for wo in p.wos.values():
        del wo.routing, wo.own_routing
        for run_ in wo.runs.values():
            del run_.ops, run_.op_starts
    object.__delattr__(p.ideal, "routes")
    resumed = pickle.loads(pickle.dumps(p))
    resumed.on_parts("WO-1", "CNC-04", us(40), 15, 1)
    resumed.on_work_order(wo_event(None, product="P-100"))  # no routes known: whole
    w = wo_row(resumed.flush())
    assert (w.good, w.scrap) == (15, 1)


def test_the_contract_refuses_bad_routings() -> None:
    import pytest
    from pydantic import ValidationError

    for bad in ([], [{"op": "10"}, {"op": "10"}], [{"op": "10", "ideal_cycle_seconds": 0}]):
        with pytest.raises(ValidationError):
            wo_event(bad)


def test_when_stamps_are_event_time() -> None:
    # The per-operation figures are as of the order's latest event (a replay writes the same).
    p = OrderProgress("SO-1", IdealCycles.from_plant(PLANT))
    p.on_work_order(wo_event(three_steps()))
    p.on_parts("WO-1", "IM-01", us(30), 5, 0, (("10", 5, 0),))
    row = next(r for r in p.flush() if type(r) is OperationSetRow)
    assert row.last_event_ts == datetime.fromisoformat((T0 + timedelta(minutes=30)).isoformat())
