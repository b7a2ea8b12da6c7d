"""Guarantees of the live dataflow (`mesflow run dataflow`), each observed from outside:

- its throttle timer writes the figures of a machine that went quiet within about a second;
- SIGTERM stops it cleanly (exit 0, position saved) and a restart resumes without loss or
  double count;
- its source and its sink ride out a PostgreSQL crash and restart: results stay exact;
- a row the database refuses is dead-lettered `db_refused` and the flow goes on;
- a sink writer that fails takes the process down with a non-zero exit.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import (
    SHANGHAI,
    Mesflow,
    OwnPostgres,
    caught_up,
    clean_replay,
    count,
    dataflow_position,
    diff_snapshots,
    feed,
    floor_events,
    log_position,
    mesflow_env,
    random_events,
    start_dataflow,
    table_snapshot,
    wait_until,
)

# Short epochs: a restart redoes little, and a test needs not wait long for a snapshot.
SNAPSHOT = {"MESFLOW_SNAPSHOT_SECONDS": "0.5"}


def _recent(minutes: float) -> datetime:
    return datetime.now(SHANGHAI) - timedelta(minutes=minutes)


def _events(machines: list[str], n: int, seed: int) -> list[dict[str, Any]]:
    """A random stream that ends before now (live: a future event would be refused)."""
    return random_events(machines, n, seed=seed, start=_recent(12 * 60).isoformat())


def _dataflow(url: str, tmp_path: Path) -> Mesflow:
    return start_dataflow(mesflow_env(url, tmp_path / "var", **SNAPSHOT), tmp_path / "dataflow.log")


_caught_up = caught_up


def _status_good(url: str, machine: str) -> int:
    return count(url, "SELECT good_total FROM machine_status WHERE machine = %s", (machine,))


def _status_is(url: str, machine: str, good: int) -> bool:
    return _status_good(url, machine) == good


def _hour_good(url: str, machine: str) -> int:
    return count(url, "SELECT sum(good) FROM machine_hour WHERE machine = %s", (machine,))


def _written(url: str, machine: str) -> tuple[int, int, datetime, datetime]:
    """The machine's status and hour good counts and when each was last written (the
    database's clock_timestamp() in the sink's transaction), read in one snapshot."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT s.good_total, h.good, s.updated_at, h.updated_at FROM machine_status s, "
            "(SELECT sum(good)::bigint AS good, max(updated_at) AS updated_at "
            " FROM machine_hour WHERE machine = %s) h WHERE s.machine = %s",
            (machine, machine),
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2], row[3]


def _status_state(url: str, machine: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT state FROM machine_status WHERE machine = %s", (machine,)
        ).fetchone()
    return None if row is None else str(row[0])


