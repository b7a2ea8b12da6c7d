"""Every board query at plant scale: 500 machines x 30 days of results, before and after the
board indexes and statistics of sql/034_board_scale.sql and the rewritten query texts.

    .venv/bin/python -m bench.board_queries_bench [--machines 500] [--days 30] [--runs 3]
    .venv/bin/python -m bench.board_queries_bench --against REV [--runs 5]

The result tables are filled by SQL (generate_series) in the shapes the dataflow writes (state
intervals every 10 minutes with the last one open, machine hours, hour and shift KPI rows,
downtime reasons, scrap by reason and product, machine status, orders and work orders with
their history), because replaying a month of 500 machines takes far longer than the thing
measured. Then:

  before: the migrations up to 033 and the board query functions of BASELINE (git show);
  after:  migration 034 applied (then ANALYZE), and the functions of this tree.

Each board's functions run as the pages call them (dashboards/*_queries.py); every SQL
statement they send is also run once under EXPLAIN (ANALYZE, BUFFERS), which gives the server
time, the worst row estimate against the actual rows over the plan's nodes, and any sort or
hash that spilled to disk. Printed per query: before and after (median of --runs warm runs, in
ms, client side: SQL plus rows to Python objects), server ms, estimate/actual, spills, and the
ratio to the 100 ms target. Exit 1 when any query is over the target after.

--against REV compares query texts alone: every migration is applied first, and the query
modules of git revision REV and of this tree run on the same database, their runs interleaved
(on a loaded machine both see the same load).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, cast
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql

from dashboards.queries import Database
from mesflow.db import SQL_DIR, find_migrations, migrate, sync_plant
from mesflow.plant import PlantConfig
from mesflow.report import Scope
from mesflow.settings import REPO_ROOT

TARGET_MS = 100.0
# The migration this bench measures: everything before it is "before".
BOARD_MIGRATION = "034"
# The query texts before this part (issue 14, part G): the tree as the issue found it.
BASELINE = "82978aa"
QUERY_MODULES = (
    "dashboards.analytics_queries",
    "dashboards.queries",
    "dashboards.scrap_queries",
    "dashboards.order_queries",
    "mesflow.delivery_kpis",
)
REASONS = ["mold_change", "hydraulic_fault", "material_shortage", "no_operator", "tool_break"]


# -- data ---------------------------------------------------------------------------------------


def migrate_before(url: str) -> None:
    """Apply the migrations numbered below BOARD_MIGRATION, recorded as `migrate` records them,
    so a later `migrate` adds exactly the board migration (and anything after it)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        for mig in find_migrations(SQL_DIR):
            if mig.version >= BOARD_MIGRATION:
                continue
            with conn.transaction():
                conn.execute(mig.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (mig.version, mig.path.name, mig.checksum),
                )


