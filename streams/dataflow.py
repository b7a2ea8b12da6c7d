"""The dataflow, wired: ingest log -> validate -> per-machine trackers -> PostgreSQL.

This is the only module that knows Bytewax operators; the logic lives in
streams/validate.py and streams/machine_tracker.py. Reads top to bottom:

    ingest_log ─► validate ─┬─► by machine ─► machine trackers ─┬─► rows ───────────────┐
                            ├─► orders, work orders ─┐           └─► work-order parts ─┐ │
                            │                        └─► by order ─► order progress ◄──┘ │
                            │                                           └─► rows, callbacks ┤
                            └─► rejections, progress ──────────────────────────────────────┴─► results sink
"""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from mesflow.events import MachineEvent, OrderEvent, WorkOrderEvent
from mesflow.plant import PlantConfig
from streams.machine_tracker import MachineSpec, MachineTracker, Row
from streams.order_progress import IdealCycles, OrderProgress, OrderRow
from streams.records import Rejection, WorkOrderParts, WorkOrderStarted
from streams.validate import OrderInput, Validator

Keyed = tuple[int, MachineEvent | WorkOrderEvent]
Out = Row | Rejection


class MachineLogic(StatefulBatchLogic[Keyed, list[Out], bytes]):
    """Bytewax adapter around one machine's MachineTracker."""

    def __init__(
        self, resume: bytes | None, plant: PlantConfig, throttle: timedelta | None
    ) -> None:
        # Bytewax hands the builder only the resume state, not the key: a new tracker is
        # made on the first batch, whose events name the machine.
        self.tracker: MachineTracker | None = pickle.loads(resume) if resume else None
        self.plant = plant
        self.throttle = throttle
        self.next_full: datetime | None = None  # wall clock: when figures are due

    def on_batch(self, values: list[Keyed]) -> tuple[list[list[Out]], bool]:
        tracker = self.tracker
        if tracker is None:
            machine = values[0][1].machine
            assert machine is not None  # the validator keys every event by its machine
            tracker = self.tracker = MachineTracker(MachineSpec.from_plant(self.plant, machine))
        rejected: list[Out] = []
        for seq, ev in values:
            r = tracker.apply(seq, ev)
            if r is not None:
                rejected.append(r)
        full = True
        if self.throttle is not None:
            # Live: intervals and status go out at once; the hour, shift and work-order
            # figures at most once per `throttle` (the timer below sends what is left).
            now = datetime.now(UTC)
            if self.next_full is not None and now < self.next_full:
                full = False
            else:
                self.next_full = now + self.throttle
        rows: list[Out] = [*tracker.flush(full), *rejected]
        return [rows], StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.tracker is not None and self.tracker.has_pending():
            return self.next_full
        return None

    def on_notify(self) -> tuple[list[list[Out]], bool]:
        assert self.tracker is not None
        self.next_full = None
        return [list(self.tracker.flush())], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[list[Out]], bool]:
        if self.tracker is None:
            return [], StatefulBatchLogic.RETAIN
        return [list(self.tracker.flush())], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        # Pickled here: an immutable copy, as Bytewax requires, cheaper than a deepcopy.
        return pickle.dumps(self.tracker, protocol=pickle.HIGHEST_PROTOCOL)


class OrderLogic(StatefulBatchLogic[Any, list[OrderRow], bytes]):
    """Bytewax adapter around one CRM order's OrderProgress."""

    def __init__(self, resume: bytes | None, ideal: IdealCycles) -> None:
        self.progress: OrderProgress | None = pickle.loads(resume) if resume else None
        self.ideal = ideal

    def on_batch(self, values: list[Any]) -> tuple[list[list[OrderRow]], bool]:
        p = self.progress
        if p is None:
            p = self.progress = OrderProgress(values[0].order_no, self.ideal)
        for x in values:
            if type(x) is WorkOrderParts:
                p.on_parts(x.work_order, x.machine, x.t, x.good_total, x.scrap_total)
            elif type(x) is WorkOrderStarted:
                p.on_wo_started(x.work_order, x.machine, x.t)
            elif isinstance(x.event, OrderEvent):
                p.on_order(x.event)
            else:
                p.on_work_order(x.event)
        return [p.flush()], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.progress, protocol=pickle.HIGHEST_PROTOCOL)


_TO_ORDERS = (OrderInput, WorkOrderParts, WorkOrderStarted)


def _order_no(x: Any) -> str:
    # Only OrderInput, WorkOrderParts and WorkOrderStarted reach here (see _TO_ORDERS).
    return str(x.order_no)


def build_flow(
    plant: PlantConfig,
    source: Source[Any],
    sink: Sink[Any],
    figures_every: timedelta | None = None,
) -> Dataflow:
    """The dataflow. `figures_every` (live) limits how often a machine's figures are
    rewritten; None (replay) writes them after every batch."""
    ideal = IdealCycles.from_plant(plant)
    flow = Dataflow("mesflow")
    entries = op.input("ingest_log", flow, source)
    checked = op.flat_map_batch("validate", entries, Validator(plant))
    split = op.branch("machine_events", checked, lambda x: type(x) is tuple)
    trackers = op.stateful_batch(
        "machines", split.trues, lambda resume: MachineLogic(resume, plant, figures_every)
    )
    machine_rows = op.flat_map("machine_rows", trackers, lambda kv: kv[1])
    # Orders join CRM snapshots, work orders and the parts the machines counted for them.
    rest = op.merge("machine_rows_and_rest", machine_rows, split.falses)
    to_orders = op.branch("order_inputs", rest, lambda x: type(x) in _TO_ORDERS)
    orders = op.stateful_batch(
        "orders",
        op.key_on("by_order", to_orders.trues, _order_no),
        lambda resume: OrderLogic(resume, ideal),
    )
    order_rows = op.flat_map("order_rows", orders, lambda kv: kv[1])
    results = op.merge("all_results", order_rows, to_orders.falses)
    # One sink partition: every row goes to it, in order.
    op.output("results", op.map("to_sink", results, lambda row: ("results", row)), sink)
    return flow
