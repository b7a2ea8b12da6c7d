"""Change control of CRM orders (issue 12, items 1 and 2; docs/crm.md "Change control").

An order is *locked* once one of its work orders has started (sql/022: `order_locked`,
decided in SQL inside the caller's transaction, under the intake's advisory lock). A change
of a locked order that touches qty, due or product, or cancels it, is not applied: it is
held as a `change_request` until a planner (a dashboard user with role manager) approves or
rejects it. Changes of priority or customer alone apply at once even when locked: they move
an order in the queue but change nothing a machine makes.

An applied change (at once, or approved) writes exactly what an accepted CRM snapshot
writes (crm_order, order_history, the canonical `order` event in the ingest log), and, if
the order has work orders on machines, a floor notice per machine plus one `order_change`
alert delivery per line supervisor route (notify/alert_outbox.py). A decision also enqueues
the `order.change_decision` callback to the CRM (notify/outbox.py). All in the caller's
transaction: either everything is stored or nothing is.

Pure parts (what a change touches, its summary, the ETA projection) are functions without
I/O; the SQL parts take a connection and never commit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Final, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from mesflow.events import OrderEvent
from mesflow.ingest_log import append, record_for
from mesflow.plant import PlantConfig
from mesflow.terms import ORDER_STATUSES
from notify import outbox

log = logging.getLogger(__name__)

ORDER_FIELDS: Final = ("customer", "priority", "product", "qty", "due", "status")
# Fields whose change alters what the floor makes or when: held while the order is locked.
HELD_FIELDS: Final = ("qty", "due", "product")
PLANNER_ROLE: Final = "manager"  # the "planner": managers plan (docs/crm.md)
MAX_COMMENT: Final = 500
Source = Literal["crm", "person"]


# --- pure ------------------------------------------------------------------------------


def _jsonable(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{"field": {"old": x, "new": y}} for each order field that differs."""
    return {
        f: {"old": _jsonable(old[f]), "new": _jsonable(new[f])}
        for f in ORDER_FIELDS
        if f in new and old.get(f) != new[f]
    }


def needs_approval(change: Mapping[str, Mapping[str, Any]]) -> bool:
    """Does this change touch what a locked order may not change without approval?"""
    if any(f in change for f in HELD_FIELDS):
        return True
    status = change.get("status")
    return status is not None and status.get("new") == "cancelled"


def reaches_floor(change: Mapping[str, Mapping[str, Any]]) -> bool:
    """A change the machines' people must hear of (the same fields as need approval)."""
    return needs_approval(change)


def summary(change: Mapping[str, Mapping[str, Any]], tz: tzinfo | None = None) -> str:
    """One line for a notice or an alert: "qty 1000 → 1500; due 12-02 07:00 → 12-03 07:00".

    With `tz` (the plant's), times read in plant time, as everywhere on the floor; the CRM
    sends them in its own offset."""
    parts = []
    for name in ("qty", "due", "product", "status", "priority", "customer"):
        if name in change:
            old, new = change[name].get("old"), change[name].get("new")
            parts.append(f"{name} {_local(old, tz)} → {_local(new, tz)}")
    return "; ".join(parts)[:500] or "no field changed"


# The floor reads a notice in its board's language: `summary`'s field names and order
# states, as the Chinese boards name them (the stored line stays the English one).
_ZH_FIELDS: Final = {
    "qty": "数量",
    "due": "交期",
    "product": "产品",
    "status": "状态",
    "priority": "优先级",
    "customer": "客户",
}
_ZH_STATUS: Final = {code: names["zh"] for code, names in ORDER_STATUSES.items()}


def localized(text: str, lang: str) -> str:
    """`summary()`'s line in `lang` ("zh": "数量 1000 → 1500; 交期 …"); any other text,
    or English, as it is."""
    if lang != "zh":
        return text
    if text == "no field changed":
        return "无字段变更"
    parts = []
    for part in text.split("; "):
        name, sep, rest = part.partition(" ")
        if name in _ZH_FIELDS and sep:
            if name == "status":
                old, arrow, new = rest.partition(" → ")
                rest = f"{_ZH_STATUS.get(old, old)}{arrow}{_ZH_STATUS.get(new, new)}"
            part = f"{_ZH_FIELDS[name]} {rest}"
        parts.append(part)
    return "; ".join(parts)


