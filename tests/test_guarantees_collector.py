"""Guarantees of the MQTT collector (`mesflow run collector-mqtt`), observed through the
broker and the ingest log, never through the collector's own counters:

- a message is acknowledged to the broker only after the batch holding it is committed:
  killed (kill -9) while its commit waits, the collector has acknowledged nothing, so the
  broker redelivers every message to the restarted collector;
- with broker persistence, a broker restart keeps the collector's session: what was in
  flight and what was queued while the collector was down is redelivered, nothing is
  lost and nothing is stored twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from collectors.topics import machine_topic
from mesflow.plant import PlantConfig
from tests.helpers import (
    SHANGHAI,
    Mesflow,
    RestartableBroker,
    count,
    mesflow_env,
    wait_until,
)

CLIENT_ID = "mesflow-collector-test"


class Publisher:
    """A machine publishing QoS 1 counts; each publish waits for the broker's PUBACK."""

    def __init__(self, broker: RestartableBroker, plant: PlantConfig, machine: str) -> None:
        line = plant.line_of_machine[machine]
        self.topic = machine_topic(plant.plant.site, line.area, line.id, machine, "count")
        self.broker = broker
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{machine}")
        self.client.reconnect_delay_set(1, 1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.t0 = datetime.now(SHANGHAI) - timedelta(hours=1)

    def send(self, ids: list[str]) -> None:
        for i, event_id in enumerate(ids):
            ts = (self.t0 + timedelta(seconds=i)).isoformat()
            body = json.dumps({"id": event_id, "ts": ts, "good": 1})
            deadline = time.monotonic() + 20
            while True:  # after a broker restart, until paho has reconnected
                info = self.client.publish(self.topic, body, qos=1)
                if info.rc == mqtt.MQTT_ERR_SUCCESS:
                    info.wait_for_publish(10)
                    break
                assert time.monotonic() < deadline, "could not publish"
                time.sleep(0.1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _collector(broker: RestartableBroker, db_url: str, tmp_path: Path) -> Mesflow:
    env = mesflow_env(db_url, tmp_path / "var", broker.url, MESFLOW_MQTT_CLIENT_ID=CLIENT_ID)
    return Mesflow("run", "collector-mqtt", env=env, log=tmp_path / "collector.log")


def _stored(db_url: str, prefix: str) -> tuple[int, int]:
    """(rows, distinct ids) in the ingest log whose event id starts with `prefix`."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT convert_from(payload, 'UTF8')::jsonb ->> 'id') "
            "FROM ingest_log WHERE convert_from(payload, 'UTF8')::jsonb ->> 'id' LIKE %s",
            (prefix + "%",),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _wait_subscribed(pub: Publisher, proc: Mesflow, db_url: str) -> None:
    """Probe until one probe is stored: the collector's subscription is in place."""
    for k in range(60):
        assert proc.alive(), proc.output()
        pub.send([f"probe-{k}-{time.monotonic_ns()}"])
        try:
            wait_until(lambda: _stored(db_url, "probe-")[0] > 0, timeout=0.5)
            return
        except AssertionError:
            continue
    raise AssertionError(f"the collector never stored a probe:\n{proc.output()}")


@contextmanager
def _commit_blocked(db_url: str) -> Iterator[None]:
    """Hold a lock that stops every append to the ingest log until the block ends."""
    with psycopg.connect(db_url) as conn:
        conn.execute("LOCK TABLE ingest_log IN EXCLUSIVE MODE")
        yield
        conn.rollback()


def _waiting_on_lock(db_url: str) -> bool:
    return (
        count(
            db_url,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database() AND application_name = 'mesflow'",
        )
        > 0
    )


def test_ack_only_after_commit_broker_redelivers(
    broker: RestartableBroker, db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    pub = Publisher(broker, plant, "IM-05")
    proc = _collector(broker, db_url, tmp_path)
    try:
        _wait_subscribed(pub, proc, db_url)
        ids = [f"a-{i}" for i in range(40)]
        with _commit_blocked(db_url):
            pub.send(ids)  # the broker has them (PUBACK), the collector receives them
            wait_until(lambda: _waiting_on_lock(db_url), what="the collector's commit to wait")
            time.sleep(0.5)  # an ack sent before the commit would reach the broker now
            proc.kill9()
        assert _stored(db_url, "a-") == (0, 0)  # the killed transaction committed nothing
        proc = _collector(broker, db_url, tmp_path)
        # Only the broker can give them back: nothing was stored, nothing is sent again.
        wait_until(
            lambda: _stored(db_url, "a-")[1] == len(ids),
            timeout=30,
            what="the broker to redeliver every unacknowledged message",
        )
        assert _stored(db_url, "a-") == (len(ids), len(ids))
    finally:
        pub.close()
        if proc.alive():
            proc.terminate()


def test_broker_restart_keeps_session_nothing_lost_or_doubled(
    broker: RestartableBroker, db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    pub = Publisher(broker, plant, "IM-06")
    proc = _collector(broker, db_url, tmp_path)
    try:
        _wait_subscribed(pub, proc, db_url)
        pub.send([f"b-{i}" for i in range(20)])  # stored normally
        in_flight = [f"b-{i}" for i in range(20, 50)]
        with _commit_blocked(db_url):
            pub.send(in_flight)  # delivered to the collector, never acknowledged
            wait_until(lambda: _waiting_on_lock(db_url), what="the collector's commit to wait")
            proc.kill9()
        pub.send([f"b-{i}" for i in range(50, 80)])  # queued in the session: collector down
        broker.restart(down_s=0.5)  # a clean restart: sessions and queues are persisted
        pub.send([f"b-{i}" for i in range(80, 100)])  # queued after the restart
        proc = _collector(broker, db_url, tmp_path)
        wait_until(
            lambda: _stored(db_url, "b-")[1] == 100,
            timeout=30,
            what="every message to be stored after the restarts",
        )
        time.sleep(1.0)  # late redeliveries, if any, would land now
        assert _stored(db_url, "b-") == (100, 100)  # none lost, none stored twice
        assert proc.alive(), proc.output()
    finally:
        pub.close()
        if proc.alive():
            proc.terminate()
