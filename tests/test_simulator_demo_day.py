"""Two simulated days of the demo plant through the real path (replay file -> ingest log ->
dataflow -> PostgreSQL) fill the boards of issue 13 with consistent figures: labor without
odd sign-ins, routed quantities without negative WIP, yields, and inspection compliance."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collectors.simulator import machine_specs, write_history
from mesflow.plant import PlantConfig
from streams.replay import replay_file

START = datetime.fromisoformat("2026-11-17T00:00:00+08:00")  # a Tuesday


@pytest.fixture(scope="module")
def days(plant: PlantConfig, tmp_path_factory: pytest.TempPathFactory) -> tuple[PlantConfig, Path]:
    path = tmp_path_factory.mktemp("demo-day") / "two-days.jsonl"
    write_history(plant, path, seed=42, start=START, duration_s=2 * 86_400)
    return plant, path


def _rows(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql).fetchall()


def test_two_simulated_days_fill_the_floor_boards_consistently(
    days: tuple[PlantConfig, Path], db_url: str, tmp_path: Path
) -> None:
    plant, path = days
    summary = replay_file(path, plant, db_url, tmp_path / "rec", progress=False)
    assert summary.dead_lettered == 0

    # Labor: everyone signs in and out within the limit; only a forgetful person's sign-in
    # is ever closed by the labor step.
    forgetful = {n for s in machine_specs(plant) if s.crew for n in s.crew.forgetful}
    issues = _rows(db_url, "SELECT kind, person FROM v_labor_issues")
    assert {p for _, p in issues} <= forgetful, issues
    hours = _rows(db_url, "SELECT person, sum(hours) FROM v_labor_by_shift_person GROUP BY 1")
    crew = {n for s in machine_specs(plant) if s.crew for n in s.crew.by_shift.values()}
    assert {p for p, _ in hours} == crew  # 17 people: 6 + 5 on the presses, 6 on the CNC line
    # A person's total is their attendance, however many stations they tend: at most the
    # three 12-hour shifts the two days touch.
    assert all(0 < float(h) <= 36 for _, h in hours)
    assert _rows(db_url, "SELECT count(*) FROM v_station_people")[0][0] >= 6
    # One person at two stations books half of their time to each.
    shares = _rows(db_url, "SELECT DISTINCT share FROM v_station_people")
    assert {float(s) for (s,) in shares} <= {1.0, 0.5}

    # Routings: a later step never makes more than the previous one handed over.
    steps = _rows(
        db_url,
        "SELECT work_order, position, qty_in, good, scrap, wip_before FROM "
        "v_work_order_operations ORDER BY work_order, position",
    )
    assert max(pos for _, pos, *_ in steps) == 3  # a mold insert reached finish milling
    later = [s for s in steps if s[1] > 1 and s[3] + s[4] > 0]
    assert later and all(good + scrap <= qty_in for _, _, qty_in, good, scrap, _ in later)
    assert all(wip >= 0 for *_, wip in steps)
    assert all(w >= 0 for (w,) in _rows(db_url, "SELECT wip FROM v_wip"))

    # Yield: first pass at most final, both believable.
    yields = _rows(
        db_url,
        "SELECT sum(first_pass_good)::float / sum(made), sum(final_good)::float / sum(made) "
        "FROM v_yield WHERE made > 0",
    )
    fpy, final = yields[0]
    assert 0.85 < fpy <= final < 1.0, (fpy, final)
    codes = {c for (c,) in _rows(db_url, "SELECT DISTINCT code FROM v_defects")}
    assert codes and codes <= set(plant.defects_by_code)

    # Inspections: every run's first article and last piece on record; patrols mostly on
    # time on the molding line (24/7), with a few missed.
    compliance = {
        (line, stage): (on_time, missed)
        for line, stage, on_time, missed in _rows(
            db_url,
            "SELECT line, stage, sum(done_on_time), sum(missed) FROM v_inspection_compliance "
            "GROUP BY 1, 2",
        )
    }
    for line in ("IM", "CNC"):
        assert compliance[(line, "first")][1] == 0, compliance
        assert compliance[(line, "last")][1] == 0, compliance
    on_time, missed = compliance[("IM", "patrol")]
    assert 0 < missed < on_time / 5, compliance