def field_label(field: str, lang: str) -> str:
    """A change's field as the boards name it in `lang` (the code itself in English)."""
    return _ZH_FIELDS.get(field, field) if lang == "zh" else field


def value_label(field: str, value: str, lang: str) -> str:
    """A changed value as the boards show it in `lang`: an order state by its name."""
    return _ZH_STATUS.get(value, value) if lang == "zh" and field == "status" else value


SUPERSEDED_COMMENT: Final = "superseded by a newer version"
_ZH_COMMENTS: Final = {SUPERSEDED_COMMENT: "已被新版本取代"}


def comment_label(comment: str, lang: str) -> str:
    """A decision's comment in `lang`: the ones mesflow writes itself translated, a
    person's as they wrote it."""
    return _ZH_COMMENTS.get(comment, comment) if lang == "zh" else comment


def _local(value: Any, tz: tzinfo | None) -> Any:
    if tz is None or not isinstance(value, str | datetime):
        return value
    try:
        ts = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    except ValueError:
        return value
    if ts.tzinfo is None:
        return value
    return ts.astimezone(tz).strftime("%Y-%m-%d %H:%M")


@dataclass(frozen=True, slots=True)
class Projection:
    """What a pending change would mean: made so far, the current ETA, and an ETA for the
    new quantity at the order's current rate."""

    good: int
    qty_now: int
    qty_new: int
    rate_per_h: float  # good parts per hour, the sum over the order's work orders
    eta_now: datetime | None
    eta_new: datetime | None
    due_new: datetime | None
    late_s: float | None  # eta_new - due_new, seconds (negative: early)


def project(
    *,
    good: int,
    qty_now: int,
    qty_new: int,
    rate_per_h: float,
    eta_now: datetime | None,
    due_new: datetime | None,
    now: datetime,
) -> Projection:
    """A simple projection: the remaining parts of the new quantity at today's rate.

    remaining = max(qty_new - good, 0); ETA = now + remaining / rate. Without a rate (no
    parts in the last 30 minutes) there is no projection unless nothing remains. The rate
    is order_progress's (work_order_progress.rate_per_h summed over the order's work
    orders), so the projection is as good as the last half hour is representative.
    """
    remaining = max(qty_new - good, 0)
    eta_new: datetime | None
    if remaining == 0:
        eta_new = now
    elif rate_per_h > 0 and math.isfinite(rate_per_h):
        hours = min(remaining / rate_per_h, 24 * 365 * 10)  # ten years at most: stays a date
        eta_new = now + timedelta(hours=hours)
    else:
        eta_new = None
    late = (eta_new - due_new).total_seconds() if eta_new and due_new else None
    return Projection(good, qty_now, qty_new, rate_per_h, eta_now, eta_new, due_new, late)


def check_comment(comment: str | None, *, required: bool) -> str | None:
    """A decision's comment: required for approve/reject, bounded, no NUL."""
    text = (comment or "").strip()
    if "\x00" in text:
        raise ChangeError("comment_invalid")
    if required and not text:
        raise ChangeError("comment_required")
    return text[:MAX_COMMENT] or None


class ChangeError(ValueError):
    """A change or decision that cannot be made; `code` is shown to the user (i18n key)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


# --- outcomes --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Screen:
    """What the intake should do with a change of an existing order."""

    held: bool
    change_request: int | None  # the held request (held), else None
    superseded: int | None  # a pending request this change replaced
    duplicate: bool = False  # the same version is already pending (a CRM retry)


# --- SQL -------------------------------------------------------------------------------


def lock_order(conn: psycopg.Connection[Any], order_no: str) -> None:
    """The intake's advisory lock of one order (collectors/crm_api.py takes the same)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('crm_order'), hashtext(%s))", (order_no,))


def is_locked(conn: psycopg.Connection[Any], order_no: str) -> bool:
    row = conn.execute("SELECT order_locked(%s)", (order_no,)).fetchone()
    return bool(row and row[0])


def _snapshot_json(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _jsonable(v) for k, v in snapshot.items()}


def _supersede_pending(conn: psycopg.Connection[Any], order_no: str, by: str) -> int | None:
    row = conn.execute(
        """UPDATE change_request SET status = 'superseded', decided_by = %s, decided_at = now(),
                  comment = %s
           WHERE order_no = %s AND status = 'pending' RETURNING id""",
        (by, SUPERSEDED_COMMENT, order_no),
    ).fetchone()
    return int(row[0]) if row else None


