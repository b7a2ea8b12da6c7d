"""The poison list (tests/poison.py) through MQTT, and what a dying collector thread does.

Each poison is published on a machine topic and followed by a valid event; the real
collector process (`mesflow run collector-mqtt`) and the dataflow must stay up, every
poison must be dead-lettered with its reason and every valid event stored and counted.
"""

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
from paho.mqtt.enums import CallbackAPIVersion

from collectors.mqtt_json import MqttJsonCollector, map_message
from collectors.topics import MACHINE_TYPES, machine_topic
from mesflow.plant import PlantConfig
from mesflow.services import Broker
from streams.runner import run_flow
from tests import poison
from tests.helpers import RestartableBroker, wait_until


def _topic(plant: PlantConfig, machine: str, kind: str) -> str:
    line = plant.line_of_machine[machine]
    return machine_topic(plant.plant.site, line.area, line.id, machine, kind)


# Valid over MQTT: the topic names the type (docs: `type` may be left out of the payload).
_MQTT_VALID = {"no type": ""}


def _mqtt_cases(plant: PlantConfig) -> list[tuple[str, str, bytes, str]]:
    """(name, topic, payload, expected reason) for MQTT: tests/poison.py's list on the
    poison machine's topic for the payload's type, plus cases only a topic can make."""
    cases = []
    for name, payload, reason in poison.POISON:
        if name in poison.FILE_ONLY:
            continue
        try:
            kind = json.loads(payload).get("type")
        except Exception:  # not a JSON object: any topic will do
            kind = None
        expected = _MQTT_VALID.get(name, poison.MQTT_REASON.get(name, reason))
        if kind == "order":
            # Orders come through the API, not MQTT: on a machine topic the type
            # contradicts the topic before anything else is looked at.
            expected = "invalid_field"
        topic_kind = kind if kind in MACHINE_TYPES else "count"
        cases.append((name, _topic(plant, poison.POISON_MACHINE, topic_kind), payload, expected))
    event = json.dumps(poison.valid_events(10_000, 1)[0] | {"id": None}).encode()
    site = plant.plant.site
    cases += [
        ("topic with too few levels", f"mesflow/v1/{site}/IM-03/count", event, "bad_topic"),
        ("topic with an unknown type", _topic(plant, "IM-03", "count")[:-5] + "temp", event,
         "bad_topic"),
        ("topic with an empty level", f"mesflow/v1/{site}//IM/IM-03/count", event, "bad_topic"),
        ("topic of 150 levels", "mesflow/v1/" + "x/" * 150 + "count", event, "bad_topic"),
        ("unicode topic levels", f"mesflow/v1/{site}/成型/注塑/机-01/count",
         json.dumps({"ts": poison.ts(), "good": 1}).encode(), "unknown_machine"),
        ("a machine the plant does not have", _topic(plant, "IM-03", "count").replace(
            "IM-03", "IM-99"), json.dumps({"ts": poison.ts(), "good": 1}).encode(),
         "unknown_machine"),
        ("machine in payload contradicts the topic", _topic(plant, "IM-03", "count"),
         json.dumps({"machine": "IM-01", "ts": poison.ts(), "good": 1}).encode(),
         "invalid_field"),
        ("type in payload contradicts the topic", _topic(plant, "IM-03", "state"),
         json.dumps({"type": "count", "ts": poison.ts(), "good": 1}).encode(), "invalid_field"),
    ]  # fmt: skip
    return cases


def _publisher(broker: Broker) -> mqtt.Client:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="poison-pub")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    return pub


