"""Priority dispatch: per machine, the released work orders in run order with projected start
and finish in planned time, and what a hypothetical new order would push past its due date.

Pure: no I/O. dashboards/dispatch_queries.py reads the inputs (sql/023_dispatch.sql) and
calls this on every read, because the projections are relative to "now" and must move with
the clock (a stored list would be stale a minute later). docs/dispatch.md explains the rules.

Times are integer microseconds since the epoch (streams/hour_clock.py), as in the dataflow.

- Run order: at risk first, then customer priority (1 = most urgent), then due date, then
  order no and work order (so equal orders always come out the same way).
- Projection: the machine works the list from `now`, one work order after another, each for
  remaining ÷ rate hours of *planned* time: only inside shifts, outside breaks and outside
  the planned stops given. The walk goes through streams/shift_calendar.py, the same
  calendar the OEE figures use.
- Rate: good parts per planned hour the machine achieved for that product recently
  (`measured_rates`), else 3600 ÷ the plant file's ideal cycle time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal, NamedTuple

from streams.shift_calendar import CalendarIndex

HOUR_US: Final = 3_600_000_000
DAY_US: Final = 24 * HOUR_US
# How far ahead projections go: a finish beyond it is "not within N days" (a None finish).
HORIZON_DAYS: Final = 60
# Measured rate: work orders of the machine×product that ran in the last 7 days, and only
# if they add up to at least one planned hour (less is noise: a first few parts).
RATE_WINDOW_DAYS: Final = 7
MIN_EVIDENCE_US: Final = HOUR_US
# A new order has no due date: it sorts after every dated order of its priority.
NO_DUE: Final = 1 << 62
# Calendar windows are fetched a week at a time while walking forward.
_CHUNK_US: Final = 7 * DAY_US

RateSource = Literal["measured", "ideal"]


@dataclass(frozen=True, slots=True)
class Job:
    """A released work order waiting for (or running on) a machine."""

    work_order: str
    order_no: str
    product: str
    qty: int
    good: int
    priority: int  # the order's priority, 1 = most urgent
    due: int  # the order's due date, us
    at_risk: bool = False
    customer: str | None = None
    hypothetical: bool = False  # the order a promise query asks about

    @property
    def remaining(self) -> int:
        return max(self.qty - self.good, 0)


def run_key(job: Job) -> tuple[bool, int, int, str, str]:
    """The dispatch order: at risk first, priority, due date, then order no for determinism."""
    return (not job.at_risk, job.priority, job.due, job.order_no, job.work_order)


@dataclass(frozen=True, slots=True)
class Rate:
    per_hour: float  # good parts per planned hour, > 0
    source: RateSource


@dataclass(frozen=True, slots=True)
class Plan:
    """A machine's planned time: its shift calendar and the planned stops known ahead."""

    calendar: CalendarIndex
    stops: tuple[tuple[int, int], ...] = field(default_factory=tuple)  # [start, end) us


class Entry(NamedTuple):
    position: int  # 1-based place in the run order
    job: Job
    rate: Rate
    start: int | None  # None: not within the horizon
    finish: int | None
    slip_us: int | None  # finish - due (> 0: late); None without a finish or a due

    @property
    def late(self) -> bool:
        """Finishes after its due date (or not within the horizon at all)."""
        if self.job.due >= NO_DUE:
            return False
        return self.finish is None or self.finish > self.job.due


class Slip(NamedTuple):
    job: Job
    finish_before: int | None
    finish_after: int | None


class Impact(NamedTuple):
    """A machine's list without and with a hypothetical order."""

    before: list[Entry]
    after: list[Entry]
    new: Entry
    pushed: list[Slip]  # on time before, late after: what the new order would push past due


# -- planned time ----------------------------------------------------------------------------


