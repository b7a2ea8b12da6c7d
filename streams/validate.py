"""First step of the dataflow: ingest_log rows -> valid events, or rejections.

Everything that can refuse an event on its own, without a machine's history, is decided
here, so that a refused event never reaches the per-machine step and cannot move any
machine's clock: the contract, the plant model (machine, reason codes) and the clock
policy (docs/events.md#clock-policy).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple

from mesflow.events import (
    AlertAck,
    ContractError,
    CounterEvent,
    CountEvent,
    DefectReport,
    DowntimeReasonReport,
    Event,
    InspectionReport,
    MaterialLotReport,
    OrderEvent,
    ProcessValueEvent,
    ProductionLotReport,
    ReworkReport,
    ScrapReport,
    SignInReport,
    SignOutReport,
    StateEvent,
    WorkOrderEndReport,
    WorkOrderEvent,
    WorkOrderStartReport,
    _fast_event,
    parse_event,
    parse_event_reference,
)
from mesflow.ingest_log import LogEntry, safe_text
from mesflow.plant import BUILTIN_REASONS, PlantConfig
from streams.alert_engine import AckInput
from streams.hour_clock import to_us
from streams.lots import activity, lot_row
from streams.process_values import from_event
from streams.records import FloorInput, Progress, Rejection


class OrderInput(NamedTuple):
    """A CRM order snapshot or a work order, for the per-order step."""

    order_no: str
    event: OrderEvent | WorkOrderEvent


class ClockPolicy:
    """Event times must lie within [received - max age, received + max skew].

    `received` is the log row's `received_at`, not the time of processing, so a
    recovery or a replay of the log decides exactly as the first run did. Orders and
    work orders are only checked against the future: a CRM may load an old open order
    with its original change time.
    """

    def __init__(self, max_skew: timedelta, max_age: timedelta) -> None:
        self.max_skew = max_skew
        self.max_age = max_age
        self._received: datetime | None = None
        # As POSIX seconds: comparing aware datetimes of different offsets costs twice as much.
        self._latest = self._earliest = 0.0

    def check(self, ev: Event, received: datetime) -> tuple[str, str] | None:
        """None if the event's times are plausible, else (reason, detail)."""
        if received != self._received:  # a batch's rows mostly share one receipt time
            self.receipt(received)
        # type() lookups, not isinstance: pydantic models check instances in Python (~0.25 us).
        cls = type(ev)
        if cls in _ORDER_TYPES:
            return self._judge("ts", ev.ts, received, old_ok=True)
        if not self._earliest <= ev.ts.timestamp() <= self._latest:
            return self._judge("ts", ev.ts, received, old_ok=False)
        if cls is DowntimeReasonReport:
            at: datetime = ev.at  # type: ignore[union-attr]
            if not self._earliest <= at.timestamp() <= self._latest:
                return self._judge("at", at, received, old_ok=False)
        return None

    def receipt(self, received: datetime) -> None:
        """The bounds for events received at `received` (kept until the next receipt time)."""
        self._received = received
        self._latest = (received + self.max_skew).timestamp()
        self._earliest = (received - self.max_age).timestamp()

    def bounds(self, received: datetime, tz: Any) -> tuple[datetime, datetime]:
        """The bounds for `received` as datetimes in `tz` (a fixed offset): an event time
        of the same tzinfo object compares with them field by field, ~10x cheaper than its
        timestamp(). Exactly the float check: both are exact to the microsecond."""
        earliest, latest = received - self.max_age, received + self.max_skew
        if type(tz) is timezone:
            return earliest.astimezone(tz), latest.astimezone(tz)
        return earliest, latest  # compares correctly, only not faster

    def _judge(
        self, field: str, t: datetime, received: datetime, *, old_ok: bool
    ) -> tuple[str, str] | None:
        if t.timestamp() > self._latest:
            return "future", (
                f"field '{field}' {t.isoformat()} is more than "
                f"{self.max_skew.total_seconds():g} s after the event arrived "
                f"({received.isoformat()}); check the sender's clock"
            )
        if not old_ok and t.timestamp() < self._earliest:
            return "too_old", (
                f"field '{field}' {t.isoformat()} is more than "
                f"{self.max_age.total_seconds() / 86400:g} days before the event arrived "
                f"({received.isoformat()}); see max_event_age_days"
            )
        return None


