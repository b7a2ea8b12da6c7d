"""Late data is merged, not lost (docs/metrics.md, 6): events later than the allowed
lateness - hours, a day, across a shift change; states, reasons, work orders, counters -
give the stored figures of in-order input, through the real dataflow and PostgreSQL.

Also: a kill -9 while a rebuild is pending changes nothing; `mesflow replay` of an old
file into a running plant merges it and says so; a rejected event moves no clock.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mesflow.plant import PlantConfig
from streams.replay import replay_file
from tests.helpers import (
    SHANGHAI,
    Mesflow,
    clean_replay,
    count,
    dataflow_position,
    diff_snapshots,
    feed,
    log_position,
    mesflow_env,
    table_snapshot,
    wait_until,
    write_jsonl,
)
from tests.reference_metrics import compute
from tests.test_metrics_reference import differences, report_failure, stored_kpi

M = "IM-01"


def at(local: str, day: str = "2026-11-20") -> str:
    return datetime.fromisoformat(f"{day} {local}").replace(tzinfo=SHANGHAI).isoformat()


def state(ts: str, s: str, reason: str | None = None, m: str = M) -> dict[str, Any]:
    e: dict[str, Any] = {"type": "state", "machine": m, "ts": ts, "state": s}
    return e | ({"reason": reason} if reason else {})


def cnt(ts: str, good: int, m: str = M) -> dict[str, Any]:
    return {"type": "count", "machine": m, "ts": ts, "good": good, "scrap": 0}


def report(ts: str, kind: str, m: str = M, **f: Any) -> dict[str, Any]:
    return {"type": "report", "kind": kind, "machine": m, "ts": ts, **f}


def base_day() -> list[dict[str, Any]]:
    """IM-01 on Friday 16:00-22:00 (day shift to 20:00, then night), IM-03 alongside."""
    ev: list[dict[str, Any]] = [
        {"type": "work_order", "ts": at("15:00:00"), "work_order": wo, "order_no": "SO-7",
         "product": p, "qty": 400}
        for wo, p in (("WO-A", "P-100"), ("WO-B", "P-200"))
    ]  # fmt: skip
    ev += [
        state(at("16:00:00"), "running"),
        report(at("16:05:00"), "wo_start", work_order="WO-A"),
        state(at("18:10:00"), "down", "hydraulic_fault"),
        state(at("18:40:00"), "running"),
        state(at("19:00:00"), "idle"),
        state(at("19:01:00"), "running"),
        report(at("21:00:00"), "wo_end", work_order="WO-A"),
        state(at("21:30:00"), "planned_stop"),
        state(at("21:45:00"), "running"),
        # An unknown reason code: dead-lettered whenever it arrives.
        report(at("19:00:30"), "downtime_reason", at=at("19:00:10"), reason="bogus_code"),
        state(at("16:00:00"), "running", m="IM-03"),
        state(at("20:30:00"), "down", m="IM-03"),
        cnt(at("21:59:00"), 3, m="IM-03"),
    ]
    for i in range(0, 360, 2):  # a count every 2 minutes
        ev.append(
            cnt((datetime.fromisoformat(at("16:00:30")) + timedelta(minutes=i)).isoformat(), 2)
        )
    for i in range(0, 36):  # the cumulative counter every 10 minutes
        ts = (datetime.fromisoformat(at("16:00:45")) + timedelta(minutes=10 * i)).isoformat()
        ev.append({"type": "counter", "machine": M, "ts": ts, "name": "scrap", "value": 50 + i})
    ev.append(cnt(at("22:00:00"), 1))
    return sorted(ev, key=in_order)


def in_order(e: dict[str, Any]) -> tuple[str, bool]:
    return e["ts"], e["type"] != "state"  # one time zone: the text sorts as the time


LATE_CASES: dict[str, list[dict[str, Any]]] = {
    "hours_late_count": [cnt(at("18:00:10"), 9)],
    "a_day_late": [  # the previous day's data, after today's
        state(at("16:00:00", "2026-11-19"), "running"),
        *[cnt(at(f"16:{m:02d}:00", "2026-11-19"), 4) for m in range(1, 59, 3)],
        state(at("17:00:00", "2026-11-19"), "down"),
        cnt(at("17:30:00", "2026-11-19"), 1),
    ],
    "across_the_shift_change": [
        state(at("19:50:00"), "down", "heater_fault"),
        state(at("20:10:00"), "running"),
    ],
    "state_splits_a_stop": [state(at("18:20:00"), "running")],  # merges with 18:40
    "downtime_reason": [
        report(at("18:50:00"), "downtime_reason", at=at("18:15:00"), reason="mold_damage")
    ],
    "wo_start": [report(at("19:30:00"), "wo_start", work_order="WO-B")],
    "counter": [
        {"type": "counter", "machine": M, "ts": at("17:05:00"), "name": "scrap", "value": 2}
    ],
}


def with_ids(events: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [e | {"id": f"{prefix}{i}"} for i, e in enumerate(events)]


def merged_count(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE merged_at IS NOT NULL), count(*) FROM late_merge"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@pytest.mark.parametrize("case", sorted(LATE_CASES))
def test_late_beyond_the_lateness_gives_the_in_order_figures(
    case: str, plant: PlantConfig, db_url: str, tmp_path: Path
) -> None:
    late = with_ids(LATE_CASES[case], "late-")
    events = [*with_ids(base_day(), "b-"), *late]  # the late events arrive last
    path = write_jsonl(tmp_path / "in.jsonl", events)
    summary = replay_file(path, plant, db_url, tmp_path / "rec", progress=False)
    kpi, reasons = stored_kpi(db_url)
    diffs = differences(compute(events, plant), kpi, reasons)
    assert not diffs, report_failure(events, diffs)
    merged, seen = merged_count(db_url)
    assert seen >= 1 and merged == seen, "the late events were not merged by a rebuild"
    assert summary.merged_late == len({e["id"] for e in late})
    assert f"({summary.merged_late} of them late: merged)" in summary.describe()


# The result tables that must equal those of in-order input, without wall-clock columns.
TABLES = {
    "machine_state_interval": "machine, start_ts, end_ts, state, reason, work_order, "
    "duration_s, is_microstop",
    "machine_status": "machine, state, since, reason, work_order, last_event_ts, good_total, "
    "scrap_total",
    "machine_hour": "machine, hour_start, running_s, idle_s, down_s, setup_s, planned_stop_s, "
    "offline_s, good, scrap",
    "machine_kpi": "machine, bucket, bucket_start, planned_s, running_s, microstop_s, "
    "microstop_count, idle_s, down_s, failures, failure_s, good, scrap, ideal_s, all_good, "
    "all_scrap",
    "machine_kpi_reason": "machine, bucket, bucket_start, reason, seconds, stops",
    "machine_scrap": "machine, hour_start, reason, product, qty",
    "work_order_progress": "work_order, good, scrap, started_at",
    "order_progress": "order_no, good, scrap",
    "dead_letter d JOIN ingest_log l ON l.seq = d.log_seq": "convert_from(l.payload, 'UTF8')"
    "::json->>'id', d.reason",
}


def results(url: str) -> dict[str, set[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {
            t: set(conn.execute(f"SELECT {cols} FROM {t}").fetchall()) for t, cols in TABLES.items()
        }


def test_all_tables_equal_in_order_input(
    plant: PlantConfig, db_url: str, ref_db_url: str, tmp_path: Path
) -> None:
    """Every late case at once, delivered last, against the same events in event-time
    order: intervals, status, hours, KPIs, reasons, work-order and order progress and
    dead letters are the same."""
    late = with_ids([e for c in LATE_CASES.values() for e in c], "late-")
    base = with_ids(base_day(), "b-")
    ordered = sorted([*base, *late], key=in_order)
    replay_file(write_jsonl(tmp_path / "a.jsonl", [*base, *late]), plant, db_url,
                tmp_path / "ra", progress=False)  # fmt: skip
    replay_file(write_jsonl(tmp_path / "b.jsonl", ordered), plant, ref_db_url,
                tmp_path / "rb", progress=False)  # fmt: skip
    got, want = results(db_url), results(ref_db_url)
    for table in TABLES:
        assert got[table] == want[table], (
            f"{table}: only after late input {sorted(got[table] - want[table], key=repr)[:3]}, "
            f"only in order {sorted(want[table] - got[table], key=repr)[:3]}"
        )
    assert merged_count(db_url)[0] > 0 and merged_count(ref_db_url) == (0, 0)


def test_a_rejected_report_does_not_move_the_clock(
    plant: PlantConfig, db_url: str, tmp_path: Path
) -> None:
    events = [
        state(at("10:00:00"), "running"),
        cnt(at("10:05:00"), 1),
        report(at("10:30:00"), "downtime_reason", at=at("10:02:00"), reason="bogus_code"),
        report(at("10:40:00"), "downtime_reason", at=at("10:02:00"), reason="mold_damage"),
        state(at("10:50:00"), "down", "bogus_code"),
    ]
    replay_file(write_jsonl(tmp_path / "r.jsonl", events), plant, db_url, tmp_path / "r",
                progress=False)  # fmt: skip
    with psycopg.connect(db_url) as conn:
        dead = conn.execute("SELECT reason FROM dead_letter ORDER BY log_seq").fetchall()
        status = conn.execute("SELECT state, last_event_ts FROM machine_status").fetchall()
        running = conn.execute(
            "SELECT running_s FROM machine_kpi WHERE bucket = 'hour' AND machine = %s", (M,)
        ).fetchall()
    assert [r[0] for r in dead] == ["unknown_reason", "no_stop", "unknown_reason"]
    assert status == [("running", datetime.fromisoformat(at("10:05:00")))]
    assert running == [(300.0,)]


# -- the live dataflow -------------------------------------------------------------------------


def _recent(hours: float) -> datetime:
    return (datetime.now(SHANGHAI) - timedelta(hours=hours)).replace(microsecond=0)


def _live_stream(t0: datetime, hours: float, prefix: str) -> list[dict[str, Any]]:
    """IM-01 and IM-03 running from t0 for `hours`, a count a minute, a stop each hour."""
    out: list[dict[str, Any]] = []
    for m in (M, "IM-03"):
        out.append(state(t0.isoformat(), "running", m=m))
        for i in range(1, int(hours * 60)):
            ts = t0 + timedelta(minutes=i)
            if i % 60 == 30:
                out.append(state(ts.isoformat(), "down", "hydraulic_fault", m=m))
            elif i % 60 == 45:
                out.append(state(ts.isoformat(), "running", m=m))
            else:
                out.append(cnt((ts + timedelta(seconds=7)).isoformat(), 1, m=m))
    out.sort(key=lambda e: e["ts"])
    return with_ids(out, prefix)


def _dataflow(url: str, tmp_path: Path) -> Mesflow:
    env = mesflow_env(url, tmp_path / "var", MESFLOW_SNAPSHOT_SECONDS="0.5")
    proc = Mesflow("run", "dataflow", env=env, log=tmp_path / "dataflow.log")
    wait_until(
        lambda: "following the ingest log" in proc.output() or not proc.alive(),
        timeout=30,
        what="the dataflow to start",
    )
    assert proc.alive(), proc.output()
    return proc


def _pending(url: str) -> int:
    return count(url, "SELECT count(*) FROM late_merge WHERE merged_at IS NULL")


@pytest.mark.parametrize("after_snapshot", [False, True])
def test_kill_during_a_pending_rebuild_changes_nothing(
    after_snapshot: bool, db_url: str, ref_db_url: str, tmp_path: Path
) -> None:
    """Killed before a snapshot, the restart reads the late events again; killed after
    one (epochs of 0.5 s), it resumes with the rebuild pending in the machine's state."""
    now_events = _live_stream(_recent(3), 2.5, "n-")
    gateway = _live_stream(_recent(8), 2, "g-")  # a gateway's buffer, hours late
    proc = _dataflow(db_url, tmp_path)
    try:
        feed(db_url, now_events)
        wait_until(lambda: dataflow_position(db_url) >= log_position(db_url), timeout=60,
                   what="the dataflow to catch up")  # fmt: skip
        feed(db_url, gateway)
        wait_until(lambda: _pending(db_url) > 0, timeout=30, what="late events recorded")
        if after_snapshot:
            time.sleep(1.2)
        proc.kill9()  # within the 2 s debounce: the rebuild has not run
        assert _pending(db_url) > 0, "the rebuild ran before the kill: the test proves nothing"
        proc = _dataflow(db_url, tmp_path)
        wait_until(lambda: _pending(db_url) == 0, timeout=60, what="the merge after the restart")
        wait_until(lambda: dataflow_position(db_url) >= log_position(db_url), timeout=60,
                   what="the dataflow to catch up")  # fmt: skip
        time.sleep(2.5)  # the throttled figures follow within a second
    finally:
        assert proc.terminate() == 0, proc.output()
    want = clean_replay(db_url, ref_db_url, tmp_path / "ref")
    got = table_snapshot(db_url)
    assert not diff_snapshots(got, want), diff_snapshots(got, want)
    assert results(db_url) == results(ref_db_url)


