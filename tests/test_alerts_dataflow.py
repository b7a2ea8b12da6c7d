"""Alerts through the real dataflow into a real PostgreSQL: a replayed breakdown opens,
escalates and resolves one alert; an acknowledgement in the log stops another's escalation;
replaying again (or reprocessing the whole log) adds nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from mesflow.alert_rules import load_alerts_config
from mesflow.plant import PlantConfig
from streams.hour_clock import to_us
from streams.replay import replay_file
from streams.runner import run_flow
from tests.helpers import write_jsonl

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=TZ)

RULES = """\
people:
  zhang: {display: 张伟, email: zhang@plant.example}
  li:    {display: Li Na, email: li@plant.example, language: en}
  wang:  {display: 王强, email: wang@plant.example}
channels:
  it-hook: {type: webhook, url: "https://it.example/hook"}
rules:
  - name: down
    kind: machine_down
    scope: {line: IM}
    severity: critical
    levels:
      - {after_min: 5,  people: [zhang], channels: [it-hook]}
      - {after_min: 15, people: [li]}
      - {after_min: 30, people: [wang], channels: [it-hook]}
"""


def ts(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def breakdown_events() -> list[dict[str, Any]]:
    """IM-01 down 08:10-08:50; IM-03 down 09:00-09:50, acknowledged at 09:20; IM-02 runs
    and counts every minute (the plant's clock), until 10:30."""
    ev: list[dict[str, Any]] = []
    for m in ("IM-01", "IM-02", "IM-03"):
        ev.append({"type": "state", "machine": m, "ts": ts(0), "state": "running"})
    for minute in range(1, 151):
        ev.append({"type": "count", "machine": "IM-02", "ts": ts(minute), "good": 1,
                   "id": f"c{minute}"})  # fmt: skip
        if minute == 10:
            ev.append({"type": "state", "machine": "IM-01", "ts": ts(10), "state": "down"})
        if minute == 50:
            ev.append({"type": "state", "machine": "IM-01", "ts": ts(50), "state": "running"})
        if minute == 60:
            ev.append({"type": "state", "machine": "IM-03", "ts": ts(60), "state": "down"})
        if minute == 80:
            alert_id = f"down:machine:IM-03:{to_us(T0 + timedelta(minutes=60))}"
            ev.append({"type": "alert_ack", "ts": ts(80), "alert_id": alert_id, "by": "li",
                       "via": "link"})  # fmt: skip
        if minute == 110:
            ev.append({"type": "state", "machine": "IM-03", "ts": ts(110), "state": "running"})
    return ev


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def everything(url: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "alert": rows(url, "SELECT alert_id, level, status, opened_at, escalated_at, "
                      "acknowledged_at, acknowledged_by, resolved_at, facts, updated_at "
                      "FROM alert ORDER BY alert_id"),
        "alert_step": rows(url, "SELECT * FROM alert_step ORDER BY alert_id, at, step"),
        "alert_delivery": rows(url, "SELECT dedupe, status, created_at FROM alert_delivery "
                               "ORDER BY dedupe"),
    }  # fmt: skip


@pytest.fixture
def alerts_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "alerts.yaml"
    path.write_text(RULES, encoding="utf-8")
    monkeypatch.setenv("MESFLOW_ALERTS_CONFIG", str(path))
    return path


def test_replayed_breakdown_escalates_resolves_and_replays_add_nothing(
    db_url: str, plant: PlantConfig, tmp_path: Path, alerts_file: Path
) -> None:
    events = write_jsonl(tmp_path / "breakdown.jsonl", breakdown_events())
    summary = replay_file(events, plant, db_url, tmp_path / "rec", progress=False)
    assert summary.dead_lettered == 0

    at = {m: T0 + timedelta(minutes=m) for m in (15, 25, 40, 50, 65, 75, 80, 110)}
    down1 = f"down:machine:IM-01:{to_us(T0 + timedelta(minutes=10))}"
    down3 = f"down:machine:IM-03:{to_us(T0 + timedelta(minutes=60))}"
    history = rows(db_url, "SELECT alert_id, step, level, at, people, channels "
                   "FROM v_alert_history ORDER BY alert_id, at, step")  # fmt: skip
    assert history == [
        (down1, "opened", 0, at[15], ["zhang"], ["it-hook"]),
        (down1, "escalated", 1, at[25], ["li"], []),
        (down1, "escalated", 2, at[40], ["wang"], ["it-hook"]),
        (down1, "resolved", 2, at[50], ["zhang", "li", "wang"], ["it-hook"]),
        # IM-03: acknowledged at 09:20, so no level 2 at 09:30; still resolved at 09:50.
        (down3, "opened", 0, at[65], ["zhang"], ["it-hook"]),
        (down3, "escalated", 1, at[75], ["li"], []),
        (down3, "acknowledged", 1, at[80], ["zhang", "li"], ["it-hook"]),
        (down3, "resolved", 1, at[110], ["zhang", "li"], ["it-hook"]),
    ]
    alerts = rows(db_url, "SELECT alert_id, machine, line, severity, status, level, "
                  "acknowledged_by, duration_s FROM v_alerts ORDER BY alert_id")  # fmt: skip
    assert alerts == [
        (down1, "IM-01", "IM", "critical", "resolved", 2, None, 2400.0),
        (down3, "IM-03", "IM", "critical", "resolved", 1, "li", 3000.0),
    ]
    # Every step's deliveries are in the outbox, and all stale: this is old history.
    deliveries = rows(db_url, "SELECT status, count(*) FROM alert_delivery GROUP BY status")
    assert deliveries == [("stale", 18)]  # one per person with e-mail and per channel

    before = everything(db_url)
    # The same file again: nothing new in the log, nothing new anywhere.
    again = replay_file(events, plant, db_url, tmp_path / "rec", progress=False)
    assert again.new == 0
    assert everything(db_url) == before
    # The whole log processed again from scratch (no snapshot): same alerts, same ids,
    # no step or delivery added, no alert row rewritten with other values.
    end = rows(db_url, "SELECT max(seq) FROM ingest_log")[0][0]
    run_flow(plant, db_url, tmp_path / "fresh", 1.0, upto_seq=end)
    after = everything(db_url)
    assert after["alert_step"] == before["alert_step"]
    assert after["alert_delivery"] == before["alert_delivery"]
    assert [r[:9] for r in after["alert"]] == [r[:9] for r in before["alert"]]


def test_without_rules_no_alert_step(
    db_url: str, plant: PlantConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESFLOW_ALERTS_CONFIG", raising=False)
    events = write_jsonl(tmp_path / "breakdown.jsonl", breakdown_events())
    replay_file(events, plant, db_url, tmp_path / "rec", progress=False)
    assert rows(db_url, "SELECT count(*) FROM alert") == [(0,)]
    # The acknowledgement is a valid event all the same (no dead letter).
    assert rows(db_url, "SELECT count(*) FROM dead_letter") == [(0,)]


def test_example_alerts_file_loads_for_the_demo_plant(plant: PlantConfig) -> None:
    config = load_alerts_config(Path("config/alerts.example.yaml"), plant, environ={})
    assert {r.kind for r in config.rules} == {
        "machine_down", "no_reason", "kpi_below", "scrap_rate", "silent", "order_at_risk",
        "first_article", "patrol_missed",
    }  # fmt: skip
    # No robot variables in the demo: those channels are left out, e-mail still goes.
    assert config.channels == {} and set(config.disabled) == {
        "im-wecom", "cnc-wecom", "mgmt-ding", "ops-feishu"
    }  # fmt: skip


def test_live_a_down_silent_machine_opens_and_escalates_by_the_wall_clock(
    db_url: str, plant: PlantConfig, tmp_path: Path, alerts_file: Path
) -> None:
    """Live, nothing arrives after IM-05 went down: the wall clock still moves event time,
    so the alert opens and escalates while the plant says nothing at all."""
    from mesflow.ingest_log import append, record_for

    now = datetime.now(TZ).replace(microsecond=0)
    went_down = now - timedelta(minutes=15, seconds=20)  # level 1 (15 min) is due 20 s ago
    events = [
        {"type": "state", "machine": "IM-05", "ts": (went_down - timedelta(minutes=1)).isoformat(),
         "state": "running"},
        {"type": "state", "machine": "IM-05", "ts": went_down.isoformat(), "state": "down"},
    ]  # fmt: skip
    with psycopg.connect(db_url) as conn:
        append(conn, [record_for("test", e) for e in events])
    stop = threading.Event()
    flow = threading.Thread(
        target=run_flow,
        args=(plant, db_url, tmp_path / "recovery", 1.0),
        kwargs={"stop": stop},
        daemon=True,
    )
    flow.start()
    try:
        deadline = time.monotonic() + 40
        steps: list[tuple[Any, ...]] = []
        while time.monotonic() < deadline:
            steps = rows(db_url, "SELECT step, level FROM v_alert_history ORDER BY at")
            if len(steps) >= 2:
                break
            time.sleep(0.5)
        assert steps == [("opened", 0), ("escalated", 1)]
        alert_id = f"down:machine:IM-05:{to_us(went_down)}"
        assert rows(db_url, "SELECT alert_id, status FROM v_alerts") == [(alert_id, "open")]
        # Fresh steps (not history): their deliveries are due, not stale.
        assert {s for (s,) in rows(db_url, "SELECT status FROM alert_delivery")} == {"pending"}
    finally:
        stop.set()
        flow.join(timeout=30)


def test_mesflow_run_dataflow_with_the_demo_rules(db_url: str, tmp_path: Path) -> None:
    """`mesflow run dataflow` as the demo starts it: the example rules, no robot variables
    (those channels are left out, said once at start), e-mail recipients still there."""
    from mesflow.ingest_log import append, record_for

    went_down = datetime.now(TZ).replace(microsecond=0) - timedelta(minutes=6)
    with psycopg.connect(db_url) as conn:
        append(conn, [record_for("test", {"type": "state", "machine": "IM-01",
                                          "ts": went_down.isoformat(), "state": "down"})])  # fmt: skip
    robots = ("MESFLOW_WECOM_IM", "MESFLOW_WECOM_CNC", "MESFLOW_DING_MGMT", "MESFLOW_FEISHU_OPS")
    env = {k: v for k, v in os.environ.items() if k not in robots}
    env |= {"MESFLOW_DATABASE_URL": db_url, "MESFLOW_DATA_DIR": str(tmp_path / "var"),
            "MESFLOW_ALERTS_CONFIG": "config/alerts.example.yaml"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesflow.cli", "run", "dataflow"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        opened: list[tuple[Any, ...]] = []
        while time.monotonic() < deadline and not opened:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            opened = rows(db_url, "SELECT rule, step, people, channels FROM v_alert_history")
            time.sleep(0.5)
        assert opened == [("im-down", "opened", ["zhang"], [])]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert "alerts: channel im-wecom left out (channels_optional)" in out
    assert "MESFLOW_WECOM_IM" in out and proc.returncode == 0, out
