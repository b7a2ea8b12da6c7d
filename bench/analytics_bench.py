"""Speed of the manager analytics page: every query it runs, on 30 days of 50 machines.

    .venv/bin/python -m bench.analytics_bench [--days 30] [--machines 50]

The result tables are filled by SQL in the shapes the dataflow writes (a shift and an hour KPI
row per machine, reasons per bucket, a state interval every ten minutes: 216,000 intervals for
the defaults), because replaying a month of 50 machines takes far longer than the thing
measured. Each query runs for the plant, a line and a machine, over the whole range and for one
shift name; the slowest of 3 warm runs is printed. Exit 1 when any takes 1 s or more.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.common import big_plant, fresh_database
from dashboards import analytics_queries as aq
from dashboards.pages import analytics
from dashboards.queries import Database
from mesflow.report import Scope

LIMIT_S = 1.0
REASONS = [
    ("mold_change", 0.30),
    ("hydraulic_fault", 0.20),
    ("material_shortage", 0.15),
    ("no_operator", 0.15),
    ("tool_break", 0.10),
    ("unassigned", 0.10),
]


def fill(url: str, machines: list[str], first: date, days: int, tz: str) -> int:
    """Synthetic results for `days` plant-local days from `first`; the number of intervals."""
    start = f"{first.isoformat()} 08:00"
    params: dict[str, Any] = {"m": machines, "start": start, "days": days, "tz": tz}
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
            params,
        )
        conn.execute(
            """
            INSERT INTO machine_kpi (machine, bucket, bucket_start, bucket_end, planned_s,
                running_s, microstop_s, idle_s, down_s, good, scrap, ideal_s)
            SELECT m, 'hour', t, t + interval '1 hour', 3300, 2700, 50, 250, 300, 90, 3, 2500
            FROM unnest(%(m)s::text[]) m,
                 generate_series(%(start)s::timestamptz, %(start)s::timestamptz
                     + make_interval(days => %(days)s) - interval '1 hour',
                     interval '1 hour') t
            """,
            params,
        )
        for reason, share in REASONS:
            conn.execute(
                "INSERT INTO machine_kpi_reason SELECT machine, bucket, bucket_start, %s, "
                "(idle_s + down_s + setup_s) * %s, GREATEST(1, (4 * %s)::int) FROM machine_kpi",
                (reason, share, share),
            )
        # An interval every 10 minutes: running, then a stop now and then.
        conn.execute(
            """
            INSERT INTO machine_state_interval (machine, start_ts, end_ts, state, reason,
                work_order, duration_s, is_microstop)
            SELECT m, t, t + interval '10 minutes', st,
                   CASE WHEN st IN ('down', 'idle', 'setup')
                        THEN (ARRAY['mold_change','hydraulic_fault','material_shortage',
                                    'no_operator','tool_break'])[1 + (n %% 5)] END,
                   'WO-' || m || '-' || (n / 30), 600,
                   CASE WHEN st IN ('idle', 'down') THEN n %% 3 = 0 END
            FROM unnest(%(m)s::text[]) m,
                 generate_series(0, %(days)s * 144 - 1) n,
                 LATERAL (SELECT %(start)s::timestamptz + n * interval '10 minutes' AS t,
                          (ARRAY['running','running','running','running','down','running',
                                 'idle','running','setup','running','planned_stop'])
                              [1 + (n * 7 + length(m)) %% 11] AS st) x
            """,
            params,
        )
        conn.execute(
            "INSERT INTO machine_status (machine, state, since, last_event_ts) "
            "SELECT machine, 'running', max(start_ts), max(end_ts) FROM machine_state_interval "
            "GROUP BY machine"
        )
        row = conn.execute("SELECT count(*) FROM machine_state_interval").fetchone()
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    return int(row[0]) if row else 0


def timed(fn: Callable[[], Any], runs: int = 3) -> float:
    fn()  # warm: plans and pages cached, as on a page someone keeps open
    worst = 0.0
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        worst = max(worst, time.perf_counter() - t0)
    return worst


def _bound(fn: Callable[[aq.Filters], Any], f: aq.Filters) -> Callable[[], Any]:
    return lambda: fn(f)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--machines", type=int, default=50)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mesflow-analytics-bench-"))
    plant = big_plant(args.machines, work)
    pg, url = fresh_database(plant)
    try:
        first = date(2026, 10, 1)
        machines = list(plant.machines)
        t0 = time.perf_counter()
        intervals = fill(url, machines, first, args.days, plant.plant.timezone)
        print(
            f"{len(machines)} machines, {args.days} days, {intervals} state intervals "
            f"(filled in {time.perf_counter() - t0:.1f} s)"
        )
        db = Database(url)
        tz = plant.tz
        end = first + timedelta(days=args.days)
        line = plant.lines[0]
        scopes = [Scope("plant"), Scope("line", line.id), Scope("machine", line.machines[0].id)]
        queries: dict[str, Callable[[aq.Filters], Any]] = {
            "kpis (trend, shifts, CSV)": lambda f: aq.kpis(db, f, tz),
            "reasons (Pareto)": lambda f: aq.reasons(db, f, tz),
            "stops (drill-down)": lambda f: aq.stops(db, f, tz),
            "stops of one reason": lambda f: aq.stops(db, f, tz, reason="hydraulic_fault"),
            "timeline (Gantt)": lambda f: aq.timeline(db, f, tz),
            "reliability (MTBF/MTTR)": lambda f: aq.reliability(db, f, tz),
            "micro-stops (waterfall)": lambda f: aq.microstop_seconds(db, f, tz),
            "whole page (load + render)": lambda f: analytics.render(
                analytics.load(db, f, tz), plant, "en"
            ),
        }
        slow = 0
        print(f"{'query':<30} {'scope':<22} {'shift':<6} {'seconds':>8}")
        for name, fn in queries.items():
            for scope in scopes:
                for shift in (None, "day"):
                    f = aq.Filters(first, end, scope, shift)
                    s = timed(_bound(fn, f))
                    slow += s >= LIMIT_S
                    label = f"{scope.kind} {scope.id or ''}".strip()
                    print(f"{name:<30} {label:<22} {shift or 'all':<6} {s:8.3f}")
        db.close()
        print(f"limit {LIMIT_S:.1f} s: {'all under' if not slow else f'{slow} over'}")
        return 1 if slow else 0
    finally:
        pg.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
