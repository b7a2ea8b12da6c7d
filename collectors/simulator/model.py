"""The plant model: a believable, deterministic stream of canonical events. No I/O here.

Each machine is simulated on its own (its own `random.Random`, seeded from the seed and the
machine id), as a sequence of cycles interrupted by breakdowns, idle gaps, work-order
changeovers and the shift calendar. The machine streams are merged in time order. Times
are integer milliseconds since the epoch internally, so every timestamp is exact to the ms.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo

from mesflow.plant import Line, Machine, PlantConfig, ShiftCalendar

from .calendar import OFF, WORK, timeline, to_ms
from .floor import (
    INSPECTORS,
    Crew,
    Feature,
    Handoff,
    Job,
    Lot,
    crews,
    features,
    machine_jobs,
    measure,
    shift_at,
    shift_instances,
)

Event = dict[str, Any]
Timed = tuple[int, Event]  # (epoch ms, canonical event)

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
# Machine streams are merged in windows of simulated time: sorting a window of already
# sorted runs is much cheaper than a heap merge per event.
_WINDOW_MS = 5 * MINUTE

# Reason codes by kind of machine. Only codes present in the plant's reason tree are used,
# so a reduced reason tree never produces events with unknown reasons.
_MOLDING = {
    "faults": ("hydraulic_fault", "heater_fault", "mold_damage"),
    "setup": ("mold_change",),
    "scrap": ("short_shot", "flash"),
}
_MACHINING = {
    "faults": ("tool_break", "spindle_alarm"),
    "setup": ("parameter_tuning",),
    "scrap": ("dimension_out",),
}
_IDLE_REASONS = ("material_shortage", "no_operator")
_FIRST_ARTICLE = "first_article"  # the stop while the first piece is inspected
_SETTLED = frozenset({"scrap", "defect", "rework"})  # reported by the work order's end
# Defect codes (the plant's defect tree) by kind of machine; another plant's tree: any leaf.
_MOLDING_DEFECTS = ("short_shot", "flash", "sink_mark", "weld_line", "burn_mark", "warpage",
                    "silver_streak")  # fmt: skip
_MACHINING_DEFECTS = ("burr", "dimension_out", "scratch", "thread_defect")
# Outside the machine's shifts, and while a later routing step waits for a lot: two
# different planned stops on the board ("no shift", "no order"); a plant file without
# the first gets the second for both.
_OFF_REASONS = ("no_shift", "no_order")
_WAIT_REASON = "no_order"
# The simulator's work orders make for stock: order numbers STOCK-<product>, which no CRM
# order carries, so they never touch a customer's order.
STOCK_ORDER_PREFIX = "STOCK-"
_NO_OPERATOR = "no_operator"


@dataclass(frozen=True, slots=True)
class Reasons:
    faults: tuple[str, ...]
    setup: str | None
    scrap: tuple[str, ...]
    idle: tuple[str, ...]
    no_operator: str | None
    off_shift: str | None
    first_article: str | None = None
    waiting: str | None = None  # a later routing step with no lot to work on


@dataclass(frozen=True, slots=True)
class Inspections:
    """A product's inspection policy, as the simulator follows it (mesflow/plant.py)."""

    first_article: bool  # a first article after every work order's start
    patrol_ms: int  # 0: no patrols
    last_piece: bool


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """What the model needs to know about one machine, resolved from the plant config."""

    id: str
    products: tuple[str | None, ...]  # candidates for its work orders
    cycle_ms: dict[str | None, int]  # ideal cycle time per product
    counter: bool  # reports a cumulative `counter` instead of `count` events
    microstop_max_ms: int  # longest micro-stop it makes (0: none)
    reasons: Reasons
    operators: tuple[str, ...]
    calendar: ShiftCalendar
    molding: bool = False  # publishes injection-moulding process values (when asked)
    # Issue 13: what it makes at which routing step, who works it, how it is inspected.
    jobs: tuple[Job, ...] = ()  # own work orders
    downstream: tuple[Job, ...] = ()  # work orders taken over from a previous routing step
    crew: Crew | None = None
    defects: tuple[str, ...] = ()
    inspections: tuple[tuple[str | None, Inspections], ...] = ()

    def inspection(self, product: str | None) -> Inspections | None:
        return next((i for p, i in self.inspections if p == product), None)


def _is_molding(line: Line, machine: Machine) -> bool:
    text = f"{line.id} {line.area} {line.name.en} {machine.name.en}".lower()
    return "mold" in text or "mould" in text or line.id.upper().startswith("IM")


