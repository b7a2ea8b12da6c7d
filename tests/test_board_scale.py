"""Boards at scale (sql/034_board_scale.sql, bench/board_queries_bench.py): the queries made
fast for 500 machines x 30 days return exactly what the queries before them returned.

The data set is the benchmark's own generator (state intervals with open ones, KPI, reason,
scrap rows, orders and work orders) on the example plant, 4 days. The references are the
texts the rewrites replaced: the drill-down's SQL as it was in dashboards/analytics_queries.py,
and v_order_losses as sql/017_order_losses.sql defines it (created under another name).
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import astuple
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from bench import board_queries_bench
from bench.board_queries_bench import REASONS, fill
from dashboards import analytics_queries as aq
from dashboards.order_queries import _BOARD_COLUMNS, order_board, order_detail
from dashboards.queries import Database
from mesflow.db import SQL_DIR
from mesflow.delivery_kpis import (
    DIMENSIONS,
    Dimension,
    KpiError,
    MonthRange,
    dimension_values,
    query_delivery_kpis,
)
from mesflow.plant import PlantConfig
from mesflow.report import Scope, _scope_filter
from mesflow.settings import REPO_ROOT
from tests.conftest import _with_db

FIRST = date(2026, 10, 1)
DAYS = 4


@pytest.fixture(scope="module")
def board_db(pg_server: str, pg_template: str, plant: PlantConfig) -> Iterator[str]:
    """One filled database for the module (read only by the tests)."""
    name = "board_scale"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    url = _with_db(pg_server, name)
    fill(url, list(plant.machines), FIRST, DAYS, plant.plant.timezone)
    # v_order_losses as migration 017 made it, side by side with 034's.
    text = (SQL_DIR / "017_order_losses.sql").read_text(encoding="utf-8")
    ref = text[text.index("CREATE VIEW v_order_losses AS") :]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(ref.replace("CREATE VIEW v_order_losses", "CREATE VIEW ref_order_losses"))
        # Open stops of every kind of length: the longest of all, a middling one, and one
        # of 0 s; and one with no reason (v_stops says "unassigned").
        for i, (state, reason, open_s) in enumerate(
            [("down", "tool_break", 7200), ("idle", None, 300), ("setup", "mold_change", 0)]
        ):
            machine = plant.lines[i % 2].machines[i].id
            conn.execute(
                "UPDATE machine_state_interval SET state = %s, reason = %s, is_microstop = NULL "
                "WHERE machine = %s AND end_ts IS NULL",
                (state, reason, machine),
            )
            conn.execute(
                "UPDATE machine_status SET last_event_ts = since + make_interval(secs => %s) "
                "WHERE machine = %s",
                (open_s, machine),
            )
        # Orders the board ranks by every key: at risk, no priority, no due date (NULLs last).
        conn.execute(
            "UPDATE order_progress SET at_risk = (hashtext(order_no) & 3 = 0), "
            "priority = CASE WHEN hashtext(order_no) & 12 = 0 THEN NULL ELSE priority END, "
            "due = CASE WHEN hashtext(order_no) & 48 = 0 THEN NULL ELSE due END"
        )
    yield url
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def db(board_db: str) -> Iterator[Database]:
    database = Database(board_db)
    yield database
    database.close()


def same(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-9 relative: a sum's last bit depends on the order rows are added
    in, which no query fixes (a parallel plan adds in any order, before and after)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def reference_stops(
    db: Database,
    f: aq.Filters,
    tz: ZoneInfo,
    *,
    reason: str | None = None,
    category: str | None = None,
    limit: int = aq.STOPS_LIMIT,
) -> list[tuple[Any, ...]]:
    """The drill-down as dashboards/analytics_queries.py had it before sql/034 (verbatim)."""
    if f.shift is None:
        source = sql.SQL("v_stops s WHERE {scope}").format(scope=_scope_filter(f.scope, "s"))
    else:
        source = sql.SQL(
            "(SELECT k.machine, k.bucket_start, k.bucket_end FROM v_kpi_machine_shift k "
            "WHERE {scope} AND k.shift_name = %(shift)s "
            "AND k.bucket_start < %(end_ts)s AND k.bucket_end > %(start_ts)s) k "
            "JOIN v_stops s ON s.machine = k.machine "
            "AND s.start_ts >= k.bucket_start AND s.start_ts < k.bucket_end WHERE true"
        ).format(scope=_scope_filter(f.scope, "k"))
    query = sql.SQL(
        "SELECT s.machine, s.line, s.start_ts, s.end_ts, s.state, s.duration_s, s.reason, "
        "s.category, s.work_order, s.is_open FROM {source} AND NOT s.is_microstop "
        "AND s.start_ts >= %(start_ts)s AND s.start_ts < %(end_ts)s "
        "AND (%(reason)s::text IS NULL OR s.reason = %(reason)s) "
        "AND (%(category)s::text IS NULL OR s.category = %(category)s) "
        "ORDER BY s.duration_s DESC, s.start_ts, s.machine LIMIT %(limit)s"
    ).format(source=source)
    start_ts, end_ts = f.bounds(tz)
    params = {
        "scope_id": f.scope.id,
        "shift": f.shift,
        "start_ts": start_ts,
        "end_ts": end_ts,
        "reason": reason,
        "category": category,
        "limit": limit,
    }
    return db.run(lambda conn: conn.execute(query, params).fetchall())


def _scopes(plant: PlantConfig) -> list[Scope]:
    line = plant.lines[1]
    return [Scope("plant"), Scope("line", line.id), Scope("machine", line.machines[2].id)]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    scope_i=st.integers(0, 2),
    shift=st.sampled_from([None, "day", "night"]),
    reason=st.sampled_from([None, *REASONS[:2], "unassigned"]),
    category=st.sampled_from([None, "technical", "no_data"]),
    first_day=st.integers(0, DAYS - 1),
    days=st.integers(1, DAYS + 1),
    limit=st.sampled_from([1, 7, 40, aq.STOPS_LIMIT]),
)
def test_stops_drill_down_returns_what_it_did(
    db: Database,
    plant: PlantConfig,
    scope_i: int,
    shift: str | None,
    reason: str | None,
    category: str | None,
    first_day: int,
    days: int,
    limit: int,
) -> None:
    start = FIRST + timedelta(days=first_day)
    f = aq.Filters(start, start + timedelta(days=days), _scopes(plant)[scope_i], shift)
    got = [
        astuple(r) for r in aq.stops(db, f, plant.tz, reason=reason, category=category, limit=limit)
    ]
    want = reference_stops(db, f, plant.tz, reason=reason, category=category, limit=limit)
    assert same(got, want)


def test_stops_drill_down_lists_open_stops_among_the_longest(
    db: Database, plant: PlantConfig
) -> None:
    """The open stops come from v_stops, the ended ones from v_stops_closed: both must be
    there, in one order."""
    # The data start at 08:00 on FIRST: the last (open) intervals are on the day after.
    f = aq.Filters(FIRST, FIRST + timedelta(days=DAYS + 1), Scope("plant"))
    rows = aq.stops(db, f, plant.tz)
    assert any(r.is_open for r in rows) and any(not r.is_open for r in rows)
    keys = [(-r.duration_s, r.start_ts, r.machine) for r in rows]
    assert keys == sorted(keys)
    assert same([astuple(r) for r in rows], reference_stops(db, f, plant.tz))


def test_order_losses_are_those_of_migration_017(board_db: str) -> None:
    with psycopg.connect(board_db) as conn:
        orders = [r[0] for r in conn.execute("SELECT order_no FROM crm_order ORDER BY 1")]
        assert len(orders) > 20
        order_by = " ORDER BY order_no, machine, kind, state, reason"
        whole = conn.execute("SELECT * FROM v_order_losses" + order_by).fetchall()
        assert same(whole, conn.execute("SELECT * FROM ref_order_losses" + order_by).fetchall())
        assert {r[2] for r in whole} == {"stop", "speed", "scrap"}
        for no in orders[:: max(1, len(orders) // 12)]:  # one order, as the page asks
            one = "SELECT * FROM {} WHERE order_no = %s" + order_by
            got = conn.execute(one.format("v_order_losses"), (no,)).fetchall()
            assert got, no
            assert same(got, conn.execute(one.format("ref_order_losses"), (no,)).fetchall())


def test_an_orders_page_shows_its_board_row_and_rank(board_db: str, db: Database) -> None:
    """order_detail reads one order from v_order_progress and counts its rank; the board
    (v_order_board) numbers them all: the same row, the same rank, for every order."""
    with psycopg.connect(board_db) as conn:
        board = conn.execute(f"SELECT {_BOARD_COLUMNS} FROM v_order_board ORDER BY rank").fetchall()
    assert [r[0] for r in board] == list(range(1, len(board) + 1))
    keys = {(r[13], r[3] is None, r[11] is None) for r in board}  # at_risk, NULL priority, due
    assert {k[0] for k in keys} == {True, False} and any(k[1] for k in keys)
    assert any(k[2] for k in keys)
    for row in board[:: max(1, len(board) // 40)] + board[-3:]:
        detail = order_detail(db, row[1])
        assert detail is not None
        assert astuple(detail.order) == tuple(row)
    assert order_detail(db, "no-such-order") is None


@pytest.mark.parametrize(
    ("status", "customer"),
    [("open", None), ("closed", None), (None, "C3"), ("open", "of an open order")],
)
def test_a_filtered_board_keeps_the_boards_ranks(
    board_db: str, db: Database, status: str | None, customer: str | None
) -> None:
    """Filtered, the board reads only the orders shown, with v_order_board's ranks (gaps)."""
    if customer == "of an open order":
        with psycopg.connect(board_db) as conn:
            row = conn.execute(
                "SELECT customer FROM v_order_board WHERE status = 'open' ORDER BY rank LIMIT 1"
            ).fetchone()
        assert row is not None
        customer = row[0]
    where = " AND ".join(
        c for c, v in (("status = %(s)s", status), ("customer = %(c)s", customer)) if v
    )
    with psycopg.connect(board_db) as conn:
        want = conn.execute(
            f"SELECT {_BOARD_COLUMNS} FROM v_order_board WHERE {where} ORDER BY rank",
            {"s": status, "c": customer},
        ).fetchall()
    assert want
    got = [astuple(r) for r in order_board(db, status=status, customer=customer)]
    assert got == want


