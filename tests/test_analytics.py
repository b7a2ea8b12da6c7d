"""Manager analytics against a real database fed by a replay of two simulated days: the page's
figures are `mesflow report`'s, its CSV is the report's CSV, the loss waterfall adds up, the
Pareto drills down to its stops, and only managers (and admins) may open it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import psycopg
import pytest

from collectors.simulator import write_history
from dashboards import analytics_queries as aq
from dashboards import context
from dashboards.app import create_app
from dashboards.pages import analytics, machine
from dashboards.queries import Database
from mesflow import users
from mesflow.plant import PlantConfig
from mesflow.report import KpiRow, Period, Scope, make_report, total_row
from mesflow.settings import Settings
from streams.replay import replay_file

FIRST = date(2026, 11, 16)  # a Monday: the CNC cell works weekdays only
DAYS = 2
START = datetime.fromisoformat("2026-11-16T00:00:00+08:00")
SCOPES = [Scope("plant"), Scope("line", "IM"), Scope("machine", "IM-01"), Scope("line", "CNC")]


@pytest.fixture
def replayed(db_url: str, plant: PlantConfig, tmp_path: Path) -> Iterator[Database]:
    path = tmp_path / "history.jsonl"
    write_history(plant, path, seed=7, start=START, duration_s=DAYS * 86_400)
    replay_file(path, plant, db_url, tmp_path / "rec", progress=False)
    db = Database(db_url)
    try:
        yield db
    finally:
        db.close()


def _filters(scope: Scope, shift: str | None = None) -> aq.Filters:
    return aq.Filters(FIRST, FIRST + timedelta(days=DAYS), scope, shift)


def _report(url: str, plant: PlantConfig, scope: Scope, fmt: str, **kw: Any) -> str:
    period = Period(FIRST, FIRST + timedelta(days=DAYS))
    return make_report(url, plant, scope, period, fmt=fmt, **kw).text  # type: ignore[arg-type]


def test_figures_are_the_reports(replayed: Database, db_url: str, plant: PlantConfig) -> None:
    tz = plant.tz
    for scope in SCOPES:
        a = analytics.load(replayed, _filters(scope), tz)
        want = [KpiRow(**r) for r in _json_rows(_report(db_url, plant, scope, "json"))]
        assert len(a.shifts) == len(want) > 0, scope
        got_total, want_total = a.total, total_row(want)
        for key in ("planned_s", "apt_s", "good", "scrap", "oee", "availability", "mttr_s"):
            # The report's JSON rounds each row (0.1 s, 4 decimals): equal up to that.
            want_value = getattr(want_total, key)
            assert getattr(got_total, key) == pytest.approx(want_value, rel=1e-4), (scope, key)
        # A believable plant: some OEE, some stops, some failures.
        assert got_total.oee is not None and 0.2 < got_total.oee < 1.0
        reasons = _json_rows(_report(db_url, plant, scope, "json", reasons=True))
        assert [(r.reason, r.stops) for r in a.reasons] == [
            (r["reason"], r["stops"]) for r in reasons
        ]

        # The figures show those numbers: trend points are the report's day totals, Pareto
        # bars its reasons' hours.
        out = analytics.render(a, plant, "en")
        trend = out["trend"].data[0]
        for day, oee in zip(trend.x, trend.y, strict=True):
            d = date.fromisoformat(day)
            one = make_report(
                db_url, plant, scope, Period(d, d + timedelta(days=1)), fmt="json"
            ).text
            day_total = total_row([KpiRow(**r) for r in _json_rows(one)])
            expect = None if day_total.oee is None else round(day_total.oee * 100, 1)
            assert oee == pytest.approx(expect, abs=0.11), (scope, day)
        bars = out["pareto_reason"].data[0]
        assert list(bars.customdata) == [r["reason"] for r in reasons]
        assert list(bars.y) == [round(r["seconds"] / 3600, 2) for r in reasons]

        # The waterfall adds up: planned minus every loss is the fully productive time, and
        # that is OEE x planned time.
        steps = a.waterfall
        assert steps[0].seconds == pytest.approx(got_total.planned_s)
        assert sum(st.seconds for st in steps[:-1]) == pytest.approx(steps[-1].seconds, abs=1e-6)
        assert steps[-1].seconds == pytest.approx((got_total.oee or 0) * got_total.planned_s)
        assert all(st.seconds <= 1e-9 for st in steps if st.kind == "loss")


def test_shift_filter_and_shift_comparison(replayed: Database, plant: PlantConfig) -> None:
    tz = plant.tz
    every = aq.kpis(replayed, _filters(Scope("line", "IM")), tz)
    day = aq.kpis(replayed, _filters(Scope("line", "IM"), "day"), tz)
    assert day and {r.shift_name for r in day} == {"day"}
    assert {r.shift_name for r in every} == {"day", "night"}
    compared = dict(aq.by_shift_name(every))
    assert compared["day"].planned_s == pytest.approx(sum(r.planned_s for r in day))
    assert compared["day"].oee == pytest.approx(total_row(day).oee)
    reasons_day = aq.reasons(replayed, _filters(Scope("line", "IM"), "day"), tz)
    reasons_all = aq.reasons(replayed, _filters(Scope("line", "IM")), tz)
    assert sum(r.seconds for r in reasons_day) < sum(r.seconds for r in reasons_all)
    # Stops of the day shifts start inside them (IM works 08:00-20:00), the others outside.
    day_stops = aq.stops(replayed, _filters(Scope("line", "IM"), "day"), tz)
    night_stops = aq.stops(replayed, _filters(Scope("line", "IM"), "night"), tz)
    assert day_stops and night_stops
    assert all(8 <= r.start_ts.astimezone(tz).hour < 20 for r in day_stops)
    assert not any(8 <= r.start_ts.astimezone(tz).hour < 20 for r in night_stops)
    every_stop = aq.stops(replayed, _filters(Scope("line", "IM")), tz)
    assert len(day_stops) + len(night_stops) == len(every_stop)
    # The page names the shifts by their labels (the plant file), filters by their codes.
    assert analytics.shift_options(plant, "zh")[1:] == [
        {"label": "白班", "value": "day"}, {"label": "夜班", "value": "night"},
    ]  # fmt: skip
    bars = analytics.shift_figure(every, plant, "zh").data[0]
    assert sorted(bars.x) == ["夜班", "白班"]
    table = str(analytics.shift_table(every, plant, "en"))
    assert "Day shift" in table and "Night shift" in table


def test_pareto_drills_down_to_its_stops(replayed: Database, plant: PlantConfig) -> None:
    tz = plant.tz
    f = _filters(Scope("plant"))
    reasons = aq.reasons(replayed, f, tz)
    top = reasons[0]
    rows = aq.stops(replayed, f, tz, reason=top.reason)
    assert rows and {r.reason for r in rows} == {top.reason}
    assert all(not r.is_open or r.end_ts is None for r in rows)
    assert [r.duration_s for r in rows] == sorted((r.duration_s for r in rows), reverse=True)
    lo, hi = f.bounds(tz)
    assert all(lo <= r.start_ts < hi for r in rows)
    by_cat = aq.stops(replayed, f, tz, category="technical")
    assert by_cat and {r.category for r in by_cat} == {"technical"}
    # The category Pareto is the reason Pareto folded: same total time and stops.
    cats = aq.by_category(reasons)
    assert sum(c.seconds for c in cats) == pytest.approx(sum(r.seconds for r in reasons))
    assert sum(c.stops for c in cats) == sum(r.stops for r in reasons)
    # Clicking a bar picks its code.
    click = {"points": [{"customdata": top.reason}]}
    assert analytics._pick_args({"reason": top.reason}) == (top.reason, None)
    assert analytics._pick_args({"reason": 3, "category": ["x"]}) == (None, None)
    assert click["points"][0]["customdata"] == top.reason


def test_csv_exports_are_the_report_csv(
    replayed: Database, db_url: str, plant: PlantConfig
) -> None:
    tz = plant.tz
    for scope in (Scope("plant"), Scope("machine", "IM-02")):
        f = _filters(scope)
        name, text = analytics.export("shifts", replayed, f, tz)
        assert name == f"shifts_{scope.id or 'plant'}_2026-11-16_2026-11-17.csv"
        assert text == _report(db_url, plant, scope, "csv")
        _, text = analytics.export("reasons", replayed, f, tz)
        assert text == _report(db_url, plant, scope, "csv", reasons=True)
    _, text = analytics.export(
        "stops", replayed, _filters(Scope("plant")), tz, {"reason": "tool_break"}
    )
    lines = text.splitlines()
    assert (
        lines[0]
        == "machine,line,start_ts,end_ts,state,duration_s,reason,category,work_order,is_open"
    )
    assert len(lines) > 1 and all(",tool_break,technical," in ln for ln in lines[1:])
    _, text = analytics.export("reliability", replayed, _filters(Scope("line", "IM")), tz)
    header, *body = text.splitlines()
    assert header == "machine,failures,failure_s,apt_s,mttr_s,mtbf_s"
    assert {ln.split(",")[0] for ln in body} == {m.id for m in plant.lines[0].machines}


def test_timeline_lanes_and_breaks(replayed: Database, plant: PlantConfig) -> None:
    tz = plant.tz
    a = analytics.load(replayed, _filters(Scope("line", "IM")), tz)
    fig = analytics.timeline_figure(a.intervals, a.spans, a.window, plant, "en")
    lanes = {y for trace in fig["data"] for y in trace["y"]}
    assert lanes == {m.id for m in plant.lines[0].machines}
    assert {"Running", "Planned stop"} <= {trace["name"] for trace in fig["data"]}
    shapes = fig["layout"]["shapes"]
    assert len([sh for sh in shapes if sh["type"] == "line"]) == len(a.spans) >= 2
    assert len([sh for sh in shapes if sh["type"] == "rect"]) >= 2  # the day shift's breaks
    # No bar of negative length (clipped to the window); the figure is valid plotly.

    assert all(x > 0 for trace in fig["data"] for x in trace["x"])
    go.Figure(fig)
    # Each machine of the reliability table leads to its day on the machine page.
    links = [
        row.children[0].children.href
        for row in analytics.render(a, plant, "en")["reliability"].children[1].children
    ]
    assert "/machine?machine=IM-01&lang=en&date=2026-11-17" in links


def test_machine_day(replayed: Database, db_url: str, plant: PlantConfig) -> None:
    tz = plant.tz
    out = machine.build(replayed, plant, "IM-01", FIRST, "en")
    # Parts per hour add up to every part of the machine's shifts that day (the view's own).
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT sum(all_good), sum(all_scrap) FROM v_kpi_machine_hour WHERE machine = "
            "'IM-01' AND bucket_start >= %s AND bucket_start < %s",
            (START, START + timedelta(days=1)),
        ).fetchone()
    assert row is not None
    bars = out["parts"].data
    assert (sum(bars[0].y), sum(bars[1].y)) == (row[0], row[1]) and row[0] > 0
    assert len(bars[0].x) == 24
    lanes = {y for trace in out["timeline"]["data"] for y in trace["y"]}
    assert lanes == {"IM-01"}
    wos = aq.work_orders(replayed, "IM-01", FIRST, tz)
    assert wos and all(w.work_order.startswith("WO-IM-01-") for w in wos)
    assert sum(w.running_s for w in wos) > 3600
    assert machine.parse(plant, "nope", "bad")[0] == next(iter(plant.machines))


def _json_rows(text: str) -> list[dict[str, Any]]:
    data = json.loads(text)
    assert isinstance(data, list)
    return data


# -- access -----------------------------------------------------------------------------------

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _sign_in(client: Any, username: str, password: str) -> None:
    page = client.get("/login?next=/analytics").get_data(as_text=True)
    match = _CSRF.search(page)
    assert match, page
    client.post(
        "/login",
        data={"username": username, "password": password, "csrf": match.group(1), "next": "/"},
    )


def test_only_managers_may_open_the_page(db_url: str, plant: PlantConfig) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for role in ("viewer", "operator", "manager", "admin"):
            users.add_user(conn, role + "1", role, f"{role}-password-123")
    app = create_app(Settings(auth_session_secret="s" * 40), plant, db_url)
    try:
        anonymous = app.server.test_client()
        got = anonymous.get("/analytics")
        assert got.status_code in (302, 303, 401) and "/login" in got.headers.get(
            "Location", "/login"
        )
        for role, allowed in (
            ("viewer", False),
            ("operator", False),
            ("manager", True),
            ("admin", True),
        ):
            client = app.server.test_client()
            _sign_in(client, role + "1", f"{role}-password-123")
            page = client.get("/analytics?lang=en")
            assert page.status_code == (200 if allowed else 403), role
            page = client.get("/machine?machine=IM-01&date=2026-11-16")
            assert page.status_code == (200 if allowed else 403), role
            deps = client.get("/_dash-dependencies")
            outputs = (
                " ".join(d["output"] for d in deps.get_json()) if deps.status_code == 200 else ""
            )
            # The callbacks: the gate refuses them to a viewer and an operator.
            body = {
                "output": "an-stops.children",
                "outputs": {"id": "an-stops", "property": "children"},
                "inputs": [
                    {"id": "an-pick", "property": "data", "value": None},
                    {"id": "an-range", "property": "start_date", "value": "2026-11-16"},
                    {"id": "an-range", "property": "end_date", "value": "2026-11-17"},
                    {"id": "an-scope", "property": "value", "value": "plant"},
                    {"id": "an-shift", "property": "value", "value": ""},
                ],
                "state": [{"id": "an-lang", "property": "data", "value": "en"}],
                "changedPropIds": [],
            }
            answer = client.post("/_dash-update-component", json=body)
            if allowed:
                assert "an-summary.children" in outputs
                assert answer.status_code == 200, answer.get_data(as_text=True)
            else:
                assert answer.status_code == 403, role
        assert anonymous.post("/_dash-update-component", json={}).status_code in (401, 403)
    finally:
        context.of(app.server).db.close()