def _reasons(plant: PlantConfig, molding: bool) -> Reasons:
    known = plant.reasons_by_code

    def pick(codes: tuple[str, ...], category: str) -> tuple[str, ...]:
        found = tuple(c for c in codes if c in known)
        if found:
            return found
        # Another plant's tree: any leaf reason of the right category will do.
        return tuple(r.code for r in known.values() if r.category == category and not r.children)

    table = _MOLDING if molding else _MACHINING
    setup = pick(table["setup"], "process")
    return Reasons(
        faults=pick(table["faults"], "technical"),
        setup=setup[0] if setup else None,
        scrap=pick(table["scrap"], "quality"),
        idle=tuple(c for c in _IDLE_REASONS if c in known),
        no_operator=_NO_OPERATOR if _NO_OPERATOR in known else None,
        off_shift=next((c for c in _OFF_REASONS if c in known), None),
        waiting=_WAIT_REASON if _WAIT_REASON in known else None,
        first_article=_FIRST_ARTICLE if _FIRST_ARTICLE in known else setup[0] if setup else None,
    )


def _defects(plant: PlantConfig, molding: bool) -> tuple[str, ...]:
    codes = _MOLDING_DEFECTS if molding else _MACHINING_DEFECTS
    known = plant.defects_by_code
    if not known:  # no tree: any code is accepted
        return codes
    found = tuple(c for c in codes if c in known)
    return found or tuple(d.code for d in known.values() if not d.children)


def _inspections(plant: PlantConfig, product: str | None) -> Inspections:
    policy = plant.inspection_policy(product)
    return Inspections(
        first_article=policy.first_article_within_parts > 0,
        patrol_ms=round(policy.patrol_every_minutes * MINUTE),
        last_piece=policy.last_piece_required,
    )


def machine_specs(plant: PlantConfig) -> list[MachineSpec]:
    specs: list[MachineSpec] = []
    crew = crews(plant)
    for line_no, line in enumerate(plant.lines):
        # A small pool of operators per line: op1..op5 on the first line, op6..op10 next...
        operators = tuple(f"op{line_no * 5 + k}" for k in range(1, 6))
        molding_reasons = _reasons(plant, True)
        machining_reasons = _reasons(plant, False)
        for machine in line.machines:
            mid = machine.id
            jobs, downstream = machine_jobs(plant, mid)
            cycle_ms: dict[str | None, int] = {}
            for job in jobs + downstream:
                cycle_ms.setdefault(job.product, job.cycle_ms)
            microstop = plant.microstop_seconds(mid)
            molding = _is_molding(line, machine)
            specs.append(
                MachineSpec(
                    id=mid,
                    products=tuple(cycle_ms),
                    cycle_ms=cycle_ms,
                    # Lathes in the demo plant report a cumulative part counter.
                    counter="lathe" in machine.name.en.lower(),
                    # Micro-stops stay under the machine's own threshold (and under 2 min).
                    microstop_max_ms=round(min(microstop, 120.0) * 0.9 * SECOND),
                    reasons=molding_reasons if _is_molding(line, machine) else machining_reasons,
                    operators=operators,
                    calendar=plant.calendar_for(mid),
                    molding=molding,
                    jobs=jobs,
                    downstream=downstream,
                    crew=crew.get(mid),
                    defects=_defects(plant, molding),
                    inspections=tuple((p, _inspections(plant, p)) for p in cycle_ms),
                )
            )
    return specs


class ProcessModel:
    """An injection-moulding machine's process values: each around its own set point, with
    a slow mean-reverting drift (material lot, mould warming up) and shot-to-shot noise."""

    def __init__(self, rng: random.Random) -> None:
        u = rng.uniform
        self._gauss = rng.gauss
        # name: (set point, drift step, noise), per machine (its material and mould).
        self._params = {
            "cushion_mm": (u(3.0, 8.0), 0.05, 0.08),
            "injection_pressure_bar": (u(800.0, 1500.0), 4.0, 6.0),
            "melt_temp_c": (u(210.0, 260.0), 0.3, 0.6),
            "mold_temp_c": (u(35.0, 80.0), 0.2, 0.3),
        }
        self._drift = dict.fromkeys(self._params, 0.0)

    def sample(self, cycle_ms: int) -> dict[str, float]:
        out = {"cycle_time_s": round(cycle_ms / SECOND, 2)}
        for name, (base, step, noise) in self._params.items():
            d = self._drift[name] = 0.98 * self._drift[name] + self._gauss(0.0, step)
            out[name] = round(base + d + self._gauss(0.0, noise), 2)
        return out


# "SS.mmm" for every millisecond of a minute: formatting a timestamp is then two lookups.
_SS_MMM = [f"{ms // 1000:02d}.{ms % 1000:03d}" for ms in range(MINUTE)]


class TsFormat:
    """RFC 3339 timestamps with millisecond precision and the plant's UTC offset."""

    def __init__(self, tz: ZoneInfo) -> None:
        self._tz = tz
        self._minutes: dict[int, tuple[str, str]] = {}

    def __call__(self, ms: int) -> str:
        minute, rem = divmod(ms, MINUTE)
        parts = self._minutes.get(minute)
        if parts is None:
            parts = self._minute(minute)
        return parts[0] + _SS_MMM[rem] + parts[1]

    def _minute(self, minute: int) -> tuple[str, str]:
        if len(self._minutes) > 100_000:  # bounded memory on very long runs
            self._minutes.clear()
        local = datetime.fromtimestamp(minute * 60, self._tz)
        off = local.strftime("%z")  # "+0800"
        parts = (local.strftime("%Y-%m-%dT%H:%M:"), f"{off[:3]}:{off[3:5]}")
        self._minutes[minute] = parts
        return parts


