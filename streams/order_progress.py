"""Per-order logic: work orders joined with their CRM order; progress, rate, ETA, at-risk,
and the progress callbacks to the CRM.

Plain Python, no Bytewax and no I/O: the dataflow keeps one `OrderProgress` per order_no
and feeds it the order snapshots, the work orders, the work-order starts and the parts
totals the machine trackers emit. All times are integer microseconds since the epoch
(streams/hour_clock.py). How the figures are computed is in docs/orders.md.

Deterministic by construction: "now" is the latest event time this order has seen (never
the wall clock), and callbacks are decided after every input, not per flush, so a replay
gives the same callbacks with the same dedupe keys whatever the batching.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple

import streams.routing_store  # noqa: F401  (registers the operation rows with the sink)
from mesflow.events import OrderEvent, WorkOrderEvent
from mesflow.plant import PlantConfig
from streams.hour_clock import HOUR_US, from_us, to_us
from streams.routing import (
    OperationSetRow,
    OpFigures,
    OpInput,
    Route,
    op_figures,
    op_for,
    plant_routes,
    route_of,
)

RATE_WINDOW_US: Final = 30 * 60 * 1_000_000
# Rate samples are kept at one-minute resolution: a machine at a 2 s cycle would otherwise
# keep 900 samples per work order in the snapshotted state.
SAMPLE_SLOT_US: Final = 60 * 1_000_000
MILESTONES: Final = (25, 50, 75)
# Statuses whose progress is still reported to the CRM; a cancelled or closed order is
# done from the CRM's side (the cancellation acknowledgement carries its final counts).
_PROGRESS_STATUSES: Final = frozenset({"open", "on_hold"})


# ---------------------------------------------------------------------------------------
# rows and callbacks
# ---------------------------------------------------------------------------------------


class WorkOrderProgressRow(NamedTuple):
    """One work_order_progress row (sql/009_order_progress.sql)."""

    work_order: str
    order_no: str
    product: str | None  # None until the work_order event is known
    qty: int | None
    machine: str | None  # the planned machine, else the one it last ran on
    good: int
    scrap: int
    progress: float | None  # good / qty; None while qty is unknown
    rate_per_h: float
    eta: datetime | None  # when finished: the time it was finished
    started_at: datetime | None
    completed_at: datetime | None
    last_event_ts: datetime  # the event time these figures are as of ("now")


class OrderProgressRow(NamedTuple):
    """One order_progress row; the CRM fields are None until the order snapshot is known."""

    order_no: str
    customer: str | None
    priority: int | None
    product: str | None
    qty: int | None
    due: datetime | None
    status: str | None
    version: int | None
    good: int
    scrap: int
    progress: float | None
    eta: datetime | None
    at_risk: bool
    last_event_ts: datetime


class Callback(NamedTuple):
    """A CRM callback, ready for notify.outbox.enqueue(cur, aggregate=order_no, ...)."""

    order_no: str
    event_type: str  # work_started | milestone | at_risk | back_on_track | completed | ...
    payload: dict[str, Any]
    dedupe: str


OrderRow = WorkOrderProgressRow | OrderProgressRow | Callback | OperationSetRow


# ---------------------------------------------------------------------------------------
# ideal cycle times
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdealCycles:
    """Ideal cycle time in seconds per part for (machine, product); picklable.

    Lookup: the (machine, product) pair, else the machine's own value, else `default`.
    Without a machine (an order with no work order yet), the fastest machine that lists
    the product, else `default`.
    """

    by_pair: Mapping[tuple[str, str], float] = field(default_factory=dict)
    by_machine: Mapping[str, float] = field(default_factory=dict)
    default: float = 60.0
    # The plant file's routings by product (with their ideal cycle per operation): they
    # travel with the ideal cycles, the one plant-derived value the order step is given.
    routes: Mapping[str, Route] = field(default_factory=dict)

    def __call__(self, machine: str | None, product: str | None) -> float:
        if machine is not None:
            if product is not None:
                own = self.by_pair.get((machine, product))
                if own is not None:
                    return own
            return self.by_machine.get(machine, self.default)
        if product is not None:
            known = [s for (_m, p), s in self.by_pair.items() if p == product]
            if known:
                return min(known)
        return self.default

    @classmethod
    def from_plant(cls, plant: PlantConfig) -> IdealCycles:
        return cls(
            by_pair={
                (m, p.id): s for p in plant.products for m, s in p.ideal_cycle_seconds.items()
            },
            by_machine={m: plant.ideal_cycle_seconds(m) for m in plant.machines},
            default=plant.defaults.ideal_cycle_seconds,
            routes=plant_routes(plant),
        )


IdealFn = Callable[[str | None, str | None], float]


# ---------------------------------------------------------------------------------------
# state
# ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Run:
    """A work order on one machine: its absolute totals and recent (t, good) samples."""

    good: int = 0
    scrap: int = 0
    first_t: int | None = None
    samples: list[tuple[int, int]] = field(default_factory=list)  # by t
    # Its totals split by the operation the wo_starts named (WorkOrderParts.ops; () when
    # none named one: all under ""), and the first start per operation ("" for unnamed).
    ops: tuple[tuple[str, int, int], ...] = ()
    op_starts: tuple[tuple[str, int], ...] = ()


def _names_an_op(r: _Run) -> bool:
    return any(o for o, _ in r.op_starts) or any(o for o, _, _ in r.ops)


class _Derived(NamedTuple):
    """A routed work order's figures, derived from its routing, quantity and runs."""

    route: Route | None
    figs: tuple[OpFigures, ...]  # () without a route
    good: int
    scrap: int
    last_op_runs: frozenset[str]  # the machines whose parts include its last step


