"""The two board pages at plant scale (issue 14, part B2): what they show by default stays cheap
and, at its resolution, says what the detailed reads say.

- The plant's state timeline of a large plant draws a lane per line with each hour's state
  shares (`timeline_shares`, from the machine hours the dataflow keeps): equal to the detailed
  intervals (`timeline`) clipped to each hour and summed per line in Python, on a replayed
  history.
- The order board shows a page of orders (`order_board_page`): its pages, one after the other,
  are the whole board (`order_board`) for every filter, ranks included; the page's buttons
  move through them and a new filter starts again at the first.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import psycopg
import pytest
import waitress

from collectors.simulator import write_history
from dashboards import analytics_queries as aq
from dashboards import context
from dashboards import order_queries as oq
from dashboards.app import create_app
from dashboards.pages import analytics
from dashboards.queries import Database
from mesflow import users
from mesflow.plant import PlantConfig
from mesflow.report import Scope
from mesflow.settings import Settings
from streams.replay import replay_file
from tests.conftest import require
from tests.test_dashboard import Chromium, sign_in

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
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
            assert custom == f"line:{y}" and x > 0
            # base: milliseconds of plant-local wall time (a date axis reads them as UTC).
            start = datetime(1970, 1, 1) + timedelta(milliseconds=base)
            hour = start.replace(minute=0, second=0, microsecond=0)
            drawn[(y, hour.replace(tzinfo=plant.tz).isoformat())] += x
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
            click = {"points": [{"customdata": "line:CNC"}]}
            assert analytics._line_click(click) == "line:CNC"
            bad: Any
            for bad in (
                None,
                {"points": []},
                {"points": [{"customdata": "IM-01"}]},
                {"points": [{"customdata": "line:NOPE"}]},
                {"points": [{"customdata": "machine:IM-01"}]},
            ):
                assert analytics._line_click(bad) is analytics.dash.no_update
    finally:
        context.of(app.server).db.close()


# -- the order board ----------------------------------------------------------------------------


def fill_orders(url: str, n: int) -> None:
    """`n` orders with every rank key mixed (at risk, priorities and due dates with NULLs and
    ties, four statuses, five customers) and 0-3 work orders each."""
    with psycopg.connect(url) as conn:
        conn.execute(
            """
            INSERT INTO order_progress (order_no, customer, priority, product, qty, due, status,
                version, good, scrap, progress, eta, at_risk, last_event_ts)
            SELECT 'SO-' || lpad(i::text, 4, '0'),
                   CASE WHEN i %% 11 = 0 THEN NULL ELSE 'C' || (i * 7 %% 5) END,
                   CASE WHEN i %% 9 = 0 THEN NULL ELSE 1 + i * 13 %% 4 END, 'P-100', 100,
                   CASE WHEN i %% 8 = 0 THEN NULL
                        ELSE '2026-11-20'::timestamptz + (i * 37 %% 50) * interval '1 hour' END,
                   (ARRAY['open', 'open', 'on_hold', 'cancelled', 'closed'])[1 + i * 3 %% 5],
                   1, i %% 100, 1, (i %% 100) / 100.0, '2026-11-21'::timestamptz, i * 17 %% 6 = 0,
                   '2026-11-19'::timestamptz
            FROM generate_series(1, %s) i
            """,
            (n,),
        )
        conn.execute(
            """
            INSERT INTO work_order_progress (work_order, order_no, good, scrap, rate_per_h,
                last_event_ts)
            SELECT o.order_no || '-' || k, o.order_no, 1, 0, 10, o.last_event_ts
            FROM order_progress o, generate_series(1, 3) k
            WHERE o.order_no ~ '^SO-[0-9]{4}$' AND k <= length(o.order_no) % 4 + (substring(o.order_no, 4)::int % 3)
            """
        )


def test_board_pages_are_the_whole_board(db_url: str) -> None:
    fill_orders(db_url, 437)
    db = Database(db_url)
    try:
        for status in (None, "open", "closed", "cancelled"):
            for customer in (None, "C1", "C4", "nobody"):
                whole = oq.order_board(db, status=status, customer=customer)
                for size in (1000, 50, 7):
                    pages: list[oq.BoardRow] = []
                    page = 0
                    while True:
                        rows, total, shown = oq.order_board_page(
                            db, status=status, customer=customer, page=page, size=size
                        )
                        assert total == len(whole) and shown == page
                        assert len(rows) == min(size, total - page * size) or total == 0
                        pages += rows
                        if (page + 1) * size >= total:
                            break
                        page += 1
                    assert pages == whole, (status, customer, size)
                # Past the last page: the last page.
                rows, total, shown = oq.order_board_page(
                    db, status=status, customer=customer, page=10_000, size=50
                )
                assert shown == max(0, (total - 1) // 50)
                assert rows == whole[shown * 50 :]
        assert len(oq.order_board(db)) == 437
    finally:
        db.close()


def _board_call(client: Any, status: Any, trigger: str, page: Any) -> dict[str, Any]:
    """The board's callback as dash-renderer sends it, `trigger` the input that changed."""
    outs = ["table.children", "customer.options", "banner.children", "page.data"]
    outs.append("pager.children")
    inputs = [
        ("tick", "n_intervals", 1),
        ("status", "value", status),
        ("customer", "value", None),
        ("prev", "n_clicks", 1),
        ("next", "n_clicks", 1),
    ]
    body = {
        "output": ".." + "...".join(f"orders-{o}" for o in outs) + "..",
        "outputs": [{"id": f"orders-{o.split('.')[0]}", "property": o.split(".")[1]} for o in outs],
        "inputs": [{"id": f"orders-{i}", "property": p, "value": v} for i, p, v in inputs],
        "state": [
            {"id": "orders-lang", "property": "data", "value": "en"},
            {"id": "orders-page", "property": "data", "value": page},
        ],
        "changedPropIds": [f"orders-{trigger}"],
    }
    answer = client.post("/_dash-update-component", json=body)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    response: dict[str, Any] = answer.get_json()["response"]
    return response


