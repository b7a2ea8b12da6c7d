"""The dataflow, wired: ingest log -> validate -> per-machine trackers -> PostgreSQL.

This is the only module that knows Bytewax operators; the logic lives in
streams/validate.py and streams/machine_tracker.py. Reads top to bottom:

    ingest_log ─► validate ─┬─► by machine ─► machine trackers ─┐
                            └─► rejections, progress ───────────┴─► results sink
"""

from __future__ import annotations

import pickle
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from mesflow.events import MachineEvent, WorkOrderEvent
from mesflow.plant import PlantConfig
from streams.machine_tracker import MachineSpec, MachineTracker, Row
from streams.records import Rejection
from streams.validate import Validator

Keyed = tuple[int, MachineEvent | WorkOrderEvent]
Out = Row | Rejection


class MachineLogic(StatefulBatchLogic[Keyed, list[Out], bytes]):
    """Bytewax adapter around one machine's MachineTracker."""

    def __init__(self, resume: bytes | None, plant: PlantConfig) -> None:
        # Bytewax hands the builder only the resume state, not the key: a new tracker is
        # made on the first batch, whose events name the machine.
        self.tracker: MachineTracker | None = pickle.loads(resume) if resume else None
        self.plant = plant

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
        rows: list[Out] = [*tracker.flush(), *rejected]
        return [rows], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        # Pickled here: an immutable copy, as Bytewax requires, cheaper than a deepcopy.
        return pickle.dumps(self.tracker, protocol=pickle.HIGHEST_PROTOCOL)


def build_flow(plant: PlantConfig, source: Source[Any], sink: Sink[Any]) -> Dataflow:
    flow = Dataflow("mesflow_machines")
    entries = op.input("ingest_log", flow, source)
    checked = op.flat_map_batch("validate", entries, Validator(plant))
    split = op.branch("machine_events", checked, lambda x: type(x) is tuple)
    trackers = op.stateful_batch(
        "machines", split.trues, lambda resume: MachineLogic(resume, plant)
    )
    rows = op.flat_map("rows", trackers, lambda kv: kv[1])
    results = op.merge("all_results", rows, split.falses)
    # One sink partition: every row goes to it, in order.
    op.output("results", op.map("to_sink", results, lambda row: ("results", row)), sink)
    return flow
