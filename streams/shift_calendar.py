"""Shift instances and planned windows of a shift calendar, as integer microseconds (UTC).

Pure: no I/O, no Bytewax. The metrics engine asks `planned_at` / `shift_at` once per part
event, so both answer from a cached segment (a window, or the gap between two) when the
instant falls where the previous one did, like `HourClock` caches its hour.

Rules (see the spec, section Time):

- An instance of a shift exists for each plant-local date whose ISO weekday is in
  `calendar.workdays`. It starts at date + start and ends at end on the same date, or on
  the next one when end <= start (a Saturday night shift runs into Sunday even if Sunday is
  not a workday).
- A break starts at the first occurrence of its start time at or after the shift's start,
  ends at the first occurrence of its end time after that, and is clipped to the instance
  (the night shift's 00:00 supper is on the next date).
- Local times become instants with zoneinfo, fold=0: a DST change inside a shift makes it
  an hour shorter or longer in real time, which is what the people on it work.
- Overlapping instances (a badly written calendar): the instance that starts first owns the
  overlap; the later one's start is moved to the end of the earlier one, and an instance
  that is covered completely does not exist. Ties go to the earlier date, then to the
  shift listed first.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo

from mesflow.plant import ShiftCalendar
from streams.hour_clock import from_us, to_us

_DAY = timedelta(days=1)
# More than any real DST jump (at most 2 h): bounds derived from local midnights with this
# margin hold even when a midnight does not exist or the wall clock repeats.
_MARGIN_US = 6 * 3_600_000_000


class ShiftInstance(NamedTuple):
    date: date  # plant-local date the shift starts on
    name: str
    start: int  # us
    end: int  # us


class PlannedWindow(NamedTuple):
    start: int
    end: int
    shift: ShiftInstance


class _Raw(NamedTuple):
    """One shift on one date before overlaps with other instances are resolved."""

    start: int
    date: date
    order: int  # position in calendar.shifts: breaks ties deterministically
    end: int
    breaks: tuple[tuple[int, int], ...]


class _Day(NamedTuple):
    """The resolved instances that start on one local date, and their planned windows."""

    instances: tuple[ShiftInstance, ...]
    windows: tuple[PlannedWindow, ...]


class _Timeline(NamedTuple):
    """Everything known about [lo, hi) as segments: value i holds on [bounds[i], bounds[i+1])."""

    lo: int
    hi: int
    shift_bounds: list[int]
    shift_values: list[ShiftInstance | None]
    plan_bounds: list[int]
    plan_values: list[ShiftInstance | None]


_EMPTY_TIMELINE = _Timeline(1, 0, [], [], [], [])


# The per-date caches of each (calendar, zone), as CalendarIndex uses them. Their values
# are immutable and a function of the calendar and zone alone (the builders use nothing
# else of the index that made them), so any index of the same pair may answer from them.
_Caches = tuple[
    Callable[[date], tuple["_Raw", ...]], Callable[[date], "_Day"], Callable[[date], "_Timeline"]
]
_SHARED: dict[tuple[str, str], _Caches] = {}
_MAX_SHARED = 64  # calendars; more (tests, many plants in one process) start afresh
# The local dates a range of instants [a, b) may touch, by (zone, a, b): a function of
# the zone alone (CalendarIndex._dates).
_DATES: dict[tuple[str, int, int], tuple[date, ...]] = {}
_MAX_DATES = 4096


def _start(i: ShiftInstance) -> int:
    # Instances sort as tuples by date first; an instance of a later date can start first.
    return i.start


def _segments(
    lo: int, hi: int, items: list[tuple[int, int, ShiftInstance]]
) -> tuple[list[int], list[ShiftInstance | None]]:
    # Items are sorted and disjoint; gaps get None. Zero-length segments may appear, and
    # are harmless: bisect_right never selects them.
    bounds = [lo]
    values: list[ShiftInstance | None] = [None]
    for s, e, v in items:
        s, e = max(s, lo), min(e, hi)
        if e <= s:
            continue
        bounds += (s, e)
        values += (v, None)
    bounds.append(hi)
    return bounds, values


class CalendarIndex:
    """Answers which shift instance (and whether planned time) covers an instant or range.

    Pickles as (calendar, zone): the caches are rebuilt on demand after a restore.
    """

    __slots__ = (
        "_day",
        "_p_hi",
        "_p_lo",
        "_p_val",
        "_raw",
        "_s_hi",
        "_s_lo",
        "_s_val",
        "_timeline",
        "_tl",
        "_tz",
        "calendar",
        "zone",
    )

    def __init__(self, calendar: ShiftCalendar, zone: str) -> None:
        self.calendar = calendar
        self.zone = zone
        self._tz = ZoneInfo(zone)
        # Per-date caches; bounded so a long replay over years does not grow them forever.
        # Shared by every index of the same calendar and zone (each machine's tracker and
        # side steps has its own index): the days are built once, not once per machine.
        key = (repr(calendar), zone)
        caches = _SHARED.get(key)
        if caches is None:
            if len(_SHARED) >= _MAX_SHARED:
                _SHARED.clear()
            caches = _SHARED[key] = (
                lru_cache(maxsize=64)(self._build_raw),
                lru_cache(maxsize=1024)(self._build_day),
                lru_cache(maxsize=64)(self._build_timeline),
            )
        self._raw: Callable[[date], tuple[_Raw, ...]] = caches[0]
        self._day: Callable[[date], _Day] = caches[1]
        self._timeline: Callable[[date], _Timeline] = caches[2]
        self._tl = _EMPTY_TIMELINE
        # Hot-path caches: the segment (window or gap) of the previous call, empty at first.
        self._p_lo, self._p_hi = 1, 0
        self._s_lo, self._s_hi = 1, 0
        self._p_val: ShiftInstance | None = None
        self._s_val: ShiftInstance | None = None

    def __reduce__(self) -> tuple[type[CalendarIndex], tuple[ShiftCalendar, str]]:
        return (CalendarIndex, (self.calendar, self.zone))

    def __repr__(self) -> str:
        return f"CalendarIndex({self.calendar!r}, {self.zone!r})"

    # -- hot path --------------------------------------------------------------------------

    def planned_at(self, t: int) -> ShiftInstance | None:
        """The instance if t is inside a shift and not inside one of its breaks, else None."""
        if self._p_lo <= t < self._p_hi:
            return self._p_val
        tl = self._tl if self._tl.lo <= t < self._tl.hi else self._locate(t)
        i = bisect_right(tl.plan_bounds, t) - 1
        self._p_lo, self._p_hi = tl.plan_bounds[i], tl.plan_bounds[i + 1]
        self._p_val = v = tl.plan_values[i]
        return v

    def shift_at(self, t: int) -> ShiftInstance | None:
        """The instance whose [start, end) contains t, also during one of its breaks."""
        if self._s_lo <= t < self._s_hi:
            return self._s_val
        tl = self._tl if self._tl.lo <= t < self._tl.hi else self._locate(t)
        i = bisect_right(tl.shift_bounds, t) - 1
        self._s_lo, self._s_hi = tl.shift_bounds[i], tl.shift_bounds[i + 1]
        self._s_val = v = tl.shift_values[i]
        return v

    def _locate(self, t: int) -> _Timeline:
        self._tl = tl = self._timeline(self._local_date(t))
        return tl

    # -- ranges (per recomputed bucket) ----------------------------------------------------

    def shifts_between(self, a: int, b: int) -> list[ShiftInstance]:
        """The instances overlapping [a, b), sorted by start."""
        out = [
            i
            for d in self._dates(a, b)
            for i in self._day(d).instances
            if i.start < b and i.end > a
        ]
        out.sort(key=_start)
        return out

    def planned_windows(self, a: int, b: int) -> list[PlannedWindow]:
        """The parts of [a, b) inside an instance and outside its breaks: sorted, disjoint."""
        out = [
            PlannedWindow(max(w.start, a), min(w.end, b), w.shift)
            for d in self._dates(a, b)
            for w in self._day(d).windows
            if w.start < b and w.end > a
        ]
        out.sort()
        return out

    def _dates(self, a: int, b: int) -> tuple[date, ...]:
        if b <= a:
            return ()
        # The same ranges (hours, shifts) are asked for every machine: remembered per zone.
        key = (self.zone, a, b)
        dates = _DATES.get(key)
        if dates is None:
            # An instance lasts at most 25 h of real time (24 h local plus a DST hour), so
            # one that overlaps [a, b) started no earlier than two dates before a's date;
            # the extra date after b's covers a DST gap at midnight.
            first = self._local_date(a) - 2 * _DAY
            n = (self._local_date(b) - first).days + 2
            if len(_DATES) >= _MAX_DATES:
                _DATES.clear()
            dates = _DATES[key] = tuple(first + k * _DAY for k in range(n))
        return dates

    # -- building (cached per local date) --------------------------------------------------

    def _local_date(self, t: int) -> date:
        return from_us(t).astimezone(self._tz).date()

    def _at(self, d: date, tod: time) -> int:
        return to_us(datetime.combine(d, tod.replace(tzinfo=None), tzinfo=self._tz))

    def _build_raw(self, d: date) -> tuple[_Raw, ...]:
        if d.isoweekday() not in self.calendar.workdays:
            return ()
        nxt = d + _DAY
        out = []
        for order, shift in enumerate(self.calendar.shifts):
            start = self._at(d, shift.start)
            end = self._at(d if shift.end > shift.start else nxt, shift.end)
            breaks = []
            for br in shift.breaks:
                bd = d if br.start >= shift.start else nxt
                ed = bd if br.end > br.start else bd + _DAY
                breaks.append((self._at(bd, br.start), self._at(ed, br.end)))
            breaks.sort()
            out.append(_Raw(start, d, order, end, tuple(breaks)))
        return tuple(out)

    def _build_day(self, d: date) -> _Day:
        # Instances of d can only overlap those of the neighbouring dates; the sweep gives
        # each instance the part no earlier-starting instance owns.
        raws = sorted(r for k in (-2, -1, 0, 1) for r in self._raw(d + k * _DAY))
        instances: list[ShiftInstance] = []
        windows: list[PlannedWindow] = []
        reach: int | None = None
        for r in raws:
            start = r.start if reach is None else max(r.start, reach)
            reach = r.end if reach is None else max(reach, r.end)
            if r.date != d or start >= r.end:
                continue
            inst = ShiftInstance(d, self.calendar.shifts[r.order].name, start, r.end)
            instances.append(inst)
            cur = start
            for bs, be in r.breaks:  # sorted by start; overlapping breaks merge here
                bs, be = max(bs, start), min(be, r.end)
                if be <= bs:
                    continue
                if bs > cur:
                    windows.append(PlannedWindow(cur, bs, inst))
                cur = max(cur, be)
            if cur < r.end:
                windows.append(PlannedWindow(cur, r.end, inst))
        return _Day(tuple(instances), tuple(windows))

    def _build_timeline(self, d: date) -> _Timeline:
        # Instances of dates <= d-3 end before local midnight of d-1, those of dates >= d+2
        # start after local midnight of d+2: [lo, hi) below sees all that can touch it, and
        # it contains every instant whose local date is d.
        lo = self._at(d - _DAY, time(0)) + _MARGIN_US
        hi = self._at(d + 2 * _DAY, time(0)) - _MARGIN_US
        days = [self._day(d + k * _DAY) for k in (-2, -1, 0, 1)]
        insts = sorted((i for day in days for i in day.instances), key=_start)
        wins = sorted(w for day in days for w in day.windows)
        sb, sv = _segments(lo, hi, [(i.start, i.end, i) for i in insts])
        pb, pv = _segments(lo, hi, [(w.start, w.end, w.shift) for w in wins])
        return _Timeline(lo, hi, sb, sv, pb, pv)