def test_the_benchmark_runs_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A small run end to end (its own PostgreSQL, before and after migration 034): every
    query is printed, and its server and files are gone afterwards."""
    baseline = subprocess.run(
        [
            "git",
            "-C",
            str(REPO_ROOT),
            "cat-file",
            "-e",
            f"{board_queries_bench.BASELINE}^{{commit}}",
        ],
        capture_output=True,
    )
    if baseline.returncode != 0:
        pytest.skip(f"the 'before' commit {board_queries_bench.BASELINE} is not in this clone")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    board_queries_bench.main(["--machines", "12", "--days", "1", "--runs", "1"])
    out = capsys.readouterr().out
    for name in ("andon tiles", "analytics Pareto plant", "order page", "kpis by month"):
        assert re.search(rf"^{name} +[0-9.]+ +[0-9.]+ +[0-9.]+", out, re.M), name
    assert "before: " in out and "after: " in out
    assert list(tmp_path.iterdir()) == []


# -- delivery KPIs: v_order_delivery computed once per query (mesflow/delivery_kpis.py) ----------


# mesflow/delivery_kpis.py's kpi_query before issue 14 (verbatim): the reference.
def reference_kpi_query(
    by: Dimension,
    months: MonthRange,
    customer: str | None = None,
    product: str | None = None,
) -> tuple[sql.Composed, dict[str, Any]]:
    """One query, one row per value of `by`: the four KPIs over the filtered rows."""
    if by not in DIMENSIONS:
        raise KpiError(f"--by: {by!r}; valid: {', '.join(DIMENSIONS)}")

    def where(month_col: str) -> sql.Composed:
        conds = [
            sql.SQL("({m} IS NOT NULL)").format(m=sql.Identifier(month_col)),
            sql.SQL("(%(first)s::text IS NULL OR {m} >= %(first)s)").format(
                m=sql.Identifier(month_col)
            ),
            sql.SQL("(%(last)s::text IS NULL OR {m} <= %(last)s)").format(
                m=sql.Identifier(month_col)
            ),
            sql.SQL("(%(customer)s::text IS NULL OR customer = %(customer)s)"),
            sql.SQL("(%(product)s::text IS NULL OR product = %(product)s)"),
        ]
        return sql.SQL(" AND ").join(conds)

    def key(month_col: str) -> sql.Composable:
        return sql.Identifier(month_col if by == "month" else by)

    query = sql.SQL(
        """
