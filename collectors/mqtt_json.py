"""MQTT JSON collector: machine signals and operator reports -> the ingest log.

Shape shared by every collector: connect to the source, map each message to the event
contract (`map_message`, pure), hand batches to the ingest log. A message is acknowledged
to the broker (QoS 1 PUBACK, sent manually) only after the batch holding it is committed
to PostgreSQL, so a crash of the collector or the database loses nothing: the broker
redelivers what was not acknowledged (persistent session).
"""

from __future__ import annotations

import logging
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collectors.mqtt_conn import (
    BufferedSocket,
    LeanClient,
    Received,
    TlsFiles,
    configure_client,
    parse_mqtt_url,
    redact_url,
)
from collectors.topics import SUBSCRIPTION, MachineTopic, TopicError, parse_topic
from mesflow.db import connect
from mesflow.ingest_log import (
    MAX_PAYLOAD_BYTES,
    DecodeError,
    LogRecord,
    append,
    decode_object,
    decode_plain,
    error_record,
    record_for,
    record_for_plain,
    safe_text,
)
from mesflow.plant import PlantConfig
from mesflow.settings import Settings, get_settings
from mesflow.source_health import EndpointHealth, SourceHealthReporter

log = logging.getLogger(__name__)

# MQTT 5: the broker keeps the session (and queues our messages) until we come back.
SESSION_NEVER_EXPIRES = 0xFFFFFFFF
# A connection that ends within QUICK_DROP_S of its start, QUICK_DROPS_REPORTED times in
# a row, is reported as a probable client id clash.
QUICK_DROP_S = 3.0
QUICK_DROPS_REPORTED = 3


def map_message(
    plant: PlantConfig,
    topic: str,
    payload: bytes,
    *,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
) -> LogRecord:
    """Turn one MQTT message into a log record: a canonical event, or the raw input
    with an error that the dataflow will dead-letter (nothing is dropped here).

    Never raises: whatever goes wrong with one message (deep nesting, a lone surrogate,
    a bug of ours) becomes that message's error record, and the collector goes on.
    """
    where, source = _topic(topic)
    try:
        if len(payload) > max_payload_bytes:
            # Only a bounded prefix is kept (error_record), never the whole message.
            return error_record(
                source,
                payload,
                "too_large",
                f"{len(payload)} bytes; the limit is {max_payload_bytes} "
                "(MESFLOW_MQTT_MAX_PAYLOAD_BYTES)",
            )
        return _map(plant, source, where, payload)
    except Exception as err:  # one message must never stop the collector
        return error_record(source, payload, "malformed", f"{type(err).__name__}: {err}")


# topic -> (its parse or the error, the log source): a plant has a few thousand topics and
# every message of one names the same, so each is parsed once. Cleared when full, so that
# a client sending ever new topics cannot grow it without bound.
_TOPICS: dict[str, tuple[MachineTopic | TopicError, str]] = {}
_MAX_TOPICS = 100_000


def _topic(topic: str) -> tuple[MachineTopic | TopicError, str]:
    known = _TOPICS.get(topic)
    if known is not None:
        return known
    try:
        where: MachineTopic | TopicError = parse_topic(topic)
    except TopicError as err:
        where = err
    if len(_TOPICS) >= _MAX_TOPICS:
        _TOPICS.clear()
    known = _TOPICS[topic] = (where, f"mqtt:{safe_text(topic, 1000)}")
    return known