def test_timer_flushes_a_quiet_machine(db_url: str, tmp_path: Path) -> None:
    """Live, a new state shows at once; counters and figures within the 1 s throttle,
    written by the timer when the machine goes quiet."""
    proc = _dataflow(db_url, tmp_path)
    try:
        t0 = _recent(30)
        feed(db_url, [
            {"id": "s", "type": "state", "machine": "IM-01", "ts": t0.isoformat(), "state": "running"},
            {"id": "c1", "type": "count", "machine": "IM-01", "ts": (t0 + timedelta(seconds=1)).isoformat(), "good": 1},
        ])  # fmt: skip
        # Generous deadlines: on a loaded 2-core machine the flow may take seconds to
        # answer; the timing asserted below is measured by the database's clock instead.
        wait_until(lambda: _status_good(db_url, "IM-01") == 1, timeout=60, what="the first count")
        # The first batch wrote all figures and started the 1 s throttle. A count and a
        # state change within that second: the new state is written at once (with the
        # counters as they stand), the hour figures are left to the timer; then the
        # machine goes quiet.
        quiet_since: datetime | None = None
        last = 0
        state = "running"
        for i in range(2, 12):
            state = "idle" if state == "running" else "running"
            ts = t0 + timedelta(seconds=i)
            feed(db_url, [
                {"id": f"c{i}", "type": "count", "machine": "IM-01", "ts": ts.isoformat(), "good": 1},
                {"id": f"s{i}", "type": "state", "machine": "IM-01", "ts": (ts + timedelta(milliseconds=500)).isoformat(), "state": state},
            ])  # fmt: skip
            wait_until(
                partial(lambda s: _status_state(db_url, "IM-01") == s, state),
                timeout=60,
                what=f"state {i}",
            )
            status, hour, status_at, _ = _written(db_url, "IM-01")
            if status == i and hour < i:
                last, quiet_since = i, status_at
                break
            time.sleep(1.2)  # let the throttle expire, then try again
        assert quiet_since is not None, (
            "never caught the figures throttled; the test proves nothing"
        )
        wait_until(
            lambda: _hour_good(db_url, "IM-01") == last,
            timeout=60,
            what="the timer to write the quiet machine's hour figures",
        )
        _, _, status_at, hour_at = _written(db_url, "IM-01")
        # From the last event's write to the timer's (the throttle is 1 s), both stamped by
        # the database: the test's own polling delays do not count.
        flushed_after = (hour_at - quiet_since).total_seconds()
        print(f"timer: hour figures written {flushed_after:.2f} s after the last event's")
        assert flushed_after < 2.5, f"figures written {flushed_after:.2f}s after the last event"
    finally:
        assert proc.terminate() == 0, proc.output()


def test_sigterm_stops_cleanly_and_resumes_exactly(
    db_url: str, ref_db_url: str, tmp_path: Path
) -> None:
    machines = ["IM-01", "IM-02", "CNC-01", "CNC-02"]
    start = _recent(12 * 60).isoformat()
    # Machine signals with people and quality reports among them (issue 13's steps too).
    events = sorted(
        _events(machines, 3000, seed=21) + floor_events(machines, 100, seed=21, start=start),
        key=lambda e: datetime.fromisoformat(e["ts"]),
    )
    feed(db_url, events[:1500])
    proc = _dataflow(db_url, tmp_path)
    _caught_up(db_url, proc)
    position = dataflow_position(db_url)
    assert proc.terminate(timeout=20) == 0, proc.output()
    assert "Traceback" not in proc.output()

    feed(db_url, events[1500:])  # arrives while the dataflow is down
    proc = _dataflow(db_url, tmp_path)
    try:
        # It resumes from its saved position, not from the start of the log.
        wait_until(lambda: "resuming the ingest log after seq" in proc.output(), what="resume")
        resumed = re.findall(r"resuming the ingest log after seq (\d+)", proc.output())
        assert int(resumed[-1]) == position
        _caught_up(db_url, proc)
    finally:
        assert proc.terminate(timeout=20) == 0, proc.output()

    # Overdue patrols: a live flow flags them by its wall-clock timer (up to a minute
    # later), a replay at its end from the last event time; tests/test_inspections_flow.py
    # checks both ways. Everything else must be equal (helpers.WALL_CLOCK_DECIDED).
    want = clean_replay(db_url, ref_db_url, tmp_path / "rec-ref", live=True)
    got = table_snapshot(db_url, live=True)
    assert got["labor_segment"] and got["quality_record"] and got["inspection"]
    assert got["inspection_run"] and got["inspection_flag"]
    assert not diff_snapshots(got, want), diff_snapshots(got, want)


def _feed_through_outages(url: str, events: list[dict[str, Any]], done: threading.Event) -> None:
    """A collector's behaviour: append in small batches, keep retrying while the database
    is away (an event appended twice is stored once: it has an id)."""
    for i in range(0, len(events), 40):
        while True:
            try:
                feed(url, events[i : i + 40])
                break
            except psycopg.OperationalError:
                time.sleep(0.2)
        time.sleep(0.05)
    done.set()