def fill(url: str, machines: list[str], first: date, days: int, tz: str) -> dict[str, int]:
    """Synthetic results for `days` plant-local days from `first`; row counts per table."""
    start = f"{first.isoformat()} 08:00"
    p: dict[str, Any] = {"m": machines, "start": start, "days": days, "reasons": REASONS}
    with psycopg.connect(url) as conn:
        # Plant-local timestamps below ("08:00" is the day shift's start).
        conn.execute(sql.SQL("SET TIME ZONE {}").format(sql.Literal(tz)))
        # Two 12-hour shifts a day, day 08-20 and night 20-08.
        conn.execute(
            """
            INSERT INTO machine_kpi (machine, bucket, bucket_start, bucket_end, shift_date,
                shift_name, planned_s, running_s, microstop_s, microstop_count, idle_s, down_s,
                setup_s, good, scrap, ideal_s, failures, failure_s, all_good, all_scrap)
            SELECT m, 'shift', t, t + interval '12 hours', (t - interval '8 hours')::date,
                   CASE WHEN extract(hour FROM t) = 8 THEN 'day' ELSE 'night' END,
                   39600, 30000 + r * 3000, 600, 12, 3000 - r * 1000, 4000, 2000,
                   1000 + (r * 200)::int, 30, 27000 + r * 2000, 2, 3600, 1000, 30
            FROM unnest(%(m)s::text[]) m,
                 generate_series(%(start)s::timestamp, %(start)s::timestamp
                     + make_interval(days => %(days)s) - interval '12 hours',
                     interval '12 hours') ts,
                 LATERAL (SELECT ts::timestamptz AS t, random() AS r) x
            """,
            p,
        )
        conn.execute(
            """
            INSERT INTO machine_kpi (machine, bucket, bucket_start, bucket_end, planned_s,
                running_s, microstop_s, idle_s, down_s, good, scrap, ideal_s, all_good,
                all_scrap)
            SELECT m, 'hour', t, t + interval '1 hour', 3300, 2700, 50, 250, 300, 90, 3, 2500,
                   90, 3
            FROM unnest(%(m)s::text[]) m,
                 generate_series(%(start)s::timestamptz, %(start)s::timestamptz
                     + make_interval(days => %(days)s) - interval '1 hour',
                     interval '1 hour') t
            """,
            p,
        )
        # Shift buckets: every reason and the unassigned; an hour: two or three of them.
        conn.execute(
            """
            INSERT INTO machine_kpi_reason
            SELECT k.machine, k.bucket, k.bucket_start, r.reason,
                   (k.idle_s + k.down_s + k.setup_s) / 6, 1 + (r.n + length(k.machine)) %% 4
            FROM machine_kpi k,
                 unnest(%(reasons)s::text[] || ARRAY['unassigned']) WITH ORDINALITY r(reason, n)
            WHERE k.bucket = 'shift'
               OR (r.n + extract(hour FROM k.bucket_start)::int) %% 3 = 0
            """,
            p,
        )
        # An interval every 10 minutes: running, then a stop now and then, each lasting 30 s
        # to 10 min (idle and down under 2 min are micro-stops); the machine's last interval
        # is open.
        conn.execute(
            """
            INSERT INTO machine_state_interval (machine, start_ts, end_ts, state, reason,
                work_order, duration_s, is_microstop)
            SELECT m, t, CASE WHEN NOT open THEN t + make_interval(secs => d) END, st,
                   CASE WHEN st IN ('down', 'idle', 'setup')
                        THEN (%(reasons)s::text[])[1 + (n %% 5)] END,
                   'WO-' || m || '-' || (n / 30),
                   CASE WHEN open THEN 0 ELSE d END,
                   CASE WHEN st IN ('idle', 'down') THEN d < 120 END
            FROM unnest(%(m)s::text[]) m,
                 generate_series(0, %(days)s * 144 - 1) n,
                 LATERAL (SELECT %(start)s::timestamptz + n * interval '10 minutes' AS t,
                          (ARRAY['running','running','running','running','down','running',
                                 'idle','running','setup','running','planned_stop'])
                              [1 + (n * 7 + length(m)) %% 11] AS st,
                          CASE WHEN n %% 11 = 0 THEN 600
                               ELSE 30 + abs(hashint4(n) # hashtext(m)) %% 5700 / 10.0
                          END::float8 AS d,
                          n = %(days)s * 144 - 1 AS open) x
            """,
            p,
        )
        conn.execute(
            """
            INSERT INTO machine_hour (machine, hour_start, running_s, idle_s, down_s, setup_s,
                planned_stop_s, good, scrap)
            SELECT machine, bucket_start, 2700, 250, 300, 50, 300, all_good, all_scrap
            FROM machine_kpi WHERE bucket = 'hour'
            """
        )
        # Scrap: two (reason, product) items per machine-hour, dated like the dataflow does.
        conn.execute(
            """
            INSERT INTO machine_scrap (machine, hour_start, day, shift_name, reason, product,
                qty)
            SELECT h.machine, h.bucket_start,
                   ((h.bucket_start - interval '8 hours') AT TIME ZONE %(tz)s)::date,
                   CASE WHEN extract(hour FROM h.bucket_start) BETWEEN 8 AND 19
                        THEN 'day' ELSE 'night' END,
                   i.reason, i.product, i.qty
            FROM machine_kpi h,
                 LATERAL (VALUES ('short_shot', 'P-100', 2), ('unspecified', 'unknown', 1)) i
                     (reason, product, qty)
            WHERE h.bucket = 'hour'
            """,
            {"tz": tz},
        )
        conn.execute(
            """
            INSERT INTO machine_status (machine, state, since, reason, work_order,
                last_event_ts, good_total, scrap_total)
            SELECT DISTINCT ON (machine) machine, state, start_ts, reason, work_order,
                   start_ts + interval '5 minutes', 100000, 3000
            FROM machine_state_interval ORDER BY machine, start_ts DESC
            """
        )
        # Orders: a work order per machine every 5 hours (the intervals name them), four
        # work orders to an order; all but the last ones closed.
        conn.execute(
            """
            CREATE TEMP TABLE wo AS
            SELECT work_order, machine, min(start_ts) AS started_at,
                   max(start_ts) + interval '10 minutes' AS ended_at,
                   bool_or(end_ts IS NULL) AS open,
                   'SO-' || machine || '-' || (substring(work_order FROM '([0-9]+)$')::int / 4)
                       AS order_no
            FROM machine_state_interval GROUP BY work_order, machine
            """
        )
        conn.execute(
            """
            INSERT INTO crm_order (order_no, version, customer, priority, product, qty, due,
                status, event_ts, changed_by, created_at)
            SELECT order_no, 1, 'C' || (hashtext(order_no) & 31), 1 + (hashtext(order_no) & 3),
                   'P-100', 400, max(ended_at) + interval '2 hours',
                   CASE WHEN bool_or(open) THEN 'open' ELSE 'closed' END,
                   min(started_at) - interval '1 day', 'crm', min(started_at) - interval '1 day'
            FROM wo GROUP BY order_no
            """
        )
        conn.execute(
            """
            INSERT INTO work_order (work_order, order_no, product, qty, machine, event_ts,
                changed_by)
            SELECT work_order, order_no, 'P-100', 100, machine, started_at, 'crm' FROM wo
            """
        )
        conn.execute(
            """
            INSERT INTO order_history (order_no, work_order, version, changed_by, accepted_at,
                event_ts, change)
            SELECT order_no, NULL, 1, 'crm', created_at, event_ts, '{"qty": {"old": null}}'::jsonb
            FROM crm_order
            UNION ALL
            SELECT order_no, work_order, 1, 'crm', event_ts, event_ts, '{"qty": {"old": null}}'::jsonb
            FROM work_order
            """
        )
        conn.execute(
            """
            INSERT INTO work_order_progress (work_order, order_no, product, qty, machine, good,
                scrap, progress, rate_per_h, eta, started_at, completed_at, last_event_ts)
            SELECT work_order, order_no, 'P-100', 100, machine,
                   CASE WHEN open THEN 40 ELSE 100 END, 3,
                   CASE WHEN open THEN 0.4 ELSE 1.0 END, 20, ended_at, started_at,
                   CASE WHEN NOT open THEN ended_at END, ended_at
            FROM wo
            """
        )
        conn.execute(
            """
            INSERT INTO order_progress (order_no, customer, priority, product, qty, due, status,
                version, good, scrap, progress, eta, at_risk, last_event_ts)
            SELECT c.order_no, c.customer, c.priority, c.product, c.qty, c.due, c.status, 1,
                   sum(w.good), sum(w.scrap), sum(w.good) / 400.0, max(w.eta),
                   max(w.eta) > c.due, max(w.last_event_ts)
            FROM crm_order c JOIN work_order_progress w USING (order_no)
            GROUP BY c.order_no
            """
        )
        conn.commit()
        counts = {}
        for table in (
            "machine_state_interval",
            "machine_kpi",
            "machine_kpi_reason",
            "machine_scrap",
            "work_order_progress",
            "order_progress",
        ):
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            ).fetchone()
            counts[table] = int(row[0]) if row else 0
        conn.commit()
        conn.autocommit = True
        # As autovacuum would have by the time anyone looks: "before" has statistics too.
        conn.execute("VACUUM ANALYZE")
    return counts