def _insert_request(
    conn: psycopg.Connection[Any],
    *,
    order_no: str,
    from_version: int,
    to_version: int,
    requested_by: str,
    source: Source,
    change: Mapping[str, Any],
    snapshot: Mapping[str, Any],
    status: str,
    comment: str | None = None,
    received_at: datetime | None = None,
) -> int:
    decided = status != "pending"
    row = conn.execute(
        """INSERT INTO change_request (order_no, from_version, to_version, requested_by, source,
                                       received_at, change, snapshot, status, decided_by,
                                       decided_at, comment, applied_at)
           VALUES (%s, %s, %s, %s, %s, COALESCE(%s, now()), %s, %s, %s, %s,
                   CASE WHEN %s THEN now() END, %s, CASE WHEN %s = 'applied' THEN now() END)
           RETURNING id""",
        (
            order_no, from_version, to_version, requested_by, source, received_at,
            Jsonb(dict(change)), Jsonb(_snapshot_json(snapshot)), status,
            requested_by if decided else None, decided, comment, status,
        ),
    ).fetchone()  # fmt: skip
    assert row is not None
    return int(row[0])


def screen_intake(
    conn: psycopg.Connection[Any],
    *,
    order_no: str,
    from_version: int,
    to_version: int,
    change: Mapping[str, Mapping[str, Any]],
    snapshot: Mapping[str, Any],
    requested_by: str,
) -> Screen:
    """Called by the intake for a newer version of an existing order, under its advisory
    lock, before it applies anything: hold the change (locked order, held fields), or let
    it through. Either way a pending request of the order is superseded by this version."""
    pending = conn.execute(
        """SELECT id, to_version, snapshot FROM change_request
           WHERE order_no = %s AND status = 'pending' FOR UPDATE""",
        (order_no,),
    ).fetchone()
    if (
        pending is not None
        and int(pending[1]) == to_version
        and pending[2] == _snapshot_json(snapshot)
    ):
        return Screen(True, int(pending[0]), None, duplicate=True)
    superseded = _supersede_pending(conn, order_no, requested_by) if pending else None
    if needs_approval(change) and is_locked(conn, order_no):
        cr = _insert_request(
            conn, order_no=order_no, from_version=from_version, to_version=to_version,
            requested_by=requested_by, source="crm", change=change, snapshot=snapshot,
            status="pending",
        )  # fmt: skip
        if superseded is not None:
            conn.execute(
                "UPDATE change_request SET superseded_by = %s WHERE id = %s", (cr, superseded)
            )
        return Screen(True, cr, superseded)
    return Screen(False, None, superseded)


def stale_pending(conn: psycopg.Connection[Any], order_no: str, version: int) -> int | None:
    """The version of a pending request at or above `version`, if any: a CRM version not
    above a held one is as stale as one not above the stored one."""
    row = conn.execute(
        """SELECT to_version FROM change_request
           WHERE order_no = %s AND status = 'pending' AND to_version > %s""",
        (order_no, version),
    ).fetchone()
    return int(row[0]) if row else None


def after_apply(
    conn: psycopg.Connection[Any],
    plant: PlantConfig,
    alerts: Any | None,
    *,
    order_no: str,
    from_version: int,
    to_version: int,
    change: Mapping[str, Mapping[str, Any]],
    snapshot: Mapping[str, Any],
    requested_by: str,
    source: Source,
    superseded: int | None = None,
    received_at: datetime | None = None,
) -> int | None:
    """After a change was applied at once: record it (status applied) and tell the floor,
    if it is a change the floor must hear of. Returns the change request id, if recorded."""
    if not reaches_floor(change):
        return None
    cr = _insert_request(
        conn, order_no=order_no, from_version=from_version, to_version=to_version,
        requested_by=requested_by, source=source, change=change, snapshot=snapshot,
        status="applied", received_at=received_at,
    )  # fmt: skip
    if superseded is not None:
        conn.execute("UPDATE change_request SET superseded_by = %s WHERE id = %s", (cr, superseded))
    notify_floor(conn, plant, alerts, cr, order_no, change)
    return cr


