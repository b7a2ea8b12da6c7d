"""Inspections through the real dataflow into a real PostgreSQL: a missed and a failed first
article flag their runs and raise `first_article` alerts; a missed patrol shows and raises a
`patrol_missed` alert; a last piece is owed at the work order's end; replays and a restart
in the middle change nothing."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from mesflow.plant import InspectionPolicy, PlantConfig
from streams.hour_clock import to_us
from streams.replay import replay_file
from streams.runner import run_flow
from tests.helpers import write_jsonl

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=TZ)
POLICY = InspectionPolicy(
    first_article_within_parts=5,
    block_until_first_article_passes=True,
    patrol_every_minutes=60,
    patrol_grace_minutes=10,
    last_piece_required=True,
)
RULES = """\
people:
  zhang: {display: 张伟, email: zhang@plant.example}
  li:    {display: Li Na, email: li@plant.example, language: en}
rules:
  - name: fa
    kind: first_article
    scope: {line: IM}
    severity: critical
    levels:
      - {after_min: 0, people: [zhang]}
      - {after_min: 30, people: [li]}
  - name: patrol
    kind: patrol_missed
    levels:
      - {after_min: 0, people: [zhang]}
"""


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def ts(minutes: float) -> str:
    return at(minutes).isoformat()


def report(machine: str, minutes: float, kind: str, **kw: Any) -> dict[str, Any]:
    return {
        "type": "report",
        "machine": machine,
        "ts": ts(minutes),
        "kind": kind,
        "id": f"{machine}-{kind}-{minutes}",
        **kw,
    }


def counts(machine: str, start: float, stop: float) -> list[dict[str, Any]]:
    out = []
    m = start
    while m < stop:
        out.append(
            {
                "type": "count",
                "machine": machine,
                "ts": ts(m),
                "good": 1,
                "id": f"{machine}-c{m:.2f}",
            }
        )
        m += 1
    return out


def events() -> list[dict[str, Any]]:
    """IM-01 runs WO-1 from 08:01, makes a part a minute until 10:30 with no first article
    (missing after the 6th part), a patrol at 09:05, then none: the 10:05 patrol is missed
    at 10:15; the work order ends at 10:50 without a last piece; the press then idles until
    11:00. IM-02 runs WO-2 from 08:01: its first article fails at 08:03, never passes."""
    setup: list[dict[str, Any]] = [
        {
            "type": "order",
            "ts": ts(0),
            "order_no": "SO-1",
            "version": 1,
            "customer": "ACME",
            "priority": 1,
            "product": "P-100",
            "qty": 1000,
            "due": ts(24 * 60),
            "status": "open",
            "id": "o1",
        },
        {
            "type": "work_order",
            "ts": ts(0),
            "work_order": "WO-1",
            "order_no": "SO-1",
            "product": "P-100",
            "qty": 500,
            "machine": "IM-01",
            "id": "w1",
        },
        {
            "type": "work_order",
            "ts": ts(0),
            "work_order": "WO-2",
            "order_no": "SO-1",
            "product": "P-100",
            "qty": 500,
            "machine": "IM-02",
            "id": "w2",
        },
    ]
    ev = [*setup]
    for m in ("IM-01", "IM-02"):
        ev.append(
            {"type": "state", "machine": m, "ts": ts(0.5), "state": "running", "id": f"{m}-s"}
        )
    ev.append(report("IM-01", 1, "wo_start", work_order="WO-1"))
    ev.append(report("IM-02", 1, "wo_start", work_order="WO-2"))
    timeline = [
        *counts("IM-01", 1.5, 150),
        *counts("IM-02", 1.7, 170),
        report(
            "IM-02",
            3,
            "inspection",
            work_order="WO-2",
            stage="first",
            result="fail",
            characteristics=[
                {"name": "length", "value": 50.4, "lsl": 49.8, "usl": 50.2, "unit": "mm"}
            ],
            defects=[{"code": "flash", "qty": 1}],
            operator="qc-wang",
        ),
        report("IM-01", 65, "inspection", work_order="WO-1", stage="patrol", result="pass"),
        report("IM-02", 61, "inspection", work_order="WO-2", stage="patrol", result="pass"),
        report("IM-02", 121, "inspection", work_order="WO-2", stage="patrol", result="pass"),
        report("IM-01", 170, "wo_end", work_order="WO-1"),
        {"type": "state", "machine": "IM-01", "ts": ts(171), "state": "idle", "id": "i1"},
        {"type": "state", "machine": "IM-01", "ts": ts(180), "state": "running", "id": "i2"},
    ]
    timeline.sort(key=lambda e: e["ts"])
    return ev + timeline


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def everything(url: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "inspection": rows(url, "SELECT * FROM inspection ORDER BY seq"),
        "run": rows(
            url,
            "SELECT work_order, machine, operation, start_ts, end_ts, product, "
            "first_article, blocked, parts_made, next_patrol_due, patrol_missed_since, "
            "last_piece, slots FROM inspection_run ORDER BY 1, 2, 3, 4",
        ),
        "flag": rows(
            url,
            "SELECT work_order, machine, flag, since, until_ts, detail, blocking "
            "FROM inspection_flag ORDER BY 1, 2, 3, 4",
        ),
        "alert_step": rows(
            url, "SELECT alert_id, step, level, at FROM alert_step ORDER BY alert_id, at, step"
        ),
    }


@pytest.fixture
def strict(plant: PlantConfig) -> PlantConfig:
    return plant.model_copy(update={"inspections": POLICY})


@pytest.fixture
def alerts_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "alerts.yaml"
    path.write_text(RULES, encoding="utf-8")
    monkeypatch.setenv("MESFLOW_ALERTS_CONFIG", str(path))
    return path


def test_missed_and_failed_first_articles_flag_and_alert(
    db_url: str, strict: PlantConfig, tmp_path: Path, alerts_file: Path
) -> None:
    path = write_jsonl(tmp_path / "day.jsonl", events())
    summary = replay_file(path, strict, db_url, tmp_path / "rec", progress=False)
    assert summary.dead_lettered == 0

    # Every report stored, its characteristics judged from their limits.
    got = rows(
        db_url,
        "SELECT work_order, stage, result, product, line, all_ok, "
        "characteristics -> 0 ->> 'ok', defects, operator FROM v_inspections ORDER BY ts",
    )
    assert got[0] == (
        "WO-2",
        "first",
        "fail",
        "P-100",
        "IM",
        False,
        "false",
        [{"code": "flash", "qty": 1}],
        "qc-wang",
    )
    assert ("WO-1", "patrol", "pass", "P-100", "IM", None, None, [], None) in got
    assert len(got) == 4

    runs = rows(
        db_url,
        "SELECT work_order, first_article, blocked, end_ts, last_piece, "
        "patrol_missed_since FROM v_inspection_runs ORDER BY work_order",
    )
    assert runs == [
        ("WO-1", "missing", False, at(170), "missing", None),
        # WO-2: failed and still blocked; its patrols at 09:01 and 10:01 were on time, the
        # next (11:01) is due with the replay's last event at 10:49: not missed yet.
        ("WO-2", "failed", True, None, "pending", None),
    ]

    flags = rows(
        db_url,
        "SELECT work_order, machine, flag, detail, since, until_ts "
        "FROM inspection_flag WHERE until_ts IS NULL OR until_ts > since "
        "ORDER BY work_order, flag, since",
    )
    assert flags == [
        ("WO-1", "IM-01", "first_article", "missing", at(1), at(170)),
        ("WO-1", "IM-01", "last_piece", "missed", at(170), None),
        ("WO-1", "IM-01", "patrol_missed", "missed", at(135), at(170)),
        ("WO-2", "IM-02", "first_article", "failed", at(1), None),
    ]
    open_now = rows(
        db_url,
        "SELECT work_order, flag, blocking FROM v_inspection_flags ORDER BY work_order, flag",
    )
    assert open_now == [("WO-1", "last_piece", False), ("WO-2", "first_article", True)]

    start = to_us(at(1))
    fa1 = f"fa:run:WO-1@IM-01:{start}"
    fa2 = f"fa:run:WO-2@IM-02:{start}"
    pa1 = f"patrol:run:WO-1@IM-01:{to_us(at(135))}"
    history = rows(
        db_url,
        "SELECT alert_id, step, level, at, people FROM v_alert_history ORDER BY alert_id, at, step",
    )
    assert history == [
        # Missing from the start until the run's end: opened, escalated at 30 min.
        (fa1, "opened", 0, at(1), ["zhang"]),
        (fa1, "escalated", 1, at(31), ["li"]),
        (fa1, "resolved", 1, at(170), ["zhang", "li"]),
        (fa2, "opened", 0, at(1), ["zhang"]),
        (fa2, "escalated", 1, at(31), ["li"]),
        # Over with the work order's end at 10:50 (resolved: the press sends events until
        # 11:00, past the rule's clear_after_s of 2 minutes).
        (pa1, "opened", 0, at(135), ["zhang"]),
        (pa1, "resolved", 0, at(170), ["zhang"]),
    ]
    facts = rows(db_url, f"SELECT facts FROM alert WHERE alert_id = '{fa2}'")[0][0]
    assert facts["work_order"] == "WO-2" and facts["detail"] == "failed" and facts["blocking"]

    compliance = rows(
        db_url,
        "SELECT machine, stage, due, done_on_time, done_late, missed, "
        "failed FROM v_inspection_compliance ORDER BY machine, stage",
    )
    assert compliance == [
        ("IM-01", "first", 1, 0, 0, 1, 0),
        ("IM-01", "last", 1, 0, 0, 1, 0),
        ("IM-01", "patrol", 2, 1, 0, 1, 0),
        ("IM-02", "first", 1, 1, 0, 0, 1),
        ("IM-02", "patrol", 2, 2, 0, 0, 0),
    ]

    # The same file again, and the whole log again from scratch: nothing changes.
    before = everything(db_url)
    replay_file(path, strict, db_url, tmp_path / "rec", progress=False)
    assert everything(db_url) == before
    end = rows(db_url, "SELECT max(seq) FROM ingest_log")[0][0]
    run_flow(strict, db_url, tmp_path / "fresh", 1.0, upto_seq=end)
    assert everything(db_url) == before


def test_a_restart_in_the_middle_gives_the_same_rows(
    db_url: str, ref_db_url: str, strict: PlantConfig, tmp_path: Path, alerts_file: Path
) -> None:
    ev = events()
    cut = len(ev) // 2
    first = write_jsonl(tmp_path / "a.jsonl", ev[:cut])
    second = write_jsonl(tmp_path / "b.jsonl", ev[cut:])
    replay_file(first, strict, db_url, tmp_path / "rec", progress=False)
    replay_file(second, strict, db_url, tmp_path / "rec", progress=False)
    whole = write_jsonl(tmp_path / "all.jsonl", ev)
    replay_file(whole, strict, ref_db_url, tmp_path / "rec-ref", progress=False)
    got, want = everything(db_url), everything(ref_db_url)
    # Inspection seqs are the log's: the same in both (one line per seq, in file order).
    assert got == want


def test_live_an_overdue_patrol_shows_without_new_events(
    db_url: str, plant: PlantConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live, nothing arrives after the first article: the step's timer moves the clock with
    the wall clock, and the patrol due 6 minutes ago (grace 5) shows as missed."""
    import threading
    import time

    from mesflow.ingest_log import append, record_for

    monkeypatch.delenv("MESFLOW_ALERTS_CONFIG", raising=False)
    live_plant = plant.model_copy(
        update={"inspections": InspectionPolicy(patrol_every_minutes=60, patrol_grace_minutes=5)}
    )
    now = datetime.now(TZ).replace(microsecond=0)
    started = now - timedelta(minutes=66)

    def later(minutes: float) -> str:
        return (started + timedelta(minutes=minutes)).isoformat()

    live_events = [
        {"type": "state", "machine": "IM-01", "ts": later(0), "state": "running"},
        {
            "type": "report",
            "kind": "wo_start",
            "machine": "IM-01",
            "ts": later(0),
            "work_order": "WO-L",
        },
        {
            "type": "report",
            "kind": "inspection",
            "machine": "IM-01",
            "ts": later(1),
            "work_order": "WO-L",
            "stage": "first",
            "result": "pass",
        },
    ]
    with psycopg.connect(db_url) as conn:
        append(conn, [record_for("test", e) for e in live_events])
    stop = threading.Event()
    flow = threading.Thread(
        target=run_flow,
        args=(live_plant, db_url, tmp_path / "recovery", 1.0),
        kwargs={"stop": stop},
        daemon=True,
    )
    flow.start()
    try:
        deadline = time.monotonic() + 60
        missed: list[tuple[Any, ...]] = []
        while time.monotonic() < deadline and not missed:
            time.sleep(1)
            missed = rows(
                db_url, "SELECT since FROM v_inspection_flags WHERE flag = 'patrol_missed'"
            )
        assert missed == [(started + timedelta(minutes=65),)]
        (run,) = rows(db_url, "SELECT patrol_missed_since, next_patrol_due FROM v_inspection_runs")
        assert run == (started + timedelta(minutes=65), started + timedelta(minutes=120))
    finally:
        stop.set()
        flow.join(timeout=30)
