"""A plain batch reference for the metrics engine, straight from docs/metrics.md.

Independent of the dataflow on purpose: it reads only the plant configuration
(`mesflow.plant`) and the event contract (`mesflow.events`), and has its own shift
calendar. It takes every event at once, in arrival order, and returns what `machine_kpi`
and `machine_kpi_reason` must hold once the dataflow has processed the same input.

All instants are integer microseconds since the epoch, so that sums of seconds are exact.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from mesflow.events import (
    ContractError,
    CounterEvent,
    CountEvent,
    DefectReport,
    DowntimeReasonReport,
    ReworkReport,
    ScrapReport,
    StateEvent,
    WorkOrderEndReport,
    WorkOrderEvent,
    WorkOrderStartReport,
    parse_event,
)
from mesflow.plant import PlantConfig, ShiftCalendar

US = 1_000_000
HOUR_US = 3600 * US

TIME_COLUMNS = (
    "planned_s",
    "running_s",
    "microstop_s",
    "idle_s",
    "down_s",
    "setup_s",
    "offline_s",
    "planned_stop_s",
    "ideal_s",
    "failure_s",
)
COUNT_COLUMNS = ("microstop_count", "good", "scrap", "failures", "all_good", "all_scrap")
LABEL_COLUMNS = ("bucket_end", "shift_date", "shift_name")
KPI_COLUMNS = LABEL_COLUMNS + TIME_COLUMNS + COUNT_COLUMNS

# Processing order of events with the same ts on one machine.
RANK = {"state": 0, "wo_start": 1, "wo_end": 1, "count": 2, "counter": 2, "scrap": 2}
RANK_DOWNTIME_REASON = 3

KpiKey = tuple[str, str, datetime]  # machine, bucket ('hour' | 'shift'), bucket_start (UTC)
ReasonKey = tuple[str, str, datetime, str]  # ... and reason


def to_us(ts: datetime) -> int:
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * US + delta.microseconds


def from_us(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


# -- shift calendar ----------------------------------------------------------------------


@dataclass(frozen=True)
class ShiftInstance:
    name: str
    shift_date: date  # plant-local date of the start
    start: int
    end: int
    breaks: tuple[tuple[int, int], ...]
    windows: tuple[tuple[int, int], ...]  # planned windows: the shift minus its breaks


def _at(day: date, clock: Any, tz: ZoneInfo) -> int:
    return to_us(datetime.combine(day, clock, tzinfo=tz))


def shift_instances(cal: ShiftCalendar, tz: ZoneInfo, lo: int, hi: int) -> list[ShiftInstance]:
    """Every shift instance of `cal` that overlaps [lo, hi], sorted by start."""
    first = from_us(lo).astimezone(tz).date() - timedelta(days=2)
    last = from_us(hi).astimezone(tz).date() + timedelta(days=1)
    out: list[ShiftInstance] = []
    day = first
    while day <= last:
        if day.isoweekday() in cal.workdays:
            for shift in cal.shifts:
                start = _at(day, shift.start, tz)
                end_day = day + timedelta(days=1) if shift.end <= shift.start else day
                end = _at(end_day, shift.end, tz)
                breaks: list[tuple[int, int]] = []
                for brk in shift.breaks:
                    # The first occurrence of break.start at/after the shift start, the first
                    # occurrence of break.end after that; clipped to the shift.
                    bday = day
                    b0 = _at(bday, brk.start, tz)
                    if b0 < start:
                        bday += timedelta(days=1)
                        b0 = _at(bday, brk.start, tz)
                    b1 = _at(bday, brk.end, tz)
                    if b1 <= b0:
                        b1 = _at(bday + timedelta(days=1), brk.end, tz)
                    b0, b1 = max(b0, start), min(b1, end)
                    if b0 < b1:
                        breaks.append((b0, b1))
                windows = _subtract((start, end), sorted(breaks))
                if end > lo - 2 * 86400 * US and start <= hi + 2 * 86400 * US:
                    out.append(
                        ShiftInstance(shift.name, day, start, end, tuple(breaks), tuple(windows))
                    )
        day += timedelta(days=1)
    out.sort(key=lambda s: s.start)
    return out


def _subtract(span: tuple[int, int], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    cur = span[0]
    for h0, h1 in holes:
        if h0 > cur:
            out.append((cur, min(h0, span[1])))
        cur = max(cur, h1)
    if cur < span[1]:
        out.append((cur, span[1]))
    return [w for w in out if w[0] < w[1]]


def overlap(a: int, b: int, windows: Iterable[tuple[int, int]]) -> int:
    """Length of [a, b) inside the union of disjoint windows."""
    return sum(max(0, min(b, w1) - max(a, w0)) for w0, w1 in windows)


def hour_start(us: int, tz: ZoneInfo) -> int:
    local = from_us(us).astimezone(tz)
    return to_us(local.replace(minute=0, second=0, microsecond=0))


def hours_touching(a: int, b: int, tz: ZoneInfo) -> Iterator[int]:
    h = hour_start(a, tz)
    yield h
    h += HOUR_US
    while h < b:
        yield h
        h += HOUR_US


# -- events -------------------------------------------------------------------------------


@dataclass
class Ev:
    ts: int
    rank: int
    seq: int  # arrival position
    ev: Any  # a parsed mesflow.events model


@dataclass
class Interval:
    machine: str
    state: str
    start: int
    end: int  # the next state change, or for the open last interval the latest event ts
    is_open: bool
    reason: str | None
    micro: bool = False

    @property
    def duration(self) -> int:
        return self.end - self.start


@dataclass
class Accepted:
    """The input after dedupe and rejections, per machine, in processing order.

    Late input is merged (docs/metrics.md, 6): every event counts in event-time order,
    however late it arrived. `late` lists the events that arrived later than the allowed
    lateness (merged all the same); `rejected` those dead-lettered for their content.
    """

    by_machine: dict[str, list[Ev]]
    products: dict[str, str]  # work order -> product
    late: list[Ev] = field(default_factory=list)
    duplicates: int = 0
    rejected: list[tuple[Ev, str]] = field(default_factory=list)


def accept(events: Iterable[dict[str, Any]], plant: PlantConfig) -> Accepted:
    lateness = int(plant.plant.allowed_lateness_seconds * US)
    seen_ids: set[str] = set()
    max_ts: dict[str, int] = {}
    by_machine: dict[str, list[Ev]] = defaultdict(list)
    products: dict[str, str] = {}
    out = Accepted(by_machine, products)
    for seq, raw in enumerate(events):
        try:
            ev = parse_event(json.dumps(raw))
        except ContractError:
            continue
        if ev.id is not None:
            if ev.id in seen_ids:
                out.duplicates += 1
                continue
            seen_ids.add(ev.id)
        if isinstance(ev, WorkOrderEvent):
            products[ev.work_order] = ev.product
            continue
        machine = getattr(ev, "machine", None)
        if machine is None or machine not in plant.machines:
            continue  # orders; unknown machines are dead-lettered
        ts = to_us(ev.ts)
        if isinstance(ev, StateEvent):
            rank = RANK["state"]
        elif isinstance(ev, DowntimeReasonReport):
            rank = RANK_DOWNTIME_REASON
        elif isinstance(ev, WorkOrderStartReport | WorkOrderEndReport):
            rank = RANK["wo_start"]
        else:
            rank = RANK["count"]
        item = Ev(ts, rank, seq, ev)
        known = plant.reasons_by_code
        reason = ev.reason if isinstance(ev, StateEvent | DowntimeReasonReport) else None
        if reason is not None and known and reason not in known:
            out.rejected.append((item, "unknown_reason"))
            continue
        top = max_ts.get(machine)
        if top is not None and ts < top - lateness:
            out.late.append(item)  # merged later, all the same
        else:
            max_ts[machine] = ts if top is None else max(top, ts)
        by_machine[machine].append(item)
    for m, evs in by_machine.items():
        evs.sort(key=lambda e: (e.ts, e.rank, e.seq))
        by_machine[m] = _without_no_stop(evs, lateness, out)
    return out


def _without_no_stop(evs: list[Ev], lateness: int, out: Accepted) -> list[Ev]:
    """Drop the reason reports dead-lettered `no_stop`: `at` in running time (or before the
    machine's first state) more than the allowed lateness before the report's own ts, or
    in a stop that started more than 48 hours before it. A dropped report moves no clock.
    """
    starts: list[int] = []
    states: list[str] = []
    for e in evs:
        if isinstance(e.ev, StateEvent):
            starts.append(e.ts)
            states.append(e.ev.state)
    kept: list[Ev] = []
    for e in evs:
        if isinstance(e.ev, DowntimeReasonReport):
            at = to_us(e.ev.at)
            k = bisect.bisect_right(starts, at) - 1
            # The stop's start: the first state event of its run of the same state.
            while k > 0 and states[k - 1] == states[k]:
                k -= 1
            stopped = k >= 0 and states[k] != "running"
            if (stopped and starts[k] < e.ts - 48 * HOUR_US) or (
                not stopped and at < e.ts - lateness
            ):
                out.rejected.append((e, "no_stop"))
                continue
        kept.append(e)
    return kept


def build_intervals(machine: str, evs: list[Ev], microstop_us: int) -> list[Interval]:
    latest = max(e.ts for e in evs)
    intervals: list[Interval] = []
    for e in evs:
        if not isinstance(e.ev, StateEvent):
            continue
        if intervals and intervals[-1].state == e.ev.state:
            continue  # the same state again: still one interval
        if intervals:
            intervals[-1].end = e.ts
            intervals[-1].is_open = False
        intervals.append(Interval(machine, e.ev.state, e.ts, latest, True, e.ev.reason))
    # Operator reasons: the last report (in processing order) whose `at` lies in a
    # non-running interval [start, end) re-attributes that interval.
    starts = [i.start for i in intervals]
    for e in evs:
        if not isinstance(e.ev, DowntimeReasonReport):
            continue
        at = to_us(e.ev.at)
        k = bisect.bisect_right(starts, at) - 1
        if k < 0:
            continue
        iv = intervals[k]
        if iv.state != "running" and iv.start <= at < iv.end:
            iv.reason = e.ev.reason
    for iv in intervals:
        iv.micro = iv.state in ("idle", "down") and iv.duration < microstop_us
    return intervals


def effective_reason(iv: Interval) -> str:
    if iv.reason is not None:
        return iv.reason
    return "no_data" if iv.state == "offline" else "unassigned"


# -- the computation ----------------------------------------------------------------------

STATE_COLUMN = {
    "running": "running_s",
    "idle": "idle_s",
    "down": "down_s",
    "setup": "setup_s",
    "offline": "offline_s",
    "planned_stop": "planned_stop_s",
}
LOSS_STATES = ("idle", "down", "setup", "offline")


@dataclass
class Reference:
    kpi: dict[KpiKey, dict[str, Any]]
    reasons: dict[ReasonKey, tuple[float, int]]
    intervals: dict[str, list[Interval]]
    accepted: Accepted


class _Machine:
    """One machine's figures; times in microseconds until `Reference` is built."""

    def __init__(self, machine: str, evs: list[Ev], plant: PlantConfig) -> None:
        self.machine = machine
        self.evs = evs
        self.plant = plant
        self.tz = plant.tz
        self.intervals = build_intervals(machine, evs, round(plant.microstop_seconds(machine) * US))
        lo, hi = evs[0].ts, max(e.ts for e in evs)
        self.shifts = shift_instances(plant.calendar_for(machine), self.tz, lo, hi)
        self.shift_starts = [s.start for s in self.shifts]
        self.windows = [w for s in self.shifts for w in s.windows]
        self.rows: dict[KpiKey, dict[str, Any]] = {}
        self.reasons: dict[ReasonKey, list[int]] = {}

    def shift_at(self, us: int) -> ShiftInstance | None:
        k = bisect.bisect_right(self.shift_starts, us) - 1
        return self.shifts[k] if k >= 0 and us < self.shifts[k].end else None

    def in_planned_window(self, us: int) -> bool:
        return any(w0 <= us < w1 for w0, w1 in self.windows)

    def row(self, bucket: str, start: int) -> dict[str, Any]:
        key = (self.machine, bucket, from_us(start))
        r = self.rows.get(key)
        if r is None:
            r = dict.fromkeys(TIME_COLUMNS + COUNT_COLUMNS, 0)
            if bucket == "hour":
                r.update(bucket_end=from_us(start + HOUR_US), shift_date=None, shift_name=None)
            else:
                s = next(x for x in self.shifts if x.start == start)
                r.update(bucket_end=from_us(s.end), shift_date=s.shift_date, shift_name=s.name)
            self.rows[key] = r
        return r

    def reason(self, bucket: str, start: int, reason: str) -> list[int]:
        return self.reasons.setdefault((self.machine, bucket, from_us(start), reason), [0, 0])

    def buckets_of(
        self, a: int, b: int
    ) -> Iterator[tuple[str, int, int, int, list[tuple[int, int]]]]:
        """(bucket, start, lo, hi, planned windows) of every bucket that [a, b) touches."""
        for h in hours_touching(a, b, self.tz):
            yield "hour", h, h, h + HOUR_US, self.windows
        for s in self.shifts:
            if (s.start < b and a < s.end) or s.start <= a < s.end:
                yield "shift", s.start, s.start, s.end, list(s.windows)

    def buckets_at(self, us: int) -> list[tuple[str, int]]:
        """The hour and the shift instance (if any) that contain the instant."""
        out = [("hour", hour_start(us, self.tz))]
        s = self.shift_at(us)
        if s is not None:
            out.append(("shift", s.start))
        return out

    def add_intervals(self) -> None:
        for iv in self.intervals:
            column = "microstop_s" if iv.micro else STATE_COLUMN[iv.state]
            in_loss = iv.state in LOSS_STATES and not iv.micro
            reason = effective_reason(iv)
            for bucket, start, b0, b1, wins in self.buckets_of(iv.start, iv.end):
                r = self.row(bucket, start)
                secs = overlap(max(iv.start, b0), min(iv.end, b1), wins)
                r[column] += secs
                if column != "planned_stop_s":
                    r["planned_s"] += secs
                if in_loss and secs > 0:
                    self.reason(bucket, start, reason)[0] += secs
            if overlap(iv.start, iv.end, self.windows) == 0:
                continue  # never in planned time: neither a stop nor a failure of any bucket
            for bucket, start in self.buckets_at(iv.start):
                r = self.row(bucket, start)
                if iv.micro:
                    r["microstop_count"] += 1
                elif iv.state == "down":
                    r["failures"] += 1
                    r["failure_s"] += iv.duration
                if in_loss:
                    self.reason(bucket, start, reason)[1] += 1

    def add_parts(self, products: dict[str, str]) -> None:
        state_starts = [i.start for i in self.intervals]
        last_counter: dict[str, int] = {}
        active_wo: str | None = None
        for e in self.evs:
            ev = e.ev
            if isinstance(ev, WorkOrderStartReport):
                active_wo = ev.work_order
                continue
            if isinstance(ev, WorkOrderEndReport):
                if active_wo == ev.work_order:
                    active_wo = None
                continue
            made = moved = good = scrap = 0  # parts made; parts moved from good to scrap
            if isinstance(ev, CountEvent):
                good, scrap = ev.good, ev.scrap
                made = good + scrap
            elif isinstance(ev, CounterEvent):
                prev = last_counter.get(ev.name)
                last_counter[ev.name] = ev.value
                if prev is None:
                    continue  # the first value is a baseline
                delta = ev.value - prev if ev.value >= prev else ev.value  # else a reset
                if ev.name == "total":
                    good = made = delta
                else:
                    moved = delta
            elif isinstance(ev, ScrapReport):
                moved = ev.qty
            elif (isinstance(ev, DefectReport) and ev.disposition == "scrap") or (
                isinstance(ev, ReworkReport) and ev.outcome == "scrap"
            ):
                moved = ev.qty  # scrapped on a defect or after rework: as a scrap report
            else:
                continue
            good -= moved
            scrap += moved
            k = bisect.bisect_right(state_starts, e.ts) - 1
            state = self.intervals[k].state if k >= 0 else None
            counts = state not in (None, "planned_stop") and self.in_planned_window(e.ts)
            product = products.get(active_wo) if active_wo is not None else None
            ideal = self.plant.ideal_cycle_seconds(self.machine, product)
            for bucket, start in self.buckets_at(e.ts):
                r = self.row(bucket, start)
                r["all_good"] += good
                r["all_scrap"] += scrap
                if counts:
                    r["good"] += good
                    r["scrap"] += scrap
                    r["ideal_s"] += ideal * made  # seconds already


def compute(events: Iterable[dict[str, Any]], plant: PlantConfig) -> Reference:
    """machine_kpi and machine_kpi_reason as defined, for events given in arrival order."""
    acc = accept(list(events), plant)
    kpi: dict[KpiKey, dict[str, Any]] = {}
    reasons: dict[ReasonKey, tuple[float, int]] = {}
    intervals: dict[str, list[Interval]] = {}
    for machine, evs in sorted(acc.by_machine.items()):
        if not evs:
            continue
        m = _Machine(machine, evs, plant)
        m.add_intervals()
        m.add_parts(acc.products)
        intervals[machine] = m.intervals
        for key, r in m.rows.items():
            out = dict(r)
            for c in TIME_COLUMNS:
                if c != "ideal_s":
                    out[c] = r[c] / US
            kpi[key] = out
        for rkey, (secs, stops) in m.reasons.items():
            if secs > 0 or stops > 0:
                reasons[rkey] = (secs / US, stops)
    return Reference(kpi, reasons, intervals, acc)


def compute_file(path: Any, plant: PlantConfig) -> Reference:
    with open(path, encoding="utf-8") as f:
        events = [json.loads(line) for line in f if line.strip()]
    return compute(events, plant)