def affected_machines(conn: psycopg.Connection[Any], order_no: str) -> list[str]:
    """Machines with a released (planned on a machine) or started, unfinished work order."""
    rows = conn.execute(
        """SELECT machine FROM work_order w
           WHERE w.order_no = %(o)s AND w.machine IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM work_order_progress p
                             WHERE p.work_order = w.work_order AND p.completed_at IS NOT NULL)
           UNION
           SELECT machine FROM work_order_progress
           WHERE order_no = %(o)s AND machine IS NOT NULL AND started_at IS NOT NULL
             AND completed_at IS NULL
           ORDER BY 1""",
        {"o": order_no},
    ).fetchall()
    return [str(r[0]) for r in rows]


def notify_floor(
    conn: psycopg.Connection[Any],
    plant: PlantConfig,
    alerts: Any | None,
    change_request: int,
    order_no: str,
    change: Mapping[str, Mapping[str, Any]],
    now: datetime | None = None,
) -> list[str]:
    """One floor notice per affected machine, and one `order_change` alert per line route
    of the alerts file (`order_changes:`), through the alert outbox. Returns the machines."""
    machines = affected_machines(conn, order_no)
    text = summary(change, plant.tz)
    for m in machines:
        conn.execute(
            """INSERT INTO floor_notice (change_request_id, order_no, summary, machine)
               VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            (change_request, order_no, text, m),
        )
    if alerts is not None and machines:
        push_supervisors(conn, plant, alerts, change_request, order_no, text, machines, now)
    return machines


def push_supervisors(
    conn: psycopg.Connection[Any],
    plant: PlantConfig,
    alerts: Any,
    change_request: int,
    order_no: str,
    text: str,
    machines: list[str],
    now: datetime | None = None,
) -> int:
    """Enqueue the change to each affected line's supervisors (the issue 10 delivery)."""
    from notify.alert_outbox import enqueue_alert  # here: it imports the dataflow's records
    from streams.records import AlertRow

    now = now or datetime.now(UTC)
    line_of = plant.line_of_machine
    by_line: dict[str, list[str]] = {}
    for m in machines:
        found = line_of.get(m)
        if found is not None:
            by_line.setdefault(found.id, []).append(m)
    sent = 0
    for line, ms in sorted(by_line.items()):
        people: list[str] = []
        channels: list[str] = []
        for route in getattr(alerts, "order_changes", ()):
            if route.line is None or route.line == line:
                people += route.people
                channels += [c for c in route.channels if c in alerts.channels]
        if not people and not channels:
            continue
        row = AlertRow(
            alert_id=f"order_change:{change_request}:{line}",
            rule="order_changes",
            kind="order_change",
            scope=f"order:{order_no}",
            machine=None,
            line=line,
            order_no=order_no,
            severity="warning",
            step="opened",
            level=0,
            at=now,
            opened_at=now,
            facts={"change": text, "machines": ", ".join(ms), "change_request": change_request},
            people=tuple(dict.fromkeys(people)),
            channels=tuple(dict.fromkeys(channels)),
            quiet_until=None,
        )
        sent += enqueue_alert(conn, row, alerts, now)
    return sent


def _current(conn: psycopg.Connection[Any], order_no: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"SELECT version, {', '.join(ORDER_FIELDS)} FROM crm_order WHERE order_no = %s",
            (order_no,),
        ).fetchone()


def apply_snapshot(
    conn: psycopg.Connection[Any],
    snapshot: Mapping[str, Any],
    *,
    version: int,
    changed_by: str,
    change: Mapping[str, Any],
    source: str,
) -> None:
    """Write a snapshot exactly as the intake writes an accepted one: crm_order, an
    order_history row and the canonical `order` event in the ingest log (a savepoint of
    the caller's transaction)."""
    now = datetime.now(UTC)
    order_no = str(snapshot["order_no"])
    event = OrderEvent(
        type="order", ts=now, id=None, order_no=order_no, version=version,
        customer=snapshot["customer"], priority=snapshot["priority"],
        product=snapshot["product"], qty=snapshot["qty"], due=snapshot["due"],
        status=snapshot["status"],
    )  # fmt: skip
    row = conn.execute(
        """UPDATE crm_order SET version = %s, customer = %s, priority = %s, product = %s,
                  qty = %s, due = %s, status = %s, event_ts = %s, changed_by = %s,
                  updated_at = now()
           WHERE order_no = %s AND version < %s RETURNING 1""",
        (
            version, event.customer, event.priority, event.product, event.qty, event.due,
            event.status, now, changed_by, order_no, version,
        ),
    ).fetchone()  # fmt: skip
    if row is None:
        raise ChangeError("stale")
    conn.execute(
        """INSERT INTO order_history (order_no, work_order, version, changed_by, event_ts,
                                      delivery_id, change)
           VALUES (%s, NULL, %s, %s, %s, NULL, %s)""",
        (order_no, version, changed_by, now, Jsonb(dict(change))),
    )
    record = record_for(
        source, event.model_dump(mode="json", exclude_none=True), key=f"order:{order_no}:{version}"
    )
    if record.error is not None:
        raise ChangeError("unloggable")
    append(conn, [record])


@dataclass(frozen=True, slots=True)
class Proposal:
    """A person's change from the order page: only the fields they may change."""

    qty: int | None = None
    due: datetime | None = None
    cancel: bool = False


MAX_QTY: Final = 1_000_000_000
MIN_DUE: Final = datetime(1970, 1, 1, tzinfo=UTC)
MAX_DUE: Final = datetime(2200, 1, 1, tzinfo=UTC)


def proposal_snapshot(current: Mapping[str, Any], p: Proposal) -> dict[str, Any]:
    """The full snapshot a proposal asks for, with the intake's bounds (ChangeError)."""
    new = {f: current[f] for f in ORDER_FIELDS}
    if p.qty is not None:
        if isinstance(p.qty, bool) or not 0 < p.qty <= MAX_QTY:
            raise ChangeError("qty_invalid")
        new["qty"] = p.qty
    if p.due is not None:
        if p.due.tzinfo is None or not MIN_DUE <= p.due < MAX_DUE:
            raise ChangeError("due_invalid")
        new["due"] = p.due
    if p.cancel:
        new["status"] = "cancelled"
    return new


@dataclass(frozen=True, slots=True)
class Proposed:
    status: Literal["applied", "held", "unchanged"]
    change_request: int | None
    superseded: int | None = None


def propose(
    conn: psycopg.Connection[Any],
    plant: PlantConfig,
    alerts: Any | None,
    order_no: str,
    proposal: Proposal,
    *,
    by: str,
    comment: str | None = None,
) -> Proposed:
    """A planner's change of an order: held if the order is locked, else applied at once
    (the next version; the CRM hears it through `order.change_decision`). Takes the
    intake's lock, so it serialises with CRM changes of the same order."""
    note = check_comment(comment, required=False)
    lock_order(conn, order_no)
    current = _current(conn, order_no)
    if current is None:
        raise ChangeError("unknown_order")
    new = proposal_snapshot(current, proposal)
    change = diff(current, new)
    if not change:
        return Proposed("unchanged", None)
    version = int(current["version"]) + 1
    snapshot = {"order_no": order_no, "version": version, **new}
    superseded = _supersede_pending(conn, order_no, by)
    if needs_approval(change) and is_locked(conn, order_no):
        cr = _insert_request(
            conn, order_no=order_no, from_version=int(current["version"]), to_version=version,
            requested_by=by, source="person", change=change, snapshot=snapshot,
            status="pending", comment=note,
        )  # fmt: skip
        return Proposed("held", cr, superseded)
    apply_snapshot(
        conn, snapshot, version=version, changed_by=by, change=change, source=f"dashboard:{by}"
    )
    done = after_apply(
        conn, plant, alerts, order_no=order_no, from_version=int(current["version"]),
        to_version=version, change=change, snapshot=snapshot, requested_by=by,
        source="person", superseded=superseded,
    )  # fmt: skip
    if done is not None:
        _decision_callback(conn, order_no, done, "approved", note or "", by, version)
    return Proposed("applied", done, superseded)


def _decision_callback(
    conn: psycopg.Connection[Any],
    order_no: str,
    cr: int,
    decision: str,
    comment: str,
    by: str,
    version: int,
) -> None:
    outbox.enqueue(
        conn,
        aggregate=order_no,
        event_type="order.change_decision",
        payload={
            "change_id": cr,
            "decision": decision,
            "comment": comment,
            "by": by,
            "version": version,
        },
        dedupe=f"change_decision:{cr}",
    )


def decide(
    conn: psycopg.Connection[Any],
    plant: PlantConfig,
    alerts: Any | None,
    change_request: int,
    decision: Literal["approved", "rejected"],
    *,
    by: str,
    comment: str | None,
) -> str:
    """Approve (apply exactly as an accepted snapshot) or reject a pending request, record
    the decision and enqueue the CRM callback, in the caller's transaction. Returns the
    order_no. ChangeError("not_pending") if someone decided it first or it was superseded."""
    if decision not in ("approved", "rejected"):
        raise ChangeError("decision_invalid")
    note = check_comment(comment, required=True) or ""
    head = conn.execute(
        "SELECT order_no FROM change_request WHERE id = %s", (change_request,)
    ).fetchone()
    if head is None:
        raise ChangeError("unknown_request")
    order_no = str(head[0])
    lock_order(conn, order_no)  # first the order's lock, as the intake: no deadlock
    with conn.cursor(row_factory=dict_row) as cur:
        cr = cur.execute(
            "SELECT * FROM change_request WHERE id = %s FOR UPDATE", (change_request,)
        ).fetchone()
    assert cr is not None
    if cr["status"] != "pending":
        raise ChangeError("not_pending")
    if decision == "approved":
        snap = dict(cr["snapshot"])
        snap["due"] = datetime.fromisoformat(snap["due"])
        apply_snapshot(
            conn, snap, version=int(cr["to_version"]), changed_by=by, change=cr["change"],
            source=f"dashboard:{by}",
        )  # fmt: skip
    conn.execute(
        """UPDATE change_request SET status = %s, decided_by = %s, decided_at = now(),
                  comment = %s, applied_at = CASE WHEN %s = 'approved' THEN now() END
           WHERE id = %s""",
        (decision, by, note, decision, change_request),
    )
    if decision == "approved":
        notify_floor(conn, plant, alerts, change_request, order_no, cr["change"])
    _decision_callback(conn, order_no, change_request, decision, note, by, int(cr["to_version"]))
    return order_no


def acknowledge(conn: psycopg.Connection[Any], notice_id: int, machine: str, by: str) -> bool:
    """An operator acknowledges a notice on their machine; the first one counts (True)."""
    row = conn.execute(
        """UPDATE floor_notice SET acknowledged_by = %s, acknowledged_at = now()
           WHERE id = %s AND machine = %s AND acknowledged_at IS NULL RETURNING 1""",
        (by[:200].replace("\x00", ""), notice_id, machine),
    ).fetchone()
    return row is not None


@dataclass(frozen=True, slots=True)
class Notice:
    id: int
    change_request_id: int
    order_no: str
    summary: str
    machine: str
    created_at: datetime


def open_notices(conn: psycopg.Connection[Any], machines: list[str] | None = None) -> list[Notice]:
    """Unacknowledged notices (of these machines), oldest first: one cheap indexed query."""
    rows = conn.execute(
        """SELECT id, change_request_id, order_no, summary, machine, created_at
           FROM floor_notice WHERE acknowledged_at IS NULL
             AND (%(m)s::text[] IS NULL OR machine = ANY(%(m)s::text[]))
           ORDER BY id""",
        {"m": machines},
    ).fetchall()
    return [Notice(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5]) for r in rows]


