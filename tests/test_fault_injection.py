"""The fault-injection run: a live feed through the real MQTT collector and the real live
dataflow (`mesflow run collector-mqtt`, `mesflow run dataflow`, child processes), while
the collector and the dataflow are killed with SIGKILL three times each, the broker is
restarted (with persistence) and PostgreSQL crashes and comes back.

Then: every message the broker acknowledged to the machines is in the ingest log exactly
once, and every result table equals a clean replay of the same log into a fresh database.
The run prints what was sent, stored, dead-lettered, lost and doubled.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from collectors.topics import machine_topic
from mesflow.plant import PlantConfig
from tests.helpers import (
    SHANGHAI,
    Mesflow,
    OwnPostgres,
    RestartableBroker,
    clean_replay,
    count,
    dataflow_position,
    diff_snapshots,
    log_position,
    mesflow_env,
    random_events,
    table_snapshot,
    wait_until,
)

FEED_SECONDS = 32.0
EVENTS = 3600


class Feed(threading.Thread):
    """Machines publishing at a steady rate (QoS 1). An event counts as sent once the
    broker has acknowledged it; through a broker restart it is published again until
    acknowledged (its id makes a second copy harmless)."""

    def __init__(self, broker: RestartableBroker, plant: PlantConfig, events: list[dict[str, Any]]):
        super().__init__(name="feed", daemon=True)
        self.events = events
        self.plant = plant
        self.sent: set[str] = set()
        self.republished = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fault-feed")
        self.client.reconnect_delay_set(1, 1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def topic(self, ev: dict[str, Any]) -> str:
        known = self.plant.line_of_machine.get(ev["machine"])
        line = known or self.plant.line_of_machine["IM-01"]  # an unknown machine, same line
        return machine_topic(self.plant.plant.site, line.area, line.id, ev["machine"], ev["type"])

    def run(self) -> None:
        start = time.monotonic()
        for i, ev in enumerate(self.events):
            due = start + FEED_SECONDS * i / len(self.events)
            time.sleep(max(0.0, due - time.monotonic()))
            body = json.dumps(ev)
            while True:
                info = self.client.publish(self.topic(ev), body, qos=1)
                try:
                    if info.rc == mqtt.MQTT_ERR_SUCCESS:
                        info.wait_for_publish(3)
                        if info.is_published():
                            break
                except (RuntimeError, ValueError):
                    pass  # the connection dropped under it
                self.republished += 1
                time.sleep(0.2)
            self.sent.add(ev["id"])
        self.client.loop_stop()
        self.client.disconnect()


class Component:
    """A component under a supervisor: restarted when it dies (as systemd would)."""

    def __init__(self, name: str, args: tuple[str, ...], env: dict[str, str], log: Path):
        self.name, self.args, self.env, self.log = name, args, env, log
        self.kills = 0
        self.exits: list[int] = []  # exits nobody asked for
        self.proc = Mesflow(*args, env=env, log=log)

    def kill9(self, down_s: float = 0.5) -> None:
        self.proc.kill9()
        self.kills += 1
        time.sleep(down_s)
        self.proc = Mesflow(*self.args, env=self.env, log=self.log)

    def supervise(self) -> None:
        code = self.proc.proc.poll()
        if code is not None:
            self.exits.append(code)
            self.proc = Mesflow(*self.args, env=self.env, log=self.log)

    def stop(self) -> int:
        return self.proc.terminate(timeout=30)


def _stored_ids(url: str) -> dict[str, int]:
    """Event id -> rows in the ingest log."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT convert_from(payload, 'UTF8')::jsonb ->> 'id', count(*) FROM ingest_log "
            "WHERE error IS NULL GROUP BY 1"
        ).fetchall()
        errors = conn.execute("SELECT payload FROM ingest_log WHERE error IS NOT NULL").fetchall()
    ids = {str(r[0]): int(r[1]) for r in rows if r[0] is not None}
    for (payload,) in errors:  # refused by the collector, still stored: count them too
        try:
            event_id = json.loads(bytes(payload)).get("id")
        except (ValueError, AttributeError):
            continue
        if isinstance(event_id, str):
            ids[event_id] = ids.get(event_id, 0) + 1
    return ids