# -- explaining every statement a board sends ---------------------------------------------------


@dataclass
class Plan:
    server_ms: float = 0.0  # planning + execution, every statement of the call
    statements: int = 0
    worst_misestimate: float = 1.0  # max over nodes of max(est/actual, actual/est)
    worst_node: str = ""
    top_est: float = 0.0
    top_actual: float = 0.0
    spills: list[str] = field(default_factory=list)

    def add(self, plan_json: dict[str, Any]) -> None:
        self.statements += 1
        self.server_ms += float(plan_json.get("Planning Time", 0.0))
        self.server_ms += float(plan_json.get("Execution Time", 0.0))
        top = plan_json["Plan"]
        self.top_est += float(top.get("Plan Rows", 0))
        self.top_actual += float(top.get("Actual Rows", 0)) * float(top.get("Actual Loops", 1))
        for node in _nodes(top):
            loops = max(float(node.get("Actual Loops", 1)), 1.0)
            if not node.get("Actual Loops"):
                continue  # never executed
            est = max(float(node.get("Plan Rows", 0)), 1.0)
            act = max(float(node.get("Actual Rows", 0)), 1.0)
            del loops  # both figures are per loop
            off = max(est / act, act / est)
            if off > self.worst_misestimate:
                self.worst_misestimate = off
                self.worst_node = f"{node.get('Node Type')} {node.get('Relation Name', '')}"
            if node.get("Sort Space Type") == "Disk" or node.get("Temp Written Blocks", 0) > 0:
                self.spills.append(str(node.get("Node Type")))


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


