"""The operator tablet's taps as canonical report events, stored in the ingest log.

A tap becomes exactly what an MQTT report would be (docs/events.md: `downtime_reason`,
`scrap`, `wo_start`, `wo_end`) and goes through `record_for` + `append`, so the live dataflow
treats it like any other source: the andon shows it within its usual refresh.

Double taps: the page carries a `Ticket` (a random key, renewed for each scrap entry). The
event id comes from the ticket, the tap's minute (`tap_time`, also the event's `ts`) and what
was tapped, so two taps on the same button build byte-identical events, and the log stores
the second as a duplicate of the first.

Operations: a work order with a routing (its own, from the CRM/ERP, else its product's in the
plant file: streams/routing.py) is started and ended at a station under the routing step that
lists the station (else a step open to any machine), so the dataflow follows the routing
(docs/routings.md). The operation is looked up here, never taken from the tap.

Hostile input: everything here is checked against the plant model (machine, reason codes) and
bounds (quantity, work order text) before an event is built; a refusal is a `Refused` with a
short code, never an event the dataflow would dead-letter.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from pydantic import TypeAdapter, ValidationError

from mesflow.events import MAX_ID_LENGTH, RoutingStep, parse_event
from mesflow.ingest_log import Appended, append, record_for
from mesflow.plant import LocalizedName, PlantConfig, Reason
from streams import routing

MAX_SCRAP_QTY: Final = 999  # one tap never scraps more than a tray; larger is a typo
_KEY = re.compile(r"^[0-9a-f]{16,64}$")
_WO = re.compile(r"^[A-Za-z0-9._:/-]{1,100}$")  # what the CRM API accepts, conservatively


class Refused(ValueError):
    """A tap that cannot become an event; `code` is shown to the operator (i18n key)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class Ticket:
    """One scrap entry or one page view: the random root of its events' ids."""

    key: str

    @classmethod
    def new(cls) -> Ticket:
        return cls(secrets.token_hex(16))

    def to_data(self) -> str:
        return self.key

    @classmethod
    def from_data(cls, data: Any) -> Ticket:
        """A ticket from the browser's store (Refused if it is not one of ours in shape)."""
        if not isinstance(data, str) or not _KEY.fullmatch(data):
            raise Refused("stale_form")
        return cls(data)


def tap_time(now: datetime | None = None) -> datetime:
    """The event time of a tap: now, to the minute (UTC).

    Both taps of a double tap fall in the same minute (but for one in ~200 across a minute
    boundary), so they build the same event: same id, same `ts`, same content. The minute
    stays well inside the allowed lateness, so the dataflow applies it as a live event.
    """
    return (now or datetime.now(UTC)).astimezone(UTC).replace(second=0, microsecond=0)


# -- the reason tree -----------------------------------------------------------------------------


def _leaves(reasons: list[Reason], parent: str | None = None) -> list[tuple[Reason, str | None]]:
    out: list[tuple[Reason, str | None]] = []
    for r in reasons:
        if r.children:
            out.extend(_leaves(r.children, r.code))
        else:
            out.append((r, parent))
    return out


def stop_reasons(plant: PlantConfig) -> list[Reason]:
    """Reasons an operator may give a stop: the tree's leaves, except top-level quality
    codes (those name defects, i.e. scrap reasons). Groups are headings, not answers."""
    return [r for r, parent in _leaves(plant.reasons) if parent or r.category != "quality"]


def scrap_reasons(plant: PlantConfig) -> list[Reason]:
    """Reasons for scrap: the leaves of category quality."""
    return [r for r, _parent in _leaves(plant.reasons) if r.category == "quality"]


def most_used_first(reasons: list[Reason], counts: dict[str, int]) -> list[Reason]:
    """Most used first; ties keep the tree's order (stable sort)."""
    return sorted(reasons, key=lambda r: -counts.get(r.code, 0))


# -- building events -----------------------------------------------------------------------------


def _event_id(ticket: Ticket, ts: datetime, *parts: str) -> str:
    # Hashed: the parts may be long (a work order), the id is bounded (MAX_ID_LENGTH).
    digest = hashlib.blake2b(
        "\x1f".join((ts.isoformat(), *parts)).encode(), digest_size=8
    ).hexdigest()
    event_id = f"tablet-{ticket.key}-{digest}"
    assert len(event_id) <= MAX_ID_LENGTH
    return event_id


def _check_machine(plant: PlantConfig, machine: Any) -> str:
    if not isinstance(machine, str) or machine not in plant.machines:
        raise Refused("unknown_machine")
    return machine


def _operator(operator: str) -> str:
    return operator[:MAX_ID_LENGTH] or "operator"