_ORDER_TYPES = frozenset({OrderEvent, WorkOrderEvent})
_REASON_TYPES = frozenset({StateEvent, DowntimeReasonReport})
_LOT_TYPES = frozenset({MaterialLotReport, ProductionLotReport})
_REPORT_TYPES = frozenset(
    {DowntimeReasonReport, ScrapReport, WorkOrderStartReport, WorkOrderEndReport}
)
# People and quality reports (issue 13): no machine figure of their own; the steps of
# streams/labor.py, inspections.py and quality.py take them as FloorInput.
_FLOOR_TYPES = frozenset(
    {SignInReport, SignOutReport, InspectionReport, DefectReport, ReworkReport}
)
_WO_REPORTS = frozenset({WorkOrderStartReport, WorkOrderEndReport})
# Events for the per-machine step only (no order, floor, lot or activity output).
_MACHINE_ONLY = frozenset({StateEvent, CountEvent, CounterEvent})
_DEFECT_CODED = frozenset({InspectionReport, DefectReport, ReworkReport})


def as_scrap(ev: DefectReport | ReworkReport) -> ScrapReport | None:
    """The scrap report a defect or rework report amounts to for the machine's counts
    (parts scrapped move from good to scrap, docs/quality.md); None if none."""
    scrapped = ev.disposition == "scrap" if type(ev) is DefectReport else ev.outcome == "scrap"  # type: ignore[union-attr]
    if not scrapped:
        return None
    return ScrapReport(
        ts=ev.ts,
        id=ev.id,
        machine=ev.machine,
        type="report",
        kind="scrap",
        operator=ev.operator,
        qty=ev.qty,
        reason=ev.code,
        # The parts were made for this work order, which may have ended long before `ts`.
        work_order=ev.work_order,
    )


