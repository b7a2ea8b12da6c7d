"""Routings: a work order's operations in order, and which operation a machine's parts are.

Plain Python, no Bytewax and no I/O (docs/routings.md). A work order's routing comes with
its `work_order` event (`routing`, from the CRM/ERP), else from the plant file's routing of
its product, else it has none (its progress is then all its parts, as before routings).

The machine trackers attribute parts to the operation a `wo_start` names explicitly (or to
"" when it names none); which routing step "" means is decided here, when the routing is
known, so that a work-order event arriving after its parts changes nothing but the answer:

  explicit operation in the routing  ->  that step
  else the (first) step listing the machine  ->  that step
  else  ->  the first step
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import NamedTuple

from mesflow.events import RoutingStep
from mesflow.plant import PlantConfig


class Step(NamedTuple):
    """One operation of a resolved routing (small and picklable: it is snapshotted)."""

    op: str
    name: str | None
    machines: tuple[str, ...]  # (): any machine
    ideal_cycle_seconds: float | None


Route = tuple[Step, ...]


def from_event(steps: Iterable[RoutingStep]) -> Route:
    return tuple(Step(s.op, s.name, tuple(s.machines), s.ideal_cycle_seconds) for s in steps)


def plant_routes(plant: PlantConfig) -> dict[str, Route]:
    """Product -> its routing from the plant file. A step's name is its English name
    (the boards show the plant file's zh/en names themselves)."""
    return {
        product: tuple(
            Step(o.op, o.name.en if o.name else None, tuple(o.machines), o.ideal_cycle_seconds)
            for o in r.operations
        )
        for product, r in plant.routings_by_product.items()
    }


def route_of(
    event_routing: Iterable[RoutingStep] | None,
    product: str | None,
    plant_routes: Mapping[str, Route],
) -> Route | None:
    """A work order's routing: its own (from the event), else its product's, else None."""
    if event_routing is not None:
        own = from_event(event_routing)
        if own:
            return own
    if product is not None:
        return plant_routes.get(product)
    return None


def op_for(route: Route, operation: str, machine: str) -> str:
    """The routing step that parts made on `machine` under a wo_start naming `operation`
    ("" = none) belong to. An operation not in the routing is treated as unnamed."""
    if operation and any(s.op == operation for s in route):
        return operation
    for s in route:
        if machine in s.machines:
            return s.op
    return route[0].op


class OpFigures(NamedTuple):
    """One operation of a work order: what went in, came out good, was scrapped."""

    position: int  # 1-based place in the routing
    op: str
    name: str | None
    machines: tuple[str, ...]  # the machines that made its parts (else the routing's list)
    ideal_cycle_seconds: float | None
    qty_in: int
    good: int
    scrap: int
    wip_before: int  # good of the previous operation not yet processed here
    status: str  # not_started | running | done
    first_t: int | None  # us: its first start or first part
    last_t: int | None  # us: its latest figure


class OpInput(NamedTuple):
    """What one machine did for one routing step (absolute, as of t)."""

    op: str
    machine: str
    good: int
    scrap: int
    first_t: int | None
    last_t: int | None


def op_figures(route: Route, done: Iterable[OpInput], qty: int | None) -> list[OpFigures]:
    """Per step: qty_in (step 1: good + scrap made there; step k: good out of step k-1),
    good, scrap, WIP waiting before it, status. Quantities never go negative: a step that
    reports more than it received (parts taken from stock, counting slips) shows WIP 0."""
    by_op: dict[str, list[OpInput]] = {}
    for d in done:
        mine = by_op.get(d.op)
        if mine is None:
            by_op[d.op] = [d]
        else:
            mine.append(d)
    out: list[OpFigures] = []
    prev_good: int | None = None
    # The order step derives these after every change of a routed work order: one pass
    # over a step's inputs (most steps have one machine or none).
    for i, s in enumerate(route, start=1):
        mine = by_op.get(s.op)
        if mine is None:
            good = scrap = 0
            first = last = None
            machines = s.machines
        elif len(mine) == 1:
            d = mine[0]
            good, scrap, first, last = d.good, d.scrap, d.first_t, d.last_t
            machines = (d.machine,)
        else:
            good = scrap = 0
            first = last = None
            for d in mine:
                good += d.good
                scrap += d.scrap
                if d.first_t is not None and (first is None or d.first_t < first):
                    first = d.first_t
                if d.last_t is not None and (last is None or d.last_t > last):
                    last = d.last_t
            machines = tuple(sorted({d.machine for d in mine}))
        if prev_good is None:
            qty_in, wip = good + scrap, 0
        else:
            qty_in, wip = prev_good, max(prev_good - good - scrap, 0)
        if qty is not None and good >= qty > 0:
            status = "done"
        elif mine:
            status = "running"
        else:
            status = "not_started"
        fields = (
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
            first,
            last,
        )
        out.append(tuple.__new__(OpFigures, fields))  # NamedTuple's __new__: a Python call
        prev_good = good
    return out


class OperationSetRow(NamedTuple):
    """All operations of one routed work order (table work_order_operation): stored whole,
    so that a step dropped from a changed routing disappears (streams/routing_store.py)."""

    work_order: str
    order_no: str
    product: str | None
    qty: int | None
    ops: tuple[OpFigures, ...]
    last_event_ts: datetime