def test_faults_during_a_live_feed_lose_nothing_and_equal_a_clean_replay(
    broker: RestartableBroker,
    own_pg: OwnPostgres,
    ref_db_url: str,
    plant: PlantConfig,
    tmp_path: Path,
) -> None:
    url = own_pg.url
    start = (datetime.now(SHANGHAI) - timedelta(hours=5)).isoformat()
    events = random_events(list(plant.machines), EVENTS, seed=77, start=start)
    assert max(datetime.fromisoformat(e["ts"]) for e in events) < datetime.now(SHANGHAI)

    env = mesflow_env(
        url,
        tmp_path / "var",
        broker.url,
        MESFLOW_MQTT_CLIENT_ID="fault-collector",
        MESFLOW_SNAPSHOT_SECONDS="1",
    )
    collector = Component("collector", ("run", "collector-mqtt"), env, tmp_path / "collector.log")
    dataflow = Component("dataflow", ("run", "dataflow"), env, tmp_path / "dataflow.log")
    # The collector's first subscription creates its session: only then may the feed begin.
    wait_until(
        lambda: (
            "session present" in collector.proc.output()
            and "following the ingest log" in dataflow.proc.output()
        ),
        timeout=30,
        what="the components to start",
    )
    time.sleep(1.0)
    feed = Feed(broker, plant, events)
    t0 = time.monotonic()
    feed.start()

    schedule: list[tuple[float, str, Any]] = [
        (3, "kill -9 collector", collector.kill9),
        (6, "kill -9 dataflow", dataflow.kill9),
        (9, "broker restart", lambda: broker.restart(down_s=1.0)),
        (13, "kill -9 collector", collector.kill9),
        (16, "PostgreSQL crash and restart", lambda: own_pg.restart(down_s=2.0)),
        (21, "kill -9 dataflow", dataflow.kill9),
        (24, "kill -9 collector", collector.kill9),
        (28, "kill -9 dataflow", dataflow.kill9),
    ]
    for at, what, fault in schedule:
        while time.monotonic() - t0 < at:
            collector.supervise()
            dataflow.supervise()
            time.sleep(0.1)
        print(f"{time.monotonic() - t0:5.1f}s  {what}", flush=True)
        fault()
    feed.join(timeout=120)
    assert not feed.is_alive(), "the feed did not finish"

    def all_stored() -> bool:
        collector.supervise()
        dataflow.supervise()
        return len(feed.sent - set(_stored_ids(url))) == 0

    with contextlib.suppress(AssertionError):  # counted and reported below
        wait_until(all_stored, timeout=60, what="every sent event in the ingest log")

    def caught_up() -> bool:
        dataflow.supervise()
        return dataflow_position(url) >= log_position(url)

    wait_until(caught_up, timeout=90, what="the dataflow to take in the whole log")
    time.sleep(1.5)  # the throttled figures follow within a second
    assert collector.stop() == 0, collector.proc.output()[-3000:]
    assert dataflow.stop() == 0, dataflow.proc.output()[-3000:]

    stored = _stored_ids(url)
    sent = feed.sent
    lost = sorted(sent - set(stored))
    doubled = sorted(i for i, n in stored.items() if n > 1)
    dead = count(url, "SELECT count(*) FROM dead_letter")
    log_rows = count(url, "SELECT count(*) FROM ingest_log")
    # Overdue patrols: decided by the wall clock live, by the last event time in a replay;
    # left out (helpers.WALL_CLOCK_DECIDED), everything else compared.
    want = clean_replay(url, ref_db_url, tmp_path / "rec-ref", live=True)
    got = table_snapshot(url, live=True)
    print(
        f"fault run: {len(events)} events sent ({feed.republished} publishes repeated after a "
        f"broker restart), {log_rows} stored in the ingest log, {dead} dead-lettered, "
        f"{len(lost)} lost, {len(doubled)} doubled; collector killed {collector.kills}x, "
        f"dataflow killed {dataflow.kills}x, broker restarted 1x, PostgreSQL crashed 1x; "
        f"unexpected exits: collector {collector.exits}, dataflow {dataflow.exits}; "
        f"result rows compared: {sum(len(v) for v in want.values())}"
    )
    assert len(sent) == len(events)
    assert not lost, f"lost {len(lost)}: {lost[:10]}"
    assert not doubled, f"stored twice: {doubled[:10]}"
    assert log_rows == len(events)
    assert dead > 0  # the feed holds invalid events: they must be dead letters, not dropped
    assert not diff_snapshots(got, want), diff_snapshots(got, want)
    assert got == want