def _collector_process(broker: Broker, db_url: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MESFLOW_DATABASE_URL": db_url,
        "MESFLOW_MQTT_URL": broker.url,
        "MESFLOW_DATA_DIR": str(tmp_path / "var"),
        "MESFLOW_MQTT_CLIENT_ID": "poison-collector",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesflow.cli", "run", "collector-mqtt"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return proc


def _wait_subscribed(broker: RestartableBroker) -> None:
    """Until the collector is connected (its SUBSCRIBE follows at once)."""
    log = broker.data_dir / "mosquitto.log"
    wait_until(
        lambda: "as poison-collector" in log.read_text(errors="replace"),
        what="the collector to connect",
    )
    time.sleep(0.5)  # the SUBSCRIBE follows the CONNECT


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def test_poison_list_through_mqtt(
    broker: RestartableBroker, db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    cases = _mqtt_cases(plant)
    valid = [poison.running_state(), *poison.valid_events(0, len(cases) + 1)]
    tricky = poison.TRICKY_VALID
    proc = _collector_process(broker, db_url, tmp_path)
    pub = _publisher(broker)
    sent: list[tuple[str, str]] = []  # (what, expected reason or "" for valid), in order

    def send(topic: str, payload: bytes, what: str, expected: str) -> None:
        pub.publish(topic, payload, qos=1).wait_for_publish(10)
        sent.append((what, expected))

    def send_valid(ev: dict[str, object]) -> None:
        send(_topic(plant, poison.POISON_MACHINE, str(ev["type"])), json.dumps(ev).encode(),
             f"valid {ev['id']}", "")  # fmt: skip

    try:
        _wait_subscribed(broker)
        # Time order of the poison module: the state at -3 h, tricky valid inputs at -2.5 h,
        # then each poison (-2.5 h) followed by a valid count (from -2 h on).
        send_valid(valid[0])
        for name, payload in tricky:
            kind = json.loads(payload)["type"]
            send(_topic(plant, poison.POISON_MACHINE, kind), payload, f"tricky {name}", "")
        for (name, topic, payload, reason), ev in zip(cases, valid[1:], strict=False):
            send(topic, payload, name, reason)
            send_valid(ev)
        send_valid(valid[-1])
        wait_until(
            lambda: _count(db_url, "SELECT count(*) FROM ingest_log") == len(sent),
            timeout=60,
            what="the collector to store every message",
        )
        assert proc.poll() is None, "the collector exited"
    finally:
        pub.disconnect()
        pub.loop_stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out

    # The dataflow over everything: it must neither raise nor stop early.
    last = _count(db_url, "SELECT max(seq) FROM ingest_log")
    run_flow(plant, db_url, tmp_path / "rec", 1.0, upto_seq=last)

    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT l.seq, d.reason, d.detail FROM ingest_log l "
            "LEFT JOIN dead_letter d ON d.log_seq = l.seq ORDER BY l.seq"
        ).fetchall()
        good_total = conn.execute(
            "SELECT good_total FROM machine_status WHERE machine = %s", (poison.POISON_MACHINE,)
        ).fetchone()
    assert len(rows) == len(sent)
    reasons: dict[str, int] = {}
    for _seq, reason, _detail in rows:
        reasons[reason or "stored"] = reasons.get(reason or "stored", 0) + 1
    n_poison = sum(1 for _, expected in sent if expected)
    # The closing note's figures (pytest -s shows them).
    print(
        f"\nMQTT poison run: sent {len(sent)} messages ({n_poison} poisons, "
        f"{len(sent) - n_poison} valid); in the log {len(rows)} (lost 0, doubled 0); "
        f"outcome by reason: {dict(sorted(reasons.items()))}"
    )
    wrong = [
        (what, expected or "stored", reason or "stored", detail)
        for (what, expected), (_seq, reason, detail) in zip(sent, rows, strict=True)
        if (reason or "") != expected
    ]
    assert wrong == [], "\n".join(map(str, wrong))
    stored_cases = [p for _, _, p, expected in cases if expected == ""]
    counted = sum(
        int(json.loads(p).get("good", 0)) for p in [*(p for _, p in tricky), *stored_cases]
    )
    assert good_total is not None
    assert good_total[0] == len(valid) - 1 + counted


def test_writer_death_stops_the_process_and_nothing_is_lost(
    broker: RestartableBroker, db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    """The writer thread dies (the ingest log is gone: not a per-message problem); the
    process exits 1 and says why instead of printing stats and storing nothing. The
    message was not acknowledged: a restarted collector stores it."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE ingest_log RENAME TO ingest_log_away")
    proc = _collector_process(broker, db_url, tmp_path)
    pub = _publisher(broker)
    try:
        _wait_subscribed(broker)
        ev = poison.valid_events(0, 1)[0]
        pub.publish(_topic(plant, poison.POISON_MACHINE, "count"), json.dumps(ev), qos=1)
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    finally:
        pub.disconnect()
        pub.loop_stop()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out
    assert "ingest log writer failed" in out and "ingest_log" in out, out
    first_out = out

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE ingest_log_away RENAME TO ingest_log")
    proc = _collector_process(broker, db_url, tmp_path)
    try:
        stored = True
        wait_until(
            lambda: _count(db_url, "SELECT count(*) FROM ingest_log") == 1,
            what="the redelivered message",
        )
    except AssertionError:
        stored = False
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert stored, first_out + out + (broker.data_dir / "mosquitto.log").read_text()
    assert proc.returncode == 0, out


def test_network_thread_death_sets_failed(broker: Broker, db_url: str, plant: PlantConfig) -> None:
    """If paho's network loop dies (here: a callback raising), the collector reports it
    as failed: run_collector then exits 1 (see the writer test for the process side)."""
    collector = MqttJsonCollector(plant, broker.url, db_url, client_id="net-death")

    def broken(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        raise RuntimeError("simulated bug in a callback")

    collector.client.on_message = broken
    collector.start()
    pub = _publisher(broker)
    try:
        assert collector.connected.wait(10)
        pub.publish(_topic(plant, "IM-01", "count"), b"{}", qos=1).wait_for_publish(5)
        assert collector.failed.wait(10)
    finally:
        pub.disconnect()
        pub.loop_stop()
        collector.stop()
    assert collector.failure is not None
    assert "MQTT network thread failed" in collector.failure
    assert "simulated bug" in collector.failure


def test_map_message_gives_the_collectors_reasons(plant: PlantConfig) -> None:
    """Direct, without broker or database: every case maps to a record, and the reasons the
    collector decides (topic, size, decoding) are its own."""
    for name, topic, payload, expected in _mqtt_cases(plant):
        rec = map_message(plant, topic, payload)
        if expected in ("bad_topic", "too_large", "malformed", "bad_text"):
            assert rec.error is not None, name
            assert rec.error.startswith(expected + ":"), (name, rec.error)
            # The payload as received (a prefix if too large), for the dead letters.
            assert payload.startswith(rec.payload) and len(rec.payload) <= 64 * 1024, name
