"""The results writer's two encodings of a machine result table (streams/pg_sink.py, Upsert):
the staged path (binary COPY into a staging table, one INSERT from it) stores exactly what
the array path (`unnest`) stores, and refuses what it refuses; what the staged path alone
refuses (a value its binary encoding does not take) is written by the array path, and a
row both refuse is dead-lettered with the array path's words."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import row_stores
from streams.pg_sink import (
    HOURS,
    INTERVALS,
    KPIS,
    ORDERS,
    STATUS,
    WORK_ORDERS,
    Upsert,
    _ResultsPartition,
    _upsert,
    _upsert_arrays,
)
from streams.records import IntervalRow, StatusRow
from tests.helpers import feed

UPSERTS = (INTERVALS, STATUS, HOURS, KPIS, ORDERS, WORK_ORDERS)
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8)),
         ZoneInfo("Europe/Berlin")]  # fmt: skip

# A key column takes few values, so a batch updates rows an earlier one wrote.
KEYS: dict[str, st.SearchStrategy[Any]] = {
    "text": st.sampled_from(["M-1", "M-2", "模具-3"]),
    "timestamptz": st.sampled_from([T0, T0 + timedelta(seconds=1.5)]),
}
CHECKED: dict[str, st.SearchStrategy[Any]] = {  # columns with a CHECK: values it takes
    "bucket": st.sampled_from(["hour", "shift"]),
    "status": st.sampled_from(["open", "closed"]),
}
NO_NUL = st.characters(blacklist_characters="\x00")
TEXT = st.one_of(
    st.text(NO_NUL, max_size=12),
    st.builds(lambda s, n: s * n, st.text(NO_NUL, min_size=1, max_size=3), st.integers(100, 3000)),
)
# Values the array path stores: the staged path must store the same.
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "text": TEXT,
    "timestamptz": st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from(ZONES),
    ),
    "float8": st.floats(),  # NaN, infinities, -0.0, subnormals
    "int8": st.integers(-(2**63), 2**63 - 1),
    "int4": st.integers(-(2**31), 2**31 - 1),
    "bool": st.booleans(),
    "date": st.dates(),
}  # fmt: skip
# Values it refuses: the staged path must refuse them too (then the arrays decide).
HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "text": st.builds(lambda a, b: f"{a}\x00{b}", st.text(NO_NUL, max_size=3), st.text(max_size=3)),
    "int8": st.one_of(st.integers(2**63, 2**70), st.integers(-(2**70), -(2**63) - 1)),
    "int4": st.one_of(st.integers(2**31, 2**45), st.integers(-(2**45), -(2**31) - 1)),
}  # fmt: skip


def _not_null(db_url: str, table: str) -> set[str]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = %s AND is_nullable = 'NO'",
            (table,),
        ).fetchall()
    return {name for (name,) in rows}


def _batch(
    draw: Callable[..., Any], upsert: Upsert, not_null: set[str], *, min_size: int
) -> list[tuple[Any, ...]]:
    def column(name: str, kind: str) -> st.SearchStrategy[Any]:
        if name in CHECKED:
            return CHECKED[name]
        if name in upsert.key:
            return KEYS[kind]
        value = VALUES[kind]
        return value if name in not_null else st.one_of(st.none(), value)

    row = st.tuples(*(column(c, t) for c, t in upsert.columns))
    rows = [list(r) for r in draw(st.lists(row, min_size=min_size, max_size=6))]
    if rows and draw(st.integers(0, 3)) == 0:  # now and then one hostile value
        r, i = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, len(upsert.columns) - 1))
        name, kind = upsert.columns[i]
        hostile = HOSTILE.get(kind, st.none())
        rows[r][i] = draw(st.one_of(st.none(), hostile) if name in not_null else hostile)
    at = [i for i, (c, _) in enumerate(upsert.columns) if c in upsert.key]
    # As the sink's batch: the last row per key.
    return list({tuple(r[i] for i in at): tuple(r) for r in rows}.values())


def _contents(cur: psycopg.Cursor[Any], upsert: Upsert) -> list[Any]:
    # As text: -0 and NaN compare as stored, timestamps to the microsecond.
    keys = ", ".join(upsert.key)
    return cur.execute(
        f"SELECT t::text FROM (SELECT {upsert.names} FROM {upsert.table} ORDER BY {keys}) t"
    ).fetchall()


Write = Callable[[psycopg.Cursor[Any], Upsert, list[Any]], None]


def _outcome(
    conn: psycopg.Connection, upsert: Upsert, before: list[Any], rows: list[Any], write: Write
) -> list[Any] | BaseException:
    """What `write` leaves in the table after the array path wrote `before` (rolled back)."""
    try:
        with conn.transaction(force_rollback=True), conn.cursor() as cur:
            if before:
                try:
                    with conn.transaction():
                        _upsert_arrays(cur, upsert, before)
                except Exception:
                    pass  # a refused first batch: the table stays as it was
            write(cur, upsert, rows)
            return _contents(cur, upsert)
    except Exception as err:
        return err


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_staged_rows_are_stored_as_the_arrays_store_them(db_url: str, data: st.DataObject) -> None:
    upsert = data.draw(st.sampled_from(UPSERTS))
    not_null = _not_null(db_url, upsert.table)
    before = _batch(data.draw, upsert, not_null, min_size=0)
    rows = _batch(data.draw, upsert, not_null, min_size=1)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("\n".join(row_stores.STAGING).encode())
        arrays = _outcome(conn, upsert, before, rows, _upsert_arrays)
        staged = _outcome(conn, upsert, before, rows, _upsert)
        if isinstance(arrays, BaseException):
            assert isinstance(staged, BaseException), (arrays, staged)
        else:
            assert staged == arrays
        with conn.cursor() as cur:  # the staging table is left empty
            assert cur.execute(f"SELECT count(*) FROM {upsert.staged}").fetchone() == (0,)


def test_well_typed_rows_take_the_staged_path(db_url: str) -> None:
    """NaN, infinities, -0.0, None, any time zone, long and non-ASCII text: the staged path
    stores them itself (no second write), as the arrays would."""
    rows: list[Any] = [
        ("M-1", T0, None, "running", None, "WO-1", float("nan"), None),
        ("M-1", T0 + timedelta(seconds=1), T0.astimezone(ZONES[1]), "down", "模具故障" * 500,
         None, float("-inf"), True),
        ("M-2", T0.astimezone(ZONES[3]), None, "idle", "", "", -0.0, False),
    ]  # fmt: skip
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("\n".join(row_stores.STAGING).encode())
        arrays = _outcome(conn, INTERVALS, [], rows, _upsert_arrays)
        staged = _outcome(conn, INTERVALS, [], rows, _upsert)
    assert not isinstance(staged, BaseException), staged
    assert staged == arrays


def test_what_only_the_staged_path_refuses_is_stored_and_a_nul_is_dead_lettered(
    db_url: str,
) -> None:
    """A naive timestamp (the binary encoding refuses it; the array path takes it, in the
    session's time zone) is stored by the fallback; a NUL in text is refused by both paths,
    and its dead letter says what the array path said."""
    feed(db_url, [{"id": "e1", "type": "state", "machine": "IM-03", "ts": T0.isoformat(),
                   "state": "running"}])  # fmt: skip
    part = _ResultsPartition(db_url, "test-flow")
    try:
        part.write_batch([[
            StatusRow("IM-01", "running", T0.replace(tzinfo=None), None, None, T0, 1, 0),
            StatusRow("IM-03", "down", T0, "bad\x00reason", None, T0, 1, 0),
            IntervalRow("IM-01", T0, None, "running", None, None, float("nan"), None),
        ]])  # fmt: skip
        part.snapshot()
    finally:
        part.close()
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT machine, since FROM machine_status").fetchall() == [
            ("IM-01", T0)
        ]
        assert conn.execute("SELECT duration_s::text FROM machine_state_interval").fetchall() == [
            ("NaN",)
        ]
        [(reason, detail)] = conn.execute("SELECT reason, detail FROM dead_letter").fetchall()
    assert reason == "db_refused"
    assert "machine_status row" in detail
    assert "PostgreSQL text fields cannot contain NUL (0x00) bytes" in detail  # psycopg's words


def test_staging_tables_keep_their_rows_across_commits(db_url: str) -> None:
    """The result tables' staging tables are ON COMMIT PRESERVE ROWS: an ON COMMIT DELETE
    ROWS table would make PostgreSQL empty every temporary table of the session at every
    commit (10-70 ms)."""
    part = _ResultsPartition(db_url, "test-flow")
    try:
        conn = part._connection()
        for upsert in UPSERTS:
            conn.execute(f"INSERT INTO {upsert.staged} DEFAULT VALUES")  # commits at once
            assert conn.execute(f"SELECT count(*) FROM {upsert.staged}").fetchone() == (1,)
            conn.execute(f"DELETE FROM {upsert.staged}")
    finally:
        part.close()


def test_board_rollups_follow_a_staged_kpi_upsert(db_url: str) -> None:
    """machine_kpi's statement triggers (sql/036) see the same transition tables when the
    upsert reads the staging table: a shift row moved to another date moves its reasons."""
    from datetime import date

    from streams.pg_sink import _replace_reasons

    def kpi(machine: str, day: date, name: str) -> tuple[Any, ...]:
        return (machine, "shift", T0, T0 + timedelta(hours=8), day, name, 1.0, 2.0, 3.0, 1,
                1.0, 1.0, 1.0, 1.0, 1.0, 5, 1, 1.0, 1, 1.0, 5, 1)  # fmt: skip

    def rollups(write: Write) -> list[Any]:
        with conn.transaction(force_rollback=True), conn.cursor() as cur:
            write(cur, KPIS, [kpi("M-1", date(2026, 11, 30), "day"), kpi("M-2", T0.date(), "day")])
            _replace_reasons(cur, [(("M-1", "shift", T0), (("jam", 10.5, 2),)),
                                   (("M-2", "shift", T0), (("jam", 1.25, 1),))])  # fmt: skip
            write(cur, KPIS, [kpi("M-1", date(2026, 12, 1), "night")])
            return cur.execute(
                "SELECT shift_date, shift_name, reason, seconds, stops, n"
                " FROM board_reason_shift WHERE n <> 0 ORDER BY 1, 2, 3"
            ).fetchall()

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("\n".join(row_stores.STAGING).encode())
        arrays, staged = rollups(_upsert_arrays), rollups(_upsert)
    assert len(arrays) == 2
    assert staged == arrays
