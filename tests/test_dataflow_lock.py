"""One dataflow per database, also across a PostgreSQL restart.

The lock is a session-level advisory lock: a restart of the server ends the session and
with it the lock. The running dataflow takes it again (a second dataflow started after that
is refused), and if another dataflow took it first while the database was back and ours
had none, ours exits at once with status 1, so that never two write the results.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from streams.runner import DATAFLOW_LOCK, Session, after_lost_lock
from tests.helpers import (
    SHANGHAI,
    Mesflow,
    OwnPostgres,
    dataflow_position,
    feed,
    log_position,
    mesflow_env,
    wait_until,
)


def _dataflow(url: str, tmp_path: Path, name: str) -> Mesflow:
    env = mesflow_env(url, tmp_path / name, MESFLOW_SNAPSHOT_SECONDS="0.5")
    proc = Mesflow("run", "dataflow", env=env, log=tmp_path / f"{name}.log")
    wait_until(
        lambda: "following the ingest log" in proc.output() or not proc.alive(),
        timeout=30,
        what="the dataflow to start",
    )
    return proc


def _working(url: str, proc: Mesflow) -> None:
    """Past its start-up: it has read and stored an event (a database restart while it
    is still starting is another matter: it exits with one line, for a supervisor)."""
    t = datetime.now(SHANGHAI) - timedelta(minutes=5)
    events = [{"id": "s", "type": "state", "machine": "IM-01", "ts": t.isoformat(), "state": "running"}]  # fmt: skip
    feed(url, events)

    def done() -> bool:
        assert proc.alive(), proc.output()
        return dataflow_position(url) >= log_position(url)

    wait_until(done, timeout=60, what="the dataflow to take in an event")


def _holder(url: str) -> int | None:
    """The backend pid holding the dataflow lock, if any (None also while the server is down)."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND objsubid = 1 AND classid = 0 AND objid = %s",
                (DATAFLOW_LOCK,),
            ).fetchone()
    except psycopg.OperationalError:
        return None
    return int(row[0]) if row else None


def test_the_lock_is_taken_again_after_a_postgres_restart(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    url = own_pg.url
    first = _dataflow(url, tmp_path, "first")
    try:
        _working(url, first)
        before = _holder(url)
        assert before is not None
        own_pg.restart(down_s=1.0)
        wait_until(lambda: _holder(url) is not None, timeout=30, what="the lock taken again")
        assert _holder(url) != before  # a new session
        # A second dataflow started now is refused: one clear line, non-zero exit.
        second = _dataflow(url, tmp_path, "second")
        assert second.proc.wait(30) != 0, second.output()
        assert "already running" in second.output(), second.output()
        assert "Traceback" not in second.output(), second.output()
        assert first.alive(), first.output()
        assert "dataflow lock lost" in first.output()
        assert "dataflow lock taken again" in first.output()
    finally:
        assert first.terminate(timeout=30) == 0, first.output()


def test_a_dataflow_whose_lock_another_took_stops_at_once(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    """While the database is back and ours has not re-taken the lock yet, another session
    takes it (as a second dataflow starting then would): ours must stop writing, now."""
    url = own_pg.url
    first = _dataflow(url, tmp_path, "first")
    other: psycopg.Connection | None = None
    try:
        _working(url, first)
        for _attempt in range(3):  # ours may win the race to the lock; then try again
            own_pg.crash()
            own_pg.start()
            deadline = time.monotonic() + 10
            while other is None and time.monotonic() < deadline:
                try:
                    conn = psycopg.connect(url, autocommit=True, connect_timeout=2)
                except psycopg.OperationalError:
                    time.sleep(0.01)
                    continue
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (DATAFLOW_LOCK,)).fetchone()
                if row and row[0]:
                    other = conn
                else:
                    conn.close()
                    break  # ours has it again
            if other is not None:
                break
        assert other is not None, "the dataflow always took its lock back first"
        code = first.proc.wait(30)
        assert code == 1, first.output()
        assert "another mesflow dataflow took the one-dataflow lock" in first.output()
    finally:
        if first.alive():
            first.kill9()
        if other is not None:
            other.close()


def test_after_lost_lock_waits_for_its_own_old_session_only() -> None:
    t = datetime(2026, 11, 29, tzinfo=UTC)
    ours = Session(100, t)
    assert after_lost_lock(None, ours) == "wait"
    assert after_lost_lock(Session(100, t), ours) == "wait"  # the server has not noticed yet
    assert after_lost_lock(Session(100, t.replace(hour=1)), ours) == "busy"  # a reused pid
    assert after_lost_lock(Session(101, t), ours) == "busy"
    assert after_lost_lock(Session(100, None), ours) == "busy"  # another role's session