_EXPLAIN = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "


def _explainable(query: Any) -> bool:
    text = query.as_string(None) if isinstance(query, sql.Composable) else str(query)
    head = text.lstrip().upper()
    return head.startswith(("SELECT", "WITH")) and "SET_CONFIG" not in head[:40]


class _Cursor:
    """A cursor that runs each query once under EXPLAIN ANALYZE first, then for real."""

    def __init__(self, cur: Any, conn: psycopg.Connection, plan: Plan) -> None:
        self._cur, self._conn, self._plan = cur, conn, plan

    def execute(self, query: Any, params: Any = None) -> Any:
        if _explainable(query):
            q = sql.SQL(_EXPLAIN) + query if isinstance(query, sql.Composable) else _EXPLAIN + query
            with self._conn.cursor() as c:
                row = c.execute(q, params).fetchone()
            assert row is not None
            self._plan.add(row[0][0])
        self._cur.execute(query, params)
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cur)

    def __enter__(self) -> _Cursor:
        self._cur.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._cur.__exit__(*exc)


class _Connection:
    def __init__(self, conn: psycopg.Connection, plan: Plan) -> None:
        self._conn, self._plan = conn, plan

    def cursor(self, *args: Any, **kwargs: Any) -> _Cursor:
        return _Cursor(self._conn.cursor(*args, **kwargs), self._conn, self._plan)

    def execute(self, query: Any, params: Any = None) -> _Cursor:
        return self.cursor().execute(query, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class ExplainingDatabase(Database):
    """The boards' pool, but every statement of `run` is also EXPLAINed into `plan`."""

    plan: Plan | None = None

    def run(self, fn: Callable[[psycopg.Connection], Any], *, timeout: float | None = None) -> Any:
        if self.plan is None:
            return super().run(fn, timeout=timeout)
        plan = self.plan
        return super().run(lambda conn: fn(cast(psycopg.Connection, _Connection(conn, plan))))


# -- the boards' queries --------------------------------------------------------------------


def baseline_modules(rev: str) -> dict[str, ModuleType]:
    """The query modules as they were at `rev` (git show), importable side by side."""
    out: dict[str, ModuleType] = {}
    for name in QUERY_MODULES:
        path = name.replace(".", "/") + ".py"
        source = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "show", f"{rev}:{path}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        spec = importlib.util.spec_from_loader(f"_baseline_{name.replace('.', '_')}", None)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        # dataclasses look their module up in sys.modules while the class is built.
        sys.modules[spec.name] = module
        exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
        out[name] = module
    return out


def current_modules() -> dict[str, ModuleType]:
    return {name: importlib.import_module(name) for name in QUERY_MODULES}


Query = Callable[[Database], Any]


def board_queries(
    mods: dict[str, ModuleType], plant: PlantConfig, first: date, days: int, order_no: str
) -> dict[str, Query]:
    """Every board read, by name, as the pages call it (one data set, one filter each)."""
    aq = mods["dashboards.analytics_queries"]
    q = mods["dashboards.queries"]
    sq = mods["dashboards.scrap_queries"]
    oq = mods["dashboards.order_queries"]
    dk = mods["mesflow.delivery_kpis"]
    tz = plant.tz
    end = first + timedelta(days=days)
    line = plant.lines[0]
    machine = line.machines[0].id
    last_day = end - timedelta(days=1)
    scopes = {"plant": Scope("plant"), "line": Scope("line", line.id)}
    scopes["machine"] = Scope("machine", machine)
    out: dict[str, Query] = {"andon tiles": lambda db: q.andon_tiles(db)}
    for label, scope in scopes.items():
        f = aq.Filters(first, end, scope)
        fs = aq.Filters(first, end, scope, "day")
        out[f"analytics kpis {label}"] = _call(aq.kpis, f, tz)
        out[f"analytics Pareto {label}"] = _call(aq.reasons, f, tz)
        out[f"analytics Pareto {label} day"] = _call(aq.reasons, fs, tz)
        out[f"analytics stops {label}"] = _call(aq.stops, f, tz)
        out[f"analytics stops {label} day"] = _call(aq.stops, fs, tz)
        out[f"analytics timeline {label}"] = _timeline(aq, plant, f, tz)
        out[f"analytics reliability {label}"] = _call(aq.reliability, f, tz)
        out[f"analytics micro-stops {label}"] = _call(aq.microstop_seconds, f, tz)
        out[f"scrap {label}"] = _call(sq.scrap_by_reason, f, tz)
        out[f"scrap {label} day"] = _call(sq.scrap_by_reason, fs, tz)
    day = aq.Filters(last_day, end, Scope("machine", machine))
    out["machine page timeline"] = _b(lambda db: aq.timeline(db, day, tz))
    out["machine page parts/hour"] = _b(lambda db: aq.parts_per_hour(db, machine, last_day, tz))
    out["machine page stops"] = _b(lambda db: aq.stops(db, day, tz))
    out["machine page work orders"] = _b(lambda db: aq.work_orders(db, machine, last_day, tz))
    out["orders board"] = _board(oq)
    out["orders board last page"] = _board(oq, page=10**6)
    out["orders board open"] = _board(oq, status="open")
    out["orders customers"] = _b(lambda db: oq.customers(db))
    out["order page"] = _b(lambda db: oq.order_detail(db, order_no))
    months = dk.MonthRange(f"{first:%Y-%m}", f"{last_day:%Y-%m}")
    for by in ("month", "customer", "product"):
        out[f"kpis by {by}"] = _call(dk_rows, dk, tz, by, months)
    out["kpis filters"] = _b(lambda db: db.run(lambda c: dk.dimension_values(c, tz)))
    return out


def _timeline(aq: ModuleType, plant: PlantConfig, f: Any, tz: ZoneInfo) -> Query:
    """The state timeline as the analytics page reads it: a large plant's scope a lane per
    line (timeline_shares, issue 14 part B2), else every interval; query modules from before
    that have timeline() alone."""
    by_line = (
        hasattr(aq, "timeline_shares")
        and f.scope.kind == "plant"
        and len(plant.machines) > aq.TIMELINE_MACHINE_LANES
    )
    return _call(aq.timeline_shares if by_line else aq.timeline, f, tz)


def _board(oq: ModuleType, status: str | None = None, page: int = 0) -> Query:
    """The order board as its page reads it: a page of orders (order_board_page), or the
    whole (filtered) board with query modules from before pages."""
    if hasattr(oq, "order_board_page"):
        return lambda db: oq.order_board_page(db, status=status, page=page)
    return lambda db: oq.order_board(db, status=status)


def dk_rows(db: Database, dk: ModuleType, tz: ZoneInfo, by: str, months: Any) -> Any:
    return db.run(lambda conn: dk.query_delivery_kpis(conn, tz, by, months))


def _b(fn: Query) -> Query:
    return fn


def _call(fn: Callable[..., Any], *args: Any) -> Query:
    """`fn(db, *args)`, the arguments bound now (not the loop's last values)."""
    return lambda db: fn(db, *args)


@dataclass
class Measured:
    ms: float
    plan: Plan
    rows: int


def measure(db: ExplainingDatabase, fn: Query, runs: int) -> Measured:
    db.plan = None
    result = fn(db)  # warm: plans and pages cached, as on a board someone keeps open
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(db)
        times.append((time.perf_counter() - t0) * 1000)
    plan = Plan()
    db.plan = plan
    try:
        fn(db)
    finally:
        db.plan = None
    return Measured(statistics.median(times), plan, _size(result))


def _size(result: Any) -> int:
    if isinstance(result, list):
        return len(result)
    if isinstance(result, tuple):
        return sum(_size(r) for r in result)
    return 1


def measure_all(
    db: ExplainingDatabase, queries: dict[str, Query], runs: int
) -> dict[str, Measured]:
    return {name: measure(db, fn, runs) for name, fn in queries.items()}


def measure_interleaved(
    db: ExplainingDatabase, before: dict[str, Query], after: dict[str, Query], runs: int
) -> tuple[dict[str, Measured], dict[str, Measured]]:
    """Both query sets on one database, their runs alternated (before, after, before, ...):
    on a machine whose load comes and goes, both see the same load."""
    out_b: dict[str, Measured] = {}
    out_a: dict[str, Measured] = {}
    for name in after:
        fb, fa = before[name], after[name]
        rows = {}
        for label, fn in (("b", fb), ("a", fa)):
            db.plan = None
            rows[label] = _size(fn(db))  # warm
        times: dict[str, list[float]] = {"b": [], "a": []}
        for _ in range(runs):
            for label, fn in (("b", fb), ("a", fa)):
                t0 = time.perf_counter()
                fn(db)
                times[label].append((time.perf_counter() - t0) * 1000)
        plans = {}
        for label, fn in (("b", fb), ("a", fa)):
            plans[label] = db.plan = Plan()
            try:
                fn(db)
            finally:
                db.plan = None
        out_b[name] = Measured(statistics.median(times["b"]), plans["b"], rows["b"])
        out_a[name] = Measured(statistics.median(times["a"]), plans["a"], rows["a"])
    return out_b, out_a


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} CPUs)"