def run_tag(start: datetime, tz: ZoneInfo) -> str:
    """Part of every event id, so runs that start at different times never share ids."""
    return start.astimezone(tz).strftime("%y%m%d%H%M%S")


def _machine_events(
    spec: MachineSpec,
    seed: int,
    start_ms: int,
    end_ms: int | None,
    tz: ZoneInfo,
    fmt: TsFormat,
    id_prefix: str,
    wo_tag: str = "",
    pv_every_ms: int = 0,
    handoff: Handoff | None = None,
    people: Iterator[tuple[int, Event]] | None = None,
    close_at_end: bool = False,
) -> Iterator[tuple[int, Event | None]]:
    """One machine's events in time order (ts may run past end_ms; the caller cuts), with
    `people`'s (sign-in/out, in time order) interleaved. `(t, None)` items only mark
    progress (a machine waiting for work from a previous routing step yields them, so the
    merge can move on and hand it work)."""
    rng = random.Random(f"{seed}:{spec.id}")
    # Inspections, defects and rework draw from their own numbers.
    qrng = random.Random(f"{seed}:{spec.id}:q")
    rand, expo, uniform = rng.random, rng.expovariate, rng.uniform
    mid = spec.id
    rs = spec.reasons

    # The machine's character: how reliable, how clean its process.
    mtbf_ms = uniform(2.5, 6.0) * HOUR
    scrap_rate = uniform(0.01, 0.04)
    micro_mean_ms = uniform(12, 35) * MINUTE
    idle_mean_ms = uniform(4, 9) * HOUR
    scrap_report_mean_ms = uniform(1.5, 4) * HOUR
    has_micro = spec.microstop_max_ms >= 10 * SECOND
    defect_mean_ms = qrng.uniform(2, 5) * HOUR

    # Interruptions come due on the machine's running-time clock (a machine that is
    # stopped does not wear out or run short of material).
    run_clock = 0
    fail_at = expo(1 / mtbf_ms)
    idle_at = expo(1 / idle_mean_ms)
    micro_at = expo(1 / micro_mean_ms) if has_micro else math.inf
    scrap_at = expo(1 / scrap_report_mean_ms)
    next_at = min(fail_at, idle_at, micro_at, scrap_at)

    n = 0
    out: list[tuple[int, Event | None]] = []
    pending: list[tuple[int, int, Event]] = []  # operator reports sent later
    process = (
        ProcessModel(random.Random(f"{seed}:{spec.id}:pv"))
        if pv_every_ms > 0 and spec.molding
        else None
    )
    pv_next = start_ms
    pv_n = 0
    cur_state = ""
    cur_reason: str | None = None

    def add(t: int, ev: Event) -> None:
        nonlocal n
        n += 1
        ev["id"] = f"{id_prefix}{n}"
        out.append((t, ev))

    def later(t: int, ev: Event) -> None:
        nonlocal n
        n += 1
        ev["id"] = f"{id_prefix}{n}"
        heapq.heappush(pending, (t, n, ev))

    def set_state(t: int, state: str, reason: str | None = None) -> None:
        nonlocal cur_state, cur_reason
        if state == cur_state and reason == cur_reason:
            return
        cur_state, cur_reason = state, reason
        ev: Event = {"type": "state", "machine": mid, "ts": fmt(t), "state": state}
        if reason is not None:
            ev["reason"] = reason
        add(t, ev)

    def who(t: int) -> str:
        """The operator on shift at the machine (a report sent just after the shift's end:
        its operator; a pool name when nobody is on shift)."""
        shift = None
        if spec.crew is not None:
            shift = shift_at(spec.calendar, tz, t) or shift_at(spec.calendar, tz, t - 30 * MINUTE)
        name = spec.crew.by_shift.get(shift.name) if spec.crew and shift else None
        return name or rng.choice(spec.operators)

    def report(t: int, kind: str, **fields: Any) -> Event:
        ev: Event = {"type": "report", "kind": kind, "machine": mid, "ts": fmt(t), **fields}
        ev["operator"] = who(t)
        return ev

    # Work orders: the first one is already under way when the simulation starts.
    wo_no = 0
    wo_id = ""
    ideal_ms = 0
    wo_left = 0

    wo_product: str | None = None
    wo_qty = 0
    job: Job | None = None
    own_order = True  # False: taken over from a previous routing step
    waiting = False  # no work: a downstream machine waits for the previous step's lots
    wo_good = 0  # good parts of the running work order (what goes on to the next step)
    fa_pending = False  # the first piece is still to be made and inspected
    next_patrol = math.inf
    next_defect = start_ms + qrng.expovariate(1 / defect_mean_ms)
    checks: Inspections | None = None
    feats: tuple[Feature, ...] = ()

    def take_over(t: int) -> bool:
        """A lot waiting for one of this machine's downstream steps, if any is ready."""
        nonlocal wo_id, ideal_ms, wo_left, wo_product, wo_qty, job, own_order, waiting
        got = handoff.take(spec.downstream, t, job) if handoff is not None else None
        if got is None:
            return False
        job, lot = got
        wo_id, wo_product, wo_qty, wo_left = lot.work_order, lot.product, lot.order_qty, lot.qty
        ideal_ms, own_order, waiting = job.cycle_ms, False, False
        return True

    def next_work_order(first: bool, t: int) -> None:
        nonlocal wo_no, wo_id, ideal_ms, wo_left, wo_product, wo_qty, job, own_order, waiting
        # Lots from a previous routing step first: they are someone's work in progress.
        if spec.downstream and not first and take_over(t):
            return
        if not spec.jobs:
            waiting, wo_id, job = True, "", None
            return
        wo_no += 1
        wo_id = f"WO-{mid}-{wo_tag}{wo_no:04d}"
        job = rng.choice(spec.jobs)
        product = job.product
        ideal_ms = job.cycle_ms
        qty = max(20, 10 * round(uniform(2, 5) * HOUR / ideal_ms / 10))  # a few hours of work
        wo_left = rng.randint(max(1, qty // 10), qty) if first else qty
        wo_product, wo_qty, own_order, waiting = product, qty, True, False

    def inspect(t: int, stage: str, fail: bool, sample: int) -> Event:
        bad = qrng.choice(feats).name if fail and feats else None
        ev: Event = {"type": "report", "kind": "inspection", "machine": mid, "ts": fmt(t),
                     "work_order": wo_id, "stage": stage, "result": "fail" if fail else "pass",
                     "sample_qty": sample, "characteristics": measure(qrng, feats, bad)}  # fmt: skip
        if job is not None and job.op is not None:
            ev["operation"] = job.op
        if fail and spec.defects:
            ev["defects"] = [{"code": qrng.choice(spec.defects), "qty": qrng.randint(1, sample)}]
        ev["operator"] = INSPECTORS[qrng.randrange(len(INSPECTORS))]
        return ev

    def start_work_order(t: int, first: bool = False) -> None:
        nonlocal wo_good, fa_pending, next_patrol, checks, feats
        # The `work_order` event names the product, so the pipeline judges the parts
        # against that product's ideal cycle time (without it, the machine's default one).
        # A work order taken over from the previous routing step is dispatched again, to
        # this machine (same id, order and quantity).
        if wo_product is not None:
            add(t, {"type": "work_order", "machine": mid, "ts": fmt(t), "work_order": wo_id,
                    "order_no": f"{STOCK_ORDER_PREFIX}{wo_product}", "product": wo_product,
                    "qty": wo_qty})  # fmt: skip
        fields: dict[str, Any] = {"work_order": wo_id}
        if job is not None and job.op is not None:
            fields["operation"] = job.op
        add(t, report(t, "wo_start", **fields))
        wo_good = 0
        checks = spec.inspection(wo_product)
        feats = features(wo_product, job.op if job else None, spec.molding)
        fa_pending = checks is not None and checks.first_article and not first
        if first and checks is not None and checks.first_article:
            # Started before the run: its first article passed then (on record at the start).
            add(t, inspect(t, "first", False, 1))
        next_patrol = math.inf
        if checks is not None and checks.patrol_ms:
            next_patrol = t + int(
                checks.patrol_ms * (qrng.uniform(0.1, 1.0) if first else qrng.uniform(0.85, 1.0))
            )

    def first_article(t: int, seg_end: int) -> int:
        """The machine waits while the first piece is inspected; a rare fail means tuning
        and another piece. Returns when it can run again."""
        nonlocal fa_pending
        end = min(seg_end, t + int(qrng.uniform(5, 15) * MINUTE))
        if close_at_end and end_ms is not None and end >= end_ms:
            # Checked in the run's last moment: at `end_ms` it would be out of the run, and
            # the closing last piece and wo_end (close_at_end) come after it, not before.
            end = end_ms - 1
        if end - t >= MINUTE:  # else a break comes first: the piece is checked in it
            set_state(t, "setup", rs.first_article)
        fail = qrng.random() < 0.08
        add(end, inspect(end, "first", fail, 1))
        if not fail:
            fa_pending = False
            return end
        tuned = min(seg_end, end + int(qrng.uniform(5, 15) * MINUTE))
        if tuned > end:
            set_state(end, "setup", rs.setup)
        return tuned

    def patrol(t: int) -> None:
        nonlocal next_patrol
        assert checks is not None
        if qrng.random() < 0.06:  # the inspector skips this round: the patrol is missed
            next_patrol = t + checks.patrol_ms
            return
        fail = qrng.random() < 0.04
        add(t, inspect(t, "patrol", fail, 5 if ideal_ms < 2 * MINUTE else 2))
        if fail:
            defect(t, "rework")
        next_patrol = t + int(checks.patrol_ms * qrng.uniform(0.85, 1.0))

    def defect(t: int, disposition: str | None = None) -> None:
        """Parts found defective: scrapped, or sent to rework and back some hours later."""
        nonlocal next_defect, wo_good
        next_defect = t + qrng.expovariate(1 / defect_mean_ms)
        if not spec.defects or not wo_id:
            return
        code = qrng.choice(spec.defects)
        # Never more parts than this work order has made good here.
        qty = min(qrng.randint(1, 6), wo_good)
        disposition = disposition or ("rework" if qrng.random() < 0.55 else "scrap")
        if not qty:
            return
        fields: dict[str, Any] = {"work_order": wo_id, "code": code, "qty": qty,
                                  "disposition": disposition}  # fmt: skip
        if job is not None and job.op is not None:
            fields["operation"] = job.op
        sent = t + int(qrng.uniform(1, 15) * MINUTE)
        later(sent, report(sent, "defect", **fields))
        wo_good = max(0, wo_good - qty)
        if disposition == "rework":
            scrapped = sum(qrng.random() < 0.2 for _ in range(qty))
            back = sent + int(qrng.uniform(0.5, 4) * HOUR)
            for outcome, k in (("good", qty - scrapped), ("scrap", scrapped)):
                if k:
                    rw = {**fields, "qty": k, "outcome": outcome}
                    del rw["disposition"]
                    later(back, report(back, "rework", **rw))

    # Cumulative counter (lathes), sent every ~10 parts and at stops. Every run publishes it
    # from zero until its first reset: the plant already saw the previous run's (or the
    # backfilled history's) counter, and a higher first value would read as parts made in
    # between (a lower one is a reset whose new value, zero, is the parts since).
    total = rng.randint(10_000, 900_000)
    offset = total
    since_sent = 0
    send_every = rng.randint(8, 12)

    def send_counter(t: int) -> None:
        nonlocal total, offset, since_sent, send_every
        if not since_sent:
            return
        if total > 1000 and rand() < 0.01:
            # The counter was reset (PLC restart, operator): it restarts from zero, so the
            # value is the parts made since, and the parts before the reset are lost.
            total = rng.randint(1, since_sent)
            offset = 0
        add(t, {"type": "counter", "machine": mid, "ts": fmt(t), "name": "total",
                "value": total - offset})  # fmt: skip
        since_sent = 0
        send_every = rng.randint(8, 12)

    def stop(t0: int, t1: int, state: str, reason: str | None, unreported: float) -> None:
        """A stop over [t0, t1); sometimes the reason only arrives later from an operator."""
        if reason is not None and rand() < unreported:
            set_state(t0, state)
            at = t0 + int((t1 - t0) * uniform(0.05, 0.9))
            sent = t0 + int(uniform(1, 20) * MINUTE)  # may be after the stop ended
            later(sent, report(sent, "downtime_reason", at=fmt(at), reason=reason))
        else:
            set_state(t0, state, reason)

    def interrupt(t: int, seg_end: int) -> int:
        """Handle the interruption that came due; returns when the machine can run again."""
        nonlocal fail_at, idle_at, micro_at, scrap_at, next_at, wo_good
        end = t
        if run_clock >= fail_at:
            repair = min(40.0, max(3.0, rng.lognormvariate(math.log(10), 0.6)))
            end = min(seg_end, t + int(repair * MINUTE))
            send_counter(t)
            stop(t, end, "down", rng.choice(rs.faults) if rs.faults else None, 0.35)
            fail_at = run_clock + expo(1 / mtbf_ms)
        elif run_clock >= idle_at:
            end = min(seg_end, t + int(uniform(5, 30) * MINUTE))
            send_counter(t)
            stop(t, end, "idle", rng.choice(rs.idle) if rs.idle else None, 0.4)
            idle_at = run_clock + expo(1 / idle_mean_ms)
        elif run_clock >= micro_at:
            end = min(seg_end, t + int(uniform(8 * SECOND, spec.microstop_max_ms)))
            set_state(t, "idle")
            micro_at = run_clock + expo(1 / micro_mean_ms)
        else:
            if rs.scrap:
                sent = t + int(uniform(10, 300) * SECOND)
                qty = min(rng.randint(1, 5), wo_good)
                reason = rng.choice(rs.scrap)
                if qty:
                    later(sent, report(sent, "scrap", qty=qty, reason=reason))
                    wo_good -= qty
            scrap_at = run_clock + expo(1 / scrap_report_mean_ms)
        next_at = min(fail_at, idle_at, micro_at, scrap_at)
        return end

    def end_work_order(t: int) -> None:
        """Last piece, `wo_end`, and the good parts go on to the routing's next step."""
        # Its scrap, defect and rework reports still to come are settled before its end:
        # the machine's counts move a scrap report's parts from the work order running when
        # it arrives (a scrap report names none), so a later one would hit the next order.
        settled = False
        for i, (pt, pn, ev) in enumerate(pending):
            if pt > t and ev["kind"] in _SETTLED and ev.get("work_order", wo_id) == wo_id:
                ev["ts"] = fmt(t)
                pending[i] = (t, pn, ev)
                settled = True
        if settled:
            heapq.heapify(pending)
        if checks is not None and checks.last_piece:
            add(t, inspect(t, "last", qrng.random() < 0.02, 1))
        fields: dict[str, Any] = {"work_order": wo_id}
        if job is not None and job.op is not None:
            fields["operation"] = job.op
        add(t, report(t, "wo_end", **fields))
        if handoff is not None and job is not None and job.next_op and wo_product and wo_good:
            moved = t + int(qrng.uniform(10, 60) * MINUTE)  # to the next step's machines
            handoff.put(Lot(moved, wo_id, wo_product, job.next_op, wo_good, wo_qty))

    person_next = next(people, None) if people is not None else None
    person_n = 0

    def drain() -> list[tuple[int, Event | None]]:
        """This step's events with the operator reports that are due interleaved."""
        nonlocal person_next, person_n
        while person_next is not None and person_next[0] <= out[-1][0]:
            # Sign-ins join the later reports (ids of their own; ties broken by -n).
            person_n -= 1
            heapq.heappush(pending, (person_next[0], person_n, person_next[1]))
            person_next = next(people, None) if people is not None else None
        if not pending or pending[0][0] > out[-1][0]:
            return out
        merged: list[tuple[int, Event | None]] = []
        for item in out:
            while pending and pending[0][0] <= item[0]:
                t, _, ev = heapq.heappop(pending)
                merged.append((t, ev))
            merged.append(item)
        return merged

    pieces = timeline(spec.calendar, tz, start_ms, end_ms)
    first_piece = next(pieces, None)
    if first_piece is None:
        return
    setup_left = 0  # ms of a changeover still to do (a break can interrupt it)
    prev_kind = ""

    # At start: the machine's state, its work order and (lathes) the counter baseline.
    next_work_order(True, start_ms)
    if waiting:
        set_state(start_ms, "planned_stop", rs.off_shift if first_piece[2] == OFF else rs.waiting)
    elif first_piece[2] == WORK:
        set_state(start_ms, "running")
    else:
        set_state(start_ms, "planned_stop", rs.off_shift if first_piece[2] == OFF else None)
    if not waiting:
        start_work_order(start_ms, first=True)
    if spec.counter:
        add(start_ms, {"type": "counter", "machine": mid, "ts": fmt(start_ms), "name": "total",
                       "value": total - offset})  # fmt: skip

    for seg_start, seg_end, kind in chain([first_piece], pieces):
        t = seg_start
        if kind != WORK:
            off = rs.off_shift if kind == OFF else rs.waiting if waiting else None
            set_state(t, "planned_stop", off)
            prev_kind = kind
            if out:
                yield from drain()
                out.clear()
            continue
        if not waiting and prev_kind and prev_kind != WORK and not setup_left and rand() < 0.2:
            # Back from a break or a shift change a little late: nobody at the machine yet.
            end = min(seg_end, t + int(uniform(2, 10) * MINUTE))
            set_state(t, "idle", rs.no_operator)
            t = end
        prev_kind = kind
        while t < seg_end:
            if waiting:
                # Nothing to make until the previous routing step hands over a lot.
                if take_over(t):
                    setup_left = int(uniform(10, 40) * MINUTE)
                    continue
                set_state(t, "planned_stop", rs.waiting)
                t = min(seg_end, t + 15 * MINUTE)
                out.append((t, None))
            elif setup_left:
                set_state(t, "setup", rs.setup)
                step = min(setup_left, seg_end - t)
                t += step
                setup_left -= step
                if not setup_left:
                    start_work_order(t)
            else:
                if cur_state != "running":
                    set_state(t, "running")
                # Cycle time: the ideal one stretched a little, mostly ~5 %, at most 25 %.
                ct = int(ideal_ms * (1.02 + min(expo(33.0), 0.23)))
                if t + ct > seg_end:
                    if (
                        checks is not None
                        and next_patrol - t <= 0.15 * checks.patrol_ms
                        and (end_ms is None or seg_end < end_ms)  # a real break, not the run's end
                    ):
                        patrol(t)  # due in the coming break: the inspector comes before it
                    break  # the cycle cannot finish before the break: it is abandoned
                t += ct
                run_clock += ct
                if process is not None and t >= pv_next:
                    # Own rng and id series: the rest of the stream is the same with or
                    # without process values.
                    pv_n += 1
                    pv_next = t + pv_every_ms
                    pv: Event = {"type": "process_value", "machine": mid, "ts": fmt(t),
                                 "values": process.sample(ct), "id": f"{id_prefix}pv{pv_n}"}  # fmt: skip
                    out.append((t, pv))
                if spec.counter:
                    total += 1
                    since_sent += 1
                    wo_good += 1
                    if since_sent >= send_every:
                        send_counter(t)
                elif rand() < scrap_rate:
                    add(t, {"type": "count", "machine": mid, "ts": fmt(t), "good": 0, "scrap": 1})
                else:
                    add(t, {"type": "count", "machine": mid, "ts": fmt(t), "good": 1, "scrap": 0})
                    wo_good += 1
                wo_left -= 1
                if wo_left <= 0:
                    # Changeover: close the order, set up for the next one, then start it.
                    send_counter(t)
                    end_work_order(t)
                    next_work_order(False, t)
                    if waiting:
                        set_state(t, "planned_stop", rs.waiting)
                    else:
                        setup_left = int(uniform(10, 40) * MINUTE)
                        set_state(t, "setup", rs.setup)
                elif fa_pending:
                    send_counter(t)
                    t = first_article(t, seg_end)
                elif t >= next_patrol:
                    patrol(t)
                elif t >= next_defect:
                    defect(t)
                elif run_clock >= next_at and seg_end - t > MINUTE:
                    stopped = t
                    t = interrupt(t, seg_end)
                    if next_patrol <= t:  # due during the stop: the inspector comes anyway
                        patrol(max(int(next_patrol), stopped))
            if out:
                yield from drain()
                out.clear()
        if cur_state == "running":
            send_counter(seg_end)
            if out:
                yield from drain()
                out.clear()
    if close_at_end and end_ms is not None and wo_id and not waiting and not setup_left:
        # A history that another run continues (the demo's live simulator starts its own
        # work orders): its running work order ends with the history, last piece and all,
        # instead of being displaced without an end.
        send_counter(end_ms - 1)
        end_work_order(end_ms - 1)
        if out:
            yield from drain()
            out.clear()
    # Reports still to come (their ts is past the end; the caller drops what is too late).
    while pending:
        t, _, ev = heapq.heappop(pending)
        yield t, ev


def _people_events(
    spec: MachineSpec,
    seed: int,
    start_ms: int,
    end_ms: int | None,
    tz: ZoneInfo,
    fmt: TsFormat,
    id_prefix: str,
) -> Iterator[tuple[int, Event]]:
    """Sign-ins and sign-outs at one machine (its own random numbers and id series): its
    shift's operator signs in around the shift's start (or at the run's start, when the
    shift is already under way) and out around its end; a forgetful one sometimes does not
    sign out at all (docs/labor.md: the sign-in then closes after `max_sign_in_hours`)."""
    crew = spec.crew
    if crew is None:
        return
    rng = random.Random(f"{seed}:{spec.id}:people")
    n = 0
    heap: list[tuple[int, int, Event]] = []

    def push(t: int, kind: str, name: str) -> None:
        nonlocal n
        n += 1
        ev: Event = {"type": "report", "kind": kind, "machine": spec.id, "ts": fmt(t),
                     "operator": name, "id": f"{id_prefix}p{n}"}  # fmt: skip
        heapq.heappush(heap, (t, n, ev))

    early = 12 * MINUTE
    for a, b, shift in shift_instances(spec.calendar, tz, start_ms, end_ms):
        # Everything before this shift's earliest sign-in is final.
        while heap and heap[0][0] < a - early:
            t, _, ev = heapq.heappop(heap)
            yield t, ev
        name = crew.by_shift.get(shift.name)
        if name is None:
            continue
        # A shift under way at the run's start: its people sign in just after the machine's
        # first state (they were there before; the run's data begins now).
        signed_in = max(start_ms + SECOND, a + int(rng.uniform(-early, 5 * MINUTE)))
        push(signed_in, "sign_in", name)
        # Whether a person forgets is one decision for all the machines they tend.
        forgets = name in crew.forgetful and random.Random(f"{seed}:{name}:{a}").random() < 0.3
        if not forgets:
            out = b + int(rng.uniform(-3 * MINUTE, 12 * MINUTE))
            # Never signed in longer than the plant's limit (a 12-hour shift with a 12-hour
            # limit: out a few minutes early rather than closed by the labor step).
            latest = signed_in + crew.max_signed_in_ms - int(rng.uniform(1, 5) * MINUTE)
            push(max(signed_in + MINUTE, min(out, latest)), "sign_out", name)
    while heap:
        t, _, ev = heapq.heappop(heap)
        yield t, ev


def generate_timed(
    plant: PlantConfig,
    *,
    seed: int,
    start: datetime,
    end: datetime | None,
    work_order_tag: str | None = None,
    process_values_s: float = 0.0,
    close_at_end: bool = False,
) -> Iterator[Timed]:
    """(epoch ms, event) pairs for [start, end) in time order; forever when end is None.

    `process_values_s` > 0: injection-moulding machines send a `process_value` event after
    the first cycle that ends at least that long after their previous one (a value below a
    cycle time: every cycle).

    Work orders are numbered `WO-<machine>-<tag><n>` from 1 in every run. The tag is
    `S<run start>-` unless given (the demo's history uses "H"): the simulator's own work
    orders never share an id with another run's, nor with the CRM stand-in's
    `WO-<machine>-<n>` (collectors/simulator/crm.py). A work order taken over by the next
    step of its routing keeps its id there.

    `close_at_end`: each machine's running work order ends just before `end` (a last piece
    and `wo_end`), for a history that another run continues."""
    if start.tzinfo is None or (end is not None and end.tzinfo is None):
        raise ValueError("start and end must be time-zone aware")
    tz = plant.tz
    start_ms = to_ms(start)
    end_ms = to_ms(end) if end is not None else None
    fmt = TsFormat(tz)
    tag = run_tag(start, tz)
    wo_tag = f"S{tag}-" if work_order_tag is None else work_order_tag
    specs = machine_specs(plant)
    handoff = Handoff() if any(s.downstream for s in specs) else None
    streams = [
        _machine_events(
            spec,
            seed,
            start_ms,
            end_ms,
            tz,
            fmt,
            f"sim{seed}-{tag}-{spec.id}-",
            wo_tag,
            round(process_values_s * SECOND),
            handoff,
            _people_events(spec, seed, start_ms, end_ms, tz, fmt, f"sim{seed}-{tag}-{spec.id}-"),
            close_at_end,
        )
        for spec in specs
    ]
    by_ts = itemgetter(0)
    heads: list[tuple[int, Event | None] | None] = [None] * len(streams)
    live = list(range(len(streams)))
    window_end = start_ms
    while live and (end_ms is None or window_end < end_ms):
        if handoff is not None:
            handoff.watermark = window_end  # every stream is generated up to here
        window_end += _WINDOW_MS
        if end_ms is not None:
            window_end = min(window_end, end_ms)
        batch: list[Timed] = []
        finished: list[int] = []
        for i in live:
            head = heads[i]
            if head is not None:
                if head[0] >= window_end:
                    continue
                if head[1] is not None:
                    batch.append(head)  # type: ignore[arg-type]
                heads[i] = None
            for item in streams[i]:
                if item[0] >= window_end:
                    heads[i] = item
                    break
                if item[1] is not None:  # (t, None): a waiting machine's progress mark
                    batch.append(item)  # type: ignore[arg-type]
            else:
                finished.append(i)
        if finished:
            live = [i for i in live if i not in finished]
        # Stable sort: ties keep machine order, and each machine's own order.
        batch.sort(key=by_ts)
        yield from batch
    if close_at_end and end_ms is not None:
        # A machine closes its work order just before the end (`close_at_end`) after it may
        # have generated something at the end itself (a counter at the segment's end, a
        # waiting machine's mark): that held the stream, and the closing events were lost.
        tail: list[Timed] = [
            (ts, ev) for i in live for ts, ev in streams[i] if ts < end_ms and ev is not None
        ]
        tail.sort(key=by_ts)
        yield from tail


def generate(
    plant: PlantConfig,
    *,
    seed: int,
    start: datetime,
    end: datetime | None,
    process_values_s: float = 0.0,
) -> Iterator[Event]:
    """Canonical event dicts (the JSON shapes of the event contract) in ts order."""
    for _, ev in generate_timed(
        plant, seed=seed, start=start, end=end, process_values_s=process_values_s
    ):
        yield ev


def default_start(plant: PlantConfig) -> datetime:
    """Now in the plant's time zone, rounded down to the minute."""
    return datetime.now(plant.tz).replace(second=0, microsecond=0)


def end_of(start: datetime, duration_s: float | None) -> datetime | None:
    return None if duration_s is None else start + timedelta(seconds=duration_s)


@dataclass(frozen=True, slots=True)
class OpenRun:
    """A work order the previous run left running on a machine (the results' open
    `inspection_run`): `operation` is '' outside a routing."""

    machine: str
    work_order: str
    operation: str
    product: str | None


def closing_events(plant: PlantConfig, runs: list[OpenRun], at: datetime) -> list[Event]:
    """What a resumed run sends before its own events: each work order the previous run left
    running ends at `at`, with a passed last piece where the product's policy asks for one,
    as the end of the demo's history ends its work orders (`close_at_end`). Without them the
    resumed run's first work order displaced each of them unended: every tile then showed
    "last piece missing" after a restart of the demo. Machines not in the plant are skipped."""
    specs = {s.id: s for s in machine_specs(plant)}
    fmt = TsFormat(plant.tz)
    ts = fmt(to_ms(at))
    qrng = random.Random(f"close:{to_ms(at)}")
    out: list[Event] = []
    for run in runs:
        spec = specs.get(run.machine)
        if spec is None:
            continue
        op = {"operation": run.operation} if run.operation else {}
        checks = spec.inspection(run.product)
        if checks is not None and checks.last_piece:
            feats = features(run.product, run.operation or None, spec.molding)
            inspector = INSPECTORS[qrng.randrange(len(INSPECTORS))]
            out.append(
                {
                    "type": "report",
                    "kind": "inspection",
                    "machine": run.machine,
                    "ts": ts,
                    "work_order": run.work_order,
                    **op,
                    "stage": "last",
                    "result": "pass",
                    "sample_qty": 1,
                    "characteristics": measure(qrng, feats, None),
                    "operator": inspector,
                }
            )
        end: Event = {"type": "report", "kind": "wo_end", "machine": run.machine, "ts": ts,
                      "work_order": run.work_order, **op}  # fmt: skip
        out.append(end)
    return out
