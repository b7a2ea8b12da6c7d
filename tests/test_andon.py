"""The andon's figures without a browser: the SQL views of sql/015_andon.sql on a real
database, and the pure rendering rules of dashboards/pages/andon.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboards.pages.andon import (
    BoardOptions,
    View,
    columns_for,
    escalation,
    is_silent,
    line_summary,
    parse_view,
    render_tile,
    select_lines,
    shift_target,
)
from dashboards.queries import AndonTile, Database, andon_tiles
from mesflow.plant import PlantConfig
from tests.test_dashboard import _by_class, _row, _text


def _status(conn: psycopg.Connection, machine: str, **kw: Any) -> None:
    cols = {"state": "running", "since": kw.pop("since"), "last_event_ts": kw.pop("last")} | kw
    names = ", ".join(["machine", *cols])
    marks = ", ".join(["%s"] * (len(cols) + 1))
    conn.execute(
        f"INSERT INTO machine_status ({names}) VALUES ({marks})",
        (machine, *cols.values()),
    )


def _tiles(db_url: str) -> dict[str, AndonTile]:
    db = Database(db_url)
    try:
        return {t.machine: t for t in andon_tiles(db)}
    finally:
        db.close()


def test_time_in_state_when_simulated_time_runs_ahead_of_the_wall_clock(db_url: str) -> None:
    # The README's --speed 30: events an hour in the future. The tile shows how long the
    # state lasted in event time, not a clamped 0:00:00.
    now = datetime.now(UTC)
    with psycopg.connect(db_url) as conn:
        _status(conn, "IM-01", since=now + timedelta(minutes=30), last=now + timedelta(hours=1))
        # Live machine: state began 10 min ago, last event 1 min ago: keeps counting.
        _status(conn, "IM-02", since=now - timedelta(minutes=10), last=now - timedelta(minutes=1))
        # A machine clock ahead of its own last event (bad data): never negative.
        _status(conn, "IM-03", since=now + timedelta(hours=2), last=now + timedelta(hours=1))
    tiles = _tiles(db_url)
    assert tiles["IM-01"].state_seconds == pytest.approx(1800, abs=5)
    assert tiles["IM-01"].silent_seconds == 0
    assert tiles["IM-02"].state_seconds == pytest.approx(600, abs=5)
    assert tiles["IM-02"].silent_seconds == pytest.approx(60, abs=5)
    assert tiles["IM-03"].state_seconds == 0
    assert tiles["IM-04"].state == "offline" and tiles["IM-04"].state_seconds is None


def test_current_shift_kpi_and_line_oee(db_url: str, plant: PlantConfig) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(db_url) as conn:
        for machine, good, scrap in (("IM-01", 100, 0), ("IM-02", 50, 50)):
            _status(conn, machine, since=now - timedelta(minutes=5), last=now)
            for start, g in ((now - timedelta(hours=11), 999), (now - timedelta(hours=3), good)):
                # The previous shift's row must not be the one shown.
                conn.execute(
                    "INSERT INTO machine_kpi (machine, bucket, bucket_start, bucket_end,"
                    " planned_s, running_s, good, scrap, ideal_s)"
                    " VALUES (%s, 'shift', %s, %s, 3600, 1800, %s, %s, 900)",
                    (machine, start, start + timedelta(hours=8), g, scrap),
                )
    tiles = _tiles(db_url)
    assert tiles["IM-01"].shift_good == 100
    assert tiles["IM-01"].shift_oee == pytest.approx(0.25)  # 900/3600 x 100/100
    assert tiles["IM-02"].shift_oee == pytest.approx(0.125)
    assert tiles["IM-03"].shift_oee is None  # no data: no shift row
    rows = [t for t in tiles.values() if t.line == "IM"]
    summary = line_summary(rows, plant, BoardOptions())
    with psycopg.connect(db_url) as conn:
        sql_oee = conn.execute("SELECT shift_oee FROM v_andon_line WHERE line = 'IM'").fetchone()
    assert sql_oee is not None
    # The line header's Python sum equals the documented view's.
    assert summary.oee == pytest.approx(sql_oee[0]) == pytest.approx(1800 * 150 / 200 / 7200)
    assert summary.good == 150
    assert summary.counts == {"running": 2, "offline": 4}


def test_silent_machine_is_grey_with_the_time_of_its_last_event(plant: PlantConfig) -> None:
    last = datetime(2024, 5, 6, 1, 5, tzinfo=UTC)  # 09:05 in Suzhou
    row = _row(last_event_ts=last, db_now=last + timedelta(hours=1), silent_seconds=3600.0)
    assert is_silent(row, BoardOptions(silent_s=600))
    assert not is_silent(row, BoardOptions(silent_s=7200))
    tile = render_tile(row, "en", plant, BoardOptions(silent_s=600))
    assert tile.to_plotly_json()["props"]["className"].split() == ["tile", "state-silent"]
    assert "no data since 09:05" in _text(tile) and "Running" not in _text(tile)
    zh = render_tile(row, "zh", plant, BoardOptions(silent_s=600))
    assert "09:05 起无数据" in _text(zh)
    week = _row(last_event_ts=last, db_now=last + timedelta(days=7), silent_seconds=7 * 86400.0)
    assert "05-06 09:05" in _text(render_tile(week, "en", plant))


def test_reason_missing_after_the_configured_time(plant: PlantConfig) -> None:
    opts = BoardOptions(reason_missing_s=120)
    early = render_tile(_row(state="down", state_seconds=119.0), "en", plant, opts)
    late = render_tile(_row(state="down", state_seconds=121.0), "zh", plant, opts)
    given_reason = render_tile(
        _row(state="down", state_seconds=900.0, reason="x", reason_en="Jam"), "en", plant, opts
    )
    running = render_tile(_row(state="running", state_seconds=9999.0), "en", plant, opts)
    assert _by_class(early, "reason-missing") == []
    assert _text(_by_class(late, "reason-missing")) == "未填原因"
    assert _by_class(given_reason, "reason-missing") == [] and "Jam" in _text(given_reason)
    assert _by_class(running, "tile-reason") == []


@pytest.mark.parametrize(
    ("state", "seconds", "level"),
    [("down", 60, 0), ("down", 15 * 60, 1), ("down", 31 * 60, 2), ("idle", 3600, 0)],
)
def test_long_stops_escalate(state: str, seconds: float, level: int) -> None:
    assert escalation(_row(state=state, state_seconds=seconds)) == level


def test_good_against_shift_target_with_a_by_now_marker(plant: PlantConfig) -> None:
    start = datetime(2024, 5, 6, 0, 0, tzinfo=UTC)
    cycle = plant.ideal_cycle_seconds("IM-01", None)
    row = _row(
        shift_start=start,
        shift_end=start + timedelta(hours=8),
        ref_ts=start + timedelta(hours=2),
        shift_good=100,
    )
    full, by_now = shift_target(row, plant) or (0, 0)
    assert full == int(8 * 3600 / cycle) and by_now == int(2 * 3600 / cycle)
    tile = render_tile(row, "en", plant)
    marker = _by_class(tile, "bar-marker")[0]
    assert marker.style["left"] == "25.0%"
    assert f"100/{full}" in _text(tile)
    assert shift_target(_row(), plant) is None  # outside a shift: no bar


def test_view_from_url_and_rotation() -> None:
    assert parse_view("IM, CNC", "20", "1") == View(("IM", "CNC"), 20, True)
    assert parse_view(None, "abc", None) == View()
    assert parse_view(None, "-5", "no") == View()
    assert View.from_data({"lines": ["IM", 3], "rotate_s": "x", "kiosk": "yes"}) == View(("IM",))
    assert View.from_data(None) == View()
    rows = [_row(machine=f"{ln}-{i}", line=ln) for ln in ("A", "B", "C") for i in range(2)]
    assert {r.line for r in select_lines(rows, View(("B",)), 0)} == {"B"}
    # 1 s ticks, 20 s per line: A for ticks 0..19, then B, then C, then A again.
    shown = [select_lines(rows, View(rotate_s=20), tick)[0].line for tick in (0, 19, 20, 40, 60)]
    assert shown == ["A", "A", "B", "C", "A"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=8))
def test_columns_hold_every_line(sizes: list[int]) -> None:
    cols = columns_for(sizes)
    assert 1 <= cols <= max(sizes)