@contextmanager
def embedded_database() -> Iterator[str]:
    from mesflow.services import EmbeddedPostgres

    work = Path(tempfile.mkdtemp(prefix="mesflow-board-bench-"))
    pg = EmbeddedPostgres(work / "pg", delete_on_stop=True)
    try:
        yield pg.url
    finally:
        pg.stop()
        _rmtree(work)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from bench.common import big_plant

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--machines", type=int, default=500)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the 'before' queries")
    ap.add_argument("--only", default="", help="run only queries whose name contains this")
    ap.add_argument(
        "--against",
        default="",
        metavar="REV",
        help="instead: every migration applied first, then the query modules of REV and of "
        "this tree on the same database, their runs interleaved (a loaded machine's fair "
        "before/after of query texts alone)",
    )
    args = ap.parse_args(argv)
    if args.against:
        return main_against(args)
    first = date(2026, 10, 1)
    with tempfile.TemporaryDirectory(prefix="mesflow-board-plant-") as tmp:
        plant = big_plant(args.machines, Path(tmp))
    with embedded_database() as url:
        t0 = time.perf_counter()
        migrate_before(url)
        sync_plant(url, plant)
        counts = fill(url, list(plant.machines), first, args.days, plant.plant.timezone)
        print(
            f"{len(plant.machines)} machines x {args.days} days filled in "
            f"{time.perf_counter() - t0:.1f} s: "
            + ", ".join(f"{k} {v:,}" for k, v in counts.items())
        )
        with psycopg.connect(url) as conn:
            # The order the first machine is making now (the one someone asks about).
            row = conn.execute(
                "SELECT order_no FROM work_order_progress WHERE machine = %s "
                "ORDER BY started_at DESC LIMIT 1",
                (plant.lines[0].machines[0].id,),
            ).fetchone()
        order_no = row[0] if row else ""
        db = ExplainingDatabase(url)
        try:
            before_q = board_queries(
                baseline_modules(args.baseline), plant, first, args.days, order_no
            )
            after_q = board_queries(current_modules(), plant, first, args.days, order_no)
            names = [n for n in after_q if args.only in n]
            print(f"before ({args.baseline}, migrations < {BOARD_MIGRATION}): {load_average()}")
            before = measure_all(db, {n: before_q[n] for n in names}, args.runs)
            t1 = time.perf_counter()
            migrate(url, log=lambda _m: None)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ANALYZE")
            print(f"migration {BOARD_MIGRATION} + ANALYZE: {time.perf_counter() - t1:.1f} s")
            db.close()
            db = ExplainingDatabase(url)  # new sessions: no plan cached from before
            print(f"after (this tree): {load_average()}")
            after = measure_all(db, {n: after_q[n] for n in names}, args.runs)
        finally:
            db.close()
        return report(before, after)