class Validator:
    """Parses log rows against the contract, the plant model and the clock policy.

    Output items are `(machine, (seq, event))` pairs for the per-machine step, OrderInput
    for the per-order step, AckInput for the alert step, or ProcessValues / Rejection / Progress records for the sink
    (process values change no machine figure: they skip the trackers; so do lot reports,
    as LotRow, and reports naming an operator also give an OperatorActivity). Work-order
    events go to their order and to the machine they name (or to every machine).
    """

    def __init__(self, plant: PlantConfig) -> None:
        self.machines = frozenset(plant.machines)
        self._all = sorted(self.machines)
        # An empty reason tree accepts any code (as the machine step does); a tree also
        # accepts the built-in codes (`connection_lost` from the collectors).
        self.reasons = (
            frozenset(plant.reasons_by_code) | frozenset(BUILTIN_REASONS)
            if plant.reasons_by_code
            else frozenset()
        )
        # An empty defect tree accepts any code, like the reason tree.
        self.defects = frozenset(plant.defects_by_code)
        info = plant.plant
        self.clock = ClockPolicy(
            timedelta(seconds=info.max_clock_skew_seconds),
            timedelta(days=info.max_event_age_days),
        )

    def __call__(self, batch: list[LogEntry]) -> Iterable[Any]:
        out: list[Any] = []
        dead = 0
        # (a benchmark that swaps `parse_event` for the reference path also skips this one)
        fast = _fast_event if parse_event is _PARSE_EVENT else _not_fast
        clock = self.clock
        machines = self.machines
        reasons = self.reasons
        for entry in batch:
            # The hot path, inline (most of a replay): a plain state, count or counter
            # event that passes every check of _check goes straight to its machine. Any
            # other outcome takes _check (with the event parsed once), which decides.
            ev: Any = fast(entry.payload) if entry.error is None else None
            cls = type(ev)
            if cls in _MACHINE_ONLY:
                received = entry.received_at
                if received is not None:
                    if received != clock._received:
                        clock.receipt(received)
                    # ClockPolicy.check of a machine event without `at`, inline.
                    in_time = clock._earliest <= ev.ts.timestamp() <= clock._latest
                else:
                    in_time = True
                if (
                    in_time
                    and ev.machine in machines
                    and (
                        cls is not StateEvent
                        or not reasons
                        or ev.reason is None
                        or ev.reason in reasons
                    )
                ):
                    out.append((ev.machine, (entry.seq, ev)))
                    continue
            dead += self._route(entry, ev, out, fast is _fast_event)
        if batch:
            out.append(Progress(batch[-1].seq, len(batch), dead))
        return out

    def grouped(self, batch: list[LogEntry]) -> tuple[list[Any], datetime | None]:
        """`self(batch)` as the dataflow's machine step takes it, made in one pass: one
        (machine, [(seq, event), ...]) per machine (its events in log order), then one
        list of everything else in order (ends with the batch's Progress); and the
        highest time of the machine events (None: none), for the replay's clock."""
        groups: dict[str, list[tuple[int, Any]]] = {}
        others: list[Any] = []
        dead = 0
        # Compared as datetimes: a batch's event times share one tzinfo object (msgspec
        # keeps one per offset), and datetimes of one tzinfo compare field by field.
        hi = _NO_TIME
        fast = _fast_event if parse_event is _PARSE_EVENT else _not_fast
        clock = self.clock
        machines = self.machines
        reasons = self.reasons
        # The bounds of receipt time `at`, in tzinfo `zone`.
        at: datetime | None = None
        zone: Any = _NO_ZONE
        earliest = latest = _NO_TIME
        for entry in batch:
            # __call__'s hot path (see there), its event put in its machine's group. The
            # row unpacked at once: a LogEntry's fields by name cost a call each.
            seq, payload, error, received = entry
            ev: Any = fast(payload) if error is None else None
            cls = type(ev)
            if cls in _MACHINE_ONLY:
                ts = ev.ts
                if received is not None:
                    if received != at:
                        at, zone = received, _NO_ZONE
                    if ts.tzinfo is not zone:
                        zone = ts.tzinfo
                        earliest, latest = clock.bounds(received, zone)
                    in_time = earliest <= ts <= latest
                else:
                    in_time = True
                machine = ev.machine
                if (
                    in_time
                    and machine in machines
                    and (
                        cls is not StateEvent
                        or not reasons
                        or ev.reason is None
                        or ev.reason in reasons
                    )
                ):
                    g = groups.get(machine)
                    if g is None:
                        groups[machine] = [(seq, ev)]
                    else:
                        g.append((seq, ev))
                    if ts > hi:
                        hi = ts
                    continue
            routed: list[Any] = []
            dead += self._route(entry, ev, routed, fast is _fast_event)
            for x in routed:
                if type(x) is tuple:
                    key, item = x
                    g = groups.get(key)
                    if g is None:
                        groups[key] = [item]
                    else:
                        g.append(item)
                    ts = item[1].ts
                    if ts > hi:
                        hi = ts
                else:
                    others.append(x)
        if batch:
            others.append(Progress(batch[-1].seq, len(batch), dead))
        out: list[Any] = list(groups.items())
        if others:
            out.append(others)
        return out, None if hi is _NO_TIME else hi

    def _route(
        self, entry: LogEntry, parsed: Event | None, out: list[Any], tried: bool = False
    ) -> int:
        """What the row gives for the steps, appended to `out`, when the hot path did not
        take it; 1 if it was refused (a Rejection), else 0. `tried`: the fast parser has
        had the payload (see _check)."""
        verdict = self._check(entry, parsed, tried)
        if isinstance(verdict, Rejection):
            out.append(verdict)
            return 1
        ev: Any = verdict  # its class is known by type() below (see _ORDER_TYPES)
        cls = type(ev)
        if cls in _MACHINE_ONLY:  # most events: first, past the other branches' tests
            out.append((ev.machine, (entry.seq, ev)))
        elif cls is OrderEvent:
            out.append(OrderInput(ev.order_no, ev))
        elif cls is WorkOrderEvent:
            out.append(OrderInput(ev.order_no, ev))
            # Its product sets the ideal cycle time of parts made for it: every machine
            # that may run it needs it.
            if ev.machine in self.machines:
                out.append((ev.machine, (entry.seq, ev)))
            else:  # each copy names its machine: the per-machine step keys on it
                out.extend(
                    (m, (entry.seq, ev.model_copy(update={"machine": m}))) for m in self._all
                )
        elif cls is ProcessValueEvent:
            out.append(from_event(entry.seq, ev))
        elif cls is AlertAck:  # for the alert step (streams/alert_engine.py)
            out.append(AckInput(ev.alert_id, ev.by, ev.via, to_us(ev.ts)))
        elif cls in _LOT_TYPES:  # traceability (streams/lots.py): no machine figure
            out.append(lot_row(entry.seq, ev))
            if ev.operator:
                out.append(activity(entry.seq, ev))
        elif cls in _FLOOR_TYPES:
            out.append(FloorInput(entry.seq, ev))
            if cls is DefectReport or cls is ReworkReport:
                scrap = as_scrap(ev)
                if scrap is not None:  # the machine's counts move good -> scrap
                    out.append((ev.machine, (entry.seq, scrap)))
            if ev.operator:
                out.append(activity(entry.seq, ev))
        else:
            out.append((ev.machine, (entry.seq, ev)))
            if cls in _WO_REPORTS:  # who works on which work order (streams/labor.py)
                out.append(FloorInput(entry.seq, ev))
            if cls in _REPORT_TYPES and ev.operator:  # who reported what (streams/lots.py)
                out.append(activity(entry.seq, ev))
        return 0

    def _check(
        self, entry: LogEntry, parsed: Event | None = None, tried: bool = False
    ) -> Event | Rejection:
        """`parsed`: the event the fast path made of the payload, if it did; `tried`: the
        fast path had it and gave None (then pydantic decides, as parse_event would after
        asking the fast path again)."""
        if entry.error is not None:
            return Rejection(entry.seq, *_split(entry.error))
        if parsed is not None:
            ev = parsed
        else:
            try:
                ev = (parse_event_reference if tried else parse_event)(entry.payload)
            except ContractError as err:
                return Rejection(entry.seq, err.reason, err.detail)
        if entry.received_at is not None:
            late = self.clock.check(ev, entry.received_at)
            if late is not None:
                return Rejection(entry.seq, *late)
        cls = type(ev)
        if cls in _ORDER_TYPES or cls is AlertAck:
            return ev
        known: Any = ev  # a machine event (not an order type): it has `machine`
        machine: str = known.machine
        if machine not in self.machines:
            return Rejection(
                entry.seq,
                "unknown_machine",
                f"machine {safe_text(machine)!r} is not in the plant configuration",
            )
        if cls in _REASON_TYPES and self.reasons:
            reason: str | None = known.reason
            if reason is not None and reason not in self.reasons:
                return Rejection(
                    entry.seq,
                    "unknown_reason",
                    f"reason code {safe_text(reason)!r} is not in the reason tree",
                )
        if cls in _DEFECT_CODED and self.defects:
            unknown = next((c for c in _defect_codes(known) if c not in self.defects), None)
            if unknown is not None:
                return Rejection(
                    entry.seq,
                    "unknown_defect",
                    f"defect code {safe_text(unknown)!r} is not in the defect tree",
                )
        return ev


_PARSE_EVENT = parse_event
# Below every event time (aware datetimes compare without overflow down to year 1), and a
# tzinfo no event has.
_NO_TIME = datetime(1, 1, 2, tzinfo=UTC)
_NO_ZONE = object()


def _not_fast(payload: bytes | str) -> None:
    return None


def _defect_codes(ev: Any) -> list[str]:
    if type(ev) is InspectionReport:
        return [d.code for d in ev.defects]
    return [ev.code] if ev.code is not None else []


def _split(error: str) -> tuple[str, str]:
    """Collector errors are stored as "reason: detail"."""
    reason, _, detail = error.partition(": ")
    return (reason, safe_text(detail)) if detail else ("collector", safe_text(error))
