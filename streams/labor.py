"""People at stations: who is signed in where, and labor time per person, work order and
operation (docs/labor.md). Pure: no Bytewax, no I/O; streams/labor_flow.py wires it.

One state for the plant (sign-ins are rare). Its inputs, in log order:

- `sign_in` / `sign_out` reports: a person starts / stops being at a station;
- `wo_start` / `wo_end` reports (the validator's FloorInput copies): which work order and
  operation run at each station; a `wo_start` ends the station's previous work order;
- work-order events (OrderInput): their routing, to name the operation of a `wo_start`
  as streams/routing.py does for its parts (explicit, else the step listing the station,
  else the first step). A routing that arrives after the wo_start does not rename it.

Labor segments. A person's open time at a station is a *piece*. A piece is cut (its
segment closed, a new one opened at the same instant) at: a sign-in or sign-out of that
person anywhere (their number of stations k changes, and each piece books 1/k of the
time, so a person's total is their attendance); a work-order change at the station; a
shift boundary of the station's calendar (or local midnight outside shifts); and the
sign-in's expiry after `labor.max_sign_in_hours` (a forgotten sign-out). A segment row is
keyed by (person, station, start): the same events give the same rows, so replays and
restarts rewrite them with the same values.

Time order. Each person has a clock (booked up to); each station a work-order clock. An
event older than its clock takes effect at the clock (booked time is never rewritten) and
a person's own late sign-in/out is recorded as a `late` issue. Every report moves every
person's bookings up to its time (`tick`: cuts at shift boundaries and expiries, nothing
else), and live a timer does so with the wall clock minus the allowed lateness, so a
forgotten sign-out expires without new events from that person.

Oddities are no dead letters but `LaborIssue` rows: a sign-in where the person already is
(`duplicate_sign_in`, ignored), a sign-out without sign-in (`sign_out_without_sign_in`, a
no-op), a forgotten sign-out closed by expiry (`expired`), a late report (`late`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from mesflow.events import (
    SignInReport,
    SignOutReport,
    WorkOrderEndReport,
    WorkOrderEvent,
    WorkOrderStartReport,
)
from mesflow.plant import PlantConfig
from streams.hour_clock import from_us, to_us
from streams.records import FloorInput
from streams.routing import Route, op_for, plant_routes, route_of
from streams.shift_calendar import CalendarIndex
from streams.validate import OrderInput

HOUR_US = 3_600_000_000
_DAY_US = 24 * HOUR_US
NO_SHIFT = ""  # shift_name of time outside every shift (cut at local midnight)
NEVER = 2**63  # a person signed in nowhere has no next cut


# -- rows --------------------------------------------------------------------------------------


class LaborSegment(NamedTuple):
    """A person's time at a station, [start, end) (end None: still open, at most `bound`),
    booked with `share` (1/k at k stations at once) to one work order, operation and shift."""

    person: str
    station: str
    start: datetime
    end: datetime | None
    bound: datetime  # where this segment will be cut at the latest (shift end, expiry)
    work_order: str  # "" : no work order running at the station
    operation: str  # "" : none known
    shift_date: date
    shift_name: str  # NO_SHIFT outside shifts
    share: float
    closed_by: str  # open | sign_out | share (k changed) | wo | shift | expired


class StationPresence(NamedTuple):
    """Who is signed in at a station now (`present` False: the row is deleted)."""

    station: str
    person: str
    since: datetime
    sign_in_seq: int
    work_order: str
    operation: str
    share: float
    present: bool


class LaborIssue(NamedTuple):
    """An odd labor report, kept visible instead of dead-lettered (keyed by seq, kind)."""

    seq: int
    kind: str  # duplicate_sign_in | sign_out_without_sign_in | expired | late
    station: str
    person: str
    ts: datetime  # the event's time (expired: the expiry)
    applied: datetime  # when it took effect


LaborRow = LaborSegment | StationPresence | LaborIssue


# -- state (pickled in the dataflow's snapshots) -----------------------------------------------


@dataclass
class Piece:
    """A person's open time at one station."""

    start: int  # us: the open segment's start
    since: int  # us: the sign-in
    seq: int  # ingest-log seq of the sign-in
    work_order: str
    operation: str
    # Of the open segment, computed once when it starts (`Labor._place`): its shift, and
    # where it is cut at the latest (shift end or expiry), so that moving everyone's
    # bookings on at each report compares integers only.
    shift_date: date = date.min
    shift_name: str = NO_SHIFT
    bound: int = 0
    expires: bool = False


