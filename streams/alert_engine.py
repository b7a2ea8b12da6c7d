"""Alert rules in event time: the rows the dataflow already makes in, AlertRow steps out.

Plain Python, no Bytewax and no I/O (streams/dataflow.py wires it). Inputs are the rows the
machine trackers emit (IntervalRow: states and reasons; StatusRow: what was last heard;
HourRow: parts per hour; KpiRow: shift figures), the order rows and risk callbacks of
order progress, and `alert_ack` events. Output: one AlertRow per step of an alert's life.

Every rule becomes a *condition* per scope (a machine, an order) that begins and ends at
event times. An alert's steps happen at times computed from them: opened at begin +
levels[0].after_min, escalated at begin + levels[k].after_min, resolved when the condition
ends. So the steps, their times and the alert id (rule, scope, begin) follow from the
events alone: a replay gives the same rows, and a restart from a snapshot names the same
alerts (the outbox dedupes on them).

Time moves by the events: a machine's own rows move its clock; the latest event time seen
anywhere in the plant, less `grace_s`, moves every clock (a machine down and silent still
escalates, a silent machine is found). Live, the wall clock less a few seconds does too.
The grace keeps the outcome independent of how rows of different machines interleave in a
batch: a step is decided only once no machine can still be `grace_s` behind.

Flapping: a condition that ends and returns within the rule's `clear_after_s` continues
the same alert; the "resolved" step waits until the condition stayed away that long.
An acknowledgement stops the escalation; the alert still resolves when the condition ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from mesflow.alert_rules import (
    AlertsConfig,
    KpiBelowRule,
    MachineDownRule,
    NoReasonRule,
    OrderAtRiskRule,
    Rule,
    ScrapRateRule,
    SilentRule,
)
from mesflow.plant import PlantConfig
from streams.hour_clock import HOUR_US, from_us, to_us
from streams.inspections import InspectionFlag
from streams.limit_spans import LimitSpan
from streams.order_progress import Callback, OrderProgressRow
from streams.records import (
    AlertRow,
    HourRow,
    IntervalDelete,
    IntervalRow,
    KpiRow,
    Progress,
    StatusRow,
)

MIN_US = 60_000_000
MAX_PENDING_ACKS = 1000
MAX_FLOORS = 10_000
S_US = 1_000_000


class AckInput(NamedTuple):
    """An `alert_ack` event, as the validator hands it to the alert step."""

    alert_id: str
    by: str
    via: str
    t: int  # us


@dataclass(slots=True)
class Track:
    """One rule's condition in one scope, and the alert it has opened (if any)."""

    start: int | None = None  # the condition began (first begin of a damped episode)
    end: int | None = None  # it ended (the resolve waits for clear_after_s)
    level: int = -1  # highest level sent; -1: no alert open
    acked_at: int | None = None
    acked_by: str | None = None
    ack_sent: bool = False
    tag: tuple[int, int] | None = None  # kpi_below: the shift (start, end) it is about
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Machine:
    """What the engine knows of one machine (small: no history beyond the scrap window)."""

    now: int = 0  # latest event time seen from it
    state: str | None = None  # the current interval's state
    state_start: int = -1
    reason: str | None = None
    hours: dict[int, tuple[int, int]] = field(default_factory=dict)  # hour -> (good, scrap)


@dataclass(slots=True)
class EngineState:
    """Everything the engine keeps between batches: picklable, and small (one entry per
    machine and per active condition)."""

    plant_now: int = 0  # latest event time seen anywhere
    # Up to when every machine's rows are in (see AlertEngine.feed): the plant clock.
    settled: int = 0
    marks: tuple[int, ...] = ()  # plant_now at the last input-batch markers
    machines: dict[str, _Machine] = field(default_factory=dict)
    tracks: dict[tuple[str, str], Track] = field(default_factory=dict)  # (rule, scope)
    # Acknowledgements of alerts this engine has not opened yet (its clock is behind the
    # boards', or the ack came in the same batch): alert_id -> (t, by, via). Bounded.
    acks: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    # (rule, scope) -> when its last alert resolved: a later one never starts before.
    floors: dict[tuple[str, str], int] = field(default_factory=dict)


