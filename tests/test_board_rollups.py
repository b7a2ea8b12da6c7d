"""Board rollups (sql/036_board_rollups.sql): board_reason_shift and board_scrap_day always hold
what the plant's Pareto and scrap Pareto would add up from the rows themselves, whatever
writes them (the dataflow's sink, a retention run, an UPDATE by hand, a TRUNCATE), and two
writers at once neither wait for each other nor deadlock. The plant's Pareto and scrap read
from them return what the queries over every machine's rows returned (their text kept here).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import astuple
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from bench.board_queries_bench import REASONS, fill
from dashboards import analytics_queries as aq
from dashboards import scrap_queries as sq
from dashboards.queries import Database
from mesflow.plant import PlantConfig
from mesflow.report import Scope, _scope_filter
from streams.replay import replay_file
from tests.conftest import _with_db
from tests.helpers import random_events, write_jsonl

FIRST = date(2026, 10, 1)
DAYS = 3

# The rollups' definition: the sums over the rows themselves, per key (n = rows).
WANT_REASONS = """
SELECT k.shift_date, COALESCE(k.shift_name, ''), r.reason,
       sum(r.seconds::numeric), sum(r.stops), count(*)
FROM machine_kpi_reason r JOIN machine_kpi k USING (machine, bucket, bucket_start)
WHERE r.bucket = 'shift' AND k.shift_date IS NOT NULL
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""
GOT_REASONS = """
SELECT shift_date, shift_name, reason, sum(seconds), sum(stops), sum(n)
FROM board_reason_shift GROUP BY 1, 2, 3 HAVING sum(n) <> 0 ORDER BY 1, 2, 3"""
WANT_SCRAP = """
SELECT day, COALESCE(shift_name, ''), reason, product, sum(qty), count(*)
FROM machine_scrap GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"""
GOT_SCRAP = """
SELECT day, shift_name, reason, product, sum(qty), sum(n)
FROM board_scrap_day GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0 ORDER BY 1, 2, 3, 4"""


def assert_rollups_hold(url: str) -> None:
    with psycopg.connect(url) as conn:
        want = conn.execute(WANT_REASONS).fetchall()
        assert conn.execute(GOT_REASONS).fetchall() == want
        assert conn.execute(GOT_SCRAP).fetchall() == conn.execute(WANT_SCRAP).fetchall()
        # A key whose rows are all gone adds up to nothing at all (exact sums).
        for table, sums in (("board_reason_shift", "seconds, stops"), ("board_scrap_day", "qty")):
            gone = conn.execute(
                f"SELECT {sums} FROM (SELECT {', '.join(f'sum({c}) AS {c}' for c in sums.split(', '))},"
                f" sum(n) AS n FROM {table} GROUP BY "
                + (
                    "shift_date, shift_name, reason"
                    if "reason_shift" in table
                    else "day, shift_name, reason, product"
                )
                + ") x WHERE n = 0"
            ).fetchall()
            assert all(all(v == 0 for v in row) for row in gone), (table, gone)


@pytest.fixture
def filled(db_url: str, plant: PlantConfig) -> str:
    fill(db_url, list(plant.machines), FIRST, DAYS, plant.plant.timezone)
    return db_url


def test_a_filled_history_is_rolled_up(filled: str) -> None:
    assert_rollups_hold(filled)
    with psycopg.connect(filled) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT writer) FROM board_reason_shift")
        n, writers = row.fetchone() or (0, 0)
    assert n > 0 and writers == 1


# -- every kind of write ------------------------------------------------------------------------

MACHINE = st.integers(0, 3)


