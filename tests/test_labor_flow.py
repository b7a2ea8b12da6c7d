"""Labor through the ingest log, the real dataflow and PostgreSQL (sql/031_labor.sql).

The example plant: molding (IM-*) shifts day 08:00-20:00 and night 20:00-08:00, plant time
Asia/Shanghai (UTC+8). On 2026-11-20:

- WO-1 starts on IM-01 at 17:00; WO-2 replaces it at 21:00.
- wang: IM-01 18:00-22:00 (2 h of WO-1 in the day shift, 1 h WO-1 + 1 h WO-2 at night).
- li: IM-01 and IM-02 from 19:00 (half each), leaves IM-01 at 21:30 and IM-02 at 22:30:
  1 h in the day shift, 2.5 h at night (not 5: a person's total is their attendance).
- zhao: IM-03 08:00-10:00 with a duplicate sign-in at 09:00 (ignored).
- ghost signs out of IM-04 without signing in: a visible no-op.
- sun signs in at IM-05 at 07:00 and forgets to sign out: closed at 19:00 (12 h), when a
  later report (anyone's) passes that time.
- li signs in at IM-02 at 08:00 the next day and is there now.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mesflow.plant import PlantConfig
from streams.runner import run_flow
from tests.helpers import copy_log, feed, log_position

CST = timezone(timedelta(hours=8))
DAY = datetime(2026, 11, 20, tzinfo=CST)


def iso(h: float, day: int = 0) -> str:
    return (DAY + timedelta(days=day, hours=h)).isoformat()


def rep(kind: str, machine: str, h: float, day: int = 0, **kw: Any) -> dict[str, Any]:
    return {"type": "report", "kind": kind, "machine": machine, "ts": iso(h, day), **kw}


def events() -> list[dict[str, Any]]:
    return [
        rep("sign_in", "IM-05", 7, operator="sun"),
        rep("sign_in", "IM-03", 8, operator="zhao"),
        rep("sign_in", "IM-03", 9, operator="zhao"),  # duplicate: ignored
        rep("sign_out", "IM-04", 9.5, operator="ghost"),  # never signed in
        rep("sign_out", "IM-03", 10, operator="zhao"),
        rep("wo_start", "IM-01", 17, work_order="WO-1"),
        {"type": "state", "machine": "IM-01", "ts": iso(17), "state": "running"},
        rep("sign_in", "IM-01", 18, operator="wang"),
        rep("sign_in", "IM-01", 19, operator="li"),
        rep("sign_in", "IM-02", 19, operator="li"),
        rep("wo_start", "IM-01", 21, work_order="WO-2"),
        rep("sign_out", "IM-01", 21.5, operator="li"),
        rep("sign_out", "IM-01", 22, operator="wang"),
        rep("sign_out", "IM-02", 22.5, operator="li"),
        {"type": "state", "machine": "IM-01", "ts": iso(23), "state": "idle"},
        # The next morning: a report from another person moves nobody else's time.
        rep("sign_in", "IM-02", 8, day=1, operator="li"),
    ]


NIGHT = (date(2026, 11, 20), "night")
DAYSHIFT = (date(2026, 11, 20), "day")

# (shift date, shift, person) -> hours
EXPECTED_SHIFT = {
    (*DAYSHIFT, "sun"): 11.0,  # 08:00-19:00 (expired at 19:00)
    ((date(2026, 11, 19)), "night", "sun"): 1.0,  # 07:00-08:00 is the previous night shift
    (*DAYSHIFT, "zhao"): 2.0,
    (*DAYSHIFT, "wang"): 2.0,
    (*NIGHT, "wang"): 2.0,
    (*DAYSHIFT, "li"): 1.0,  # 19:00-20:00 at two stations
    (*NIGHT, "li"): 2.5,  # 20:00-21:30 at two, 21:30-22:30 at one
}
# (work order or None, person) -> hours
EXPECTED_WO = {
    ("WO-1", "wang"): 3.0,  # 18-21
    ("WO-2", "wang"): 1.0,  # 21-22
    ("WO-1", "li"): 1.0,  # IM-01 19-21 at half
    ("WO-2", "li"): 0.25,  # IM-01 21-21:30 at half
    # IM-02 19-21:30 at half, 21:30-22:30 alone; and the open sign-in of the next day,
    # counted by the view up to now, at most to its bound (the day shift's end: 12 h).
    (None, "li"): 2.25 + 12.0,
    (None, "sun"): 12.0,
    (None, "zhao"): 2.0,
}


def run(url: str, plant: PlantConfig, recovery: Path, upto: int | None = None) -> None:
    run_flow(plant, url, recovery, 10.0, upto_seq=upto if upto is not None else log_position(url))


def by_shift(url: str) -> dict[tuple[Any, ...], float]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT shift_date, shift_name, person, hours FROM v_labor_by_shift_person"
            " WHERE NOT is_open"
        ).fetchall()
    return {(d, s, p): round(h, 6) for d, s, p, h in rows}


def by_wo(url: str) -> dict[tuple[Any, ...], float]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT work_order, person, sum(hours) FROM v_labor_by_work_order GROUP BY 1, 2"
        ).fetchall()
    return {(w, p): round(h, 6) for w, p, h in rows}


LABOR_TABLES = {
    "labor_segment": "person, station, start_ts, end_ts, bound_ts, work_order, operation,"
    " shift_date, shift_name, share, closed_by",
    "labor_presence": "station, person, since, sign_in_seq, work_order, operation, share",
    "labor_issue": "seq, kind, station, person, ts, applied_ts",
}


def labor_snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {
            t: sorted(conn.execute(f"SELECT {cols} FROM {t}").fetchall(), key=repr)
            for t, cols in LABOR_TABLES.items()
        }


def test_sign_in_time_adds_up_per_person_work_order_and_shift(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    feed(db_url, events())
    run(db_url, plant, tmp_path / "rec")
    closed = by_shift(db_url)
    # li's next-morning sign-in is open: leave it out of the closed figures.
    assert closed == EXPECTED_SHIFT
    got = by_wo(db_url)
    assert got == EXPECTED_WO
    # li's split as docs/labor.md's worked example gives it (closed segments of the 20th).
    with psycopg.connect(db_url) as conn:
        li = conn.execute(
            "SELECT shift_name, work_order, sum(hours) FROM v_labor_segments"
            " WHERE person = 'li' AND shift_date = '2026-11-20' GROUP BY 1, 2"
        ).fetchall()
    assert {(sh, wo): round(h, 6) for sh, wo, h in li} == {
        ("day", "WO-1"): 0.5, ("day", None): 0.5,
        ("night", "WO-1"): 0.5, ("night", "WO-2"): 0.25, ("night", None): 1.75,
    }  # fmt: skip
    with psycopg.connect(db_url) as conn:
        people = conn.execute(
            "SELECT station, person, since, work_order FROM v_station_people"
        ).fetchall()
        issues = conn.execute(
            "SELECT kind, station, person FROM v_labor_issues ORDER BY seq"
        ).fetchall()
        open_hours = conn.execute(
            "SELECT hours, bound_ts FROM v_labor_segments WHERE is_open"
        ).fetchall()
        dead = conn.execute("SELECT count(*) FROM dead_letter").fetchone()
    assert people == [("IM-02", "li", DAY + timedelta(days=1, hours=8), None)]
    assert issues == [
        ("expired", "IM-05", "sun"),
        ("duplicate_sign_in", "IM-03", "zhao"),
        ("sign_out_without_sign_in", "IM-04", "ghost"),
    ]
    # The open segment grows with now() up to its bound (the end of the day shift): long
    # past here, so the view counts it whole.
    assert [(round(h, 6), b) for h, b in open_hours] == [(12.0, DAY + timedelta(days=1, hours=20))]
    assert dead == (0,)


@pytest.mark.parametrize("cut", [6, 11])
def test_restart_in_the_middle_gives_the_same_rows(
    db_url: str, ref_db_url: str, plant: PlantConfig, tmp_path: Path, cut: int
) -> None:
    evs = events()
    feed(db_url, evs[:cut])
    run(db_url, plant, tmp_path / "rec")  # stops at the end of the log so far: a snapshot
    feed(db_url, evs[cut:])
    run(db_url, plant, tmp_path / "rec")  # resumes from it
    copy_log(db_url, ref_db_url)
    run(ref_db_url, plant, tmp_path / "ref")  # one uninterrupted run
    assert labor_snapshot(db_url) == labor_snapshot(ref_db_url)
    assert by_shift(db_url) == EXPECTED_SHIFT


def test_a_replay_of_the_same_log_rewrites_the_same_rows(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    feed(db_url, events())
    run(db_url, plant, tmp_path / "one")
    first = labor_snapshot(db_url)
    run(db_url, plant, tmp_path / "two")  # a fresh recovery dir: the whole log again
    assert labor_snapshot(db_url) == first


def test_live_timer_expires_a_forgotten_sign_in_without_new_reports(plant: PlantConfig) -> None:
    from mesflow.events import parse_event
    from streams.labor import LaborIssue, LaborSegment
    from streams.labor_flow import LaborLogic

    logic = LaborLogic(None, plant, live=True)
    assert logic.notify_at() is None  # nobody signed in: no timer
    began = datetime.now(CST) - timedelta(hours=13)
    body = rep("sign_in", "IM-01", 0, operator="night-owl") | {"ts": began.isoformat()}
    ev = parse_event(json.dumps(body))
    [rows] = logic.on_batch([(1, ev)])[0]
    assert [type(r).__name__ for r in rows].count("LaborSegment") >= 1
    first = logic.notify_at()
    assert first is not None and logic.notify_at() == first  # kept until it fires
    [rows] = logic.on_notify()[0]
    expired = [r for r in rows if type(r) is LaborSegment and r.closed_by == "expired"]
    assert len(expired) == 1
    assert expired[0].end == began + timedelta(hours=12)
    assert [r.kind for r in rows if type(r) is LaborIssue] == ["expired"]
    assert logic.notify_at() is None  # nobody signed in any more: no timer
    # The snapshot resumes the same state.
    again = LaborLogic(logic.snapshot(), plant, live=True)
    assert again.labor.state == logic.labor.state


def test_live_dataflow_expires_a_forgotten_sign_in_without_new_reports(
    db_url: str, plant: PlantConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live, nothing arrives after a sign-in 12 h 10 min ago: the labor step's timer books it
    up to the wall clock (minus the allowed lateness), so the sign-in expires at 12 h and the
    person leaves the station's list."""
    import threading
    import time as wall

    from streams.labor_flow import LaborLogic

    monkeypatch.delenv("MESFLOW_ALERTS_CONFIG", raising=False)
    monkeypatch.setattr(LaborLogic, "TICK", timedelta(seconds=1))
    began = datetime.now(CST).replace(microsecond=0) - timedelta(hours=12, minutes=10)
    feed(db_url, [rep("sign_in", "IM-06", 0, operator="owl") | {"ts": began.isoformat()}])
    stop = threading.Event()
    flow = threading.Thread(
        target=run_flow,
        args=(plant, db_url, tmp_path / "recovery", 1.0),
        kwargs={"stop": stop},
        daemon=True,
    )
    flow.start()
    try:
        deadline = wall.monotonic() + 60
        expired: list[tuple[Any, ...]] = []
        while wall.monotonic() < deadline and not expired:
            wall.sleep(1)
            with psycopg.connect(db_url) as conn:
                expired = conn.execute(
                    "SELECT end_ts FROM labor_segment WHERE closed_by = 'expired'"
                ).fetchall()
        assert expired == [(began + timedelta(hours=12),)]
        with psycopg.connect(db_url) as conn:
            assert conn.execute("SELECT count(*) FROM v_station_people").fetchone() == (0,)
            kinds = conn.execute("SELECT kind, person FROM v_labor_issues").fetchall()
        assert kinds == [("expired", "owl")]
    finally:
        stop.set()
        flow.join(timeout=30)
