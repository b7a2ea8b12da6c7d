"""The /inspections board (dashboards/pages/inspections.py) over a replayed day: compliance
and open flags through the app's routes, roles, hostile filters; the andon marks flagged
tiles from the views."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import dash
import psycopg
import pytest

from dashboards import inspection_queries as iq
from dashboards.queries import Database
from mesflow.plant import PlantConfig
from streams.replay import replay_file
from tests.conftest import require
from tests.helpers import write_jsonl
from tests.test_dashboard import Chromium, unreadable
from tests.test_inspections_flow import POLICY, events
from tests.test_operator import PASSWORD, _client, app, served  # noqa: F401  (fixtures)

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


@pytest.fixture
def replayed(db_url: str, plant: PlantConfig, tmp_path: Path) -> str:
    strict = plant.model_copy(update={"inspections": POLICY})
    path = write_jsonl(tmp_path / "day.jsonl", events())
    replay_file(path, strict, db_url, tmp_path / "rec", progress=False)
    return db_url


def _post(client: Any, dash_app: dash.Dash, start: Any, end: Any, lang: str = "en") -> Any:
    output = next(k for k in dash_app.callback_map if "insp-body.children" in k)
    dep = next(d for d in client.get("/_dash-dependencies").get_json() if d["output"] == output)
    values = {
        ("insp-range", "start_date"): start,
        ("insp-range", "end_date"): end,
        ("insp-lang", "data"): lang,
    }
    body = {
        "output": output,
        # One output: a single {id, property}, as dash-renderer sends it.
        "outputs": dict(zip(("id", "property"), output.rsplit(".", 1), strict=True)),
        "inputs": [{**i, "value": values[(i["id"], i["property"])]} for i in dep["inputs"]],
        "state": [{**s, "value": values[(s["id"], s["property"])]} for s in dep["state"]],
        "changedPropIds": ["insp-range.start_date"],
    }
    return client.post("/_dash-update-component", json=body)


def test_queries(replayed: str) -> None:
    db = Database(replayed)
    try:
        stages = iq.compliance(db, *_days(), "stage")
        assert [
            (c.key, c.due, c.done_on_time, c.done_late, c.missed, c.failed) for c in stages
        ] == [
            ("first", 2, 1, 0, 1, 1),
            ("last", 1, 0, 0, 1, 0),
            ("patrol", 4, 3, 0, 1, 0),
        ]
        assert [c.on_time_rate for c in stages] == [0.5, 0.0, 0.75]
        flags = iq.open_flags(db)
        assert sorted((f.machine, f.flag, f.detail, f.blocking) for f in flags) == [
            ("IM-01", "last_piece", "missed", False),
            ("IM-02", "first_article", "failed", True),
        ]
        assert iq.flags_by_machine(db) == {
            "IM-01": ["last_piece"],
            "IM-02": ["blocked", "first_article"],
        }
        with psycopg.connect(replayed) as conn:
            assert iq.blocked(conn, "IM-02") and not iq.blocked(conn, "IM-01")
            (run,) = iq.station_runs(conn, "IM-02")
        assert (run.work_order, run.first_article, run.blocked) == ("WO-2", "failed", True)
        assert iq.compliance(db, *_days(1), "machine") == []
    finally:
        db.close()


def _days(shift: int = 0) -> tuple[Any, Any]:
    from datetime import date, timedelta

    first = date(2026, 11, 20) + timedelta(days=shift)
    return first, first + timedelta(days=1)


def test_callback_and_roles(replayed: str, app: dash.Dash) -> None:  # noqa: F811
    manager = _client(app, "manager")
    page = manager.get("/inspections?lang=zh")
    assert page.status_code == 200
    text = _post(manager, app, "2026-11-20", "2026-11-20").get_data(as_text=True)
    assert "First article failed" in text and "BLOCKED" in text and "Last piece missing" in text
    assert "75.0%" in text and "WO-2" in text
    zh = json.dumps(
        _post(manager, app, "2026-11-20", "2026-11-20", "zh").get_json(), ensure_ascii=False
    )
    assert "首检不合格" in zh and "巡检" in zh
    # Hostile filters: defaults, never an error.
    for bad in (("'; DROP TABLE inspection; --", "x" * 5000), (12, ["a"]), ({"x": 1}, None)):
        response = _post(manager, app, *bad)
        assert response.status_code == 200, bad
    with psycopg.connect(replayed) as conn:
        assert conn.execute("SELECT count(*) FROM inspection").fetchone() == (4,)
    # A viewer may not see it; anonymous is sent to sign in.
    assert _client(app, "viewer").get("/inspections").status_code == 403
    assert _post(_client(app, "viewer"), app, None, None).status_code == 403
    assert _client(app, None).get("/inspections").status_code == 302


def test_the_andon_marks_flagged_tiles(replayed: str, app: dash.Dash) -> None:  # noqa: F811
    from dashboards import context
    from dashboards.pages import inspections

    db = context.of(app.server).db
    from dash import html

    tiles = html.Div([html.Div([], className="tile", **_machine(m)) for m in ("IM-01", "IM-02")])
    marked = inspections.mark_andon(db, tiles, "zh")
    one, two = marked.children
    assert one.children[-1].children == "末检缺失"
    assert two.children[-1].children == "锁定：首检未过" and "insp-blocked" in two.className


def _machine(m: str) -> dict[str, Any]:
    return {"data-machine": m}  # as the andon's tiles carry it


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
        browser.goto(f"{served}/inspections?lang=en&start=2026-11-20&end=2026-11-20")
        browser.wait_for("!!document.querySelector('#password')")
        browser.eval("document.querySelector('#username').value = 'manager'")
        browser.eval(f"document.querySelector('#password').value = {json.dumps(PASSWORD)}")
        browser.eval("document.querySelector('button[type=submit]').click()")
        browser.wait_for(
            "document.querySelector('#insp-body')?.textContent.includes('First article failed')"
        )
        body = browser.eval("document.querySelector('.inspections-page').textContent")
        assert "75.0%" in body and "WO-2" in body and "Last piece missing" in body
        assert "Inspections" in browser.eval("document.querySelector('h1').textContent")
        assert browser.eval("document.documentElement.scrollWidth") <= 1280
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        browser.screenshot(SCREENSHOTS / "inspections-en-1280x800.png")
        browser.goto(f"{served}/inspections?lang=zh&start=2026-11-20&end=2026-11-20")
        browser.wait_for("document.querySelector('#insp-body')?.textContent.includes('首检不合格')")
        browser.screenshot(SCREENSHOTS / "inspections-zh-1280x800.png")
        # The andon's flagged tiles: the flag line reads on a tile of every state's colour
        # (it was amber text straight on the tile: gone on an idle one, 2.7:1 on a running one).
        browser.goto(f"{served}/?lang=zh")
        browser.wait_for("document.querySelectorAll('.tile-inspection').length >= 2")
        flags = browser.eval(
            "[...document.querySelectorAll('.tile-inspection')].map(e => e.textContent)"
        )
        assert sorted(flags) == ["末检缺失", "锁定：首检未过"], flags
        for state in ("running", "idle", "down", "setup", "planned-stop", "offline", "silent"):
            browser.eval(
                "document.querySelectorAll('.has-inspection-flag').forEach(t => t.className ="
                f" t.className.replace(/\\bstate-[a-z-]+/, 'state-{state}'))"
            )
            assert (
                browser.eval(f"document.querySelectorAll('.state-{state} .tile-inspection').length")
                == 2
            )
            assert browser.eval(unreadable(".tile-inspection")) == [], state
    finally:
        browser.close()
