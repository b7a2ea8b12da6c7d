"""Publish the simulated plant live over MQTT, in the topic scheme of collectors/topics.py.

The simulated clock never runs ahead of the wall clock (a real machine cannot report the
future, and the pipeline dead-letters such events `future`): a speed above 1 plays the past
quickly until it reaches now, then the plant runs in real time. A restart resumes where the
previous run's simulated time stopped (kept in a small state file), so it never goes back
in time and re-sends nothing (see `resume_start`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

from collectors.mqtt_conn import TlsFiles, configure_client, parse_mqtt_url
from collectors.topics import machine_topic
from mesflow.plant import PlantConfig
from mesflow.settings import get_settings

from .model import OpenRun, closing_events, end_of, generate_timed

_PROGRESS_EVERY_S = 10.0
# How far back a first run with --speed above 1 starts, so that it has a past to play fast.
BACKFILL = timedelta(hours=4)
# The state file is written ahead of what is published, in steps of this much simulated
# time: after a crash the next run skips at most this much, and never publishes an event
# twice (a resumed run's events have other ids, so an overlap would count parts twice).
_STATE_STEP_MS = 10_000
_MAX_UNACKED = 5_000  # publishes waiting for PUBACK before the simulator slows down
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


def native_codes(plant: PlantConfig) -> dict[str, dict[str, str]]:
    """Per machine with a `state_mapping`: canonical state -> the first native code for it."""
    out: dict[str, dict[str, str]] = {}
    for mid, machine in plant.machines.items():
        if not machine.state_mapping:
            continue
        reverse: dict[str, str] = {}
        for code, state in plant.state_mappings[machine.state_mapping].items():
            reverse.setdefault(state, code)
        out[mid] = reverse
    return out


def topics(plant: PlantConfig) -> dict[str, dict[str, str]]:
    """machine id -> event type -> topic."""
    site = plant.plant.site
    out: dict[str, dict[str, str]] = {}
    for mid, line in plant.line_of_machine.items():
        out[mid] = {
            t: machine_topic(site, line.area, line.id, mid, t)
            for t in ("state", "count", "counter", "report", "process_value")
        }
    return out


def payload(ev: dict[str, Any], native: dict[str, str] | None) -> str:
    """The event without `type` and `machine` (the topic carries them), native state codes."""
    body = {k: v for k, v in ev.items() if k != "type" and k != "machine"}
    if native is not None and ev["type"] == "state":
        # States without a native code (planned_stop in EUROMAP 77) go out canonical:
        # the collector accepts canonical states from any source.
        body["state"] = native.get(body["state"], body["state"])
    return _encode(body)


class _Client:
    """paho client with connection and acknowledgement bookkeeping."""

    def __init__(self, url: str, client_id: str) -> None:
        # Credentials and TLS as the collector takes them (docs/broker.md); errors never
        # show the password.
        endpoint = parse_mqtt_url(url)
        settings = get_settings()
        self.host = endpoint.host
        self.port = endpoint.port
        self.connected = threading.Event()
        self.published = 0
        self.acked = 0
        self._lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        configure_client(
            c,
            endpoint,
            TlsFiles(settings.mqtt_ca_file, settings.mqtt_cert_file, settings.mqtt_key_file),
        )
        c.on_socket_open = self._on_socket_open
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.reconnect_delay_set(1, 5)
        c.max_inflight_messages_set(100)
        self.client = c

    @staticmethod
    def _on_socket_open(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Small messages, one at a time: without NODELAY each PUBLISH waits on Nagle.
        with suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if not rc.is_failure:
            self.connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        self.connected.clear()

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any
    ) -> None:
        with self._lock:
            self.acked += 1

    def start(self) -> None:
        # connect_async + loop_start: the network thread keeps retrying until the broker is up.
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def publish(self, topic: str, body: str) -> None:
        # QoS 1 messages are queued by paho while disconnected and sent after a reconnect.
        self.client.publish(topic, body, qos=1)
        self.published += 1

    @property
    def unacked(self) -> int:
        with self._lock:
            return self.published - self.acked

    def finish(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.unacked > 0 and self.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the simulator like Ctrl-C (only possible in the main thread)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def read_state(state_file: Path) -> datetime | None:
    """The simulated time the previous run reached (None: no usable state)."""
    try:
        data = json.loads(state_file.read_text("utf-8"))
        return datetime.fromisoformat(data["resume_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_state(state_file: Path, resume_at: datetime) -> None:
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"resume_at": resume_at.isoformat()}) + "\n", encoding="utf-8")
    os.replace(tmp, state_file)  # atomic: a crash leaves the old or the new state


def resume_start(
    previous: datetime | None, now: datetime, speed: float, backfill: timedelta = BACKFILL
) -> datetime:
    """Where a run without --start begins.

    The previous run's end when there is one and it is not older than the backfill (speed
    above 1: that stretch is played fast, so nothing is missed); else now minus the backfill
    at a speed above 1 (a past to play fast), now at real time or slower. Never before the
    previous end (that would resend events), never after now.
    """
    earliest = now - backfill if speed > 1 else now
    if previous is None:
        return earliest
    return min(max(previous, earliest), now)


# A work order the CRM planned on this machine for this product, of an open order, not
# started yet and not taken over already: the most urgent first.
_CLAIM_SQL = """
SELECT w.work_order
  FROM work_order w
  JOIN crm_order o ON o.order_no = w.order_no
  LEFT JOIN work_order_progress p ON p.work_order = w.work_order
 WHERE w.machine = %s AND w.product = %s AND o.status = 'open'
   AND p.started_at IS NULL AND NOT (w.work_order = ANY(%s::text[]))
 ORDER BY o.priority, o.due, w.work_order
 LIMIT 1