def test_board_page_buttons_and_filters(db_url: str, plant: PlantConfig) -> None:
    fill_orders(db_url, 437)
    with psycopg.connect(db_url, autocommit=True) as conn:
        users.add_user(conn, "viewer1", "viewer", "viewer-password")
    app = create_app(Settings(auth_session_secret="s" * 40), plant, db_url)
    db = Database(db_url)
    try:
        whole = [r.order_no for r in oq.order_board(db)]
        client = app.server.test_client()
        sign_in(client, "viewer1", "viewer-password", "/orders")

        def shown(response: dict[str, Any]) -> list[str]:
            table = json.dumps(response["orders-table"])
            return re.findall(r'"data-order": "([^"]+)"', table)

        size = oq.BOARD_PAGE
        first = _board_call(client, None, "tick.n_intervals", 0)
        assert shown(first) == whole[:size] and first["orders-page"]["data"] == 0
        assert first["orders-pager"]["children"] == f"1–{size} of 437"
        second = _board_call(client, None, "next.n_clicks", 0)
        assert shown(second) == whole[size : 2 * size] and second["orders-page"]["data"] == 1
        assert second["orders-pager"]["children"] == f"{size + 1}–{2 * size} of 437"
        # A refresh keeps the page; past the last page is the last; back is the one before.
        assert shown(_board_call(client, None, "tick.n_intervals", 1)) == shown(second)
        end = (437 - 1) // size  # the last page
        last = _board_call(client, None, "next.n_clicks", end)
        assert shown(last) == whole[end * size :] and last["orders-page"]["data"] == end
        assert last["orders-pager"]["children"] == f"{end * size + 1}–437 of 437"
        assert shown(_board_call(client, None, "prev.n_clicks", 2)) == shown(second)
        assert shown(_board_call(client, None, "prev.n_clicks", 0)) == shown(first)
        # A new filter starts at its first page; a hostile page value is the first page.
        open_rows = [r.order_no for r in oq.order_board(db, status="open")]
        answer_open = _board_call(client, "open", "status.value", 2)
        assert shown(answer_open) == open_rows[:size] and answer_open["orders-page"]["data"] == 0
        for bad in ("2", -1, None, [1], 10**9):
            assert shown(_board_call(client, None, "tick.n_intervals", bad)) == whole[:size]
    finally:
        db.close()
        context.of(app.server).db.close()


# -- in a real browser --------------------------------------------------------------------------


