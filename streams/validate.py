"""First step of the dataflow: ingest_log rows -> valid events, or rejections."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from mesflow.events import ContractError, OrderEvent, WorkOrderEvent, parse_event
from mesflow.ingest_log import LogEntry
from mesflow.plant import PlantConfig
from streams.records import Progress, Rejection


class OrderInput(NamedTuple):
    """A CRM order snapshot or a work order, for the per-order step."""

    order_no: str
    event: OrderEvent | WorkOrderEvent


class Validator:
    """Parses log rows against the contract and the plant model.

    Output items are `(machine, (seq, event))` pairs for the per-machine step, OrderInput
    for the per-order step, or Rejection / Progress records for the sink. Work-order
    events go to their order and to the machine they name (or to every machine).
    """

    def __init__(self, plant: PlantConfig) -> None:
        self.machines = frozenset(plant.machines)
        self._all = sorted(self.machines)

    def __call__(self, batch: list[LogEntry]) -> Iterable[Any]:
        out: list[Any] = []
        dead = 0
        for entry in batch:
            if entry.error is not None:
                out.append(Rejection(entry.seq, *_split(entry.error)))
                dead += 1
                continue
            try:
                ev = parse_event(entry.payload)
            except ContractError as err:
                out.append(Rejection(entry.seq, err.reason, err.detail))
                dead += 1
                continue
            if isinstance(ev, OrderEvent):
                out.append(OrderInput(ev.order_no, ev))
                continue
            if isinstance(ev, WorkOrderEvent):
                out.append(OrderInput(ev.order_no, ev))
                # Its product sets the ideal cycle time of parts made for it: every machine
                # that may run it needs it.
                if ev.machine in self.machines:
                    out.append((ev.machine, (entry.seq, ev)))
                else:  # each copy names its machine: the per-machine step keys on it
                    out.extend(
                        (m, (entry.seq, ev.model_copy(update={"machine": m}))) for m in self._all
                    )
                continue
            if ev.machine not in self.machines:
                out.append(
                    Rejection(
                        entry.seq,
                        "unknown_machine",
                        f"machine {ev.machine!r} is not in the plant configuration",
                    )
                )
                dead += 1
                continue
            out.append((ev.machine, (entry.seq, ev)))
        if batch:
            out.append(Progress(batch[-1].seq, len(batch), dead))
        return out


def _split(error: str) -> tuple[str, str]:
    """Collector errors are stored as "reason: detail"."""
    reason, _, detail = error.partition(": ")
    return (reason, detail) if detail else ("collector", error)
