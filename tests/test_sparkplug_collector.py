"""The Sparkplug B host application against a real mosquitto and a real PostgreSQL, fed
by the spec-built test edge node (tests/sparkplug_edge.py). Observed through the broker
(what the edge receives, retained STATE) and the ingest log, not the collector's counters.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collectors.sparkplug import codec
from collectors.sparkplug import sparkplug_b_pb2 as pb
from collectors.sparkplug.codec import Metric
from collectors.sparkplug.collector import SparkplugCollector
from mesflow.plant import PlantConfig
from tests.conftest import EXAMPLE_CONFIG
from tests.helpers import Mesflow, RestartableBroker, mesflow_env
from tests.sparkplug_edge import (
    CNC_GW,
    CNC_METRICS,
    PRESS_GW,
    PRESS_METRICS,
    EdgeNode,
    now_ms,
    sparkplug_plant,
    sparkplug_plant_text,
    wait_for,
)

PRESSES = {"IM-01": PRESS_METRICS, "IM-02": PRESS_METRICS}
IDLE_AND_RUNNING: dict[tuple[str | None, str], Any] = {
    ("IM-01", "Machine/Mode"): 4,
    ("IM-02", "Machine/Mode"): 1,
}


@pytest.fixture(scope="module")
def sp_plant() -> PlantConfig:
    return sparkplug_plant(EXAMPLE_CONFIG)


@pytest.fixture
def collector(
    sp_plant: PlantConfig, broker: RestartableBroker, db_url: str, tmp_path: Path
) -> Iterator[SparkplugCollector]:
    c = SparkplugCollector(
        sp_plant, broker.url, db_url, host_id="test-host", state_file=tmp_path / "host.json"
    )
    c.start()
    assert c.connected.wait(15), "collector did not subscribe"
    try:
        yield c
    finally:
        c.stop()
        assert not c.failed.is_set(), c.failure


def rows(db_url: str) -> list[tuple[str, dict[str, Any] | None, str | None]]:
    """(source, event or None, error) of every ingest log row, in order."""
    with psycopg.connect(db_url) as conn:
        got = conn.execute("SELECT source, payload, error FROM ingest_log ORDER BY seq").fetchall()
    return [(s, None if e else json.loads(bytes(p)), e) for s, p, e in got]


def events(db_url: str, **match: Any) -> list[dict[str, Any]]:
    return [
        e
        for _, e, _ in rows(db_url)
        if e is not None and all(e.get(k) == v for k, v in match.items())
    ]


def errors(db_url: str) -> list[str]:
    return [err for _, _, err in rows(db_url) if err is not None]


class StateWatcher:
    """Subscribes to the host's STATE topic and keeps every message (retained ones too)."""

    def __init__(self, broker: RestartableBroker, host_id: str) -> None:
        self.messages: list[tuple[dict[str, Any], bool]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{time.time_ns()}")
        self.client.on_message = lambda c, u, m: self.messages.append(
            (json.loads(m.payload), m.retain)
        )
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"spBv1.0/STATE/{host_id}", qos=1)
        self.client.loop_start()

    def last(self) -> dict[str, Any] | None:
        return self.messages[-1][0] if self.messages else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_births_and_aliased_data_land_in_the_ingest_log_and_state_is_retained(
    collector: SparkplugCollector, broker: RestartableBroker, db_url: str
) -> None:
    edge = EdgeNode(broker.host, broker.port, PRESS_GW, devices=PRESSES, initial=IDLE_AND_RUNNING)
    edge.connect()
    try:
        wait_for(lambda: len(events(db_url, type="state")) == 2, what="the births' states")
        t1 = now_ms() - 60_000
        edge.data(
            {
                "Machine/Mode": 1,
                "Counters/Total": 101,
                "Counters/Scrap": 3,
                "Process/CycleTime": 31.25,
                "Process/Cushion": 4.5,
                "Process/Recipe": "PX-7",
            },
            device="IM-01",
            ts=t1,
        )
        ts = codec.ms_to_rfc3339(t1)
        wait_for(lambda: events(db_url, type="process_value", ts=ts), what="process values")
        im01 = [e for e in events(db_url, machine="IM-01") if e["ts"] == ts]
        assert sorted((e["type"], e.get("name") or e.get("state") or "") for e in im01) == [
            ("counter", "scrap"),
            ("counter", "total"),
            ("process_value", ""),
            ("state", "running"),
        ]
        pv = next(e for e in im01 if e["type"] == "process_value")
        assert pv["values"] == {"cycle_time_s": 31.25, "cushion_mm": 4.5}
        assert errors(db_url) == [] and edge.rebirths == 0
    finally:
        edge.close()
    # STATE: retained online with the Will's timestamp; offline after a clean stop.
    watcher = StateWatcher(broker, "test-host")
    try:
        wait_for(lambda: watcher.last() is not None, what="retained STATE")
        state, retained = watcher.messages[0]
        assert retained and state == {"online": True, "timestamp": collector._state_ts}
        collector.stop()
        wait_for(lambda: watcher.last() == {"online": False, "timestamp": collector._state_ts})
    finally:
        watcher.close()