WITH lead AS (
    SELECT {k_start} AS key, count(*) AS orders_started,
           avg(lead_time_s) AS lead_time_avg_s,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY lead_time_s) AS lead_time_median_s,
           percentile_cont(0.9) WITHIN GROUP (ORDER BY lead_time_s) AS lead_time_p90_s,
           sum(good)::bigint AS good, sum(scrap)::bigint AS scrap,
           sum(scrap)::double precision / NULLIF(sum(good + scrap), 0) AS scrap_rate
    FROM v_order_delivery WHERE {w_start} GROUP BY 1
), chg AS (
    SELECT {k_chg} AS key, count(*) AS changes,
           count(*) FILTER (WHERE acknowledged_at IS NULL) AS unacknowledged,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY response_s) AS response_median_s,
           percentile_cont(0.9) WITHIN GROUP (ORDER BY response_s) AS response_p90_s
    FROM v_change_delivery WHERE {w_chg} GROUP BY 1
), ontime AS (
    SELECT {k_done} AS key, count(*) AS completed,
           count(*) FILTER (WHERE on_time) AS on_time,
           count(*) FILTER (WHERE on_time)::double precision / count(*) AS on_time_rate
    FROM v_order_delivery WHERE completed AND {w_done} GROUP BY 1
), rwk AS (
    SELECT {k_start} AS key, sum(made)::bigint AS made,
           sum(sent_to_rework)::bigint AS sent_to_rework,
           sum(sent_to_rework)::double precision / NULLIF(sum(made), 0) AS rework_rate
    FROM v_order_rework WHERE {w_start} GROUP BY 1
), keys AS (
    SELECT key FROM lead UNION SELECT key FROM chg UNION SELECT key FROM ontime
)
SELECT k.key,
       COALESCE(l.orders_started, 0)::int AS orders_started,
       l.lead_time_avg_s, l.lead_time_median_s, l.lead_time_p90_s,
       COALESCE(c.changes, 0)::int AS changes,
       COALESCE(c.unacknowledged, 0)::int AS unacknowledged,
       c.response_median_s, c.response_p90_s,
       COALESCE(o.completed, 0)::int AS completed,
       COALESCE(o.on_time, 0)::int AS on_time,
       o.on_time_rate,
       COALESCE(l.good, 0)::bigint AS good,
       COALESCE(l.scrap, 0)::bigint AS scrap,
       l.scrap_rate,
       COALESCE(r.made, 0)::bigint AS made,
       COALESCE(r.sent_to_rework, 0)::bigint AS sent_to_rework,
       r.rework_rate
