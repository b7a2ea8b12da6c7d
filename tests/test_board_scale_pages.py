"""The two board pages at plant scale (issue 14, part B2): what they show by default stays cheap
and, at its resolution, says what the detailed reads say.

- The plant's state timeline of a large plant draws a lane per line with each hour's state
  shares (`timeline_shares`, from the machine hours the dataflow keeps): equal to the detailed
  intervals (`timeline`) clipped to each hour and summed per line in Python, on a replayed
  history.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import plotly.graph_objects as go
import pytest

from collectors.simulator import write_history
from dashboards import analytics_queries as aq
from dashboards import context
from dashboards.app import create_app
from dashboards.pages import analytics
from dashboards.queries import Database
from mesflow.plant import PlantConfig
from mesflow.report import Scope
from mesflow.settings import Settings
from streams.replay import replay_file

FIRST = date(2026, 11, 16)  # a Monday: both lines work
DAYS = 2
START = datetime.fromisoformat("2026-11-16T00:00:00+08:00")
STATES = ("running", "idle", "down", "setup", "planned_stop", "offline")


@pytest.fixture
def replayed(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> Iterator[tuple[Database, PlantConfig]]:
    path = tmp_path / "history.jsonl"
    write_history(plant, path, seed=11, start=START, duration_s=DAYS * 86_400)
    replay_file(path, plant, db_url, tmp_path / "rec", progress=False)
    db = Database(db_url)
    try:
        yield db, plant
    finally:
        db.close()


def _filters(scope: Scope, days: int = DAYS) -> aq.Filters:
    return aq.Filters(FIRST, FIRST + timedelta(days=days), scope)


def hours_from_intervals(
    intervals: list[aq.IntervalRow], window: tuple[datetime, datetime], plant: PlantConfig
) -> dict[tuple[str, datetime, str], float]:
    """The reference: each interval clipped to the window exactly as timeline_figure draws it,
    then to each hour, summed per (line, hour, state)."""
    lo, hi = window
    line_of = {m.id: ln.id for ln in plant.lines for m in ln.machines}
    out: dict[tuple[str, datetime, str], float] = defaultdict(float)
    hour = timedelta(hours=1)
    for i in intervals:
        b = max(i.start_ts, lo)
        e = min(i.end_ts or i.start_ts + timedelta(seconds=i.duration_s), hi)
        h = lo + (b - lo) // hour * hour
        while h < e:
            piece = (min(e, h + hour) - max(b, h)).total_seconds()
            if piece > 0:
                out[(line_of[i.machine], h, i.state)] += piece
            h += hour
    return out


def hours_from_shares(rows: list[aq.LineHour]) -> dict[tuple[str, datetime, str], float]:
    return {
        (r.line, r.hour_start, st): r.seconds(st) for r in rows for st in STATES if r.seconds(st)
    }


def test_line_shares_are_the_intervals_summed_per_hour(
    replayed: tuple[Database, PlantConfig],
) -> None:
    db, plant = replayed
    for scope in (Scope("plant"), Scope("line", "IM"), Scope("line", "CNC")):
        for days in (1, DAYS):
            f = _filters(scope, days)
            intervals, spans, lo, hi = aq.timeline(db, f, plant.tz)
            rows, spans_b, lo_b, hi_b = aq.timeline_shares(db, f, plant.tz)
            assert (spans_b, lo_b, hi_b) == (spans, lo, hi)
            want = hours_from_intervals(intervals, (lo, hi), plant)
            got = hours_from_shares(rows)
            assert len(want) >= 24 * days, (scope, days)
            assert got.keys() == want.keys(), (scope, days, got.keys() ^ want.keys())
            for key, seconds in want.items():
                assert got[key] == pytest.approx(seconds, abs=1e-3), (scope, days, key)
            assert rows == sorted(rows, key=lambda r: (r.line, r.hour_start))


def test_plant_lanes_by_line_only_for_a_large_plant(
    replayed: tuple[Database, PlantConfig], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, plant = replayed
    f = _filters(Scope("plant"))
    assert not analytics.lanes_by_line(plant, f)  # 12 machines: a lane each, as before
    monkeypatch.setattr(aq, "TIMELINE_MACHINE_LANES", len(plant.machines) - 1)
    assert analytics.lanes_by_line(plant, f)
    assert not analytics.lanes_by_line(plant, _filters(Scope("line", "IM")))
    a = analytics.load(db, f, plant.tz, by_line=True)
    assert a.intervals == [] and a.line_hours
    fig = analytics.render(a, plant, "en")["timeline"]
    go.Figure(fig)  # valid plotly
    assert {y for trace in fig["data"] for y in trace["y"]} == {"IM", "CNC"}
    assert fig["layout"]["yaxis"]["ticktext"] == [ln.name.get("en") for ln in plant.lines]
    # Each lane's hour is split into its states' shares, never more than the hour.
    drawn: dict[tuple[str, str], float] = defaultdict(float)
    for trace in fig["data"]:
        for y, x, base, custom in zip(
            trace["y"], trace["x"], trace["base"], trace["customdata"], strict=True
        ):
            assert custom[0] == f"line:{y}" and x > 0
            start = datetime.fromisoformat(base)
            hour = start.replace(minute=0, second=0, microsecond=0)
            drawn[(y, hour.isoformat())] += x
            assert start + timedelta(milliseconds=x) <= hour + timedelta(hours=1, milliseconds=1)
    assert drawn and max(drawn.values()) <= 3_600_000 + 1
    # The share of the machines' time: IM's six machines over a whole hour fill the lane.
    size = {ln.id: len(ln.machines) for ln in plant.lines}
    for r in a.line_hours:
        total = sum(r.seconds(st) for st in STATES)
        ms = drawn[(r.line, r.hour_start.astimezone(plant.tz).isoformat())]
        assert ms == pytest.approx(total / size[r.line] * 1000, rel=1e-9)
    # Shift starts and breaks as in the machine lanes.
    detail = analytics.timeline_figure([], a.spans, a.window, plant, "en")
    assert fig["layout"]["shapes"] == detail["layout"]["shapes"]
    # A click on a line's lane picks the line as the scope; anything else changes nothing.
    app = create_app(Settings(auth_session_secret="s" * 40), plant, db_url)
    try:
        with app.server.test_request_context():
            click = {"points": [{"customdata": ["line:CNC", "CNC 10:00 80 %"]}]}
            assert analytics._line_click(click) == "line:CNC"
            for bad in (
                None,
                {"points": []},
                {"points": [{"customdata": "IM-01"}]},
                {"points": [{"customdata": ["line:NOPE", ""]}]},
                {"points": [{"customdata": ["machine:IM-01", ""]}]},
            ):
                assert analytics._line_click(bad) is analytics.dash.no_update
    finally:
        context.of(app.server).db.close()