class AlertEngine:
    """Evaluates the rules of an AlertsConfig. `state` resumes a snapshot."""

    def __init__(
        self,
        config: AlertsConfig,
        plant: PlantConfig,
        state: EngineState | None = None,
        *,
        grace_s: float | None = None,
        lag_s: float = 10.0,
    ) -> None:
        self.config = config
        self.tz: ZoneInfo = plant.tz
        self.state = state or EngineState()
        grace = plant.plant.allowed_lateness_seconds if grace_s is None else grace_s
        self.grace_us = round(grace * S_US)
        self.lag_us = round(lag_s * S_US)
        # Live: event time goes on with the wall clock from the last batch (not snapshotted:
        # the wall clock is not a fact of the log).
        self._wall_base: tuple[int, int] | None = None  # (wall us, plant_now) at the last batch
        self._wall_clock = 0
        self.rules: dict[str, Rule] = {r.name: r for r in config.rules}
        self.line_of = {m: line.id for m, line in plant.line_of_machine.items()}
        # Rules by kind, and which apply to each machine (resolved once, not per row).
        self._by_machine: dict[str, dict[str, list[Any]]] = {}
        for m in plant.machines:
            kinds: dict[str, list[Any]] = {}
            for r in config.rules:
                if r.kind != "order_at_risk" and r.applies_to(m, self.line_of.get(m)):
                    kinds.setdefault(r.kind, []).append(r)
            self._by_machine[m] = kinds
        self.order_rules = [r for r in config.rules if isinstance(r, OrderAtRiskRule)]
        self.silent_rules = any(isinstance(r, SilentRule) for r in config.rules)
        self.scrap_window_us = max(
            (round(r.window_min * MIN_US) for r in config.rules if isinstance(r, ScrapRateRule)),
            default=0,
        )
        self.out: list[AlertRow] = []
        self._orders: dict[str, OrderProgressRow] = {}  # this batch's order rows (not kept)
        self._adopt_edited_rules()

    def _adopt_edited_rules(self) -> None:
        """A restart with an edited alerts file: conditions of rules that are gone, or whose
        scope no longer covers their machine, are dropped (nothing would ever end them);
        an alert above a rule's new top level stays at the top."""
        tracks = self.state.tracks
        for key in list(tracks):
            rule = self.rules.get(key[0])
            kind, _, machine = key[1].partition(":")
            if rule is None or (
                kind == "machine"
                and (
                    rule.kind == "order_at_risk"
                    or machine not in self.line_of  # no longer in the plant
                    or not rule.applies_to(machine, self.line_of[machine])
                )
            ):
                del tracks[key]
            elif tracks[key].level >= len(rule.levels):
                tracks[key].level = len(rule.levels) - 1

    # -- input -------------------------------------------------------------------------------

    def feed(self, rows: Iterable[Any], wall_us: int | None = None) -> list[AlertRow]:
        """Take one batch of rows, advance time, return the steps that became due.

        `wall_us` (live only): the wall clock now; event time then goes on with it while
        nothing arrives (see `tick`).

        The plant clock: without Progress rows (the end-of-input-batch markers of the
        dataflow), everything seen by the end of this call. With them, the latest time seen
        two markers ago: the dataflow hands one input batch's rows to this step in several
        calls, machine by machine, and a replayed batch can span hours of plant time, so a
        machine whose rows have not come yet must not look silent."""
        intervals: list[IntervalRow] = []
        st = self.state
        for row in rows:
            t = type(row)
            if t is IntervalRow:
                intervals.append(row)
            elif t is IntervalDelete:
                # A late event merged the machine's current interval away: the next row
                # names the current one, whatever its start.
                mach = st.machines.get(row.machine)
                if mach is not None and to_us(row.start_ts) == mach.state_start:
                    mach.state_start = -1
            elif t is StatusRow:
                self._status(row)
            elif t is KpiRow:
                if row.bucket == "shift":
                    self._kpi(row)
            elif t is HourRow:
                if self.scrap_window_us:
                    self._hour(row)
            elif t is OrderProgressRow:
                self._order_row(row)
            elif t is Callback:
                self._order_callback(row)
            elif t is AckInput:
                self._ack(row)
            elif t is LimitSpan:
                self._limit_span(row)
            elif t is InspectionFlag:
                self._inspection_flag(row)
            elif t is Progress:
                if len(st.marks) >= 2:
                    st.settled = max(st.settled, st.marks[0])
                st.marks = (*st.marks[-1:], st.plant_now)
        # A machine's intervals in start order: a batch may name an older one after a newer.
        intervals.sort(key=lambda r: (r.machine, r.start_ts))
        for iv in intervals:
            self._interval(iv)
        self._orders.clear()
        if not st.marks:
            st.settled = st.plant_now
        if wall_us is not None:
            self._wall_base = (wall_us, st.plant_now)
        self._advance()
        out, self.out = self.out, []
        return out

    def settle(self) -> list[AlertRow]:
        """The input has ended (a replay reached its end): every row is in, so the plant
        clock may move up to the latest time seen."""
        st = self.state
        st.settled = max(st.settled, st.plant_now)
        self._advance()
        out, self.out = self.out, []
        return out

    def tick(self, wall_us: int) -> list[AlertRow]:
        """Live, while nothing arrives: the dataflow has caught up with the log, every row
        is in, and it is the wall clock's time (less a lag of a few seconds for rows still
        on their way), so a down, silent machine still escalates and a silent plant is
        found. While the dataflow catches up on history, batches keep coming (the dataflow
        calls this only after seconds without one) and this does nothing."""
        base = self._wall_base
        if base is not None and wall_us - base[0] >= self.lag_us // 2:
            self.state.settled = max(self.state.settled, base[1])
            self._wall_clock = max(self._wall_clock, wall_us - self.lag_us)
        self._advance()
        out, self.out = self.out, []
        return out

    def _machine(self, m: str) -> _Machine:
        mach = self.state.machines.get(m)
        if mach is None:
            mach = self.state.machines[m] = _Machine()
        return mach

    def _saw(self, mach: _Machine, t: int) -> None:
        if t > mach.now:
            mach.now = t
        if t > self.state.plant_now:
            self.state.plant_now = t

    def _status(self, row: StatusRow) -> None:
        mach = self._machine(row.machine)
        t = to_us(row.last_event_ts)
        heard = t > mach.now
        self._saw(mach, t)
        if heard and self.silent_rules:
            for rule in self._rules(row.machine, "silent"):
                self._clear(rule, f"machine:{row.machine}", t)

    def _interval(self, iv: IntervalRow) -> None:
        m = iv.machine
        mach = self._machine(m)
        s = to_us(iv.start_ts)
        self._saw(mach, s if iv.end_ts is None else to_us(iv.end_ts))
        if s < mach.state_start:
            return  # an older interval, closed: its end is the next one's start
        old_state, old_reason = mach.state, mach.reason
        if s == mach.state_start and iv.state == old_state:
            if iv.reason is not None and iv.reason != old_reason:
                mach.reason = iv.reason
                # A reason report ends "no reason": at the latest time heard from the machine.
                for rule in self._rules(m, "no_reason"):
                    self._clear(rule, f"machine:{m}", max(s, mach.now))
                for rule in self._rules(m, "machine_down"):  # the messages name the reason
                    track = self.state.tracks.get((rule.name, f"machine:{m}"))
                    if track is not None:
                        track.facts["reason"] = iv.reason
            return
        mach.state, mach.state_start, mach.reason = iv.state, s, iv.reason
        scope = f"machine:{m}"
        for rule in self._rules(m, "machine_down"):
            if iv.state == "down":
                self._begin(rule, scope, s, m, {"reason": iv.reason} if iv.reason else {})
            elif old_state == "down":
                self._clear(rule, scope, s)
        for rule in self._rules(m, "no_reason"):
            if iv.state in rule.states and iv.reason is None:
                self._begin(rule, scope, s, m, {"state": iv.state})
            else:
                self._clear(rule, scope, s)

    def _kpi(self, row: KpiRow) -> None:
        rules = self._rules(row.machine, "kpi_below")
        if not rules:
            return
        mach = self._machine(row.machine)
        start, end = to_us(row.bucket_start), to_us(row.bucket_end)
        as_of = min(end, mach.now) if mach.now else end
        apt = row.running_s + row.microstop_s
        planned = row.planned_s
        for rule in rules:
            key = (rule.name, f"machine:{row.machine}")
            track = self.state.tracks.get(key)
            if track is not None and track.tag is not None and track.tag[0] != start:
                if start < track.tag[0]:
                    continue  # a revised earlier shift: judged when it was current
                self._clear(rule, key[1], track.tag[1])  # that shift is over
            if planned <= 0 or as_of - start < round(rule.after_first_min * MIN_US):
                continue
            avail = apt / planned
            if rule.metric == "availability":
                value = avail
            else:
                perf = row.ideal_s / apt if apt > 0 else None
                parts = row.good + row.scrap
                qual = row.good / parts if parts else None
                value = avail * perf * qual if perf is not None and qual is not None else 0.0
            facts = {
                "metric": rule.metric,
                "value": round(value, 4),
                "target": rule.target,
                "shift": row.shift_name,
                "shift_date": row.shift_date.isoformat() if row.shift_date else None,
            }
            if value < rule.target and as_of < end:
                tr = self._begin(rule, key[1], as_of, row.machine, facts)
                tr.tag = (start, end)
            else:
                self._clear(rule, key[1], as_of)
                tr2 = self.state.tracks.get(key)
                if tr2 is not None:
                    tr2.facts.update(facts)

    def _hour(self, row: HourRow) -> None:
        rules = self._rules(row.machine, "scrap_rate")
        if not rules:
            return
        mach = self._machine(row.machine)
        h = to_us(row.hour_start)
        mach.hours[h] = (row.good, row.scrap)
        self._saw(mach, h)
        now = max(mach.now, h)
        for old in [k for k in mach.hours if k + HOUR_US <= now - self.scrap_window_us]:
            del mach.hours[old]
        scope = f"machine:{row.machine}"
        for rule in rules:
            since = now - round(rule.window_min * MIN_US)
            good = scrap = 0
            for hour, (g, s) in mach.hours.items():
                if hour + HOUR_US > since:
                    good += g
                    scrap += s
            parts = good + scrap
            rate = scrap / parts if parts else 0.0
            if parts >= rule.min_parts and rate > rule.threshold:
                facts = {"rate": round(rate, 4), "scrap": scrap, "parts": parts,
                         "threshold": rule.threshold, "window_min": rule.window_min}  # fmt: skip
                self._begin(rule, scope, now, row.machine, facts)
            else:
                self._clear(rule, scope, now)

    def _limit_span(self, row: LimitSpan) -> None:
        """process_limit: the machine has values out of limit (track facts `values_out`:
        which); the condition ends when the last of them is back in."""
        m = row.machine
        rules = self._rules(m, "process_limit")
        if not rules:
            return
        s = to_us(row.start)
        e = None if row.end is None else to_us(row.end)
        self._saw(self._machine(m), s if e is None else e)
        scope = f"machine:{m}"
        facts = {"value": row.name, "limit": row.limit, "bound": row.bound,
                 "worst": row.worst, "product": row.product}  # fmt: skip
        for rule in rules:
            if rule.names and row.name not in rule.names:
                continue
            track = self.state.tracks.get((rule.name, scope))
            active = track is not None and track.start is not None and track.end is None
            out = set(track.facts.get("values_out", ())) if track is not None and active else set()
            if e is None or row.name not in out:
                # Opened, or opened and closed since the last batch (only its end came).
                out.add(row.name)
                track = self._begin(rule, scope, s, m, facts)
            assert track is not None
            if e is not None:
                out.discard(row.name)
            track.facts["values_out"] = sorted(out)
            if not out:
                self._clear(rule, scope, e if e is not None else s)

    def _inspection_flag(self, row: InspectionFlag) -> None:
        """first_article / patrol_missed: one condition per run and flag episode, from the
        episode's start (event time, so ids are stable under replay) to its end; an episode
        withdrawn (until == since) ends where it began, and never opens unless it already
        had."""
        kind = {"first_article": "first_article", "patrol_missed": "patrol_missed"}.get(row.flag)
        if kind is None:
            return
        rules = self._rules(row.machine, kind)
        if not rules:
            return
        op = f"/{row.operation}" if row.operation else ""
        scope = f"run:{row.work_order}@{row.machine}{op}"
        since = to_us(row.since)
        until = None if row.until is None else to_us(row.until)
        facts = {"work_order": row.work_order, "operation": row.operation or None,
                 "product": row.product, "detail": row.detail, "parts_made": row.parts_made,
                 "blocking": row.blocking}  # fmt: skip
        for rule in rules:
            track = self.state.tracks.get((rule.name, scope))
            if until is not None and until <= since and (track is None or track.start != since):
                continue  # withdrawn, and not the episode this track follows
            self._begin(rule, scope, since, row.machine, facts)
            if until is not None:
                self._clear(rule, scope, until)

    def _order_row(self, row: OrderProgressRow) -> None:
        if not self.order_rules:
            return
        self._orders[row.order_no] = row
        t = to_us(row.last_event_ts)
        if t > self.state.plant_now:
            self.state.plant_now = t
        for rule in self.order_rules:
            scope = f"order:{row.order_no}"
            urgent = row.priority is not None and row.priority <= rule.min_priority
            if row.at_risk and urgent:
                self._begin(rule, scope, t, None, _order_facts(row, self.tz), order_no=row.order_no)
            else:
                # Completed, cancelled, on hold, priority lowered, or no longer late.
                self._clear(rule, scope, t)

    def _order_callback(self, cb: Callback) -> None:
        if cb.event_type not in ("at_risk", "back_on_track") or not self.order_rules:
            return
        row = self._orders.get(cb.order_no)
        if row is None:
            return  # the order row comes first in a flush; without it, nothing to judge
        t = to_us(row.last_event_ts)
        for rule in self.order_rules:
            scope = f"order:{cb.order_no}"
            urgent = row.priority is not None and row.priority <= rule.min_priority
            if cb.event_type == "at_risk" and urgent:
                facts = {**_order_facts(row, self.tz), "eta": _iso(cb.payload.get("eta"), self.tz)}
                self._begin(rule, scope, t, None, facts, order_no=cb.order_no)
            else:
                self._clear(rule, scope, t)

    def _ack(self, ack: AckInput) -> None:
        """An acknowledgement moves no clock (it is "now" while the alert may be history
        being replayed); it takes effect in the alert's own timeline (see `_run`)."""
        rule_name, _, rest = ack.alert_id.partition(":")
        scope, _, start = rest.rpartition(":")
        if rule_name not in self.rules:
            return
        track = self.state.tracks.get((rule_name, scope))
        if track is not None and str(track.start) == start:
            self._acknowledge(track, ack.t, ack.by, ack.via)
            return
        # Not (yet) known here: its condition may come later in this batch. Kept a while;
        # an ack of an alert that was resolved long ago simply expires.
        acks = self.state.acks
        if ack.alert_id not in acks:
            acks[ack.alert_id] = (ack.t, ack.by, ack.via)
            while len(acks) > MAX_PENDING_ACKS:
                del acks[next(iter(acks))]

    @staticmethod
    def _acknowledge(track: Track, t: int, by: str, via: str) -> None:
        if track.acked_at is None:
            track.acked_at = t
            track.acked_by = by
            track.facts["acknowledged_via"] = via

    # -- conditions --------------------------------------------------------------------------

    def _rules(self, machine: str, kind: str) -> list[Any]:
        kinds = self._by_machine.get(machine)
        return kinds.get(kind, []) if kinds else []

    def _begin(
        self,
        rule: Rule,
        scope: str,
        t: int,
        machine: str | None,
        facts: dict[str, Any],
        order_no: str | None = None,
    ) -> Track:
        key = (rule.name, scope)
        track = self.state.tracks.get(key)
        if track is not None and track.start is not None and track.end is not None:
            damped = track.level >= 0 and t <= track.end + round(rule.clear_after_s * S_US)
            if damped or t <= track.end:
                track.end = None  # it came back: the same alert goes on
            else:
                self._finish(rule, key, track)
                track = None
        if track is None or track.start is None:
            # A condition revised into the past (a late event merged into a machine's
            # history) never reuses the time of an alert that is over: a new alert, new id.
            floor = self.state.floors.get(key)
            if floor is not None and t <= floor:
                t = floor + 1
            track = self.state.tracks[key] = Track(start=t)
            track.facts = {"machine": machine, "order_no": order_no}
            if self.state.acks:
                early = self.state.acks.pop(f"{rule.name}:{scope}:{t}", None)
                if early is not None:
                    self._acknowledge(track, *early)
        track.facts.update(facts)
        return track

    def _clear(self, rule: Rule, scope: str, t: int) -> None:
        track = self.state.tracks.get((rule.name, scope))
        if track is not None and track.start is not None and track.end is None:
            track.end = max(t, track.start)

    def _advance(self) -> None:
        st = self.state
        plant_clock = max(st.settled - self.grace_us, self._wall_clock)
        if self.silent_rules:
            self._find_silent(plant_clock)
        done: list[tuple[str, str]] = []
        for key, track in st.tracks.items():
            rule = self.rules[key[0]]
            clock = plant_clock
            machine = track.facts.get("machine")
            if machine is not None:
                mach = st.machines.get(machine)
                if mach is not None and mach.now > clock:
                    clock = mach.now
            if self._run(rule, key, track, clock):
                done.append(key)
        for key in done:
            del st.tracks[key]

    def _find_silent(self, clock: int) -> None:
        for m, mach in self.state.machines.items():
            if not mach.now or mach.state == "planned_stop":
                continue  # a planned stop (no shift, a break) may well be quiet
            for rule in self._rules(m, "silent"):
                since = mach.now + round(rule.after_s * S_US)
                if since <= clock:
                    scope = f"machine:{m}"
                    track = self.state.tracks.get((rule.name, scope))
                    if track is None or track.start is None or track.end is not None:
                        self._begin(
                            rule, scope, since, m, {"last_heard": _iso(from_us(mach.now), self.tz)}
                        )

    def _run(self, rule: Rule, key: tuple[str, str], track: Track, clock: int) -> bool:
        """Send what became due by `clock`; True when the track is finished."""
        start = track.start
        if start is None:
            return True
        end = track.end
        levels = rule.levels
        for k in range(track.level + 1, len(levels)):
            due = start + round(levels[k].after_min * MIN_US)
            if due > clock or (end is not None and due >= end):
                break
            if k > 0 and track.acked_at is not None and due >= track.acked_at:
                break  # acknowledged: no further escalation
            self._emit(rule, key, track, "opened" if k == 0 else "escalated", k, due)
            track.level = k
        acked = track.acked_at
        if acked is not None and not track.ack_sent and track.level >= 0:
            # Once every step before it is out, whatever the clock: an acknowledgement is
            # shown at once, and it never comes before a step it acknowledges.
            nxt = track.level + 1
            then = start + round(levels[nxt].after_min * MIN_US) if nxt < len(levels) else None
            if then is None or then >= acked or (end is not None and then >= end):
                track.ack_sent = True
                shown = start + round(levels[track.level].after_min * MIN_US)
                self._emit(rule, key, track, "acknowledged", track.level, max(acked, shown))
        if end is None:
            return False
        if track.level < 0:
            return end <= clock  # never opened: nothing to resolve
        if clock >= end + round(rule.clear_after_s * S_US):
            self._finish(rule, key, track)
            return True
        return False

    def _finish(self, rule: Rule, key: tuple[str, str], track: Track) -> None:
        """The episode is over: send what it still owes (escalations before its end, the
        acknowledgement, the resolve)."""
        if track.end is None or track.start is None:
            return
        self._run(rule, key, track, track.end)
        if track.level >= 0:
            # Never before a step already sent (an end revised into the past).
            last = track.start + round(rule.levels[track.level].after_min * MIN_US)
            if track.ack_sent and track.acked_at is not None:
                last = max(last, track.acked_at)
            at = max(track.end, last)
            self._emit(rule, key, track, "resolved", track.level, at)
            self._floor(key, at)
        track.start = track.end = None
        track.level = -1

    def _floor(self, key: tuple[str, str], at: int) -> None:
        floors = self.state.floors
        floors[key] = at
        if len(floors) > MAX_FLOORS:  # the oldest go first: revisions that old do not come
            for k in sorted(floors, key=floors.__getitem__)[: len(floors) // 2]:
                del floors[k]

    def _emit(
        self, rule: Rule, key: tuple[str, str], track: Track, step: str, level: int, at_us: int
    ) -> None:
        assert track.start is not None
        scope = key[1]
        start = track.start
        opened = start + round(rule.levels[0].after_min * MIN_US)
        facts = {k: v for k, v in track.facts.items() if v is not None}
        facts["since"] = _iso(from_us(start), self.tz)
        facts["minutes"] = round((at_us - start) / MIN_US, 1)
        if step == "resolved":
            facts["duration_s"] = round((at_us - start) / S_US, 3)
        if step == "acknowledged" and track.acked_by is not None:
            facts["by"] = track.acked_by
        if step in ("opened", "escalated"):
            lv = rule.levels[level]
            people: tuple[str, ...] = tuple(lv.people)
            channels = self.config.level_channels(lv)
        else:  # everyone who was told hears that it is handled, or over
            people = tuple(dict.fromkeys(p for lv in rule.levels[: level + 1] for p in lv.people))
            channels = tuple(
                dict.fromkeys(
                    c for lv in rule.levels[: level + 1] for c in self.config.level_channels(lv)
                )
            )
        at = from_us(at_us)
        quiet = None
        qh = rule.quiet_hours
        if qh is not None and rule.severity not in qh.exempt:
            quiet = qh.until(at, self.tz)
        machine = track.facts.get("machine")
        self.out.append(
            AlertRow(
                alert_id=f"{rule.name}:{scope}:{start}",
                rule=rule.name,
                kind=rule.kind,
                scope=scope,
                machine=machine,
                line=self.line_of.get(machine) if machine else None,
                order_no=track.facts.get("order_no"),
                severity=rule.severity,
                step=step,
                level=level,
                at=at,
                opened_at=from_us(opened),
                facts=facts,
                people=people,
                channels=channels,
                quiet_until=quiet,
            )
        )


def _iso(value: Any, tz: ZoneInfo) -> Any:
    """Times in facts in plant time: what the messages show."""
    return value.astimezone(tz).isoformat() if isinstance(value, datetime) else value


def _order_facts(row: OrderProgressRow, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "customer": row.customer,
        "priority": row.priority,
        "due": _iso(row.due, tz),
        "eta": _iso(row.eta, tz),
        "good": row.good,
        "qty": row.qty,
    }


__all__ = [
    "AckInput",
    "AlertEngine",
    "EngineState",
    "KpiBelowRule",
    "MachineDownRule",
    "NoReasonRule",
    "Track",
]
