"""End to end against a real broker and a real PostgreSQL:
MQTT -> collector -> ingest log -> dataflow -> result tables; replay; crash and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collectors.mqtt_json import MqttJsonCollector
from collectors.topics import machine_topic
from mesflow.plant import PlantConfig
from mesflow.services import Broker
from streams.replay import replay_file
from streams.runner import run_flow
from tests.helpers import random_events, table_snapshot, wait_until, write_jsonl


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def _publisher(broker: Broker) -> mqtt.Client:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-pub")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    return pub


def test_mqtt_to_tables(broker: Broker, db_url: str, plant: PlantConfig, tmp_path: Path) -> None:
    collector = MqttJsonCollector(plant, broker.url, db_url, client_id="test-collector")
    collector.start()
    assert collector.connected.wait(10)
    pub = _publisher(broker)
    try:

        def topic(machine: str, kind: str) -> str:
            line = plant.line_of_machine[machine]
            return machine_topic(plant.plant.site, line.area, line.id, machine, kind)

        messages = [
            # IM-01 speaks EUROMAP 77 codes: "1" is automatic (running), "5" alarm (down).
            (
                topic("IM-01", "state"),
                {"ts": "2026-11-20T08:00:00+08:00", "state": "1", "id": "a1"},
            ),
            (topic("IM-01", "count"), {"ts": "2026-11-20T08:00:28+08:00", "good": 1, "id": "a2"}),
            (topic("IM-01", "count"), {"ts": "2026-11-20T08:00:56+08:00", "good": 1, "id": "a3"}),
            (
                topic("IM-01", "state"),
                {
                    "ts": "2026-11-20T08:10:00+08:00",
                    "state": "5",
                    "reason": "heater_fault",
                    "id": "a4",
                },
            ),
            # A redelivered duplicate (same id) is stored once.
            (topic("IM-01", "count"), {"ts": "2026-11-20T08:00:56+08:00", "good": 1, "id": "a3"}),
            (topic("IM-03", "state"), {"ts": "2026-11-20T08:00:00+08:00", "state": "running"}),
            (
                topic("IM-03", "report"),
                {"kind": "wo_start", "ts": "2026-11-20T08:00:01+08:00", "work_order": "WO-7"},
            ),
            (topic("IM-02", "state"), {"ts": "2026-11-20T08:00:00+08:00", "state": "99"}),
        ]
        for t, body in messages:
            pub.publish(t, json.dumps(body), qos=1).wait_for_publish(5)
        pub.publish(topic("IM-04", "count"), b"{not json", qos=1).wait_for_publish(5)
        pub.publish("mesflow/v1/suzhou/molding/IM", b"{}", qos=1).wait_for_publish(5)
        wait_until(lambda: collector.stats.received == 10, what="the collector to store all")
    finally:
        pub.loop_stop()
        collector.stop()
    assert collector.stats.duplicates == 1
    assert _count(db_url, "SELECT count(*) FROM ingest_log") == 9

    run_flow(
        plant,
        db_url,
        tmp_path / "rec",
        1.0,
        upto_seq=_count(db_url, "SELECT max(seq) FROM ingest_log"),
    )

    with psycopg.connect(db_url) as conn:
        status = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT machine, state, reason, work_order, good_total FROM machine_status"
            )
        }
        intervals = conn.execute(
            "SELECT state, duration_s, reason FROM machine_state_interval "
            "WHERE machine = 'IM-01' ORDER BY start_ts"
        ).fetchall()
        dead: dict[str, int] = dict(
            conn.execute("SELECT reason, count(*) FROM dead_letter GROUP BY reason").fetchall()
        )
    assert status["IM-01"] == ("down", "heater_fault", None, 2)
    assert status["IM-03"] == ("running", None, "WO-7", 0)
    assert intervals == [("running", 600.0, None), ("down", 0.0, "heater_fault")]
    assert dead == {"unmapped_state": 1, "malformed": 1, "bad_topic": 1}


def test_collector_does_not_ack_until_stored(
    broker: Broker, db_url: str, plant: PlantConfig, pg_server: str
) -> None:
    """Messages that arrive while the database is unreachable are stored once it is back.

    That nothing is acknowledged to the broker before its commit is proven from the
    broker's side in test_guarantees_collector.py (kill -9, then redelivery)."""
    bad_url = db_url.replace("dbname=", "dbname=missing_") if "dbname=" in db_url else db_url + "_x"
    collector = MqttJsonCollector(plant, broker.url, bad_url, client_id="test-collector-2")
    collector.start()
    assert collector.connected.wait(10)
    pub = _publisher(broker)
    line = plant.line_of_machine["IM-05"]
    t = machine_topic(plant.plant.site, line.area, line.id, "IM-05", "count")
    for i in range(20):
        pub.publish(
            t, json.dumps({"ts": "2026-11-20T08:00:00+08:00", "good": 1, "id": f"x{i}"}), qos=1
        ).wait_for_publish(5)
    time.sleep(1.0)
    assert _count(db_url, "SELECT count(*) FROM ingest_log") == 0
    collector.database_url = db_url  # the database "comes back"
    wait_until(lambda: collector.stats.received == 20, what="the backlog to be stored")
    pub.loop_stop()
    collector.stop()
    assert _count(db_url, "SELECT count(*) FROM ingest_log") == 20