def _map(
    plant: PlantConfig,
    source: str,
    where: MachineTopic | TopicError,
    payload: bytes,
    *,
    fast: bool = True,
) -> LogRecord:
    """The message's record; `fast=False` only to compare with the reference path (tests):
    a plain payload (decode_plain) is decoded and encoded by msgspec, with the same result."""
    if isinstance(where, TopicError):
        return error_record(source, payload, "bad_topic", str(where))
    body = decode_plain(payload) if fast else None
    plain = body is not None
    if body is None:
        try:
            body = decode_object(payload)
        except DecodeError as err:
            return error_record(source, payload, err.reason, err.detail)
    for key, expected in (("type", where.type), ("machine", where.machine)):
        given = body.get(key, expected)
        if given != expected:
            if isinstance(given, str) and not _is_unicode(given):
                return error_record(source, payload, "bad_text", f"field '{key}' is not Unicode")
            return error_record(
                source,
                payload,
                "invalid_field",
                f"field '{key}' is {given!r} but the topic says {expected!r}",
            )
    body["type"] = where.type
    body["machine"] = where.machine
    if where.type == "state":
        machine = plant.machines.get(where.machine)
        code = body.get("state")
        if machine is not None and machine.state_mapping and isinstance(code, str | int):
            mapped = plant.map_state(machine.state_mapping, str(code))
            if mapped is None:
                return error_record(
                    source,
                    payload,
                    "unmapped_state",
                    f"state code {code!r} is not in state mapping {machine.state_mapping!r}",
                )
            body["state"] = mapped
    # Only str values were added to a plain body, which record_for_plain allows.
    record = record_for_plain(source, body) if plain else record_for(source, body)
    if record.error is not None:  # keep the payload as received, not record_for's rendering
        reason, _, detail = record.error.partition(": ")
        return error_record(source, payload, reason, detail)
    return record


def _is_unicode(text: str) -> bool:
    """False for a str with a lone surrogate (from a "\\ud800" escape)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class CollectorStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    with_errors: int = 0


def default_client_id() -> str:
    """mesflow-collector-<host name>: stable across restarts of one instance, distinct
    between instances on different hosts (set MESFLOW_MQTT_CLIENT_ID for several on one)."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())
    return f"mesflow-collector-{host or 'unknown'}"


def subscription(share_group: str | None) -> str:
    """The topic filter: every machine topic, or this group's share of it."""
    if not share_group:
        return SUBSCRIPTION
    if any(c in share_group for c in "/+#") or share_group != share_group.strip():
        raise ValueError(f"MQTT share group {share_group!r} may not contain '/', '+' or '#'")
    return f"$share/{share_group}/{SUBSCRIPTION}"