@dataclass
class Person:
    # us: booked up to here. Kept after the last sign-out too, so a late sign-in cannot
    # book time twice (a plant has a few hundred people: the state stays small).
    clock: int
    pieces: dict[str, Piece] = field(default_factory=dict)
    next_cut: int = NEVER  # us: the earliest bound of its pieces


@dataclass
class Run:
    work_order: str
    operation: str


@dataclass
class LaborState:
    people: dict[str, Person] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)  # station -> running work order
    run_clock: dict[str, int] = field(default_factory=dict)  # station -> last WO change, us
    # work order -> its routing (streams/routing.py): names a wo_start's operation.
    routings: dict[str, Route] = field(default_factory=dict)


_UNKNOWN = -(2**63)  # below every time in us

# -- shifts --------------------------------------------------------------------------------------


class Slot(NamedTuple):
    shift_date: date
    shift_name: str
    end: int  # us: the next boundary


class Calendars:
    """Per station: the shift (or the off-shift local day) an instant falls in."""

    def __init__(self, plant: PlantConfig) -> None:
        self.plant = plant
        self.tz = ZoneInfo(plant.plant.timezone)
        self._index: dict[str, CalendarIndex] = {}

    def _cal(self, station: str) -> CalendarIndex | None:
        cal = self._index.get(station)
        if cal is None and station in self.plant.machines:
            cal = self._index[station] = CalendarIndex(
                self.plant.calendar_for(station), self.plant.plant.timezone
            )
        return cal

    def slot(self, station: str, t: int) -> Slot:
        local = from_us(t).astimezone(self.tz)
        # Local midnight after t (zoneinfo, fold 0, as the shift calendar does).
        midnight = to_us(
            datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=self.tz)
        )
        cal = self._cal(station)
        if cal is None:  # not in the plant model (the validator refuses these): days only
            return Slot(local.date(), NO_SHIFT, midnight)
        inst = cal.shift_at(t)
        if inst is not None:
            return Slot(inst.date, inst.name, inst.end)
        nxt = min((i.start for i in cal.shifts_between(t, t + 2 * _DAY_US) if i.start > t),
                  default=midnight)  # fmt: skip
        return Slot(local.date(), NO_SHIFT, min(nxt, midnight))


# -- the logic -------------------------------------------------------------------------------