def test_replay_of_yesterdays_file_into_a_running_plant_merges_it(
    plant: PlantConfig, db_url: str, tmp_path: Path
) -> None:
    today = _live_stream(_recent(5), 4, "t-")
    yesterday = _live_stream(_recent(30), 3, "y-")
    proc = _dataflow(db_url, tmp_path)
    try:
        first = replay_file(write_jsonl(tmp_path / "today.jsonl", today), plant, db_url,
                            tmp_path / "r", progress=False)  # fmt: skip
        assert first.merged_late == 0
        second = replay_file(write_jsonl(tmp_path / "yesterday.jsonl", yesterday), plant,
                             db_url, tmp_path / "r", progress=False)  # fmt: skip
        time.sleep(1.5)  # the throttled figures of the last batches
    finally:
        assert proc.terminate() == 0, proc.output()
    assert second.dead_lettered == 0
    assert second.merged_late == len(yesterday)
    assert f"({len(yesterday)} of them late: merged)" in second.describe()
    events = [*today, *yesterday]
    kpi, reasons = stored_kpi(db_url)
    diffs = differences(compute(events, plant), kpi, reasons)
    assert not diffs, "\n".join(diffs[:30])
    assert json.dumps(second.describe())  # printable


def test_a_past_dated_work_order_already_merged_sends_the_rebuild_further_back(
    plant: PlantConfig, db_url: str
) -> None:
    """A rebuild first ignores `work_order` events when it picks its checkpoint (they go to
    every machine and may be dated well in the past); one that matters on this machine -
    here the product of the work order it ran - makes it start again from an older one."""
    from streams.hour_clock import to_us
    from streams.machine_tracker import MachineSpec, MachineTracker, _kpi_rows
    from streams.rebuild import LateStore, event_order

    store = LateStore(db_url, plant)
    feed(db_url, with_ids(base_day(), "b-"))
    tracker = MachineTracker(MachineSpec.from_plant(plant, M))
    saved: list[str] = []
    for seq, ev in store.machine_events(M, 0, log_position(db_url)):
        tracker.apply(seq, ev)
        for mark in ("16:30:00", "21:00:00"):  # checkpoints C1 and C2
            last = tracker.last_ts
            if mark not in saved and last and last >= to_us(datetime.fromisoformat(at(mark))):
                tracker.flush()
                store.save_checkpoint(tracker)
                saved.append(mark)
    tracker.flush()
    # The CRM changes WO-A's product, dated 17:00 (WO-A ran here 16:05-21:00): merged by a
    # rebuild from C1; no checkpoint is written after it.
    revision = {"type": "work_order", "ts": at("17:00:00"), "work_order": "WO-A",
                "order_no": "SO-7", "product": "P-200", "qty": 400, "id": "rev"}  # fmt: skip
    for item in [revision, cnt(at("21:02:00"), 5) | {"id": "late"}]:
        feed(db_url, [item])
        seq = log_position(db_url)
        (ev,) = [e for s, e in store.machine_events(M, seq - 1, seq)]
        tracker.apply(seq, ev)
        assert tracker.take_late() == [seq]
        result = store.rebuild(tracker)
        tracker = result.tracker
    # The late count alone would start from C2 (21:00); with C2 the revision (logged after
    # it) would meet the rebuild late, so the rebuild went back before 17:00.
    assert result.since <= to_us(datetime.fromisoformat(at("17:00:00")))
    in_order = MachineTracker(MachineSpec.from_plant(plant, M))
    for seq, ev in sorted(store.machine_events(M, 0, log_position(db_url)), key=event_order):
        assert in_order.apply(seq, ev) is None or ev.type == "report"
    in_order.flush()  # credits the open interval up to the clock
    assert set(tracker.hours) == set(in_order.hours)
    for h, b in in_order.hours.items():
        got, want = _kpi_rows(M, "hour", tracker.hours[h], None), _kpi_rows(M, "hour", b, None)
        diff = {
            f: (x, y) for f, x, y in zip(got[0]._fields, got[0], want[0], strict=True) if x != y
        }
        assert not diff and got[1] == want[1], (got[0].bucket_start, diff)
    store.close()