def _machines(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT DISTINCT machine FROM machine_kpi ORDER BY 1")]


def _sink_reasons(cur: psycopg.Cursor[Any], machine: str, day: int, factor: float) -> None:
    """As streams/pg_sink.py replaces a bucket's reason set: stage, DELETE, COPY."""
    cur.execute(
        "CREATE TEMP TABLE IF NOT EXISTS t_bucket (machine text, bucket text,"
        " bucket_start timestamptz) ON COMMIT DELETE ROWS"
    )
    keys = cur.execute(
        "SELECT machine, bucket, bucket_start FROM machine_kpi WHERE machine = %s"
        " AND bucket = 'shift' ORDER BY bucket_start OFFSET %s LIMIT 2",
        (machine, day),
    ).fetchall()
    with cur.copy("COPY t_bucket FROM STDIN") as cp:
        for k in keys:
            cp.write_row(k)
    cur.execute(
        "DELETE FROM machine_kpi_reason r USING t_bucket b WHERE r.machine = b.machine"
        " AND r.bucket = b.bucket AND r.bucket_start = b.bucket_start"
    )
    with cur.copy(
        "COPY machine_kpi_reason (machine, bucket, bucket_start, reason, seconds, stops) FROM STDIN"
    ) as cp:
        for m, b, s in keys:
            for i, reason in enumerate(REASONS[: 1 + day % 4]):
                cp.write_row((m, b, s, reason, factor * (i + 1) / 3, i + day))


OPS = st.one_of(
    st.tuples(st.just("sink_reasons"), MACHINE, st.integers(0, 4), st.floats(0.1, 5000)),
    st.tuples(st.just("rename_shift"), MACHINE, st.sampled_from(["day", "night", None])),
    st.tuples(st.just("redate_shift"), MACHINE, st.integers(-1, 1)),
    st.tuples(st.just("delete_kpi"), MACHINE, st.integers(0, 4)),
    st.tuples(st.just("readd_kpi"), MACHINE),
    st.tuples(st.just("update_reasons"), MACHINE, st.floats(0.5, 2.0)),
    st.tuples(st.just("retention"), st.integers(0, DAYS)),
    st.tuples(st.just("scrap_replace"), MACHINE, st.integers(0, 30)),
    st.tuples(st.just("scrap_update"), MACHINE),
    st.tuples(st.just("truncate"), st.sampled_from(["machine_kpi_reason", "machine_scrap"])),
)


def apply(url: str, op: tuple[Any, ...], machines: list[str]) -> None:
    kind = op[0]
    m = machines[op[1]] if len(op) > 1 and kind not in ("retention", "truncate") else ""
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        if kind == "sink_reasons":
            _sink_reasons(cur, m, op[2], op[3])
        elif kind == "rename_shift":
            cur.execute(
                "UPDATE machine_kpi SET shift_name = %s WHERE machine = %s AND bucket = 'shift'"
                " AND extract(day FROM bucket_start) %% 2 = 0",
                (op[2], m),
            )
        elif kind == "redate_shift":
            cur.execute(
                "UPDATE machine_kpi SET shift_date = shift_date + %s"
                " WHERE machine = %s AND bucket = 'shift'",
                (op[2], m),
            )
        elif kind == "delete_kpi":
            cur.execute(
                "CREATE TABLE IF NOT EXISTS kpi_kept AS SELECT * FROM machine_kpi WITH NO DATA"
            )
            cur.execute(
                "WITH d AS (DELETE FROM machine_kpi WHERE machine = %s AND bucket = 'shift'"
                " AND bucket_start IN (SELECT bucket_start FROM machine_kpi WHERE machine = %s"
                " AND bucket = 'shift' ORDER BY bucket_start OFFSET %s LIMIT 2) RETURNING *)"
                " INSERT INTO kpi_kept SELECT * FROM d",
                (m, m, op[2]),
            )
        elif kind == "readd_kpi":
            # A KPI row written after its reasons: they count from then on.
            cur.execute(
                "CREATE TABLE IF NOT EXISTS kpi_kept AS SELECT * FROM machine_kpi WITH NO DATA"
            )
            cur.execute(
                "WITH d AS (DELETE FROM kpi_kept WHERE machine = %s RETURNING *)"
                " INSERT INTO machine_kpi SELECT * FROM d ON CONFLICT DO NOTHING",
                (m,),
            )
        elif kind == "update_reasons":
            cur.execute(
                "UPDATE machine_kpi_reason SET seconds = seconds * %s, stops = stops + 1"
                " WHERE machine = %s",
                (op[2], m),
            )
        elif kind == "retention":
            cur.execute(
                "DELETE FROM machine_kpi WHERE bucket_start < %s",
                (FIRST + timedelta(days=op[1]),),
            )
            cur.execute(
                "DELETE FROM machine_kpi_reason WHERE bucket_start < %s",
                (FIRST + timedelta(days=op[1]),),
            )
            cur.execute(
                "DELETE FROM machine_scrap WHERE hour_start < %s", (FIRST + timedelta(days=op[1]),)
            )
        elif kind == "scrap_replace":
            hours = cur.execute(
                "DELETE FROM machine_scrap WHERE machine = %s AND hour_start IN (SELECT"
                " hour_start FROM machine_scrap WHERE machine = %s ORDER BY hour_start"
                " OFFSET %s LIMIT 3) RETURNING hour_start, day, shift_name",
                (m, m, op[2]),
            ).fetchall()
            with cur.copy(
                "COPY machine_scrap (machine, hour_start, day, shift_name, reason, product, qty)"
                " FROM STDIN"
            ) as cp:
                for h, d, s in set(hours):
                    cp.write_row((m, h, d, s, "short_shot", "P-200", op[2] + 1))
        elif kind == "scrap_update":
            cur.execute(
                "UPDATE machine_scrap SET qty = qty + 1, shift_name = NULL"
                " WHERE machine = %s AND extract(hour FROM hour_start) = 9",
                (m,),
            )
        elif kind == "truncate":
            cur.execute(f"TRUNCATE {op[1]}")


@pytest.fixture(scope="module")
def small_template(pg_server: str, pg_template: str, plant: PlantConfig) -> Iterator[str]:
    """A filled database to copy for each example (filling takes longer than copying)."""
    name = "board_rollups_filled"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    url = _with_db(pg_server, name)
    machines = [m for line in plant.lines for m in line.machines][:4]
    fill(url, [m.id for m in machines], FIRST, DAYS, plant.plant.timezone)
    yield name
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(OPS, min_size=1, max_size=8))
def test_every_kind_of_write_keeps_the_rollups(
    pg_server: str, small_template: str, ops: list[tuple[Any, ...]]
) -> None:
    name = "board_rollups_example"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {small_template}")
    url = _with_db(pg_server, name)
    try:
        machines = _machines(url)
        for op in ops:
            apply(url, op, machines)
            assert_rollups_hold(url)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_two_writers_at_once_do_not_wait_for_each_other(filled: str, plant: PlantConfig) -> None:
    """Two transactions (two dataflow processes) replace reason sets of the same shifts on
    different machines: with one rollup row per key they would queue on it (or deadlock);
    with a row per writer both go through before either commits."""
    a_machine, b_machine = _machines(filled)[:2]
    a = psycopg.connect(filled)
    b = psycopg.connect(filled)
    try:
        for conn in (a, b):
            conn.execute("SET lock_timeout = '3s'")
        with a.cursor() as cur:
            _sink_reasons(cur, a_machine, 1, 100.0)
        with b.cursor() as cur:  # a's transaction is still open
            _sink_reasons(cur, b_machine, 1, 200.0)
        with a.cursor() as cur:  # and a again, after b (the other order of the same keys)
            _sink_reasons(cur, a_machine, 2, 300.0)
        b.commit()
        a.commit()
    finally:
        a.close()
        b.close()
    assert_rollups_hold(filled)
    with psycopg.connect(filled) as conn:
        writers = conn.execute("SELECT count(DISTINCT writer) FROM board_reason_shift").fetchone()
    assert writers == (3,)  # the migration's (history) and the two


