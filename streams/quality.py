"""Defects, rework, first-pass and final yield (docs/quality.md). Plain Python, no Bytewax.

One `WorkOrderQuality` per work order (the step is keyed by work order) takes:

- FloorInput(defect): `qty` parts with defect `code` are scrapped or sent to rework;
- FloorInput(rework): `qty` parts came back from rework, good or scrapped;
- FloorInput(inspection): its defect lines are recorded (found in inspection samples) but
  move no part: only a defect report disposes of parts;
- FloorInput(wo_start): the operation that runs at the machine (a column of the yield row);
- WorkOrderParts: the parts the machine counted for the work order (absolute, as of t).
  The machine tracker has already moved defect-scrap and rework-scrap from good to scrap
  there (streams/validate.py sends each as a scrap report), so its scrap includes both;
- OrderInput(WorkOrderEvent): the work order's product.

Per (work order, machine), where `machine` is where the parts were made:

    made             = good + scrap the machine counted for the work order
    first-time scrap = the machine's scrap − scrapped after rework
                       (at least the defect reports' scrap, when the machine count lags)
    sent to rework   = defect reports with disposition rework
    first-pass good  = made − first-time scrap − sent to rework
    rework pending   = sent − reworked good − scrapped after rework (never below 0)
    final good       = first-pass good + reworked good (never above made)
    FPY              = first-pass good / made;  final yield = final good / made

So the machine's good (what the tracker shows) equals final good + rework pending.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, NamedTuple

from mesflow.events import (
    DefectReport,
    InspectionReport,
    ReworkReport,
    WorkOrderEvent,
    WorkOrderStartReport,
)
from mesflow.plant import DefectCode, PlantConfig
from streams.hour_clock import from_us, to_us
from streams.records import FloorInput, WorkOrderParts
from streams.shift_calendar import CalendarIndex
from streams.validate import OrderInput


class QualityRecord(NamedTuple):
    """One defect or rework line as reported (table quality_record, key (seq, line)).

    kind: `defect` (disposition scrap|rework), `inspection` (a defect found in an inspection
    sample: disposition `found`, moves nothing) or `rework` (disposition good|scrap, the
    outcome)."""

    seq: int
    line: int  # the defect line of an inspection report; 0 otherwise
    ts: datetime
    day: date  # plant-local date of the machine's shift at ts, else of ts itself
    shift_name: str | None
    kind: str
    code: str | None
    code_path: tuple[str, ...]  # root .. code in the defect tree (the code alone if unknown)
    qty: int
    disposition: str
    machine: str
    work_order: str
    operation: str | None
    product: str | None  # as known when reported (the views prefer the work order's)
    operator: str | None


class YieldRow(NamedTuple):
    """A work order's yield at one machine (table quality_yield, key (work_order, machine))."""

    work_order: str
    machine: str
    operation: str | None
    product: str | None
    made: int
    first_scrap: int
    sent_to_rework: int
    rework_good: int
    rework_scrap: int
    rework_pending: int
    first_pass_good: int
    final_good: int
    first_ts: datetime  # event time of the first figure, and of the latest
    last_ts: datetime


@dataclass(slots=True)
class MachineYield:
    made: int = 0
    machine_scrap: int = 0
    parts_t: int | None = None  # t of the WorkOrderParts figures taken
    defect_scrap: int = 0
    sent: int = 0
    rework_good: int = 0
    rework_scrap: int = 0
    operation: str | None = None
    first_t: int | None = None
    last_t: int | None = None

    def seen(self, t: int) -> None:
        if self.first_t is None or t < self.first_t:
            self.first_t = t
        if self.last_t is None or t > self.last_t:
            self.last_t = t

    def figures(self) -> tuple[int, int, int, int, int]:
        """(first-time scrap, first-pass good, pending, final good, made)."""
        first_scrap = max(self.machine_scrap - self.rework_scrap, self.defect_scrap, 0)
        made = self.made
        first_pass = max(made - first_scrap - self.sent, 0)
        pending = max(self.sent - self.rework_good - self.rework_scrap, 0)
        final = min(first_pass + self.rework_good, made)
        return first_scrap, first_pass, pending, final, made


@dataclass(slots=True)
class WorkOrderQuality:
    """Picklable state of one work order."""

    work_order: str
    product: str | None = None
    machines: dict[str, MachineYield] = field(default_factory=dict)
    ops: dict[str, str | None] = field(default_factory=dict)  # machine -> op of its wo_start
    dirty: set[str] = field(default_factory=set)


