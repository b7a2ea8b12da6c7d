"""The /quality board (dashboards/pages/quality.py, dashboards/quality_queries.py) over the
hand-worked example of tests/test_quality.py replayed through the real dataflow: the
figures, the callback through the app's routes (a viewer refused, hostile filters harmless),
and the page in chromium in both languages."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import dash
import psycopg
import pytest

from dashboards import quality_queries as qq
from dashboards.pages import quality
from dashboards.queries import Database
from mesflow.plant import PlantConfig
from streams.replay import replay_file
from tests.conftest import require
from tests.test_dashboard import Chromium
from tests.test_operator import PASSWORD, SCREENSHOTS, _client, app, served  # noqa: F401  (fixtures)
from tests.test_quality import EXAMPLE, _write

DAY = date(2026, 11, 20)


@pytest.fixture
def replayed(db_url: str, plant: PlantConfig, tmp_path: Path) -> str:
    """EXAMPLE through the dataflow, with codes of the example plant's own defect tree."""
    codes = [c for c, d in plant.defects_by_code.items() if not d.children]
    swap = {"flash": codes[0], "sink_mark": codes[1], "burr": codes[2]}
    events = json.loads(json.dumps(EXAMPLE))
    for e in events:
        if "code" in e:
            e["code"] = swap[e["code"]]
        for d in e.get("defects", []):
            d["code"] = swap[d["code"]]
    replay_file(_write(tmp_path / "q.jsonl", events, "qb"), plant, db_url, tmp_path / "rec")
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM dead_letter").fetchone() == (0,)
    return db_url


@pytest.fixture
def db(replayed: str) -> Iterator[Database]:
    database = Database(replayed)
    try:
        yield database
    finally:
        database.close()


def test_board_figures(db: Database, plant: PlantConfig) -> None:
    f = qq.QualityFilters(DAY, date(2026, 11, 21))
    board = qq.board(db, f, plant.tz)
    t = board.total
    assert (t.made, t.first_pass_good, t.final_good, t.sent_to_rework, t.rework_pending) == (
        100,
        86,
        90,
        6,
        1,
    )
    assert (t.first_pass_yield, t.final_yield, t.rework_rate) == (0.86, 0.90, 0.06)
    assert [(g.key, g.made) for g in board.by_product] == [("P-200", 100)]
    assert [(g.key, g.made) for g in board.by_machine] == [("IM-02", 100)]
    # Pareto: 6 to rework, 3 scrapped, largest first; the 2 found in a sample apart.
    assert [c.qty for c in board.by_code] == [6, 3]
    assert [c.qty for c in board.found_by_code] == [2]
    families = {d.code: d for d in plant.defects}
    assert sum(c.qty for c in board.by_family) == 9
    assert all(c.key in families for c in board.by_family)
    assert [(c.key, c.qty) for c in board.defects_by_product] == [("P-200", 9)]
    assert [(r.work_order, r.rework_pending) for r in board.rework] == [("WO-Q1", 1)]
    # Another day, another product, another machine: nothing (open rework stays: it is open).
    assert (
        qq.board(db, qq.QualityFilters(date(2026, 11, 22), date(2026, 11, 23)), plant.tz).total.made
        == 0
    )
    other = qq.board(db, qq.QualityFilters(DAY, date(2026, 11, 21), product="P-100"), plant.tz)
    assert other.total.made == 0 and other.by_code == [] and other.rework == []
    assert (
        qq.board(
            db, qq.QualityFilters(DAY, date(2026, 11, 21), machine="IM-01"), plant.tz
        ).total.made
        == 0
    )