def test_replay_twice_changes_nothing(db_url: str, plant: PlantConfig, tmp_path: Path) -> None:
    machines = ["IM-01", "IM-02", "CNC-01"]
    events = random_events(machines, 3000, seed=3)
    no_id = [{k: v for k, v in e.items() if k != "id"} for e in events[:50]]
    path = write_jsonl(tmp_path / "day.jsonl", events + no_id, extra_lines=["", "not json at all"])
    first = replay_file(path, plant, db_url, tmp_path / "rec", progress=False)
    snap1 = table_snapshot(db_url)
    assert first.read == 3051
    assert first.new == 3051
    assert first.dead_lettered > 0
    assert first.accepted + first.dead_lettered == 3051
    assert snap1["machine_state_interval"] and snap1["machine_hour"]

    second = replay_file(path, plant, db_url, tmp_path / "rec", progress=False)
    assert second.read == 3051 and second.new == 0
    assert table_snapshot(db_url) == snap1

    # Same figures as a fresh run in another database from another recovery store:
    # results depend on the events, not on where or how often they ran.
    assert "already in the log" in second.describe()


def test_replay_matches_tracker_totals(db_url: str, plant: PlantConfig, tmp_path: Path) -> None:
    """Hour buckets add up to the interval durations and to the counted parts."""
    events = random_events(["IM-01", "IM-02"], 2000, seed=5)
    path = write_jsonl(tmp_path / "e.jsonl", events)
    replay_file(path, plant, db_url, tmp_path / "rec", progress=False)
    with psycopg.connect(db_url) as conn:
        for machine in ("IM-01", "IM-02"):
            hour_time = conn.execute(
                "SELECT sum(running_s + idle_s + down_s + setup_s + planned_stop_s + offline_s) "
                "FROM machine_hour WHERE machine = %s",
                (machine,),
            ).fetchone()
            span = conn.execute(
                "SELECT EXTRACT(EPOCH FROM (s.last_event_ts - min(i.start_ts))) "
                "FROM machine_state_interval i JOIN machine_status s USING (machine) "
                "WHERE machine = %s GROUP BY s.last_event_ts",
                (machine,),
            ).fetchone()
            parts = conn.execute(
                "SELECT sum(good), sum(scrap) FROM machine_hour WHERE machine = %s", (machine,)
            ).fetchone()
            totals = conn.execute(
                "SELECT good_total, scrap_total FROM machine_status WHERE machine = %s", (machine,)
            ).fetchone()
            assert hour_time and span and parts and totals
            assert hour_time[0] == pytest.approx(float(span[0]), abs=1e-3)
            assert tuple(parts) == tuple(totals)


def _mesflow(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mesflow.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_kill_9_mid_replay_then_resume_equals_uninterrupted(
    db_url: str, pg_server: str, pg_template: str, plant: PlantConfig, tmp_path: Path
) -> None:
    events = random_events([m for m in plant.machines], 60_000, seed=11)
    path = write_jsonl(tmp_path / "big.jsonl", events)

    # Reference: an uninterrupted run in another database.
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE ref_{os.getpid()} TEMPLATE {pg_template}")
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    info["dbname"] = f"ref_{os.getpid()}"
    ref_url = psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]
    try:
        replay_file(path, plant, ref_url, tmp_path / "rec-ref", progress=False)
        reference = table_snapshot(ref_url)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE ref_{os.getpid()} WITH (FORCE)")

    env = {**os.environ, "MESFLOW_DATABASE_URL": db_url, "MESFLOW_DATA_DIR": str(tmp_path / "var")}
    # Frequent snapshots: the kill lands between two of them, not before the first.
    replay_args = ("replay", "--quiet", "--snapshot-seconds", "0.2", str(path))
    proc = _mesflow(*replay_args, env=env)
    target = len(events)

    def progressed() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"replay ended before the kill: {proc.stdout.read()!r}")  # type: ignore[union-attr]
        pos = _count(db_url, "SELECT COALESCE(max(last_seq), 0) FROM dataflow_progress")
        return pos > target * 0.3

    wait_until(progressed, timeout=120, what="the dataflow to be a third through")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _count(db_url, "SELECT max(last_seq) FROM dataflow_progress")
    assert killed_at < target, "the kill came too late to test anything"

    proc = _mesflow(*replay_args, env=env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()
    assert table_snapshot(db_url) == reference
