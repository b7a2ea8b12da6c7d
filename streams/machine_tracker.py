"""Per-machine logic: state intervals, part counts, current status, hourly figures.

Plain Python, no Bytewax: `streams/dataflow.py` keeps one tracker per machine in a
stateful step; tests drive trackers directly. Events of one machine are applied in log
order; all times are integer microseconds since the epoch (streams/hour_clock.py).

Time accounting: every event moves the machine's clock forward, and the time since the
last event is credited to the current state in the plant-local hour buckets it spans.
So the stored hourly figures are always complete up to the machine's latest event, and
a replay of the same events gives the same figures (nothing depends on arrival time).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

from mesflow.events import (
    CounterEvent,
    CountEvent,
    DowntimeReasonReport,
    MachineEvent,
    ScrapReport,
    StateEvent,
    WorkOrderEndReport,
    WorkOrderStartReport,
)
from streams.hour_clock import HourClock, from_us, to_us
from streams.records import HourRow, IntervalRow, Rejection, StatusRow

STATES = ("running", "idle", "down", "setup", "planned_stop", "offline")
STATE_INDEX = {s: i for i, s in enumerate(STATES)}
STOP_STATES = frozenset({"idle", "down"})
# Closed intervals and hour buckets are kept this long (event time) after the machine's
# latest event, so late operator reports can still re-attribute a stop.
DEFAULT_HISTORY_US = 48 * 3_600_000_000


@dataclass(slots=True)
class Interval:
    start: int
    end: int | None
    state: str
    reason: str | None
    work_order: str | None

    def row(self, machine: str) -> IntervalRow:
        end = self.end
        return IntervalRow(
            machine,
            from_us(self.start),
            None if end is None else from_us(end),
            self.state,
            self.reason,
            self.work_order,
            0.0 if end is None else (end - self.start) / 1e6,
        )


@dataclass(slots=True)
class HourFigures:
    start: int
    state_us: list[int] = field(default_factory=lambda: [0] * len(STATES))
    good: int = 0
    scrap: int = 0

    def row(self, machine: str) -> HourRow:
        s = self.state_us
        return HourRow(
            machine,
            from_us(self.start),
            s[0] / 1e6,
            s[1] / 1e6,
            s[2] / 1e6,
            s[3] / 1e6,
            s[4] / 1e6,
            s[5] / 1e6,
            self.good,
            self.scrap,
        )


class MachineTracker:
    """Everything the dataflow knows about one machine."""

    def __init__(
        self,
        machine: str,
        zone: str,
        known_reasons: frozenset[str] = frozenset(),
        history_us: int = DEFAULT_HISTORY_US,
    ) -> None:
        self.machine = machine
        self.clock = HourClock(zone)
        self.known_reasons = known_reasons
        self.history_us = history_us
        self.current: Interval | None = None
        self.history: list[Interval] = []  # closed intervals, by start
        self.accounted_until: int | None = None  # state time credited up to here
        self.last_ts: int | None = None
        self.work_order: str | None = None
        self.counters: dict[str, int] = {}
        self.good_total = 0
        self.scrap_total = 0
        self.hours: dict[int, HourFigures] = {}
        self._dirty_hours: set[int] = set()
        self._dirty_intervals: dict[int, Interval] = {}
        self._status_dirty = False

    # -- applying events -------------------------------------------------------------------

    def apply(self, seq: int, ev: MachineEvent) -> Rejection | None:
        """Apply one event; a Rejection means it goes to the dead-letter table instead."""
        t = to_us(ev.ts)
        if self.last_ts is not None and t < self.last_ts - self.history_us:
            # Its hour buckets are no longer held: counting it would overwrite the stored
            # figures of that hour with a partial one.
            return Rejection(seq, "late", f"{ev.ts.isoformat()} is older than the kept history")
        if isinstance(ev, CountEvent):
            self._advance(t)
            self._add_parts(t, ev.good, ev.scrap)
        elif isinstance(ev, StateEvent):
            return self._state(seq, t, ev)
        elif isinstance(ev, CounterEvent):
            self._advance(t)
            self._counter(t, ev)
        elif isinstance(ev, ScrapReport):
            self._advance(t)
            self._move_to_scrap(t, ev.qty)
        elif isinstance(ev, DowntimeReasonReport):
            return self._downtime_reason(seq, ev)
        elif isinstance(ev, WorkOrderStartReport):
            self._advance(t)
            self.work_order = ev.work_order
            self._status_dirty = True
        elif isinstance(ev, WorkOrderEndReport):
            self._advance(t)
            if self.work_order == ev.work_order:
                self.work_order = None
                self._status_dirty = True
        return None

    def _state(self, seq: int, t: int, ev: StateEvent) -> Rejection | None:
        cur = self.current
        if cur is not None and t < cur.start:
            return Rejection(
                seq,
                "out_of_order",
                f"state at {ev.ts.isoformat()} is before the current "
                f"{cur.state} interval started ({from_us(cur.start).isoformat()})",
            )
        if cur is not None and cur.state == ev.state:
            # Consecutive events with the same state are one interval; a reason given
            # later (e.g. the PLC's alarm text) still names the stop.
            self._advance(t)
            if ev.reason and ev.reason != cur.reason:
                cur.reason = ev.reason
                self._dirty_intervals[cur.start] = cur
                self._status_dirty = True
            return None
        if cur is not None and self.accounted_until is not None:
            if t >= self.accounted_until:
                self._advance(t)
            else:
                # Counts after t already credited time to the old state: give it back.
                self._credit(t, self.accounted_until, cur.state, -1)
                self._credit(t, self.accounted_until, ev.state, +1)
        cur_new = Interval(t, None, ev.state, ev.reason, self.work_order)
        if cur is not None:
            cur.end = t
            self.history.append(cur)
            self._dirty_intervals[cur.start] = cur
        self.current = cur_new
        self._dirty_intervals[t] = cur_new
        if self.accounted_until is None or self.accounted_until < t:
            self.accounted_until = t
        self._touch(t)
        self._status_dirty = True
        return None

    def _counter(self, t: int, ev: CounterEvent) -> None:
        previous = self.counters.get(ev.name)
        self.counters[ev.name] = ev.value
        if previous is None:
            return  # the first value is a baseline, not parts
        delta = ev.value - previous if ev.value >= previous else ev.value  # reset
        if delta == 0:
            return
        if ev.name == "total":
            self._add_parts(t, delta, 0)
        else:
            self._move_to_scrap(t, delta)

    def _downtime_reason(self, seq: int, ev: DowntimeReasonReport) -> Rejection | None:
        if self.known_reasons and ev.reason not in self.known_reasons:
            return Rejection(
                seq, "unknown_reason", f"reason code {ev.reason!r} is not in the reason tree"
            )
        at = to_us(ev.at)
        target = self._interval_at(at)
        if target is None:
            return Rejection(
                seq, "no_stop", f"machine has no known interval at {ev.at.isoformat()}"
            )
        if target.state == "running":
            return Rejection(
                seq, "no_stop", f"machine was running at {ev.at.isoformat()}, not stopped"
            )
        target.reason = ev.reason
        self._dirty_intervals[target.start] = target
        if target is self.current:
            self._status_dirty = True
        return None

    def _interval_at(self, at: int) -> Interval | None:
        cur = self.current
        if cur is not None and at >= cur.start:
            return cur
        i = bisect_right(self.history, at, key=lambda iv: iv.start) - 1
        if i >= 0:
            iv = self.history[i]
            if iv.end is not None and iv.start <= at < iv.end:
                return iv
        return None

    # -- time and parts ----------------------------------------------------------------------

    def _advance(self, t: int) -> None:
        """Credit the current state with the time up to `t`."""
        self._touch(t)
        cur = self.current
        if cur is None or self.accounted_until is None or t <= self.accounted_until:
            return
        self._credit(self.accounted_until, t, cur.state, +1)
        self.accounted_until = t

    def _touch(self, t: int) -> None:
        if self.last_ts is None or t > self.last_ts:
            self.last_ts = t
            self._status_dirty = True

    def _credit(self, a: int, b: int, state: str, sign: int) -> None:
        idx = STATE_INDEX[state]
        while a < b:
            start, end = self.clock.bucket(a)
            upto = b if b < end else end
            self._hour(start).state_us[idx] += sign * (upto - a)
            a = upto

    def _hour(self, start: int) -> HourFigures:
        h = self.hours.get(start)
        if h is None:
            h = self.hours[start] = HourFigures(start)
        self._dirty_hours.add(start)
        return h

    def _add_parts(self, t: int, good: int, scrap: int) -> None:
        h = self._hour(self.clock.bucket(t)[0])
        h.good += good
        h.scrap += scrap
        self.good_total += good
        self.scrap_total += scrap
        self._status_dirty = True

    def _move_to_scrap(self, t: int, qty: int) -> None:
        h = self._hour(self.clock.bucket(t)[0])
        h.good -= qty
        h.scrap += qty
        self.good_total -= qty
        self.scrap_total += qty
        self._status_dirty = True

    # -- output --------------------------------------------------------------------------------

    def flush(self) -> list[IntervalRow | StatusRow | HourRow]:
        """Rows changed since the last flush (absolute values: upserts are idempotent)."""
        m = self.machine
        rows: list[IntervalRow | StatusRow | HourRow] = [
            iv.row(m) for iv in self._dirty_intervals.values()
        ]
        rows.extend(self.hours[h].row(m) for h in sorted(self._dirty_hours))
        cur = self.current
        if self._status_dirty and cur is not None and self.last_ts is not None:
            rows.append(
                StatusRow(
                    m,
                    cur.state,
                    from_us(cur.start),
                    cur.reason,
                    self.work_order,
                    from_us(self.last_ts),
                    self.good_total,
                    self.scrap_total,
                )
            )
        self._dirty_intervals.clear()
        self._dirty_hours.clear()
        self._status_dirty = False
        self._forget_old()
        return rows

    def _forget_old(self) -> None:
        if self.last_ts is None:
            return
        horizon = self.last_ts - self.history_us
        if self.history and self.history[0].start < horizon:
            self.history = [iv for iv in self.history if (iv.end or 0) >= horizon]
        if len(self.hours) > 2 and min(self.hours) < horizon:
            self.hours = {h: f for h, f in self.hours.items() if h >= horizon}