class MqttJsonCollector:
    """Subscribes to the topic scheme and lands every message in the ingest log.

    Two threads: paho's network loop (receives, queues) and the log writer (maps, appends,
    acknowledges). If either dies, `failed` is set and `failure` says why; the process must
    then exit (run_collector does) rather than look alive while storing nothing.
    """

    def __init__(
        self,
        plant: PlantConfig,
        mqtt_url: str,
        database_url: str,
        *,
        client_id: str = "mesflow-collector-mqtt",
        share_group: str | None = None,
        tls: TlsFiles | None = None,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        max_batch: int = 2000,
        max_wait: float = 0.01,
    ) -> None:
        self.plant = plant
        self.database_url = database_url
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_payload_bytes = max_payload_bytes
        self.stats = CollectorStats()
        self.subscription = subscription(share_group)
        self.url = redact_url(mqtt_url)
        self.client_id = client_id
        self._connected_at = 0.0
        self._quick_drops = 0
        self._fail_logged_at = -60.0
        self.connect_errors = 0  # refused or failed connections (sources page)
        self.last_error: str | None = None
        # Bounded: when PostgreSQL is slow, paho's thread blocks here, stops reading the
        # socket, and the broker holds the backlog (it is configured not to drop it).
        self._inbox: queue.Queue[Received | mqtt.MQTTMessage] = queue.Queue(maxsize=50_000)
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.failed = threading.Event()
        self.failure: str | None = None
        endpoint = parse_mqtt_url(mqtt_url)
        self.host = endpoint.host
        self.port = endpoint.port
        # A stable client id and a persistent session: the broker keeps our subscription
        # and queues QoS 1 messages while we are away. A shared subscription is an MQTT 5
        # feature, so MQTT 5 then (session kept by an expiry interval instead of
        # clean_session=False); MQTT 3.1.1 otherwise, which every broker speaks.
        self._v5 = bool(share_group)
        # LeanClient: paho with a cheaper receive path (collectors/mqtt_conn.py).
        if self._v5:
            self.client = LeanClient(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv5,
                manual_ack=True,
            )
        else:
            self.client = LeanClient(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                clean_session=False,
                manual_ack=True,
            )
        configure_client(self.client, endpoint, tls or TlsFiles())
        self.client.reconnect_delay_set(1, 5)
        self.client.max_inflight_messages_set(1000)
        self.client.on_socket_open = _nodelay
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._writer = threading.Thread(target=self._write_main, name="log-writer", daemon=True)
        self._network = threading.Thread(target=self._network_main, name="mqtt-net", daemon=True)

    # -- paho callbacks (network thread) ------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if rc.is_failure:
            # rc names the cause (e.g. "Not authorized"); the password is never logged.
            log.error("MQTT connection to %s refused: %s", self.url, rc)
            self.connect_errors += 1
            self.last_error = f"connection refused: {rc}"
            return
        self._connected_at = time.monotonic()
        # Subscribe again even if the broker kept the session: it may have lost it.
        client.subscribe(self.subscription, qos=1)
        log.info("connected to %s (session present: %s)", self.url, flags.session_present)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError`: the error says why (refused, TLS
        # certificate not trusted, host unknown). Once a minute is enough while retrying.
        err = sys.exc_info()[1]
        self.connect_errors += 1
        self.last_error = (
            f"cannot connect: {type(err).__name__}: {err}" if err else "cannot connect"
        )
        now = time.monotonic()
        if now - self._fail_logged_at < 60:
            return
        self._fail_logged_at = now
        log.warning(
            "cannot connect to %s (%s); retrying",
            self.url,
            f"{type(err).__name__}: {err}" if err else "unknown error",
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any
    ) -> None:
        if any(rc.is_failure for rc in rcs):
            log.error("subscription to %s refused: %s", self.subscription, rcs)
            return
        self.connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        self.connected.clear()
        if self._stop.is_set():
            return
        # Two processes with one client id take the session from each other in turn: each
        # connection then ends right after it began. Say so (it also looks like this when
        # the ACL refuses what we do, hence a message rather than an exit).
        if time.monotonic() - self._connected_at < QUICK_DROP_S:
            self._quick_drops += 1
            if self._quick_drops == QUICK_DROPS_REPORTED:
                log.error(
                    "the broker closed %d connections in a row right after they were made: "
                    "is another process using the client id %r? Give each collector "
                    "instance its own MESFLOW_MQTT_CLIENT_ID",
                    self._quick_drops,
                    self.client_id,
                )
        else:
            self._quick_drops = 0
        log.warning("MQTT connection lost (%s); reconnecting", rc)

    def _on_message(
        self, client: mqtt.Client, userdata: Any, msg: Received | mqtt.MQTTMessage
    ) -> None:
        # Blocks while the writer is behind (back-pressure), but not after it died: the
        # process is then going down and must not hang here.
        while not self.failed.is_set():
            try:
                self._inbox.put(msg, timeout=0.5)
                return
            except queue.Full:
                continue

    # -- threads ------------------------------------------------------------------------------

    def _network_main(self) -> None:
        try:
            if self._v5:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = SESSION_NEVER_EXPIRES
                self.client.connect_async(
                    self.host, self.port, keepalive=30, clean_start=False, properties=props
                )
            else:
                self.client.connect_async(self.host, self.port, keepalive=30)
            # paho's own loop_start() thread would die silently on an exception.
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
        pending: list[Received | mqtt.MQTTMessage] = []
        delay = 0.5
        try:
            while not (self._stop.is_set() and self._inbox.empty() and not pending):
                if not pending:
                    pending = self._take_batch()
                    if not pending:
                        continue
                records = [self._map(m) for m in pending]
                try:
                    if conn is None or conn.closed:
                        conn = connect(self.database_url, autocommit=True)
                    new = _append_isolating(conn, records)
                except psycopg.OperationalError as err:
                    # Not acknowledged, so not lost: keep the batch and try again.
                    log.warning("ingest log unreachable (%s); retrying in %.1fs", err, delay)
                    if conn is not None:
                        conn.close()
                    conn = None
                    time.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                delay = 0.5
                # Acknowledge only now: the batch is committed. One write for the batch.
                self.client.ack_many([m.mid for m in pending if m.qos == 1])
                self.stats.received += len(pending)
                self.stats.stored += new
                self.stats.duplicates += len(pending) - new
                self.stats.with_errors += sum(1 for r in records if r.error)
                pending = []
        finally:
            if conn is not None:
                conn.close()

    def _map(self, msg: Received | mqtt.MQTTMessage) -> LogRecord:
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # brokers check topics are UTF-8; do not rely on it
            topic = bytes(msg._topic).decode("utf-8", "backslashreplace")
        return map_message(
            self.plant, topic, bytes(msg.payload), max_payload_bytes=self.max_payload_bytes
        )

    def _take_batch(self) -> list[Received | mqtt.MQTTMessage]:
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
        """The sources page's row (mesflow/source_health.py): one broker."""
        s = self.stats
        errors = s.with_errors + self.connect_errors
        return [
            EndpointHealth(self.url, self.connected.is_set(), s.received, errors, self.last_error)
        ]

    def stop(self) -> None:
        """Store what has arrived, acknowledge it, then disconnect."""
        self._stop.set()
        if self._writer.is_alive():
            self._writer.join(timeout=30)
        self.client.disconnect()
        if self._network.is_alive():
            self._network.join(timeout=10)


def _append_isolating(conn: psycopg.Connection, records: list[LogRecord]) -> int:
    """Append a batch; if PostgreSQL refuses a value in it, append one by one and turn
    each refused record into an error record (its raw payload goes to the dead letters).

    Raises what cannot be handled per record (connection lost: the caller retries; a
    missing table or privilege: the writer dies and the process exits).
    """
    try:
        return append(conn, records).new
    except (psycopg.DataError, psycopg.IntegrityError) as err:
        log.warning("a batch was refused (%s); storing its messages one by one", err.sqlstate)
    new = 0
    for record in records:
        try:
            new += append(conn, [record]).new
        except (psycopg.DataError, psycopg.IntegrityError) as err:
            refused = error_record(
                safe_text(record.source, 1024),
                record.payload,
                "refused",
                f"the database refused it ({err.sqlstate}: "
                f"{safe_text(str(err).splitlines()[0] if str(err) else '', 200)})",
            )
            new += append(conn, [refused]).new
    return new


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # paho leaves Nagle on: measured p99 26 ms vs 0.3 ms with TCP_NODELAY.
    if isinstance(sock, BufferedSocket):
        sock = sock.raw
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def run_collector(
    plant: PlantConfig, mqtt_url: str, database_url: str, settings: Settings | None = None
) -> None:
    """`mesflow run collector-mqtt`: run until SIGINT/SIGTERM, print a line every 10 s.

    Exits with status 1 and says why if a thread of the collector dies.
    """
    settings = settings or get_settings()
    client_id = settings.mqtt_client_id or default_client_id()
    try:
        collector = MqttJsonCollector(
            plant,
            mqtt_url,
            database_url,
            client_id=client_id,
            share_group=settings.mqtt_share_group,
            tls=TlsFiles(settings.mqtt_ca_file, settings.mqtt_cert_file, settings.mqtt_key_file),
            max_payload_bytes=settings.mqtt_max_payload_bytes,
        )
    except ValueError as err:
        print(f"collector-mqtt: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    collector.start()
    health = SourceHealthReporter(database_url, "mqtt", client_id, collector.health)
    health.start()
    print(
        f"collector-mqtt: subscribing to {collector.subscription} on {collector.url} "
        f"as client {client_id!r}",
        flush=True,
    )
    last = time.monotonic()
    while not stopping.wait(0.5):
        if collector.failed.is_set():
            break
        if time.monotonic() - last >= 10:
            s = collector.stats
            print(
                f"collector-mqtt: {s.received} received, {s.stored} stored, "
                f"{s.duplicates} duplicates, {s.with_errors} unmappable",
                flush=True,
            )
            last = time.monotonic()
    collector.stop()
    health.stop()
    if collector.failed.is_set():
        # Unacknowledged messages stay with the broker; a supervisor restarts us.
        print(
            f"collector-mqtt: stopping: {collector.failure} (messages not yet stored stay "
            "with the broker and are delivered again after a restart)",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(1)
    print("collector-mqtt: stopped", flush=True)