FROM keys k
LEFT JOIN lead l USING (key)
LEFT JOIN chg c USING (key)
LEFT JOIN ontime o USING (key)
LEFT JOIN rwk r USING (key)
ORDER BY k.key
"""
    ).format(
        k_start=key("start_month"),
        w_start=where("start_month"),
        k_chg=key("month"),
        w_chg=where("month"),
        k_done=key("completed_month"),
        w_done=where("completed_month"),
    )
    params = {
        "first": months.first,
        "last": months.last,
        "customer": customer,
        "product": product,
    }
    return query, params


REFERENCE_MONTHS = (
    "SELECT DISTINCT m FROM (SELECT start_month AS m FROM v_order_delivery"
    " UNION SELECT completed_month FROM v_order_delivery) x WHERE m IS NOT NULL ORDER BY 1"
)


@pytest.fixture(scope="module")
def delivery_db(pg_server: str, pg_template: str, plant: PlantConfig) -> Iterator[str]:
    """The benchmark's orders over 4 days, plus what it leaves out: cancelled orders, orders
    never started, changes acknowledged or not, quality yields (rework), two products, months
    across a boundary in the plant's time zone."""
    name = "board_scale_delivery"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    url = _with_db(pg_server, name)
    fill(url, list(plant.machines), date(2026, 10, 30), DAYS, plant.plant.timezone)
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE crm_order SET status = 'cancelled' WHERE hashtext(order_no) & 15 = 1")
        conn.execute(
            "UPDATE order_progress SET product = 'P-200', good = qty"
            " WHERE hashtext(order_no) & 7 = 2"
        )
        conn.execute("DELETE FROM order_history WHERE hashtext(order_no) & 7 = 3")
        conn.execute("DELETE FROM work_order_progress WHERE hashtext(order_no) & 15 = 4")
        conn.execute(
            "INSERT INTO quality_yield (work_order, machine, made, first_scrap, sent_to_rework,"
            " rework_good, rework_scrap, rework_pending, first_pass_good, final_good, first_ts,"
            " last_ts) SELECT work_order, machine, good + scrap, scrap, hashtext(work_order) & 7,"
            " 0, 0, 0, good, good, started_at, last_event_ts FROM work_order_progress"
            " WHERE hashtext(work_order) & 3 <> 0"
        )
        orders = conn.execute(
            "SELECT order_no, created_at FROM crm_order WHERE hashtext(order_no) & 3 = 0"
        ).fetchall()
        for i, (no, created) in enumerate(orders):
            cid = conn.execute(
                "INSERT INTO change_request (order_no, from_version, to_version, requested_by,"
                " source, received_at, change, snapshot, status, decided_at, applied_at)"
                " VALUES (%s, 1, 2, 'crm', 'crm', %s + make_interval(hours => %s), '{}', '{}',"
                " 'applied', %s, %s) RETURNING id",
                (no, created, 20 + i % 9, created, created),
            ).fetchone()
            assert cid is not None
            for j, machine in enumerate(("IM-01", "IM-02")[: 1 + i % 2]):
                ack = None if (i + j) % 5 == 0 else created + timedelta(hours=21 + (i * 7 + j) % 13)
                conn.execute(
                    "INSERT INTO floor_notice (change_request_id, order_no, summary, machine,"
                    " acknowledged_by, acknowledged_at) VALUES (%s, %s, 'qty', %s, %s, %s)",
                    (cid[0], no, machine, "op" if ack else None, ack),
                )
    yield url
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    by=st.sampled_from(DIMENSIONS),
    months=st.sampled_from(
        [
            (None, None),
            ("2026-10", "2026-10"),
            ("2026-11", None),
            (None, "2026-10"),
            ("2026-09", "2026-12"),
            ("2027-01", None),
        ]
    ),
    customer=st.sampled_from([None, "C3", "C17", "nobody"]),
    product=st.sampled_from([None, "P-100", "P-200"]),
)
def test_delivery_kpis_return_what_they_did(
    delivery_db: str,
    plant: PlantConfig,
    by: Dimension,
    months: tuple[str | None, str | None],
    customer: str | None,
    product: str | None,
) -> None:
    rng = MonthRange(*months)
    with psycopg.connect(delivery_db, autocommit=True) as conn:
        got = [astuple(r) for r in query_delivery_kpis(conn, plant.tz, by, rng, customer, product)]
        query, params = reference_kpi_query(by, rng, customer, product)
        with conn.transaction():
            conn.execute("SELECT set_config('TimeZone', %s, true)", (plant.tz.key,))
            want = conn.execute(query, params).fetchall()
    assert same(got, want)
    if by == "customer" and months == (None, None) and not customer and not product:
        assert len(got) > 10 and any(r[5] for r in got) and any(r[15] for r in got)


