"""Silent machines: a machine that sends nothing for longer than its `silent_after_s` is
`offline` (reason `no_data`) from its last message on, until its next message.

Plain Python, no Bytewax; it works on one MachineTracker's timeline through the tracker's
own state-change machinery (docs/metrics.md, "Silent machines"):

* A *message* is a machine signal: a `state`, `count` or `counter` event. Operator reports,
  work orders and process values are not messages (they say nothing about the connection).
* In event time, when a message at t follows the previous one at h with t - h > S and the
  machine's state at h is running, idle, down or setup, the tracker gets a state `offline`
  (`no_data`) at h and, unless the message at t is itself a `state` event, the state it had
  at h again at t. These are ordinary state changes for every figure (a stop cut by a
  silence is two stops).
* The decision needs only the two messages, so a replay, a rebuild from the log and the live
  run decide alike. A message that arrives late (within the allowed lateness) between two
  messages that made a silence undoes it and decides both halves again, so late input gives
  the in-order result; one later than that reaches here through the rebuild, in order.
* Live only, a wall-clock check (`provisional`) puts the machine `offline` from its last
  message as soon as S has passed, before the next message; that message then confirms it
  (same result as deciding then) or, if the clocks disagreed, undoes it.
"""

from __future__ import annotations

import contextlib
import time
from bisect import bisect_left, insort
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from mesflow.events import StateEvent
from streams.hour_clock import from_us

if TYPE_CHECKING:
    from streams.machine_tracker import MachineTracker

# States a silence can interrupt: a machine offline already, or in a planned stop (switched
# off on purpose), is not reported silent.
WATCHED = frozenset({"running", "idle", "down", "setup"})
REASON = "no_data"
Mark = tuple[int, int, str, "str | None"]  # as MachineTracker.marks


@dataclass(slots=True)
class Silence:
    start: int  # the last message before it, us
    end: int | None  # the message that ended it; None: provisional (live, still silent)
    state: str  # the state the machine had at `start` (restored by an undo)
    reason: str | None  # its state event's reason
    resumed: bool = False  # that state was set again at `end`
    marks: list[Mark] = field(default_factory=list)  # the state changes made for it


def _forget_mark(tr: MachineTracker, mark: Mark) -> None:
    with contextlib.suppress(ValueError):  # already gone: older than the allowed lateness
        tr.marks.remove(mark)


def _synthetic(state: str, reason: str | None) -> StateEvent:
    # Only `state` and `reason` are read by the tracker's state machinery.
    return StateEvent.model_construct(state=state, reason=reason)