def test_a_replay_through_the_dataflow_keeps_the_rollups(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    """The real sink (stage, upsert, DELETE and COPY per batch; late events merged)."""
    machines = [m.id for line in plant.lines for m in line.machines]
    events = random_events(machines, 4000, seed=14)
    replay_file(write_jsonl(tmp_path / "e.jsonl", events), plant, db_url, tmp_path / "rec",
                progress=False)  # fmt: skip
    with psycopg.connect(db_url) as conn:
        reasons = conn.execute("SELECT count(*) FROM machine_kpi_reason").fetchone()
        scrap = conn.execute("SELECT count(*) FROM machine_scrap").fetchone()
    assert reasons and reasons[0] > 0 and scrap and scrap[0] > 0
    assert_rollups_hold(db_url)
    db = Database(db_url)
    try:
        day0 = date(2026, 11, 19)
        for shift in (None, "day", "night"):
            f = aq.Filters(day0, day0 + timedelta(days=5), Scope("plant"), shift)
            assert_same(aq.reasons(db, f, plant.tz), reference_reasons(db, f))
            assert [astuple(r) for r in sq.scrap_by_reason(db, f, plant.tz)] == reference_scrap(
                db, f, plant.tz
            )
    finally:
        db.close()


# -- the plant's Paretos read from the rollups return what they returned ------------------------


def reference_reasons(db: Database, f: aq.Filters) -> list[tuple[Any, ...]]:
    """aq.reasons for the plant as it was before sql/036 (verbatim, scope 'true')."""
    query = (
        "SELECT r.reason, max(r.category) AS category, max(r.reason_en) AS reason_en, "
        "max(r.reason_zh) AS reason_zh, sum(r.seconds) AS seconds, "
        "sum(r.stops)::bigint AS stops, "
        "sum(r.seconds) / NULLIF(sum(sum(r.seconds)) OVER (), 0) AS share "
        "FROM v_downtime_by_reason r WHERE r.bucket = 'shift' AND true "
        "AND r.shift_date >= %(start)s AND r.shift_date < %(end)s "
        "AND (%(shift)s::text IS NULL OR r.shift_name = %(shift)s) "
        "GROUP BY r.reason ORDER BY seconds DESC, r.reason"
    )
    params = {"start": f.start, "end": f.end, "shift": f.shift}
    return db.run(lambda conn: conn.execute(query, params).fetchall())


PLANT_SCOPE = sql.SQL("true")


def reference_scrap(
    db: Database, f: aq.Filters, tz: ZoneInfo, scope: sql.Composable = PLANT_SCOPE
) -> list[tuple[Any, ...]]:
    """sq.scrap_by_reason as it was before sql/036 (verbatim; the plant's scope is 'true')."""
    start_ts, end_ts = f.bounds(tz)
    query = sql.SQL(
        "SELECT v.reason, max(v.category) AS category, max(v.reason_en) AS reason_en, "
        "max(v.reason_zh) AS reason_zh, v.product, sum(v.qty)::bigint AS qty, "
        "(sum(v.qty) / NULLIF(sum(sum(v.qty)) OVER (), 0))::float8 AS share "
        "FROM v_scrap_by_reason v WHERE {scope} "
        "AND v.hour_start >= %(lo)s AND v.hour_start < %(hi)s "
        "AND v.day >= %(start)s AND v.day < %(end)s "
        "AND (%(shift)s::text IS NULL OR v.shift_name = %(shift)s) "
        "GROUP BY v.reason, v.product ORDER BY qty DESC, v.reason, v.product"
    ).format(scope=scope)
    params = {
        "scope_id": f.scope.id,
        "start": f.start,
        "end": f.end,
        "shift": f.shift,
        "lo": start_ts - timedelta(days=1),
        "hi": end_ts + timedelta(days=1),
    }
    return db.run(lambda conn: conn.execute(query, params).fetchall())


def assert_same(got: list[Any], want: list[tuple[Any, ...]]) -> None:
    """Equal rows in the same order; seconds and shares to 1e-9 relative (float sums depend
    on the order rows are added in; the rollup adds exactly). Reasons with equal seconds
    (to that precision) may come in either order only if their codes say so anyway."""
    rows = [astuple(r) for r in got]
    assert len(rows) == len(want)
    for g, w in zip(rows, want, strict=True):
        assert len(g) == len(w)
        for x, y in zip(g, w, strict=True):
            if isinstance(y, float):
                assert isinstance(x, float) and math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)
            else:
                assert x == y