def test_postgres_restart_under_source_and_sink(
    own_pg: OwnPostgres, ref_db_url: str, tmp_path: Path
) -> None:
    url = own_pg.url
    events = _events(["IM-01", "IM-02", "IM-03", "CNC-01"], 2400, seed=22)
    proc = _dataflow(url, tmp_path)
    try:
        done = threading.Event()
        feeder = threading.Thread(target=_feed_through_outages, args=(url, events, done))
        feeder.start()
        for _ in range(2):  # a crash while events arrive, and another once more were read
            wait_until(lambda: dataflow_position(url) > 300, what="the dataflow to be working")
            own_pg.restart(down_s=2.0)
            time.sleep(2.0)
        feeder.join(timeout=120)
        assert done.is_set()
        _caught_up(url, proc, timeout=90)
        assert proc.alive(), proc.output()
        # Both ends did see the database go away, and went on.
        assert "ingest log unreachable" in proc.output()
        assert "results database unreachable" in proc.output()
    finally:
        assert proc.terminate(timeout=20) == 0, proc.output()
    assert count(url, "SELECT count(*) FROM ingest_log") == len(events)
    # Overdue patrols are decided by the wall clock live, by the last event time in a
    # replay (helpers.WALL_CLOCK_DECIDED): compare everything else.
    want = clean_replay(url, ref_db_url, tmp_path / "rec-ref", live=True)
    got = table_snapshot(url, live=True)
    assert got["inspection_run"], "no inspection runs: the comparison of them proves nothing"
    assert not diff_snapshots(got, want), diff_snapshots(got, want)


def test_refused_row_is_dead_lettered_and_the_flow_goes_on(db_url: str, tmp_path: Path) -> None:
    # A constraint the code does not know of: PostgreSQL itself refuses the rows.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE machine_state_interval ADD CONSTRAINT no_refused_wo "
            "CHECK (work_order IS DISTINCT FROM 'WO-REFUSED')"
        )
    t0 = _recent(60)

    def at(s: int) -> str:
        return (t0 + timedelta(seconds=s)).isoformat()

    proc = _dataflow(db_url, tmp_path)  # in a child: a flow that fails must not take pytest
    try:
        feed(db_url, [
            {"id": "a1", "type": "state", "machine": "IM-01", "ts": at(0), "state": "running"},
            {"id": "b1", "type": "state", "machine": "IM-02", "ts": at(0), "state": "running"},
            {"id": "a2", "type": "report", "kind": "wo_start", "machine": "IM-01", "ts": at(10), "work_order": "WO-REFUSED"},
            {"id": "a3", "type": "state", "machine": "IM-01", "ts": at(20), "state": "idle"},
            {"id": "b2", "type": "count", "machine": "IM-02", "ts": at(30), "good": 3},
        ])  # fmt: skip
        _caught_up(db_url, proc)
        # The flow goes on after the refusal: later events are stored.
        feed(db_url, [
            {"id": "b3", "type": "state", "machine": "IM-02", "ts": at(40), "state": "idle"},
            {"id": "a4", "type": "report", "kind": "wo_end", "machine": "IM-01", "ts": at(50), "work_order": "WO-REFUSED"},
            {"id": "a5", "type": "state", "machine": "IM-01", "ts": at(60), "state": "running"},
        ])  # fmt: skip
        _caught_up(db_url, proc)
        assert proc.alive(), proc.output()
    finally:
        assert proc.terminate() == 0, proc.output()

    with psycopg.connect(db_url) as conn:
        dead = conn.execute(
            "SELECT d.reason, d.detail, l.payload FROM dead_letter d "
            "JOIN ingest_log l ON l.seq = d.log_seq"
        ).fetchall()
        im2 = conn.execute(
            "SELECT state FROM machine_state_interval WHERE machine = 'IM-02' ORDER BY start_ts"
        ).fetchall()
        im1 = conn.execute(
            "SELECT state, work_order FROM machine_state_interval WHERE machine = 'IM-01' "
            "ORDER BY start_ts"
        ).fetchall()
    assert dead, "nothing was dead-lettered"
    assert {r[0] for r in dead} == {"db_refused"}
    assert all(b'"IM-01"' in bytes(r[2]) for r in dead)  # an event of the refused machine
    assert all("machine_state_interval" in r[1] and "WO-REFUSED" in r[1] for r in dead)
    # The other machine, and the rows of IM-01 the database accepted, are stored.
    assert im2 == [("running",), ("idle",)]
    assert ("running", None) in im1 and all(wo is None for _, wo in im1)
    assert dataflow_position(db_url) == log_position(db_url)


