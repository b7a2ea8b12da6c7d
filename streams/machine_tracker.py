"""Per-machine logic: state intervals, stops, parts, and the stored OEE figures.

Plain Python, no Bytewax (streams/dataflow.py wires one tracker per machine). All times
are integer microseconds since the epoch (streams/hour_clock.py).

How the figures stay exact (docs/metrics.md):

* The machine's history is kept as facts: its state intervals (with reasons), its work
  orders over time, and, for the allowed lateness, its recent part events.
* Every fact contributes to hour and shift buckets (streams/buckets.py). When a fact
  changes - a late state event splits an interval, an operator names a stop's reason, a
  stop grows past the micro-stop threshold, a late work-order start changes the ideal
  cycle time of parts already counted - its old contribution is subtracted and the new
  one added. Integer arithmetic makes that exact, so late input within the allowed
  lateness gives exactly the figures of in-order input.
* The common case (events in order) only extends the open interval and adds parts.

Events are ordered by (ts, rank): at the same instant a state change comes first, then
work-order reports, then parts, then reason reports.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise

from mesflow.events import (
    CounterEvent,
    CountEvent,
    DowntimeReasonReport,
    MachineEvent,
    ScrapReport,
    StateEvent,
    WorkOrderEndReport,
    WorkOrderEvent,
    WorkOrderStartReport,
)
from mesflow.plant import BUILTIN_REASONS, PlantConfig
from streams.buckets import (
    DOWN,
    DOWNTIME_CLASSES,
    IDLE,
    MICRO,
    OFFLINE,
    PLANNED_STOP,
    RUNNING,
    SETUP,
    Bucket,
)
from streams.hour_clock import FIXED_OFFSETS, HOUR_US, HourClock, from_us, to_us
from streams.records import (
    HourRow,
    IntervalDelete,
    IntervalRow,
    KpiRow,
    MachineRow,
    ReasonSetRow,
    Rejection,
    ScrapSetRow,
    StatusRow,
    WorkOrderParts,
    WorkOrderStarted,
)
from streams.shift_calendar import CalendarIndex, ShiftInstance
from streams.silence import SilenceWatch

_US = timedelta(microseconds=1)
STATES = ("running", "idle", "down", "setup", "planned_stop", "offline")
STATE_INDEX = {s: i for i, s in enumerate(STATES)}
STOP_STATES = frozenset({"idle", "down"})
_CLASS_OF_STATE = {
    "running": RUNNING,
    "idle": IDLE,
    "down": DOWN,
    "setup": SETUP,
    "offline": OFFLINE,
    "planned_stop": PLANNED_STOP,
}
HISTORY_US = 48 * HOUR_US
# What a machine sends itself: the messages that tell it is connected (streams/silence.py).
_MESSAGES = frozenset({StateEvent, CountEvent, CounterEvent})
# Events whose first change is the machine's clock (apply: `_advance` before anything else).
_ADVANCE_FIRST = frozenset(
    {StateEvent, CountEvent, CounterEvent, ScrapReport, WorkOrderStartReport, WorkOrderEndReport}
)
# Scrap by reason and product: scrap the machine counted itself (count events, the scrap
# counter) and scrap reports without a reason have no reason; parts made while no work
# order with a known product was active have no product.
UNSPECIFIED = "unspecified"
UNKNOWN_PRODUCT = "unknown"

Row = MachineRow
# (start, end, shift instance containing it, shift instance if it is planned time)
Segment = tuple[int, int, "ShiftInstance | None", "ShiftInstance | None"]


@dataclass(frozen=True)
class MachineSpec:
    """What a tracker needs from the plant configuration (small: it is snapshotted)."""

    machine: str
    zone: str
    calendar: CalendarIndex
    microstop_us: int
    default_ideal_us: int
    ideal_us_by_product: dict[str, int]
    lateness_us: int
    known_reasons: frozenset[str]
    history_us: int = HISTORY_US
    silent_after_us: int = 0  # silent machines (streams/silence.py); 0: not watched
    # A work order's figures here are kept this long after its last part or start (at
    # least history_us): a defect or rework scrapped days later is still booked to it.
    keep_wo_us: int = HISTORY_US

    @classmethod
    def from_plant(cls, plant: PlantConfig, machine: str) -> MachineSpec:
        return cls(
            machine=machine,
            zone=plant.plant.timezone,
            calendar=CalendarIndex(plant.calendar_for(machine), plant.plant.timezone),
            microstop_us=round(plant.microstop_seconds(machine) * 1e6),
            default_ideal_us=round(plant.ideal_cycle_seconds(machine) * 1e6),
            ideal_us_by_product={
                p.id: round(p.ideal_cycle_seconds[machine] * 1e6)
                for p in plant.products
                if machine in p.ideal_cycle_seconds
            },
            lateness_us=round(plant.plant.allowed_lateness_seconds * 1e6),
            # the built-in codes too (`connection_lost`); empty = no tree, any code
            known_reasons=(
                frozenset(plant.reasons_by_code) | frozenset(BUILTIN_REASONS)
                if plant.reasons_by_code
                else frozenset()
            ),
            silent_after_us=round(plant.silent_after_seconds(machine) * 1e6),
            keep_wo_us=round(plant.plant.max_event_age_days * 86_400e6),
        )


@dataclass(slots=True)
class Interval:
    start: int
    end: int | None  # None: open, runs to the machine's latest event
    state: str
    state_reason: str | None
    work_order: str | None
    reason: str | None = None  # effective: the latest operator report, else state_reason
    # Cache for "does the interval overlap planned time": the first planned instant in
    # it, or how far it has been checked without finding one.
    planned_from: int | None = None
    checked_to: int = 0

    def reset_cache(self) -> None:
        self.planned_from = None
        self.checked_to = self.start


# (hour start, shift instance containing t, planned?, ideal cycle us, work order, product,
# the routing operation its wo_start named or "": docs/routings.md)
PartClass = tuple[int, "ShiftInstance | None", bool, int, "str | None", "str | None", str]
# (from, to, open interval, its state, work-order version, class, hour bucket, shift bucket,
# the work order's [good, scrap] here and its operation's, None without a work order, the
# dirty set its hour and shift were marked in)
CountContext = tuple[
    int,
    int,
    "Interval",
    str,
    int,
    PartClass,
    "Bucket",
    "Bucket | None",
    "list[int] | None",
    "list[int] | None",
    "_Dirty",
    "list[int]",
]


# A part movement kept for the allowed lateness, with the classification applied:
# (t, arrival order, kind, good, scrap, source, class). Kind 0 adds parts, 1 moves good to
# scrap for a `scrap` counter (source: the counter's name), 2 moves them for a `scrap`
# report (source: its reason, or None).
# A plain tuple, not a dataclass: thousands are kept per busy machine and snapshotted every
# few seconds, and tuples pickle about ten times faster.
Part = tuple[int, int, int, int, int, "str | None", PartClass]
# (good per part, scrap per part, class) and the parts' times
Run = tuple[tuple[int, int, PartClass], "array[int]"]


@dataclass(slots=True)
class Report:
    at: int
    key: tuple[int, int]  # (ts, arrival): the later report for the same stop wins
    reason: str


@dataclass
class _Dirty:
    hours: set[int] = field(default_factory=set)
    shifts: set[ShiftInstance] = field(default_factory=set)
    intervals: dict[int, Interval] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)
    status: bool = False
    work_orders: set[str] = field(default_factory=set)


class MachineTracker:
    """Everything the dataflow knows about one machine."""

    # Reason reports refused `no_stop` that a state event within the allowed lateness can
    # still turn into reports about a stop: (at, arrival, log seq, report); a rebuild
    # applies them again in event-time order. A class default so that snapshots from
    # before it load; always replaced, never changed in place.
    refused: tuple[tuple[int, int, int, DowntimeReasonReport], ...] = ()
    # What the last status row showed (open interval's start, state, reason, work order):
    # a live flush between full ones writes the status only when one of them changed.
    # A class default: snapshots from before it load (and write the status once).
    status_sent: tuple[int, str, str | None, str | None] | None = None
    # A cache (see _drain_counts); a class default like the fields above.
    _unsettled: CountContext | None = None
    # (log seq, clock) after a flush, one per eighth of the allowed lateness of event time:
    # every count of this machine logged at or before such a seq is at or before its
    # clock. A lean snapshot (streams/tracker_snapshot.py) leaves `runs` out and names the
    # log range they are in from these; a class default, always replaced, never changed.
    seq_marks: tuple[tuple[int, int], ...] = ()
    # Set on a tracker decoded from a lean snapshot until its runs are read back from the
    # log: (after seq, up to seq, earliest part time, number of part times).
    runs_log: tuple[int, int, int, int] | None = None

    def __init__(self, spec: MachineSpec) -> None:
        self.spec = spec
        self.machine = spec.machine
        self.clock = HourClock(spec.zone)
        self.intervals: list[Interval] = []
        self.last_ts: int | None = None  # the machine's clock: its latest event time
        self.credited_to: int | None = None  # the open interval's time is in buckets to here
        self.arrivals = 0
        self.wo_changes: list[tuple[int, int, str | None]] = []  # (t, order, work order)
        self.wo_product: dict[str, list[tuple[int, int, str]]] = {}  # (from t, order, product)
        self.wo_order: dict[str, str] = {}  # work order -> CRM order_no
        self.wo_parts: dict[str, list[int]] = {}  # work order -> [good, scrap] on this machine
        self.wo_started: dict[str, int] = {}  # work order -> first wo_start on this machine
        self.wo_seen: dict[str, int] = {}  # work order -> last event time it changed (pruning)
        # Routing operations (docs/routings.md): the operation a wo_start named, by the
        # (t, order) of its change; parts and first starts per work order and operation
        # ("" = the wo_start named none; streams/routing.py decides which step that is).
        self.wo_ops: dict[tuple[int, int], str] = {}
        self.op_parts: dict[str, dict[str, list[int]]] = {}
        self.op_started: dict[str, dict[str, int]] = {}
        self.parts: list[Part] = []  # within the allowed lateness, by (t, order)
        # Scrap reports naming a work order (defects, rework), by their part's (t, order):
        # their parts are that work order's, not the running one's (see _classify).
        self.scrap_wo: dict[tuple[int, int], str] = {}
        # In-order counts (the bulk) kept compactly: runs of parts that move the same
        # good/scrap with the same classification, as arrays of their times. A busy
        # machine keeps thousands for the allowed lateness, and snapshots of arrays are
        # a memory copy.
        self.runs: list[Run] = []
        self.last_part_t = -1  # the latest time of any kept part
        self.counter_base: dict[str, int] = {}  # last settled value per counter name
        self.counter_readings: dict[str, list[tuple[int, int, int]]] = {}  # (t, order, value)
        self.reports: list[Report] = []
        self.marks: list[tuple[int, int, str, str | None]] = []  # recent state events
        # Caches for the hot path (see _seg_at, apply); not facts, safe to rebuild.
        self._count_cache: CountContext | None = None
        # The count context whose parts may not be in its buckets yet (_drain_counts).
        self._unsettled = None
        self._wo_version = 0  # bumped when work orders or their products change
        self._seg: Segment | None = None
        self._hour_segs: tuple[int, list[Segment]] | None = None
        self._segs_by_hour: dict[int, list[Segment]] = {}
        self.hours: dict[int, Bucket] = {}
        self.shifts: dict[ShiftInstance, Bucket] = {}
        self.good_total = 0
        self.scrap_total = 0
        # Scrap per hour by (reason, product or None); kept and forgotten with the hours.
        self.scrap: dict[int, dict[tuple[str, str | None], int]] = {}
        # Hours whose scrap set changed since the last full flush: only those are written
        # (most flushes change no scrap; a rebuild re-applies, so re-marks, what it changes).
        self.scrap_dirty: set[int] = set()
        self.dirty = _Dirty()
        # Late data (streams/rebuild.py): the log seq of the last event consumed, and the
        # earliest time of events that came later than the allowed lateness and wait for
        # a rebuild of this machine from the log (None: nothing pending).
        self.seq = 0
        self.late_from: int | None = None
        self.late_new: list[int] = []  # their seqs, until the dataflow records them
        self.silence = SilenceWatch()  # used when spec.silent_after_us is set

    _CACHES = ("_seg", "_hour_segs", "_segs_by_hour", "_count_cache", "_unsettled")

    def __getstate__(self) -> dict[str, object]:
        # Snapshots carry facts only: the caches are rebuilt on first use.
        self._drain_counts()
        state = dict(self.__dict__)
        for name in self._CACHES:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        # Snapshots of an earlier version have no late-data fields.
        self.__dict__.setdefault("seq", 0)
        self.__dict__.setdefault("late_from", None)
        self.__dict__.setdefault("late_new", [])
        self.__dict__.setdefault("silence", SilenceWatch())
        self._seg = None
        self._hour_segs = None
        self._segs_by_hour = {}
        self._count_cache = None
        self._unsettled = None
        self.__dict__.setdefault("scrap_dirty", set())
        self.__dict__.setdefault("scrap_wo", {})  # before scrap reports named work orders
        if "scrap" not in state:
            self._upgrade_scrap()
        if "op_parts" not in state:
            self._upgrade_ops()

    def _upgrade_ops(self) -> None:
        """A snapshot from before routings: no wo_start named an operation, so every part
        class gains "" and the work orders' totals and starts are all under ""."""
        self.wo_ops = {}
        self.op_parts = {w: {"": list(v)} for w, v in self.wo_parts.items()}
        self.op_started = {w: {"": t} for w, t in self.wo_started.items()}

        def cls7(cls: tuple[object, ...]) -> PartClass:
            return cls if len(cls) == 7 else (*cls, "")  # type: ignore[return-value]

        self.parts = [(*p[:6], cls7(p[6])) for p in self.parts]
        self.runs = [((g, sc, cls7(cls)), ts) for (g, sc, cls), ts in self.runs]

    def _upgrade_scrap(self) -> None:
        """A snapshot from before scrap by reason: its part classes gain their product,
        and the scrap of the parts it still keeps seeds the hours' scrap sets, so that
        revising those parts later subtracts only what was added (no negative figures).
        Scrap settled before the upgrade is not in those sets (the table is new)."""
        self.scrap = {}

        def cls6(cls: tuple[object, ...], t: int) -> PartClass:
            if len(cls) >= 6:
                return cls  # type: ignore[return-value]
            wo = cls[4]
            return (*cls, self._ideal_product(wo, t)[1])  # type: ignore[arg-type, return-value]

        self.parts = [(*p[:6], cls6(p[6], p[0])) for p in self.parts]
        self.runs = [((g, sc, cls6(cls, ts[-1])), ts) for (g, sc, cls), ts in self.runs if ts]
        for p in self.parts:
            if p[4]:
                self._scrap_add(p[6][0], _scrap_reason(p[2], p[5]), p[6][5], p[4])
        for (_, sc, cls), ts in self.runs:
            if sc:
                self._scrap_add(cls[0], UNSPECIFIED, cls[5], sc * len(ts))

    # ---------------------------------------------------------------------------------------
    # applying events
    # ---------------------------------------------------------------------------------------

    def apply(self, seq: int, ev: MachineEvent | WorkOrderEvent) -> Rejection | None:
        """Apply one event; a Rejection sends it to the dead-letter table instead.

        A rejected event changes nothing, not even the machine's clock. An event later
        than the allowed lateness is not applied either: it is remembered (`late_from`,
        `late_new`) and the dataflow rebuilds the machine from the log with it.
        """
        ts = ev.ts  # hour_clock.to_us, inline (once per event)
        off = FIXED_OFFSETS.get(ts.tzinfo)
        if off is None:
            t = to_us(ts)
        else:
            t = (
                (ts.toordinal() * 86_400 + ts.hour * 3600 + ts.minute * 60 + ts.second) * 1_000_000
                + ts.microsecond
                - off
            )
        last = self.last_ts
        self.seq = seq
        if type(ev) is CountEvent and last is not None and t >= last and self.intervals:
            # The hot path, inline (most events: a part, in order). The clock moves
            # without crediting time (see _catch_up), and the classification and buckets
            # of the previous part are reused while nothing that decides them (stretch of
            # the hour, state, work order) has changed.
            silent = self.spec.silent_after_us
            if silent:
                self.silence.on_message(self, t, False)  # in order: decides at once
                if t > self.last_ts:  # type: ignore[operator]
                    self.last_ts = t
            elif t > last:
                self.last_ts = t
            self.arrivals += 1
            good, scrap = ev.good, ev.scrap
            d = self.dirty
            d.status = True
            cur = self.intervals[-1]
            c = self._count_cache
            if (
                c is None
                or not (c[0] <= t < c[1])
                or c[2] is not cur
                or c[3] != cur.state
                or c[4] != self._wo_version
            ):
                self._drain_counts()  # the previous context's parts, into its buckets
                c = self._count_cache = self._unsettled = self._count_context(t, cur)
            elif c[10] is not d:
                # Kept over a flush (see flush): its hour, shift and work order are
                # written again.
                d.hours.add(c[5][0])
                if c[7] is not None:
                    d.shifts.add(c[5][1])  # type: ignore[arg-type]
                if c[5][4] is not None:
                    d.work_orders.add(c[5][4])
                c = self._count_cache = self._unsettled = (*c[:10], d, c[11])
            key = (good, scrap, c[5])
            runs = self.runs
            if runs and runs[-1][0] == key:
                runs[-1][1].append(t)
            else:
                runs.append((key, array("q", (t,))))
            self.last_part_t = t
            # The buckets and work-order totals get the sums later, at once (_drain_counts).
            acc = c[11]
            acc[0] += good
            acc[1] += scrap
            acc[2] = t
            self.good_total += good
            if scrap:  # counted by the machine: no reason
                self.scrap_total += scrap
                self._scrap_add(c[5][0], UNSPECIFIED, c[5][5], scrap)
            if silent and self.refused:  # a silence (offline) may have made a stop
                self._take_refused()
            return None
        self._drain_counts()  # every other change sees the counts so far
        if last is None and not self.seq_marks:
            # The first event: every part the tracker will keep is logged after it.
            self.seq_marks = ((seq - 1, -(1 << 62)),)
        refused = self._refuse(seq, ev)
        if refused is not None:
            return refused
        if (
            last is not None
            and t < last - self.spec.lateness_us
            and not (isinstance(ev, WorkOrderEvent) and self._unused_work_order(ev, t))
        ):
            self.late_from = t if self.late_from is None else min(self.late_from, t)
            self.late_new.append(seq)
            return None
        self.arrivals += 1
        order = self.arrivals
        if type(ev) not in _ADVANCE_FIRST:
            # The others move the clock first (_advance catches up, at once to their ts:
            # crediting [a, c) or [a, b) then [b, c) gives the same figures).
            self._catch_up()
        next_message = None  # a late message: silences after it are decided once applied
        if self.spec.silent_after_us and type(ev) in _MESSAGES:
            self._catch_up()
            next_message = self.silence.on_message(self, t, type(ev) is StateEvent)
        rejected: Rejection | None = None
        if isinstance(ev, WorkOrderEvent):
            # Its product applies to parts counted from its ts on (event time, so the result
            # does not depend on when the MES happened to send it).
            insort(self.wo_product.setdefault(ev.work_order, []), (t, order, ev.product))
            self._wo_version += 1
            self.wo_order[ev.work_order] = ev.order_no
            self.dirty.work_orders.add(ev.work_order)
            self._reclassify_parts(t)
            return None
        if isinstance(ev, DowntimeReasonReport):
            rejected = self._report(seq, t, order, ev)
            if rejected is not None:
                return rejected
        self._advance(t)
        if isinstance(ev, CountEvent):
            self._add_part(t, order, 0, ev.good, ev.scrap, None)
        elif isinstance(ev, StateEvent):
            self._state(t, ev)
        elif isinstance(ev, CounterEvent):
            self._counter(t, order, ev)
        elif isinstance(ev, ScrapReport):
            if ev.work_order is not None:
                self.scrap_wo[(t, order)] = ev.work_order
            self._add_part(t, order, 2, 0, ev.qty, ev.reason)
        elif isinstance(ev, WorkOrderStartReport | WorkOrderEndReport):
            self._work_order(t, order, ev)
        if next_message is not None:
            self.silence.after(self, t, next_message)
        if self.refused and (
            type(ev) is StateEvent or (self.spec.silent_after_us and type(ev) in _MESSAGES)
        ):
            self._take_refused()  # a state event or a silence may have made a stop
        return None

    def _refuse(self, seq: int, ev: MachineEvent | WorkOrderEvent) -> Rejection | None:
        """Checks that need no history: a reason code outside the reason tree, on a
        `state` event as on a `downtime_reason` report, dead-letters the event
        (`unknown_reason`): fixed in the plant file and re-queued, it is merged then."""
        known = self.spec.known_reasons
        if not known or not isinstance(ev, StateEvent | DowntimeReasonReport):
            return None
        if ev.reason is None or ev.reason in known:
            return None
        return Rejection(
            seq, "unknown_reason", f"reason code {ev.reason!r} is not in the reason tree"
        )

    def _unused_work_order(self, ev: WorkOrderEvent, t: int) -> bool:
        """A late `work_order` event changes no figure of this machine when the work order
        has not run here since its ts (within the kept history): its product can be taken
        at once, without a rebuild (work orders go to every machine)."""
        assert self.last_ts is not None
        if t < self.last_ts - self.spec.history_us:
            return False
        return ev.work_order not in self.wo_started and all(
            c[2] != ev.work_order for c in self.wo_changes
        )

    def take_late(self) -> list[int]:
        """The seqs of late events seen since the last call (to record them)."""
        new, self.late_new = self.late_new, []
        return new

    # -- time --------------------------------------------------------------------------------

    def _advance(self, t: int) -> None:
        """Move the machine's clock to `t`: the open interval grows."""
        if self.last_ts is None or t > self.last_ts:
            self.last_ts = t
            self.dirty.status = True
        self._catch_up()

    def _catch_up(self) -> None:
        """Credit the open interval's time up to the clock.

        Counted parts move the clock without crediting (the hot path); everything that
        reads or revises contributions catches up first. Crediting [a, c) at once or as
        [a, b) then [b, c) gives the same figures, so the laziness changes no result.
        """
        t = self.last_ts
        last = self.credited_to
        if t is None or (last is not None and t <= last):
            return
        self.credited_to = t
        if last is None or not self.intervals:
            return
        iv = self.intervals[-1]
        if iv.planned_from is not None and iv.state not in STOP_STATES:
            before = after = (_CLASS_OF_STATE[iv.state], True)  # nothing left to change
        else:
            before = self._shape(iv, last)
            after = self._shape(iv, t)
        if before == after:
            # Walk the stretches of constant planned-ness (cached per hour).
            a = last
            while a < t:
                end = self._seg_at(a)[1]
                b = end if end < t else t
                self._fast_piece(iv, a, b, before)
                a = b
            return
        else:  # a stop passed the micro-stop threshold, or first reached planned time
            self._contribute(iv, last, -1)
            self._contribute(iv, t, +1)
            self.dirty.intervals[iv.start] = iv  # its is_microstop changed
        self._mark(last, t)

    # -- state intervals --------------------------------------------------------------------

    def _index_at(self, t: int) -> int:
        """Index of the interval containing t (-1 if before the first)."""
        ivs = self.intervals
        if ivs and ivs[-1].start <= t:  # the usual case: now, in the open interval
            return len(ivs) - 1
        return bisect_right(ivs, t, key=_start) - 1

    def _state(self, t: int, ev: StateEvent) -> None:
        ivs = self.intervals
        last = self.last_ts
        assert last is not None
        # Every state event is remembered for the allowed lateness, also one that repeats
        # the current state: a late event before it must end where it stands.
        insort(self.marks, (t, self.arrivals, ev.state, ev.reason))
        i = self._index_at(t)
        if i >= 0 and ivs[i].state == ev.state:
            # The same state again continues the interval; its reason stays that of the
            # interval's first state event (operators name stops with reason reports).
            return
        if (t >= last or not ivs) and i == len(ivs) - 1 and (i < 0 or t > ivs[i].start):
            # The usual case: close the open interval at t, open a new one.
            new = Interval(t, None, ev.state, ev.reason, self._wo_at(t))
            new.reset_cache()
            if i >= 0:
                old = ivs[i]
                old.end = t  # closing at the clock changes none of its contribution
                self.dirty.intervals[old.start] = old
            ivs.append(new)
            new.reason = self._effective_reason(new)
            self._contribute(new, last, +1)
            self.dirty.intervals[t] = new
            self.dirty.status = True
            if self.last_part_t >= t:  # a part at this very instant
                self._after_timeline_change(t)
            return
        self._insert_state(i, t, ev)
        self._after_timeline_change(t)

    def _insert_state(self, i: int, t: int, ev: StateEvent) -> None:
        """A state event inside known history: split, replace or merge intervals.

        Every interval over the span that can change (the one containing t and one
        neighbour each side, which a merge may absorb) gives back its contribution; after
        the change, every interval over the same span adds its new one.
        """
        ivs = self.intervals
        last = self.last_ts
        assert last is not None
        lo = max(i - 1, 0)
        hi = min(i + 2, len(ivs) - 1)
        span_start = min(ivs[lo].start, t)
        span_end = ivs[hi].end  # None: to the open end
        before = {iv.start for iv in ivs[lo : hi + 1]}
        for iv in ivs[lo : hi + 1]:
            self._contribute(iv, last, -1)
        if i < 0:
            new = Interval(t, ivs[0].start, ev.state, ev.reason, self._wo_at(t))
            ivs.insert(0, new)
            rest = None
        else:
            cur = ivs[i]
            old_state, old_end = cur.state, cur.end
            # The new state lasts until the next state event after t, which may be one that
            # repeated the old state (merged into this interval until now).
            mark = next(
                (m for m in self.marks if t < m[0] and (old_end is None or m[0] < old_end)),
                None,
            )
            if cur.start == t:
                new = cur
                new.state, new.state_reason = ev.state, ev.reason
            else:
                new = Interval(t, old_end, ev.state, ev.reason, self._wo_at(t))
                cur.end = t
                ivs.insert(i + 1, new)
            rest = None
            if mark is not None:
                new.end = mark[0]
                rest = Interval(mark[0], old_end, old_state, mark[3], self._wo_at(mark[0]))
                ivs.insert(ivs.index(new) + 1, rest)
        self._merge_neighbours(new)
        if rest is not None and rest in ivs:
            self._merge_neighbours(rest)
        now = [
            iv for iv in ivs if iv.start >= span_start and (span_end is None or iv.start < span_end)
        ]
        for iv in now:
            iv.reason = self._effective_reason(iv)
            iv.reset_cache()
            self._contribute(iv, last, +1)
            self.dirty.intervals[iv.start] = iv
        for start in before - {iv.start for iv in now}:
            self.dirty.deleted.add(start)
            self.dirty.intervals.pop(start, None)
        self.dirty.status = True
        self._mark(span_start, span_end if span_end is not None else last)

    def _merge_neighbours(self, iv: Interval) -> None:
        """Consecutive intervals in the same state are one interval."""
        ivs = self.intervals
        k = ivs.index(iv)
        if k + 1 < len(ivs) and ivs[k + 1].state == iv.state:
            # The merged interval keeps the reason of its first state event.
            iv.end = ivs.pop(k + 1).end
        if k > 0 and ivs[k - 1].state == iv.state:
            ivs[k - 1].end = iv.end
            ivs.pop(k)

    def _revise(self, ivs: list[Interval], change: object) -> None:
        """Subtract the intervals' contributions, apply `change()`, add them back."""
        last = self.last_ts
        assert last is not None
        for iv in ivs:
            self._contribute(iv, last, -1)
        change()  # type: ignore[operator]
        for iv in ivs:
            iv.reason = self._effective_reason(iv)
            self._contribute(iv, last, +1)
            self.dirty.intervals[iv.start] = iv
            end = iv.end if iv.end is not None else last
            self._mark(iv.start, end)
        self.dirty.status = True

    # -- operator reason reports ---------------------------------------------------------------

    def _report(self, seq: int, t: int, order: int, ev: DowntimeReasonReport) -> Rejection | None:
        at = to_us(ev.at)
        i = self._index_at(at)
        iv = self.intervals[i] if i >= 0 else None
        stopped = self._stop_seen(iv, at, t)
        # Measured from the report's own ts, not the machine's clock: the decision then
        # does not depend on the arrival order of events within the allowed lateness
        # (a rejected report does not move the clock, so it must not).
        if iv is not None and stopped and iv.start < t - self.spec.history_us:
            return Rejection(seq, "no_stop", "the stop is older than the kept history (48 h)")
        if not stopped and at < t - self.spec.lateness_us:
            # The machine's clock, which a rejected report does not move, may be behind
            # the report's ts: a state event at or before `at` (or a message up to the
            # report's ts that ends a silence over `at`) may still come within the allowed
            # lateness of the clock, and in event-time order it goes first. Remembered
            # until the clock passes the report's ts by the lateness; taken if one comes.
            last = self.last_ts
            if last is not None:
                bound = last - self.spec.lateness_us
                self.refused = tuple(r for r in self.refused if to_us(r[3].ts) >= bound)
            self.refused = (*self.refused, (at, order, seq, ev))
            what = "running" if iv is not None else "not known"
            return Rejection(seq, "no_stop", f"the machine was {what} at {ev.at.isoformat()}")
        # Kept even while no stop covers `at` yet: a late state event may still create it.
        insort(self.reports, Report(at, (t, order), ev.reason), key=lambda r: r.at)
        if iv is not None and iv.state != "running" and self._effective_reason(iv) != iv.reason:
            self._revise([iv], lambda: None)
        return None

    def _stop_seen(self, iv: Interval | None, at: int, t: int) -> bool:
        """Whether a report at `t` about `at` (in `iv`) sees a stop, in event-time order."""
        if iv is None or iv.state == "running":
            return False
        if iv.state == "offline" and self.spec.silent_after_us:
            # A silence ended by a message after the report's ts was not decided yet when
            # the report came, in event-time order: it saw the state the silence cut.
            for s in self.silence.silences:
                if s.start <= at and s.end is not None and at < s.end:
                    return s.end <= t or s.state != "running"
        return True

    def _take_refused(self) -> None:
        """After a message that may have made a stop (a state event, a silence): take
        the refused reports that now see a stop at their `at` (they move the clock to
        their ts, as in event-time order). The dead letter stays."""
        last = self.last_ts
        assert last is not None
        late, keep, clock = self.spec.lateness_us, [], last
        for r in self.refused:
            at, order, _, ev = r
            t = to_us(ev.ts)
            i = self._index_at(at)
            iv = self.intervals[i] if i >= 0 else None
            if not self._stop_seen(iv, at, t) or iv is None or iv.start < t - self.spec.history_us:
                if t >= last - late:  # else what could still take it would be late
                    keep.append(r)
                continue
            insort(self.reports, Report(at, (t, order), ev.reason), key=lambda x: x.at)
            if self._effective_reason(iv) != iv.reason:
                self._revise([iv], lambda: None)
            clock = max(clock, t)
        self.refused = tuple(keep)
        self._advance(clock)

    def _effective_reason(self, iv: Interval) -> str | None:
        if iv.state == "running":
            return None
        reports = self.reports
        if not reports or reports[-1].at < iv.start:  # the usual case: no report about it
            return iv.state_reason
        best: Report | None = None
        end = iv.end
        k = bisect_right(reports, iv.start - 1, key=lambda r: r.at)
        while k < len(reports) and (end is None or reports[k].at < end):
            r = reports[k]
            if r.at >= iv.start and (best is None or r.key > best.key):
                best = r
            k += 1
        return best.reason if best is not None else iv.state_reason

    # -- work orders ---------------------------------------------------------------------------

    def _work_order(
        self, t: int, order: int, ev: WorkOrderStartReport | WorkOrderEndReport
    ) -> None:
        if isinstance(ev, WorkOrderStartReport):
            value: str | None = ev.work_order
        else:
            current = self._wo_at(t)
            if current != ev.work_order:
                return  # ending a work order that is not running here changes nothing
            value = None
        insort(self.wo_changes, (t, order, value), key=lambda c: (c[0], c[1]))
        self._wo_version += 1
        op = ""
        if isinstance(ev, WorkOrderStartReport) and ev.operation:
            op = self.wo_ops[(t, order)] = ev.operation
        if value is not None and (value not in self.wo_started or t < self.wo_started[value]):
            self.wo_started[value] = t
            self.wo_seen[value] = t
            self.dirty.work_orders.add(value)
        if value is not None:
            starts = self.op_started.setdefault(value, {})
            if op not in starts or t < starts[op]:
                starts[op] = t
                self.dirty.work_orders.add(value)
        self.dirty.status = True
        last = self.last_ts
        assert last is not None
        if t < last or self.last_part_t >= t:
            self._after_timeline_change(t)

    def _wo_at(self, t: int) -> str | None:
        changes = self.wo_changes
        if not changes:
            return None
        if changes[-1][0] <= t:  # the usual case: the latest change is in force
            return changes[-1][2]
        k = bisect_right(changes, t, key=_change_t) - 1
        return changes[k][2] if k >= 0 else None

    def _op_of(self, change: tuple[int, int, str | None]) -> str:
        """The operation a work-order change named ("" for none, and for an end)."""
        return self.wo_ops.get((change[0], change[1]), "") if change[2] is not None else ""

    def _after_timeline_change(self, t: int) -> None:
        """States or work orders changed from t on: parts since then may change class, and
        intervals since then may belong to another work order."""
        self._reclassify_parts(t)
        for iv in reversed(self.intervals):
            if iv.start < t:
                break
            wo = self._wo_at(iv.start)
            if wo != iv.work_order:
                iv.work_order = wo
                self.dirty.intervals[iv.start] = iv

    # -- parts ---------------------------------------------------------------------------------

    def _classify(self, t: int, named: str | None = None) -> PartClass:
        """The part's class at t; `named`: the work order a scrap report names, whose
        parts they are if it ran here by t (only the work order and operation change:
        hour, shift, planned, ideal and product stay those of the machine at t)."""
        seg = self._seg_at(t)
        planned = False
        if seg[3] is not None:
            ivs = self.intervals
            if ivs and t >= ivs[-1].start:  # the usual case: now, in the open interval
                planned = ivs[-1].state != "planned_stop"
            else:
                i = self._index_at(t)
                planned = i >= 0 and ivs[i].state != "planned_stop"
        changes = self.wo_changes
        k = len(changes) - 1 if changes and t >= changes[-1][0] else self._change_at(t)
        wo = changes[k][2] if k >= 0 else None
        op = self._op_of(changes[k]) if k >= 0 else ""
        ideal, product = self._ideal_product(wo, t)
        segs = self._hour_segs
        hour = segs[0] if segs is not None and segs[0] <= t < segs[0] + HOUR_US else None
        if hour is None:
            hour = self.clock.bucket(t)[0]
        if named is not None and named != wo:
            ran = self._ran_op(named, t, k)
            if ran is not None:
                wo, op = named, ran
        return hour, seg[2], planned, ideal, wo, product, op

    def _ran_op(self, wo: str, t: int, k: int) -> str | None:
        """The operation `wo` last started with here at or before t (change index k and
        before); None if it never started here by t: its scrap then stays with the
        running work order. Decided from starts at or before t only, which reclassify
        this part when they arrive late, so arrival order does not change the result."""
        first = self.wo_started.get(wo)
        if first is None or first > t:
            return None
        changes = self.wo_changes
        while k >= 0:
            if changes[k][2] == wo:
                return self._op_of(changes[k])
            k -= 1
        # Its start is older than the kept changes: the operation it first started latest.
        starts = [(s, o) for o, s in self.op_started.get(wo, {}).items() if s <= t]
        return max(starts)[1] if starts else ""

    def _part_class(self, p: Part) -> PartClass:
        named = self.scrap_wo.get((p[0], p[1])) if p[2] == 2 else None
        return self._classify(p[0], named)

    def _change_at(self, t: int) -> int:
        """Index of the work-order change in force at t (-1: none yet)."""
        return bisect_right(self.wo_changes, t, key=lambda c: c[0]) - 1

    def _drain_counts(self) -> None:
        """Add the parts counted on the hot path since the last drain to the buckets and
        work-order totals of their count context.

        Those figures only ever get sums added, and only flush reads them (snapshots
        pickle them): adding a run of counts at once gives the same figures, so the hot
        path keeps only sums. Drained before any other event is applied, before a full
        flush and snapshots, and before the context is replaced, so every other change
        still comes in the events' order (a live board flush, `flush_board`, reads none
        of them: it leaves the sums for the next full flush).
        """
        c = self._unsettled
        if c is None:
            return
        acc = c[11]
        t = acc[2]
        if t < 0:
            return
        good, scrap = acc[0], acc[1]
        acc[0] = acc[1] = 0
        acc[2] = -1
        cls = c[5]
        hb, sb = c[6], c[7]
        hb.all_good += good
        hb.all_scrap += scrap
        if sb is not None:
            sb.all_good += good
            sb.all_scrap += scrap
        if cls[2]:  # planned
            di = cls[3] * (good + scrap)
            hb.good += good
            hb.scrap += scrap
            hb.ideal_us += di
            if sb is not None:
                sb.good += good
                sb.scrap += scrap
                sb.ideal_us += di
        wo = cls[4]
        if wo is not None:  # _wo_add without its look-ups: the totals are in the context
            tw, to = c[8], c[9]
            assert tw is not None and to is not None
            tw[0] += good
            tw[1] += scrap
            to[0] += good
            to[1] += scrap
            self.wo_seen[wo] = t

    def _count_context(self, t: int, cur: Interval) -> CountContext:
        seg = self._seg_at(t)
        segs = self._hour_segs
        assert segs is not None  # set together with _seg
        end = seg[1]
        changes = self.wo_changes
        wo = changes[-1][2] if changes else None
        op = self._op_of(changes[-1]) if changes else ""
        if wo is not None:
            # A product taking effect later in this stretch ends the cached context there.
            end = min([end, *(s for s, _, _ in self.wo_product.get(wo, ()) if s > t)])
        planned = seg[3] is not None and cur.state != "planned_stop"
        ideal, product = self._ideal_product(wo, t)
        cls: PartClass = (segs[0], seg[2], planned, ideal, wo, product, op)
        hb = self._hour(segs[0])
        sb = self._shift(seg[2]) if seg[2] is not None else None
        tw = to = None
        if wo is not None:
            # These lists stay in place until the flush that prunes them, which drops this
            # context first.
            tw = self.wo_parts.setdefault(wo, [0, 0])
            to = self.op_parts.setdefault(wo, {}).setdefault(op, [0, 0])
            self.dirty.work_orders.add(wo)
        acc = [0, 0, -1]  # good, scrap, and the latest time counted since the last drain
        d = self.dirty
        return (seg[0], end, cur, cur.state, self._wo_version, cls, hb, sb, tw, to, d, acc)

    def _ideal_product(self, wo: str | None, t: int) -> tuple[int, str | None]:
        """The ideal cycle time and the product of the work order at t (None: unknown)."""
        ideal = self.spec.default_ideal_us
        if wo is not None and wo in self.wo_product:
            for since, _, product in reversed(self.wo_product[wo]):
                if since <= t:
                    return self.spec.ideal_us_by_product.get(product, ideal), product
        return ideal, None

    def _scrap_add(self, hour: int, reason: str, product: str | None, qty: int) -> None:
        by = self.scrap.get(hour)
        if by is None:
            by = self.scrap[hour] = {}
        self.scrap_dirty.add(hour)
        key = (reason, product)
        v = by.get(key, 0) + qty
        if v:
            by[key] = v
        else:  # revised away: the item disappears from the hour's set
            del by[key]

    def _add_part(
        self, t: int, order: int, kind: int, good: int, scrap: int, source: str | None
    ) -> None:
        named = self.scrap_wo.get((t, order)) if kind == 2 else None
        p: Part = (t, order, kind, good, scrap, source, self._classify(t, named))
        self._apply_part(p, +1)
        self.last_part_t = max(self.last_part_t, t)
        parts = self.parts
        if not parts or (parts[-1][0], parts[-1][1]) <= (t, order):
            parts.append(p)
        else:
            insort(parts, p, key=lambda q: (q[0], q[1]))

    def _apply_part(self, p: Part, sign: int) -> None:
        t, _, kind, good, scrap, source, cls = p
        hour_key, shift, planned, ideal, wo, product = cls[:6]
        # A class from a snapshot taken before routings may have no operation (6 fields:
        # the upgrade keys on the missing op_parts, which a snapshot mixing shapes has):
        # its parts are the unnamed operation's, as _upgrade_ops would have made them.
        op = cls[6] if len(cls) > 6 else ""
        if kind == 0:
            dg, ds = good * sign, scrap * sign
        else:
            dg, ds = -scrap * sign, scrap * sign
        hb = self._hour(hour_key)
        sb = self._shift(shift) if shift is not None else None
        hb.all_good += dg
        hb.all_scrap += ds
        if sb is not None:
            sb.all_good += dg
            sb.all_scrap += ds
        if planned:
            di = ideal * (dg + ds) if kind == 0 else 0
            hb.good += dg
            hb.scrap += ds
            hb.ideal_us += di
            if sb is not None:  # planned time always lies inside a shift
                sb.good += dg
                sb.scrap += ds
                sb.ideal_us += di
        self.good_total += dg
        self.scrap_total += ds
        if ds:
            self._scrap_add(hour_key, _scrap_reason(kind, source), product, ds)
        self.dirty.status = True
        if wo is not None:
            self._wo_add(wo, dg, ds, t, op)

    def _wo_add(self, wo: str, good: int, scrap: int, t: int, op: str) -> None:
        totals = self.wo_parts.get(wo)
        if totals is None:
            totals = self.wo_parts[wo] = [0, 0]
        totals[0] += good
        totals[1] += scrap
        by_op = self.op_parts.get(wo)
        if by_op is None:
            by_op = self.op_parts[wo] = {}
        of_op = by_op.get(op)
        if of_op is None:
            of_op = by_op[op] = [0, 0]
        of_op[0] += good
        of_op[1] += scrap
        self.wo_seen[wo] = t
        self.dirty.work_orders.add(wo)

    def _reclassify_parts(self, t: int | None) -> None:
        parts = self.parts
        for i, p in enumerate(parts):
            if t is not None and p[0] < t:
                continue
            new = self._part_class(p)
            if new != p[6]:
                self._apply_part(p, -1)
                p = parts[i] = (*p[:6], new)
                self._apply_part(p, +1)
        # Runs: the parts from t on are regrouped by their new classification.
        regrouped: list[Run] = []
        for (good, scrap, cls), ts in self.runs:
            i = 0 if t is None else bisect_left(ts, t)
            if i == len(ts):
                continue
            groups: dict[PartClass, array[int]] = {}
            for x in ts[i:]:
                groups.setdefault(self._classify(x), array("q")).append(x)
            if len(groups) == 1 and cls in groups:
                continue
            moved = len(ts) - i
            self._apply_part((ts[-1], 0, 0, good * moved, scrap * moved, None, cls), -1)
            del ts[i:]
            for new, arr in groups.items():
                n = len(arr)
                self._apply_part((arr[-1], 0, 0, good * n, scrap * n, None, new), +1)
                regrouped.append(((good, scrap, new), arr))
        if regrouped:
            self.runs = [r for r in self.runs if len(r[1])] + regrouped

    def _counter(self, t: int, order: int, ev: CounterEvent) -> None:
        readings = self.counter_readings.setdefault(ev.name, [])
        key = (t, order)
        if not readings or (readings[-1][0], readings[-1][1]) <= key:
            previous = readings[-1][2] if readings else self.counter_base.get(ev.name)
            readings.append((t, order, ev.value))
            if previous is not None:
                self._counter_part(ev.name, t, order, _delta(previous, ev.value))
            return
        # A reading arrived late: the parts of every later reading of this counter change.
        insort(readings, (t, order, ev.value), key=lambda r: (r[0], r[1]))
        stale = [p for p in self.parts if p[2] != 2 and p[5] == ev.name and (p[0], p[1]) >= key]
        for p in stale:
            self._apply_part(p, -1)
            self.parts.remove(p)
        previous = self.counter_base.get(ev.name)
        for rt, ro, value in readings:
            if (rt, ro) >= key and previous is not None:
                self._counter_part(ev.name, rt, ro, _delta(previous, value))
            previous = value

    def _counter_part(self, name: str, t: int, order: int, delta: int) -> None:
        if delta == 0:
            return
        if name == "total":
            self._add_part(t, order, 0, delta, 0, name)
        else:
            self._add_part(t, order, 1, 0, delta, name)

    def _settle(self) -> None:
        """Forget part details older than the allowed lateness: they can no longer change."""
        if self.last_ts is None:
            return
        horizon = self.last_ts - self.spec.lateness_us
        parts = self.parts
        if parts and parts[0][0] < horizon:
            k = bisect_right(parts, horizon - 1, key=lambda q: q[0])
            while k < len(parts) and parts[k][0] < horizon:
                k += 1
            del parts[:k]
            if self.scrap_wo:  # settled with their parts
                self.scrap_wo = {key: w for key, w in self.scrap_wo.items() if key[0] >= horizon}
        for _, ts in self.runs:
            if ts and ts[0] < horizon:
                del ts[: bisect_left(ts, horizon)]
        if any(not ts for _, ts in self.runs):
            self.runs = [r for r in self.runs if len(r[1])]
        marks = self.marks
        if marks and marks[0][0] < horizon:
            k = 0
            while k < len(marks) and marks[k][0] < horizon:
                k += 1
            del marks[:k]
        for name, readings in self.counter_readings.items():
            k = 0
            while k < len(readings) - 1 and readings[k][0] < horizon:
                k += 1
            if k:
                self.counter_base[name] = readings[k - 1][2]
                del readings[:k]

    # ---------------------------------------------------------------------------------------
    # contributions of intervals to buckets
    # ---------------------------------------------------------------------------------------

    def _shape(self, iv: Interval, upto: int) -> tuple[int, bool]:
        """What decides how an interval counts: its time class and whether it is counted."""
        end = iv.end if iv.end is not None else upto
        cls = _CLASS_OF_STATE[iv.state]
        if iv.state in STOP_STATES:
            threshold = self.spec.microstop_us
            if threshold > 0 and end - iv.start < threshold:
                cls = MICRO
        return cls, self._counted(iv, end)

    def _counted(self, iv: Interval, end: int) -> bool:
        """Whether [start, end) of the interval overlaps planned time (cached, growing)."""
        if iv.planned_from is not None:
            return end > iv.planned_from
        lo = max(iv.start, iv.checked_to)
        if end > lo:
            for s, _, _, planned in self._walk(lo, end):
                if planned is not None:
                    iv.planned_from = s
                    return True
            iv.checked_to = end
        return False

    def _contribute(self, iv: Interval, upto: int, sign: int) -> None:
        """Add (sign=+1) or remove (-1) everything the interval contributes up to `upto`."""
        end = iv.end if iv.end is not None else upto
        if end <= iv.start:
            return
        shape = self._shape(iv, upto)
        cls, counted = shape
        self._contribute_piece(iv, iv.start, end, shape, sign)
        if not counted:
            return
        hour = self._hour(self.clock.bucket(iv.start)[0])
        shift_inst = self.spec.calendar.shift_at(iv.start)
        starts = [hour] if shift_inst is None else [hour, self._shift(shift_inst)]
        reason = self._reason_code(iv)
        for b in starts:
            if cls == MICRO:
                b.micro_count += sign
            elif cls in DOWNTIME_CLASSES:
                b.add_reason(reason, 0, sign)
                if cls == DOWN:
                    b.failures += sign
                    b.failure_us += sign * (end - iv.start)

    def _seg_at(self, t: int) -> Segment:
        """The stretch around t, inside one hour, where shift and planned-ness are constant.

        Cached: consecutive events of a machine almost always fall in the same stretch.
        """
        seg = self._seg
        if seg is not None and seg[0] <= t < seg[1]:
            return seg
        hs = self.clock.bucket(t)[0]
        cache = self._hour_segs
        if cache is None or cache[0] != hs:
            cache = self._hour_segs = (hs, self._segments(hs))
        for seg in cache[1]:
            if seg[0] <= t < seg[1]:
                self._seg = seg
                return seg
        raise AssertionError("hour segments cover the hour")  # pragma: no cover

    def _segments(self, hs: int) -> list[Segment]:
        """The stretches of the hour starting at hs (cached for a few dozen hours)."""
        segs = self._segs_by_hour.get(hs)
        if segs is None:
            if len(self._segs_by_hour) > 64:
                self._segs_by_hour.clear()
            segs = self._segs_by_hour[hs] = self._segments_of_hour(hs)
        return segs

    def _walk(self, a: int, b: int) -> list[Segment]:
        """[a, b) cut into stretches of constant shift and planned-ness, clipped to it."""
        out: list[Segment] = []
        hs = self.clock.bucket(a)[0]
        while hs < b:
            for s, e, shift, planned in self._segments(hs):
                if e <= a or s >= b:
                    continue
                out.append((max(s, a), min(e, b), shift, planned))
            hs += HOUR_US
        return out

    def _segments_of_hour(self, hs: int) -> list[Segment]:
        he = hs + HOUR_US
        cal = self.spec.calendar
        windows = cal.planned_windows(hs, he)
        cuts = {hs, he}
        for w in windows:
            cuts.update((w.start, w.end))
        for inst in cal.shifts_between(hs, he):
            cuts.update(c for c in (inst.start, inst.end) if hs < c < he)
        points = sorted(cuts)
        segs: list[Segment] = []
        for a, b in pairwise(points):
            planned = next((w.shift for w in windows if w.start <= a < w.end), None)
            segs.append((a, b, cal.shift_at(a), planned))
        return segs

    def _fast_piece(self, iv: Interval, a: int, b: int, shape: tuple[int, bool]) -> bool:
        """The clock moved within one segment (the usual case): add the time directly."""
        seg = self._seg_at(a)
        if b > seg[1]:
            return False
        us = b - a
        cls, counted = shape
        hour = self._hour(self.clock.bucket(a)[0])
        hour.raw_us[STATE_INDEX[iv.state]] += us
        shift = seg[3]
        if shift is not None:
            sb = self._shift(shift)
            hour.time_us[cls] += us
            sb.time_us[cls] += us
            if cls in DOWNTIME_CLASSES:
                reason = self._reason_code(iv)
                hour.add_reason(reason, us, 0)
                sb.add_reason(reason, us, 0)
        if counted and cls == DOWN and a > iv.start:
            # An open failure's whole duration grows with the clock.
            self._hour(self.clock.bucket(iv.start)[0]).failure_us += us
            start_shift = self.spec.calendar.shift_at(iv.start)
            if start_shift is not None:
                self._shift(start_shift).failure_us += us
        return True

    def _contribute_piece(
        self, iv: Interval, a: int, b: int, shape: tuple[int, bool], sign: int = 1
    ) -> None:
        """The time [a, b) of the interval, into hour and shift buckets."""
        if b <= a:
            return
        cls, counted = shape
        state_i = STATE_INDEX[iv.state]
        clock = self.clock
        reason = self._reason_code(iv) if cls in DOWNTIME_CLASSES else None
        for s, e, _, planned in self._walk(a, b):  # stretches never cross an hour
            us = sign * (e - s)
            hb = self._hour(clock.bucket(s)[0])
            hb.raw_us[state_i] += us  # all time, by state (machine_hour)
            if planned is not None:
                sb = self._shift(planned)
                hb.time_us[cls] += us
                sb.time_us[cls] += us
                if reason is not None:
                    hb.add_reason(reason, us, 0)
                    sb.add_reason(reason, us, 0)
        if counted and cls == DOWN and iv.end is None and sign > 0 and a > iv.start:
            # An open failure's whole duration grows with the clock.
            hour = self._hour(clock.bucket(iv.start)[0])
            hour.failure_us += b - a
            shift_inst = self.spec.calendar.shift_at(iv.start)
            if shift_inst is not None:
                self._shift(shift_inst).failure_us += b - a

    @staticmethod
    def _reason_code(iv: Interval) -> str:
        if iv.reason:
            return iv.reason
        return "no_data" if iv.state == "offline" else "unassigned"

    # -- buckets -------------------------------------------------------------------------------

    def _hour(self, start: int) -> Bucket:
        b = self.hours.get(start)
        if b is None:
            b = self.hours[start] = Bucket(start, start + HOUR_US)
        self.dirty.hours.add(start)
        return b

    def _shift(self, inst: ShiftInstance) -> Bucket:
        b = self.shifts.get(inst)
        if b is None:
            b = self.shifts[inst] = Bucket(inst.start, inst.end)
        self.dirty.shifts.add(inst)
        return b

    def _mark(self, a: int, b: int) -> None:
        """Hours and shifts over [a, b] have changed (their rows must be written)."""
        for s, _, shift, _ in self._walk(a, b + 1):
            hour = self.clock.bucket(s)[0]
            if hour in self.hours:
                self.dirty.hours.add(hour)
            if shift is not None and shift in self.shifts:
                self.dirty.shifts.add(shift)

    # ---------------------------------------------------------------------------------------
    # output
    # ---------------------------------------------------------------------------------------

    def flush(self, full: bool = True) -> list[Row]:
        """Rows changed since the last flush (absolute values: upserts are idempotent).

        `full=False` gives only what a board shows at once (intervals and status) and
        keeps the hour, shift and work-order figures for a later full flush: live, a
        machine's figures are rewritten about once a second, not after every part.
        """
        if not full:
            return self.flush_board()
        self._drain_counts()
        m = self.machine
        d = self.dirty
        last = self.last_ts
        rows: list[Row] = []
        for start in d.deleted:
            rows.append(IntervalDelete(m, from_us(start)))
        for iv in d.intervals.values():
            rows.append(self._interval_row(iv))
        d.deleted = set()
        d.intervals = {}
        self._catch_up()
        for iv in self.dirty.intervals.values():  # is_microstop may have changed
            rows.append(self._interval_row(iv))
        # (sets of one, the usual case, are not sorted: most flushes touch one hour)
        for h in sorted(d.hours) if len(d.hours) > 1 else d.hours:
            b = self.hours.get(h)
            if b is not None:
                rows.append(_hour_row(m, b))
                rows.extend(_kpi_rows(m, "hour", b, None))
        for h in sorted(self.scrap_dirty) if len(self.scrap_dirty) > 1 else self.scrap_dirty:
            rows.append(self._scrap_row(h))
        self.scrap_dirty = set()
        for inst in sorted(d.shifts, key=lambda s: s.start) if len(d.shifts) > 1 else d.shifts:
            b = self.shifts.get(inst)
            if b is not None:
                rows.extend(_kpi_rows(m, "shift", b, inst))
        for wo in sorted(d.work_orders) if len(d.work_orders) > 1 else d.work_orders:
            order_no = self.wo_order.get(wo)
            if order_no is None or last is None:
                continue  # joined once the work_order event names its order
            starts = self.op_started.get(wo, {})
            by_op = self.op_parts.get(wo, {})
            named = any(starts) or any(by_op)  # some wo_start named an operation
            if wo in self.wo_started:
                ops_t = tuple(sorted(starts.items())) if named else ()
                rows.append(WorkOrderStarted(order_no, wo, m, self.wo_started[wo], ops_t))
            good, scrap = self.wo_parts.get(wo, (0, 0))
            # Operations whose parts all moved away (a late wo_start) are left out, as if
            # never counted: the rows do not depend on arrival order.
            ops = tuple((o, g, s) for o, (g, s) in sorted(by_op.items()) if g or s) if named else ()
            rows.append(WorkOrderParts(order_no, wo, m, last, good, scrap, ops))
        if d.status and self.intervals and last is not None:
            rows.append(self._status_row())
        self.dirty = _Dirty()
        self._settle()
        self._forget_old()
        self._mark_seq()
        return rows

    def flush_board(self) -> list[Row]:
        """flush(False): between full flushes only what a board must show at once: a new
        state, reason or work order. Counters and the clock wait for the next full flush
        (once a second live): rewriting the status row on every 20 ms poll was the largest
        write of a live plant (one row per machine per poll).

        Run after every live batch (one or two events), so it does only that: the counted
        parts stay undrained (only a full flush and snapshots read the sums: _drain_counts),
        and the usual batch, a part in order, builds no row and allocates nothing."""
        d = self.dirty
        rows: list[Row] = []
        if d.deleted:
            m = self.machine
            for start in d.deleted:
                rows.append(IntervalDelete(m, from_us(start)))
            d.deleted = set()
        if d.intervals:
            for iv in d.intervals.values():
                rows.append(self._interval_row(iv))
            d.intervals = {}
        if d.status and self.intervals and self.last_ts is not None:
            cur = self.intervals[-1]
            sent = self.status_sent
            # (the usual batch: same interval, state and reason; the work order last)
            changes = self.wo_changes  # _wo_at(last), its usual case inline
            if changes and changes[-1][0] <= self.last_ts:
                wo = changes[-1][2]
            else:
                wo = self._wo_at(self.last_ts)
            if (
                sent is None
                or cur.start != sent[0]
                or cur.state != sent[1]
                or cur.reason != sent[2]
                or wo != sent[3]
            ):
                rows.append(self._status_row())
                d.status = False
        return rows

    def _mark_seq(self) -> None:
        last = self.last_ts
        if last is None:
            return
        marks = self.seq_marks
        if not marks or last - marks[-1][1] >= max(self.spec.lateness_us // 8, 1_000_000):
            # Those more than twice the lateness behind go: a snapshot needs one before
            # its earliest part time, which settles at one lateness behind the clock.
            keep = last - 2 * self.spec.lateness_us
            k = 0
            while k + 1 < len(marks) and marks[k + 1][1] < keep:
                k += 1
            self.seq_marks = (*marks[k:], (self.seq, last))

    def _scrap_row(self, hour: int) -> ScrapSetRow:
        inst = self.spec.calendar.shift_at(hour)
        if inst is not None:
            day, name = inst.date, inst.name
        else:  # between shifts: the hour's own plant-local date
            day, name = from_us(hour).astimezone(self.clock._tz).date(), None
        return ScrapSetRow(
            self.machine, _bound(hour), day, name, _scrap_items(self.scrap.get(hour))
        )

    def _status_row(self) -> StatusRow:
        cur = self.intervals[-1]
        last = self.last_ts
        assert last is not None
        wo = self._wo_at(last)
        self.status_sent = (cur.start, cur.state, cur.reason, wo)
        return StatusRow(
            self.machine,
            cur.state,
            from_us(cur.start),
            cur.reason,
            wo,
            from_us(last),
            self.good_total,
            self.scrap_total,
        )

    def has_pending(self) -> bool:
        d = self.dirty
        return bool(d.hours or d.shifts or d.work_orders or d.intervals or d.status)

    def _interval_row(self, iv: Interval) -> IntervalRow:
        end = iv.end
        micro: bool | None = None
        if iv.state in STOP_STATES:
            upto = end if end is not None else (self.last_ts or iv.start)
            micro = self._shape(iv, upto)[0] == MICRO
        return IntervalRow(
            self.machine,
            from_us(iv.start),
            None if end is None else from_us(end),
            iv.state,
            iv.reason,
            iv.work_order,
            0.0 if end is None else (end - iv.start) / 1e6,
            micro,
        )

    def _forget_old(self) -> None:
        """Drop history older than the kept horizon (bounded memory per machine)."""
        if self.last_ts is None:
            return
        horizon = self.last_ts - self.spec.history_us
        ivs = self.intervals
        if len(ivs) > 1 and ivs[0].end is not None and ivs[0].end < horizon - HOUR_US:
            k = 0
            while k < len(ivs) - 1 and (ivs[k].end or 0) < horizon - HOUR_US:
                k += 1
            del ivs[:k]
        if self.hours and min(self.hours) < horizon - HOUR_US:
            # The count context holds buckets and work-order totals that this may drop
            # (kept over flushes otherwise: recomputing it costs more than a batch's counts).
            self._drain_counts()  # (drained by flush already: its buckets stay)
            self._count_cache = None
            self.hours = {h: b for h, b in self.hours.items() if h >= horizon - HOUR_US}
            self.scrap = {h: s for h, s in self.scrap.items() if h >= horizon - HOUR_US}
            self.shifts = {s: b for s, b in self.shifts.items() if s.end >= horizon - HOUR_US}
            self.reports = [r for r in self.reports if r.at >= horizon - HOUR_US]
            # (a spec pickled before keep_wo_us reads the class default)
            wo_horizon = self.last_ts - max(self.spec.history_us, self.spec.keep_wo_us)
            for wo in [w for w, seen in self.wo_seen.items() if seen < wo_horizon]:
                if wo != self._wo_at(self.last_ts):
                    for d in (
                        self.wo_parts,
                        self.wo_started,
                        self.wo_seen,
                        self.wo_order,
                        self.op_parts,
                        self.op_started,
                    ):
                        d.pop(wo, None)
            keep = [c for c in self.wo_changes if c[0] >= horizon]
            older = [c for c in self.wo_changes if c[0] < horizon]
            self.wo_changes = older[-1:] + keep
            if self.wo_ops:
                kept = {(c[0], c[1]) for c in self.wo_changes}
                self.wo_ops = {k: v for k, v in self.wo_ops.items() if k in kept}


def _start(iv: Interval) -> int:
    return iv.start


def _change_t(c: tuple[int, int, str | None]) -> int:
    return c[0]


def _scrap_reason(kind: int, source: str | None) -> str:
    # Only a scrap report (kind 2) names a reason; its source slot holds it.
    return (source or UNSPECIFIED) if kind == 2 else UNSPECIFIED


def _scrap_items(
    by: dict[tuple[str, str | None], int] | None,
) -> tuple[tuple[str, str, int], ...]:
    items: dict[tuple[str, str], int] = {}
    for (reason, product), qty in (by or {}).items():
        # No product and a product literally named "unknown" are one item (one key).
        key = (reason, product if product is not None else UNKNOWN_PRODUCT)
        items[key] = items.get(key, 0) + qty
    return tuple(sorted((r, p, q) for (r, p), q in items.items() if q))


def _delta(previous: int, value: int) -> int:
    # A value below the previous one is a counter reset: the parts since are the value.
    return value - previous if value >= previous else value


_BOUNDS: dict[int, datetime] = {}


def _bound(t: int) -> datetime:
    """from_us for the bounds of hours and shifts: the same few instants for every machine
    at every flush (remembered, a bounded number)."""
    dt = _BOUNDS.get(t)
    if dt is None:
        if len(_BOUNDS) > 10_000:
            _BOUNDS.clear()
        dt = _BOUNDS[t] = from_us(t)
    return dt


# Rows built as tuple.__new__(RowType, values): the same rows without the Python frame
# of a NamedTuple's __new__ (two rows per hour and shift in every flush).
_new_row = tuple.__new__


def _hour_row(machine: str, b: Bucket) -> HourRow:
    r = b.raw_us
    return _new_row(
        HourRow,
        (
            machine,
            _bound(b.start),
            r[0] / 1e6,
            r[1] / 1e6,
            r[2] / 1e6,
            r[3] / 1e6,
            r[4] / 1e6,
            r[5] / 1e6,
            b.all_good,
            b.all_scrap,
        ),
    )


def _kpi_rows(
    machine: str, kind: str, b: Bucket, inst: ShiftInstance | None
) -> tuple[KpiRow, ReasonSetRow]:
    tu = b.time_us
    planned = tu[RUNNING] + tu[MICRO] + tu[IDLE] + tu[DOWN] + tu[SETUP] + tu[OFFLINE]
    start = _bound(b.start)
    kpi = _new_row(
        KpiRow,
        (
            machine,
            kind,
            start,
            _bound(b.end),
            inst.date if inst else None,
            inst.name if inst else None,
            planned / 1e6,
            tu[RUNNING] / 1e6,
            tu[MICRO] / 1e6,
            b.micro_count,
            tu[IDLE] / 1e6,
            tu[DOWN] / 1e6,
            tu[SETUP] / 1e6,
            tu[OFFLINE] / 1e6,
            tu[PLANNED_STOP] / 1e6,
            b.good,
            b.scrap,
            b.ideal_us / 1e6,
            b.failures,
            b.failure_us / 1e6,
            b.all_good,
            b.all_scrap,
        ),
    )
    reasons = b.reasons
    items = (
        tuple(sorted((r, us / 1e6, stops) for r, (us, stops) in reasons.items())) if reasons else ()
    )
    return kpi, _new_row(ReasonSetRow, (machine, kind, start, items))
