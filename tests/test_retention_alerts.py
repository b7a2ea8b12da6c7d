"""Retention of the alert tables against a real PostgreSQL: old sent/stale/failed messages
go and pending ones stay; resolved alerts go with their steps, open and acknowledged ones
stay; a silent robot's budget row goes. A second run removes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from mesflow.retention import RetentionPolicy, retention_status, run_retention
from notify.robot_budget import hold

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=400)  # older than every default
RECENT = NOW - timedelta(days=1)
POLICY = RetentionPolicy(batch_rows=2)  # several batches


def _rows(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def _alert(conn: psycopg.Connection[Any], alert_id: str, opened: datetime, **kw: Any) -> None:
    conn.execute(
        """INSERT INTO alert (alert_id, rule, kind, scope, machine, severity, level, started_at,
                              opened_at, acknowledged_at, resolved_at)
           VALUES (%s, 'r', 'machine_down', 'machine:IM-01', 'IM-01', 'warning', 0, %s, %s,
                   %s, %s)""",
        (alert_id, opened, opened, kw.get("acked"), kw.get("resolved")),
    )
    conn.execute(
        "INSERT INTO alert_step (alert_id, step, level, at) VALUES (%s, 'opened', 0, %s)",
        (alert_id, opened),
    )


def _delivery(conn: psycopg.Connection[Any], n: int, status: str, created: datetime) -> None:
    conn.execute(
        """INSERT INTO alert_delivery (dedupe, alert_id, step, level, severity, target, person,
                                       channel, channel_type, payload, event_at, created_at,
                                       status)
           VALUES (%s, 'a', 'opened', 0, 'warning', 'email:zhang', 'zhang', 'email', 'email',
                   '{}', %s, %s, %s)""",
        (f"d{n}", created, created, status),
    )


def seed(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for n, status in enumerate(["sent", "stale", "failed", "pending", "sent"]):
            _delivery(conn, n, status, OLD)
        _delivery(conn, 10, "sent", RECENT)
        _alert(conn, "old-resolved", OLD, resolved=OLD + timedelta(hours=1))
        _alert(conn, "old-resolved-2", OLD, resolved=OLD + timedelta(hours=2))
        _alert(conn, "old-open", OLD)
        _alert(conn, "old-acked", OLD, acked=OLD + timedelta(minutes=5))
        _alert(conn, "recent-resolved", RECENT, resolved=RECENT + timedelta(hours=1))
        conn.execute(
            "INSERT INTO robot_budget (channel, sends) VALUES ('silent', %s), ('idle', '{}')",
            ([OLD, OLD + timedelta(seconds=1)],),
        )
        with hold(conn, "busy") as h:  # the dispatcher, just now
            h.take(1)


def test_alert_tables_keep_what_is_still_needed(db_url: str) -> None:
    seed(db_url)
    would = {s.table: s.would_go for s in retention_status(db_url, POLICY)}
    assert (would["alert_delivery"], would["alert (+ alert_step)"], would["robot_budget"]) == (
        4,
        2,
        2,
    )
    removed = {r.table: r.rows for r in run_retention(db_url, POLICY)}
    assert removed["alert_delivery"] == 4
    assert removed["alert (+ alert_step)"] == 2
    assert removed["robot_budget"] == 2
    assert _rows(db_url, "SELECT dedupe, status FROM alert_delivery ORDER BY dedupe") == [
        ("d10", "sent"),
        ("d3", "pending"),
    ]
    kept = ["old-acked", "old-open", "recent-resolved"]
    assert [a for (a,) in _rows(db_url, "SELECT alert_id FROM alert ORDER BY 1")] == kept
    assert [a for (a,) in _rows(db_url, "SELECT alert_id FROM alert_step ORDER BY 1")] == kept
    assert _rows(db_url, "SELECT channel FROM robot_budget") == [("busy",)]
    again = run_retention(db_url, POLICY)
    assert sum(r.rows for r in again) == 0


def test_zero_days_keeps_them_forever(db_url: str) -> None:
    seed(db_url)
    forever = RetentionPolicy(alert_delivery_days=0, alert_days=0)
    removed = {r.table: r for r in run_retention(db_url, forever)}
    assert removed["alert_delivery"].rows == 0 and "kept forever" in removed["alert_delivery"].note
    assert removed["alert (+ alert_step)"].rows == 0
    assert len(_rows(db_url, "SELECT 1 FROM alert_delivery")) == 6