@pytest.fixture(scope="module")
def pareto_db(pg_server: str, small_template: str) -> Iterator[Database]:
    """The filled history with unequal reasons (the generator gives every reason the same
    seconds: the order would be the codes' alone) and a few things only a Pareto shows."""
    name = "board_rollups_pareto"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {small_template}")
    url = _with_db(pg_server, name)
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE machine_kpi_reason SET seconds = seconds"
            " * (1 + COALESCE(array_position(%s::text[], reason), 0))"
            " + extract(epoch FROM bucket_start)::bigint %% 97 / 7.0",
            ([*REASONS, "unassigned"],),
        )
        # A reason outside the reason tree, one with 0 s, scrap between shifts.
        conn.execute(
            "INSERT INTO machine_kpi_reason SELECT machine, bucket, bucket_start, 'robot_arm',"
            " 0, 1 FROM machine_kpi WHERE bucket = 'shift' AND shift_name = 'night' LIMIT 3"
        )
        conn.execute(
            "UPDATE machine_scrap SET shift_name = NULL, qty = qty * 5"
            " WHERE extract(hour FROM hour_start) = 7 AND reason = 'short_shot'"
        )
    database = Database(url)
    yield database
    database.close()
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first_day=st.integers(-1, DAYS),
    days=st.integers(1, DAYS + 1),
    shift=st.sampled_from([None, "day", "night", "no-such-shift"]),
)
def test_the_plants_paretos_return_what_they_did(
    pareto_db: Database, plant: PlantConfig, first_day: int, days: int, shift: str | None
) -> None:
    start = FIRST + timedelta(days=first_day)
    f = aq.Filters(start, start + timedelta(days=days), Scope("plant"), shift)
    assert_same(aq.reasons(pareto_db, f, plant.tz), reference_reasons(pareto_db, f))
    got = [astuple(r) for r in sq.scrap_by_reason(pareto_db, f, plant.tz)]
    assert got == reference_scrap(pareto_db, f, plant.tz)


