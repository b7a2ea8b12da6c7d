"""The live results writer's gather window (streams/pg_sink.py, MESFLOW_RESULTS_GATHER_MS):
batches that reach the sink within the window commit in ONE transaction (one poll's rows
came as ~2 transactions, each costing the writer and PostgreSQL the same whatever its
size); a snapshot or the end does not wait for the window; a window of 0 writes each batch
as it comes. Rows written in one transaction share their `xmin`."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import psycopg

from streams.pg_sink import _ResultsPartition
from streams.records import StatusRow

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def _status(machine: str, good: int = 1) -> StatusRow:
    return StatusRow(machine, "running", T0, None, None, T0, good, 0)


def _xmins(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT machine, xmin::text::bigint FROM machine_status").fetchall()
    return {m: x for m, x in rows}


def test_batches_within_the_window_commit_together(db_url: str) -> None:
    part = _ResultsPartition(db_url, "gather", gather=timedelta(milliseconds=400))
    part.write_batch([[_status("G-1")]])
    time.sleep(0.05)  # the writer is waiting in its window now
    part.write_batch([[_status("G-2")]])
    time.sleep(0.05)
    part.write_batch([[_status("G-3")]])
    time.sleep(0.8)  # the window closed, untouched by snapshot(): it wrote on its own
    xmins = _xmins(db_url)
    assert set(xmins) == {"G-1", "G-2", "G-3"}
    assert len(set(xmins.values())) == 1, xmins  # one transaction
    part.close()


def test_without_a_window_each_batch_is_its_own_transaction(db_url: str) -> None:
    part = _ResultsPartition(db_url, "gather0")
    part.write_batch([[_status("N-1")]])
    time.sleep(0.3)
    part.write_batch([[_status("N-2")]])
    part.snapshot()
    xmins = _xmins(db_url)
    assert xmins["N-1"] != xmins["N-2"]
    part.close()


def test_a_snapshot_does_not_wait_for_the_window(db_url: str) -> None:
    # A 5 s window: a snapshot (every epoch) must commit what is gathered at once, or the
    # flow would stall for the window at every epoch.
    part = _ResultsPartition(db_url, "gather5", gather=timedelta(seconds=5))
    part.write_batch([[_status("S-1", good=7)]])
    started = time.monotonic()
    part.snapshot()
    assert time.monotonic() - started < 2.0
    assert "S-1" in _xmins(db_url)
    # Nothing gathered: a snapshot is a no-op for the writer, and the next batch still
    # commits (the flush marker was not taken for a batch).
    part.snapshot()
    part.write_batch([[_status("S-2")]])
    started = time.monotonic()
    part.close()
    assert time.monotonic() - started < 2.0
    assert {"S-1", "S-2"} <= set(_xmins(db_url))


def test_a_refused_row_in_a_gathered_transaction_loses_only_itself(db_url: str) -> None:
    # Gathered batches share one transaction, so one hostile row must not take the other
    # batches' rows with it: the refusal path writes them row by row as before.
    part = _ResultsPartition(db_url, "gather-bad", gather=timedelta(milliseconds=300))
    part.write_batch([[_status("R-1")]])
    part.write_batch([[StatusRow("R-2", "down", T0, "bad\x00reason", None, T0, 1, 0)]])
    part.write_batch([[_status("R-3", good=2**70)]])  # past int8: refused, never wrapped
    part.write_batch([[_status("R-4")]])
    part.snapshot()
    assert set(_xmins(db_url)) == {"R-1", "R-4"}
    with psycopg.connect(db_url) as conn:
        [(dead,)] = conn.execute(
            "SELECT count(*) FROM dead_letter WHERE reason = 'db_refused'"
        ).fetchall()
    assert dead == 0  # rows without an event seq: refused and logged, nothing to point at
    part.close()
