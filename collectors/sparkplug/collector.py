"""Sparkplug B host application: edge nodes' births, data and deaths -> the ingest log.

Same shape as collectors/mqtt_json.py: paho's network thread only queues; one writer
thread maps each message (`SparkplugHost.handle`, pure), appends the batch to the ingest
log, and only after the commit acknowledges the messages (QoS 1 PUBACK, sent manually)
and sends the Rebirth NCMDs the batch asked for. The host's birth tables are saved to a
small JSON file after each commit, so a restarted collector still reads the aliases of
the messages the broker kept for it (persistent session).

As a Sparkplug 3.0 host it publishes `spBv1.0/STATE/<host id>` = {"online": true,
"timestamp": T} retained at QoS 1 once subscribed, with the same T in its Will
({"online": false, ...}), which the broker publishes if the collector dies; a clean stop
publishes the offline STATE itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from collectors.mqtt_conn import TlsFiles, configure_client, parse_mqtt_url, redact_url
from collectors.mqtt_json import _append_isolating, _nodelay
from collectors.sparkplug.host import NAMESPACE, SUBSCRIPTION, Command, SparkplugHost
from mesflow.db import connect
from mesflow.ingest_log import MAX_PAYLOAD_BYTES, LogRecord, error_record, safe_text
from mesflow.plant import PlantConfig
from mesflow.settings import Settings, get_settings
from mesflow.source_health import EndpointHealth, SourceHealthReporter

log = logging.getLogger(__name__)


def state_topic(host_id: str) -> str:
    return f"{NAMESPACE}/STATE/{host_id}"


def state_payload(online: bool, timestamp_ms: int) -> bytes:
    return json.dumps({"online": online, "timestamp": timestamp_ms}).encode()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class SparkplugStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    rebirths: int = 0
    ignored: int = 0  # STATE, commands, edge nodes the plant file does not name


class SparkplugCollector:
    """The host application. If a thread dies, `failed` is set and `failure` says why;
    the process must then exit (run_sparkplug does) rather than look alive."""

    def __init__(
        self,
        plant: PlantConfig,
        mqtt_url: str,
        database_url: str,
        *,
        host_id: str = "mesflow",
        client_id: str | None = None,
        state_file: Path | None = None,
        tls: TlsFiles | None = None,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        max_batch: int = 2000,
        max_wait: float = 0.01,
    ) -> None:
        self.host = SparkplugHost(plant)  # ValueError for a bad plant binding, before I/O
        self.database_url = database_url
        self.host_id = host_id
        self.state_topic = state_topic(host_id)
        self.client_id = client_id or f"mesflow-sparkplug-{host_id}"
        self.state_file = state_file
        self.max_payload_bytes = max_payload_bytes
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.stats = SparkplugStats()
        self._per_edge: dict[tuple[str, str], list[int]] = {}  # (group, edge) -> [msgs, errors]
        self.url = redact_url(mqtt_url)
        if state_file is not None and state_file.exists():
            try:
                self.host.restore(json.loads(state_file.read_text(encoding="utf-8")))
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                # Unreadable: start empty; the edges' rebirths rebuild the tables.
                log.warning("ignoring Sparkplug host state %s (%s)", state_file, err)
        self._saved: dict[str, Any] | None = None
        # (message, wall-clock ms of its arrival): a death is dated when it arrived, not
        # when a backlog let the writer reach it.
        self._inbox: queue.Queue[tuple[mqtt.MQTTMessage, int]] = queue.Queue(maxsize=50_000)
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.failed = threading.Event()
        self.failure: str | None = None
        endpoint = parse_mqtt_url(mqtt_url)
        self.mqtt_host, self.mqtt_port = endpoint.host, endpoint.port
        # A persistent session (clean_session=False), unlike the clean session Sparkplug
        # recommends: the broker then keeps what arrives while the collector restarts, and
        # a message is acknowledged only once stored (docs/collectors-sparkplug.md).
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            manual_ack=True,
        )
        configure_client(self.client, endpoint, tls or TlsFiles())
        self._state_ts = _now_ms()
        self._set_will()
        self.client.reconnect_delay_set(1, 5)
        self.client.max_inflight_messages_set(1000)
        self.client.on_socket_open = _nodelay
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._writer = threading.Thread(target=self._write_main, name="spb-writer", daemon=True)
        self._network = threading.Thread(target=self._network_main, name="spb-net", daemon=True)

    def _set_will(self) -> None:
        # Sparkplug 3.0: the STATE birth carries the timestamp of the Will registered in
        # the CONNECT just before it.
        self.client.will_set(
            self.state_topic, state_payload(False, self._state_ts), qos=1, retain=True
        )

    # -- paho callbacks (network thread) ------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if rc.is_failure:
            log.error("MQTT connection to %s refused: %s", self.url, rc)
            return
        # The namespace (our own STATE included) first, then STATE online (on_subscribe).
        client.subscribe(SUBSCRIPTION, qos=1)
        log.info("connected to %s (session present: %s)", self.url, flags.session_present)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any
    ) -> None:
        if any(rc.is_failure for rc in rcs):
            log.error("subscription to %s refused: %s", SUBSCRIPTION, rcs)
            return
        client.publish(self.state_topic, state_payload(True, self._state_ts), qos=1, retain=True)
        self.connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        self.connected.clear()
        if self._stop.is_set():
            return
        # The next CONNECT registers a Will with a new timestamp.
        self._state_ts = _now_ms()
        self._set_will()
        log.warning("MQTT connection lost (%s); reconnecting", rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.state_topic and self.connected.is_set() and not self._stop.is_set():
            self._contradicted(client, bytes(msg.payload))
        item = (msg, _now_ms())
        while not self.failed.is_set():
            try:
                self._inbox.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _contradicted(self, client: mqtt.Client, payload: bytes) -> None:
        """Sparkplug 3.0: our own STATE saying offline while we are connected (an old Will,
        another process with our host id) is answered by STATE online again."""
        try:
            online = json.loads(payload).get("online")
        except (ValueError, AttributeError):
            online = None
        if online is False:
            client.publish(
                self.state_topic, state_payload(True, self._state_ts), qos=1, retain=True
            )

    # -- threads ------------------------------------------------------------------------------

    def _network_main(self) -> None:
        try:
            self.client.connect_async(self.mqtt_host, self.mqtt_port, keepalive=30)
            self.client.loop_forever(retry_first_connection=True)
        except BaseException as err:
            self._fail("MQTT network thread", err)

    def _write_main(self) -> None:
        try:
            self._write_loop()
        except BaseException as err:
            self._fail("ingest log writer", err)

    def _fail(self, thread: str, err: BaseException) -> None:
        self.failure = f"{thread} failed: {type(err).__name__}: {err}"
        log.critical("%s", self.failure, exc_info=err)
        self.failed.set()

    def _write_loop(self) -> None:
        conn: psycopg.Connection | None = None
        delay = 0.5
        try:
            while not (self._stop.is_set() and self._inbox.empty()):
                batch = self._take_batch()
                if not batch:
                    continue
                # Mapped once: the host's state moves with each message, so a retried
                # append must store these very records, not map the batch again.
                records, commands = self._map_batch(batch)
                while True:
                    try:
                        if conn is None or conn.closed:
                            conn = connect(self.database_url, autocommit=True)
                        new = _append_isolating(conn, records) if records else 0
                        break
                    except psycopg.OperationalError as err:
                        log.warning("ingest log unreachable (%s); retrying in %.1fs", err, delay)
                        if conn is not None:
                            conn.close()
                        conn = None
                        time.sleep(delay)
                        delay = min(delay * 2, 10.0)
                delay = 0.5
                self._save_state()
                for m, _ in batch:  # acknowledged only now: the batch is committed
                    self.client.ack(m.mid, m.qos)
                for cmd in commands:
                    # NCMD at QoS 0, not retained (Sparkplug); a lost one is asked again.
                    self.client.publish(cmd.topic, cmd.payload, qos=0, retain=False)
                self.stats.received += len(batch)
                self.stats.stored += new
                self.stats.duplicates += len(records) - new
                self.stats.dead_letters += sum(1 for r in records if r.error)
                self.stats.rebirths += len(commands)
        finally:
            if conn is not None:
                conn.close()

    def _map_batch(
        self, batch: list[tuple[mqtt.MQTTMessage, int]]
    ) -> tuple[list[LogRecord], list[Command]]:
        records: list[LogRecord] = []
        commands: list[Command] = []
        for msg, received_ms in batch:
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = bytes(msg._topic).decode("utf-8", "backslashreplace")
            payload = bytes(msg.payload)
            if len(payload) > self.max_payload_bytes:
                records.append(
                    error_record(
                        f"sparkplug:{safe_text(topic, 900)}",
                        payload,
                        "too_large",
                        f"{len(payload)} bytes; the limit is {self.max_payload_bytes} "
                        "(MESFLOW_MQTT_MAX_PAYLOAD_BYTES)",
                    )
                )
                continue
            out = self.host.handle(topic, payload, received_ms)
            if not out.records and not out.commands:
                self.stats.ignored += 1
            # Per edge node, for the sources page (health()): spBv1.0/<group>/<kind>/<edge>/...
            parts = topic.split("/", 4)
            if len(parts) >= 4 and parts[0] == NAMESPACE and parts[2] != "STATE":
                edge = self._per_edge.setdefault((parts[1], parts[3]), [0, 0])
                edge[0] += 1
                edge[1] += sum(1 for r in out.records if r.error)
            records += out.records
            commands += out.commands
        # One Rebirth per node per batch, whatever the batch held.
        unique = list({c.topic: c for c in commands}.values())
        return records, unique

    def _save_state(self) -> None:
        if self.state_file is None:
            return
        snap = self.host.snapshot()
        if snap == self._saved:
            return
        tmp = self.state_file.with_suffix(".tmp")
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(snap, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_file)
        self._saved = snap

    def _take_batch(self) -> list[tuple[mqtt.MQTTMessage, int]]:
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
        self._network.start()

    def health(self) -> list[EndpointHealth]:
        """The sources page's rows (mesflow/source_health.py): the broker, then each edge node
        heard from (connected: born and not dead; read unlocked, so a copy first)."""
        s = self.stats
        up = self.connected.is_set()
        rows = [EndpointHealth(self.url, up, s.received, s.dead_letters)]
        for (group, edge), (msgs, errors) in list(self._per_edge.items()):
            node = self.host.nodes.get((group, edge))
            born = up and node is not None and node.born
            rows.append(EndpointHealth(f"{self.url} {group}/{edge}", born, msgs, errors))
        return rows

    def stop(self) -> None:
        """Store and acknowledge what has arrived, publish STATE offline, disconnect."""
        self._stop.set()
        if self._writer.is_alive():
            self._writer.join(timeout=30)
        if self.client.is_connected():
            info = self.client.publish(
                self.state_topic, state_payload(False, self._state_ts), qos=1, retain=True
            )
            # Connection gone meanwhile: the Will says offline instead.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(5)
        self.client.disconnect()
        if self._network.is_alive():
            self._network.join(timeout=10)


def run_sparkplug(
    plant: PlantConfig, mqtt_url: str, database_url: str, settings: Settings | None = None
) -> None:
    """`mesflow run sparkplug`: run until SIGINT/SIGTERM, print a line every 10 s."""
    settings = settings or get_settings()
    try:
        collector = SparkplugCollector(
            plant,
            mqtt_url,
            database_url,
            host_id=settings.sparkplug_host_id,
            state_file=settings.data_dir / f"sparkplug-host-{settings.sparkplug_host_id}.json",
            tls=TlsFiles(settings.mqtt_ca_file, settings.mqtt_cert_file, settings.mqtt_key_file),
            max_payload_bytes=settings.mqtt_max_payload_bytes,
        )
    except ValueError as err:
        print(f"sparkplug: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    collector.start()
    health = SourceHealthReporter(database_url, "sparkplug", collector.host_id, collector.health)
    health.start()
    print(
        f"sparkplug: host {settings.sparkplug_host_id!r} subscribing to {SUBSCRIPTION} on "
        f"{collector.url} as client {collector.client_id!r}",
        flush=True,
    )
    last = time.monotonic()
    while not stopping.wait(0.5):
        if collector.failed.is_set():
            break
        if time.monotonic() - last >= 10:
            s = collector.stats
            print(
                f"sparkplug: {s.received} received, {s.stored} stored, {s.duplicates} "
                f"duplicates, {s.dead_letters} dead letters, {s.rebirths} rebirths asked",
                flush=True,
            )
            last = time.monotonic()
    collector.stop()
    health.stop()
    if collector.failed.is_set():
        print(
            f"sparkplug: stopping: {collector.failure} (messages not yet stored stay with "
            "the broker and are delivered again after a restart)",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(1)
    print("sparkplug: stopped", flush=True)
