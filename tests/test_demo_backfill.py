"""The demo's history is believable: simulated, replayed through the real path, the figures
from the v_kpi_* views are those of a plant (OEE 55-85 %, performance at most 100 %)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import psycopg

from collectors.simulator import write_history
from mesflow.plant import PlantConfig
from streams.replay import replay_file

DAY_START = datetime.fromisoformat("2026-11-17T00:00:00+08:00")  # a Tuesday


def _figures(db_url: str, sql: str) -> list[tuple[str, float, float]]:
    with psycopg.connect(db_url) as conn:
        return [(str(k), float(p), float(o)) for k, p, o in conn.execute(sql).fetchall()]


def test_a_replayed_day_has_believable_oee(plant: PlantConfig, db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "day.jsonl"
    write_history(plant, path, seed=42, start=DAY_START, duration_s=86_400)
    summary = replay_file(path, plant, db_url, tmp_path / "rec", progress=False)
    assert summary.dead_lettered == 0
    day = DAY_START.date().isoformat()
    plant_row = _figures(
        db_url,
        "SELECT 'plant', sum(ideal_s) / nullif(sum(apt_s), 0), "
        "sum(ideal_s * good / nullif(good + scrap, 0)) / nullif(sum(planned_s), 0) "
        f"FROM v_kpi_plant_shift WHERE shift_date = '{day}'",
    )
    lines = _figures(
        db_url,
        "SELECT line, sum(ideal_s) / nullif(sum(apt_s), 0), "
        "sum(ideal_s * good / nullif(good + scrap, 0)) / nullif(sum(planned_s), 0) "
        f"FROM v_kpi_line_shift WHERE shift_date = '{day}' GROUP BY line ORDER BY line",
    )
    machines = _figures(
        db_url,
        "SELECT machine, sum(ideal_s) / nullif(sum(apt_s), 0), "
        "sum(ideal_s * good / nullif(good + scrap, 0)) / nullif(sum(planned_s), 0) "
        f"FROM v_kpi_machine_shift WHERE shift_date = '{day}' GROUP BY machine",
    )
    assert {line for line, _, _ in lines} == {line.id for line in plant.lines}
    assert len(machines) == len(plant.machines)
    for name, performance, _ in machines:
        # A machine's parts are judged against its product's cycle time, not its default.
        assert 0.7 <= performance <= 1.0, (name, performance)
    for name, performance, oee in plant_row + lines:
        assert 0.55 <= oee <= 0.85, (name, oee)
        assert performance <= 1.0, (name, performance)
    # And shift by shift, as the views compute them.
    shifts = _figures(
        db_url,
        "SELECT line || ' ' || shift_name, performance, oee FROM v_kpi_line_shift "
        f"WHERE shift_date = '{day}' AND planned_s > 0",
    )
    assert shifts
    for name, performance, oee in shifts:
        assert 0.55 <= oee <= 0.85, (name, oee)
        assert performance <= 1.0, (name, performance)


def test_live_work_orders_go_to_the_ingest_log_unless_the_crm_made_them(db_url: str) -> None:
    from collectors.simulator.publisher import WorkOrderSink

    ev = {"type": "work_order", "machine": "IM-01", "ts": "2026-11-17T08:00:00+08:00",
          "work_order": "WO-IM-01-0001", "order_no": "STOCK-P-100", "product": "P-100",
          "qty": 100, "id": "sim42-x-IM-01-1"}  # fmt: skip
    sink = WorkOrderSink(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO crm_order (order_no, version, customer, priority, product, qty, due, "
            "status, event_ts, changed_by) VALUES ('SO-1', 1, 'ACME', 1, 'P-100', 10, now(), "
            "'open', now(), 'crm')"
        )
        conn.execute(
            "INSERT INTO work_order (work_order, order_no, product, qty, event_ts, changed_by) "
            "VALUES ('WO-IM-01-0002', 'SO-1', 'P-100', 10, now(), 'crm')"
        )
        sink.send(ev)
        sink.send({**ev, "work_order": "WO-IM-01-0002", "id": "sim42-x-IM-01-2"})
        sink.close()
        rows = conn.execute("SELECT source, payload FROM ingest_log ORDER BY seq").fetchall()
    assert [(src, bytes(p).count(b"WO-IM-01-0001")) for src, p in rows] == [("simulator", 1)]
    assert sink.sent == 1


def _log_rows(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ingest_log WHERE source = 'simulator:backfill'"
        ).fetchone()
        assert row is not None
        return int(row[0])


def test_the_demo_backfills_a_week_once_then_resumes(
    plant: PlantConfig, db_url: str, tmp_path: Path
) -> None:
    import time
    from datetime import timedelta

    from collectors.simulator.publisher import read_state
    from mesflow.demo import backfill_history, simulator_state_file
    from streams.runner import run_flow

    now = datetime.now(plant.tz)
    t0 = time.monotonic()
    assert backfill_history(plant, db_url, tmp_path, seed=7, now=now)
    stored_in = time.monotonic() - t0
    rows = _log_rows(db_url)
    assert rows > 50_000  # a week of 12 machines
    assert stored_in < 30, stored_in
    # The live simulator continues where the history ends: at now, not ahead of it.
    state = simulator_state_file(tmp_path, plant, 7)
    resume_at = read_state(state)
    assert resume_at is not None
    assert now - timedelta(minutes=1) < resume_at <= now

    # The dataflow processes it like any source: a week of figures, none dead-lettered.
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT max(seq) FROM ingest_log").fetchone()
        assert row is not None
        t1 = time.monotonic()
        run_flow(plant, db_url, tmp_path / "rec", 10.0, upto_seq=int(row[0]))
        processed_in = time.monotonic() - t1
        days = conn.execute(
            "SELECT count(DISTINCT shift_date) FROM v_kpi_plant_shift WHERE planned_s > 0"
        ).fetchone()
        dead = conn.execute("SELECT count(*) FROM dead_letter").fetchone()
    assert days is not None and days[0] >= 7
    # History work orders never share an id with the live run's WO-<machine>-0001, ...
    # (which the CRM stand-in's orders name): parts of last week never count for them.
    with psycopg.connect(db_url) as conn:
        wos = [r[0] for r in conn.execute("SELECT work_order FROM work_order_progress")]
    assert wos and all(wo.split("-")[-1].startswith("H") for wo in wos), wos[:5]
    assert dead is not None and dead[0] == 0
    print(f"backfill: {rows} events stored in {stored_in:.1f} s, processed in {processed_in:.1f} s")

    # A restart does not backfill again (the simulator resumes from its state file).
    assert not backfill_history(plant, db_url, tmp_path, seed=7)
    assert _log_rows(db_url) == rows


def test_an_interrupted_backfill_is_finished_with_the_same_events(
    plant: PlantConfig, db_url: str, tmp_path: Path
) -> None:
    import json
    from datetime import timedelta

    from mesflow.demo import backfill_history, simulator_state_file

    now = datetime.now(plant.tz)
    assert backfill_history(plant, db_url, tmp_path, seed=7, history=timedelta(hours=6), now=now)
    rows = _log_rows(db_url)
    # As if the demo had been killed before the backfill finished.
    state = simulator_state_file(tmp_path, plant, 7)
    plan_file = state.with_name(f"{state.stem}-backfill.json")
    plan = json.loads(plan_file.read_text("utf-8"))
    plan_file.write_text(json.dumps({**plan, "done": False}), encoding="utf-8")
    later = now + timedelta(minutes=5)
    assert backfill_history(plant, db_url, tmp_path, seed=7, history=timedelta(hours=6), now=later)
    assert _log_rows(db_url) == rows  # the same plan, the same ids: nothing stored twice
