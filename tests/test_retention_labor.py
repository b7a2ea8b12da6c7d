"""Retention of the labour board's sign-in anomalies (labor_issue) against a real
PostgreSQL: old ones go by their time in short batches, recent ones stay, 0 days keeps them
forever, a second run removes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from mesflow.retention import RetentionPolicy, retention_status, run_retention

NOW = datetime.now(UTC)


def _seed(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for seq, (kind, age_days) in enumerate(
            [("expired", 400), ("late", 366), ("duplicate_sign_in", 364), ("expired", 1),
             ("sign_out_without_sign_in", 500)]
        ):  # fmt: skip
            ts = NOW - timedelta(days=age_days)
            conn.execute(
                "INSERT INTO labor_issue (seq, kind, station, person, ts, applied_ts)"
                " VALUES (%s, %s, 'IM-01', 'li', %s, %s)",
                (seq, kind, ts, ts),
            )


def _left(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [s for (s,) in conn.execute("SELECT seq FROM labor_issue ORDER BY seq")]


def test_old_sign_in_anomalies_go_recent_ones_stay(db_url: str) -> None:
    _seed(db_url)
    policy = RetentionPolicy(batch_rows=2)  # two batches
    would = {s.table: s.would_go for s in retention_status(db_url, policy)}
    assert would["labor_issue"] == 3
    removed = {r.table: r.rows for r in run_retention(db_url, policy)}
    assert removed["labor_issue"] == 3
    assert _left(db_url) == [2, 3]  # 364 days and 1 day old
    assert sum(r.rows for r in run_retention(db_url, policy)) == 0


def test_zero_days_keeps_them_and_a_shorter_setting_takes_more(db_url: str) -> None:
    _seed(db_url)
    forever = {r.table: r for r in run_retention(db_url, RetentionPolicy(labor_issue_days=0))}
    assert forever["labor_issue"].rows == 0 and "kept forever" in forever["labor_issue"].note
    assert len(_left(db_url)) == 5
    week = {r.table: r.rows for r in run_retention(db_url, RetentionPolicy(labor_issue_days=7))}
    assert week["labor_issue"] == 4 and _left(db_url) == [3]