def main_against(args: argparse.Namespace) -> int:
    from bench.common import big_plant

    first = date(2026, 10, 1)
    with tempfile.TemporaryDirectory(prefix="mesflow-board-plant-") as tmp:
        plant = big_plant(args.machines, Path(tmp))
    with embedded_database() as url:
        t0 = time.perf_counter()
        migrate(url, log=lambda _m: None)
        sync_plant(url, plant)
        counts = fill(url, list(plant.machines), first, args.days, plant.plant.timezone)
        print(
            f"{len(plant.machines)} machines x {args.days} days filled in "
            f"{time.perf_counter() - t0:.1f} s (every migration applied first): "
            + ", ".join(f"{k} {v:,}" for k, v in counts.items())
        )
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT order_no FROM work_order_progress WHERE machine = %s "
                "ORDER BY started_at DESC LIMIT 1",
                (plant.lines[0].machines[0].id,),
            ).fetchone()
        order_no = row[0] if row else ""
        db = ExplainingDatabase(url)
        try:
            before_q = board_queries(
                baseline_modules(args.against), plant, first, args.days, order_no
            )
            after_q = board_queries(current_modules(), plant, first, args.days, order_no)
            names = [n for n in after_q if args.only in n]
            print(f"before: queries of {args.against}; after: this tree; {load_average()}")
            before, after = measure_interleaved(
                db, {n: before_q[n] for n in names}, {n: after_q[n] for n in names}, args.runs
            )
        finally:
            db.close()
        return report(before, after)


