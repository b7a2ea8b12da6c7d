"""The analytics page's reliability table at plant scale (issue 14, part U): one page of the
machines, worst first in the order picked, the pages together the whole table, the CSV every
machine (docs/analytics.md, "Reliability by machine")."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.simulator import write_history
from dashboards import analytics_queries as aq
from dashboards import context
from dashboards.app import create_app
from dashboards.pages import analytics
from dashboards.queries import Database
from mesflow import users
from mesflow.plant import PlantConfig
from mesflow.report import Scope
from mesflow.settings import Settings
from streams.replay import replay_file
from tests.conftest import require
from tests.test_analytics import DAYS, FIRST, START
from tests.test_analytics_browser import PASSWORD, QUERY, SCREENSHOTS, _clipped, app_url  # noqa: F401
from tests.test_dashboard import Chromium, sign_in

INF = float("inf")


@st.composite
def machines(draw: Any) -> list[aq.MachineReliability]:
    """Up to 120 machines, many without failures and with ties in every figure."""
    n = draw(st.integers(0, 120))
    rows = []
    for i in range(n):
        failures = draw(st.integers(0, 4))
        fs = float(draw(st.integers(0, 3))) * 600.0 if failures else 0.0
        apt = float(draw(st.integers(0, 3))) * 3_600.0
        rows.append(
            aq.MachineReliability(
                machine=f"M-{draw(st.integers(0, 10**6)):07d}-{i}",
                failures=failures,
                failure_s=fs,
                apt_s=apt,
                mttr_s=fs / failures if failures else None,
                mtbf_s=apt / failures if failures else None,
            )
        )
    return rows


# How bad a machine is for each order (a higher tuple is worse), stated apart from the code.
BADNESS = {
    "mtbf": lambda r: -(r.mtbf_s if r.mtbf_s is not None else INF),
    "failures": lambda r: r.failures,
    "mttr": lambda r: r.mttr_s if r.mttr_s is not None else -INF,
}


@settings(max_examples=50, deadline=None)
@given(rows=machines(), size=st.integers(1, 30))
def test_pages_are_the_whole_table_worst_first(
    rows: list[aq.MachineReliability], size: int
) -> None:
    count = max(1, -(-len(rows) // size))  # pages, one even when empty
    for order in analytics.RELIABILITY_SORTS:
        pages: list[aq.MachineReliability] = []
        for page in range(count):
            got, shown = analytics.reliability_page(rows, order, page, size)
            assert shown == page and (0 < len(got) <= size or not rows)
            pages += got
        # Past the last page: the last page again.
        assert analytics.reliability_page(rows, order, count, size) == (
            pages[(count - 1) * size :],
            count - 1,
        )
        # Together the pages are every machine once.
        assert sorted(r.machine for r in pages) == sorted(r.machine for r in rows)
        assert len(pages) == len(rows)
        if order == "machine":
            assert [r.machine for r in pages] == sorted(r.machine for r in rows)
            continue
        bad = BADNESS[order]
        # Worst first: the first page (the default view) is the top N.
        top = pages[:size]
        rest = pages[size:]
        if top and rest:
            assert min(bad(r) for r in top) >= max(bad(r) for r in rest)
        assert [bad(r) for r in pages] == sorted((bad(r) for r in pages), reverse=True)


def test_hostile_order_and_page_values() -> None:
    rows = [
        aq.MachineReliability(f"M-{i:03d}", i % 3, 60.0 * i, 3_600.0, None, None) for i in range(60)
    ]
    default, _ = analytics.reliability_page(rows, "mtbf", 0)
    for order in (None, "DROP TABLE", 3, ["mtbf"]):
        assert analytics.reliability_page(rows, order, 0) == (default, 0)
    for page in (None, -1, "2", [1], 1.5):
        assert analytics.reliability_page(rows, "mtbf", page) == (default, 0)
    # Past the last page: the last page.
    last = (60 - 1) // analytics.RELIABILITY_PAGE
    assert analytics.reliability_page(rows, "mtbf", 10**9)[1] == last
    assert analytics.reliability_page([], "mtbf", 5) == ([], 0)
    assert analytics.reliability_pager(1, 25, 500, "en") == "26–50 of 500"
    assert analytics.reliability_pager(0, 0, 0, "en") == ""


# -- the page's callback over HTTP, against a replayed history ---------------------------------


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


def _call(client: Any, order: Any, trigger: str, page: Any) -> dict[str, Any]:
    """The reliability callback as dash-renderer sends it, `trigger` the input that changed."""
    outs = [("reliability", "children"), ("rel-page", "data"), ("rel-pager", "children")]
    inputs = [
        ("range", "start_date", FIRST.isoformat()),
        ("range", "end_date", (FIRST + timedelta(days=DAYS - 1)).isoformat()),
        ("scope", "value", "plant"),
        ("shift", "value", ""),
        ("rel-sort", "value", order),
        ("rel-prev", "n_clicks", 1),
        ("rel-next", "n_clicks", 1),
    ]
    body = {
        "output": ".." + "...".join(f"an-{i}.{p}" for i, p in outs) + "..",
        "outputs": [{"id": f"an-{i}", "property": p} for i, p in outs],
        "inputs": [{"id": f"an-{i}", "property": p, "value": v} for i, p, v in inputs],
        "state": [
            {"id": "an-lang", "property": "data", "value": "en"},
            {"id": "an-rel-page", "property": "data", "value": page},
        ],
        "changedPropIds": [f"an-{trigger}"],
    }
    answer = client.post("/_dash-update-component", json=body)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    response: dict[str, Any] = answer.get_json()["response"]
    return response


def test_page_buttons_and_order(
    replayed: Database, db_url: str, plant: PlantConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 3
    monkeypatch.setattr(analytics, "RELIABILITY_PAGE", size)
    f = aq.Filters(FIRST, FIRST + timedelta(days=DAYS), Scope("plant"), None)
    whole = aq.reliability(replayed, f, plant.tz)
    n = len(whole)
    assert n == len(plant.machines) > 2 * size and any(r.failures for r in whole)
    with psycopg.connect(db_url, autocommit=True) as conn:
        users.add_user(conn, "boss1", "manager", "manager-password")
    app = create_app(Settings(auth_session_secret="s" * 40), plant, db_url)
    try:
        client = app.server.test_client()
        sign_in(client, "boss1", "manager-password", "/analytics")

        def shown(response: dict[str, Any]) -> list[str]:
            table = json.dumps(response["an-reliability"])
            return re.findall(r"/machine\?machine=([^&]+)&", table)

        worst = sorted(whole, key=lambda r: (r.mtbf_s is None, r.mtbf_s or 0.0))
        first = _call(client, "mtbf", "scope.value", 0)
        assert shown(first) == [r.machine for r in worst[:size]]
        assert first["an-rel-page"]["data"] == 0
        assert first["an-rel-pager"]["children"] == f"1–{size} of {n}"
        # Next, next, ... to the end: the pages together are the whole table, each once.
        seen, page = shown(first), 0
        while (page + 1) * size < n:
            answer = _call(client, "mtbf", "rel-next.n_clicks", page)
            page += 1
            assert answer["an-rel-page"]["data"] == page
            seen += shown(answer)
        assert sorted(seen) == sorted(plant.machines) and len(seen) == n
        # Past the end stays on the last page; back goes one page up.
        assert shown(_call(client, "mtbf", "rel-next.n_clicks", page)) == seen[page * size :]
        assert shown(_call(client, "mtbf", "rel-prev.n_clicks", 1)) == seen[:size]
        # A new order or filter starts at its first page.
        by_failures = sorted(whole, key=lambda r: (-r.failures, -r.failure_s, r.machine))
        answer = _call(client, "failures", "rel-sort.value", 2)
        assert shown(answer) == [r.machine for r in by_failures[:size]]
        assert answer["an-rel-page"]["data"] == 0
        # Each machine links to the range's last day on the machine page.
        last_day = FIRST + timedelta(days=DAYS - 1)
        assert f"&date={last_day.isoformat()}" in json.dumps(first["an-reliability"])
        # The CSV is every machine, not a page.
        _, text = analytics.export("reliability", replayed, f, plant.tz)
        assert len(text.splitlines()) == n + 1
    finally:
        context.of(app.server).db.close()


# -- in a real chromium -------------------------------------------------------------------------


@pytest.mark.browser
def test_reliability_pages_in_browser(
    app_url: str,  # noqa: F811  (the fixture)
    replayed: Database,
    plant: PlantConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    size = 4  # the server runs in this process: a small page shows paging on a small plant
    monkeypatch.setattr(analytics, "RELIABILITY_PAGE", size)
    n = len(plant.machines)
    rows = "document.querySelectorAll('#an-reliability tbody tr')"
    pager = "(document.querySelector('#an-rel-pager')||{}).textContent"
    b = Chromium(tmp_path)
    try:
        b.goto(f"{app_url}/analytics?lang=en&{QUERY}")
        b.wait_for("location.pathname === '/login' && !!document.querySelector('#password')")
        for sel, value in {"#username": "boss", "#password": PASSWORD}.items():
            b.eval(f"document.querySelector({json.dumps(sel)}).value = {json.dumps(value)}")
        b.eval("document.querySelector('button[type=submit]').click()")
        b.wait_for(f"{pager} === {json.dumps(f'1–{size} of {n}')}")
        assert b.eval(f"{rows}.length") == size
        first = b.eval(f"Array.from({rows}).map(r => r.children[0].textContent)")
        b.eval("document.querySelector('#an-rel-next').click()")
        b.wait_for(f"{pager} === {json.dumps(f'{size + 1}–{2 * size} of {n}')}")
        second = b.eval(f"Array.from({rows}).map(r => r.children[0].textContent)")
        assert len(second) == size and not set(first) & set(second)
        # Another order starts at its first page.
        b.eval("dash_clientside.set_props('an-rel-sort', {value: 'machine'})")
        b.wait_for(f"{pager} === {json.dumps(f'1–{size} of {n}')}")
        by_machine = b.eval(f"Array.from({rows}).map(r => r.children[0].textContent)")
        ids = sorted(plant.machines)[:size]
        assert [text.split(" ")[0] for text in by_machine] == ids
        assert _clipped(b) == []
        # The card for docs/analytics.md (its head: the order, the CSV; the pager under it).
        b.eval("document.querySelector('#an-reliability').closest('section').scrollIntoView()")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        b.screenshot(SCREENSHOTS / "analytics-reliability-en.png")
        # The same card in Chinese, and both languages on a 1280x800 screen: nothing clipped.
        for lang, width, height in (("zh", 1920, 1080), ("en", 1280, 800), ("zh", 1280, 800)):
            b.page(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
            b.goto(f"{app_url}/analytics?lang={lang}&{QUERY}")
            b.wait_for(f"{rows}.length === {size} && !!document.querySelector('#an-rel-pager')")
            b.eval("document.querySelector('#an-reliability').closest('section').scrollIntoView()")
            time.sleep(0.5)  # plotly redraws at the new width
            assert _clipped(b) == []
            b.screenshot(SCREENSHOTS / f"analytics-reliability-{lang}-{width}x{height}.png")
    finally:
        b.close()