@dataclass(slots=True)
class _WorkOrder:
    product: str | None = None
    qty: int | None = None
    machine: str | None = None  # planned machine (work_order event)
    runs: dict[str, _Run] = field(default_factory=dict)
    started_at: int | None = None
    started_machine: str | None = None
    announced: bool = False  # work_started callback emitted
    done_at: int | None = None
    # Its routing (docs/routings.md): its own from the work_order event, else its product's
    # from the plant file, which applies once one of its wo_starts names an operation (work
    # orders started without operations are followed whole, as before routings: a routing
    # added to the plant file does not reset the progress of work already running).
    routing: Route | None = None
    own_routing: bool = False  # it came with the work_order event
    # Its figures per operation, computed once per change (`changed()`) rather than on
    # every read: the order step reads them several times per input and per flush, for
    # every work order of the order. Not state: left out of snapshots.
    derived: _Derived | None = field(default=None, repr=False, compare=False)
    # Its figures as of (now, done_at), and whether they hold at any later "now" (made or
    # without a quantity, and no part in the rate window: see OrderProgress._evaluate).
    # Not state either.
    fig: tuple[int, int | None, _WoFig, bool] | None = field(
        default=None, repr=False, compare=False
    )
    # Its last progress row, in parts (see OrderProgress.flush); not state either.
    row: list[Any] | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> tuple[None, dict[str, Any]]:
        # Slots only (pickle's own shape for a slots class). Objects from before routings
        # lack some slots: OrderProgress.__setstate__ sets them.
        return None, {f: getattr(self, f) for f in _WO_STATE if hasattr(self, f)}

    def changed(self) -> None:
        """Its routing, quantity or runs changed: derived figures are recomputed."""
        self.derived = None
        self.fig = None

    def _derive(self) -> _Derived:
        d = self.derived
        if d is None:
            route = self.route
            if route is None:
                runs = self.runs
                if len(runs) == 1:  # most work orders run on one machine
                    (r,) = runs.values()
                    good, scrap = r.good, r.scrap
                else:
                    good = sum(r.good for r in runs.values())
                    scrap = sum(r.scrap for r in runs.values())
                d = _Derived(None, (), good, scrap, _NO_MACHINES)
            else:
                inputs = self.op_inputs(route)
                figs = tuple(op_figures(route, inputs, self.qty))
                last = route[-1].op
                d = _Derived(
                    route,
                    figs,
                    figs[-1].good,  # its good parts: those out of its last operation
                    sum(f.scrap for f in figs),  # its scrap: all its operations'
                    frozenset(i.machine for i in inputs if i.op == last),
                )
            self.derived = d
        return d

    @property
    def route(self) -> Route | None:
        """The routing its figures follow; None: followed whole."""
        if self.routing is None:
            return None
        if self.own_routing or any(_names_an_op(r) for r in self.runs.values()):
            return self.routing
        return None

    def op_inputs(self, route: Route) -> list[OpInput]:
        """What each machine did for each step of its `route`."""
        out: list[OpInput] = []
        for m, r in self.runs.items():
            starts = dict(r.op_starts)
            # Every machine hears of every work order: one that neither started it nor
            # made a part of it did nothing for it.
            items = [x for x in r.ops or (("", r.good, r.scrap),) if x[1] or x[2] or x[0] in starts]
            # A step started here with no part yet is running, with nothing made.
            if starts:
                named = {x[0] for x in items}
                items.extend((o, 0, 0) for o in starts if o not in named)
            last = r.samples[-1][0] if r.samples else None
            unnamed_first = r.first_t if not r.ops else None
            for raw, g, s in items:
                first = starts.get(raw, unnamed_first)
                out.append(
                    OpInput(op_for(route, raw, m), m, g, s, first, last if g or s else first)
                )
        return out

    def followed_route(self) -> Route | None:
        """Its route (as `route`), from the figures when they are current."""
        return None if self.routing is None else self._derive().route

    def op_figs(self) -> tuple[OpFigures, ...]:
        """Its figures per routing step (() when it follows no route)."""
        return () if self.routing is None else self._derive().figs

    @property
    def good(self) -> int:
        """Its good parts: with a routing, those out of its last operation; without, the
        sum of its runs, as before routings (both cached until the next change: the
        order step reads them for every work order of the order after every input)."""
        d = self.derived
        return (d if d is not None else self._derive()).good

    @property
    def scrap(self) -> int:
        """Its scrap: with a routing, the scrap of all its operations."""
        d = self.derived
        return (d if d is not None else self._derive()).scrap

    def last_op_runs(self) -> frozenset[str]:
        """The machines whose parts include its routing's last step (its rate)."""
        return self._derive().last_op_runs