@dataclass(slots=True)
class SilenceWatch:
    """One machine's recent messages and the silences decided from them."""

    heard: list[tuple[int, bool]] = field(default_factory=list)  # (t, a state event at t)
    silences: list[Silence] = field(default_factory=list)  # by start

    # -- messages -----------------------------------------------------------------------------

    def on_message(self, tr: MachineTracker, t: int, is_state: bool) -> int | None:
        """Before the tracker applies a message at t. Returns, for a message that is not
        the newest, the time from which silences are decided again once it is applied
        (call `after`)."""
        heard = self.heard
        if not heard or t > heard[-1][0]:
            if heard:
                self._next_in_order(tr, heard[-1][0], t, is_state)
            heard.append((t, is_state))
            if len(heard) > 64:
                self._forget(tr)
            return None
        k = bisect_left(heard, (t,))
        if k < len(heard) and heard[k][0] == t:  # another message at the same instant
            if not is_state or heard[k][1]:
                return None  # changes no gap and no state
            heard[k] = (t, True)
            self._drop_resume_at(tr, t)
            start = t
        else:
            heard.insert(k, (t, is_state))
            start = heard[k - 1][0] if k > 0 else t
        # Late: it splits the gap it falls in, and a state event changes which state the
        # machine had at the following messages. Every silence after it is undone (newest
        # first) and, once the message is applied, decided again in order (`after`).
        for s in sorted((s for s in self.silences if s.end is None or s.end > t),
                        key=lambda s: s.start, reverse=True):  # fmt: skip
            self._undo(tr, s)
        return start

    def after(self, tr: MachineTracker, t: int, start: int) -> None:
        """After a late message at t was applied: decide every gap from `start` on again,
        in order, as if the messages had come in order (a provisional silence after the
        last message is left to the next live check)."""
        heard = self.heard
        k = bisect_left(heard, (start,))
        for (x, _), (y, y_state) in zip(heard[k:], heard[k + 1 :], strict=False):
            if y - x > tr.spec.silent_after_us and self._watched(tr, x):
                self._silence(tr, x, y, resume=not y_state)

    def _next_in_order(self, tr: MachineTracker, h: int, t: int, is_state: bool) -> None:
        s = self.silences[-1] if self.silences else None
        if s is not None and s.end is None:  # provisional: this message decides it
            if t - h > tr.spec.silent_after_us:
                self._end(tr, s, t, resume=not is_state)
            else:
                self._undo(tr, s)
        elif t - h > tr.spec.silent_after_us and self._watched(tr, h):
            self._silence(tr, h, t, resume=not is_state)

    # -- live ---------------------------------------------------------------------------------

    def due(self, tr: MachineTracker) -> int | None:
        """Event time (us) from which a provisional silence is due; None: none is."""
        if not self.heard or (self.silences and self.silences[-1].end is None):
            return None
        h = self.heard[-1][0]
        return h + tr.spec.silent_after_us + 1 if self._watched(tr, h) else None

    def provisional(self, tr: MachineTracker, now: int) -> bool:
        """Live: offline from the last message on once `now` is past due; True if so."""
        due = self.due(tr)
        if due is None or now < due or tr.late_from is not None:
            return False
        self._silence(tr, self.heard[-1][0], None, resume=False)
        return True

    # -- changes to the timeline ----------------------------------------------------------------

    def _watched(self, tr: MachineTracker, h: int) -> bool:
        i = tr._index_at(h)
        if i < 0 or tr.last_ts is None or h < tr.last_ts - tr.spec.history_us:
            return False  # no state known, or outside the kept history
        return tr.intervals[i].state in WATCHED

    def _set(self, tr: MachineTracker, t: int, state: str, reason: str | None) -> Mark:
        # The state machinery works on credited time up to the clock (counts defer it), and
        # a change at or after the clock is made at the clock.
        if tr.last_ts is not None and t > tr.last_ts:
            tr._advance(t)
        else:
            tr._catch_up()
        tr._state(t, _synthetic(state, reason))
        return (t, tr.arrivals, state, reason)

    def _silence(self, tr: MachineTracker, a: int, b: int | None, *, resume: bool) -> None:
        i = tr._index_at(a)
        iv = tr.intervals[i]
        start = a
        if iv.start == a and i > 0 and tr.intervals[i - 1].state == "offline":
            # The one state event the machine sent between two offline spans stays (for a
            # microsecond): offline at `a` would replace it and merge both spans into one
            # interval that began long before, which a rebuild from a checkpoint after that
            # start would not write again.
            start = a + 1
        s = Silence(start, None, iv.state, iv.state_reason)
        s.marks.append(self._set(tr, start, "offline", REASON))
        insort(self.silences, s, key=lambda x: x.start)
        if b is not None:
            self._end(tr, s, b, resume=resume)
        tr._count_cache = None

    def _end(self, tr: MachineTracker, s: Silence, b: int, *, resume: bool) -> None:
        s.end = b
        tr._advance(b)  # the offline time up to b is credited (in order: b is the clock)
        if resume:
            s.resumed = True
            s.marks.append(self._set(tr, b, s.state, s.reason))
        tr._count_cache = None

    def _undo(self, tr: MachineTracker, s: Silence) -> None:
        # The state of `start` set again there replaces the offline interval and merges
        # with its neighbours of that state (the one before, the resumed one after).
        mark = self._set(tr, s.start, s.state, s.reason)
        for m in [*s.marks, mark]:
            _forget_mark(tr, m)
        self.silences.remove(s)
        tr._count_cache = None

    def _drop_resume_at(self, tr: MachineTracker, t: int) -> None:
        """A state event at the instant a silence ended sets the state there itself (as
        when it is processed first, in order): the resumed state was not needed."""
        for s in self.silences:
            if s.end == t and s.resumed:
                s.resumed = False
                _forget_mark(tr, s.marks.pop())

    def _forget(self, tr: MachineTracker) -> None:
        """Keep what a message within the allowed lateness can still change."""
        if tr.last_ts is None:
            return
        horizon = tr.last_ts - tr.spec.lateness_us
        k = bisect_left(self.heard, (horizon,))
        del self.heard[: max(k - 1, 0)]
        self.silences = [s for s in self.silences if s.end is None or s.end >= horizon]


# -- for the dataflow's live timer (streams/dataflow.py) -------------------------------------


def live_due(tr: MachineTracker, due: datetime | None) -> datetime | None:
    """The earlier of `due` and when the machine's provisional silence is due (wall clock)."""
    if not tr.spec.silent_after_us:
        return due
    at = tr.silence.due(tr)
    if at is None:
        return due
    when = from_us(at)
    return when if due is None else min(due, when)


def live_check(tr: MachineTracker) -> bool:
    """Live: put the machine offline if it has been silent too long now; True if it was."""
    return bool(tr.spec.silent_after_us) and tr.silence.provisional(tr, time.time_ns() // 1000)