def _post(
    client: Any, dash_app: dash.Dash, start: Any, end: Any, product: Any, machine: Any
) -> Any:
    output = next(k for k in dash_app.callback_map if "q-body.children" in k)
    dep = next(d for d in client.get("/_dash-dependencies").get_json() if d["output"] == output)
    values = {
        ("q-range", "start_date"): start,
        ("q-range", "end_date"): end,
        ("q-product", "value"): product,
        ("q-machine", "value"): machine,
        ("q-pareto-by", "value"): "family",
        ("q-lang", "data"): "en",
    }
    body = {
        "output": output,
        "outputs": [
            dict(zip(("id", "property"), p.rsplit(".", 1), strict=True))
            for p in output[2:-2].split("...")
        ],
        "inputs": [{**i, "value": values[(i["id"], i["property"])]} for i in dep["inputs"]],
        "state": [{**s, "value": values[(s["id"], s["property"])]} for s in dep["state"]],
        "changedPropIds": ["q-range.start_date"],
    }
    return client.post("/_dash-update-component", json=body)


def test_callback_and_roles(replayed: str, app: dash.Dash) -> None:  # noqa: F811
    manager = _client(app, "manager")
    assert manager.get("/quality").status_code == 200
    text = _post(manager, app, "2026-11-20", "2026-11-20", None, None).get_data(as_text=True)
    assert "86.0%" in text and "90.0%" in text and "6.0%" in text and "WO-Q1" in text
    # Hostile filters: defaults, never an error.
    for bad in (
        ("'; DROP TABLE quality_yield; --", None, "x" * 5000, "NO-SUCH"),
        (12, ["a"], {"x": 1}, 3),
    ):
        response = _post(manager, app, *bad)
        assert response.status_code == 200, bad
    with psycopg.connect(replayed) as conn:
        assert conn.execute("SELECT count(*) FROM quality_yield").fetchone() == (1,)
    # A viewer may not see it; anonymous is sent to sign in.
    assert _client(app, "viewer").get("/quality").status_code == 403
    assert _post(_client(app, "viewer"), app, None, None, None, None).status_code == 403
    assert _client(app, None).get("/quality").status_code == 302


def test_parse_filters(plant: PlantConfig) -> None:
    f = quality.parse_filters(plant, "2026-11-25", "2026-11-20", "P-100", "IM-01")
    assert (f.start, f.end, f.product, f.machine) == (DAY, date(2026, 11, 26), "P-100", "IM-01")
    f = quality.parse_filters(plant, "bad", None, 5, "NO-SUCH")
    assert f.product is None and f.machine is None and (f.end - f.start).days == 7


@pytest.mark.browser
def test_board_in_the_browser(
    replayed: str,
    served: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    browser = Chromium(tmp_path)
    try:
        browser.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        browser.goto(f"{served}/quality?lang=en&start=2026-11-20&end=2026-11-20")
        browser.wait_for("!!document.querySelector('#password')")
        browser.eval("document.querySelector('#username').value = 'manager'")
        browser.eval(f"document.querySelector('#password').value = {json.dumps(PASSWORD)}")
        browser.eval("document.querySelector('button[type=submit]').click()")
        browser.wait_for("document.querySelector('#q-tiles')?.textContent.includes('86.0%')")
        # The tables are Markdown, drawn once its renderer has loaded (after the tiles).
        browser.wait_for("document.querySelectorAll('.quality-page table').length === 6")
        body = browser.eval("document.querySelector('.quality-page').textContent")
        assert "90.0%" in body and "WO-Q1" in body and "P-200" in body
        # The Pareto has its three bars.
        browser.wait_for("document.querySelectorAll('#q-pareto .bars .point').length === 2")
        assert "Quality" in browser.eval("document.querySelector('h1').textContent")
        assert browser.eval("document.documentElement.scrollWidth") <= 1280
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        browser.screenshot(SCREENSHOTS / "quality-en-1280x800.png")
        browser.goto(f"{served}/quality?lang=zh&start=2026-11-20&end=2026-11-20")
        browser.wait_for("document.querySelector('#q-tiles')?.textContent.includes('一次合格率')")
        browser.wait_for("document.querySelector('#q-tiles').textContent.includes('86.0%')")
        browser.wait_for("document.querySelectorAll('#q-pareto .bars .point').length === 2")
        browser.screenshot(SCREENSHOTS / "quality-zh-1280x800.png")
    finally:
        browser.close()
