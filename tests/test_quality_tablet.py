"""The operator tablet's defects-and-rework section (dashboards/pages/operator_quality.py).

Pure: every tap builds a contract-valid event, a double tap the same id; hostile input is
refused. Through the app's own Flask routes: a tap for the running work order is stored
once, hostile requests store nothing, a viewer is refused. In chromium at 1280x800: choose a
code, type a quantity, tap, and the dataflow turns it into a defect record, the yield row and
the machine's scrap.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dash
import psycopg
import pytest

from dashboards.operator_reports import Refused, Ticket
from dashboards.pages import operator_quality as oq
from mesflow.events import DefectReport, ReworkReport, parse_event
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


def _code(plant: PlantConfig) -> str:
    options = oq.code_options(plant, "en")
    assert options, "the example plant has a defect tree"
    return options[0]["value"]


# -- pure -----------------------------------------------------------------------------------------


def test_code_options_are_the_leaves_with_their_family(plant: PlantConfig) -> None:
    options = oq.code_options(plant, "en")
    leaves = {c for c, d in plant.defects_by_code.items() if not d.children}
    assert {o["value"] for o in options} == leaves
    assert all(" › " in o["label"] for o in options if len(plant.defects) > 0)
    zh = oq.code_options(plant, "zh")
    assert [o["value"] for o in zh] == [o["value"] for o in options]


@pytest.mark.parametrize("action", list(oq.ACTIONS))
def test_events_follow_the_contract(plant: PlantConfig, action: str) -> None:
    code = _code(plant)
    key = Ticket.new().key
    event = oq.quality_event(plant, key, MACHINE, action, "WO-1", code, 3, "op-7", NOW)
    parsed = parse_event(json.dumps(event))
    kind, how = oq.ACTIONS[action]
    if kind == "defect":
        assert isinstance(parsed, DefectReport)
        assert (parsed.code, parsed.qty, parsed.disposition) == (code, 3, how)
    else:
        assert isinstance(parsed, ReworkReport)
        assert (parsed.code, parsed.qty, parsed.outcome) == (code, 3, how)
    assert (parsed.machine, parsed.work_order, parsed.operator) == (MACHINE, "WO-1", "op-7")
    # A double tap (same minute) is the same event; another action or minute is not.
    again = oq.quality_event(
        plant, key, MACHINE, action, "WO-1", code, 3, "op-7", NOW + timedelta(seconds=30)
    )
    assert again == event
    later = oq.quality_event(
        plant, key, MACHINE, action, "WO-1", code, 3, "op-7", NOW + timedelta(minutes=1)
    )
    assert later["id"] != event["id"]


def test_a_rework_outcome_needs_no_code(plant: PlantConfig) -> None:
    event = oq.quality_event(plant, "k" * 32, MACHINE, "op-q-back-good", "WO-1", None, 2, "op")
    parsed = parse_event(json.dumps(event))
    assert isinstance(parsed, ReworkReport) and parsed.code is None and parsed.outcome == "good"


HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"machine": "NO-SUCH"}, "unknown_machine"),
    ({"machine": None}, "unknown_machine"),
    ({"work_order": "<script>"}, "unknown_work_order"),
    ({"work_order": "W" * 101}, "unknown_work_order"),
    ({"work_order": "WO-1\nx"}, "unknown_work_order"),
    ({"code": "no_such_code"}, "bad_code"),
    ({"code": "fl\x00ash"}, "bad_code"),
    ({"code": None}, "bad_code"),
    ({"code": ["flash"]}, "bad_code"),
    ({"qty": 0}, "bad_qty"),
    ({"qty": -1}, "bad_qty"),
    ({"qty": 1000}, "bad_qty"),
    ({"qty": "5"}, "bad_qty"),
    ({"qty": 2.5}, "bad_qty"),
    ({"qty": True}, "bad_qty"),
    ({"qty": None}, "bad_qty"),
]


@pytest.mark.parametrize(("change", "code"), HOSTILE)
def test_hostile_taps_are_refused(plant: PlantConfig, change: dict[str, Any], code: str) -> None:
    args: dict[str, Any] = {
        "machine": MACHINE,
        "work_order": "WO-1",
        "code": _code(plant),
        "qty": 3,
        **change,
    }
    with pytest.raises(Refused) as err:
        oq.quality_event(plant, "k" * 32, action="op-q-scrap", operator="op", **args)
    assert err.value.code == code


def test_typed_work_order() -> None:
    assert oq.typed_work_order(None) is None
    assert oq.typed_work_order("  ") is None
    assert oq.typed_work_order(" WO-7 ") == "WO-7"
    for bad in ("<b>", "a b", "x" * 101, 5, ["WO-1"]):
        with pytest.raises(Refused):
            oq.typed_work_order(bad)


# -- the callback through the app's routes ------------------------------------------------------


def _station_with_running_wo(db_url: str, plant: PlantConfig, tmp_path: Path) -> None:
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


def _post(client: Any, dash_app: dash.Dash, button: str, **state: Any) -> Any:
    output = next(k for k in dash_app.callback_map if "op-q-feedback.children" in k)
    dep = next(d for d in client.get("/_dash-dependencies").get_json() if d["output"] == output)
    values = {
        "op-station": MACHINE,
        "op-q-key": "a" * 32,
        "op-q-wo": None,
        "op-q-code": None,
        "op-q-code-text": None,
        "op-q-qty": 2,
        "op-q-lang": "en",
        **{k.replace("_", "-"): v for k, v in state.items()},
    }
    body = {
        "output": output,
        "outputs": [
            dict(zip(("id", "property"), p.rsplit(".", 1), strict=True))
            for p in output[2:-2].split("...")
        ],
        "inputs": [{**i, "value": 1 if i["id"] == button else None} for i in dep["inputs"]],
        "state": [{**s, "value": values.get(s["id"])} for s in dep["state"]],
        "changedPropIds": [f"{button}.n_clicks"],
    }
    return client.post("/_dash-update-component", json=body)


def test_callback_stores_a_tap_once_and_refuses_hostile_requests(
    app: dash.Dash,  # noqa: F811
    db_url: str,
    plant: PlantConfig,
    tmp_path: Path,
) -> None:
    _station_with_running_wo(db_url, plant, tmp_path)
    client = _client(app, "operator")
    code = _code(plant)
    _wait_minute_start()
    first = _post(client, app, "op-q-scrap", op_q_code=code)
    second = _post(client, app, "op-q-scrap", op_q_code=code)
    assert first.status_code == 200 and second.status_code == 200
    assert "scrapped" in first.get_data(as_text=True), first.get_data(as_text=True)
    assert "double tap" in second.get_data(as_text=True)
    # A rework outcome for a typed work order.
    back = _post(client, app, "op-q-back-good", op_q_wo="WO-OP-1", op_q_qty=1)
    assert "reworked good" in back.get_data(as_text=True)
    for hostile in (
        {"op_q_code": "no_such_code"},
        {"op_q_code": code, "op_q_qty": 10_000},
        {"op_q_code": code, "op_q_wo": "WO-NOT-KNOWN"},
        {"op_q_code": code, "op_q_wo": "<script>alert(1)</script>"},
        {"op_q_code": code, "op_station": "NO-SUCH"},
        {"op_q_code": code, "op_q_qty": "3; DROP TABLE x"},
    ):
        response = _post(client, app, "op-q-rework", **hostile)
        assert response.status_code == 200, hostile
        assert "op-feedback error" in response.get_data(as_text=True), hostile
    events = [e for _, e in _tablet_events(db_url)]
    assert [type(e) for e in events] == [DefectReport, ReworkReport]
    assert isinstance(events[0], DefectReport)
    assert (events[0].work_order, events[0].code, events[0].qty) == ("WO-OP-1", code, 2)
    # A viewer may not record.
    viewer = _post(_client(app, "viewer"), app, "op-q-scrap", op_q_code=code)
    assert viewer.status_code == 403
    assert len(_tablet_events(db_url)) == 2


# -- the tablet in a real browser ---------------------------------------------------------------


@pytest.mark.browser
def test_record_a_defect_in_the_browser(
    db_url: str,
    plant: PlantConfig,
    served: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    _station_with_running_wo(db_url, plant, tmp_path)
    code = _code(plant)
    browser = Chromium(tmp_path)
    try:
        browser.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        open_tablet(browser, served, MACHINE)
        browser.wait_for("!!document.querySelector('#op-q-scrap')")
        # Every code and button is a touch target (48 px or more).
        small = browser.eval(
            "[...document.querySelectorAll('.op-q .op-btn, .op-q-code')].filter(b => {"
            " const r = b.getBoundingClientRect(); return r.height < 48 || r.width < 48 })"
            ".map(b => b.textContent)"
        )
        assert small == [], small
        browser.eval(
            f"document.querySelector('#op-q-code input[value={json.dumps(code)}]').click()"
        )
        browser.eval("document.querySelector('#op-q-qty').focus()")
        browser.page("Input.insertText", {"text": "3"})
        _wait_minute_start()
        browser.eval("document.querySelector('#op-q-rework').click()")
        browser.wait_for(
            "document.querySelector('#op-q-feedback').textContent.includes('to rework')"
        )
        browser.screenshot(tmp_path / "operator-quality-en.png")
        # Then 2 of them come back good.
        browser.eval("document.querySelector('#op-q-qty').select()")
        browser.page("Input.insertText", {"text": "2"})
        time.sleep(0.3)
        browser.eval("document.querySelector('#op-q-back-good').click()")
        browser.wait_for(
            "document.querySelector('#op-q-feedback').textContent.includes('reworked good')"
        )
        _process(plant, db_url, tmp_path / "recovery")
        with psycopg.connect(db_url) as conn:
            records = conn.execute(
                "SELECT kind, code, qty, disposition, work_order, operator FROM quality_record"
                " ORDER BY seq"
            ).fetchall()
            rework = conn.execute(
                "SELECT made, sent_to_rework, rework_good, rework_pending, first_pass_good,"
                " final_good FROM v_yield WHERE work_order = 'WO-OP-1' AND machine = %s",
                (MACHINE,),
            ).fetchone()
        assert records == [
            ("defect", code, 3, "rework", "WO-OP-1", "operator"),
            ("rework", code, 2, "good", "WO-OP-1", "operator"),
        ]
        # 10 + 20 parts counted since the wo_start; 3 sent, 2 back good, 1 still in rework.
        assert rework == (30, 3, 2, 1, 27, 29)
    finally:
        browser.close()
