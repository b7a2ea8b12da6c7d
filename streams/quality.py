"""Defects, rework, first-pass and final yield (docs/quality.md). Plain Python, no Bytewax.

One `MachineQuality` per machine (the step is keyed by machine: the machine that made the
parts, as the defect and rework reports name it) takes:

- FloorInput(defect): `qty` parts with defect `code` are scrapped or sent to rework;
- FloorInput(rework): `qty` parts came back from rework, good or scrapped;
- FloorInput(inspection): its defect lines are recorded (found in inspection samples) but
  move no part: only a defect report disposes of parts;
- FloorInput(wo_start / wo_end): which work order runs on the machine when, in event time
  (the machine tracker's own timeline: a start begins a work order, the end of the running
  one ends it);
- WorkOrderParts: the parts the machine counted for a work order (absolute, as of t).

The validator also sends each defect-scrap and rework-scrap report to the machine tracker as
a scrap report naming its work order (streams/validate.py), which moves good to scrap on
that work order if it started on the machine by the report's time, else on the one running
then (or none). Per (work order, machine):

    made             = good + scrap the machine counted for the work order
    own scrap        = its scrap − the defect- and rework-scrap reports (of any work order)
                       the tracker moved onto it
    first-time scrap = own scrap + every defect-scrap report of the work order
    sent to rework   = defect reports with disposition rework
    first-pass good  = made − first-time scrap − sent to rework
    rework pending   = sent − reworked good − scrapped after rework (never below 0)
    final good       = first-pass good + reworked good (never above made)
    FPY              = first-pass good / made;  final yield = final good / made

When every report falls while its work order runs, the machine's good for the work order
equals final good + rework pending.

Figures are recomputed from what is held, so the order in which reports, counts and starts
arrive does not change the result. State older than the plant's `max_event_age_days` (no
event of that age is accepted any more) is forgotten.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, NamedTuple

from mesflow.events import (
    DefectReport,
    InspectionReport,
    ReworkReport,
    WorkOrderEndReport,
    WorkOrderStartReport,
)
from mesflow.plant import DefectCode, PlantConfig
from streams.hour_clock import from_us, to_us
from streams.records import FloorInput, WorkOrderParts
from streams.shift_calendar import CalendarIndex

DAY_US = 86_400_000_000


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
class WorkOrderYield:
    """One work order's figures at one machine (picklable)."""

    made: int = 0
    machine_scrap: int = 0
    parts_t: int | None = None  # t of the WorkOrderParts figures taken
    sent: int = 0
    rework_good: int = 0
    # Scrapping reports, (t, qty, after rework): whether the tracker moved them onto this
    # work order depends on what ran at t, known for sure only once all starts are in.
    scrapped: list[tuple[int, int, bool]] = field(default_factory=list)
    operation: str | None = None
    first_t: int | None = None
    last_t: int | None = None

    def seen(self, t: int) -> None:
        if self.first_t is None or t < self.first_t:
            self.first_t = t
        if self.last_t is None or t > self.last_t:
            self.last_t = t


class Figures(NamedTuple):
    made: int
    first_scrap: int
    sent: int
    rework_good: int
    rework_scrap: int
    pending: int
    first_pass_good: int
    final_good: int


def figures(y: WorkOrderYield, applied: int) -> Figures:
    """`applied`: the scrapping reports' parts the tracker moved onto this work order."""
    defect_scrap = sum(q for _t, q, rework in y.scrapped if not rework)
    rework_scrap = sum(q for _t, q, rework in y.scrapped if rework)
    first_scrap = max(y.machine_scrap - applied, 0) + defect_scrap
    made = y.made
    first_pass = max(made - first_scrap - y.sent, 0)
    pending = max(y.sent - y.rework_good - rework_scrap, 0)
    final = min(first_pass + y.rework_good, made)
    return Figures(
        made, first_scrap, y.sent, y.rework_good, rework_scrap, pending, first_pass, final
    )


