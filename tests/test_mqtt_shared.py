"""Several collectors on one broker: each its own client id, the load shared through an
MQTT 5 shared subscription, every message stored exactly once."""

from __future__ import annotations

import json
import logging
import socket
import time

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collectors.mqtt_json import MqttJsonCollector, default_client_id, subscription
from collectors.topics import machine_topic
from mesflow.plant import PlantConfig
from mesflow.services import Broker
from tests import poison
from tests.helpers import wait_until


def _publish_events(broker: Broker, plant: PlantConfig, n: int) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="shared-pub")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    machines = ["IM-01", "IM-02", "IM-03", "CNC-01"]
    infos = []
    for i, ev in enumerate(poison.valid_events(0, n)):
        machine = machines[i % len(machines)]
        line = plant.line_of_machine[machine]
        topic = machine_topic(plant.plant.site, line.area, line.id, machine, "count")
        body = {k: v for k, v in ev.items() if k not in ("machine", "type")}
        infos.append(pub.publish(topic, json.dumps(body), qos=1))
    for info in infos:
        info.wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()


def test_two_collectors_share_the_load_and_store_each_message_once(
    broker: Broker, db_url: str, plant: PlantConfig
) -> None:
    a = MqttJsonCollector(plant, broker.url, db_url, client_id="coll-a", share_group="mesflow")
    b = MqttJsonCollector(plant, broker.url, db_url, client_id="coll-b", share_group="mesflow")
    n = 400
    try:
        for c in (a, b):
            c.start()
        assert a.connected.wait(10) and b.connected.wait(10)
        assert a.subscription == "$share/mesflow/mesflow/v1/#"
        _publish_events(broker, plant, n)
        wait_until(
            lambda: a.stats.received + b.stats.received >= n, what="both collectors to store"
        )
    finally:
        a.stop()
        b.stop()
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT count(*), count(DISTINCT dedupe_key) FROM ingest_log WHERE error IS NULL"
        ).fetchone()
    assert rows == (n, n)
    assert a.stats.received + b.stats.received == n
    assert a.stats.duplicates == b.stats.duplicates == 0
    # Both took a real share (mosquitto deals round-robin).
    assert a.stats.received > n // 4 and b.stats.received > n // 4


def test_two_collectors_with_one_client_id_are_reported(
    broker: Broker, db_url: str, plant: PlantConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """Two instances with one client id take the session from each other in turn (the
    broker closes the older connection); the collector says so, naming the setting."""
    first = MqttJsonCollector(plant, broker.url, db_url, client_id="same-id")
    second = MqttJsonCollector(plant, broker.url, db_url, client_id="same-id")
    caplog.set_level(logging.ERROR, logger="collectors.mqtt_json")
    try:
        first.start()
        assert first.connected.wait(10)
        second.start()
        wait_until(lambda: "MESFLOW_MQTT_CLIENT_ID" in caplog.text, timeout=30, what="the report")
    finally:
        first.stop()
        second.stop()
    assert "client id 'same-id'" in caplog.text


def test_distinct_client_ids_are_not_reported(
    broker: Broker, db_url: str, plant: PlantConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="collectors.mqtt_json")
    a = MqttJsonCollector(plant, broker.url, db_url, client_id="id-a")
    b = MqttJsonCollector(plant, broker.url, db_url, client_id="id-b")
    try:
        a.start()
        b.start()
        assert a.connected.wait(10) and b.connected.wait(10)
        time.sleep(4)
        assert a.connected.is_set() and b.connected.is_set()
    finally:
        a.stop()
        b.stop()
    assert "connection lost" not in caplog.text and "client id" not in caplog.text


def test_client_id_and_subscription() -> None:
    assert default_client_id() == default_client_id()  # stable across restarts
    host = socket.gethostname()
    assert default_client_id().startswith("mesflow-collector-")
    assert host.split(".")[0][:8] in default_client_id() or not host.isascii()
    assert subscription(None) == "mesflow/v1/#"
    assert subscription("line-a") == "$share/line-a/mesflow/v1/#"
    for bad in ("a/b", "+", "#", " a"):
        with pytest.raises(ValueError):
            subscription(bad)
