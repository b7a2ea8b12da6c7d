"""The inspection step's incremental derivation (streams/inspections.py: per batch only the
machines a batch touched and the runs that tick, a run whose parts made alone changed
updated in place, parts made summed from the points appended since) gives exactly the rows
of a full recomputation: an instance that forgets every cache and index before each call
(every machine's runs derived again from its reports, every touched run's rows derived
whole), over several machines, work orders and operations, reports out of order, batch
cuts, live ticks and runs old enough to be forgotten."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow.events import parse_event
from mesflow.plant import PlantConfig
from streams.inspections import (
    _NEVER,
    Inspections,
    _shift_time_after,
    _shift_time_walk,
)
from streams.records import FloorInput, WorkOrderParts
from streams.shift_calendar import CalendarIndex
from streams.validate import OrderInput
from tests.test_fast_inspections import Same
from tests.test_fast_inspections import forget as forget_memos
from tests.test_inspections import POLICY, at, us, with_policy

MACHINES = ("IM-01", "CNC-01")  # CNC-01's line has shifts: patrols fall due in shift time
WOS = ("WO-1", "WO-2", "WO-3")


def report(seq: int, minute: float, machine: str, body: dict[str, Any]) -> FloorInput:
    body = {"type": "report", "machine": machine, "ts": at(minute).isoformat(), **body}
    return FloorInput(seq, parse_event(json.dumps(body)))


@st.composite
def items(
    draw: st.DrawFn, machines: tuple[str, ...] = MACHINES, wos: tuple[str, ...] = WOS
) -> list[Any]:
    out: list[Any] = []
    minute = 0.0
    totals: dict[tuple[str, str], int] = {}
    for seq in range(draw(st.integers(1, 60))):
        # Mostly forward, sometimes back (a late report), sometimes days on (forgetting).
        minute += draw(st.sampled_from([0.5, 3, 11, 25, 61, 130, -40, 2 * 1440]))
        wo, machine = draw(st.sampled_from(wos)), draw(st.sampled_from(machines))
        op = draw(st.sampled_from(["", "", "OP10", "OP20"]))
        kind = draw(
            st.sampled_from(
                ["start", "start", "end", "first", "patrol", "last", "parts", "parts", "wo"]
            )
        )
        if kind == "wo":  # its product (named in the run rows) set or changed
            product = draw(st.sampled_from(["P-100", "P-400"]))
            body: dict[str, Any] = {"type": "work_order", "ts": at(minute).isoformat()}
            body |= {"work_order": wo, "order_no": "SO-1", "product": product, "qty": 10}
            out.append(OrderInput("SO-1", parse_event(json.dumps(body))))  # type: ignore[arg-type]
        elif kind in ("start", "end"):
            fields: dict[str, Any] = {"kind": f"wo_{kind}", "work_order": wo}
            out.append(report(seq, minute, machine, fields | ({"operation": op} if op else {})))
        elif kind == "parts":
            totals[wo, machine] = totals.get((wo, machine), 0) + draw(st.integers(0, 7))
            total = totals[wo, machine] - draw(st.sampled_from([0, 0, 0, 2]))  # may go back
            ops = ((op, total, 0),) if op else ()
            out.append(WorkOrderParts("SO-1", wo, machine, us(minute), total, 0, ops))
        else:
            result = draw(st.sampled_from(["pass", "fail"]))
            fields = {"kind": "inspection", "work_order": wo, "stage": kind, "result": result}
            out.append(report(seq, minute, machine, fields | ({"operation": op} if op else {})))
    return out


def forget(steps: Inspections) -> None:
    """Every cache and index the incremental path keeps: derived again from the state."""
    forget_memos(steps)
    steps._tick = None
    steps._min_end = -_NEVER
    steps._made.clear()


@settings(max_examples=50, deadline=None)
@given(
    st.one_of(items(), items(("IM-01",), ("WO-1",))),  # one run's reports, often out of order
    st.integers(1, 8),
    st.booleans(),
    st.booleans(),
)
def test_incremental_rows_are_those_of_a_full_recomputation(
    plant: PlantConfig, xs: list[Any], batch: int, patrol: bool, live: bool
) -> None:
    p = with_policy(
        plant, POLICY if patrol else POLICY.model_copy(update={"patrol_every_minutes": 0})
    )
    fast, full = Inspections(p, lag_s=0), Inspections(p, lag_s=0)
    same = Same()
    for i in range(0, len(xs), batch):
        forget(full)
        same(fast.feed(xs[i : i + batch]), full.feed(xs[i : i + batch]))
        assert fast.wants_clock() == full.wants_clock()
        if live:  # the wall clock moves on between batches (live ticks)
            clock = fast.state.clock + 20 * 60 * 10**6
            forget(full)
            same(fast.tick(clock), full.tick(clock))
    forget(full)
    same(fast.settle(), full.settle())
    assert fast.state == full.state


def test_a_late_total_before_the_start_moves_the_base(plant: PlantConfig) -> None:
    """A parts total from before the run's start that comes after the run was derived (in
    time order: appended) raises the count the run's parts are made from."""
    fast, full = Inspections(with_policy(plant), lag_s=0), Inspections(with_policy(plant), lag_s=0)

    def parts(minute: float, total: int) -> WorkOrderParts:
        return WorkOrderParts("SO-1", "WO-1", "IM-01", us(minute), total, 0)

    start = report(1, 0, "IM-01", {"kind": "wo_start", "work_order": "WO-1"})
    same = Same()
    for batch in ([parts(-10, 5), start], [parts(-5, 8)], [parts(5, 10)], [parts(9, 17)]):
        forget(full)
        same(fast.feed(batch), full.feed(batch))
    assert fast.state.runs == full.state.runs


def test_a_late_patrol_between_two_others_derives_the_patrols_again(plant: PlantConfig) -> None:
    """The patrol slots up to the last patrol are resumed from the last derivation only
    when its patrols begin the new ones: a late patrol between two others changes them."""
    fast, full = Inspections(with_policy(plant), lag_s=0), Inspections(with_policy(plant), lag_s=0)

    def patrol(seq: int, minute: float) -> FloorInput:
        fields = {"kind": "inspection", "work_order": "WO-1", "stage": "patrol", "result": "pass"}
        return report(seq, minute, "IM-01", fields)

    start = report(1, 0, "IM-01", {"kind": "wo_start", "work_order": "WO-1"})
    batches = ([start, patrol(2, 50)], [patrol(3, 250)], [patrol(4, 110)], [patrol(5, 400)])
    same = Same()
    for batch in batches:
        forget(full)
        same(fast.feed(batch), full.feed(batch))


@settings(max_examples=50, deadline=None)
@given(
    st.sampled_from(MACHINES),
    # Minutes from T0 (08:00, Friday): days, then near the shift's and lunch's edges.
    st.builds(
        lambda day, at: day * 1440 + at,
        st.integers(-3, 10),
        st.sampled_from([-31, -30, -29, 0, 120, 209, 210, 211, 269, 270, 271, 660, 689, 690, 691]),
    ),
    st.sampled_from([1, 10, 60, 239, 240, 241, 600, 720, 1440, 3000]),
)
def test_shift_time_within_the_shift_is_the_walk(
    plant: PlantConfig, machine: str, minute: int, span_min: int
) -> None:
    """The shortcut (the span fits in the shift covering t) gives the walk's answer."""
    cal = CalendarIndex(plant.calendar_for(machine), plant.plant.timezone)
    t, span = us(minute), span_min * 60 * 10**6
    assert _shift_time_after(cal, t, span) == _shift_time_walk(cal, t, span)
