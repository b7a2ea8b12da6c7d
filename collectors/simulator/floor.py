"""People and quality on the simulated floor (issue 13): crews, routed jobs, inspections.

Pure helpers for collectors/simulator/model.py: which jobs (product, routing step) a machine
runs, the hand-off of work orders from one routing step to the next, who is at which
machine in which shift, and what an inspection measures. No I/O.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from mesflow.plant import PlantConfig, Shift, ShiftCalendar

from .calendar import to_ms

Event = dict[str, Any]


# -- routed jobs --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """What a work order at a machine makes: a product, at one routing step (`op`; None for
    a product without a routing), at this cycle time."""

    product: str | None
    op: str | None
    cycle_ms: int
    next_op: str | None = None  # the routing's next step: finished work orders go there


def machine_jobs(plant: PlantConfig, mid: str) -> tuple[tuple[Job, ...], tuple[Job, ...]]:
    """(own jobs, downstream jobs) of machine `mid`.

    Own jobs start work orders of their own: products without a routing that list the
    machine, and the first step of a routing that lists it. Downstream jobs take over work
    orders that finished the routing's previous step elsewhere (a step with no machines
    listed, meaning any, is left to real plants: the simulator sends nobody there)."""
    own: list[Job] = []
    downstream: list[Job] = []
    routings = plant.routings_by_product
    for product in plant.products:
        routing = routings.get(product.id)
        if routing is None:
            if mid in product.ideal_cycle_seconds:
                own.append(Job(product.id, None, _cycle(plant, mid, product.id, None)))
            continue
        ops = routing.operations
        for i, step in enumerate(ops):
            if mid not in step.machines:
                continue
            nxt = ops[i + 1].op if i + 1 < len(ops) else None
            job = Job(
                product.id, step.op, _cycle(plant, mid, product.id, step.ideal_cycle_seconds), nxt
            )
            (own if i == 0 else downstream).append(job)
    if not own and not downstream:
        # A machine no product names: any product without a routing, at its own cycle.
        own = [
            Job(p.id, None, _cycle(plant, mid, p.id, None))
            for p in plant.products
            if p.id not in routings
        ] or [Job(None, None, _cycle(plant, mid, None, None))]
    return tuple(own), tuple(downstream)


def _cycle(plant: PlantConfig, mid: str, product: str | None, step_s: float | None) -> int:
    seconds = step_s if step_s is not None else plant.ideal_cycle_seconds(mid, product)
    return round(seconds * 1000)


@dataclass(slots=True)
class Lot:
    """A work order that finished one routing step: `qty` good parts wait for `op`."""

    ready_ms: int
    work_order: str
    product: str
    op: str
    qty: int
    order_qty: int  # the work order's planned quantity


class Handoff:
    """Work orders waiting between routing steps, shared by all machine streams of a run.

    A machine takes a lot only once it is ready (`ready_ms` <= its time) and older than the
    `watermark` (the start of the merge window being generated): every stream has been
    generated past the watermark, so what a machine sees never depends on the order the
    streams are advanced in, nor on where the run ends (a shorter run stays a prefix of a
    longer one)."""

    MAX_WAITING = 50  # per step; older lots are left as WIP (bounded memory when live)

    def __init__(self) -> None:
        self.watermark = 0
        self._waiting: dict[tuple[str, str], deque[Lot]] = {}

    def put(self, lot: Lot) -> None:
        key = (lot.product, lot.op)
        q = self._waiting.get(key)
        if q is None:
            q = self._waiting[key] = deque(maxlen=self.MAX_WAITING)
        q.append(lot)

    def take(
        self, jobs: tuple[Job, ...], now_ms: int, last: Job | None = None
    ) -> tuple[Job, Lot] | None:
        """The oldest ready lot of one of `jobs` (removed), with its job; None if none.
        The jobs take turns, starting after `last` (the machine's previous one): a step fed
        by a busy one never starves the machine's other steps."""
        limit = min(now_ms, self.watermark - 1)
        start = jobs.index(last) + 1 if last in jobs else 0
        for job in jobs[start:] + jobs[:start]:
            q = self._waiting.get((job.product or "", job.op or ""))
            if not q:
                continue
            lot = min((x for x in q if x.ready_ms <= limit), key=_ready, default=None)
            if lot is not None:
                q.remove(lot)
                return job, lot
        return None


def _ready(lot: Lot) -> tuple[int, str]:
    return (lot.ready_ms, lot.work_order)


# -- crews: who is at which machine ---------------------------------------------------------

_SURNAMES = ("zhang", "li", "wang", "liu", "chen", "yang", "zhao", "huang", "zhou", "wu",
             "xu", "sun", "hu", "zhu", "gao", "lin", "he", "guo", "ma", "luo")  # fmt: skip
_GIVEN = ("wei", "na", "fang", "yang", "jing", "lei", "min", "tao", "jie", "qiang",
          "li", "jun", "yan", "hui", "ping", "gang", "xia", "bo", "hong", "ying")  # fmt: skip
INSPECTORS = ("qc.sun.li", "qc.gao.yan", "qc.lin.bo")


def person(i: int) -> str:
    """The i-th operator of the plant: a pinyin name, unique for any i."""
    name = f"{_SURNAMES[i % len(_SURNAMES)]}.{_GIVEN[(i * 7 + i // len(_SURNAMES)) % len(_GIVEN)]}"
    rounds = i // (len(_SURNAMES) * len(_GIVEN))
    return name if rounds == 0 else f"{name}{rounds + 1}"


@dataclass(frozen=True, slots=True)
class Crew:
    """Who works at one machine in each shift of its calendar (by shift name)."""

    by_shift: dict[str, str]
    forgetful: frozenset[str]  # these sometimes forget to sign out
    max_signed_in_ms: int = 12 * 3_600_000  # labor.max_sign_in_hours: nobody stays longer


def crews(plant: PlantConfig) -> dict[str, Crew]:
    """machine id -> its crew. Each line has its own people per shift; in every shift but
    the first, one person tends the line's last two machines (fewer people at night); the
    first person of the last shift sometimes forgets to sign out."""
    out: dict[str, Crew] = {}
    n = 0
    for line in plant.lines:
        ids = [m.id for m in line.machines]
        shifts = plant.calendar_for(ids[0]).shifts if ids else []
        assign: dict[str, dict[str, str]] = {m: {} for m in ids}
        forgetful: set[str] = set()
        for s_no, shift in enumerate(shifts):
            people = len(ids) if s_no == 0 or len(ids) < 2 else len(ids) - 1
            names = [person(n + k) for k in range(people)]
            n += people
            for k, mid in enumerate(ids):
                assign[mid][shift.name] = names[min(k, people - 1)]
            if s_no == len(shifts) - 1:
                forgetful.add(names[0])
        max_ms = round(plant.labor.max_sign_in_hours * 3_600_000)
        for mid in ids:
            out[mid] = Crew(assign[mid], frozenset(forgetful), max_ms)
    return out


def shift_instances(
    calendar: ShiftCalendar, tz: ZoneInfo, start_ms: int, end_ms: int | None
) -> Iterator[tuple[int, int, Shift]]:
    """(start ms, end ms, shift) of every shift that overlaps [start_ms, end_ms), by start;
    forever when end_ms is None."""
    workdays = set(calendar.workdays)
    day = datetime.fromtimestamp(start_ms / 1000, tz).date() - timedelta(days=1)
    while True:
        if end_ms is not None and _at(day, time(0), tz) >= end_ms:
            return
        if day.isoweekday() in workdays:
            spans = sorted((*_span(s, day, tz), s) for s in calendar.shifts)
            for a, b, shift in spans:
                if b > start_ms and (end_ms is None or a < end_ms):
                    yield a, b, shift
        day += timedelta(days=1)


def shift_at(calendar: ShiftCalendar, tz: ZoneInfo, t_ms: int) -> Shift | None:
    """The shift in progress at t_ms (None: off shift)."""
    day = datetime.fromtimestamp(t_ms / 1000, tz).date()
    for d in (day - timedelta(days=1), day):
        if d.isoweekday() not in calendar.workdays:
            continue
        for shift in calendar.shifts:
            a, b = _span(shift, d, tz)
            if a <= t_ms < b:
                return shift
    return None


def _at(day: date, t: time, tz: ZoneInfo) -> int:
    return to_ms(datetime.combine(day, t, tzinfo=tz))


def _span(shift: Shift, day: date, tz: ZoneInfo) -> tuple[int, int]:
    end_day = day if shift.end > shift.start else day + timedelta(days=1)
    return _at(day, shift.start, tz), _at(end_day, shift.end, tz)


# -- inspections ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Feature:
    """A characteristic on the drawing: a measured value with limits, or (nominal None) an
    attribute judged by eye or gauge."""

    name: str
    nominal: float | None = None
    lsl: float | None = None
    usl: float | None = None
    unit: str | None = None
    decimals: int = 3


def features(product: str | None, op: str | None, molding: bool) -> tuple[Feature, ...]:
    """The characteristics inspected for a product at one routing step: drawn once per
    (product, step) from their own random numbers (a drawing does not change with the seed)."""
    r = random.Random(f"features:{product}:{op}")
    if molding:
        weight = round(r.uniform(20, 120), 1)
        length = round(r.uniform(80, 200), 1)
        wall = round(r.uniform(1.5, 3.0), 2)
        return (
            Feature(
                "part_weight", weight, round(weight * 0.985, 2), round(weight * 1.015, 2), "g", 2
            ),
            Feature("length", length, round(length - 0.15, 2), round(length + 0.15, 2), "mm"),
            Feature("wall_thickness", wall, round(wall - 0.1, 2), round(wall + 0.1, 2), "mm"),
            Feature("appearance"),
        )
    bore = round(r.uniform(8, 40), 1)
    length = round(r.uniform(20, 150), 1)
    return (
        Feature("bore_diameter", bore, round(bore - 0.015, 3), round(bore + 0.015, 3), "mm"),
        Feature("length", length, round(length - 0.05, 3), round(length + 0.05, 3), "mm"),
        Feature("flatness", 0.008, None, 0.02, "mm"),
        Feature("surface_roughness_ra", 0.8, None, 1.6, "um", 2),
        Feature("thread_gauge"),
    )


def measure(r: random.Random, feats: tuple[Feature, ...], bad: str | None) -> list[Event]:
    """One sample's characteristics: in tolerance, except `bad` (a feature name) outside."""
    out: list[Event] = []
    for f in feats:
        c: Event = {"name": f.name}
        if f.nominal is None:
            c["ok"] = f.name != bad
        else:
            lo = f.lsl if f.lsl is not None else 0.0
            hi = f.usl if f.usl is not None else 2 * f.nominal
            half = (hi - lo) / 2
            mid = (hi + lo) / 2 if f.lsl is not None else f.nominal
            if f.name == bad:  # just outside a limit
                value = hi + half * r.uniform(0.05, 0.4)
                if f.lsl is not None and r.random() < 0.5:
                    value = lo - half * r.uniform(0.05, 0.4)
            else:
                value = min(hi, max(lo, r.gauss(mid, half / 4)))
            c["value"] = round(value, f.decimals)
            if f.lsl is not None:
                c["lsl"] = f.lsl
            if f.usl is not None:
                c["usl"] = f.usl
            if f.unit is not None:
                c["unit"] = f.unit
            if f.name != bad:
                # Rounding could put a value a hair outside: the reading is what counts.
                c["value"] = min(hi, max(lo, c["value"]))
        out.append(c)
    return out