def test_a_sequence_gap_sends_one_rebirth_to_that_node_only(
    collector: SparkplugCollector, broker: RestartableBroker, db_url: str
) -> None:
    press = EdgeNode(
        broker.host,
        broker.port,
        PRESS_GW,
        devices=PRESSES,
        initial=IDLE_AND_RUNNING,
        answer_rebirth=True,
    ).connect()
    cnc = EdgeNode(
        broker.host,
        broker.port,
        CNC_GW,
        node_metrics=CNC_METRICS,
        initial={(None, "State"): "idle"},
    ).connect()
    try:
        wait_for(lambda: len(events(db_url, type="state")) == 3, what="births")
        press.data({"Counters/Total": 10}, device="IM-01")
        seq = press.data({"Counters/Total": 11}, device="IM-01", seq=press.seq + 3)  # 3 lost
        cnc.data({"Parts": 5})
        wait_for(lambda: press.rebirths >= 1, what="a Rebirth NCMD at the press gateway")
        # The node answers with NBIRTH + DBIRTHs: two more IM states, then data goes on.
        wait_for(lambda: len(events(db_url, type="state")) == 5, what="the rebirth's births")
        press.data({"Counters/Total": 12}, device="IM-01")
        cnc.data({"Parts": 6})
        wait_for(
            lambda: any(e["value"] == 6 for e in events(db_url, machine="CNC-01", type="counter"))
        )
        wait_for(
            lambda: any(e["value"] == 12 for e in events(db_url, machine="IM-01", type="counter"))
        )
        assert press.rebirths == 1 and cnc.rebirths == 0
        assert [
            e["value"] for e in events(db_url, machine="IM-01", type="counter", name="total")
        ] == [
            0,
            10,
            11,
            11,
            12,
        ]  # the message after the gap is kept; the rebirth reports the current value
        assert seq != 0 and errors(db_url) == []
    finally:
        press.close()
        cnc.close()


def test_ndeath_with_matching_bdseq_takes_the_nodes_machines_offline_a_stale_one_is_ignored(
    collector: SparkplugCollector, broker: RestartableBroker, db_url: str
) -> None:
    edge = EdgeNode(
        broker.host, broker.port, PRESS_GW, devices=PRESSES, initial=IDLE_AND_RUNNING, bdseq=0
    )
    edge.connect()
    wait_for(lambda: len(events(db_url, type="state")) == 2, what="births")
    before = now_ms()
    edge.die()  # no DISCONNECT: the broker publishes the Will NDEATH (bdSeq 0)
    wait_for(lambda: len(events(db_url, state="offline")) == 2, what="offline from the NDEATH")
    offline = events(db_url, state="offline")
    assert sorted(e["machine"] for e in offline) == ["IM-01", "IM-02"]
    assert all(e["reason"] == "connection_lost" for e in offline)  # a built-in reason
    assert all(codec.ms_to_rfc3339(before) <= e["ts"] for e in offline)
    # The node comes back (bdSeq 1); then the old session's death arrives late.
    again = EdgeNode(
        broker.host, broker.port, PRESS_GW, devices=PRESSES, initial=IDLE_AND_RUNNING, bdseq=1
    )
    again.connect()
    try:
        wait_for(lambda: len(events(db_url, type="state")) == 6, what="the new births")
        again.raw(
            "NDEATH", codec.encode([Metric(name="bdSeq", datatype=codec.INT64, value=0)]), qos=1
        )
        again.data({"Counters/Total": 77}, device="IM-02")
        wait_for(lambda: any(e["value"] == 77 for e in events(db_url, type="counter")))
        assert len(events(db_url, state="offline")) == 2  # the stale death changed nothing
        assert errors(db_url) == []
    finally:
        again.close()