def _minus(s: int, e: int, stops: Sequence[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """[s, e) without the (sorted) stops."""
    cur = s
    for a, b in stops:
        if b <= cur:
            continue
        if a >= e:
            break
        if a > cur:
            yield cur, a
        cur = max(cur, b)
        if cur >= e:
            return
    if cur < e:
        yield cur, e


def free_windows(plan: Plan, a: int, end: int) -> Iterator[tuple[int, int]]:
    """The planned time in [a, end): sorted, disjoint [start, end) pairs."""
    stops = sorted(plan.stops)
    t = a
    while t < end:
        b = min(t + _CHUNK_US, end)
        for w in plan.calendar.planned_windows(t, b):
            yield from _minus(w.start, w.end, stops)
        t = b


def planned_us(plan: Plan, a: int, b: int) -> int:
    return sum(e - s for s, e in free_windows(plan, a, b))


class _Walker:
    """Consumes planned time forward from a point, one job after another."""

    def __init__(self, windows: Iterator[tuple[int, int]]) -> None:
        self.it = windows
        self.cur: tuple[int, int] | None = None
        self.exhausted = False

    def take(self, work_us: int) -> tuple[int | None, int | None]:
        """(start, finish) of `work_us` of planned work; None for what lies past the horizon
        (a long job may start within it and finish beyond it)."""
        if self.exhausted:
            return None, None
        start: int | None = None
        while True:
            if self.cur is None:
                nxt = next(self.it, None)
                if nxt is None:
                    self.exhausted = True
                    return start, None
                self.cur = nxt
            s, e = self.cur
            if start is None:
                start = s
            if e - s >= work_us:
                finish = s + work_us
                self.cur = (finish, e) if finish < e else None
                return start, finish
            work_us -= e - s
            self.cur = None


def work_us(remaining: int, rate: Rate) -> int:
    return round(remaining * HOUR_US / rate.per_hour)


# -- the list --------------------------------------------------------------------------------


RateFn = Callable[[str], Rate]  # product -> the machine's rate for it


def dispatch(
    jobs: Iterable[Job],
    rate: RateFn,
    plan: Plan,
    now: int,
    horizon_days: float = HORIZON_DAYS,
) -> list[Entry]:
    """The machine's dispatch list in run order with projected start, finish and slip.

    Work orders with nothing left to make are left out."""
    ordered = sorted((j for j in jobs if j.remaining > 0), key=run_key)
    walker = _Walker(free_windows(plan, now, now + round(horizon_days * DAY_US)))
    out: list[Entry] = []
    for i, job in enumerate(ordered, 1):
        r = rate(job.product)
        start, finish = walker.take(work_us(job.remaining, r))
        slip = None if finish is None or job.due >= NO_DUE else finish - job.due
        out.append(Entry(i, job, r, start, finish, slip))
    return out


def with_new(
    jobs: Sequence[Job],
    new: Job,
    rate: RateFn,
    plan: Plan,
    now: int,
    horizon_days: float = HORIZON_DAYS,
) -> Impact:
    """The list with `new` inserted where its priority puts it, and the orders it pushes past
    their due date (on time, or finishing at all within the horizon, before; late after)."""
    new = replace(new, hypothetical=True)
    before = dispatch(jobs, rate, plan, now, horizon_days)
    after = dispatch([*jobs, new], rate, plan, now, horizon_days)
    old = {e.job.work_order: e for e in before}
    mine = next(e for e in after if e.job.hypothetical)
    pushed = [
        Slip(e.job, old[e.job.work_order].finish, e.finish)
        for e in after
        if not e.job.hypothetical and e.late and not old[e.job.work_order].late
    ]
    return Impact(before, after, mine, pushed)


def pushed_by(
    jobs: Sequence[Job], work_order: str, rate: RateFn, plan: Plan, now: int
) -> list[Slip]:
    """For an order already in the list (a new high-priority one): the orders that would be
    on time without it and are late with it. Used by the board to make them stand out."""
    rest = [j for j in jobs if j.work_order != work_order]
    it = next((j for j in jobs if j.work_order == work_order), None)
    if it is None:
        return []
    return with_new(rest, it, rate, plan, now).pushed


# -- rates -----------------------------------------------------------------------------------


class RunSpan(NamedTuple):
    """A work order's run on a machine: good parts made between start and end (us)."""

    machine: str
    product: str
    good: int
    start: int
    end: int


def measured_rates(
    spans: Iterable[RunSpan],
    plans: Mapping[str, Plan],
    now: int,
    window_days: float = RATE_WINDOW_DAYS,
    min_evidence_us: int = MIN_EVIDENCE_US,
) -> dict[tuple[str, str], float]:
    """Good parts per planned hour per (machine, product), from runs that ended within the
    window before `now`: Σ good ÷ Σ planned time of the runs. Pairs with less than
    `min_evidence_us` of planned time are left out (the ideal cycle time stands in)."""
    since = now - round(window_days * DAY_US)
    good: dict[tuple[str, str], int] = {}
    time: dict[tuple[str, str], int] = {}
    for sp in spans:
        plan = plans.get(sp.machine)
        if plan is None or sp.end < since or sp.end <= sp.start or sp.good <= 0:
            continue
        key = (sp.machine, sp.product)
        good[key] = good.get(key, 0) + sp.good
        time[key] = time.get(key, 0) + planned_us(plan, sp.start, min(sp.end, now))
    return {
        k: good[k] * HOUR_US / t for k, t in time.items() if t >= min_evidence_us and good[k] > 0
    }


def rate_for(
    machine: str,
    measured: Mapping[tuple[str, str], float],
    ideal_cycle_s: Callable[[str, str], float],
) -> RateFn:
    """The machine's rate per product: measured, else the ideal cycle time's."""

    def rate(product: str) -> Rate:
        m = measured.get((machine, product))
        if m is not None and m > 0:
            return Rate(m, "measured")
        return Rate(3600.0 / ideal_cycle_s(machine, product), "ideal")

    return rate


# -- promise ---------------------------------------------------------------------------------


class MachineInput(NamedTuple):
    jobs: Sequence[Job]
    rate: RateFn
    plan: Plan


class Promise(NamedTuple):
    machine: str
    impact: Impact

    @property
    def finish(self) -> int | None:
        return self.impact.new.finish

    @property
    def start(self) -> int | None:
        return self.impact.new.start


def promise(
    new: Job,
    machines: Mapping[str, MachineInput],
    now: int,
    horizon_days: float = HORIZON_DAYS,
) -> Promise | None:
    """Try `new` on every machine given; the earliest finish wins (ties: the machine that
    pushes fewer orders past due, then the machine id). When no machine finishes it within
    the horizon, the first machine's answer (finish None). None without machines."""
    best: tuple[tuple[int, int, str], Promise] | None = None
    for m in sorted(machines):
        mi = machines[m]
        impact = with_new(mi.jobs, new, mi.rate, mi.plan, now, horizon_days)
        f = impact.new.finish
        key = (f if f is not None else NO_DUE, len(impact.pushed), m)
        if best is None or key < best[0]:
            best = (key, Promise(m, impact))
    return None if best is None else best[1]
