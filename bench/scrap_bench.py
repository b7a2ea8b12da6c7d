"""Speed of the analytics page's "Scrap by reason and product" panel on 30 days of 50 machines.

    .venv/bin/python -m bench.scrap_bench [--days 30] [--machines 50]

The KPI rows come from bench/analytics_bench.py's `fill` (the shift rows the view takes its
shift from); machine_scrap gets 6 (reason, product) rows per machine and hour, more than a
real plant scraps. The panel's query (dashboards/scrap_queries.py) and the whole panel (query,
chart, table) run for the plant, a line and a machine, over the whole range and for one shift
name; the slowest of 3 warm runs is printed. Exit 1 when any takes 1 s or more.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench.analytics_bench import LIMIT_S, fill, timed
from bench.common import big_plant, fresh_database
from dashboards import scrap_queries as sq
from dashboards.analytics_queries import Filters
from dashboards.pages import analytics_scrap
from dashboards.queries import Database
from mesflow.report import Scope

ITEMS = [
    ("short_shot", "P-100", 3),
    ("short_shot", "P-200", 2),
    ("flash", "P-100", 1),
    ("dimension_out", "P-300", 1),
    ("unspecified", "P-100", 4),
    ("unspecified", "unknown", 1),
]


def fill_scrap(url: str, tz: str) -> int:
    """Scrap rows for every hour bucket `fill` wrote (with the day and shift the dataflow
    would give them); the number of rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        for reason, product, qty in ITEMS:
            conn.execute(
                "INSERT INTO machine_scrap "
                "(machine, hour_start, day, shift_name, reason, product, qty) "
                "SELECT h.machine, h.bucket_start, "
                "COALESCE(k.shift_date, (h.bucket_start AT TIME ZONE %s)::date), k.shift_name, "
                "%s, %s, %s FROM machine_kpi h LEFT JOIN machine_kpi k "
                "ON k.machine = h.machine AND k.bucket = 'shift' "
                "AND k.bucket_start <= h.bucket_start AND k.bucket_end > h.bucket_start "
                "WHERE h.bucket = 'hour'",
                (tz, reason, product, qty),
            )
        conn.execute("VACUUM ANALYZE machine_scrap")
        row = conn.execute("SELECT count(*) FROM machine_scrap").fetchone()
    return int(row[0]) if row else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--machines", type=int, default=50)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mesflow-scrap-bench-"))
    plant = big_plant(args.machines, work)
    pg, url = fresh_database(plant)
    try:
        first = date(2026, 10, 1)
        machines = list(plant.machines)
        fill(url, machines, first, args.days, plant.plant.timezone)
        rows = fill_scrap(url, plant.plant.timezone)
        print(f"{len(machines)} machines, {args.days} days, {rows} machine_scrap rows")
        db = Database(url)
        tz = plant.tz
        end = first + timedelta(days=args.days)
        line = plant.lines[0]
        scopes = [Scope("plant"), Scope("line", line.id), Scope("machine", line.machines[0].id)]
        queries: dict[str, Callable[[Filters], Any]] = {
            "scrap_by_reason (query)": lambda f: sq.scrap_by_reason(db, f, tz),
            "panel (query + chart + table)": lambda f: (
                analytics_scrap.scrap_table(rows := sq.scrap_by_reason(db, f, tz), plant, "en")
                and analytics_scrap.figure(rows, plant, "en")
            ),
        }
        slow = 0
        print(f"{'query':<30} {'scope':<22} {'shift':<6} {'seconds':>8}")
        for name, fn in queries.items():
            for scope in scopes:
                for shift in (None, "day"):
                    f = Filters(first, end, scope, shift)
                    s = timed(lambda fn=fn, f=f: fn(f))  # type: ignore[misc]
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