@dataclass(slots=True)
class MachineQuality:
    """Picklable state of one machine."""

    machine: str
    # wo_start / wo_end in event time: (t, seq, work order, is a start, operation or ""),
    # sorted.
    changes: list[tuple[int, int, str, bool, str]] = field(default_factory=list)
    work_orders: dict[str, WorkOrderYield] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    last_t: int | None = None  # the highest event time seen
    # `changes` as a step function: from times[k] on, running[k] runs (None: nothing).
    times: list[int] = field(default_factory=list)
    running: list[str | None] = field(default_factory=list)
    # Per work order, the parts of scrapping reports (of any work order) the tracker moved
    # onto it: those reported while it ran here. Kept up to date as reports come, recounted
    # when the timeline changes.
    applied: dict[str, int] = field(default_factory=dict)

    def add_change(self, change: tuple[int, int, str, bool, str]) -> None:
        insort(self.changes, change)
        self.reindex()

    def add_scrapped(
        self, wo: str, y: WorkOrderYield, t: int, qty: int, after_rework: bool
    ) -> str | None:
        """Record a scrapping report; the work order the tracker moved its parts onto."""
        y.scrapped.append((t, qty, after_rework))
        onto = self.booked_onto(wo, t)
        if onto is not None:
            self.applied[onto] = self.applied.get(onto, 0) + qty
        return onto

    def reindex(self) -> None:
        # As the machine tracker: a start at t counts from t; an end counts only for the
        # work order running then.
        times: list[int] = []
        running: list[str | None] = []
        now: str | None = None
        for ct, _seq, wo, start, _op in self.changes:
            if start:
                now = wo
            elif now == wo:
                now = None
            if times and times[-1] == ct:
                running[-1] = now
            else:
                times.append(ct)
                running.append(now)
        self.times, self.running = times, running
        applied: dict[str, int] = {}
        for wo, y in self.work_orders.items():
            for t, q, _r in y.scrapped:
                onto = self.booked_onto(wo, t)
                if onto is not None:
                    applied[onto] = applied.get(onto, 0) + q
        self.applied = applied

    def booked_onto(self, wo: str, t: int) -> str | None:
        """As the machine tracker: a scrapping report's parts are its work order's if that
        started here by t, else the work order running at t (or none)."""
        for ct, _seq, w, start, _op in self.changes:
            if ct > t:
                break
            if start and w == wo:
                return wo
        return self.running_at(t)

    def running_at(self, t: int) -> str | None:
        k = bisect_right(self.times, t) - 1
        return self.running[k] if k >= 0 else None


