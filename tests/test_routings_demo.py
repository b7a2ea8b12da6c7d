"""The demo plant's routings over a simulated day (collectors/simulator, replayed through the
real dataflow and PostgreSQL): every routed work order's operations chain (what goes into an
operation is what came out good of the one before), and its progress is its last operation's."""

from __future__ import annotations

from datetime import datetime
from itertools import groupby, pairwise
from pathlib import Path

import psycopg

from collectors.simulator import write_history
from mesflow.plant import PlantConfig
from streams.replay import replay_file

DAY_START = datetime.fromisoformat("2026-11-17T00:00:00+08:00")  # a Tuesday


def test_a_simulated_day_s_operations_chain(
    plant: PlantConfig, db_url: str, tmp_path: Path
) -> None:
    assert plant.routings, "the example plant has routings"
    path = tmp_path / "day.jsonl"
    write_history(plant, path, seed=7, start=DAY_START, duration_s=86_400)
    assert replay_file(path, plant, db_url, tmp_path / "rec", progress=False).dead_lettered == 0
    with psycopg.connect(db_url) as conn:
        ops = conn.execute(
            """SELECT work_order, product, position, op, qty_in, good, scrap, wip_before, is_last
               FROM v_work_order_operations ORDER BY work_order, position"""
        ).fetchall()
        progress = {
            r[0]: (r[1], r[2])
            for r in conn.execute("SELECT work_order, good, scrap FROM work_order_progress")
        }
    routes = plant.routings_by_product
    multi = 0
    for wo, group in groupby(ops, key=lambda r: r[0]):
        rows = list(group)
        product = rows[0][1]
        assert product in routes, (wo, product)
        assert [r[3] for r in rows] == [o.op for o in routes[product].operations], wo
        assert [r[2] for r in rows] == list(range(1, len(rows) + 1))
        first = rows[0]
        assert first[4] == first[5] + first[6] and first[7] == 0
        for before, here in pairwise(rows):
            assert here[4] == before[5], (wo, here[3])
            assert here[7] == max(before[5] - here[5] - here[6], 0), (wo, here[3])
        assert [r[8] for r in rows] == [False] * (len(rows) - 1) + [True]
        assert progress[wo] == (rows[-1][5], sum(r[6] for r in rows)), wo
        multi += any(r[5] for r in rows[1:])  # parts went past the first operation
    assert multi > 0, "no routed work order got past its first operation in a day"