def test_delivery_kpi_filters_return_what_they_did(delivery_db: str, plant: PlantConfig) -> None:
    with psycopg.connect(delivery_db, autocommit=True) as conn:
        _, _, months = dimension_values(conn, plant.tz)
        with conn.transaction():
            conn.execute("SELECT set_config('TimeZone', %s, true)", (plant.tz.key,))
            want = [r[0] for r in conn.execute(REFERENCE_MONTHS)]
    assert months == want and len(months) >= 2


# -- the state timeline: each machine's intervals from a bound, by primary key ------------------


def reference_timeline(db: Database, f: aq.Filters, tz: ZoneInfo) -> list[tuple[Any, ...]]:
    """aq.timeline's intervals as dashboards/analytics_queries.py had them before sql/036."""
    start_ts, end_ts = f.bounds(tz)
    start_ts = max(start_ts, datetime.combine(f.end - timedelta(days=aq.TIMELINE_DAYS), time(), tz))
    intervals = sql.SQL(
        "SELECT s.machine, s.start_ts, s.end_ts, s.state, s.reason, s.duration_s "
        "FROM v_state_intervals s WHERE {scope} "
        "AND s.start_ts < %(to)s AND (s.end_ts > %(from)s OR s.end_ts IS NULL) "
        "ORDER BY s.machine, s.start_ts"
    ).format(scope=_scope_filter(f.scope, "s"))
    params = {"scope_id": f.scope.id, "from": start_ts, "to": end_ts}
    return db.run(lambda conn: conn.execute(intervals, params).fetchall())


