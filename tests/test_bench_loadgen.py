"""The load generator counts what it really sent (bench/loadgen.py), against a real mosquitto."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench.loadgen import (
    ID_DIGITS,
    ID_MARK,
    TS_MARK,
    TS_WIDTH,
    LoadGenerator,
    plain_templates,
    template,
)
from tests.helpers import RestartableBroker


class Subscriber:
    """A QoS 1 paho subscriber that keeps every payload it receives."""

    def __init__(self, broker: RestartableBroker, topic: str) -> None:
        self.payloads: list[bytes] = []
        self.topics: list[str] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{time.time_ns()}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.payloads.append(bytes(msg.payload))
        self.topics.append(msg.topic)

    def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.payloads) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # anything beyond n would show up now

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.timeout(120)
def test_every_acknowledged_message_arrives_once(broker: RestartableBroker) -> None:
    sub = Subscriber(broker, "lg/#")
    try:
        gen = LoadGenerator(broker.host, broker.port, plain_templates("lg", 2, "x"), count=5001)
        gen.start()
        result = gen.join(60)
        sub.wait_for(5001)
    finally:
        sub.close()
    assert result.written == result.acked == 5001
    assert sum(result.acked_per_second) == 5001
    assert len(sub.payloads) == 5001
    events = [json.loads(p) for p in sub.payloads]
    ids = [e["id"] for e in events]
    assert len(set(ids)) == 5001  # every message a distinct event id
    assert all(datetime.fromisoformat(e["ts"]).tzinfo is not None for e in events)
    assert sorted(set(sub.topics)) == ["lg/0", "lg/1"]


@pytest.mark.timeout(120)
def test_a_paced_run_sends_at_its_rate_and_stamps_the_send_time(broker: RestartableBroker) -> None:
    cycle = [
        template("pace/a/count", {"ts": TS_MARK, "good": 1, "id": ID_MARK}, "p-"),
        template("pace/a/state", {"ts": TS_MARK, "state": "running", "id": ID_MARK}, "p-"),
    ]
    sub = Subscriber(broker, "pace/#")
    try:
        gen = LoadGenerator(broker.host, broker.port, [cycle], rate=1000, seconds=2.0)
        started = gen.start()
        result = gen.join(60)
        sub.wait_for(result.acked)
    finally:
        sub.close()
    assert result.written == result.acked == len(sub.payloads)
    assert 1800 <= result.acked <= 2100
    events = [json.loads(p) for p in sub.payloads]
    assert [e["id"] for e in events[:2]] == ["p-0000000000", "p-0000000001"]
    assert set(sub.topics) == {"pace/a/count", "pace/a/state"}
    assert {e.get("state") for e in events} == {None, "running"}
    stamps = [datetime.fromisoformat(e["ts"]).timestamp() for e in events]
    # stamped when sent: within the run, in order
    assert started - 0.01 <= stamps[0] and stamps[-1] <= started + 2.5
    assert stamps == sorted(stamps)


@pytest.mark.timeout(120)
def test_messages_the_broker_never_acknowledged_are_not_counted(
    broker: RestartableBroker,
) -> None:
    """The broker goes away mid-run: what it did not acknowledge is not reported as sent."""
    gen = LoadGenerator(
        broker.host, broker.port, plain_templates("gone", 1, "g"), rate=2000, seconds=3
    )
    gen.start()
    time.sleep(1.0)
    broker.process.kill()
    with pytest.raises(RuntimeError):
        gen.join(60)  # the worker's connection broke: no result, no made-up count
    written, acked = gen.progress()
    assert 1000 <= acked < written < 6000  # what went into the socket after the kill is not "sent"


def _remaining_length(packet: bytes) -> tuple[int, int]:
    """(remaining length, header size) of an MQTT packet."""
    value, shift, i = 0, 0, 1
    while True:
        byte = packet[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


@pytest.mark.parametrize("extra", [0, 100, 200, 20_000])
def test_a_template_is_a_well_formed_qos1_publish(extra: int) -> None:
    """Built by hand as MQTT 3.1.1 says, whatever the size (1- to 3-byte lengths)."""
    topic = "mesflow/v1/suzhou/molding/IM/IM-01/count"
    t = template(topic, {"ts": TS_MARK, "good": 1, "pad": "x" * extra, "id": ID_MARK}, "ab-")
    ts = b"2026-11-30T03:00:00.123456+00:00"
    assert len(ts) == TS_WIDTH
    packet = t.head + (7).to_bytes(2, "big") + t.pre + ts + t.mid + b"0000000042" + t.post
    assert len(packet) == t.size
    assert packet[0] == 0x32  # PUBLISH, QoS 1, no DUP, no RETAIN
    remaining, header = _remaining_length(packet)
    assert header + remaining == len(packet)
    topic_len = int.from_bytes(packet[header : header + 2], "big")
    assert packet[header + 2 : header + 2 + topic_len].decode() == topic
    at = header + 2 + topic_len
    assert packet[at : at + 2] == b"\x00\x07"  # the packet id
    event = json.loads(packet[at + 2 :])
    assert event == {
        "ts": ts.decode(),
        "good": 1,
        "pad": "x" * extra,
        "id": "ab-" + "0" * (ID_DIGITS - 2) + "42",
    }