"""


# Per machine, the work order of its newest run that has not ended.
_OPEN_RUNS_SQL = """
SELECT DISTINCT ON (machine) machine, work_order, operation, product
  FROM inspection_run
 WHERE end_ts IS NULL
 ORDER BY machine, start_ts DESC
"""


class WorkOrderSink:
    """`work_order` events (which work order makes which product) have no MQTT topic: the
    MES itself creates them. The simulator, standing in for the MES's planner, appends them
    to the ingest log, the path every source's events take.

    Before that it takes over a work order the CRM planned on that machine for that product
    and that has not started (the CRM stand-in's `WO-<machine>-<n>`): the simulated work
    order then runs under the CRM's id (`rename`, for all its events and routing steps), so
    the demo's machines produce for the CRM's orders; its own `work_order` event is not
    sent, neither when a later routing step dispatches it to its machine. A work order the
    CRM already created under the same id keeps the CRM's order and product: the
    simulator's event for it is not sent either."""

    def __init__(self, database_url: str | None) -> None:
        self._url = database_url
        self._conn: Any = None
        self.sent = 0
        self.taken: dict[str, str] = {}  # the simulator's work order -> the CRM's
        self._own: set[str] = set()  # the simulator's own work orders sent so far

    def rename(self, work_order: str) -> str:
        return self.taken.get(work_order, work_order)

    def open_runs(self) -> list[OpenRun]:
        """Each machine's work order still running in the results (the newest open
        inspection run): what the previous run left on the machines. Empty without a
        database, or when it cannot be read (said on stdout: the run goes on)."""
        if self._url is None:
            return []
        from mesflow.db import connect

        try:
            if self._conn is None:
                self._conn = connect(self._url, autocommit=True)
            rows = self._conn.execute(_OPEN_RUNS_SQL).fetchall()
        except psycopg.Error as err:
            print(f"simulator: cannot read the running work orders: {err}", flush=True)
            return []
        return [OpenRun(*row) for row in rows]

    def send(self, ev: dict[str, Any]) -> None:
        if self._url is None:
            return
        from mesflow.db import connect
        from mesflow.ingest_log import append, record_for

        wo = ev["work_order"]
        if wo in self.taken:
            return
        if self._conn is None:
            self._conn = connect(self._url, autocommit=True)
        if wo in self._own:  # dispatched to a later routing step's machine: no take-over
            append(self._conn, [record_for("simulator", ev)])
            self.sent += 1
            return
        with self._conn.cursor() as cur:
            cur.execute("SELECT 1 FROM work_order WHERE work_order = %s", (ev["work_order"],))
            if cur.fetchone() is not None:
                return
            cur.execute(_CLAIM_SQL, (ev["machine"], ev["product"], list(self.taken.values())))
            row = cur.fetchone()
            if row is not None:
                self.taken[ev["work_order"]] = row[0]
                print(f"simulator: {ev['machine']} runs the CRM's work order {row[0]}", flush=True)
                return
        append(self._conn, [record_for("simulator", ev)])
        self._own.add(wo)
        self.sent += 1

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def run_simulator(
    plant: PlantConfig,
    mqtt_url: str,
    *,
    seed: int,
    speed: float,
    start: datetime | None,
    duration_s: float | None,
    state_file: Path | None = None,
    database_url: str | None = None,
    process_values_s: float = 0.0,
) -> None:
    """Publish the simulated plant over MQTT, paced at `speed` simulated seconds per second
    but never ahead of the wall clock. `process_values_s`: see `generate_timed` (0: none).

    Runs until `duration_s` simulated seconds are published (None: until Ctrl-C/SIGTERM).
    Without `start`, resumes from `state_file` (see `resume_start`); the file is kept up
    to date while publishing. `work_order` events go to the ingest log at `database_url`
    (see `WorkOrderSink`); without one they are left out.
    """
    if speed <= 0:
        raise ValueError("speed must be positive")
    now = datetime.now(plant.tz).replace(microsecond=0)
    previous = read_state(state_file) if state_file is not None else None
    if start is None:
        start = resume_start(previous, now, speed).astimezone(plant.tz)
        if previous is not None:
            print(
                f"simulator: previous run reached {previous.astimezone(plant.tz).isoformat()}; "
                f"resuming at {start.isoformat()}",
                flush=True,
            )
    end = end_of(start, duration_s)
    topic = topics(plant)
    native = native_codes(plant)
    client = _Client(mqtt_url, f"mesflow-sim-{seed}")
    sink = WorkOrderSink(database_url)
    where = f"{client.host}:{client.port}"
    n_machines = len(plant.machines)
    interrupted = False
    with _sigterm_as_interrupt():
        client.start()
        try:
            if not client.connected.wait(5):
                print(f"simulator: waiting for the MQTT broker at {where} ...", flush=True)
                client.connected.wait()
            print(
                f"simulator: connected to {where}; {n_machines} machines, seed {seed}, "
                f"speed {speed:g}x, simulated start {start.isoformat()}",
                flush=True,
            )
            if previous is not None:
                # The previous run's work orders end where this one starts (its own first
                # work orders would displace them unended).
                for ev in closing_events(plant, sink.open_runs(), start):
                    client.publish(
                        topic[ev["machine"]][ev["type"]], payload(ev, native.get(ev["machine"]))
                    )
                    if ev["kind"] == "wo_end":
                        print(
                            f"simulator: {ev['machine']}'s work order {ev['work_order']} from"
                            " the previous run ends at the resume",
                            flush=True,
                        )
            _publish_paced(
                plant, client, topic, native, seed, speed, start, end, state_file, sink,
                process_values_s,
            )  # fmt: skip
        except KeyboardInterrupt:
            interrupted = True
        finally:
            sink.close()
            # Let queued QoS 1 messages reach the broker, but do not hang on Ctrl-C.
            client.finish(timeout_s=2 if interrupted else 30)
    what = "stopped" if interrupted else "done"
    print(f"simulator: {what}, {client.published} events published", flush=True)


def _publish_paced(
    plant: PlantConfig,
    client: _Client,
    topic: dict[str, dict[str, str]],
    native: dict[str, dict[str, str]],
    seed: int,
    speed: float,
    start: datetime,
    end: datetime | None,
    state_file: Path | None = None,
    sink: WorkOrderSink | None = None,
    process_values_s: float = 0.0,
) -> None:
    start_ms = start.timestamp() * 1000
    wall0 = time.monotonic()
    next_progress = wall0 + _PROGRESS_EVERY_S
    state_ms = -1.0  # the simulated time the state file promises not to go back behind
    if state_file is not None:
        write_state(state_file, start)

    def progress() -> None:
        nonlocal next_progress
        now = time.monotonic()
        if now >= next_progress:
            next_progress = now + _PROGRESS_EVERY_S
            print(
                f"simulator: {client.published} events published, "
                f"simulated time {_local(min(start_ms + (now - wall0) * speed * 1000, time.time() * 1000), plant)}",
                flush=True,
            )

    events = generate_timed(
        plant, seed=seed, start=start, end=end, process_values_s=process_values_s
    )
    for ts_ms, ev in events:
        # Due at `speed` from the start, and not before the wall clock reaches the event's
        # time. Sleep in short steps so progress lines keep coming through quiet periods.
        due = wall0 + (ts_ms - start_ms) / 1000 / speed
        while (wait := max(due - time.monotonic(), ts_ms / 1000 - time.time())) > 0:
            time.sleep(min(wait, 1.0))
            progress()
        if state_file is not None and ts_ms >= state_ms:
            # Written before the event goes out: a restart starts after it (see _STATE_STEP_MS).
            state_ms = ts_ms + _STATE_STEP_MS
            write_state(state_file, datetime.fromtimestamp(state_ms / 1000, UTC))
        while client.unacked > _MAX_UNACKED:  # the broker is slower than the simulated plant
            time.sleep(0.01)
        if ev["type"] == "work_order":
            if sink is not None:
                sink.send(ev)
            continue
        if sink is not None and "work_order" in ev:
            ev["work_order"] = sink.rename(ev["work_order"])
        client.publish(topic[ev["machine"]][ev["type"]], payload(ev, native.get(ev["machine"])))
        progress()


def _local(ms: float, plant: PlantConfig) -> str:
    return datetime.fromtimestamp(ms / 1000, plant.tz).strftime("%Y-%m-%d %H:%M:%S")
