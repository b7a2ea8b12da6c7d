"""MQTT JSON collector: machine signals and operator reports -> the ingest log.

Shape shared by every collector: connect to the source, map each message to the event
contract (`map_message`, pure), hand batches to the ingest log. A message is acknowledged
to the broker (QoS 1 PUBACK, sent manually) only after the batch holding it is committed
to PostgreSQL, so a crash of the collector or the database loses nothing: the broker
redelivers what was not acknowledged (persistent session).
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from collectors.topics import SUBSCRIPTION, TopicError, parse_topic
from mesflow.db import connect
from mesflow.ingest_log import LogRecord, append, dedupe_key
from mesflow.plant import PlantConfig

log = logging.getLogger(__name__)


def map_message(plant: PlantConfig, topic: str, payload: bytes) -> LogRecord:
    """Turn one MQTT message into a log record: a canonical event, or the raw input
    with an error that the dataflow will dead-letter (nothing is dropped here)."""
    source = f"mqtt:{topic}"
    try:
        where = parse_topic(topic)
    except TopicError as err:
        return LogRecord(source, payload, error=f"bad_topic: {err}")
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        return LogRecord(source, payload, error=f"malformed: not valid JSON: {err}")
    if not isinstance(body, dict):
        return LogRecord(source, payload, error="malformed: the payload must be a JSON object")
    for key, expected in (("type", where.type), ("machine", where.machine)):
        given = body.get(key, expected)
        if given != expected:
            return LogRecord(
                source,
                payload,
                error=f"invalid_field: field '{key}' is {given!r} but the topic says {expected!r}",
            )
    body["type"] = where.type
    body["machine"] = where.machine
    if where.type == "state":
        machine = plant.machines.get(where.machine)
        code = body.get("state")
        if machine is not None and machine.state_mapping and isinstance(code, str | int):
            mapped = plant.map_state(machine.state_mapping, str(code))
            if mapped is None:
                return LogRecord(
                    source,
                    payload,
                    error=f"unmapped_state: state code {code!r} is not in state mapping "
                    f"{machine.state_mapping!r}",
                )
            body["state"] = mapped
    event_id = body.get("id")
    dedupe = dedupe_key(f"id:{event_id}") if isinstance(event_id, str) and event_id else None
    return LogRecord(source, json.dumps(body, ensure_ascii=False).encode(), dedupe_key=dedupe)


@dataclass
class CollectorStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    with_errors: int = 0


class MqttJsonCollector:
    """Subscribes to the topic scheme and lands every message in the ingest log."""

    def __init__(
        self,
        plant: PlantConfig,
        mqtt_url: str,
        database_url: str,
        *,
        client_id: str = "mesflow-collector-mqtt",
        max_batch: int = 2000,
        max_wait: float = 0.01,
    ) -> None:
        self.plant = plant
        self.database_url = database_url
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.stats = CollectorStats()
        # Bounded: when PostgreSQL is slow, paho's thread blocks here, stops reading the
        # socket, and the broker holds the backlog (it is configured not to drop it).
        self._inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue(maxsize=50_000)
        self._stop = threading.Event()
        self.connected = threading.Event()
        url = urlparse(mqtt_url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 1883
        # A stable client id and clean_session=False: the broker keeps our subscription
        # and queues QoS 1 messages while we are away.
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            manual_ack=True,
        )
        if url.username:
            self.client.username_pw_set(url.username, url.password)
        self.client.reconnect_delay_set(1, 5)
        self.client.max_inflight_messages_set(1000)
        self.client.on_socket_open = _nodelay
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._writer = threading.Thread(target=self._write_loop, name="log-writer", daemon=True)

    # -- paho callbacks (network thread) ------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if rc.is_failure:
            log.error("MQTT connection refused: %s", rc)
            return
        # Subscribe again even if the broker kept the session: it may have lost it.
        client.subscribe(SUBSCRIPTION, qos=1)
        log.info(
            "connected to %s:%d (session present: %s)", self.host, self.port, flags.session_present
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any
    ) -> None:
        if any(rc.is_failure for rc in rcs):
            log.error("subscription to %s refused: %s", SUBSCRIPTION, rcs)
            return
        self.connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("MQTT connection lost (%s); reconnecting", rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put(msg)

    # -- writer thread ------------------------------------------------------------------------

    def _write_loop(self) -> None:
        conn: psycopg.Connection | None = None
        pending: list[mqtt.MQTTMessage] = []
        delay = 0.5
        while not (self._stop.is_set() and self._inbox.empty() and not pending):
            if not pending:
                pending = self._take_batch()
                if not pending:
                    continue
            records = [map_message(self.plant, m.topic, bytes(m.payload)) for m in pending]
            try:
                if conn is None or conn.closed:
                    conn = connect(self.database_url, autocommit=True)
                result = append(conn, records)
            except psycopg.OperationalError as err:
                # Not acknowledged, so not lost: keep the batch and try again.
                log.warning("ingest log unreachable (%s); retrying in %.1fs", err, delay)
                conn = None
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.5
            for m in pending:
                self.client.ack(m.mid, m.qos)
            self.stats.received += len(pending)
            self.stats.stored += result.new
            self.stats.duplicates += len(pending) - result.new
            self.stats.with_errors += sum(1 for r in records if r.error)
            pending = []
        if conn is not None:
            conn.close()

    def _take_batch(self) -> list[mqtt.MQTTMessage]:
        try:
            first = self._inbox.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(self._inbox.get(timeout=left))
                except queue.Empty:
                    break
        return batch

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._writer.start()
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        """Store what has arrived, acknowledge it, then disconnect."""
        self._stop.set()
        self._writer.join(timeout=30)
        self.client.disconnect()
        self.client.loop_stop()


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # paho leaves Nagle on: measured p99 26 ms vs 0.3 ms with TCP_NODELAY.
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def run_collector(plant: PlantConfig, mqtt_url: str, database_url: str) -> None:
    """`mesflow run collector-mqtt`: run until SIGINT/SIGTERM, print a line every 10 s."""
    collector = MqttJsonCollector(plant, mqtt_url, database_url)
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    collector.start()
    print(f"collector-mqtt: subscribing to {SUBSCRIPTION} on {mqtt_url}", flush=True)
    last = time.monotonic()
    while not stopping.wait(0.5):
        if time.monotonic() - last >= 10:
            s = collector.stats
            print(
                f"collector-mqtt: {s.received} received, {s.stored} stored, "
                f"{s.duplicates} duplicates, {s.with_errors} unmappable",
                flush=True,
            )
            last = time.monotonic()
    collector.stop()
    print("collector-mqtt: stopped", flush=True)
