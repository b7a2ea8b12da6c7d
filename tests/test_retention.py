"""Retention against a real PostgreSQL: each table's old rows go, what must stay stays;
a second run changes nothing; a run killed midway leaves a consistent database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from mesflow.cli import main
from mesflow.retention import (
    FlowProgress,
    Observation,
    PeriodicRetention,
    RetentionPolicy,
    confirmed_position,
    log_cutoff,
    log_prune_upto,
    retention_status,
    run_retention,
)
from mesflow.settings import REPO_ROOT
from streams.pg_sink import INSERT_DEAD

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=400)  # older than every default retention
RECENT = NOW - timedelta(days=1)
POLICY = RetentionPolicy(resume_margin=timedelta(minutes=10))


def _rows(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def _one(url: str, query: str, params: Any = None) -> Any:
    return _rows(url, query, params)[0][0]


def _fill_log(
    conn: psycopg.Connection[Any],
    n: int,
    received_at: datetime,
    size: int = 20,
    machines: tuple[str | None, ...] = (None,),
) -> None:
    """n rows; row i names machines[i % len(machines)]."""
    conn.execute(
        """INSERT INTO ingest_log (received_at, source, payload, machine)
           SELECT %s, 'test', convert_to(repeat('x', %s) || g::text, 'UTF8'),
                  (%s::text[])[g %% %s + 1]
           FROM generate_series(1, %s) g""",
        (received_at, size, list(machines), len(machines), n),
    )


def _consumed(conn: psycopg.Connection[Any], seq: int, confirmed: int | None = None) -> None:
    """The dataflow committed up to `seq`; a retention run saw `confirmed` an hour earlier."""
    conn.execute(
        "INSERT INTO dataflow_progress (flow, last_seq, updated_at) VALUES ('machines', %s, now())",
        (seq,),
    )
    if confirmed is not None:
        conn.execute(
            "INSERT INTO retention_observation VALUES ('machines', %s, now() - interval '1 hour')",
            (confirmed,),
        )


def _dead_letter(conn: psycopg.Connection[Any], seq: int, reason: str = "unknown_machine") -> None:
    # The dataflow's own statement (streams/pg_sink.py): it copies the payload from the log.
    conn.execute(INSERT_DEAD, (reason, "test", seq))


# --- pure logic ---------------------------------------------------------------------


def test_confirmed_position_needs_an_observation_a_margin_before_the_latest_commit() -> None:
    t = NOW
    margin = timedelta(minutes=10)
    progress = [FlowProgress("machines", 500, t)]
    obs = [
        Observation("machines", 100, t - timedelta(hours=2)),
        Observation("machines", 300, t - timedelta(minutes=11)),
        Observation("machines", 450, t - timedelta(minutes=5)),  # too recent: not yet
    ]
    assert confirmed_position(progress, obs, margin) == 300
    assert confirmed_position(progress, obs[2:], margin) == 0
    assert confirmed_position([], obs, margin) == 0
    # Every flow must be past it.
    two = [*progress, FlowProgress("other", 50, t)]
    assert confirmed_position(two, [*obs, Observation("other", 40, t - timedelta(hours=1))], margin)
    assert confirmed_position(two, obs, margin) == 0  # "other" has no confirmed position


def test_log_prune_upto_is_the_lowest_of_the_limits() -> None:
    assert log_prune_upto(300, 500) == 300
    assert log_prune_upto(300, 50) == 50
    assert log_prune_upto(0, 50) == 0


# --- ingest_log -------------------------------------------------------------------------


def test_log_keeps_what_the_dataflow_has_not_surely_snapshotted(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _fill_log(conn, 100, OLD)  # seq 1..100, all older than 30 days
        _fill_log(conn, 20, RECENT)  # seq 101..120
        _consumed(conn, 110, confirmed=None)
    # Consumed up to 110, but no earlier observation: a resume might still need them all.
    removed = {r.table: r.rows for r in run_retention(db_url, POLICY)}
    assert removed["ingest_log"] == 0
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE retention_observation SET observed_at = now() - interval '1 hour', "
            "last_seq = 60"
        )
    removed = {r.table: r.rows for r in run_retention(db_url, POLICY)}
    assert removed["ingest_log"] == 60
    assert _one(db_url, "SELECT min(seq) FROM ingest_log") == 61
    # Confirmed past every old row: only the old ones go, the recent stay.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE retention_observation SET last_seq = 110")
    removed = {r.table: r.rows for r in run_retention(db_url, POLICY)}
    assert removed["ingest_log"] == 40
    assert _one(db_url, "SELECT min(seq) FROM ingest_log") == 101
    assert _one(db_url, "SELECT count(*) FROM ingest_log") == 20


def test_log_cutoff_never_shortens_the_dedupe_window() -> None:
    window = timedelta(days=30, seconds=300)
    assert log_cutoff(NOW, 90, window) == NOW - timedelta(days=90)
    assert log_cutoff(NOW, 1, window) == NOW - window


def test_log_rows_stay_while_a_resent_copy_could_still_be_accepted(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _fill_log(conn, 10, NOW - timedelta(days=40))
        _fill_log(conn, 10, NOW - timedelta(days=10))
        _consumed(conn, 20, confirmed=20)
    # One day asked, but a copy of a 10-day-old event would still pass the clock policy
    # (30 days): its row, and so its dedupe key, stays.
    short = RetentionPolicy(ingest_log_days=1, dedupe_window=timedelta(days=30))
    assert {r.table: r.rows for r in run_retention(db_url, short)}["ingest_log"] == 10
    assert _one(db_url, "SELECT min(seq) FROM ingest_log") == 11


def test_log_never_passes_the_dataflow_position(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _fill_log(conn, 100, OLD)
        _consumed(conn, 30, confirmed=90)  # an observation can never be ahead of progress
    run_retention(db_url, POLICY)
    assert _one(db_url, "SELECT min(seq) FROM ingest_log") == 31


def test_log_without_a_dataflow_is_kept_whole(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _fill_log(conn, 50, OLD)
    run_retention(db_url, POLICY)
    assert _one(db_url, "SELECT count(*) FROM ingest_log") == 50


def _ensure_checkpoint_table(conn: psycopg.Connection[Any]) -> None:
    # Same shape as sql/011_late_merge.sql (helper D), for a tree without it.
    conn.execute(
        """CREATE TABLE IF NOT EXISTS machine_checkpoint (
               machine text NOT NULL, seq bigint NOT NULL, last_ts timestamptz NOT NULL,
               state bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
               PRIMARY KEY (machine, seq))"""
    )


def test_log_keeps_what_machine_rebuilds_from_checkpoints_need(db_url: str) -> None:
    # IM-03 is in the plant but has no checkpoint yet; IM-99 is not in the plant.
    machines = ("IM-01", "IM-02", None, "IM-03", "IM-99")
    with psycopg.connect(db_url, autocommit=True) as conn:
        _fill_log(conn, 100, OLD, machines=machines)
        _consumed(conn, 100, confirmed=100)
        _ensure_checkpoint_table(conn)
        conn.execute(
            "INSERT INTO machine_checkpoint (machine, seq, last_ts, state) VALUES "
            "('IM-01', 40, now(), ''), ('IM-01', 90, now(), ''), ('IM-02', 75, now(), '')"
        )
    run_retention(db_url, POLICY)
    kept = _rows(db_url, "SELECT coalesce(machine, '-'), min(seq), count(*) FROM ingest_log "
                         "GROUP BY 1 ORDER BY 1")  # fmt: skip
    # A rebuild of IM-01 reads its rows and those naming no machine after seq 40 (its
    # oldest checkpoint); IM-02's after 75; IM-03's from the start; IM-99 has no rebuild.
    assert kept == [("-", 42, 12), ("IM-01", 45, 12), ("IM-02", 76, 5), ("IM-03", 3, 20)]
    assert sum(r.rows for r in run_retention(db_url, POLICY)) == 0


# --- dead letters -----------------------------------------------------------------------


def test_dead_letter_payload_is_stored_once_and_survives_the_log(db_url: str) -> None:
    big = b'{"type":"count","machine":"IM-99","ts":"2026-11-20T08:00:00+08:00","good":1,"x":"'
    big += b"y" * (1 << 20) + b'"}'
    with psycopg.connect(db_url, autocommit=True) as conn:
        for payload in (big, b'{"a":1}', b'{"b":2}'):
            conn.execute(
                "INSERT INTO ingest_log (received_at, source, payload) VALUES (%s, 'mqtt:t', %s)",
                (OLD, payload),
            )
        for seq in (1, 2, 3):
            _dead_letter(conn, seq)
        # One copy: the dead letter refers to the log row.
        assert conn.execute("SELECT count(payload) FROM dead_letter").fetchone() == (0,)
        # Resolved ones no longer need theirs.
        conn.execute("UPDATE dead_letter SET resolved_at = now(), resolution = 'discarded' "
                     "WHERE log_seq = 3")  # fmt: skip
        _consumed(conn, 3, confirmed=3)
    assert _rows(db_url, "SELECT payload FROM v_dead_letter ORDER BY log_seq")[0][0] == big
    before = _one(db_url, "SELECT pg_total_relation_size('dead_letter')")
    assert before < 200_000  # not another megabyte
    run_retention(db_url, POLICY)
    assert _one(db_url, "SELECT count(*) FROM ingest_log") == 0
    rows = _rows(db_url, "SELECT log_seq, payload, status FROM v_dead_letter ORDER BY log_seq")
    assert rows == [(1, big, "open"), (2, b'{"a":1}', "open"), (3, None, "discarded")]
    # The public summary reads as before.
    assert _rows(db_url, "SELECT reason, events FROM v_dead_letter_summary") == [
        ("unknown_machine", 3)
    ]


def test_dead_letters_resolved_go_after_their_days_unresolved_stay(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _fill_log(conn, 4, OLD)
        for seq in (1, 2, 3, 4):
            _dead_letter(conn, seq)
        conn.execute("UPDATE dead_letter SET recorded_at = %s", (OLD,))
        conn.execute(
            "UPDATE dead_letter SET resolved_at = %s, resolution = 'requeued' WHERE log_seq = 1",
            (OLD,),
        )
        conn.execute(
            "UPDATE dead_letter SET resolved_at = %s, resolution = 'discarded' WHERE log_seq = 2",
            (RECENT,),
        )
    run_retention(db_url, POLICY)
    assert [r[0] for r in _rows(db_url, "SELECT log_seq FROM dead_letter ORDER BY 1")] == [2, 3, 4]
    run_retention(db_url, RetentionPolicy(unresolved_dead_letter_days=90))
    assert [r[0] for r in _rows(db_url, "SELECT log_seq FROM dead_letter ORDER BY 1")] == [2]


# --- outbox, intake, order history ---------------------------------------------------------


def _seed_other_tables(conn: psycopg.Connection[Any]) -> None:
    outbox = [
        ("delivered", OLD, "old-delivered"),
        ("delivered", RECENT, "recent-delivered"),
        ("pending", OLD, "old-pending"),
        ("failed", OLD, "old-failed"),
    ]
    for status, at, key in outbox:
        conn.execute(
            """INSERT INTO outbox (aggregate, event_type, payload, dedupe, created_at, status,
                                   delivered_at)
               VALUES ('SO-1', 'order.progress', '{}', %s, %s, %s, %s)""",
            (key, at, status, at if status == "delivered" else None),
        )
    for i, at in enumerate((OLD, OLD, RECENT)):
        conn.execute(
            "INSERT INTO intake_delivery (client, delivery_id, kind, key, outcome, received_at) "
            "VALUES ('crm', %s, 'order', 'SO-1', 'accepted', %s)",
            (f"d{i}", at),
        )
    for order_no, status in (("SO-OPEN", "open"), ("SO-DONE", "closed")):
        conn.execute(
            """INSERT INTO crm_order (order_no, version, customer, priority, product, qty, due,
                                      status, event_ts, changed_by)
               VALUES (%s, 2, 'c', 1, 'P-100', 10, now(), %s, now(), 'crm')""",
            (order_no, status),
        )
        for version, at in ((1, OLD), (2, RECENT)):
            conn.execute(
                """INSERT INTO order_history (order_no, version, changed_by, accepted_at,
                                              event_ts, change)
                   VALUES (%s, %s, 'crm', %s, %s, '{}')""",
                (order_no, version, at, at),
            )


def test_outbox_intake_and_history(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _seed_other_tables(conn)
    removed = {r.table: r.rows for r in run_retention(db_url, POLICY)}
    assert removed["outbox"] == 1 and removed["intake_delivery"] == 2
    assert removed["order_history"] == 1
    assert sorted(r[0] for r in _rows(db_url, "SELECT dedupe FROM outbox")) == [
        "old-failed",
        "old-pending",
        "recent-delivered",
    ]
    assert _rows(db_url, "SELECT delivery_id FROM intake_delivery") == [("d2",)]
    # An open order's history stays whole, however old.
    assert _rows(db_url, "SELECT order_no, version FROM order_history ORDER BY 1, 2") == [
        ("SO-DONE", 2),
        ("SO-OPEN", 1),
        ("SO-OPEN", 2),
    ]


def test_zero_days_keeps_forever(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _seed_other_tables(conn)
        _fill_log(conn, 10, OLD)
        _consumed(conn, 10, confirmed=10)
    forever = RetentionPolicy(ingest_log_days=0, outbox_days=0, intake_days=0, order_history_days=0)
    assert sum(r.rows for r in run_retention(db_url, forever)) == 0


# --- whole runs ---------------------------------------------------------------------------

TABLES = ("ingest_log", "dead_letter", "outbox", "intake_delivery", "order_history")


def _snapshot(url: str) -> dict[str, list[str]]:
    return {t: sorted(repr(r) for r in _rows(url, f"SELECT * FROM {t}")) for t in TABLES}


def _seed_everything(conn: psycopg.Connection[Any], n_log: int = 300) -> None:
    _seed_other_tables(conn)
    _fill_log(conn, n_log, OLD)
    _fill_log(conn, 10, RECENT)
    for seq in range(5, n_log, 7):
        _dead_letter(conn, seq)
    conn.execute(
        "UPDATE dead_letter SET resolved_at = now(), resolution = 'discarded' WHERE log_seq % 2 = 0"
    )
    _consumed(conn, n_log + 10, confirmed=n_log + 10)


def test_a_second_run_changes_nothing(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _seed_everything(conn)
    first = run_retention(db_url, POLICY)
    assert sum(r.rows for r in first) > 0
    after_first = _snapshot(db_url)
    second = run_retention(db_url, POLICY)
    assert sum(r.rows for r in second) == 0
    assert _snapshot(db_url) == after_first


def _open_payloads(url: str) -> dict[int, bytes | None]:
    return dict(_rows(url, "SELECT log_seq, payload FROM v_dead_letter WHERE status = 'open'"))


_CHILD = """
import sys
from datetime import timedelta
from mesflow.retention import RetentionPolicy, run_retention
run_retention(sys.argv[1], RetentionPolicy(batch_rows=20, resume_margin=timedelta(minutes=10)),
              progress=lambda m: print(m, flush=True))
