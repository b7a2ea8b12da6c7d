"""The results writer's statements (streams/pg_sink.py): a batch's rows go to PostgreSQL by
a binary COPY into staging tables kept across commits (ON COMMIT PRESERVE ROWS: emptying
ON COMMIT DELETE ROWS tables at every commit cost 10-70 ms per transaction), or as one
array per column (unnest) when that path refuses the batch. These tests hold the rows'
round trip, the refusal of a hostile row (the rest stored, the row dead-lettered), a large
batch, and that the writer's staging tables are left empty (tests/test_sink_encoding.py:
both paths store the same)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from streams.pg_sink import _ResultsPartition
from streams.records import (
    HourRow,
    IntervalDelete,
    IntervalRow,
    KpiRow,
    ReasonSetRow,
    ScrapSetRow,
    StatusRow,
)
from tests.helpers import feed

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def _write(url: str, *batches: list[Any]) -> _ResultsPartition:
    part = _ResultsPartition(url, "test-flow")
    for rows in batches:
        part.write_batch([rows])
        part.snapshot()  # waits until the batch is committed; raises if the writer failed
    return part


def _rows(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchall()


def _kpi(machine: str, start: datetime, **over: Any) -> KpiRow:
    values: dict[str, Any] = dict(
        machine=machine, bucket="hour", bucket_start=start,
        bucket_end=start + timedelta(hours=1), shift_date=None, shift_name=None,
        planned_s=3600.0, running_s=3000.0, microstop_s=12.5, microstop_count=3, idle_s=100.0,
        down_s=400.0, setup_s=0.0, offline_s=87.5, planned_stop_s=0.0, good=120, scrap=4,
        ideal_s=2900.0, failures=1, failure_s=400.0, all_good=120, all_scrap=4,
    )  # fmt: skip
    values.update(over)
    return KpiRow(**values)


def test_rows_round_trip_and_sets_are_replaced_whole(db_url: str) -> None:
    later = T0 + timedelta(minutes=5)
    first: list[Any] = [
        IntervalRow("IM-01", T0, later, "running", None, "WO-1", 300.0, None),
        IntervalRow("IM-01", later, None, "down", "模具故障", None, 0.0, False),
        IntervalRow("IM-02", T0, None, "idle", None, None, 0.0, True),
        StatusRow("IM-01", "down", later, "模具故障", "WO-1", later, 120, 4),
        StatusRow("IM-02", "idle", T0, None, None, T0, 0, 0),
        HourRow("IM-01", T0, 300.0, 0.0, 0.0, 0.0, 0.0, 0.0, 120, 4),
        _kpi("IM-01", T0),
        _kpi("IM-01", T0, bucket="shift", shift_date=date(2026, 11, 30), shift_name="白班"),
        ReasonSetRow("IM-01", "hour", T0, (("模具故障", 60.0, 1), ("换料", 30.0, 2))),
        ScrapSetRow("IM-01", T0, date(2026, 11, 30), "白班", (("short_shot", "P-100", 3),)),
    ]
    second: list[Any] = [
        IntervalDelete("IM-02", T0),
        ReasonSetRow("IM-01", "hour", T0, (("换料", 45.0, 3),)),  # 模具故障 re-attributed
        ScrapSetRow("IM-01", T0, date(2026, 11, 30), "白班", ()),  # its scrap moved away
        StatusRow("IM-01", "down", later, "模具故障", "WO-1", later, 121, 4),
    ]
    _write(db_url, first, second).close()
    assert _rows(
        db_url,
        "SELECT machine, start_ts, end_ts, state, reason, work_order, duration_s, is_microstop"
        " FROM machine_state_interval ORDER BY 1, 2",
    ) == [tuple(r) for r in first[:2]]
    assert _rows(
        db_url,
        "SELECT machine, state, since, reason, work_order, last_event_ts, good_total,"
        " scrap_total FROM machine_status ORDER BY 1",
    ) == [tuple(second[3]), tuple(first[4])]
    assert _rows(db_url, "SELECT bucket, shift_date, shift_name, microstop_count, ideal_s"
                 " FROM machine_kpi ORDER BY bucket") == [
        ("hour", None, None, 3, 2900.0),
        ("shift", date(2026, 11, 30), "白班", 3, 2900.0),
    ]  # fmt: skip
    assert _rows(db_url, "SELECT reason, seconds, stops FROM machine_kpi_reason") == [
        ("换料", 45.0, 3)
    ]
    assert _rows(db_url, "SELECT count(*) FROM machine_scrap") == [(0,)]
    assert _rows(db_url, "SELECT good, scrap FROM machine_hour") == [(120, 4)]


def test_a_refused_row_is_dead_lettered_and_the_rest_is_stored(db_url: str) -> None:
    feed(db_url, [{"id": "e1", "type": "state", "machine": "IM-03", "ts": T0.isoformat(),
                   "state": "running"}])  # fmt: skip
    [(seq,)] = _rows(db_url, "SELECT seq FROM ingest_log")
    rows: list[Any] = [
        StatusRow("IM-01", "running", T0, None, None, T0, 1, 0),
        _kpi("IM-03", T0, microstop_count=2**40 + 5),  # int4: refused, never wrapped
        StatusRow("IM-03", "down", T0, "bad\x00reason", None, T0, 1, 0),  # NUL: refused
        IntervalRow("IM-01", T0, None, "running", None, None, 0.0, None),
    ]
    _write(db_url, rows).close()
    assert _rows(db_url, "SELECT machine FROM machine_status") == [("IM-01",)]
    assert _rows(db_url, "SELECT machine FROM machine_state_interval") == [("IM-01",)]
    assert _rows(db_url, "SELECT count(*) FROM machine_kpi") == [(0,)]
    dead = _rows(db_url, "SELECT log_seq, reason, detail FROM dead_letter")
    assert [(s, r) for s, r, _ in dead] == [(seq, "db_refused")]  # one row per event
    assert "machine_kpi" in dead[0][2] or "machine_status" in dead[0][2]


def test_a_large_batch_leaves_the_staging_tables_empty(db_url: str) -> None:
    rows: list[Any] = []
    for m in range(50):
        for k in range(400):  # 20,000 intervals: a replay batch
            start = T0 + timedelta(seconds=10 * k)
            rows.append(
                IntervalRow(f"M-{m:03}", start, start + timedelta(seconds=10), "running",
                            None, None, 10.0, None)
            )  # fmt: skip
    part = _write(db_url, rows)
    try:
        assert _rows(db_url, "SELECT count(*), sum(duration_s) FROM machine_state_interval") == [
            (20_000, 200_000.0)
        ]
        assert part.conn is not None
        temp = part.conn.execute(
            "SELECT relname FROM pg_class WHERE relpersistence = 't' AND relkind = 'r'"
            " AND pg_table_is_visible(oid)"
        ).fetchall()
        # Only the staging tables (pg_sink.Upsert, row_stores.Staged), each left empty.
        assert all(name.startswith("stage_rows_") for (name,) in temp), temp
        for (name,) in temp:
            assert part.conn.execute(f"SELECT count(*) FROM {name}").fetchone() == (0,), name
    finally:
        part.close()


def test_a_staged_store_keeps_its_stage_empty_and_small(db_url: str) -> None:
    """The steps' staged stores (streams/row_stores.py) keep their staging table across
    commits (no emptying of every staging table at each commit); each write empties its
    own, and every TRUNCATE_EVERY writes truncates it, so dead rows do not pile up."""
    from streams import lots, row_stores

    store = lots.ACTIVITY
    n = 8 * row_stores.TRUNCATE_EVERY + 7
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("\n".join(row_stores.STAGING).encode())
        sizes: list[int] = []
        for i in range(n):
            with conn.transaction(), conn.cursor() as cur:
                rows = [
                    (100 * i + k, "IM-01", T0 + timedelta(seconds=i), "sign_in", f"op-{i}", None)
                    for k in range(100)
                ]
                store.write(cur, [*rows, rows[0]])  # a duplicate key: reduced to one row
            if i % 16 == 15:
                size = conn.execute(f"SELECT pg_relation_size('{store.stage}')").fetchone()
                assert size is not None
                sizes.append(int(size[0]))
        assert conn.execute(f"SELECT count(*) FROM {store.stage}").fetchone() == (0,)
        stored = conn.execute("SELECT count(DISTINCT seq) FROM operator_activity").fetchone()
        assert stored == (100 * n,)
        # Without the periodic TRUNCATE the stage grows by ~7 kB per write of 100 rows.
        assert max(sizes) <= 8192 * 80, sizes