def report(before: dict[str, Measured], after: dict[str, Measured]) -> int:
    """One line per query: before and after (ms, client side), server ms of each, rows, the
    after plan's top estimate/actual and worst node, spills before/after, after / target."""
    print(
        f"{'query':<31} {'before':>8} {'server':>7} {'after':>7} {'server':>7} {'rows':>6} "
        f"{'est/act':>13} {'worst node after (est vs act)':<32} {'spill b/a':<10} {'/100ms':>6}"
    )
    over = 0
    for name, a in after.items():
        b = before[name]
        p = a.plan
        over += a.ms > TARGET_MS
        est = f"{p.top_est:.0f}/{p.top_actual:.0f}"
        worst = f"{p.worst_misestimate:.1f}x {p.worst_node}".strip()[:32]
        spill = f"{'y' if b.plan.spills else '-'}/{'y' if p.spills else '-'}"
        print(
            f"{name:<31} {b.ms:8.1f} {b.plan.server_ms:7.1f} {a.ms:7.1f} {p.server_ms:7.1f} "
            f"{a.rows:6d} {est:>13} {worst:<32} {spill:<10} {a.ms / TARGET_MS:6.2f}"
        )
    slow_before = [n for n, m in before.items() if m.ms > TARGET_MS]
    print(f"before: {len(slow_before)} over {TARGET_MS:.0f} ms; after: {over} over")
    print(load_average())
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