"""


def test_a_run_killed_midway_leaves_a_consistent_database(db_url: str) -> None:
    n = 20_000
    with psycopg.connect(db_url, autocommit=True) as conn:
        _seed_everything(conn, n_log=n)
    payloads = _open_payloads(db_url)
    assert all(p is not None for p in payloads.values()) and len(payloads) > 1000
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, db_url],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        deadline = time.monotonic() + 60
        while _one(db_url, "SELECT count(*) FROM ingest_log") > n // 2:
            assert child.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    left = _one(db_url, "SELECT count(*) FROM ingest_log")
    assert 10 < left < n, "killed in the middle of pruning the log"
    # Consistent: the log is a suffix, every open dead letter still has its payload.
    assert _one(db_url, "SELECT max(seq) - min(seq) + 1 = count(*) FROM ingest_log")
    assert _open_payloads(db_url) == payloads
    # The next run finishes the job; a run after it changes nothing.
    run_retention(db_url, POLICY)
    assert _one(db_url, "SELECT count(*) FROM ingest_log") == 10
    assert _open_payloads(db_url) == payloads
    after = _snapshot(db_url)
    assert sum(r.rows for r in run_retention(db_url, POLICY)) == 0
    assert _snapshot(db_url) == after


def test_periodic_retention_runs_until_stopped(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _seed_other_tables(conn)
    stop = threading.Event()
    worker = PeriodicRetention(db_url, POLICY, interval_s=0.2, stop=stop, first_delay_s=0.0)
    worker.start()
    deadline = time.monotonic() + 20
    while worker.runs < 2:
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.05)
    stop.set()
    worker.join(5)
    assert not worker.is_alive()
    assert _one(db_url, "SELECT count(*) FROM intake_delivery") == 1


def test_commands_print_what_went_and_what_would_go(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _seed_everything(conn)
    monkeypatch.setenv("MESFLOW_DATABASE_URL", db_url)
    status = CliRunner().invoke(main, ["retention", "status"])
    assert status.exit_code == 0, status.output
    line = next(ln for ln in status.output.splitlines() if ln.startswith("intake_delivery"))
    assert line.split()[1:2] == ["3"] and " 2 " in line  # 3 rows, 2 would go
    assert {s.table: s.would_go for s in retention_status(db_url, POLICY)}["intake_delivery"] == 2
    run = CliRunner().invoke(main, ["retention", "run"])
    assert run.exit_code == 0, run.output
    assert "intake_delivery" in run.output and "row(s) removed in total" in run.output
    assert _one(db_url, "SELECT count(*) FROM intake_delivery") == 1


def test_one_run_at_a_time_and_the_periodic_switch(db_url: str) -> None:
    from mesflow.retention import RETENTION_LOCK, RetentionBusy, start_periodic
    from mesflow.settings import Settings

    with psycopg.connect(db_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (RETENTION_LOCK,))
        with pytest.raises(RetentionBusy):
            run_retention(db_url, POLICY)
    stop = threading.Event()
    assert start_periodic(db_url, stop, Settings(retention_interval_s=0)) is None
    worker = start_periodic(db_url, stop, Settings(retention_interval_s=3600))
    assert worker is not None and worker.is_alive()
    stop.set()
    worker.join(5)
    assert not worker.is_alive()


# --- late_merge -------------------------------------------------------------------------------


def _late_merges(conn: psycopg.Connection[Any]) -> None:
    """Rows of every kind: (log_seq, machine, seen, merged); status rows say what is stored."""

    def days(n: int) -> datetime:
        return NOW - timedelta(days=n)

    rows = [
        (1, "IM-01", days(41), days(40)),  # merged and stored long ago: goes
        (2, "IM-02", days(41), days(40)),  # merged, rebuilt rows not stored yet: a replay waits
        (3, "IM-03", days(41), None),  # pending, its machine in the plant: will be merged
        (4, "IM-99", days(41), None),  # pending, machine gone from the plant: never merged
        (5, "IM-99", days(1), None),  # the same, but recent
        (6, "IM-01", days(2), days(1)),  # merged and stored, recent
        (7, "IM-04", days(41), days(40)),  # merged, the machine has no status row: not waited on
    ]
    conn.cursor().executemany(
        "INSERT INTO late_merge (log_seq, machine, seen_at, merged_at) VALUES (%s, %s, %s, %s)",
        rows,
    )
    conn.cursor().executemany(
        "INSERT INTO machine_status (machine, state, since, last_event_ts, updated_at) "
        "VALUES (%s, 'running', %s, %s, %s)",
        [("IM-01", days(1), days(1), NOW), ("IM-02", days(50), days(50), days(50))],
    )


def _waited_on(url: str, seqs: list[int]) -> list[int]:
    """Which of `seqs` a running `mesflow replay` would still wait on (its own function)."""
    from streams.rebuild import wait_for_merges

    out = []
    with psycopg.connect(url, autocommit=True) as conn:
        for seq in seqs:
            try:
                wait_for_merges(conn, seq, seq, timeout_s=0)
            except TimeoutError:
                out.append(seq)
    return out


def test_late_merges_go_once_no_replay_waits_on_them(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _late_merges(conn)
    seqs = list(range(1, 8))
    waited = _waited_on(db_url, seqs)
    assert waited == [2, 3, 4, 5]
    forever = RetentionPolicy(late_merge_days=0)
    assert {r.table: r.rows for r in run_retention(db_url, forever)}["late_merge"] == 0
    assert {s.table: s.would_go for s in retention_status(db_url, POLICY)}["late_merge"] == 3

    assert {r.table: r.rows for r in run_retention(db_url, POLICY)}["late_merge"] == 3
    kept = [s for (s,) in _rows(db_url, "SELECT log_seq FROM late_merge ORDER BY 1")]
    assert kept == [2, 3, 5, 6]
    # Every row a replay waited on stays, except the one of a machine no longer in the
    # plant that was recorded 41 days ago (a replay stops waiting after ten minutes).
    assert _waited_on(db_url, seqs) == [2, 3, 5]
    assert {r.table: r.rows for r in run_retention(db_url, POLICY)}["late_merge"] == 0