def test_data_before_a_birth_asks_for_a_rebirth_and_is_not_guessed(
    collector: SparkplugCollector, broker: RestartableBroker, db_url: str
) -> None:
    edge = EdgeNode(broker.host, broker.port, PRESS_GW, devices=PRESSES, initial=IDLE_AND_RUNNING)
    edge.connect(birth=False)
    try:
        edge.data({"Counters/Total": 555}, device="IM-01")  # no NBIRTH, no DBIRTH
        wait_for(lambda: edge.rebirths == 1, what="a Rebirth NCMD")
        wait_for(lambda: len(errors(db_url)) == 1)
        assert errors(db_url)[0].startswith(
            "no_birth: DDATA from edge node 'press-gw' before its NBIRTH"
        )
        assert events(db_url) == []  # nothing guessed
        # The node answers: births, then the same data is read.
        edge.birth()
        edge.data({"Counters/Total": 556}, device="IM-01")
        wait_for(lambda: any(e["value"] == 556 for e in events(db_url, type="counter")))
        # 555 appears only as the DBIRTH's current value, never read from the early DDATA.
        assert [s for s, e, _ in rows(db_url) if e and e.get("value") == 555] == [
            "sparkplug:spBv1.0/plant1/DBIRTH/press-gw/IM-01"
        ]
    finally:
        edge.close()


def _payload_with(metric: dict[str, Any], seq: int) -> bytes:
    msg = pb.Payload(timestamp=now_ms(), seq=seq)
    m = msg.metrics.add()
    for k, v in metric.items():
        setattr(m, k, v)
    return msg.SerializeToString()


def test_hostile_payloads_are_dead_lettered_with_reasons_and_the_collector_goes_on(
    collector: SparkplugCollector, broker: RestartableBroker, db_url: str
) -> None:
    edge = EdgeNode(broker.host, broker.port, PRESS_GW, devices=PRESSES, initial=IDLE_AND_RUNNING)
    edge.connect()
    try:
        wait_for(lambda: len(events(db_url, type="state")) == 2, what="births")
        good = codec.encode(
            [Metric(alias=1001, datatype=codec.UINT64, value=1, timestamp=now_ms())], seq=3
        )
        huge = codec.encode(
            [Metric(alias=1001, datatype=codec.UINT64, value=i) for i in range(2500)], seq=3
        )
        hostile = {
            "garbage": b"\x00\xff not protobuf at all \xfe",
            "truncated": good[:5],
            "huge": huge,
            "wrong_type": _payload_with(
                {"alias": 1001, "timestamp": now_ms(), "datatype": pb.UInt64, "string_value": "12"},
                3,
            ),
            "nul": _payload_with(
                {"alias": 1005, "timestamp": now_ms(), "string_value": "PX\x007"}, 3
            ),
            "future": _payload_with(
                {"alias": 1001, "timestamp": 32_503_680_000_000 + 1, "long_value": 5}, 3
            ),
            "too_large": b"\x0a" + b"\xff" * (70 * 1024),
        }
        for payload in hostile.values():
            edge.raw("DDATA", payload, device="IM-01")
        wait_for(lambda: len(errors(db_url)) == len(hostile), what="one dead letter each")
        reasons = sorted(e.split(":")[0] for e in errors(db_url))
        assert reasons == sorted(
            [
                "malformed",
                "malformed",
                "too_many_metrics",
                "bad_datatype",
                "bad_text",
                "bad_timestamp",
                "too_large",
            ]
        ), errors(db_url)
        assert not collector.failed.is_set()
        # And it goes on: a good message is stored (after the rebirth the gaps asked for).
        edge.data({"Counters/Total": 4242}, device="IM-01")
        wait_for(lambda: any(e["value"] == 4242 for e in events(db_url, type="counter")))
    finally:
        edge.close()


