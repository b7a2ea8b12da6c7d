"""The operator tablet's taps as canonical report events, stored in the ingest log.

A tap becomes exactly what an MQTT report would be (docs/events.md: `downtime_reason`,
`scrap`, `wo_start`, `wo_end`) and goes through `record_for` + `append`, so the live dataflow
treats it like any other source: the andon shows it within its usual refresh.

Double taps: the page carries a `Ticket` (a random key, renewed for each scrap entry). The
event id comes from the ticket, the tap's minute (`tap_time`, also the event's `ts`) and what
was tapped, so two taps on the same button build byte-identical events, and the log stores
the second as a duplicate of the first.

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

from mesflow.events import MAX_ID_LENGTH, parse_event
from mesflow.ingest_log import Appended, append, record_for
from mesflow.plant import PlantConfig, Reason

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


def work_order(
    plant: PlantConfig,
    ticket: Ticket,
    machine: Any,
    kind: Any,
    wo: Any,
    operator: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """`wo_start` or `wo_end` of work order `wo` on `machine`."""
    machine = _check_machine(plant, machine)
    ts = tap_time(now)
    if kind not in ("wo_start", "wo_end"):
        raise Refused("bad_action")
    if not isinstance(wo, str) or not _WO.fullmatch(wo):
        raise Refused("unknown_work_order")
    return {
        "type": "report",
        "kind": kind,
        "id": _event_id(ticket, ts, kind, machine, wo),
        "machine": machine,
        "ts": ts.isoformat(),
        "work_order": wo,
        "operator": _operator(operator),
    }


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