@pytest.mark.browser
def test_pages_in_browser(
    replayed: tuple[Database, PlantConfig],
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The plant timeline by line (the threshold lowered to the demo plant's 12 machines: the
    app runs in this process) and a click into a line; the order board's second page."""
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    db, plant = replayed
    monkeypatch.setattr(aq, "TIMELINE_MACHINE_LANES", 1)
    fill_orders(db_url, 200)  # 80 open orders and the replay's: two pages
    _rows, total, _page = oq.order_board_page(db, status="open")
    size = oq.BOARD_PAGE
    assert size < total <= 2 * size
    with psycopg.connect(db_url, autocommit=True) as conn:
        users.add_user(conn, "boss", "manager", "manager password 123")
    app = create_app(Settings(auth_session_secret="k" * 40), plant, db_url)
    server = waitress.create_server(app.server, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.effective_port}"
    b = Chromium(tmp_path)
    lanes = (
        "Array.from(document.querySelectorAll('#an-timeline .ytick text'))"
        ".map(e => e.textContent).sort().join('|')"
    )
    try:
        b.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        b.goto(f"{url}/analytics?lang=en&start=2026-11-16&end=2026-11-17")
        b.wait_for("location.pathname === '/login' && !!document.querySelector('#password')")
        for sel, value in {"#username": "boss", "#password": "manager password 123"}.items():
            b.eval(f"document.querySelector({json.dumps(sel)}).value = {json.dumps(value)}")
        b.eval("document.querySelector('button[type=submit]').click()")
        names = [ln.name.get("en") for ln in plant.lines]
        b.wait_for(f"{lanes} === {json.dumps('|'.join(sorted(names)))}")
        bars = "document.querySelectorAll('#an-timeline .bars path').length"
        assert b.eval(bars) > 48  # hour pieces of two lines over a day
        b.eval("document.querySelector('#an-timeline').scrollIntoView()")
        b.eval("window.scrollBy(0, -70)")
        time.sleep(0.5)  # plotly redraws at the new width
        SHOTS.mkdir(parents=True, exist_ok=True)
        b.screenshot(SHOTS / "analytics-timeline-lines-en-1280x800.png")
        # The docs' other sizes and language: the same lanes, in Chinese too.
        for lang, width, height in (("zh", 1280, 800), ("en", 1920, 1080), ("zh", 1920, 1080)):
            b.page(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
            b.goto(f"{url}/analytics?lang={lang}&start=2026-11-16&end=2026-11-17")
            names_in = sorted(ln.name.get(lang) or ln.name.get("en") for ln in plant.lines)
            b.wait_for(f"{lanes} === {json.dumps('|'.join(names_in))}")
            b.eval("document.querySelector('#an-timeline').scrollIntoView()")
            b.eval("window.scrollBy(0, -70)")
            time.sleep(0.5)
            b.screenshot(SHOTS / f"analytics-timeline-lines-{lang}-{width}x{height}.png")
        b.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        b.goto(f"{url}/analytics?lang=en&start=2026-11-16&end=2026-11-17")
        b.wait_for(f"{lanes} === {json.dumps('|'.join(sorted(names)))}")
        # A click on a line's lane: the line's scope, its machines' lanes.
        click = {"points": [{"customdata": "line:IM"}]}
        b.eval(f"dash_clientside.set_props('an-timeline', {{clickData: {json.dumps(click)}}})")
        machines = [m.id for m in plant.lines[0].machines]
        b.wait_for(f"{lanes} === {json.dumps('|'.join(sorted(machines)))}")

        b.goto(f"{url}/orders?lang=en")
        b.wait_for("location.pathname === '/orders'")
        pager = "(document.querySelector('.orders-pager-text')||{}).textContent"
        b.wait_for(f"{pager} === '1–{size} of {total}'")
        first = "document.querySelector('[data-order]').dataset.rank"
        rank_1 = int(b.eval(first))
        b.eval("document.querySelector('.orders-next').click()")
        b.wait_for(f"{pager} === '{size + 1}–{min(total, 2 * size)} of {total}'")
        assert int(b.eval(first)) > rank_1
        assert b.eval("document.querySelectorAll('[data-order]').length") == min(size, total - size)
    finally:
        b.close()
        server.close()
        thread.join(timeout=5)
        context.of(app.server).db.close()
