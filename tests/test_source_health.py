"""Source health (issue 11 item 5): the reporter's rows in PostgreSQL, an MQTT collector's
connection seen through them, and the sources page that shows them.

- the reporter upserts, survives a database restart without stopping (or raising into) the
  collector, and its rows go stale when it stops reporting;
- an MQTT collector against a real broker shows connected with messages/s > 0 while a
  machine publishes, then disconnected when the broker stops;
- /sources refuses anonymous users and renders the rows for a manager.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collectors.mqtt_json import MqttJsonCollector
from dashboards import context
from dashboards import source_queries as sq
from dashboards.app import create_app
from dashboards.pages import sources
from mesflow import users
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from mesflow.source_health import EndpointHealth, HealthTracker, SourceHealthReporter
from tests.conftest import require
from tests.helpers import OwnPostgres, RestartableBroker, wait_until
from tests.test_dashboard import Chromium, _sign_in_in_browser, andon_url, sign_in
from tests.test_guarantees_collector import Publisher

__all__ = ["andon_url"]  # fixture


def _row(db_url: str, kind: str, endpoint: str | None = None) -> dict[str, Any] | None:
    with psycopg.connect(db_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        q = "SELECT * FROM v_source_health WHERE kind = %s"
        args: list[Any] = [kind]
        if endpoint is not None:
            q += " AND endpoint = %s"
            args.append(endpoint)
        return cur.execute(q, args).fetchone()


def test_tracker_keeps_since_and_last_message() -> None:
    tr = HealthTracker("mqtt", "c1")
    t0 = datetime(2026, 11, 30, tzinfo=UTC)
    [a] = tr.rows([EndpointHealth("mqtt://b", True, 0)], t0)
    assert a.since == t0 and a.last_message_at is None
    [b] = tr.rows([EndpointHealth("mqtt://b", True, 5)], t0 + timedelta(seconds=5))
    assert b.since == t0 and b.last_message_at == t0 + timedelta(seconds=5)
    [c] = tr.rows([EndpointHealth("mqtt://b", False, 5, 1, "refused")], t0 + timedelta(seconds=9))
    assert c.since == t0 + timedelta(seconds=9) and not c.connected
    assert c.last_message_at == t0 + timedelta(seconds=5)
    assert c.last_error == "refused" and c.last_error_at == t0 + timedelta(seconds=9)


def test_reporter_upserts_and_survives_a_database_restart(own_pg: OwnPostgres) -> None:
    counters = {"n": 0, "connected": True}
    lock = threading.Lock()

    def snapshot() -> list[EndpointHealth]:
        with lock:
            return [
                EndpointHealth("opc.tcp://press:4840", bool(counters["connected"]), counters["n"])
            ]

    rep = SourceHealthReporter(own_pg.url, "opcua", "host-a", snapshot, interval_s=0.2)
    rep.start()
    try:
        for _ in range(10):  # the "collector" keeps counting at 50 messages per 0.1 s
            with lock:
                counters["n"] += 50
            time.sleep(0.1)
        wait_until(lambda: (_row(own_pg.url, "opcua") or {}).get("messages_per_s") is not None)
        row = _row(own_pg.url, "opcua")
        assert row is not None and row["connected"] and not row["stale"]
        assert row["instance"] == "host-a" and row["endpoint"] == "opc.tcp://press:4840"
        assert row["messages_per_s"] > 0 and row["last_message_at"] is not None

        own_pg.restart(down_s=1.5)  # crash: the reporter's connection dies under it
        with lock:
            counters["n"] += 7
            counters["connected"] = False
        assert rep._thread.is_alive()  # never raised out of its loop
        wait_until(lambda: not (_row(own_pg.url, "opcua") or {"connected": True})["connected"],
                   timeout=20)  # fmt: skip
        row = _row(own_pg.url, "opcua")
        assert row is not None and row["messages_total"] == counters["n"]
        assert rep.failures >= 1 and rep._thread.is_alive()
    finally:
        rep.stop()
    # Not reporting any more: after 3 intervals the row is stale.
    wait_until(lambda: bool((_row(own_pg.url, "opcua") or {}).get("stale")), timeout=5)


def test_reporter_never_raises_without_a_database(tmp_path: Path) -> None:
    rep = SourceHealthReporter(
        f"postgresql://nobody@/nodb?host={tmp_path}", "mqtt", "x", lambda: [], interval_s=0.05
    )
    assert rep.report_once() is False and rep.failures == 1

    def broken() -> list[EndpointHealth]:
        raise RuntimeError("a bug in a collector's snapshot")

    rep2 = SourceHealthReporter("postgresql://nobody@/nodb", "mqtt", "x", broken)
    assert rep2.report_once() is False


def test_mqtt_collector_connected_rate_then_disconnected(
    broker: RestartableBroker, db_url: str, plant: PlantConfig
) -> None:
    collector = MqttJsonCollector(plant, broker.url, db_url, client_id="health-test")
    rep = SourceHealthReporter(db_url, "mqtt", "health-test", collector.health, interval_s=0.5)
    collector.start()
    rep.start()
    pub = Publisher(broker, plant, "IM-01")
    try:
        assert collector.connected.wait(15)
        rates: list[float] = []
        deadline = time.monotonic() + 20
        k = 0
        while time.monotonic() < deadline:
            pub.send([f"h-{k}-{i}" for i in range(20)])
            k += 1
            row = _row(db_url, "mqtt")
            if row and row["connected"] and (row["messages_per_s"] or 0) > 0:
                rates.append(row["messages_per_s"])
                if len(rates) >= 2:
                    break
        assert rates and min(rates) > 0, _row(db_url, "mqtt")
        row = _row(db_url, "mqtt")
        assert row is not None and row["endpoint"] == collector.url
        assert row["last_message_at"] is not None and row["messages_total"] > 0
        pub.close()
        broker.stop()
        wait_until(lambda: not (_row(db_url, "mqtt") or {"connected": True})["connected"], 15)
        row = _row(db_url, "mqtt")
        assert row is not None and not row["stale"]  # still reporting: it knows it is cut off
        # Its reconnect attempts fail: counted, and the last one says why.
        wait_until(lambda: ((_row(db_url, "mqtt") or {}).get("last_error") or "") != "", 20)
        row = _row(db_url, "mqtt")
        assert row is not None and row["errors_total"] >= 1
        assert "cannot connect" in row["last_error"], row["last_error"]
        assert rep._thread.is_alive() and not collector.failed.is_set()
    finally:
        rep.stop()
        collector.stop()


def _seed_page(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute(
            """INSERT INTO source_health (kind, instance, endpoint, connected, since,
                   last_message_at, messages_total, errors_total, last_error, last_error_at,
                   report_interval_s, updated_at, prev_messages_total, prev_updated_at)
               VALUES ('mqtt', 'col-1', 'mqtt://broker:1883', true, now() - interval '2 hours',
                       now() - interval '1 second', 1200, 0, NULL, NULL, 5, now(), 1100,
                       now() - interval '5 seconds'),
                      ('opcua', 'host-a', 'opc.tcp://im-03:4840', false, now() - interval '3 minutes',
                       now() - interval '3 minutes', 40, 4, 'BadUserAccessDenied (IM-03)',
                       now() - interval '10 seconds', 5, now(), 40, now() - interval '5 seconds'),
                      ('sparkplug', 'mesflow', 'mqtt://edge:1883', true, now() - interval '1 day',
                       now() - interval '1 hour', 9, 0, NULL, NULL, 5, now() - interval '1 minute',
                       NULL, NULL)"""
        )
        conn.execute(
            """INSERT INTO ingest_log (source, payload, machine, received_at)
               VALUES ('mqtt:plant/a/IM-01/count', '{}', 'IM-01', now() - interval '5 seconds'),
                      ('opcua:opc.tcp://im-02', '{}', 'IM-02', now() - interval '2 hours')"""
        )


def test_sources_page_refuses_anonymous_and_renders_for_a_manager(
    db_url: str, plant: PlantConfig
) -> None:
    _seed_page(db_url)
    with psycopg.connect(db_url) as conn:
        users.add_user(conn, "mgr1", "manager", "manager-password-123")
        users.add_user(conn, "view1", "viewer", "viewer-password-123")
    app = create_app(Settings(auth_session_secret="s" * 40), plant, db_url)
    body = {
        "output": "sources-body.children",
        "outputs": {"id": "sources-body", "property": "children"},
        "inputs": [{"id": "sources-tick", "property": "n_intervals", "value": 1}],
        "state": [{"id": "sources-lang", "property": "data", "value": "en"}],
        "changedPropIds": [],
    }
    try:
        anonymous = app.server.test_client()
        got = anonymous.get("/sources")
        assert got.status_code in (302, 303, 401)
        assert anonymous.post("/_dash-update-component", json=body).status_code in (401, 403)
        viewer = app.server.test_client()
        sign_in(viewer, "view1", "viewer-password-123")
        assert viewer.get("/sources").status_code == 403
        assert viewer.post("/_dash-update-component", json=body).status_code == 403
        mgr = app.server.test_client()
        sign_in(mgr, "mgr1", "manager-password-123")
        assert mgr.get("/sources?lang=en").status_code == 200
        answer = mgr.post("/_dash-update-component", json=body)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        text = json.dumps(answer.get_json(), ensure_ascii=False)  # the app escapes "/"
        for needle in ("source-row source-connected", "source-row source-disconnected",
                       "source-row source-stale", "BadUserAccessDenied (IM-03)", "20.0",
                       "opc.tcp://im-03:4840", "machine-input-row silent", "never heard from"):  # fmt: skip
            assert needle in text, needle
        # IM-01 was heard 5 s ago: not silent; IM-02 two hours ago: silent.
        with app.server.app_context():
            srcs, machines, now = context.of(app.server).db.run(sq.read_all)
        by = {m.machine: m for m in machines}
        assert not sq.is_silent(by["IM-01"], 600) and sq.is_silent(by["IM-02"], 600)
        assert by["IM-01"].source == "mqtt:plant/a/IM-01/count"
        assert [sq.status(r) for r in srcs] == ["connected", "disconnected", "stale"]
        zh = str(sources.render(srcs, machines, now, plant.tz, 600, "zh"))
        assert "已连接" in zh and "已断开" in zh and "无上报" in zh and "超过 10 分钟无数据" in zh
    finally:
        context.of(app.server).db.close()


def test_ago() -> None:
    assert sq.ago(None, "en") == "—"
    assert sq.ago(12.7, "en") == "12 s ago" and sq.ago(12, "zh") == "12 秒前"
    assert sq.ago(3 * 3600 + 5, "en") == "3 h ago" and sq.ago(125, "zh") == "2 分钟前"


def test_a_large_plant_shows_its_silent_machines_first() -> None:
    now = datetime(2026, 11, 20, 8, tzinfo=UTC)

    def machine(i: int, silent_s: float | None) -> sq.MachineInput:
        heard = None if silent_s is None else now - timedelta(seconds=silent_s)
        return sq.MachineInput(f"M-{i:03d}", "L", heard, "mqtt:x", heard, silent_s)

    quiet = {7: 900.0, 60: 3600.0, 499: None}  # two silent, one never heard from
    plant = [machine(i, quiet.get(i, 5.0)) for i in range(500)]
    shown, silent = sources.machines_shown(plant, 600)
    assert silent == 3 and len(shown) == sources.MACHINES_SHOWN
    assert [m.machine for m in shown[:4]] == ["M-007", "M-060", "M-499", "M-000"]
    assert [m.machine for m in shown[3:]] == [f"M-{i:03d}" for i in range(50) if i != 7][:47]
    page = json.dumps(
        sources.render([], plant, now, UTC, 600, "en"), default=str, ensure_ascii=False
    )
    assert "50 of 500 machines shown: the silent ones first (3)" in page
    assert page.count("machine-input-row") == 50 and "M-499" in page and "M-100" not in page
    zh = str(sources.render([], plant, now, UTC, 600, "zh"))
    assert "显示 500 台中的 50 台" in zh and "（3 台）" in zh
    # A plant that fits keeps its order and says nothing more.
    small = plant[:12]
    assert sources.machines_shown(small, 600) == (small, 1)
    assert "machines shown" not in str(sources.render([], small, now, UTC, 600, "en"))


def test_example_collector_from_the_docs(db_url: str, tmp_path: Path) -> None:
    """docs/collectors.md's skeleton runs: good lines land as events, a bad line is a dead
    letter (not a crash), the file is moved only after the commit, health is reported."""
    from tests.example_collector import CsvFolderCollector

    folder = tmp_path / "drop"
    folder.mkdir()
    c = CsvFolderCollector(folder, db_url, poll_s=0.1)
    c.start()
    try:
        (folder / "a.csv").write_text(
            "IM-01,2026-11-30T08:00:00+08:00,3,1\nIM-01,oops\n", encoding="utf-8"
        )
        wait_until(lambda: (folder / "done" / "a.csv").exists(), 15)
        with psycopg.connect(db_url) as conn:
            rows = conn.execute(
                "SELECT machine, error FROM ingest_log WHERE source = 'csv:a.csv' ORDER BY seq"
            ).fetchall()
        assert rows == [("IM-01", None), (None, "malformed: expected machine,ts,good,scrap")]
        wait_until(lambda: (_row(db_url, "other") or {}).get("messages_total") == 2, 10)
        row = _row(db_url, "other")
        assert row is not None and row["connected"] and row["errors_total"] == 1
        # The same file again stores nothing twice (the ids dedupe).
        (folder / "b.csv").write_text("IM-01,2026-11-30T08:00:00+08:00,3,1\n", encoding="utf-8")
        wait_until(lambda: (folder / "done" / "b.csv").exists(), 15)
        with psycopg.connect(db_url) as conn:
            n = conn.execute("SELECT count(*) FROM ingest_log WHERE source LIKE 'csv:%'").fetchone()
        assert n == (2,)
    finally:
        c.stop()
    row = _row(db_url, "other")
    assert row is not None and not row["connected"]


def test_the_docs_show_the_example_collector_as_it_is() -> None:
    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "collectors.md").read_text(encoding="utf-8")
    code = (root / "tests" / "example_collector.py").read_text(encoding="utf-8").rstrip("\n")
    assert f"```python\n{code}\n```" in doc, "docs/collectors.md: paste tests/example_collector.py"


@pytest.mark.browser
def test_sources_page_in_browser(db_url: str, andon_url: str, tmp_path: Path) -> None:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    _seed_page(db_url)
    shots = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
    browser = Chromium(tmp_path)
    try:
        _sign_in_in_browser(browser, f"{andon_url}/sources?lang=en")
        browser.wait_for("location.pathname === '/sources'")
        browser.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        browser.goto(f"{andon_url}/sources?lang=en")
        browser.wait_for("!!document.querySelector('.source-row.source-stale')")
        text: Any = browser.eval("document.querySelector('.sources-body').innerText")
        assert "disconnected" in text and "never heard from" in text, text
        time.sleep(0.5)
        assert not browser.eval("document.documentElement.scrollWidth > window.innerWidth")
        browser.screenshot(shots / "sources-en-1280x800.png")
        browser.goto(f"{andon_url}/sources?lang=zh")
        browser.wait_for("!!document.querySelector('.source-row.source-stale')")
        text = browser.eval("document.querySelector('.sources-body').innerText")
        assert "已断开" in text and "从未收到" in text, text
        time.sleep(0.5)
        assert not browser.eval("document.documentElement.scrollWidth > window.innerWidth")
        browser.screenshot(shots / "sources-zh-1280x800.png")
    finally:
        browser.close()


def test_sparkplug_health_per_edge_node(
    broker: RestartableBroker, db_url: str, tmp_path: Path
) -> None:
    """One row for the broker and one per edge node: connected while born, not after its
    NDEATH (the Will, when the node vanishes)."""
    from collectors.sparkplug.collector import SparkplugCollector
    from tests.conftest import EXAMPLE_CONFIG
    from tests.sparkplug_edge import PRESS_GW, PRESS_METRICS, EdgeNode, sparkplug_plant

    c = SparkplugCollector(sparkplug_plant(EXAMPLE_CONFIG), broker.url, db_url, host_id="hh")
    c.start()
    try:
        assert c.connected.wait(15)
        edge = EdgeNode(broker.host, broker.port, PRESS_GW, devices={"IM-01": PRESS_METRICS},
                        initial={("IM-01", "Machine/Mode"): 4}, bdseq=0)  # fmt: skip

        def edge_row() -> EndpointHealth | None:
            rows = [h for h in c.health() if h.endpoint != c.url]
            return rows[0] if rows else None

        edge.connect()
        wait_until(lambda: (r := edge_row()) is not None and r.connected, 15)
        row = edge_row()
        assert row is not None and row.messages_total >= 1 and row.endpoint.startswith(c.url)
        assert c.health()[0].connected and c.health()[0].endpoint == c.url
        edge.die()
        wait_until(lambda: (r := edge_row()) is not None and not r.connected, 15)
        # Through the reporter into the table: both rows.
        rep = SourceHealthReporter(db_url, "sparkplug", "hh", c.health)
        assert rep.report_once()
        with psycopg.connect(db_url) as conn:
            got = conn.execute(
                "SELECT connected FROM source_health WHERE kind = 'sparkplug' ORDER BY endpoint"
            ).fetchall()
        assert got == [(True,), (False,)]
    finally:
        c.stop()


def test_mesflow_run_collector_mqtt_reports_its_health(
    broker: RestartableBroker, db_url: str, tmp_path: Path
) -> None:
    """The CLI wires the reporter: a row while it runs, disconnected after SIGTERM."""
    from tests.helpers import Mesflow, mesflow_env

    env = mesflow_env(db_url, tmp_path / "var", broker.url, MESFLOW_MQTT_CLIENT_ID="cli-health")
    proc = Mesflow("run", "collector-mqtt", env=env, log=tmp_path / "collector.log")
    try:
        wait_until(lambda: bool((_row(db_url, "mqtt") or {}).get("connected")), 30)
        row = _row(db_url, "mqtt")
        assert row is not None and row["instance"] == "cli-health"
        assert row["endpoint"] == broker.url  # no password in this URL to redact
    finally:
        assert proc.terminate() == 0, proc.output()
    row = _row(db_url, "mqtt")
    assert row is not None and not row["connected"], proc.output()
