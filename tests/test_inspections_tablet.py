"""The tablet's inspections section (dashboards/pages/operator_inspections.py), the andon's
inspection flags and the production-lot block (dashboards/pages/inspections.py,
operator_lots.py).

Pure: every entry builds a contract-valid event, a double tap the same id; hostile input is
refused; what is due reads right. Through the app's routes: an entry for the running work
order is stored once, hostile requests store nothing, a viewer is refused; a blocked run
refuses production lots. In chromium: the station shows its first article missing, an
inspection entered there reaches the `inspection` table and passes the run.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dash
import psycopg
import pytest
from dash import html

from dashboards import inspection_queries as iq
from dashboards.operator_reports import Refused
from dashboards.pages import inspections as board
from dashboards.pages import operator_inspections as oi
from dashboards.pages import operator_lots
from mesflow.events import InspectionReport, parse_event
from mesflow.plant import PlantConfig
from tests.conftest import require
from tests.helpers import feed
from tests.test_dashboard import Chromium
from tests.test_operator import (  # noqa: F401  (fixtures)
    MACHINE,
    PASSWORD,
    _client,
    _history,
    _process,
    _tablet_events,
    _wait_minute_start,
    app,
    open_tablet,
    served,
)

NOW = datetime(2026, 11, 20, 2, 30, tzinfo=UTC)
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
CHARS = [{"name": "length", "value": 50.1, "lsl": 49.8, "usl": 50.2}]


def _code(plant: PlantConfig) -> str:
    return next(c for c, d in plant.defects_by_code.items() if not d.children)


def entry(plant: PlantConfig, **change: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "machine": MACHINE,
        "work_order": "WO-1",
        "stage": "first",
        "result": "pass",
        "chars": CHARS,
        "defect": None,
        "defect_qty": None,
        "note": None,
        "operator": "qc-1",
        "now": NOW,
        **change,
    }
    return oi.inspection_event(plant, "k" * 32, **args)


# -- pure -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", oi.STAGES)
def test_entries_follow_the_contract(plant: PlantConfig, stage: str) -> None:
    code = _code(plant)
    event = entry(plant, stage=stage, result="fail", defect=code, defect_qty=2, note="burr")
    parsed = parse_event(json.dumps(event))
    assert isinstance(parsed, InspectionReport)
    assert (parsed.machine, parsed.work_order, parsed.stage, parsed.result) == (
        MACHINE,
        "WO-1",
        stage,
        "fail",
    )
    assert [(c.name, c.value, c.lsl, c.usl) for c in parsed.characteristics] == [
        ("length", 50.1, 49.8, 50.2)
    ]
    assert [(d.code, d.qty) for d in parsed.defects] == [(code, 2)]
    assert (parsed.note, parsed.operator) == ("burr", "qc-1")
    # A double tap (same minute) is the same event; a minute later or another result is not.
    assert (
        entry(
            plant,
            stage=stage,
            result="fail",
            defect=code,
            defect_qty=2,
            note="burr",
            now=NOW + timedelta(seconds=20),
        )
        == event
    )
    assert entry(plant, stage=stage)["id"] != event["id"]
    assert (
        entry(plant, stage=stage, now=NOW + timedelta(minutes=1))["id"]
        != entry(plant, stage=stage)["id"]
    )


def test_characteristic_lines() -> None:
    got = oi.characteristics(
        ["length", None, " dia "], [50.0, None, 5], [49.5, None, None], [50.5, None, 6]
    )
    assert got == [
        {"name": "length", "value": 50.0, "lsl": 49.5, "usl": 50.5},
        {"name": "dia", "value": 5.0, "usl": 6.0},
    ]
    assert oi.characteristics(["look"], [None], [None], [None]) == [{"name": "look"}]


HOSTILE_CHARS: list[tuple[list[Any], str]] = [
    ([None, 5.0, None, None], "bad_char"),
    (["x" * 201, 1.0, None, None], "bad_char"),
    (["len\x00", 1.0, None, None], "bad_char"),
    (["le\u0085n", 1.0, None, None], "bad_char"),
    ([["len"], 1.0, None, None], "bad_char"),
    (["len", "5", None, None], "bad_value"),
    (["len", True, None, None], "bad_value"),
    (["len", float("nan"), None, None], "bad_value"),
    (["len", float("inf"), None, None], "bad_value"),
    (["len", 1e300, None, None], "bad_value"),
    (["len", 1.0, {"a": 1}, None], "bad_value"),
]


@pytest.mark.parametrize(("line", "code"), HOSTILE_CHARS)
def test_hostile_characteristics_are_refused(line: list[Any], code: str) -> None:
    with pytest.raises(Refused) as err:
        oi.characteristics([line[0]], [line[1]], [line[2]], [line[3]])
    assert err.value.code == code


HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"machine": "NO-SUCH"}, "unknown_machine"),
    ({"machine": None}, "unknown_machine"),
    ({"stage": "final"}, "bad_stage"),
    ({"stage": None}, "bad_stage"),
    ({"stage": ["first"]}, "bad_stage"),
    ({"result": "ok"}, "bad_result"),
    ({"result": None}, "bad_result"),
    ({"defect": "no_such_code", "defect_qty": 1}, "bad_code"),
    ({"defect": ["flash"], "defect_qty": 1}, "bad_code"),
    ({"defect": "@code", "defect_qty": 0}, "bad_code"),
    ({"defect": "@code", "defect_qty": 0}, "bad_code"),
    ({"defect": "@code", "defect_qty": None}, "bad_qty"),
    ({"defect": "@code", "defect_qty": 1000}, "bad_qty"),
    ({"defect": "@code", "defect_qty": "2"}, "bad_qty"),
    ({"defect": "@code", "defect_qty": True}, "bad_qty"),
    ({"defect": "@code", "defect_qty": 2.5}, "bad_qty"),
    ({"note": "x" * 201}, "bad_note"),
    ({"note": "a\nb"}, "bad_note"),
    ({"note": 5}, "bad_note"),
]


@pytest.mark.parametrize(("change", "code"), HOSTILE)
def test_hostile_entries_are_refused(plant: PlantConfig, change: dict[str, Any], code: str) -> None:
    if change.get("defect") == "@code":
        change = {**change, "defect": _code(plant)}
    if change.get("defect") == _code(plant) and change.get("defect_qty") == 0:
        code = "bad_qty"
    with pytest.raises(Refused) as err:
        entry(plant, **change)
    assert err.value.code == code


def _run(**kw: Any) -> iq.StationRun:
    base: dict[str, Any] = {
        "work_order": "WO-1",
        "operation": "",
        "product": "P-100",
        "start_ts": NOW,
        "first_article": "passed",
        "blocked": False,
        "parts_made": 7,
        "patrol_every_min": 60.0,
        "next_patrol_due": None,
        "patrol_missed_since": None,
        "last_piece": "off",
        **kw,
    }
    return iq.StationRun(**base)


def test_what_is_due_at_the_station() -> None:
    runs = [
        _run(
            first_article="missing",
            blocked=True,
            parts_made=9,
            next_patrol_due=NOW + timedelta(minutes=12, seconds=10),
            last_piece="pending",
        )
    ]
    assert oi.due_lines(runs, NOW, "en") == [
        ("WO-1: first article MISSING (9 parts made)", True),
        ("BLOCKED: no production reports until the first article passes", True),
        ("WO-1: patrol due in 13 min", True),
        ("WO-1: last piece due before the end", False),
    ]
    late = [_run(operation="20", next_patrol_due=NOW - timedelta(minutes=25, seconds=30))]
    assert oi.due_lines(late, NOW, "zh") == [("WO-1 / 20：巡检已超期 25 分钟", True)]
    assert oi.due_lines([_run(next_patrol_due=NOW + timedelta(hours=1))], NOW, "en") == [
        ("WO-1: patrol due in 60 min", False)
    ]


def test_andon_tiles_get_their_flags() -> None:
    tiles = html.Div(
        [
            html.Div([html.Div("IM-01")], className="tile", **_machine("IM-01")),
            html.Div([html.Div("IM-02")], className="tile", **_machine("IM-02")),
        ]
    )
    out = board.add_flags_to_tiles(
        tiles, {"IM-01": ["blocked", "first_article", "patrol_missed"]}, "en"
    )
    one, two = out.children
    assert "insp-blocked" in one.className and "has-inspection-flag" in one.className
    assert one.children[-1].children == "BLOCKED: first article · Patrol missed"
    assert two.className == "tile" and len(two.children) == 1


def test_flag_labels_in_both_languages() -> None:
    for lang in ("zh", "en"):
        for flag, detail in (
            ("first_article", "missing"),
            ("first_article", "failed"),
            ("patrol_missed", "missed"),
            ("last_piece", "missed"),
        ):
            label = board.flag_label(flag, detail, lang)
            assert label and not label.startswith("flag_"), (flag, detail, lang)


# -- through the app's routes --------------------------------------------------------------------


def _station_with_running_wo(db_url: str, plant: PlantConfig, tmp_path: Path) -> None:
    """WO-OP-1 (P-100) started at IM-01 and 20 parts made since: its first article (within
    5 parts in the example plant) is missing."""
    events, _down = _history(datetime.now(UTC))
    start = datetime.fromisoformat(events[0]["ts"]) + timedelta(minutes=1)
    events.append(
        {
            "type": "report",
            "kind": "wo_start",
            "machine": MACHINE,
            "ts": start.isoformat(),
            "work_order": "WO-OP-1",
        }
    )
    events.append(
        {
            "type": "count",
            "machine": MACHINE,
            "ts": (start + timedelta(minutes=5)).isoformat(),
            "good": 20,
        }
    )
    feed(db_url, events)
    _process(plant, db_url, tmp_path / "recovery")


def _post(client: Any, dash_app: dash.Dash, **state: Any) -> Any:
    output = next(k for k in dash_app.callback_map if "op-insp-feedback.children" in k)
    dep = next(d for d in client.get("/_dash-dependencies").get_json() if d["output"] == output)
    values = {
        "op-station": MACHINE,
        "op-insp-key": "a" * 32,
        "op-insp-wo": None,
        "op-insp-stage": "first",
        "op-insp-result": "pass",
        "op-insp-c0-name": "length",
        "op-insp-c0-value": 50.0,
        "op-insp-c0-lsl": 49.8,
        "op-insp-c0-usl": 50.2,
        "op-insp-lang": "en",
        **{k.replace("_", "-"): v for k, v in state.items()},
    }
    body = {
        "output": output,
        "outputs": [
            dict(zip(("id", "property"), p.rsplit(".", 1), strict=True))
            for p in output[2:-2].split("...")
        ],
        "inputs": [{**i, "value": 1} for i in dep["inputs"]],
        "state": [{**s, "value": values.get(s["id"])} for s in dep["state"]],
        "changedPropIds": ["op-insp-submit.n_clicks"],
    }
    return client.post("/_dash-update-component", json=body)


def test_callback_stores_an_entry_once_and_refuses_hostile_requests(
    app: dash.Dash,  # noqa: F811
    db_url: str,
    plant: PlantConfig,
    tmp_path: Path,
) -> None:
    _station_with_running_wo(db_url, plant, tmp_path)
    client = _client(app, "operator")
    _wait_minute_start()
    first = _post(client, app)
    second = _post(client, app)
    assert "Recorded First article: Pass" in first.get_data(as_text=True), first.get_data(
        as_text=True
    )
    assert "double tap" in second.get_data(as_text=True)
    for hostile in (
        {"op_insp_stage": "final"},
        {"op_insp_result": "<script>"},
        {"op_insp_c0_value": "50; DROP TABLE inspection"},
        {"op_insp_c0_name": "\x1b[31m"},
        {"op_insp_wo": "WO-NOT-KNOWN"},
        {"op_insp_wo": "<script>alert(1)</script>"},
        {"op_station": "NO-SUCH"},
        {"op_insp_defect": "no_such_code", "op_insp_defect_qty": 1},
        {"op_insp_note": "x" * 500},
    ):
        response = _post(client, app, **hostile)
        assert response.status_code == 200, hostile
        assert "op-feedback error" in response.get_data(as_text=True), hostile
    events = [e for _, e in _tablet_events(db_url)]
    assert len(events) == 1 and isinstance(events[0], InspectionReport)
    assert (events[0].work_order, events[0].stage, events[0].result) == ("WO-OP-1", "first", "pass")
    viewer = _post(_client(app, "viewer"), app, op_insp_result="fail")
    assert viewer.status_code == 403
    assert len(_tablet_events(db_url)) == 1


def test_a_blocked_run_refuses_production_lots(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO inspection_run (work_order, machine, start_ts, first_article, blocked, "
            "parts_made, patrol_every_min, last_piece) "
            "VALUES ('WO-B', %s, now(), 'pending', true, 0, 0, 'off')",
            (MACHINE,),
        )
        event = {"kind": "production_lot", "machine": MACHINE, "work_order": "WO-B"}
        assert iq.blocked(conn, MACHINE, "WO-B") and not iq.blocked(conn, MACHINE, "WO-C")
        with pytest.raises(Refused) as err:
            operator_lots._check_blocked(conn, event)
        assert err.value.code == "blocked_first_article"
        conn.execute("UPDATE inspection_run SET blocked = false")
        operator_lots._check_blocked(conn, event)  # passes now
        # A material lot is never blocked.
        conn.execute("UPDATE inspection_run SET blocked = true")
        operator_lots._check_blocked(conn, {**event, "kind": "material_lot"})


# -- the tablet in a real browser ---------------------------------------------------------------


@pytest.mark.browser
def test_record_a_first_article_in_the_browser(
    db_url: str,
    plant: PlantConfig,
    served: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    _station_with_running_wo(db_url, plant, tmp_path)
    browser = Chromium(tmp_path)
    try:
        browser.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        open_tablet(browser, served, MACHINE)
        # What the station owes: the first article, missing after 20 parts.
        browser.wait_for(
            "document.querySelector('#op-insp-due').textContent.includes('first article MISSING')"
        )
        browser.eval("document.querySelector('#op-insp-stage input[value=first]').click()")
        browser.eval("document.querySelector('#op-insp-result input[value=pass]').click()")
        for field, text in (
            ("c0-name", "length"),
            ("c0-value", "50.05"),
            ("c0-lsl", "49.8"),
            ("c0-usl", "50.2"),
        ):
            browser.eval(f"document.querySelector('#op-insp-{field}').focus()")
            browser.page("Input.insertText", {"text": text})
        _wait_minute_start()
        browser.eval("document.querySelector('#op-insp-submit').click()")
        browser.wait_for(
            "document.querySelector('#op-insp-feedback').textContent.includes('Recorded')"
        )
        # The section, scrolled into view, as the docs show it.
        browser.eval("document.querySelector('.op-insp').scrollIntoView()")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        browser.screenshot(SCREENSHOTS / "operator-inspections-en-1280x800.png")
        _process(plant, db_url, tmp_path / "recovery")
        with psycopg.connect(db_url) as conn:
            records = conn.execute(
                "SELECT work_order, stage, result, operator, all_ok, characteristics"
                " FROM v_inspections"
            ).fetchall()
            run = conn.execute(
                "SELECT first_article, blocked FROM v_inspection_runs WHERE work_order = 'WO-OP-1'"
            ).fetchone()
        assert records == [
            (
                "WO-OP-1",
                "first",
                "pass",
                "operator",
                True,
                [
                    {
                        "name": "length",
                        "value": 50.05,
                        "lsl": 49.8,
                        "usl": 50.2,
                        "unit": None,
                        "ok": True,
                    }
                ],
            ),
        ]
        assert run == ("passed", False)
        # The station now owes no first article.
        browser.eval("document.querySelector('#op-insp-submit').scrollIntoView()")
        browser.wait_for(
            "!document.querySelector('#op-insp-due').textContent.includes('first article')",
            timeout=30,
        )
    finally:
        browser.close()


def _machine(m: str) -> dict[str, Any]:
    return {"data-machine": m}  # as the andon's tiles carry it
