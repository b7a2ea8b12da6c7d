"""Dispatch lists and promise answers, computed on read (docs/dispatch.md).

Reads the views of sql/023_dispatch.sql and runs the pure scheduler (mesflow/dispatch.py)
over their rows. Nothing is stored: every projection is relative to `now`, so the lists move
with the clock. Used by the /dispatch and /promise pages, the operator tablet's work-order
order and the CRM API's promise query (collectors/crm_dispatch.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple

import psycopg

from mesflow.dispatch import (
    DAY_US,
    HORIZON_DAYS,
    NO_DUE,
    RATE_WINDOW_DAYS,
    Entry,
    Job,
    MachineInput,
    Plan,
    Promise,
    RunSpan,
    Slip,
    dispatch,
    measured_rates,
    promise,
    pushed_by,
    rate_for,
)
from mesflow.plant import PlantConfig
from streams.hour_clock import to_us
from streams.shift_calendar import CalendarIndex

# A machine's list shows at most this many work orders (a tablet shows fewer).
MAX_PER_MACHINE: Final = 200
PROMISE_WORK_ORDER: Final = "(new)"
PROMISE_ORDER_NO: Final = "(new)"

_PLANS: dict[int, tuple[PlantConfig, dict[str, Plan]]] = {}


def plans(plant: PlantConfig) -> dict[str, Plan]:
    """One Plan per machine, sharing a CalendarIndex (and its caches) per calendar."""
    cached = _PLANS.get(id(plant))
    if cached is not None and cached[0] is plant:
        return cached[1]
    by_cal: dict[str, CalendarIndex] = {}
    out: dict[str, Plan] = {}
    for m in plant.machines:
        cal = plant.calendar_for(m)
        key = cal.model_dump_json()
        idx = by_cal.get(key)
        if idx is None:
            idx = by_cal[key] = CalendarIndex(cal, plant.plant.timezone)
        out[m] = Plan(idx)
    _PLANS[id(plant)] = (plant, out)
    return out


def _us(t: datetime) -> int:
    return to_us(t)


@dataclass(frozen=True, slots=True)
class Inputs:
    jobs: dict[str, list[Job]]  # machine -> released work orders
    measured: dict[tuple[str, str], float]  # (machine, product) -> good parts per planned hour


def read_inputs(
    conn: psycopg.Connection[Any], plant: PlantConfig, now: int, machine: str | None = None
) -> Inputs:
    """The released work orders and measured rates (of one machine, or of every one)."""
    only = "" if machine is None else " WHERE machine = %(m)s"
    jobs: dict[str, list[Job]] = {}
    for row in conn.execute(
        "SELECT machine, work_order, order_no, customer, priority, due, at_risk, product, qty,"
        " good FROM v_dispatch_input" + only,
        {"m": machine},
    ):
        machine, wo, order_no, customer, prio, due, risk, product, qty, good = row
        if machine not in plant.machines:
            continue  # a machine taken out of the plant file: nothing to project it on
        jobs.setdefault(machine, []).append(
            Job(wo, order_no, product, int(qty), int(good), int(prio), _us(due), bool(risk),
                customer)
        )  # fmt: skip
    since = now - RATE_WINDOW_DAYS * DAY_US
    spans = [
        RunSpan(m, p, int(g), _us(s), _us(e))
        for m, p, g, s, e in conn.execute(
            "SELECT machine, product, good, start_ts, end_ts FROM v_dispatch_rate_spans"
            " WHERE end_ts >= to_timestamp(%(since)s / 1e6)"
            + ("" if machine is None else " AND machine = %(m)s"),
            {"since": since, "m": machine},
        )
    ]
    return Inputs(jobs, measured_rates(spans, plans(plant), now))


class MachineList(NamedTuple):
    machine: str
    entries: list[Entry]
    # work order -> the orders it pushes past their due (late with it, on time without it)
    pushes: dict[str, list[Slip]]


def machine_lists(
    plant: PlantConfig, inputs: Inputs, now: int, machines: Iterable[str] | None = None
) -> list[MachineList]:
    """The dispatch list of every machine (or of `machines`), in plant-file order."""
    wanted = set(machines) if machines is not None else None
    p = plans(plant)
    out: list[MachineList] = []
    for m in plant.machines:
        if wanted is not None and m not in wanted:
            continue
        jobs = inputs.jobs.get(m, [])
        rate = rate_for(m, inputs.measured, plant.ideal_cycle_seconds)
        entries = dispatch(jobs, rate, p[m], now)[:MAX_PER_MACHINE]
        pushes: dict[str, list[Slip]] = {}
        # Only an order ahead of another can push it: skip the last one.
        for e in entries[:-1]:
            slips = pushed_by(jobs, e.job.work_order, rate, p[m], now)
            if slips:
                pushes[e.job.work_order] = slips
        out.append(MachineList(m, entries, pushes))
    return out


def candidate_machines(plant: PlantConfig, inputs: Inputs, product: str) -> list[str]:
    """Machines that can run `product`: those the plant file gives an ideal cycle time for it,
    and those that made it recently or have it released (an older plant file)."""
    listed = {m for prod in plant.products if prod.id == product for m in prod.ideal_cycle_seconds}
    listed |= {m for (m, p) in inputs.measured if p == product}
    listed |= {m for m, jobs in inputs.jobs.items() if any(j.product == product for j in jobs)}
    return sorted(m for m in listed if m in plant.machines)


def promise_answer(
    plant: PlantConfig,
    inputs: Inputs,
    now: int,
    product: str,
    qty: int,
    priority: int,
    machine: str | None = None,
    horizon_days: float = HORIZON_DAYS,
) -> Promise | None:
    """The earliest finish of a new order over the machines that can run it (or on
    `machine`); None when no machine can. Changes nothing."""
    p = plans(plant)
    machines = candidate_machines(plant, inputs, product)
    if machine is not None:
        machines = [m for m in machines if m == machine]
    new = Job(PROMISE_WORK_ORDER, PROMISE_ORDER_NO, product, qty, 0, priority, NO_DUE)
    return promise(
        new,
        {
            m: MachineInput(
                inputs.jobs.get(m, []),
                rate_for(m, inputs.measured, plant.ideal_cycle_seconds),
                p[m],
            )
            for m in machines
        },
        now,
        horizon_days,
    )