class Labor:
    """The plant's labor bookings. `on_event` takes validated inputs in log order (the
    events of FloorInput with their seq, and work-order events); `take` hands out the rows
    since the last call, reduced to the last one per key (what the sink keeps anyway)."""

    def __init__(self, plant: PlantConfig, state: LaborState | None = None) -> None:
        self.state = state if state is not None else LaborState()
        self.cal = Calendars(plant)
        self.max_us = int(plant.labor.max_sign_in_hours * HOUR_US)
        self.plant_routes = plant_routes(plant)
        self._out: dict[tuple[Any, ...], LaborRow] = {}
        # At most every person's next cut (not state: unknown, so asked, after a restart).
        # Each floor report moves everyone's bookings on (tick): most find nothing due.
        self._soonest = _UNKNOWN

    # -- inputs ----------------------------------------------------------------------------

    def on_event(self, seq: int, ev: Any) -> None:
        t = type(ev)
        if t is not WorkOrderEvent:
            # Every floor report moves everyone's bookings to its time: a forgotten
            # sign-out expires in a replay too, without a timer (people are few).
            self.tick(to_us(ev.ts))
        if t is SignInReport:
            self._sign_in(seq, ev.operator, ev.machine, to_us(ev.ts))
        elif t is SignOutReport:
            self._sign_out(seq, ev.operator, ev.machine, to_us(ev.ts))
        elif t is WorkOrderStartReport:
            op = self._op(ev.work_order, ev.operation, ev.machine)
            self._run(ev.machine, Run(ev.work_order, op), to_us(ev.ts))
        elif t is WorkOrderEndReport:
            run = self.state.runs.get(ev.machine)
            # Ending a work order that is not running here changes nothing (as the tracker).
            if (
                run is not None
                and run.work_order == ev.work_order
                and ev.operation in (None, run.operation)
            ):
                self._run(ev.machine, None, to_us(ev.ts))
        elif t is WorkOrderEvent:
            self._routing(ev)

    def tick(self, t: int) -> None:
        """Book every open piece up to `t`: cuts at shift boundaries and expiries <= t."""
        if t < self._soonest:
            return
        people = self.state.people
        for name, p in people.items():
            if p.next_cut <= t:  # people are independent: any order gives the same rows
                self._advance(name, t, move_clock=False)
        self._soonest = min((p.next_cut for p in people.values()), default=NEVER)

    def anyone_signed_in(self) -> bool:
        return any(p.next_cut < NEVER for p in self.state.people.values())

    def take(self) -> list[LaborRow]:
        out = list(self._out.values())
        self._out = {}
        return out

    # -- routing -----------------------------------------------------------------------------

    def _routing(self, ev: WorkOrderEvent) -> None:
        route = route_of(ev.routing, ev.product, self.plant_routes)
        if route:
            self.state.routings[ev.work_order] = route
        else:
            self.state.routings.pop(ev.work_order, None)

    def _op(self, work_order: str, operation: str | None, station: str) -> str:
        """The routing step a wo_start means, as the routing step of its parts
        (streams/routing.py: explicit, else the step listing the station, else the first);
        without a known routing, what the report names."""
        route = self.state.routings.get(work_order)
        if not route:
            return operation or ""
        return op_for(route, operation or "", station)

    # -- sign-in / out -------------------------------------------------------------------------

    def _person(self, name: str, t: int) -> Person:
        p = self.state.people.get(name)
        if p is None:
            p = self.state.people[name] = Person(clock=t)
        return p

    def _at(self, seq: int, name: str, station: str, t_ev: int) -> int:
        """When a person's report takes effect: its time, or the person's clock if later."""
        p = self._person(name, t_ev)
        self._advance(name, t_ev, move_clock=True)
        t = max(t_ev, p.clock)
        if t > t_ev:
            self._issue(seq, "late", station, name, t_ev, t)
        p.clock = t
        return t

    def _sign_in(self, seq: int, name: str, station: str, t_ev: int) -> None:
        t = self._at(seq, name, station, t_ev)
        p = self.state.people[name]
        if station in p.pieces:
            self._issue(seq, "duplicate_sign_in", station, name, t_ev, t)
            return
        self._cut_all(name, p, t, "share")
        run = self.state.runs.get(station)
        pc = Piece(t, t, seq, run.work_order if run else "", run.operation if run else "")
        self._place(station, pc, t)
        p.pieces[station] = pc
        self._reopen_all(name, p)

    def _sign_out(self, seq: int, name: str, station: str, t_ev: int) -> None:
        t = self._at(seq, name, station, t_ev)
        p = self.state.people[name]
        if station not in p.pieces:
            self._issue(seq, "sign_out_without_sign_in", station, name, t_ev, t)
            return
        self._cut_all(name, p, t, "share", gone=station, how="sign_out")
        self._reopen_all(name, p)

    # -- work orders at a station ----------------------------------------------------------

    def _run(self, station: str, run: Run | None, t_ev: int) -> None:
        t = max(t_ev, self.state.run_clock.get(station, t_ev))
        self.state.run_clock[station] = t
        if run is None:
            self.state.runs.pop(station, None)
        else:
            self.state.runs[station] = run
        wo, op = (run.work_order, run.operation) if run else ("", "")
        people = self.state.people
        # Only the people signed in here, in name order (not the whole plant's people
        # sorted at every wo_start): one person's bookings never change another's pieces.
        for name in sorted(n for n, p in people.items() if station in p.pieces):
            p = people[name]
            pc = p.pieces.get(station)
            if pc is None:
                continue
            self._advance(name, t, move_clock=True)
            pc = p.pieces.get(station)
            if pc is None:  # expired on the way
                continue
            at = max(t, p.clock)
            p.clock = at
            if (pc.work_order, pc.operation) == (wo, op):
                continue
            share = 1.0 / len(p.pieces)
            self._emit_closed(name, station, pc, at, share, "wo")
            pc.work_order, pc.operation = wo, op
            self._place(station, pc, at)
            self._emit_open(name, station, pc, share)
            self._renext(p)

    # -- booking ---------------------------------------------------------------------------

    def _place(self, station: str, pc: Piece, start: int) -> None:
        """Start the piece's open segment at `start`: its shift, and where it ends at the
        latest (the shift's end, or the sign-in's expiry if that comes first)."""
        slot = self.cal.slot(station, start)
        expiry = pc.since + self.max_us
        pc.start, pc.shift_date, pc.shift_name = start, slot.shift_date, slot.shift_name
        pc.bound, pc.expires = (expiry, True) if expiry <= slot.end else (slot.end, False)

    def _renext(self, p: Person) -> None:
        p.next_cut = nxt = min((pc.bound for pc in p.pieces.values()), default=NEVER)
        if nxt < self._soonest:
            self._soonest = nxt

    def _advance(self, name: str, t: int, move_clock: bool) -> None:
        """Cut the person's pieces at every shift boundary and expiry up to t, in order."""
        p = self.state.people.get(name)
        if p is None:
            return
        while p.pieces:
            c, station, expired = self._next_cut(p)
            if c > t:
                break
            if expired:
                pc = p.pieces[station]
                self._issue(pc.seq, "expired", station, name, c, c)
                self._cut_all(name, p, c, "share", gone=station, how="expired")
                self._reopen_all(name, p)
            else:
                pc = p.pieces[station]
                share = 1.0 / len(p.pieces)
                self._emit_closed(name, station, pc, c, share, "shift")
                self._place(station, pc, c)
                self._emit_open(name, station, pc, share)
                self._renext(p)
            p.clock = max(p.clock, c)
        if move_clock:
            p.clock = max(p.clock, t)

    def _next_cut(self, p: Person) -> tuple[int, str, bool]:
        best: tuple[int, str, bool] | None = None
        for st in sorted(p.pieces):
            pc = p.pieces[st]
            c, expired = pc.bound, pc.expires
            # At the same instant an expiry goes first (it cuts every piece anyway).
            if best is None or (c, not expired) < (best[0], not best[2]):
                best = (c, st, expired)
        assert best is not None
        return best

    def _cut_all(
        self, name: str, p: Person, t: int, why: str, gone: str | None = None, how: str = ""
    ) -> None:
        """Close every open segment of the person at t (their share changes); `gone` leaves."""
        if not p.pieces:
            return
        share = 1.0 / len(p.pieces)
        for st in sorted(p.pieces):
            pc = p.pieces[st]
            self._emit_closed(name, st, pc, t, share, how if st == gone else why)
            if st != gone:
                self._place(st, pc, t)
        if gone is not None:
            pc = p.pieces.pop(gone)
            self._out[("p", gone, name)] = StationPresence(
                gone, name, from_us(pc.since), pc.seq, pc.work_order, pc.operation, 0.0, False
            )
        self._renext(p)

    def _reopen_all(self, name: str, p: Person) -> None:
        self._renext(p)
        if not p.pieces:
            return
        share = 1.0 / len(p.pieces)
        for st in sorted(p.pieces):
            self._emit_open(name, st, p.pieces[st], share)

    # -- rows --------------------------------------------------------------------------------

    def _segment(
        self, name: str, station: str, pc: Piece, end: int | None, share: float, how: str
    ) -> None:
        row = LaborSegment(
            name,
            station,
            from_us(pc.start),
            None if end is None else from_us(end),
            from_us(pc.bound),
            pc.work_order,
            pc.operation,
            pc.shift_date,
            pc.shift_name,
            share,
            how,
        )
        self._out[("s", name, station, pc.start)] = row

    def _emit_closed(
        self, name: str, station: str, pc: Piece, end: int, share: float, how: str
    ) -> None:
        self._segment(name, station, pc, end, share, how)

    def _emit_open(self, name: str, station: str, pc: Piece, share: float) -> None:
        self._segment(name, station, pc, None, share, "open")
        self._out[("p", station, name)] = StationPresence(
            station, name, from_us(pc.since), pc.seq, pc.work_order, pc.operation, share, True
        )

    def _issue(self, seq: int, kind: str, station: str, name: str, t: int, applied: int) -> None:
        self._out[("i", seq, kind)] = LaborIssue(
            seq, kind, station, name, from_us(t), from_us(applied)
        )


def labor_events(batch: list[Any]) -> list[tuple[int, Any]]:
    """The (seq, event) pairs of a batch that the labor step takes (FloorInput of sign-in,
    sign-out, wo_start, wo_end, and OrderInput of work orders)."""
    out: list[tuple[int, Any]] = []
    for x in batch:
        # Type checks first: most of `rest` is machine rows (a failed getattr costs more).
        t = type(x)
        if t is FloorInput:
            if type(x.event) in INPUT_EVENTS:
                out.append((x.seq, x.event))
        elif t is OrderInput and type(x.event) is WorkOrderEvent:
            out.append((0, x.event))
    return out


INPUT_EVENTS = frozenset(
    {SignInReport, SignOutReport, WorkOrderStartReport, WorkOrderEndReport, WorkOrderEvent}
)
