"""Out-of-limit spans of process values (docs/metrics.md, "Process limits"), pure logic.

One `LimitTracker` per machine follows each limited value in event time. A span opens at
the first value beyond a limit (strictly: a value on the limit is in) and ends at the
first value back within limits; it carries the limit crossed, its bound, the worst value
and the product that ran. It also ends (and, if still out, a new one opens at the same
time) when the product or the limits change, so each span has one product and one bound.

The product at a value's time is the product of the machine's active work order at that
time: the tracker receives the machine's work-order events (work order -> product) and its
wo_start / wo_end reports (which one runs when), as the machine tracker does, so a value
and the work order that covers it may arrive in any order. Process values bypass the
trackers, so this is the cheapest sound way: no join against tables the sink writes later.

Late values: a value not later than the last one of its name on the machine is stored
(streams/process_values.py) but does not move a span (a span's edges are the values in
event order as they arrived; rewriting a closed span from a late value is left out). The
ingest log's order is the same live and in a replay, so a replay gives the same spans, and
the sink's key (machine, name, start) stores each once.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

import psycopg

from mesflow.events import WorkOrderEndReport, WorkOrderEvent, WorkOrderStartReport
from mesflow.plant import PlantConfig
from mesflow.process_limits import ValueLimits, merged
from streams.process_values import ProcessValues

# Work-order changes kept per machine (older ones no longer decide a value's product).
MAX_WO_CHANGES = 1000


class LimitSpan(NamedTuple):
    """One out-of-limit span, as of now (end None: still out)."""

    machine: str
    name: str
    start: datetime
    end: datetime | None
    limit: str  # 'upper' or 'lower': the side crossed
    bound: float  # the limit's value
    worst: float  # the value farthest beyond it
    product: str | None


class ProductRun(NamedTuple):
    """From `start` on, `machine` ran `product` (None: no work order, or not yet known)."""

    machine: str
    start: datetime
    product: str | None


LimitsOf = Callable[[str | None], Mapping[str, ValueLimits]]


def limits_of(plant: PlantConfig, machine: str) -> LimitsOf:
    """The limits on `machine` while a product runs (None: no work order)."""
    m = plant.machines.get(machine)
    own = m.process_limits if m is not None else None
    products = {p.id: p.process_limits for p in plant.products}
    cache: dict[str | None, Mapping[str, ValueLimits]] = {}

    def of(product: str | None) -> Mapping[str, ValueLimits]:
        if product not in cache:
            cache[product] = merged(products.get(product) if product else None, own)
        return cache[product]

    return of


def has_limits(plant: PlantConfig) -> bool:
    return any(m.process_limits for m in plant.machines.values()) or any(
        p.process_limits for p in plant.products
    )


class LimitTracker:
    def __init__(self, machine: str, limits: LimitsOf) -> None:
        self.machine = machine
        self.limits = limits
        self.products: dict[str, str] = {}  # work order -> product
        self.wo_changes: list[tuple[datetime, int, str | None]] = []  # (ts, seq, running)
        self.last_ts: dict[str, datetime] = {}  # value name -> newest value's time
        self.open: dict[str, LimitSpan] = {}

    def __getstate__(self) -> dict[str, Any]:
        # The limits come from the plant file at start, not from a snapshot.
        return {k: v for k, v in self.__dict__.items() if k != "limits"}

    # -- work orders ---------------------------------------------------------------------------

    def on_work_order(self, ev: WorkOrderEvent) -> list[ProductRun]:
        """The product runs this work order's product names (it may come after its start)."""
        if self.products.get(ev.work_order) == ev.product:
            return []
        self.products[ev.work_order] = ev.product
        m = self.machine
        return [
            ProductRun(m, t, ev.product) for t, _s, wo in self.wo_changes if wo == ev.work_order
        ]

    def on_report(
        self, seq: int, ev: WorkOrderStartReport | WorkOrderEndReport
    ) -> list[ProductRun]:
        if isinstance(ev, WorkOrderStartReport):
            running: str | None = ev.work_order
        elif self.work_order_at(ev.ts) != ev.work_order:
            return []  # ending one that is not running here (as the machine tracker does)
        else:
            running = None
        insort(self.wo_changes, (ev.ts, seq, running), key=lambda c: (c[0], c[1]))
        if len(self.wo_changes) > MAX_WO_CHANGES:
            del self.wo_changes[: len(self.wo_changes) - MAX_WO_CHANGES]
        return [ProductRun(self.machine, ev.ts, self.product_at(ev.ts))]

    def work_order_at(self, ts: datetime) -> str | None:
        k = bisect_right(self.wo_changes, ts, key=lambda c: c[0]) - 1
        return self.wo_changes[k][2] if k >= 0 else None

    def product_at(self, ts: datetime) -> str | None:
        wo = self.work_order_at(ts)
        return self.products.get(wo) if wo is not None else None

    # -- values --------------------------------------------------------------------------------

    def on_values(self, pv: ProcessValues) -> list[LimitSpan]:
        """The spans these values opened, moved or closed."""
        out: list[LimitSpan] = []
        product: Any = False  # looked up once per event, only if a value is limited
        for _m, ts, name, v in pv.rows:
            last = self.last_ts.get(name)
            if last is not None and ts <= last:
                continue  # late: stored, but moves no span (module docstring)
            span = self.open.get(name)
            if product is False:
                product = self.product_at(ts)
            lim = self.limits(product).get(name)
            if lim is None and span is None:
                continue  # not limited: nothing to follow (last_ts not even kept)
            self.last_ts[name] = ts
            side = lim.side(v) if lim is not None else None
            bound = None
            if side is not None:
                assert lim is not None
                bound = lim.upper if side == "upper" else lim.lower
            if span is not None:
                same = side == span.limit and bound == span.bound and product == span.product
                if same:
                    worse = v > span.worst if side == "upper" else v < span.worst
                    if worse:
                        span = self.open[name] = span._replace(worst=v)
                        out.append(span)
                    continue
                out.append(span._replace(end=ts))
                del self.open[name]
            if side is not None:
                assert bound is not None
                span = LimitSpan(self.machine, name, ts, None, side, bound, v, product)
                self.open[name] = span
                out.append(span)
        return out


# -- storage (the results sink, streams/pg_sink.py) ------------------------------------------

UPSERT_SPAN = """
INSERT INTO process_limit_span
    (machine, name, start_ts, end_ts, limit_side, bound, worst, product)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (machine, name, start_ts) DO UPDATE SET
    end_ts = EXCLUDED.end_ts, limit_side = EXCLUDED.limit_side, bound = EXCLUDED.bound,
    worst = EXCLUDED.worst, product = EXCLUDED.product"""

UPSERT_RUN = """
INSERT INTO process_product_run (machine, start_ts, product) VALUES (%s, %s, %s)
ON CONFLICT (machine, start_ts) DO UPDATE SET product = EXCLUDED.product"""


def store(cur: psycopg.Cursor[Any], spans: list[LimitSpan], runs: list[ProductRun]) -> None:
    """Write spans and product runs (few rows: only changes) in the caller's transaction."""
    if spans:
        cur.executemany(UPSERT_SPAN.encode(), spans)
    if runs:
        cur.executemany(UPSERT_RUN.encode(), runs)