def downtime_reason(
    plant: PlantConfig,
    ticket: Ticket,
    machine: Any,
    stop_start: Any,
    reason: Any,
    operator: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The report that gives the stop starting at `stop_start` the reason `reason`.

    `at` is the stop's start: inside the stop by definition (a stop is [start, end)).
    """
    machine = _check_machine(plant, machine)
    ts = tap_time(now)
    if not isinstance(reason, str) or reason not in {r.code for r in stop_reasons(plant)}:
        raise Refused("unknown_reason")
    if not isinstance(stop_start, str):
        raise Refused("unknown_stop")
    try:
        at = datetime.fromisoformat(stop_start)
    except ValueError:
        raise Refused("unknown_stop") from None
    if at.tzinfo is None or at > ts + timedelta(minutes=1):
        raise Refused("unknown_stop")
    return {
        "type": "report",
        "kind": "downtime_reason",
        "id": _event_id(ticket, ts, "downtime_reason", machine, at.isoformat(), reason),
        "machine": machine,
        "ts": ts.isoformat(),
        "at": at.isoformat(),
        "reason": reason,
        "operator": _operator(operator),
    }


def scrap(
    plant: PlantConfig,
    ticket: Ticket,
    machine: Any,
    qty: Any,
    reason: Any,
    operator: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    machine = _check_machine(plant, machine)
    ts = tap_time(now)
    # bool is an int in Python; a JSON `true` must not scrap one part.
    if not isinstance(qty, int) or isinstance(qty, bool) or not 1 <= qty <= MAX_SCRAP_QTY:
        raise Refused("bad_qty")
    if not isinstance(reason, str) or reason not in {r.code for r in scrap_reasons(plant)}:
        raise Refused("unknown_reason")
    return {
        "type": "report",
        "kind": "scrap",
        "id": _event_id(ticket, ts, "scrap", machine),
        "machine": machine,
        "ts": ts.isoformat(),
        "qty": qty,
        "reason": reason,
        "operator": _operator(operator),
    }


@dataclass(frozen=True, slots=True)
class Operation:
    """The routing step a work order runs at a station, with its name to show."""

    op: str
    name: LocalizedName | str | None  # plant file: zh/en; the CRM's routing: one text

    def label(self, lang: str) -> str:
        """'10 注塑' / '10 Molding' (just '10' without a name)."""
        name = self.name.get(lang) if isinstance(self.name, LocalizedName) else self.name
        return f"{self.op} {name}" if name else self.op


_STEPS: Final = TypeAdapter(list[RoutingStep])


def _own_steps(stored: Any) -> list[RoutingStep] | None:
    """work_order.routing (jsonb, validated at intake) as steps; None if absent or unreadable
    (then the plant file's routing applies, as in the dataflow for an empty one)."""
    if not stored:
        return None
    try:
        return _STEPS.validate_python(stored)
    except ValidationError:
        return None


def operation_at(
    plant: PlantConfig, machine: str, product: str | None, own_routing: Any
) -> Operation | None:
    """The operation a work order runs at `machine`: in its own routing (`own_routing`, the
    stored work_order.routing) else its product's plant-file routing, the first step listing
    the machine, else a step open to any machine (`machines: []`); None without a routing or
    without such a step (the wo_start then names none, as before routings)."""
    own = _own_steps(own_routing)
    route = routing.route_of(own, product, routing.plant_routes(plant))
    if not route:
        return None
    step = next((s for s in route if machine in s.machines), None) or next(
        (s for s in route if not s.machines), None
    )
    if step is None:
        return None
    if own:  # route_of chose the work order's own routing: its names are plain text
        return Operation(step.op, step.name)
    plant_route = plant.routings_by_product[product] if product else None
    names = {o.op: o.name for o in plant_route.operations} if plant_route else {}
    return Operation(step.op, names.get(step.op))


def read_operations(
    conn: psycopg.Connection[Any],
    plant: PlantConfig,
    machine: str,
    wos: list[tuple[str, str | None]],
) -> dict[str, Operation]:
    """Work order -> its operation at `machine`, for `wos` (work order, product from the
    progress view). The intake table's routing and product win: they are the CRM's."""
    if not wos:
        return {}
    intake = {
        str(w): (p, r)
        for w, p, r in conn.execute(
            "SELECT work_order, product, routing FROM work_order WHERE work_order = ANY(%s)",
            ([w for w, _ in wos],),
        )
    }
    out: dict[str, Operation] = {}
    for wo, product in wos:
        own_product, own_routing = intake.get(wo, (None, None))
        op = operation_at(plant, machine, own_product or product, own_routing)
        if op is not None:
            out[wo] = op
    return out


def work_order(
    plant: PlantConfig,
    ticket: Ticket,
    machine: Any,
    kind: Any,
    wo: Any,
    operator: str,
    now: datetime | None = None,
    operation: Operation | None = None,
) -> dict[str, Any]:
    """`wo_start` or `wo_end` of work order `wo` on `machine`, under `operation` (looked up
    with `read_operations`, never from the tap) if it has one."""
    machine = _check_machine(plant, machine)
    ts = tap_time(now)
    if kind not in ("wo_start", "wo_end"):
        raise Refused("bad_action")
    if not isinstance(wo, str) or not _WO.fullmatch(wo):
        raise Refused("unknown_work_order")
    # The operation joins the id only when there is one: ids of unrouted taps stay as before.
    parts = (kind, machine, wo) if operation is None else (kind, machine, wo, operation.op)
    event: dict[str, Any] = {
        "type": "report",
        "kind": kind,
        "id": _event_id(ticket, ts, *parts),
        "machine": machine,
        "ts": ts.isoformat(),
        "work_order": wo,
        "operator": _operator(operator),
    }
    if operation is not None:
        event["operation"] = operation.op
    return event


# -- storing -------------------------------------------------------------------------------------


def source_for(user: str) -> str:
    return f"tablet:{user}"


def submit(conn: psycopg.Connection, user: str, event: dict[str, Any]) -> Appended:
    """Store `event` in the ingest log as source `tablet:<user>` (a duplicate stores nothing).

    The event is validated against the contract first: an event the dataflow would
    dead-letter is a bug here, better refused loudly than stored.
    """
    parse_event(record_for(source_for(user), event).payload)
    return append(conn, [record_for(source_for(user), event)])