def test_a_failing_writer_takes_the_process_down(db_url: str, tmp_path: Path) -> None:
    proc = _dataflow(db_url, tmp_path)
    t0 = _recent(10)
    try:
        feed(db_url, [{"id": "x1", "type": "state", "machine": "IM-01", "ts": t0.isoformat(), "state": "running"}])  # fmt: skip
        wait_until(lambda: dataflow_position(db_url) > 0, what="the first event")
        # Not a refused row, not a lost connection: a fault the sink cannot handle.
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE machine_status RENAME TO machine_status_gone")
        ts = (t0 + timedelta(seconds=5)).isoformat()
        feed(db_url, [{"id": "x2", "type": "state", "machine": "IM-01", "ts": ts, "state": "idle"}])
        try:
            code = proc.proc.wait(30)
        except Exception:
            pytest.fail(f"the dataflow kept running with a dead writer:\n{proc.output()}")
        assert code != 0
    finally:
        if proc.alive():
            proc.kill9()


def test_int4_out_of_range_is_refused_not_wrapped() -> None:
    """psycopg's binary int4 dumper would store 2**40 + 5 as 5: the sink refuses it."""
    from streams.pg_sink import KPIS, REFUSALS

    n = len(KPIS.columns)
    row = [0] * n
    row[KPIS.int4_columns[0]] = 2**40 + 5
    with pytest.raises(REFUSALS):
        KPIS.check([tuple(row)])
    row[KPIS.int4_columns[0]] = 2**31 - 1
    KPIS.check([tuple(row)])


def test_sink_writes_around_rows_the_database_refuses(db_url: str) -> None:
    """The results writer alone: an int8 overflow (refused by psycopg before sending) and
    a NUL in text (refused by PostgreSQL) leave out their rows only; the rest commits."""
    from streams.pg_sink import ResultsSink
    from streams.records import Progress, StatusRow

    t = _recent(5)
    feed(db_url, [
        {"id": "o1", "type": "count", "machine": "IM-01", "ts": t.isoformat(), "good": 1},
        {"id": "o2", "type": "count", "machine": "IM-02", "ts": t.isoformat(), "good": 1},
        {"id": "o3", "type": "count", "machine": "IM-03", "ts": t.isoformat(), "good": 1},
    ])  # fmt: skip
    seqs = dict(
        (m, count(db_url, "SELECT max(seq) FROM ingest_log WHERE machine = %s", (m,)))
        for m in ("IM-01", "IM-02", "IM-03")
    )
    part = ResultsSink(db_url).build_part("results", "results", None)
    try:
        part.write_batch([
            StatusRow("IM-01", "running", t, None, None, t, 2**70, 0),
            StatusRow("IM-02", "running", t, None, "WO-\x00", t, 1, 0),
            StatusRow("IM-03", "running", t, None, None, t, 7, 0),
            Progress(max(seqs.values()), 3, 0),
        ])  # fmt: skip
        part.snapshot()  # waits for the commit; raises if the writer failed
    finally:
        part.close()
    with psycopg.connect(db_url) as conn:
        status = conn.execute("SELECT machine, good_total FROM machine_status").fetchall()
        dead: dict[int, str] = dict(
            conn.execute("SELECT log_seq, reason FROM dead_letter").fetchall()
        )
    assert status == [("IM-03", 7)]
    assert dead == {seqs["IM-01"]: "db_refused", seqs["IM-02"]: "db_refused"}
    assert dataflow_position(db_url) == max(seqs.values())
