"""The /labor board and the andon tile's people line, on test_labor_flow's seeded plant
(events through the ingest log and the real dataflow into sql/031's views).

Reads (dashboards/labor_queries.py) give the figures of the scenario; the page renders them
in both languages; the andon tile of a station lists who is signed in there; a viewer cannot
open the page; in chromium the page and the andon show them (screenshot labor-en-1280x800).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from dash import html

from dashboards import labor_queries as lq
from dashboards.pages import labor as page
from dashboards.pages.andon import render_board
from dashboards.queries import Database, andon_tiles
from mesflow.plant import PlantConfig
from tests.conftest import require
from tests.helpers import feed
from tests.test_dashboard import Chromium, _sign_in_in_browser, andon_url
from tests.test_labor_flow import events, run
from tests.test_operator import _client, app  # noqa: F401  (fixture)

__all__ = ["andon_url"]  # fixture

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
PERIOD = lq.LaborFilters(date(2026, 11, 19), date(2026, 11, 22))


@pytest.fixture
def seeded(db_url: str, plant: PlantConfig, tmp_path: Path) -> Iterator[Database]:
    feed(db_url, events())
    run(db_url, plant, tmp_path / "rec")
    db = Database(db_url)
    try:
        yield db
    finally:
        db.close()


def _board(db: Database, plant: PlantConfig, f: lq.LaborFilters = PERIOD) -> lq.Board:
    return lq.board(
        db,
        f,
        datetime.combine(f.start, time(), plant.tz),
        datetime.combine(f.end, time(), plant.tz),
    )


def _text(component: Any) -> str:
    return json.dumps(
        component if isinstance(component, list) else [component],
        default=lambda c: c.to_plotly_json(),
        ensure_ascii=False,
    )


def test_reads_give_the_scenarios_figures(seeded: Database, plant: PlantConfig) -> None:
    b = _board(seeded, plant)
    assert [(r.station, r.person, r.work_order) for r in b.now] == [("IM-02", "li", None)]
    shift = {(r.shift_date, r.shift_name, r.person): round(r.hours, 6) for r in b.by_shift}
    assert shift[(date(2026, 11, 20), "day", "wang")] == 2.0
    assert shift[(date(2026, 11, 20), "night", "li")] == 2.5
    assert shift[(date(2026, 11, 19), "night", "sun")] == 1.0
    wo = {(r.work_order, r.operation): (round(r.hours, 6), r.people) for r in b.by_work_order}
    assert wo[("WO-1", None)] == (4.0, ["li", "wang"])
    assert wo[("WO-2", None)] == (1.25, ["li", "wang"])
    assert {r.kind: r.n for r in b.issues} == {
        "expired": 1,
        "duplicate_sign_in": 1,
        "sign_out_without_sign_in": 1,
    }
    # Filters: one person, one station.
    only_wang = _board(seeded, plant, lq.LaborFilters(PERIOD.start, PERIOD.end, person="wang"))
    assert {r.person for r in only_wang.by_shift} == {"wang"}
    assert round(only_wang.total_hours, 6) == 4.0
    im02 = _board(seeded, plant, lq.LaborFilters(PERIOD.start, PERIOD.end, station="IM-02"))
    assert all(r.stations == ["IM-02"] for r in im02.by_shift)
    assert lq.people(seeded) == ["li", "sun", "wang", "zhao"]


def test_page_renders_in_both_languages(seeded: Database, plant: PlantConfig) -> None:
    b = _board(seeded, plant)
    en = _text(page.render(b, plant, "en"))
    zh = _text(page.render(b, plant, "zh"))
    assert "By work order and operation" in en and "Forgotten sign-out" in en
    assert "按工单与工序" in zh and "忘记离岗" in zh
    assert "白班" in zh and "Day shift" in en  # shifts by their labels (plant file)
    assert "2026-11-21 08:00" in en  # li's sign-in, in plant time
    assert "(no work order)" in en and "off shift" not in en


def test_a_long_range_shows_the_first_rows_and_says_how_many(plant: PlantConfig) -> None:
    # The browser's Dash renderer blocked headless Chromium for 41-44 s on the demo's
    # 449-row labour page: each long table shows its first SHOWN rows and a note.
    start = date(2026, 11, 1)
    shifts = [
        lq.ShiftPerson(start + timedelta(days=i // 4), "A", f"p{i:03d}", 8.0, ["IM-01"], 1, False)
        for i in range(page.SHOWN * 2 + 7)
    ]
    wos = [
        lq.WorkOrderLabor(f"WO-{i:03d}", "10", "SO-1", "P", 1.0, ["p"], ["IM-01"], False)
        for i in range(page.SHOWN)
    ]
    b = lq.Board(now=[], by_shift=shifts, by_work_order=wos, issues=[])
    for lang, more in (("en", "The first 50 of 107 rows"), ("zh", "只显示前 50 行，共 107 行")):
        text = _text(page.render(b, plant, lang))
        assert text.count(more) == 1  # the shift table; the work orders fit
        assert "p049" in text and "p050" not in text  # newest first: the first rows shown
        assert "WO-049" in text
    assert b.total_hours == 8.0 * len(shifts)  # the tiles still count every row
    assert f"{8.0 * len(shifts):.2f}" in _text(page.render(b, plant, "en"))


def test_hostile_filters_fall_back_to_defaults(plant: PlantConfig) -> None:
    f = page.parse_filters(plant, "DROP TABLE", ["x"], {"a": 1}, "NO-SUCH")
    assert f.person is None and f.station is None
    assert (f.end - f.start).days == page.DEFAULT_DAYS
    f = page.parse_filters(plant, "2020-01-01", "2026-01-01", "wang", "IM-01")
    assert (f.end - f.start).days == page.MAX_DAYS and (f.person, f.station) == ("wang", "IM-01")


def test_andon_tiles_list_who_is_at_the_station(seeded: Database, plant: PlantConfig) -> None:
    board = render_board(andon_tiles(seeded), plant, "en")
    marked = page.mark_andon(seeded, board, "en")
    tiles = {
        getattr(c, "data-machine"): c
        for c in page._walk(marked)
        if isinstance(c, html.Div) and getattr(c, "data-machine", None)
    }
    people = {
        m: [k.children for k in tile.children if getattr(k, "className", "") == "tile-people"]
        for m, tile in tiles.items()
    }
    assert people["IM-02"] == ["👤 li"]
    assert people["IM-01"] == []
    attrs: dict[str, Any] = {"data-machine": "X"}
    many = page.add_people_to_tiles(html.Div(children=[], **attrs), {"X": list("abcd")}, "en")
    assert many.children[-1].children == "👤 a, b, c +1"


@pytest.mark.browser
def test_labor_page_and_andon_in_browser(
    seeded: Database, andon_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    browser = Chromium(tmp_path)
    try:
        _sign_in_in_browser(browser, f"{andon_url}/labor?lang=en")
        browser.wait_for("location.pathname === '/labor'")
        browser.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        browser.goto(f"{andon_url}/labor?lang=en")
        browser.wait_for("!!document.querySelector('#lab-body .labor-table')")
        # The default period is the last 7 days: the seeded 2026-11-20 may be out of it;
        # what is signed in now shows whatever the period.
        body = str(browser.eval("document.querySelector('#lab-body').innerText"))
        assert "li" in body and "IM-02" in body, body
        # The seeded days, picked as a person would (the picker's value, its callback).
        browser.eval(
            "dash_clientside.set_props('lab-range',"
            " {start_date: '2026-11-19', end_date: '2026-11-21'})"
        )
        browser.wait_for("document.querySelector('#lab-body').innerText.includes('WO-2')")
        body = str(browser.eval("document.querySelector('#lab-body').innerText"))
        assert "33.50" in body, body  # the seeded days: 20.5 h + sun 1 h + li 12 h (open)
        assert browser.eval("document.documentElement.scrollWidth") <= 1280
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser.screenshot(SHOTS / "labor-en-1280x800.png")
        browser.goto(f"{andon_url}/andon?lang=en")
        browser.wait_for("!!document.querySelector('[data-machine=\"IM-02\"] .tile-people')")
        text = browser.eval(
            "document.querySelector('[data-machine=\"IM-02\"] .tile-people').innerText"
        )
        assert "li" in str(text)
    finally:
        browser.close()


def test_a_viewer_may_not_open_the_page(app: Any) -> None:  # noqa: F811
    assert _client(app, "viewer").get("/labor").status_code == 403
    assert _client(app, "manager").get("/labor").status_code == 200
    assert _client(app, None).get("/labor").status_code in (302, 303)