# --- the alerts file, for the supervisor push -------------------------------------------

_ALERTS: dict[tuple[str, float], Any] = {}


def load_alerts(path: Path | str | None, plant: PlantConfig) -> Any | None:
    """The alerts file's model (for `order_changes:` routes), cached by mtime; None when
    unset or unreadable (logged: the change still applies, only the push is missing)."""
    if path is None:
        return None
    from mesflow.alert_rules import AlertsConfigError, load_alerts_config

    try:
        key = (str(path), Path(path).stat().st_mtime)
    except OSError as err:
        log.warning("change control: alerts file %s: %s", path, err)
        return None
    if key not in _ALERTS:
        try:
            config = load_alerts_config(path, plant)
        except AlertsConfigError as err:
            log.warning("change control: no supervisor push: %s", err)
            return None
        _ALERTS.clear()
        _ALERTS[key] = config
    return _ALERTS[key]


def get_request(conn: psycopg.Connection[Any], change_request: int) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT id, order_no, from_version, to_version, requested_by, source, received_at,
                      change, snapshot, status, decided_by, decided_at, comment, applied_at,
                      superseded_by
               FROM change_request WHERE id = %s""",
            (change_request,),
        ).fetchone()


def order_requests(conn: psycopg.Connection[Any], order_no: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM v_change_requests WHERE order_no = %s ORDER BY id DESC",
            (order_no,),
        ).fetchall()
