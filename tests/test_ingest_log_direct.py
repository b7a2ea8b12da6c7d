"""The ingest log's direct path: a large batch copied straight into the log when none of its
keys is there yet, else the checked path, with the same outcome either way."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from mesflow.ingest_log import DIRECT_FROM, LogRecord, append, error_record, record_for
from streams.replay import prefetched


def _event(i: int, good: int = 1, source: str = "mqtt:t") -> LogRecord:
    return record_for(
        source,
        {
            "type": "count",
            "machine": f"IM-{i % 7:02d}",
            "ts": "2026-11-20T08:00:00+08:00",
            "good": good,
            "id": f"{source}-ev-{i}",
        },
    )


def _staged(conn: psycopg.Connection) -> bool:
    """Did this session take the checked path (its staging table exists)?"""
    row = conn.execute("SELECT to_regclass('pg_temp.ingest_stage') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _log(db_url: str) -> list[tuple[int, str, str | None]]:
    with psycopg.connect(db_url) as conn:
        return [
            (int(r[0]), r[1], r[2])
            for r in conn.execute("SELECT seq, source, error FROM ingest_log ORDER BY seq")
        ]


def test_a_large_new_batch_is_copied_directly(db_url: str) -> None:
    batch = [_event(i) for i in range(DIRECT_FROM + 36)]
    with psycopg.connect(db_url, autocommit=True) as conn:
        res = append(conn, batch)
        assert not _staged(conn)  # no staging table: the direct path
    rows = _log(db_url)
    assert res.new == len(batch) == len(rows)
    assert (res.first_seq, res.last_seq) == (rows[0][0], rows[-1][0])


def test_a_small_batch_takes_the_checked_path(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert append(conn, [_event(i) for i in range(DIRECT_FROM - 1)]).new == DIRECT_FROM - 1
        assert _staged(conn)


def test_a_stored_key_sends_the_batch_the_checked_way(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        append(conn, [_event(0), _event(1)])
        # ev-0 again as it was (a duplicate), ev-1 with other content (a conflict).
        batch = [_event(0), _event(1, good=9)] + [_event(i) for i in range(2, 100)]
        res = append(conn, batch)
        assert _staged(conn)
    rows = _log(db_url)
    errors = [e for _, _, e in rows if e]
    assert res.new == 99 and len(rows) == 101
    assert len(errors) == 1 and errors[0].startswith("id_conflict: ")
    assert (res.first_seq, res.last_seq) == (rows[2][0], rows[-1][0])
    # The failed copy drew seqs: a gap, which readers do not mind, and nothing else.
    assert rows[2][0] > rows[1][0]


def test_a_key_twice_in_one_large_batch(db_url: str) -> None:
    batch = [_event(i) for i in range(100)] + [_event(0)]
    with psycopg.connect(db_url, autocommit=True) as conn:
        res = append(conn, batch)
    assert res.new == 100 and len(_log(db_url)) == 100


def test_replaying_the_same_batch_stores_nothing(db_url: str) -> None:
    batch = [_event(i) for i in range(200)]
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert append(conn, batch).new == 200
        again = append(conn, batch)
    assert (again.new, again.first_seq, again.last_seq) == (0, None, None)
    assert len(_log(db_url)) == 200


def test_direct_append_is_all_or_nothing(db_url: str) -> None:
    """A batch that breaks off in the middle of the copy (here: its iteration raises, as a
    dropped connection would) leaves no row behind, and the connection goes on."""

    class Breaks(list[LogRecord]):
        def __iter__(self) -> Iterator[LogRecord]:
            for i, r in enumerate(list.__iter__(self)):
                if i == 70:
                    raise RuntimeError("the line went down")
                yield r

    with psycopg.connect(db_url, autocommit=True) as conn:
        with pytest.raises(RuntimeError, match="went down"):
            append(conn, Breaks(_event(i) for i in range(100)))
        assert _log(db_url) == []
        assert append(conn, [_event(i) for i in range(100)]).new == 100


def test_hostile_text_on_the_direct_path(db_url: str) -> None:
    """NUL and lone surrogates in sources and details are escaped on this path too."""
    batch = [
        error_record(f"mqtt:\x00bad\ud800{i}", b"\x00\xff", "bad_text", "detail \x00 \udfff")
        for i in range(DIRECT_FROM)
    ]
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert append(conn, batch).new == DIRECT_FROM
        assert not _staged(conn)
    rows = _log(db_url)
    assert rows[0][1] == "mqtt:\\x00bad\\ud8000"
    assert rows[0][2] == "bad_text: detail \\x00 \\udfff"


def test_the_fallback_keeps_an_outer_transaction(db_url: str) -> None:
    """change_control appends inside its own transaction: a refused direct copy rolls back
    to a savepoint, not the caller's work."""
    with psycopg.connect(db_url) as conn:
        append(conn, [_event(0)])
        conn.commit()
        with conn.transaction():
            conn.execute("INSERT INTO dataflow_progress (flow, last_seq) VALUES ('outer-test', 7)")
            res = append(conn, [_event(i) for i in range(100)])
        assert res.new == 99
        row = conn.execute(
            "SELECT last_seq FROM dataflow_progress WHERE flow = 'outer-test'"
        ).fetchone()
        assert row == (7,)
    assert len(_log(db_url)) == 100


def test_concurrent_large_appends_keep_their_seq_ranges(db_url: str) -> None:
    """Two writers at once: each batch's reported range holds exactly its own rows."""
    results: dict[str, list[tuple[int, int, int]]] = {"a": [], "b": []}

    def write(name: str) -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            for k in range(5):
                batch = [_event(k * 1000 + i, source=f"src-{name}") for i in range(150)]
                res = append(conn, batch)
                assert res.first_seq is not None and res.last_seq is not None
                results[name].append((res.new, res.first_seq, res.last_seq))

    threads = [threading.Thread(target=write, args=(n,)) for n in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = _log(db_url)
    assert len(rows) == 1500
    for name, ranges in results.items():
        for new, first, last in ranges:
            inside = [src for seq, src, _ in rows if first <= seq <= last]
            assert new == 150 and inside == [f"src-{name}"] * 150


def test_prefetched_keeps_order_and_raises_where_it_failed() -> None:
    def items() -> Iterator[int]:
        yield from range(5)
        raise ValueError("line 6 unreadable")

    got: list[int] = []
    with pytest.raises(ValueError, match="line 6"):
        for x in prefetched(items()):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


def test_prefetched_stops_its_producer_when_closed_early() -> None:
    produced: list[int] = []

    def items() -> Iterator[int]:
        for i in range(10_000):
            produced.append(i)
            yield i

    it = prefetched(items(), depth=2)
    assert next(it) == 0
    it.close()  # the consumer gave up (a failed append)
    time.sleep(0.3)
    settled = len(produced)
    time.sleep(0.3)
    assert settled == len(produced) < 10  # stopped, a few items ahead at most
    assert not any(t.name == "replay-prefetch" for t in threading.enumerate())


def test_prefetched_producer_ends_even_when_its_last_word_is_not_taken() -> None:
    """The producer has read everything and waits to hand over its end (or its error)
    when the consumer gives up: it must not wait for ever."""

    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("never seen")

    for source, first in ((iter(range(2)), 0), (failing(), 1)):
        it = prefetched(source, depth=1)
        assert next(it) == first
        time.sleep(0.3)  # the producer now waits on a full queue
        started = time.monotonic()
        it.close()
        assert time.monotonic() - started < 1.0
        assert not any(t.name == "replay-prefetch" for t in threading.enumerate())
