"""SQL of the alerts page, the andon's open-alert count and the /ack page.

Reads only the public views: `v_alerts` and `v_alert_history` (sql/018_alerts.sql),
`v_alert_deliveries` and `v_channel_status` (sql/019_alert_delivery.sql). Every function
returns typed rows; times are timestamptz (shown in the plant's time zone by the page).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, tzinfo
from typing import Any

import psycopg
from psycopg.rows import class_row

from dashboards.queries import Database

SEVERITIES = ("critical", "warning", "info")
STATUSES = ("open", "acknowledged", "resolved")
# Rows on the page (newest first); the CSV has up to HISTORY_LIMIT. The browser's Dash renderer
# takes time growing faster than the rows: 232 blocked headless Chromium for 16 s in the demo.
HISTORY_SHOWN = 50
# Unresolved alerts on the page, refreshed every few seconds: the most urgent (open before
# acknowledged, critical first, oldest first) when a large plant has more.
OPEN_SHOWN = 50
HISTORY_LIMIT = 10_000  # rows in one CSV; a narrower range or a filter gives the rest


@dataclass(frozen=True, slots=True)
class Alert:
    """One row of `v_alerts`: an alert and where its life stands."""

    alert_id: str
    rule: str
    kind: str
    scope: str
    machine: str | None
    line: str | None
    order_no: str | None
    severity: str
    level: int
    status: str  # open | acknowledged | resolved
    started_at: datetime  # the condition began (a machine went down): "since"
    opened_at: datetime  # the alert opened (its first level reached)
    escalated_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    duration_s: float | None
    facts: dict[str, Any]


_ALERT_COLUMNS = """
alert_id, rule, kind, scope, machine, line, order_no, severity, level, status, started_at,
opened_at, escalated_at, acknowledged_at, acknowledged_by, resolved_at, duration_s::float8 AS duration_s,
coalesce(facts, '{}'::jsonb) AS facts
"""

# Open first (then acknowledged), the most severe first, the oldest first within a severity:
# the alert that has waited longest for someone is at the top.
_OPEN_SQL = f"""
SELECT {_ALERT_COLUMNS}
FROM v_alerts
WHERE resolved_at IS NULL
ORDER BY status = 'acknowledged',
         array_position(ARRAY['critical', 'warning', 'info'], severity) NULLS LAST,
         started_at, alert_id
"""


def open_alerts(db: Database) -> list[Alert]:
    """Alerts not resolved yet: open ones first, then acknowledged ones."""

    def query(conn: psycopg.Connection) -> list[Alert]:
        with conn.cursor(row_factory=class_row(Alert)) as cur:
            return cur.execute(_OPEN_SQL).fetchall()

    return db.run(query)


def alert_by_id(conn: psycopg.Connection, alert_id: str) -> Alert | None:
    with conn.cursor(row_factory=class_row(Alert)) as cur:
        return cur.execute(
            f"SELECT {_ALERT_COLUMNS} FROM v_alerts WHERE alert_id = %s", (alert_id,)
        ).fetchone()


@dataclass(frozen=True, slots=True)
class OpenCount:
    """What the andon shows: open (unacknowledged) alerts, of which critical."""

    open: int
    critical: int
    acknowledged: int


_COUNT_SQL = """
SELECT count(*) FILTER (WHERE status = 'open') AS open,
       count(*) FILTER (WHERE status = 'open' AND severity = 'critical') AS critical,
       count(*) FILTER (WHERE status = 'acknowledged') AS acknowledged
FROM v_alerts
WHERE resolved_at IS NULL
  AND (cardinality(%(lines)s::text[]) = 0 OR line = ANY(%(lines)s::text[]))
"""


def open_count(db: Database, lines: Sequence[str] = ()) -> OpenCount:
    """One cheap query for the andon's banner (its refresh runs every second); `lines`: only
    the alerts of these lines (a screen showing `?line=IM`), else the whole plant's."""
    params = {"lines": list(lines)}

    def query(conn: psycopg.Connection) -> OpenCount:
        with conn.cursor(row_factory=class_row(OpenCount)) as cur:
            row = cur.execute(_COUNT_SQL, params).fetchone()
        return row or OpenCount(0, 0, 0)

    return db.run(query)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One row of `v_alert_deliveries`: one message of one step to one target."""

    alert_id: str
    step: str
    level: int
    target: str  # 'email:<person>' | 'channel:<name>'
    person: str | None
    channel: str
    channel_type: str  # email | wecom | dingtalk | feishu | webhook
    status: str  # pending | sent | failed | stale
    attempts: int
    last_error: str | None
    error_code: str | None
    sent_at: datetime | None
    next_attempt_at: datetime | None  # pending: not before this (quiet hours, a retry)


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    """One row of `v_channel_status`: a robot, webhook or the SMTP server, as last seen."""

    channel: str
    channel_type: str
    status: str  # ok | failing | bad_key | stalled
    last_error: str | None
    error_code: str | None
    last_error_at: datetime | None
    last_success_at: datetime | None
    pending: int
    failed: int
    # The earliest time a pending message was due. Long past while the channel looks ok:
    # nothing is sending on it ("stalled").
    due_since: datetime | None = None


@dataclass(frozen=True)
class OpenBoard:
    """What the top of the alerts page shows, read on one connection."""

    alerts: list[Alert]
    deliveries: dict[str, list[Delivery]]  # alert_id -> its deliveries, in order
    channels: list[ChannelStatus]
    pending_acks: frozenset[str]  # acknowledged in the log, not yet applied by the dataflow


_DELIVERIES_SQL = """
SELECT alert_id, step, level, target, person, channel, channel_type, status, attempts,
       last_error, error_code, sent_at, next_attempt_at
