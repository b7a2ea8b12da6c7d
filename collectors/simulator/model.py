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
_OFF_REASON = "no_order"
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
        off_shift=_OFF_REASON if _OFF_REASON in known else None,
    )


def machine_specs(plant: PlantConfig) -> list[MachineSpec]:
    specs: list[MachineSpec] = []
    for line_no, line in enumerate(plant.lines):
        # A small pool of operators per line: op1..op5 on the first line, op6..op10 next...
        operators = tuple(f"op{line_no * 5 + k}" for k in range(1, 6))
        molding_reasons = _reasons(plant, True)
        machining_reasons = _reasons(plant, False)
        for machine in line.machines:
            mid = machine.id
            own = [p.id for p in plant.products if mid in p.ideal_cycle_seconds]
            products: tuple[str | None, ...] = tuple(own or [p.id for p in plant.products])
            products = products or (None,)
            microstop = plant.microstop_seconds(mid)
            specs.append(
                MachineSpec(
                    id=mid,
                    products=products,
                    cycle_ms={
                        p: round(plant.ideal_cycle_seconds(mid, p) * SECOND) for p in products
                    },
                    # Lathes in the demo plant report a cumulative part counter.
                    counter="lathe" in machine.name.en.lower(),
                    # Micro-stops stay under the machine's own threshold (and under 2 min).
                    microstop_max_ms=round(min(microstop, 120.0) * 0.9 * SECOND),
                    reasons=molding_reasons if _is_molding(line, machine) else machining_reasons,
                    operators=operators,
                    calendar=plant.calendar_for(mid),
                    molding=_is_molding(line, machine),
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
) -> Iterator[Timed]:
    """One machine's events in time order (ts may run past end_ms; the caller cuts)."""
    rng = random.Random(f"{seed}:{spec.id}")
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

    # Interruptions come due on the machine's running-time clock (a machine that is
    # stopped does not wear out or run short of material).
    run_clock = 0
    fail_at = expo(1 / mtbf_ms)
    idle_at = expo(1 / idle_mean_ms)
    micro_at = expo(1 / micro_mean_ms) if has_micro else math.inf
    scrap_at = expo(1 / scrap_report_mean_ms)
    next_at = min(fail_at, idle_at, micro_at, scrap_at)

    n = 0
    out: list[Timed] = []
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

    def report(t: int, kind: str, **fields: Any) -> Event:
        ev: Event = {"type": "report", "kind": kind, "machine": mid, "ts": fmt(t), **fields}
        ev["operator"] = rng.choice(spec.operators)
        return ev

    # Work orders: the first one is already under way when the simulation starts.
    wo_no = 0
    wo_id = ""
    ideal_ms = 0
    wo_left = 0

    wo_product: str | None = None
    wo_qty = 0

    def next_work_order(first: bool) -> None:
        nonlocal wo_no, wo_id, ideal_ms, wo_left, wo_product, wo_qty
        wo_no += 1
        wo_id = f"WO-{mid}-{wo_tag}{wo_no:04d}"
        product = rng.choice(spec.products)
        ideal_ms = spec.cycle_ms[product]
        qty = max(20, 10 * round(uniform(2, 5) * HOUR / ideal_ms / 10))  # a few hours of work
        wo_left = rng.randint(max(1, qty // 10), qty) if first else qty
        wo_product, wo_qty = product, qty

    def start_work_order(t: int) -> None:
        # The `work_order` event names the product, so the pipeline judges the parts
        # against that product's ideal cycle time (without it, the machine's default one).
        if wo_product is not None:
            add(t, {"type": "work_order", "machine": mid, "ts": fmt(t), "work_order": wo_id,
                    "order_no": f"{STOCK_ORDER_PREFIX}{wo_product}", "product": wo_product,
                    "qty": wo_qty})  # fmt: skip
        add(t, report(t, "wo_start", work_order=wo_id))

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
        nonlocal fail_at, idle_at, micro_at, scrap_at, next_at
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
                qty = rng.randint(1, 5)
                later(sent, report(sent, "scrap", qty=qty, reason=rng.choice(rs.scrap)))
            scrap_at = run_clock + expo(1 / scrap_report_mean_ms)
        next_at = min(fail_at, idle_at, micro_at, scrap_at)
        return end

    def drain() -> list[Timed]:
        """This step's events with the operator reports that are due interleaved."""
        if not pending or pending[0][0] > out[-1][0]:
            return out
        merged: list[Timed] = []
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
    next_work_order(first=True)
    if first_piece[2] == WORK:
        set_state(start_ms, "running")
    else:
        set_state(start_ms, "planned_stop", rs.off_shift if first_piece[2] == OFF else None)
    start_work_order(start_ms)
    if spec.counter:
        add(start_ms, {"type": "counter", "machine": mid, "ts": fmt(start_ms), "name": "total",
                       "value": total - offset})  # fmt: skip

    for seg_start, seg_end, kind in chain([first_piece], pieces):
        t = seg_start
        if kind != WORK:
            set_state(t, "planned_stop", rs.off_shift if kind == OFF else None)
            prev_kind = kind
            if out:
                yield from drain()
                out.clear()
            continue
        if prev_kind and prev_kind != WORK and not setup_left and rand() < 0.2:
            # Back from a break or a shift change a little late: nobody at the machine yet.
            end = min(seg_end, t + int(uniform(2, 10) * MINUTE))
            set_state(t, "idle", rs.no_operator)
            t = end
        prev_kind = kind
        while t < seg_end:
            if setup_left:
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
                    if since_sent >= send_every:
                        send_counter(t)
                elif rand() < scrap_rate:
                    add(t, {"type": "count", "machine": mid, "ts": fmt(t), "good": 0, "scrap": 1})
                else:
                    add(t, {"type": "count", "machine": mid, "ts": fmt(t), "good": 1, "scrap": 0})
                wo_left -= 1
                if wo_left <= 0:
                    # Changeover: close the order, set up for the next one, then start it.
                    send_counter(t)
                    add(t, report(t, "wo_end", work_order=wo_id))
                    next_work_order(first=False)
                    setup_left = int(uniform(10, 40) * MINUTE)
                    set_state(t, "setup", rs.setup)
                elif run_clock >= next_at and seg_end - t > MINUTE:
                    t = interrupt(t, seg_end)
            if out:
                yield from drain()
                out.clear()
        if cur_state == "running":
            send_counter(seg_end)
            if out:
                yield from drain()
                out.clear()
    # Reports still to come (their ts is past the end; the caller drops what is too late).
    while pending:
        t, _, ev = heapq.heappop(pending)
        yield t, ev


def generate_timed(
    plant: PlantConfig,
    *,
    seed: int,
    start: datetime,
    end: datetime | None,
    work_order_tag: str = "",
    process_values_s: float = 0.0,
) -> Iterator[Timed]:
    """(epoch ms, event) pairs for [start, end) in time order; forever when end is None.

    `process_values_s` > 0: injection-moulding machines send a `process_value` event after
    the first cycle that ends at least that long after their previous one (a value below a
    cycle time: every cycle).

    Work orders are numbered `WO-<machine>-<tag><n>` from 1 in every run; the demo's
    history uses the tag "H", so its work orders never share an id with the live run's
    (which the CRM stand-in's orders name)."""
    if start.tzinfo is None or (end is not None and end.tzinfo is None):
        raise ValueError("start and end must be time-zone aware")
    tz = plant.tz
    start_ms = to_ms(start)
    end_ms = to_ms(end) if end is not None else None
    fmt = TsFormat(tz)
    tag = run_tag(start, tz)
    streams = [
        _machine_events(
            spec,
            seed,
            start_ms,
            end_ms,
            tz,
            fmt,
            f"sim{seed}-{tag}-{spec.id}-",
            work_order_tag,
            round(process_values_s * SECOND),
        )
        for spec in machine_specs(plant)
    ]
    heads: list[Timed | None] = [None] * len(streams)
    live = list(range(len(streams)))
    by_ts = itemgetter(0)
    window_end = start_ms
    while live and (end_ms is None or window_end < end_ms):
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
                batch.append(head)
                heads[i] = None
            for item in streams[i]:
                if item[0] >= window_end:
                    heads[i] = item
                    break
                batch.append(item)
            else:
                finished.append(i)
        if finished:
            live = [i for i in live if i not in finished]
        # Stable sort: ties keep machine order, and each machine's own order.
        batch.sort(key=by_ts)
        yield from batch


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
