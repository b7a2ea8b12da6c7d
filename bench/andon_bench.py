"""Server time of one andon refresh: 50 machines, 30 days of history (issue 9 target < 200 ms).

Fills the result tables of a fresh embedded PostgreSQL the way 30 days of the dataflow would
(state intervals every 10 min, hour and shift KPI rows, work orders), then times, in process:
  - the query alone (v_andon_tile, one round trip), and
  - a whole refresh as a wall screen sends it: the Dash callback over HTTP (Flask test client),
    with the session check, the query, the tile rendering and the JSON.
Prints the median and the 95th percentile of 100 refreshes.

    .venv/bin/python -m bench.andon_bench
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.common import big_plant, fresh_database
from dashboards import context
from dashboards.app import create_app
from dashboards.queries import andon_tiles
from mesflow import users
from mesflow.settings import Settings

MACHINES = 50
DAYS = 30
RUNS = 100

_FILL = """
WITH m AS (SELECT machine FROM plant_machine),
     t AS (SELECT now() - make_interval(days => %(days)s) AS t0)
INSERT INTO machine_state_interval (machine, start_ts, end_ts, state, reason, work_order,
                                    duration_s)
SELECT m.machine, ts, ts + interval '10 min',
       (ARRAY['running', 'running', 'running', 'down', 'idle', 'setup'])[1 + (n %% 6)],
       CASE WHEN n %% 6 >= 3 THEN 'hydraulic_fault' END, 'WO-' || (n / 100), 600
FROM m, t, generate_series(0, %(days)s * 144 - 1) AS n,
     LATERAL (SELECT t.t0 + n * interval '10 min' AS ts) x;

WITH t AS (SELECT date_trunc('hour', now()) - make_interval(days => %(days)s) AS t0)
INSERT INTO machine_kpi (machine, bucket, bucket_start, bucket_end, planned_s, running_s,
                         down_s, good, scrap, ideal_s)
SELECT m.machine, 'hour', t.t0 + n * interval '1 hour', t.t0 + (n + 1) * interval '1 hour',
       3600, 2800, 600, 90, 2, 2400
FROM plant_machine m, t, generate_series(0, %(days)s * 24) AS n;

WITH t AS (SELECT date_trunc('hour', now()) - make_interval(days => %(days)s) AS t0)
INSERT INTO machine_kpi (machine, bucket, bucket_start, bucket_end, shift_date, shift_name,
                         planned_s, running_s, down_s, good, scrap, ideal_s)
SELECT m.machine, 'shift', t.t0 + n * interval '8 hours', t.t0 + (n + 1) * interval '8 hours',
       (t.t0 + n * interval '8 hours')::date, 'S' || (n %% 3), 27000, 21000, 4000, 700, 15,
       19000
FROM plant_machine m, t, generate_series(0, %(days)s * 3) AS n;

INSERT INTO crm_order (order_no, version, customer, priority, product, qty, due, status,
                       event_ts, changed_by)
VALUES ('SO-1', 1, 'ACME', 1, 'P', 100, now() + interval '2 days', 'open', now(), 'bench');

INSERT INTO work_order_progress (work_order, order_no, product, qty, machine, good, scrap,
                                 rate_per_h, last_event_ts)
SELECT 'WO-' || machine, 'SO-1', 'HOUSING', 5000, machine, 300, 4, 100, now()
FROM plant_machine;

INSERT INTO machine_status (machine, state, since, reason, work_order, last_event_ts)
SELECT machine, (ARRAY['running', 'down', 'idle', 'setup'])[1 + (position %% 4)],
       now() - interval '7 min', CASE WHEN position %% 4 = 1 THEN 'hydraulic_fault' END,
       'WO-' || machine, now()
FROM plant_machine;
ANALYZE
"""


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return f"median {statistics.median(ordered):6.1f} ms   p95 {p95:6.1f} ms"


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="andon-bench-"))
    plant = big_plant(MACHINES, work)
    pg, url = fresh_database(plant)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in filter(str.strip, _FILL.split(";")):
                conn.execute(statement, {"days": DAYS})
            users.add_user(conn, "bench", "viewer", "bench-password-123")
            counts = conn.execute(
                "SELECT (SELECT count(*) FROM machine_state_interval),"
                " (SELECT count(*) FROM machine_kpi)"
            ).fetchone()
        assert counts is not None
        print(
            f"history: {MACHINES} machines, {DAYS} days: {counts[0]} state intervals,"
            f" {counts[1]} KPI rows"
        )

        app = create_app(Settings(auth_session_secret="b" * 48), plant, url)
        db = context.of(app.server).db
        andon_tiles(db)  # warm the pool and the plan cache
        query_ms = []
        for _ in range(RUNS):
            t0 = time.perf_counter()
            rows = andon_tiles(db)
            query_ms.append((time.perf_counter() - t0) * 1000)
        assert len(rows) == MACHINES, len(rows)

        client = app.server.test_client()
        page = client.get("/login?next=/").get_data(as_text=True)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf
        client.post(
            "/login",
            data={
                "username": "bench",
                "password": "bench-password-123",
                "csrf": csrf.group(1),
                "next": "/",
            },
        )
        body: dict[str, Any] = {
            "output": "..andon-board.children...andon-clock.children..."
            "andon-banner.children...andon-banner.className..."
            "andon-alerts.children...andon-alerts.className..",
            "outputs": [
                {"id": "andon-board", "property": "children"},
                {"id": "andon-clock", "property": "children"},
                {"id": "andon-banner", "property": "children"},
                {"id": "andon-banner", "property": "className"},
                {"id": "andon-alerts", "property": "children"},
                {"id": "andon-alerts", "property": "className"},
            ],
            "inputs": [{"id": "andon-tick", "property": "n_intervals", "value": 1}],
            "state": [
                {"id": "andon-lang", "property": "data", "value": "zh"},
                {"id": "andon-view", "property": "data", "value": {}},
            ],
            "changedPropIds": ["andon-tick.n_intervals"],
        }
        refresh_ms = []
        size = 0
        for _ in range(RUNS):
            t0 = time.perf_counter()
            resp = client.post("/_dash-update-component", json=body)
            refresh_ms.append((time.perf_counter() - t0) * 1000)
            assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
            size = len(resp.get_data())
        # The timed answer is the board itself, every tile of it (not a redirect or an error).
        assert resp.get_data().count(b'"data-machine"') == MACHINES
        print(f"v_andon_tile query:        {_percentiles(query_ms)}")
        print(f"andon refresh (callback):  {_percentiles(refresh_ms)}   ({size // 1024} KiB JSON)")
        verdict = "OK" if statistics.median(refresh_ms) < 200 else "OVER"
        print(f"target < 200 ms per refresh: {verdict}")
        db.close()
    finally:
        pg.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