def test_the_rollups_are_read_for_the_plant_only(pareto_db: Database, plant: PlantConfig) -> None:
    """A line or a machine still reads its own rows (the rollups have no machine): emptied
    rollups change the plant's figures and no other scope's."""
    f = aq.Filters(FIRST, FIRST + timedelta(days=DAYS), Scope("plant"))
    line = aq.Filters(f.start, f.end, Scope("line", plant.lines[0].id))
    before = aq.reasons(pareto_db, line, plant.tz), sq.scrap_by_reason(pareto_db, line, plant.tz)
    assert aq.reasons(pareto_db, f, plant.tz)

    with psycopg.connect(pareto_db.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept_rollup AS SELECT * FROM board_reason_shift")
        conn.execute("DELETE FROM board_reason_shift")
        try:
            assert aq.reasons(pareto_db, f, plant.tz) == []
            after = (
                aq.reasons(pareto_db, line, plant.tz),
                sq.scrap_by_reason(pareto_db, line, plant.tz),
            )
            assert after == before
        finally:
            conn.execute("INSERT INTO board_reason_shift SELECT * FROM kept_rollup")
            conn.execute("DROP TABLE kept_rollup")


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    scope=st.sampled_from([Scope("line", "IM"), Scope("line", "CNC"), Scope("machine", "IM-02")]),
    first_day=st.integers(-1, DAYS),
    days=st.integers(1, DAYS + 1),
    shift=st.sampled_from([None, "day", "night"]),
)
def test_a_lines_and_a_machines_scrap_return_what_they_did(
    pareto_db: Database,
    plant: PlantConfig,
    scope: Scope,
    first_day: int,
    days: int,
    shift: str | None,
) -> None:
    """A line's scrap names its machines as a list for the primary key (not the rollups)."""
    start = FIRST + timedelta(days=first_day)
    f = aq.Filters(start, start + timedelta(days=days), scope, shift)
    got = [astuple(r) for r in sq.scrap_by_reason(pareto_db, f, plant.tz)]
    want = reference_scrap(pareto_db, f, plant.tz, _scope_filter(f.scope, "v"))
    assert got == want
    if scope.id == "IM" and first_day == 0 and days == DAYS and shift is None:
        assert got


def test_a_cluster_of_two_dataflow_processes_keeps_the_rollups(
    plant: PlantConfig, db_url: str, ref_db_url: str, tmp_path: Path
) -> None:
    """Two Bytewax processes (docs/scale-out.md) over one log: the rollups hold, and equal those
    of one process. (The results go through one sink partition today, so one connection
    writes them; two writing at once: test_two_writers_at_once_do_not_wait_for_each_other.)"""
    from tests.helpers import copy_log, feed, log_position
    from tests.test_scale_out import history, run_cluster, run_single

    feed(db_url, history())
    upto = log_position(db_url)
    assert copy_log(db_url, ref_db_url) == upto
    run_single(plant, ref_db_url, tmp_path / "rec1", upto)
    run_cluster(db_url, tmp_path / "rec2", upto, 2)
    for url in (db_url, ref_db_url):
        assert_rollups_hold(url)
    with psycopg.connect(db_url) as a, psycopg.connect(ref_db_url) as b:
        assert a.execute(GOT_REASONS).fetchall() == b.execute(GOT_REASONS).fetchall()
        assert a.execute(GOT_SCRAP).fetchall() == b.execute(GOT_SCRAP).fetchall()
        assert a.execute(GOT_REASONS).fetchall()