_NO_MACHINES: Final[frozenset[str]] = frozenset()

# What a snapshot of a work order holds: its fields but the derived figures.
_WO_STATE: Final = tuple(f for f in _WorkOrder.__slots__ if f not in ("derived", "fig", "row"))


@dataclass(frozen=True, slots=True)
class _Order:
    version: int
    customer: str
    priority: int
    product: str
    qty: int
    due: int
    status: str


class _WoFig(NamedTuple):
    good: int
    scrap: int
    rate: float  # good parts per hour
    remaining: int | None
    eta: int | None


class OrderProgress:
    """Everything the dataflow knows about one CRM order and its work orders."""

    def __init__(self, order_no: str, ideal_cycle_seconds: IdealFn | Mapping[Any, float]) -> None:
        self.order_no = order_no
        # A mapping {(machine, product): seconds} is wrapped: the state must stay picklable
        # (a lambda would not be).
        self.ideal: IdealFn = (
            IdealCycles(by_pair=dict(ideal_cycle_seconds))
            if isinstance(ideal_cycle_seconds, Mapping)
            else ideal_cycle_seconds
        )
        self.order: _Order | None = None
        self.wos: dict[str, _WorkOrder] = {}
        self.now: int | None = None
        self.done_at: int | None = None  # when the order's good first reached its qty
        self.milestone: int = 0  # highest milestone percent sent
        self.completed_sent = False
        self.risk_n = 0  # risk transitions sent; odd = the CRM was told "at risk"
        self.cancel_acked: int | None = None  # highest cancelled version acknowledged
        self.pending: list[Callback] = []
        self.dirty = False
        self._no_caches()

    def _no_caches(self) -> None:
        # Caches of _evaluate (see there); not state: rebuilt on the first input.
        self._active: set[str] | None = None
        self._contrib: dict[str, tuple[int, int]] = {}
        self._sum = (0, 0)
        # The work orders with a run of several rate samples (those _forget may trim);
        # None: not known, all.
        self._trim: set[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in _CACHES:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._no_caches()
        # Snapshots from before routings: slots added since are unset on their objects.
        for wo in self.wos.values():
            wo.derived = wo.fig = wo.row = None  # not in snapshots
            if not hasattr(wo, "routing"):
                wo.routing, wo.own_routing = None, False
            for run in wo.runs.values():
                if not hasattr(run, "ops"):
                    run.ops = ()
                    run.op_starts = ()

    # -- input -------------------------------------------------------------------------------

    def on_order(self, ev: OrderEvent) -> None:
        if self.order is not None and ev.version <= self.order.version:
            return  # an older or repeated snapshot (events.md)
        self.order = _Order(
            ev.version, ev.customer, ev.priority, ev.product, ev.qty, to_us(ev.due), ev.status
        )
        self._tick(to_us(ev.ts))
        if ev.status == "cancelled" and (
            self.cancel_acked is None or ev.version > self.cancel_acked
        ):
            self.cancel_acked = ev.version
            good, scrap = self._totals()
            self._emit(
                "cancellation_acknowledged",
                {"version": ev.version, "good": good, "scrap": scrap},
                f"{self.order_no}:cancel:{ev.version}",
            )
        self._evaluate()

    def on_work_order(self, ev: WorkOrderEvent) -> None:
        wo = self.wos.setdefault(ev.work_order, _WorkOrder())
        wo.product, wo.qty, wo.machine = ev.product, ev.qty, ev.machine
        # Its own routing, else its product's in the plant file (a snapshot's IdealCycles
        # from before routings has no `routes`).
        wo.routing = route_of(ev.routing, ev.product, getattr(self.ideal, "routes", {}))
        wo.own_routing = bool(ev.routing)
        wo.changed()
        self._tick(to_us(ev.ts))
        self._evaluate(ev.work_order)

    def on_parts(
        self,
        work_order: str,
        machine: str,
        t: int,
        good_total: int,
        scrap_total: int,
        ops: tuple[tuple[str, int, int], ...] = (),
    ) -> None:
        """Absolute totals of `work_order` on `machine` as of t (never deltas), and their
        split by operation (WorkOrderParts.ops)."""
        # Built only when new (a default for setdefault would be built on every call).
        wo = self.wos.get(work_order)
        if wo is None:
            wo = self.wos[work_order] = _WorkOrder()
        run = wo.runs.get(machine)
        if run is None:
            run = wo.runs[machine] = _Run()
        run.good, run.scrap, run.ops = good_total, scrap_total, ops
        wo.derived = wo.fig = None  # changed()
        s = run.samples
        # A total as of t supersedes samples at or after t (a revision of the same span).
        while s and s[-1][0] >= t:
            s.pop()
        # One sample per minute slot, except that the first sample is always kept.
        if len(s) >= 2 and s[-1][0] // SAMPLE_SLOT_US == t // SAMPLE_SLOT_US:
            s[-1] = (t, good_total)
        else:
            s.append((t, good_total))
            if len(s) > 1 and self._trim is not None:
                self._trim.add(work_order)
        if run.first_t is None or t < run.first_t:
            run.first_t = t
        if (good_total or scrap_total) and (wo.started_at is None or t < wo.started_at):
            wo.started_at, wo.started_machine = t, machine
        self._tick(t)
        self._evaluate(work_order)

    def on_wo_started(
        self, work_order: str, machine: str, t: int, ops: tuple[tuple[str, int], ...] = ()
    ) -> None:
        wo = self.wos.get(work_order)
        run = None if wo is None else wo.runs.get(machine)
        if not ops and run is not None:  # no operation named here: the unnamed one's start
            ops = run.op_starts
            if len(ops) != 1 or ops[0][0] != "" or ops[0][1] > t:  # else: as it is
                starts = dict(ops)
                starts[""] = min(starts.get("", t), t)
                ops = tuple(sorted(starts.items()))
        if wo is not None and run is not None and self._repeats_start(wo, run, t, ops):
            # A machine repeats its work order's start with every batch of its parts:
            # nothing changes but the flush (as _tick), so its figures stay and nothing
            # is evaluated again (the last input's evaluation saw this same state).
            self.dirty = True
            return
        if wo is None:
            wo = self.wos[work_order] = _WorkOrder()
        if run is None:
            run = wo.runs[machine] = _Run()
            if not ops:
                ops = (("", t),)
        wo.changed()
        run.op_starts = ops
        # The first start is a sample of 0 parts: the first parts then count in the rate.
        if run.first_t is None or t < run.first_t:
            run.first_t = t
            run.samples.insert(0, (t, 0))
            if len(run.samples) > 1 and self._trim is not None:
                self._trim.add(work_order)
        if wo.started_at is None or t < wo.started_at:
            wo.started_at, wo.started_machine = t, machine
        self._tick(t)
        self._evaluate(work_order)

    def _repeats_start(
        self, wo: _WorkOrder, run: _Run, t: int, ops: tuple[tuple[str, int], ...]
    ) -> bool:
        """Whether a start at t naming `ops` (the run's starts it would leave) changes
        nothing: the same starts, not before the run's first time nor the work order's
        start, and not after "now"."""
        now, first, started = self.now, run.first_t, wo.started_at
        return (
            run.op_starts == ops
            and now is not None
            and t <= now
            and first is not None
            and first <= t
            and started is not None
            and started <= t
        )

    def on_clock(self, t: int) -> None:
        """Move "now" without new facts (rates decay, ETAs move, due passes): the dataflow's
        clock tick, so an order whose machines fall silent does not keep its last ETA."""
        if self.now is None or t <= self.now:
            return  # nothing seen yet: no figures to move
        self._tick(t)
        self._evaluate()

    def wants_clock(self) -> bool:
        """Whether a clock tick can change anything: an open order not yet made."""
        o = self.order
        return o is not None and o.status == "open" and self.done_at is None

    # -- output ------------------------------------------------------------------------------

    def flush(self) -> list[OrderRow]:
        """Rows and callbacks since the last flush (rows are absolute: upserts)."""
        out: list[OrderRow] = []
        now = self.now
        if self.dirty and now is not None:
            figs: dict[str, _WoFig] = {}
            last = from_us(now)
            wo_fig, order_no = self._wo_fig, self.order_no
            for w, wo in self.wos.items():
                c, r = wo.fig, wo.row
                if (
                    r is not None
                    and c is not None
                    and r[0] is c[2]
                    and c[1] == wo.done_at
                    and (c[0] == now or (c[3] and now > c[0]))
                ):
                    # Its last row is of these figures, or it is dormant (_wo_fig): a row
                    # for every work order of the order, each flush, mostly of work orders
                    # whose ETA alone moved, with the clock.
                    f = c[2]
                    fields = r[1]
                    if c[0] != now and f.remaining:
                        assert f.eta is not None
                        eta = f.eta + now - c[0]
                        f = r[0] = tuple.__new__(
                            _WoFig, (f.good, f.scrap, f.rate, f.remaining, eta)
                        )
                        wo.fig = (now, c[1], f, True)
                        fields[9] = from_us(eta)
                    figs[w] = f
                    fields[12] = last
                else:
                    f = figs[w] = wo_fig(wo, now)
                    qty = wo.qty
                    started = wo.started_at  # its start rarely moves: converted once
                    fields = [
                        w,
                        order_no,
                        wo.product,
                        qty,
                        wo.machine or _last_machine(wo),
                        f.good,
                        f.scrap,
                        f.good / qty if qty else None,
                        f.rate,
                        _dt(f.eta),
                        r[1][10] if r is not None and r[3] == started else _dt(started),
                        _dt(wo.done_at),
                        last,
                    ]
                    ops = None
                    if wo.routing is not None:
                        d = wo.derived
                        if d is None:
                            d = wo._derive()
                        if d.route is not None:
                            ops = d.figs
                    r = wo.row = [f, fields, ops, started]
                # The row's fields are kept in a list, its tuple made from it at once (as
                # the other rows here: a NamedTuple's own __new__ is a Python call).
                out.append(tuple.__new__(WorkOrderProgressRow, fields))
                if r[2] is not None:
                    ops_row = (w, order_no, wo.product, wo.qty, r[2], last)
                    out.append(tuple.__new__(OperationSetRow, ops_row))
            out.append(self._order_row(figs, now))
            self._forget(now)
        out.extend(self.pending)
        self.pending = []
        self.dirty = False
        return out

    # -- figures -----------------------------------------------------------------------------

    def _tick(self, t: int) -> None:
        if self.now is None or t > self.now:
            self.now = t
        self.dirty = True

    def _totals(self) -> tuple[int, int]:
        good = scrap = 0
        for wo in self.wos.values():
            good += wo.good
            scrap += wo.scrap
        return good, scrap

    def _rate(self, wo: _WorkOrder, now: int, d: _Derived) -> float:
        """Good parts per hour over the last 30 minutes of event time (metrics.md);
        `d`: its derived figures."""
        since = now - RATE_WINDOW_US
        parts = 0
        first: int | None = None
        # With a routing, the rate of its last operation's machines: its output.
        only = d.last_op_runs if d.route is not None else None
        for m, run in wo.runs.items():
            if only is not None and m not in only:
                continue
            s = run.samples
            if not s or run.first_t is None:
                continue
            first = run.first_t if first is None else min(first, run.first_t)
            i = bisect_right(s, (since, 1 << 62)) - 1  # latest sample at or before `since`
            base = s[i][1] if i >= 0 else s[0][1]
            # A downward revision may leave the current total below the baseline.
            parts += max(run.good - base, 0)
        if first is None:
            return 0.0
        elapsed = min(RATE_WINDOW_US, now - first)
        return parts * HOUR_US / elapsed if elapsed > 0 else 0.0

    def _wo_fig(self, wo: _WorkOrder, now: int) -> _WoFig:
        c = wo.fig
        if c is not None and c[1] == wo.done_at:
            if c[0] == now:
                return c[2]
            if c[3] and now > c[0]:
                # Dormant: only its ETA moves, with "now" (see _dormant).
                f = c[2]
                if f.remaining:
                    assert f.eta is not None
                    f = _WoFig(f.good, f.scrap, f.rate, f.remaining, f.eta + now - c[0])
                    wo.fig = (now, c[1], f, True)
                return f
        fig = self._wo_fig_of(wo, now)
        wo.fig = (now, wo.done_at, fig, _dormant(wo, now))
        return fig

    def _wo_fig_of(self, wo: _WorkOrder, now: int) -> _WoFig:
        d = wo.derived
        if d is None:
            d = wo._derive()
        good = d.good
        rate = self._rate(wo, now, d)
        if wo.qty is None:
            return _WoFig(good, d.scrap, rate, None, None)
        remaining = max(wo.qty - good, 0)
        if remaining == 0:
            return _WoFig(good, d.scrap, rate, 0, wo.done_at)
        if rate > 0:  # as _eta; the ideal cycle only when there is no rate
            return _WoFig(good, d.scrap, rate, remaining, now + round(remaining * HOUR_US / rate))
        route = d.route
        cycle = self._route_cycle(route, wo.product) if route is not None else None
        machine = wo.machine or _last_machine(wo)
        return _WoFig(
            good,
            d.scrap,
            rate,
            remaining,
            self._eta(now, remaining, rate, machine, wo.product, cycle),
        )

    def _route_cycle(self, route: Route, product: str | None) -> float:
        """Seconds per part through a routing: its slowest step's ideal cycle (the
        bottleneck paces a line of operations), a step's own else its first machine's."""
        return max(
            s.ideal_cycle_seconds
            if s.ideal_cycle_seconds is not None
            else self.ideal(s.machines[0] if s.machines else None, product)
            for s in route
        )

    def _eta(
        self,
        base: int,
        remaining: int,
        rate: float,
        machine: str | None,
        product: str | None,
        cycle_s: float | None = None,
    ) -> int:
        if rate > 0:
            return base + round(remaining * HOUR_US / rate)
        if cycle_s is None:
            cycle_s = self.ideal(machine, product)
        return base + round(remaining * cycle_s * 1_000_000)

    def _order_eta(self, figs: dict[str, _WoFig], good: int, now: int) -> int | None:
        order = self.order
        if order is not None and good >= order.qty:
            return self.done_at
        etas = [f.eta for f in figs.values() if f.remaining and f.eta is not None]
        latest = max(etas, default=None)
        if order is None:
            return latest
        # What the work orders do not cover (no work order yet, or the CRM raised the
        # quantity) is assumed to be made after the last of them, at the order's current
        # rate, else at the ideal cycle time.
        covered = sum(f.remaining or 0 for f in figs.values())
        extra = order.qty - good - covered
        if extra <= 0:
            return latest
        rate = sum(f.rate for f in figs.values())
        return self._eta(latest if latest is not None else now, extra, rate, None, order.product)

    def _at_risk(self, eta: int | None, good: int) -> bool:
        o = self.order
        return (
            o is not None
            and o.status == "open"
            and good < o.qty
            and eta is not None
            and eta > o.due
        )

    def _order_row(self, figs: dict[str, _WoFig], now: int) -> OrderProgressRow:
        # The totals _evaluate keeps, unless not known since a restart.
        good, scrap = self._sum if self._active is not None else self._totals()
        eta = self._order_eta(figs, good, now)
        o = self.order
        return OrderProgressRow(
            self.order_no,
            o.customer if o else None,
            o.priority if o else None,
            o.product if o else None,
            o.qty if o else None,
            from_us(o.due) if o else None,
            o.status if o else None,
            o.version if o else None,
            good,
            scrap,
            good / o.qty if o else None,
            _dt(eta),
            self._at_risk(eta, good),
            from_us(now),
        )

    # -- callbacks ---------------------------------------------------------------------------

    def _emit(self, event_type: str, payload: dict[str, Any], dedupe: str) -> None:
        self.pending.append(Callback(self.order_no, event_type, payload, dedupe))

    def _evaluate(self, changed: str | None = None) -> None:
        """After every input: completion times, then the callbacks the change calls for.

        `changed`: the one work order the input changed (None: possibly any). An order
        keeps all its work orders, so the work is kept proportional to the change: after
        a full pass, every work order's completion time matches its good parts and its
        part of the totals is remembered, so only the changed one is looked at again; and
        a work order that is made (or has no quantity) and made no part in the rate window
        adds nothing to the order's ETA (no remaining parts, a rate of 0 until it changes:
        see _rate) and is left out of it until it changes."""
        now = self.now
        assert now is not None
        wos = self.wos
        active = self._active
        if active is None or changed is None:
            good = scrap = 0
            contrib: dict[str, tuple[int, int]] = {}
            for w, wo in wos.items():
                d = self._done(wo, now)
                good += d.good
                scrap += d.scrap
                contrib[w] = (d.good, d.scrap)
            self._contrib, self._sum = contrib, (good, scrap)
            active = self._active = set(wos)
        else:
            d = self._done(wos[changed], now)
            was_good, was_scrap = self._contrib.get(changed, (0, 0))
            good = self._sum[0] + d.good - was_good
            scrap = self._sum[1] + d.scrap - was_scrap
            self._contrib[changed] = (d.good, d.scrap)
            self._sum = (good, scrap)
            active.add(changed)
        o = self.order
        if o is None:
            return  # no callbacks before the CRM order is known; caught up once it is
        if good >= o.qty:
            if self.done_at is None:
                self.done_at = now
        else:
            self.done_at = None
        # The active work orders' figures, in the order's order (the rates' float sum).
        figs: dict[str, _WoFig] = {}
        for w, wo in wos.items():
            if w not in active:
                continue
            c = wo.fig  # _wo_fig's cache, looked up inline (most work orders hit it)
            f = figs[w] = (
                c[2]
                if c is not None and c[0] == now and c[1] == wo.done_at
                else self._wo_fig(wo, now)
            )
            if _settled(wo, f, now):
                active.discard(w)
        eta = self._order_eta(figs, good, now)
        if o.status in _PROGRESS_STATUSES:
            # Sorted only when there is something to announce (rarely: once per work order).
            fresh = [kv for kv in self.wos.items() if kv[1].started_at is not None]
            fresh = [kv for kv in fresh if not kv[1].announced]
            for w, wo in sorted(fresh, key=lambda kv: (kv[1].started_at or 0, kv[0])):
                if wo.started_at is not None and not wo.announced:
                    wo.announced = True
                    self._emit(
                        "work_started",
                        {
                            "work_order": w,
                            "machine": wo.started_machine,
                            "started_at": from_us(wo.started_at),
                        },
                        f"{self.order_no}:started:{w}",
                    )
            for pct in MILESTONES:
                # Integer test: exactly 25 % of 1000 is 250 parts, no float rounding.
                if pct > self.milestone and good * 100 >= pct * o.qty:
                    self.milestone = pct
                    self._emit(
                        "milestone",
                        {
                            "percent": pct,
                            "good": good,
                            "scrap": scrap,
                            "qty": o.qty,
                            "eta": _dt(eta),
                        },
                        f"{self.order_no}:m{pct}",
                    )
            if good >= o.qty and not self.completed_sent:
                self.completed_sent = True
                self._emit(
                    "completed",
                    {
                        "good": good,
                        "scrap": scrap,
                        "qty": o.qty,
                        "completed_at": _dt(self.done_at),
                    },
                    f"{self.order_no}:completed",
                )
        # Risk callbacks follow what the CRM was last told, and only for an open order that
        # is not finished: a hold or a completion is no "back on track".
        if o.status == "open" and good < o.qty and eta is not None:
            risk = eta > o.due
            if risk != (self.risk_n % 2 == 1):
                self.risk_n += 1
                self._emit(
                    "at_risk" if risk else "back_on_track",
                    {"eta": from_us(eta), "due": from_us(o.due), "good": good, "qty": o.qty},
                    f"{self.order_no}:risk:{self.risk_n}",
                )

    # -- housekeeping ------------------------------------------------------------------------

    def _done(self, wo: _WorkOrder, now: int) -> _Derived:
        """Its completion time set from its good parts; its derived figures."""
        d = wo.derived
        if d is None:
            d = wo._derive()
        if wo.qty is not None and d.good >= wo.qty:
            if wo.done_at is None:
                wo.done_at = now
        else:
            wo.done_at = None  # revised below its quantity: not finished after all
        return d

    def _forget(self, now: int) -> None:
        """Drop rate samples older than the one at the start of the window (looking only
        at the work orders with a run of several: most have one left)."""
        since = now - RATE_WINDOW_US
        wos = self.wos
        several: set[str] = set()
        for w in wos if self._trim is None else self._trim:
            for run in wos[w].runs.values():
                s = run.samples
                if len(s) > 1:
                    i = bisect_right(s, (since, 1 << 62)) - 1
                    if i > 0:
                        del s[:i]
                    if len(s) > 1:
                        several.add(w)
        self._trim = several


_CACHES: Final = ("_active", "_contrib", "_sum", "_trim")


def _settled(wo: _WorkOrder, fig: _WoFig, now: int) -> bool:
    """Whether its figures at `now` hold at any later "now" until it changes: nothing
    remains to make (or no quantity: no ETA), and no part in the rate window (its rate is
    0 from now on: each run's latest sample, at or before the window, is its total)."""
    since = now - RATE_WINDOW_US
    return not fig.remaining and all(
        not r.samples or r.samples[-1][0] <= since for r in wo.runs.values()
    )


def _dormant(wo: _WorkOrder, now: int) -> bool:
    """Whether its rate at `now` holds at any later "now" until it changes: no sample in
    the rate window (each run's baseline is then its latest sample, and as a run's first
    time is never after its samples, the elapsed time is the whole window). Its figures
    then move with "now" only by their ETA, now + a constant (made or without a quantity:
    not at all)."""
    since = now - RATE_WINDOW_US
    for r in wo.runs.values():
        s = r.samples
        if s and s[-1][0] > since:
            return False
    return True


def _last_machine(wo: _WorkOrder) -> str | None:
    best: tuple[int, str] | None = None
    for m, run in wo.runs.items():
        if run.samples and (best is None or run.samples[-1][0] > best[0]):
            best = (run.samples[-1][0], m)
    return best[1] if best else wo.started_machine


def _dt(t: int | None) -> datetime | None:
    return None if t is None else from_us(t)