@pytest.fixture(scope="module")
def timeline_db(pg_server: str, pg_template: str, plant: PlantConfig) -> Iterator[Database]:
    """The benchmark's intervals, with a machine down for 34 hours in one interval (the bound
    must reach back that far) and one silent since: its open interval began days ago."""
    name = "board_scale_timeline"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    url = _with_db(pg_server, name)
    fill(url, list(plant.machines), FIRST, DAYS, plant.plant.timezone)
    long_down, silent = plant.lines[0].machines[1].id, plant.lines[1].machines[2].id
    with psycopg.connect(url) as conn:
        t0 = "2026-10-02 10:00+08"
        conn.execute(
            "DELETE FROM machine_state_interval WHERE machine = %s AND start_ts > %s"
            " AND start_ts < %s::timestamptz + interval '34 hours'",
            (long_down, t0, t0),
        )
        conn.execute(
            "UPDATE machine_state_interval SET state = 'down', end_ts = start_ts"
            " + interval '34 hours', duration_s = 34 * 3600 WHERE machine = %s AND start_ts = %s",
            (long_down, t0),
        )
        conn.execute(
            "DELETE FROM machine_state_interval WHERE machine = %s AND start_ts > %s",
            (silent, "2026-10-02 12:00+08"),
        )
        conn.execute(
            "UPDATE machine_state_interval SET end_ts = NULL, state = 'offline' WHERE machine = %s"
            " AND start_ts = (SELECT max(start_ts) FROM machine_state_interval WHERE machine = %s)",
            (silent, silent),
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
    scope_i=st.integers(0, 3),
    first_day=st.integers(-1, DAYS),
    days=st.integers(1, DAYS + 2),
)
def test_the_timeline_returns_what_it_did(
    timeline_db: Database, plant: PlantConfig, scope_i: int, first_day: int, days: int
) -> None:
    scopes = [
        *_scopes(plant),
        Scope("line", plant.lines[0].id),
    ]
    start = FIRST + timedelta(days=first_day)
    f = aq.Filters(start, start + timedelta(days=days), scopes[scope_i])
    rows, _spans, _lo, _hi = aq.timeline(timeline_db, f, plant.tz)
    assert same([astuple(r) for r in rows], reference_timeline(timeline_db, f, plant.tz))


def test_the_timeline_finds_a_long_interval_and_an_old_open_one(
    timeline_db: Database, plant: PlantConfig
) -> None:
    f = aq.Filters(FIRST + timedelta(days=2), FIRST + timedelta(days=3), Scope("plant"))
    rows = aq.timeline(timeline_db, f, plant.tz)[0]
    long_down, silent = plant.lines[0].machines[1].id, plant.lines[1].machines[2].id
    assert any(r.machine == long_down and r.state == "down" and r.duration_s == 34 * 3600
               for r in rows)  # fmt: skip
    assert any(r.machine == silent and r.end_ts is None for r in rows)
    assert same([astuple(r) for r in rows], reference_timeline(timeline_db, f, plant.tz))


def test_the_benchmark_compares_query_texts_interleaved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--against REV: one fully migrated database, REV's query modules and this tree's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    board_queries_bench.main(
        ["--machines", "12", "--days", "1", "--runs", "1", "--against", "HEAD"]
    )
    out = capsys.readouterr().out
    assert "every migration applied first" in out and "before: queries of HEAD" in out
    for name in ("analytics Pareto plant", "analytics timeline line", "kpis by month"):
        assert re.search(rf"^{name} +[0-9.]+ +[0-9.]+ +[0-9.]+", out, re.M), name
    assert list(tmp_path.iterdir()) == []
