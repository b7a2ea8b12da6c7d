"""Acknowledging an alert: an `alert_ack` event in the ingest log (docs/events.md).

Every input goes through the ingest log, so an acknowledgement from the boards or from a
signed link in a message is an event like an operator's tap (dashboards/operator_reports.py):
the dataflow reads it in order, stops the alert's escalation, and a replay of the log gives the
same alert history.

One acknowledgement per alert: the event's dedupe key is `alert_ack:<alert_id>`, so a double
click, a second POST of the same link or an acknowledgement from the board after one from the
link stores nothing more. The check and the append run under a per-alert advisory lock, so two
concurrent requests cannot both store (the log would keep the second, with a different `ts`, as
an `id_conflict` error row).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import psycopg

from mesflow.events import MAX_ID_LENGTH, ContractError, parse_event
from mesflow.ingest_log import append, dedupe_key, record_for

Via = Literal["board", "link"]
VIAS: Final = ("board", "link")
# Advisory lock class for "one acknowledgement per alert" (two-int4 key space, apart from
# the ingest log's own single-bigint append lock).
_LOCK_CLASS: Final = 0x616C7274  # "alrt"
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")  # a person, user or channel name


class AckRefused(ValueError):
    """An acknowledgement that cannot become an event (bad alert id or name)."""


@dataclass(frozen=True, slots=True)
class AckResult:
    stored: bool  # False: this alert was already acknowledged (by this or another request)
    event: dict[str, Any]


def ack_key(alert_id: str) -> str:
    """The ingest log's idempotency key of an alert's acknowledgement."""
    return f"alert_ack:{alert_id}"


def source_for(via: Via, by: str) -> str:
    """`board:<user>` or `link:<person>`: where the acknowledgement came from."""
    return f"{via}:{by}"


def ack_event(alert_id: str, by: str, via: Via, now: datetime | None = None) -> dict[str, Any]:
    """The canonical `alert_ack` event (checked against the event contract)."""
    if not isinstance(alert_id, str) or not _NAME.fullmatch(alert_id):
        raise AckRefused("alert_id")
    if not isinstance(by, str) or not _NAME.fullmatch(by) or len(by) > MAX_ID_LENGTH:
        raise AckRefused("by")
    if via not in VIAS:
        raise AckRefused("via")
    ts = (now or datetime.now(UTC)).astimezone(UTC)
    event: dict[str, Any] = {
        "type": "alert_ack",
        "ts": ts.isoformat(),
        "alert_id": alert_id,
        "by": by,
        "via": via,
    }
    # An event the dataflow would dead-letter (an over-long alert id) is refused here instead.
    try:
        parse_event(record_for(source_for(via, by), event).payload)
    except ContractError as err:
        raise AckRefused(err.reason) from err
    return event


def already_acknowledged(conn: psycopg.Connection, alert_id: str) -> bool:
    """Is an acknowledgement of this alert in the ingest log (processed or not yet)?"""
    row = conn.execute(
        "SELECT 1 FROM ingest_log WHERE dedupe_key = %s", (dedupe_key(ack_key(alert_id)),)
    ).fetchone()
    return row is not None


def acknowledge(
    conn: psycopg.Connection, alert_id: str, by: str, via: Via, now: datetime | None = None
) -> AckResult:
    """Store the acknowledgement of `alert_id` by `by` once; later calls store nothing."""
    event = ack_event(alert_id, by, via, now)
    record = record_for(source_for(via, by), event, key=ack_key(alert_id))
    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, ack_key(alert_id))
        )
        if already_acknowledged(conn, alert_id):
            return AckResult(False, event)
        appended = append(conn, [record])
    return AckResult(appended.new > 0, event)


def pending_acks(conn: psycopg.Connection, alert_ids: list[str]) -> frozenset[str]:
    """Which of these alerts have an acknowledgement in the log (the board shows it at once,
    before the dataflow has applied it to `v_alerts`). One index lookup per alert."""
    if not alert_ids:
        return frozenset()
    keys = {dedupe_key(ack_key(a)): a for a in alert_ids}
    rows = conn.execute(
        "SELECT dedupe_key FROM ingest_log WHERE dedupe_key = ANY(%s)", (list(keys),)
    ).fetchall()
    return frozenset(keys[bytes(r[0])] for r in rows if bytes(r[0]) in keys)
