"""The operator tablet's sign-in section (dashboards/pages/operator_signin.py).

Pure: a sign-in or sign-out builds a contract-valid event, a double tap the same id, and
hostile codes are refused. Through the app's own Flask routes: a sign-in is stored once, a
sign-in of someone already there and a sign-out of someone not there are refused once the
dataflow has booked them, a viewer may not sign anyone in. In chromium at 1280x800: type a
code, tap Sign in, and after the dataflow the person is listed at the station; Sign out
empties the list.
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

from dashboards.operator_reports import Refused, Ticket
from dashboards.pages import operator_signin as osi
from mesflow.events import SignInReport, SignOutReport, parse_event
from mesflow.plant import PlantConfig
from tests.conftest import require
from tests.test_dashboard import Chromium
from tests.test_operator import (  # noqa: F401  (fixtures)
    MACHINE,
    PASSWORD,
    _client,
    _process,
    _tablet_events,
    _wait_minute_start,
    app,
    open_tablet,
    served,
)

NOW = datetime(2026, 11, 20, 2, 30, tzinfo=UTC)
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


# -- pure -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sign_in", "sign_out"])
def test_events_follow_the_contract(plant: PlantConfig, kind: str) -> None:
    key = Ticket.new().key
    event = osi.sign_event(plant, key, MACHINE, kind, "  王伟-007 ", NOW)
    parsed = parse_event(json.dumps(event))
    assert isinstance(parsed, SignInReport if kind == "sign_in" else SignOutReport)
    assert (parsed.machine, parsed.operator, parsed.ts) == (MACHINE, "王伟-007", NOW)
    again = osi.sign_event(plant, key, MACHINE, kind, "王伟-007", NOW + timedelta(seconds=40))
    assert again == event  # a double tap in the same minute: the same event
    other = osi.sign_event(plant, Ticket.new().key, MACHINE, kind, "王伟-007", NOW)
    assert other["id"] != event["id"]  # a new key (after a report): a new event


@pytest.mark.parametrize(
    "code",
    [
        None,
        7,
        "",
        "   ",
        "x" * 65,
        "wang\x00",
        "wang\nli",
        "wa\x1bng",
        "wang\u200b",  # zero-width space
        "\u202egnaw",  # right-to-left override
        "wa\u2028ng",  # line separator
        ["wang"],
    ],
)
def test_hostile_codes_are_refused(plant: PlantConfig, code: Any) -> None:
    with pytest.raises(Refused) as err:
        osi.sign_event(plant, "a" * 32, MACHINE, "sign_in", code, NOW)
    assert err.value.code == "bad_code"


def test_a_64_character_code_is_accepted_and_the_machine_must_be_the_plants(
    plant: PlantConfig,
) -> None:
    assert osi.sign_event(plant, "a" * 32, MACHINE, "sign_in", "x" * 64, NOW)["operator"]
    for machine in ("NO-SUCH", None, ["IM-01"]):
        with pytest.raises(Refused) as err:
            osi.sign_event(plant, "a" * 32, machine, "sign_in", "wang", NOW)
        assert err.value.code == "unknown_machine"


# -- through the app's routes ---------------------------------------------------------------------


def _post(
    client: Any, dash_app: dash.Dash, button: str, leave: str | None = None, **state: Any
) -> Any:
    """The action callback as the browser calls it: `button` tapped (or, with `leave`, the
    list's own sign-out button of that person)."""
    output = next(k for k in dash_app.callback_map if "op-signin-feedback.children" in k)
    dep = next(d for d in client.get("/_dash-dependencies").get_json() if d["output"] == output)
    values = {
        "op-station": MACHINE,
        "op-signin-key": "b" * 32,
        "op-signin-code": "wang",
        "op-signin-lang": "en",
        **{k.replace("_", "-"): v for k, v in state.items()},
    }
    prop = "n_submit" if button == "op-signin-code" else "n_clicks"
    body = {
        "output": output,
        "outputs": [
            dict(zip(("id", "property"), p.rsplit(".", 1), strict=True))
            for p in output[2:-2].split("...")
        ],
        "inputs": [
            _leave_input(i, leave)
            if str(i["id"]).startswith("{")  # a pattern id (sent as its JSON)
            else {**i, "value": 1 if (i["id"], i["property"]) == (button, prop) else None}
            for i in dep["inputs"]
        ],
        "state": [{**s, "value": values.get(s["id"])} for s in dep["state"]],
        "changedPropIds": [f"{button}.{prop}" if leave is None else f"{_leave_id(leave)}.n_clicks"],
    }
    return client.post("/_dash-update-component", json=body)


def _leave_id(person: str) -> str:
    return json.dumps({"person": person, "type": "op-signin-leave"}, separators=(",", ":"))


def _leave_input(dep: dict[str, Any], person: str | None) -> list[dict[str, Any]]:
    if person is None:
        return []
    clicks = None if person.startswith("new:") else 1  # "new:": a re-rendered, untapped list
    return [{"id": {"type": "op-signin-leave", "person": person.removeprefix("new:")},
             "property": "n_clicks", "value": clicks}]  # fmt: skip


def test_callback_stores_a_sign_in_once_and_refuses_what_cannot_be(
    app: dash.Dash,  # noqa: F811
    db_url: str,
    plant: PlantConfig,
    tmp_path: Path,
) -> None:
    client = _client(app, "operator")
    _wait_minute_start()
    first = _post(client, app, "op-signin-in")
    second = _post(client, app, "op-signin-in")  # a double tap: same key, same minute
    assert "wang signed in" in first.get_data(as_text=True), first.get_data(as_text=True)
    assert "double tap" in second.get_data(as_text=True)
    # Enter in the code field (a badge scanner) signs in too.
    scanned = _post(client, app, "op-signin-code", op_signin_code="li", op_signin_key="c" * 32)
    assert "li signed in" in scanned.get_data(as_text=True)
    for hostile in (
        {"op_signin_code": "wang\x00"},
        {"op_signin_code": "x" * 65},
        {"op_signin_code": ""},
        {"op_station": "NO-SUCH"},
        {"op_station": None},
    ):
        response = _post(client, app, "op-signin-in", **hostile)
        assert response.status_code == 200, hostile
        assert "op-feedback error" in response.get_data(as_text=True), hostile
    _process(plant, db_url, tmp_path / "recovery")
    again = _post(client, app, "op-signin-in", op_signin_key="d" * 32)
    assert "already signed in here" in again.get_data(as_text=True)
    nobody = _post(client, app, "op-signin-out", op_signin_code="zhao")
    assert "not signed in here" in nobody.get_data(as_text=True)
    # A person's own button in the list signs them out; one for someone not here does not.
    li_out = _post(client, app, "op-signin-in", leave="li")
    assert "li signed out" in li_out.get_data(as_text=True), li_out.get_data(as_text=True)
    untapped = _post(client, app, "op-signin-in", leave="new:wang", op_signin_key="9" * 32)
    assert untapped.status_code in (200, 204), untapped.get_data(as_text=True)
    assert "signed" not in untapped.get_data(as_text=True)  # a re-rendered list: no tap
    ghost = _post(client, app, "op-signin-in", leave="ghost", op_signin_key="e" * 32)
    assert "not signed in here" in ghost.get_data(as_text=True)
    hostile = _post(client, app, "op-signin-in", leave="wa\x00ng", op_signin_key="f" * 32)
    assert "op-feedback error" in hostile.get_data(as_text=True)
    events = [e for _, e in _tablet_events(db_url)]
    assert [(type(e), e.operator) for e in events] == [
        (SignInReport, "wang"),
        (SignInReport, "li"),
        (SignOutReport, "li"),
    ]
    # A viewer may not sign anyone in.
    assert _post(_client(app, "viewer"), app, "op-signin-in").status_code == 403
    assert len(_tablet_events(db_url)) == 3
    _process(plant, db_url, tmp_path / "recovery")
    with psycopg.connect(db_url) as conn:
        people = conn.execute(
            "SELECT person FROM v_station_people WHERE station = %s ORDER BY person", (MACHINE,)
        ).fetchall()
    assert people == [("wang",)]


# -- in a real browser ----------------------------------------------------------------------------


@pytest.mark.browser
def test_sign_in_and_out_in_the_browser(
    db_url: str,
    plant: PlantConfig,
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
        open_tablet(browser, served, MACHINE)
        browser.wait_for(
            "document.querySelector('#op-signin-people')?.textContent.includes('Nobody')"
        )
        small = browser.eval(
            "[...document.querySelectorAll('.op-signin .op-btn, .op-signin-input')]"
            ".filter(b => { const r = b.getBoundingClientRect();"
            " return r.height < 48 || r.width < 48 }).map(b => b.id)"
        )
        assert small == [], small
        # A badge scanner types the code and Enter... here: type, then tap Sign in.
        browser.eval("document.querySelector('#op-signin-code').focus()")
        browser.page("Input.insertText", {"text": "wang"})
        _wait_minute_start()
        browser.eval("document.querySelector('#op-signin-in').click()")
        browser.wait_for(
            "document.querySelector('#op-signin-feedback').textContent.includes('wang signed in')"
        )
        assert browser.eval("document.querySelector('#op-signin-code').value") == ""
        _process(plant, db_url, tmp_path / "recovery")
        browser.wait_for(
            "document.querySelector('#op-signin-people').textContent.includes('wang')",
        )
        assert "since" in str(
            browser.eval("document.querySelector('#op-signin-people').textContent")
        )
        assert browser.eval("document.documentElement.scrollWidth") <= 1280
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser.eval("document.querySelector('.op-signin').scrollIntoView({block: 'center'})")
        browser.screenshot(SHOTS / "operator-signin-en-1280x800.png")
        # Sign out with the person's own button in the list.
        browser.eval("document.querySelector('.op-signin-person .op-signin-leave').click()")
        browser.wait_for(
            "document.querySelector('#op-signin-feedback').textContent.includes('wang signed out')"
        )
        _process(plant, db_url, tmp_path / "recovery")
        browser.wait_for(
            "document.querySelector('#op-signin-people').textContent.includes('Nobody')"
        )
    finally:
        browser.close()
    with psycopg.connect(db_url) as conn:
        segs = conn.execute(
            "SELECT person, station, closed_by FROM labor_segment ORDER BY start_ts"
        ).fetchall()
    assert segs == [("wang", MACHINE, "sign_out")]
