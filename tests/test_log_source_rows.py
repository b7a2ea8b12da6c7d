"""streams/log_source.py reads the log's rows exactly as a plain query does: the entries
built in C and the receipt times loaded once per run of equal values are the same values
(the same seq, payload, error and received_at, in the session's time zone)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from mesflow.ingest_log import LogEntry, LogRecord, append
from streams.log_source import PARTS, IngestLogSource, _horizon_row, _Reader

ZONES = ["UTC", "Asia/Shanghai", "America/New_York"]


def store(url: str) -> None:
    """Three appends (three receipt times), with an error row among them."""
    with psycopg.connect(url, autocommit=True) as conn:
        for k in range(3):
            records = [
                LogRecord("test", f'{{"n":{k * 10 + i}}}'.encode(), machine=f"M-{i % 4}")
                for i in range(7)
            ]
            records.append(LogRecord("test", b"{x", error="malformed: not JSON"))
            append(conn, records)
            conn.execute("SELECT pg_sleep(0.002)")


def reference(url: str, zone: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, options=f"-c TimeZone={zone}") as conn, conn.cursor() as cur:
        return cur.execute(
            "SELECT seq, payload, error, received_at FROM ingest_log ORDER BY seq"
        ).fetchall()


def read(url: str, zone: str, parts: list[int], batch_size: int) -> Iterator[LogEntry]:
    source = IngestLogSource(make_conninfo(url, options=f"-c TimeZone={zone}"))
    source.batch_size = batch_size
    reader = _Reader(source)
    for part in parts:
        reader.add(part, 0)
    while True:
        reader.awake = None
        rows = reader.poll(None)
        if not rows:
            break
        yield from rows
    assert reader.conn is not None
    reader.conn.close()


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("batch_size", [5, 1000])
def test_rows_read_equal_a_plain_query(db_url: str, zone: str, batch_size: int) -> None:
    store(db_url)
    expected = reference(db_url, zone)
    assert len({r[3] for r in expected}) == 3
    # Every partition (one process: the plain read), and a few (a cluster's worker).
    for parts in (list(PARTS), [p for p in PARTS if p % 2 == 0]):
        got = list(read(db_url, zone, parts, batch_size))
        assert all(type(e) is LogEntry for e in got)
        want = [
            r for r in expected if len(parts) == len(PARTS) or _part_of_row(db_url, r[0]) in parts
        ]
        assert [tuple(e) for e in got] == [tuple(r) for r in want]
        for e, r in zip(got, want, strict=True):
            assert e.received_at is not None
            assert e.received_at.isoformat() == r[3].isoformat()
            assert e.received_at.tzinfo == r[3].tzinfo


def _part_of_row(url: str, seq: int) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT part FROM ingest_log WHERE seq = %s", (seq,)).fetchone()
        assert row is not None
        return int(row[0])


def test_the_horizon_row_is_found_wherever_it_comes() -> None:
    entries = [LogEntry(s, b"{}", None, None) for s in (4, 5, 6)]
    for i in range(4):
        rows = list(entries)
        rows.insert(i, LogEntry(9, None, None, None))  # type: ignore[arg-type]
        assert _horizon_row(rows).seq == 9 and rows == entries


def test_a_replay_ends_at_its_last_seq_between_rows(db_url: str) -> None:
    """`upto` may fall in a gap of seqs (a skipped duplicate consumes one): the reader
    still reaches it, through the horizon, and reads nothing past it."""
    store(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM ingest_log WHERE seq IN (10, 11)")
    source = IngestLogSource(db_url, upto_seq=11)
    reader = _Reader(source)
    for part in PARTS:
        reader.add(part, 0)
    got: list[Any] = []
    for _ in range(20):
        if reader.done(0, source.upto()):
            break
        reader.awake = None
        got += reader.poll(source.upto())
    assert [e.seq for e in got] == list(range(1, 10))
    assert reader.done(0, 11)
    assert all(p == 11 for p in reader.positions.values())
