"""First step of the dataflow: ingest_log rows -> valid events, or rejections.

Everything that can refuse an event on its own, without a machine's history, is decided
here, so that a refused event never reaches the per-machine step and cannot move any
machine's clock: the contract, the plant model (machine, reason codes) and the clock
policy (docs/events.md#clock-policy).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from mesflow.events import (
    ContractError,
    DowntimeReasonReport,
    Event,
    OrderEvent,
    StateEvent,
    WorkOrderEvent,
    parse_event,
)
from mesflow.ingest_log import LogEntry, safe_text
from mesflow.plant import PlantConfig
from streams.records import Progress, Rejection


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
        self._latest = self._earliest = datetime.min

    def check(self, ev: Event, received: datetime) -> tuple[str, str] | None:
        """None if the event's times are plausible, else (reason, detail)."""
        if received != self._received:  # a batch's rows mostly share one receipt time
            self._received = received
            self._latest = received + self.max_skew
            self._earliest = received - self.max_age
        machine_event = not isinstance(ev, OrderEvent | WorkOrderEvent)
        times = (("ts", ev.ts), ("at", ev.at)) if isinstance(ev, DowntimeReasonReport) else None
        for field, t in times or (("ts", ev.ts),):
            if t > self._latest:
                return "future", (
                    f"field '{field}' {t.isoformat()} is more than "
                    f"{self.max_skew.total_seconds():g} s after the event arrived "
                    f"({received.isoformat()}); check the sender's clock"
                )
            if machine_event and t < self._earliest:
                return "too_old", (
                    f"field '{field}' {t.isoformat()} is more than "
                    f"{self.max_age.total_seconds() / 86400:g} days before the event arrived "
                    f"({received.isoformat()}); see max_event_age_days"
                )
        return None


class Validator:
    """Parses log rows against the contract, the plant model and the clock policy.

    Output items are `(machine, (seq, event))` pairs for the per-machine step, OrderInput
    for the per-order step, or Rejection / Progress records for the sink. Work-order
    events go to their order and to the machine they name (or to every machine).
    """

    def __init__(self, plant: PlantConfig) -> None:
        self.machines = frozenset(plant.machines)
        self._all = sorted(self.machines)
        # An empty reason tree accepts any code (as the machine step does).
        self.reasons = frozenset(plant.reasons_by_code)
        info = plant.plant
        self.clock = ClockPolicy(
            timedelta(seconds=info.max_clock_skew_seconds),
            timedelta(days=info.max_event_age_days),
        )

    def __call__(self, batch: list[LogEntry]) -> Iterable[Any]:
        out: list[Any] = []
        dead = 0
        for entry in batch:
            verdict = self._check(entry)
            if isinstance(verdict, Rejection):
                out.append(verdict)
                dead += 1
                continue
            ev = verdict
            if isinstance(ev, OrderEvent):
                out.append(OrderInput(ev.order_no, ev))
            elif isinstance(ev, WorkOrderEvent):
                out.append(OrderInput(ev.order_no, ev))
                # Its product sets the ideal cycle time of parts made for it: every machine
                # that may run it needs it.
                if ev.machine in self.machines:
                    out.append((ev.machine, (entry.seq, ev)))
                else:  # each copy names its machine: the per-machine step keys on it
                    out.extend(
                        (m, (entry.seq, ev.model_copy(update={"machine": m}))) for m in self._all
                    )
            else:
                out.append((ev.machine, (entry.seq, ev)))
        if batch:
            out.append(Progress(batch[-1].seq, len(batch), dead))
        return out

    def _check(self, entry: LogEntry) -> Event | Rejection:
        if entry.error is not None:
            return Rejection(entry.seq, *_split(entry.error))
        try:
            ev = parse_event(entry.payload)
        except ContractError as err:
            return Rejection(entry.seq, err.reason, err.detail)
        if entry.received_at is not None:
            late = self.clock.check(ev, entry.received_at)
            if late is not None:
                return Rejection(entry.seq, *late)
        if isinstance(ev, OrderEvent | WorkOrderEvent):
            return ev
        if ev.machine not in self.machines:
            return Rejection(
                entry.seq,
                "unknown_machine",
                f"machine {safe_text(ev.machine)!r} is not in the plant configuration",
            )
        if (
            isinstance(ev, StateEvent | DowntimeReasonReport)
            and ev.reason is not None
            and self.reasons
            and ev.reason not in self.reasons
        ):
            return Rejection(
                entry.seq,
                "unknown_reason",
                f"reason code {safe_text(ev.reason)!r} is not in the reason tree",
            )
        return ev


def _split(error: str) -> tuple[str, str]:
    """Collector errors are stored as "reason: detail"."""
    reason, _, detail = error.partition(": ")
    return (reason, safe_text(detail)) if detail else ("collector", safe_text(error))