def test_a_collector_killed_mid_stream_loses_nothing_and_its_will_says_offline(
    broker: RestartableBroker, db_url: str, tmp_path: Path
) -> None:
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(sparkplug_plant_text(EXAMPLE_CONFIG), encoding="utf-8")
    env = mesflow_env(
        db_url,
        tmp_path / "var",
        broker.url,
        MESFLOW_PLANT_CONFIG=str(plant_file),
        MESFLOW_SPARKPLUG_HOST_ID="rt-host",
    )
    log = tmp_path / "sparkplug.log"
    watcher = StateWatcher(broker, "rt-host")
    proc = Mesflow("run", "sparkplug", env=env, log=log)
    wait_for(lambda: (watcher.last() or {}).get("online") is True, 30, "STATE online")
    birth_ts = (watcher.last() or {})["timestamp"]
    # Data at QoS 1 (Sparkplug sends DATA at QoS 0, which no broker keeps for an absent client).
    edge = EdgeNode(
        broker.host, broker.port, PRESS_GW, devices=PRESSES, initial=IDLE_AND_RUNNING, data_qos=1
    ).connect()
    n = 400
    t0 = now_ms() - 3_600_000
    sent = threading.Event()

    def publish() -> None:
        for i in range(1, n + 1):
            edge.data({"Counters/Total": i}, device="IM-01", ts=t0 + i * 1000)
            time.sleep(0.003)
        sent.set()

    try:
        wait_for(lambda: len(events(db_url, type="state")) == 2, 30, "births")
        feeder = threading.Thread(target=publish, daemon=True)
        feeder.start()
        wait_for(lambda: len(events(db_url, type="counter")) > 60, 30, "some data stored")
        proc.kill9()
        # An unclean end: the broker publishes the Will, online=false with the birth's timestamp.
        wait_for(lambda: watcher.last() == {"online": False, "timestamp": birth_ts}, 30, "the Will")
        time.sleep(0.5)
        proc = Mesflow("run", "sparkplug", env=env, log=log)
        assert sent.wait(60)
        wait_for(
            lambda: len(events(db_url, type="counter", name="total")) >= n + 2, 60, "every message"
        )
        totals = [e["value"] for e in events(db_url, machine="IM-01", type="counter", name="total")]
        assert sorted(set(totals)) == list(range(n + 1))  # 0 from the birth, then 1..n
        assert len(totals) == n + 1, "a message was stored twice"
        assert errors(db_url) == []
        assert proc.terminate() == 0
    finally:
        edge.close()
        watcher.close()
        if proc.alive():
            proc.kill9()


def test_a_broker_restart_brings_the_host_back_online_with_a_new_state_timestamp(
    collector: SparkplugCollector, broker: RestartableBroker, db_url: str
) -> None:
    edge = EdgeNode(
        broker.host, broker.port, PRESS_GW, devices=PRESSES, initial=IDLE_AND_RUNNING
    ).connect()
    wait_for(lambda: len(events(db_url, type="state")) == 2, what="births")
    first_ts = collector._state_ts
    edge.close()
    broker.restart(down_s=0.5)
    assert collector.connected.wait(30), "collector did not reconnect"
    watcher = StateWatcher(broker, "test-host")
    again = EdgeNode(
        broker.host, broker.port, PRESS_GW, devices=PRESSES, initial=IDLE_AND_RUNNING, bdseq=1
    ).connect()
    try:
        # Online again, with the timestamp of the Will of the new connection.
        assert collector._state_ts > first_ts
        wait_for(
            lambda: watcher.last() == {"online": True, "timestamp": collector._state_ts},
            30,
            "STATE online again",
        )
        again.data({"Counters/Total": 9}, device="IM-01")
        wait_for(lambda: any(e["value"] == 9 for e in events(db_url, type="counter")))
        assert errors(db_url) == []
    finally:
        again.close()
        watcher.close()


def test_a_stray_offline_state_for_our_host_id_is_answered_by_online(
    collector: SparkplugCollector, broker: RestartableBroker
) -> None:
    watcher = StateWatcher(broker, "test-host")
    online = {"online": True, "timestamp": collector._state_ts}
    try:
        wait_for(lambda: watcher.last() == online, what="STATE online")
        other = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="stray")
        other.connect(broker.host, broker.port)
        other.loop_start()
        stray = json.dumps({"online": False, "timestamp": 1}).encode()
        other.publish("spBv1.0/STATE/test-host", stray, qos=1, retain=True).wait_for_publish(10)
        other.loop_stop()
        other.disconnect()
        wait_for(
            lambda: len(watcher.messages) >= 3 and watcher.last() == online, what="online again"
        )
    finally:
        watcher.close()