FROM v_alert_deliveries
WHERE alert_id = ANY(%s)
ORDER BY alert_id, level, id
"""

# A pending message due this long ago on a channel without errors: no dispatcher is sending
# on it (`mesflow run notify` not running, or running without this channel or SMTP). The
# dispatcher polls every few seconds and a robot's rate limit holds a burst back for
# minutes at most.
STALLED_AFTER_MIN = 10

# Trouble first: a bad key, then failing and stalled channels, then the rest by name.
_CHANNELS_SQL = f"""
SELECT * FROM (
    SELECT v.channel, v.channel_type,
           CASE WHEN v.status = 'ok'
                 AND d.due_since < now() - interval '{STALLED_AFTER_MIN} minutes'
                THEN 'stalled' ELSE v.status END AS status,
           v.last_error, v.error_code, v.last_error_at, v.last_success_at,
           v.pending::int AS pending, v.failed::int AS failed, d.due_since
    FROM v_channel_status v
    LEFT JOIN LATERAL (SELECT min(next_attempt_at) AS due_since FROM alert_delivery
                       WHERE channel = v.channel AND status = 'pending') d ON true) c
ORDER BY array_position(ARRAY['bad_key', 'failing', 'stalled', 'ok'], status) NULLS FIRST, channel
"""


def open_board(db: Database) -> OpenBoard:
    # Imported here: alert_ack imports the event contract, which the andon's count needs not.
    from dashboards.alert_ack import pending_acks

    def query(conn: psycopg.Connection) -> OpenBoard:
        with conn.cursor(row_factory=class_row(Alert)) as cur:
            alerts = cur.execute(_OPEN_SQL).fetchall()
        ids = [a.alert_id for a in alerts]
        by_alert: dict[str, list[Delivery]] = {}
        if ids:
            with conn.cursor(row_factory=class_row(Delivery)) as cur:
                for d in cur.execute(_DELIVERIES_SQL, (ids,)).fetchall():
                    by_alert.setdefault(d.alert_id, []).append(d)
        with conn.cursor(row_factory=class_row(ChannelStatus)) as cur:
            channels = cur.execute(_CHANNELS_SQL).fetchall()
        waiting = [a.alert_id for a in alerts if a.acknowledged_at is None]
        return OpenBoard(alerts, by_alert, channels, pending_acks(conn, waiting))

    return db.run(query)


def deliveries(db: Database, alert_id: str) -> list[Delivery]:
    def query(conn: psycopg.Connection) -> list[Delivery]:
        with conn.cursor(row_factory=class_row(Delivery)) as cur:
            return cur.execute(_DELIVERIES_SQL, ([alert_id],)).fetchall()

    return db.run(query)


@dataclass(frozen=True)
class HistoryFilters:
    """Alerts opened in [start, end) (plant-local days), optionally of one line, one machine
    (alerts about that machine only) or one severity."""

    start: date
    end: date
    tz: tzinfo
    line: str | None = None
    machine: str | None = None
    severity: str | None = None


_HISTORY_SQL = f"""
SELECT {_ALERT_COLUMNS}
FROM v_alerts
WHERE opened_at >= %(start)s AND opened_at < %(end)s
  AND (%(line)s::text IS NULL OR line = %(line)s)
  AND (%(machine)s::text IS NULL OR machine = %(machine)s)
  AND (%(severity)s::text IS NULL OR severity = %(severity)s)
ORDER BY opened_at DESC, alert_id
LIMIT %(limit)s
"""


def history(db: Database, f: HistoryFilters, limit: int = HISTORY_LIMIT) -> list[Alert]:
    """Alerts opened in the range, newest first (at most `limit`)."""
    params: dict[str, Any] = {
        "start": datetime.combine(f.start, time(0), f.tz),
        "end": datetime.combine(f.end, time(0), f.tz),
        "line": f.line,
        "machine": f.machine,
        "severity": f.severity,
        "limit": limit,
    }

    def query(conn: psycopg.Connection) -> list[Alert]:
        with conn.cursor(row_factory=class_row(Alert)) as cur:
            return cur.execute(_HISTORY_SQL, params).fetchall()

    return db.run(query)