class Quality:
    """The logic of the step: `feed` one machine's inputs, get the rows to store."""

    def __init__(self, plant: PlantConfig) -> None:
        self.plant = plant
        self.paths = defect_paths(plant.defects)
        self.calendars: dict[str, CalendarIndex] = {}
        self.keep_us = round(plant.plant.max_event_age_days * DAY_US)

    def feed(self, state: MachineQuality, items: list[Any]) -> list[Any]:
        out: list[Any] = []
        for x in items:
            t = type(x)
            if t is WorkOrderParts:
                self._parts(state, x)
            elif t is FloorInput:
                out.extend(self._floor(state, x.seq, x.event))
        for wo in sorted(state.dirty):
            if wo in state.work_orders:
                out.append(yield_row(state, wo))
        state.dirty = set()
        self._forget_old(state)
        return out

    # -- internals ---------------------------------------------------------------------------

    def _moved(self, s: MachineQuality, t: int) -> None:
        if s.last_t is None or t > s.last_t:
            s.last_t = t

    def _yield(self, s: MachineQuality, wo: str) -> WorkOrderYield:
        y = s.work_orders.get(wo)
        if y is None:
            y = s.work_orders[wo] = WorkOrderYield()
        s.dirty.add(wo)
        return y

    def _parts(self, s: MachineQuality, x: WorkOrderParts) -> None:
        y = self._yield(s, x.work_order)
        if y.parts_t is not None and x.t < y.parts_t:
            return  # an older figure than the one held (absolute counts: the latest wins)
        y.parts_t = x.t
        y.made = x.good_total + x.scrap_total
        y.machine_scrap = x.scrap_total
        named = [op for op, _g, _s in getattr(x, "ops", ()) if op]
        if len(named) == 1 and y.operation is None:  # one routing step ran here: name it
            y.operation = named[0]
        y.seen(x.t)
        self._moved(s, x.t)

    def _floor(self, s: MachineQuality, seq: int, ev: Any) -> list[QualityRecord]:
        te = type(ev)
        t = to_us(ev.ts)
        self._moved(s, t)
        if te is WorkOrderStartReport or te is WorkOrderEndReport:
            start = te is WorkOrderStartReport
            s.add_change((t, seq, ev.work_order, start, (start and ev.operation) or ""))
            # Which reports the tracker moved onto which work order may change: all rows.
            s.dirty.update(s.work_orders)
            y = s.work_orders.get(ev.work_order)
            if start and ev.operation and y is not None and y.operation is None:
                y.operation = ev.operation
                s.dirty.add(ev.work_order)
            return []
        if te is InspectionReport:
            # Defects found in the sample: recorded, no part moves (docs/quality.md).
            return [
                self._record(s, seq, i, ev, "inspection", d.code, d.qty, "found")
                for i, d in enumerate(ev.defects)
            ]
        if te is DefectReport:
            y = self._report(s, ev, t)
            if ev.disposition == "scrap":
                self._moved_onto(s, s.add_scrapped(ev.work_order, y, t, ev.qty, False))
            else:
                y.sent += ev.qty
            return [self._record(s, seq, 0, ev, "defect", ev.code, ev.qty, ev.disposition)]
        if te is ReworkReport:
            y = self._report(s, ev, t)
            if ev.outcome == "good":
                y.rework_good += ev.qty
            else:
                self._moved_onto(s, s.add_scrapped(ev.work_order, y, t, ev.qty, True))
            return [self._record(s, seq, 0, ev, "rework", ev.code, ev.qty, ev.outcome)]
        return []  # sign-in/out: not ours

    def _report(self, s: MachineQuality, ev: DefectReport | ReworkReport, t: int) -> WorkOrderYield:
        y = self._yield(s, ev.work_order)
        if ev.operation:
            y.operation = ev.operation
        elif y.operation is None:  # the operation its last start here named
            named = [c[4] for c in s.changes if c[2] == ev.work_order and c[3] and c[4]]
            y.operation = named[-1] if named else None
        y.seen(t)
        return y

    def _moved_onto(self, s: MachineQuality, wo: str | None) -> None:
        # The tracker moved these parts onto what ran then, maybe another work order.
        if wo is not None and wo in s.work_orders:
            s.dirty.add(wo)

    def _record(
        self,
        s: MachineQuality,
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
        y = s.work_orders.get(ev.work_order)
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
            ev.operation or (y.operation if y is not None else None),
            None,  # the product: the views take the work order's (sql/033_quality.sql)
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

    def _forget_old(self, s: MachineQuality) -> None:
        """Work orders idle for longer than any event may be late, and the starts before
        them (but the last, which says what ran then), leave the state."""
        if s.last_t is None:
            return
        horizon = s.last_t - self.keep_us
        old = [w for w, y in s.work_orders.items() if y.last_t is not None and y.last_t < horizon]
        for w in old:
            del s.work_orders[w]
        # Starts still needed to place a kept report in time stay (a long work order).
        keep_from = min(
            [horizon, *(y.first_t for y in s.work_orders.values() if y.first_t is not None)]
        )
        pruned = False
        if s.changes and s.changes[0][0] < keep_from:
            older = [c for c in s.changes if c[0] < keep_from]
            if len(older) > 1:
                s.changes = older[-1:] + [c for c in s.changes if c[0] >= keep_from]
                pruned = True
        if old or pruned:
            s.reindex()


def yield_row(s: MachineQuality, wo: str) -> YieldRow:
    y = s.work_orders[wo]
    f = figures(y, s.applied.get(wo, 0))
    first = y.first_t if y.first_t is not None else 0
    last = y.last_t if y.last_t is not None else first
    return YieldRow(
        wo,
        s.machine,
        y.operation,
        None,  # the product: the views take the work order's
        f.made,
        f.first_scrap,
        f.sent,
        f.rework_good,
        f.rework_scrap,
        f.pending,
        f.first_pass_good,
        f.final_good,
        from_us(first),
        from_us(last),
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


def machine_of(x: Any) -> str | None:
    """The step's key for an input it takes, else None (not a quality input)."""
    t = type(x)
    if t is WorkOrderParts:
        return str(x.machine)
    if t is FloorInput and type(x.event) in _FLOOR:
        return str(x.event.machine)
    return None


_FLOOR = frozenset(
    {DefectReport, ReworkReport, InspectionReport, WorkOrderStartReport, WorkOrderEndReport}
)