class Quality:
    """The logic of the step: `feed` one work order's inputs, get the rows to store."""

    def __init__(self, plant: PlantConfig) -> None:
        self.plant = plant
        self.paths = defect_paths(plant.defects)
        self.calendars: dict[str, CalendarIndex] = {}

    def feed(self, state: WorkOrderQuality, items: list[Any]) -> list[Any]:
        out: list[Any] = []
        for x in items:
            t = type(x)
            if t is WorkOrderParts:
                self._parts(state, x)
            elif t is OrderInput:
                ev = x.event
                if type(ev) is WorkOrderEvent and ev.product != state.product:
                    state.product = ev.product
                    state.dirty.update(state.machines)  # the yield rows name it
            elif t is FloorInput:
                out.extend(self._floor(state, x.seq, x.event))
        for m in sorted(state.dirty):
            out.append(yield_row(state, m))
        state.dirty = set()
        return out

    # -- internals ---------------------------------------------------------------------------

    def _parts(self, s: WorkOrderQuality, x: WorkOrderParts) -> None:
        y = s.machines.get(x.machine)
        if y is None:
            y = s.machines[x.machine] = MachineYield(operation=s.ops.get(x.machine))
        if y.parts_t is not None and x.t < y.parts_t:
            return  # an older figure than the one held (absolute counts: the latest wins)
        y.parts_t = x.t
        y.made = x.good_total + x.scrap_total
        y.machine_scrap = x.scrap_total
        named = [op for op, _g, _s in getattr(x, "ops", ()) if op]
        if len(named) == 1 and y.operation is None:  # one routing step ran here: name it
            y.operation = named[0]
        y.seen(x.t)
        s.dirty.add(x.machine)

    def _floor(self, s: WorkOrderQuality, seq: int, ev: Any) -> list[QualityRecord]:
        te = type(ev)
        if te is WorkOrderStartReport:
            s.ops[ev.machine] = ev.operation
            y = s.machines.get(ev.machine)
            if y is not None and ev.operation and y.operation != ev.operation:
                y.operation = ev.operation
                s.dirty.add(ev.machine)
            return []
        if te is InspectionReport:
            # Defects found in the sample: recorded, no part moves (docs/quality.md).
            return [
                self._record(s, seq, i, ev, "inspection", d.code, d.qty, "found")
                for i, d in enumerate(ev.defects)
            ]
        if te is DefectReport:
            y = self._machine(s, ev)
            if ev.disposition == "scrap":
                y.defect_scrap += ev.qty
            else:
                y.sent += ev.qty
            return [self._record(s, seq, 0, ev, "defect", ev.code, ev.qty, ev.disposition)]
        if te is ReworkReport:
            y = self._machine(s, ev)
            if ev.outcome == "good":
                y.rework_good += ev.qty
            else:
                y.rework_scrap += ev.qty
            return [self._record(s, seq, 0, ev, "rework", ev.code, ev.qty, ev.outcome)]
        return []  # wo_end, sign-in/out: not ours

    def _machine(self, s: WorkOrderQuality, ev: DefectReport | ReworkReport) -> MachineYield:
        y = s.machines.get(ev.machine)
        if y is None:
            y = s.machines[ev.machine] = MachineYield(operation=s.ops.get(ev.machine))
        if ev.operation:
            y.operation = ev.operation
        y.seen(to_us(ev.ts))
        s.dirty.add(ev.machine)
        return y

    def _record(
        self,
        s: WorkOrderQuality,
        seq: int,
        line: int,
        ev: Any,
        kind: str,
        code: str | None,
        qty: int,
        disposition: str,
    ) -> QualityRecord:
        t = to_us(ev.ts)
        day, shift = self._shift(ev.machine, t)
        path = self.paths.get(code, (code,)) if code is not None else ()
        return QualityRecord(
            seq,
            line,
            from_us(t),
            day,
            shift,
            kind,
            code,
            path,
            qty,
            disposition,
            ev.machine,
            ev.work_order,
            ev.operation or s.ops.get(ev.machine),
            s.product,
            ev.operator,
        )

    def _shift(self, machine: str, t: int) -> tuple[date, str | None]:
        cal = self.calendars.get(machine)
        if cal is None and machine in self.plant.machines:
            cal = self.calendars[machine] = CalendarIndex(
                self.plant.calendar_for(machine), self.plant.plant.timezone
            )
        inst = cal.shift_at(t) if cal is not None else None
        if inst is not None:
            return inst.date, inst.name
        return from_us(t).astimezone(self.plant.tz).date(), None


def yield_row(s: WorkOrderQuality, machine: str) -> YieldRow:
    y = s.machines[machine]
    first_scrap, first_pass, pending, final, made = y.figures()
    assert y.first_t is not None and y.last_t is not None
    return YieldRow(
        s.work_order,
        machine,
        y.operation,
        s.product,
        made,
        first_scrap,
        y.sent,
        y.rework_good,
        y.rework_scrap,
        pending,
        first_pass,
        final,
        from_us(y.first_t),
        from_us(y.last_t),
    )


def defect_paths(tree: list[DefectCode]) -> dict[str, tuple[str, ...]]:
    """Each code's chain from its root to itself, for a roll-up of the tree."""
    out: dict[str, tuple[str, ...]] = {}

    def walk(nodes: list[DefectCode], above: tuple[str, ...]) -> None:
        for n in nodes:
            out[n.code] = (*above, n.code)
            walk(n.children, out[n.code])

    walk(tree, ())
    return out


def work_order_of(x: Any) -> str | None:
    """The step's key for an input it takes, else None (not a quality input)."""
    t = type(x)
    if t is WorkOrderParts:
        return str(x.work_order)
    if t is FloorInput:
        te = type(x.event)
        if te in _FLOOR:
            return str(x.event.work_order)
        return None
    if t is OrderInput and type(x.event) is WorkOrderEvent:
        return str(x.event.work_order)
    return None


_FLOOR = frozenset({DefectReport, ReworkReport, InspectionReport, WorkOrderStartReport})
