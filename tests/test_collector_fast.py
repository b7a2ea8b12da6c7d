"""The MQTT collector's fast path gives exactly what the reference path gives.

A plain payload (compact JSON as msgspec writes it: what machines and gateways send) is
decoded and encoded by msgspec (`decode_plain`, `record_for_plain`); anything else takes
the stdlib path with its duplicate-key and NaN checks. Records, error reasons and details
must be byte-identical either way, whatever the topic and payload.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collectors import mqtt_json
from collectors.mqtt_conn import BufferedSocket, LeanClient, Received
from collectors.mqtt_json import _map, _topic, map_message
from collectors.topics import machine_topic
from mesflow.ingest_log import (
    canonical_payload,
    decode_object,
    decode_plain,
    record_for,
    record_for_plain,
)
from mesflow.plant import PlantConfig
from mesflow.services import Broker
from tests.helpers import wait_until
from tests.test_mqtt_fuzz import event_fields, json_values, payloads, topics

SETTINGS = settings(max_examples=50, deadline=None)

_compact = msgspec.json.Encoder().encode


def _json_compact(obj: Any, ascii_only: bool) -> bytes:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate: invalid UTF-8 bytes


def _msgspec_or_empty(obj: Any) -> bytes:
    try:
        return _compact(obj)
    except (TypeError, ValueError, UnicodeEncodeError, msgspec.MsgspecError):
        return b"{}"


plain_floats = st.floats(min_value=1e-4, max_value=1e15) | st.sampled_from([0.0, -0.0, -2.5])
plain_events = st.fixed_dictionaries(
    {"ts": st.just("2026-11-20T08:00:00+08:00")},
    optional={
        "good": st.integers(0, 10**6) | plain_floats,
        "scrap": st.integers(-(2**70), 2**70),
        "state": st.sampled_from(["1", "5", "99", "running", "down", 1, 5]),
        "id": st.text(max_size=20),
        "note": st.text(st.characters(codec=None, categories=None), max_size=20),
        "type": st.sampled_from(["state", "count", "report"]),
        "machine": st.sampled_from(["IM-01", "IM-02", "CNC-01"]),
        "extra": st.lists(st.integers() | st.text(max_size=5) | st.none(), max_size=3),
    },
)
odd_events = st.builds(lambda e, v: e | {"extra": v}, plain_events, json_values)
# What senders write: compact (msgspec or stdlib, ASCII-escaped or not), with spaces,
# duplicate keys, and the fuzzer's odd inputs.
all_payloads = st.one_of(
    payloads,
    st.builds(_msgspec_or_empty, plain_events | odd_events | event_fields),
    st.builds(_json_compact, plain_events | odd_events | event_fields, st.booleans()),
    st.builds(lambda e: _compact(e)[:-1] + b',"ts":"x"}', plain_events),  # duplicate key
    st.builds(lambda e: _compact(e).replace(b":", b": ", 1), plain_events),
)
good_topics = st.builds(
    lambda m, t: machine_topic("suzhou", "molding", "IM", m, t),
    st.sampled_from(["IM-01", "IM-02", "CNC-01", "NOPE"]),
    st.sampled_from(["state", "count", "report", "process_value"]),
)


def _reference(plant: PlantConfig, topic: str, payload: bytes) -> Any:
    where, source = _topic(topic)
    return _map(plant, source, where, payload, fast=False)


@SETTINGS
@given(good_topics | topics, all_payloads)
def test_the_fast_path_gives_the_reference_record(
    plant: PlantConfig, topic: str, payload: bytes
) -> None:
    assert map_message(plant, topic, payload) == _reference(plant, topic, payload)


@SETTINGS
@given(good_topics, st.builds(_msgspec_or_empty, plain_events))
def test_compact_events_take_the_fast_path(plant: PlantConfig, topic: str, payload: bytes) -> None:
    """Not a vacuous comparison: what machines send (msgspec's compact JSON) is plain,
    and its record is the reference's."""
    body = decode_plain(payload)
    assert body is not None
    assert body == decode_object(payload)
    assert map_message(plant, topic, payload) == _reference(plant, topic, payload)


def test_a_bench_message_is_plain_and_mapped_alike(plant: PlantConfig) -> None:
    topic = machine_topic("suzhou", "molding", "IM", "IM-01", "state")
    payload = b'{"ts":"2026-11-30T03:00:00.123456+00:00","state":"5","id":"L-0000000001"}'
    assert decode_plain(payload) is not None
    rec = map_message(plant, topic, payload)
    assert rec == _reference(plant, topic, payload)
    assert rec.error is None
    assert json.loads(rec.payload)["state"] == "down"  # EUROMAP 77 mode 5, mapped


def test_every_code_point_is_encoded_as_the_stdlib_does() -> None:
    """record_for_plain writes the payload with msgspec: every Unicode string (as a value
    and as a key) must come out as the stdlib encoder writes it."""
    chars = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(chars), 4096):
        chunk = "".join(chars[start : start + 4096])
        body = {"s": chunk, chunk[:50]: 1}
        assert record_for_plain("t", dict(body)) == record_for("t", dict(body))
        assert canonical_payload(body) == msgspec.json.Encoder(order="sorted").encode(body)


def test_a_lone_surrogate_falls_back_to_the_reference() -> None:
    body = {"ts": "x", "note": "a\ud800b"}
    rec = record_for_plain("t", dict(body))
    assert rec == record_for("t", dict(body))
    assert rec.error is not None and rec.error.startswith("bad_text")


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a":1,"a":2}',  # duplicate keys: the stdlib path refuses them
        b'{"a": 1}',  # spaces
        b'{"a":1e20}',  # exponent forms
        b'{"a":1.5e-7}',
        b'{"a":"\\u00e9"}',  # an escape msgspec does not write
        b'{"a":"\\ud800"}',  # a lone surrogate
        b"[1]",
        b'{"a":' + b"[" * 100 + b"]" * 100 + b"}",  # deep
        b'{"a":' + b"9" * 5000 + b"}",  # huge integer
        b"\xff",
    ],
)
def test_odd_payloads_are_not_plain(payload: bytes) -> None:
    assert decode_plain(payload) is None


def test_the_topic_cache_stays_bounded(plant: PlantConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mqtt_json, "_MAX_TOPICS", 10)
    monkeypatch.setattr(mqtt_json, "_TOPICS", {})
    payload = b'{"ts":"2026-11-30T03:00:00+00:00","good":1}'
    for i in range(25):
        topic = machine_topic("suzhou", "molding", "IM", f"M{i}", "count")
        first = map_message(plant, topic, payload)
        assert map_message(plant, topic, payload) == first  # from the cache
        assert first.machine == f"M{i}" and first.source == f"mqtt:{topic}"
        assert len(mqtt_json._TOPICS) <= 10
    bad = map_message(plant, "not/a/topic", payload)
    assert bad.error is not None and bad.error.startswith("bad_topic")
    assert map_message(plant, "not/a/topic", payload) == bad


@pytest.mark.parametrize(
    "payload",
    [
        b'{"ts":"2026-11-20T08:00:00+08:00","good":1e20}',
        b'{"ts":"2026-11-20T08:00:00+08:00","good":1.5e-7}',
        b'{"ts":"2026-11-20T08:00:00+08:00","good":1,"good":2}',
        b'{"ts":"2026-11-20T08:00:00+08:00","state":"\\u00e9"}',
        b'{"ts":"2026-11-20T08:00:00+08:00","machine":"IM-02"}',
        b'{"ts":"2026-11-20T08:00:00+08:00","type":"count","note":"\\u0000"}',
    ],
)
def test_odd_payloads_map_as_the_reference(plant: PlantConfig, payload: bytes) -> None:
    topic = machine_topic("suzhou", "molding", "IM", "IM-01", "state")
    assert map_message(plant, topic, payload) == _reference(plant, topic, payload)


# -- LeanClient: paho with the collector's cheaper receive path --------------------------


class _Subscriber:
    """A LeanClient with a persistent session and manual acks, as the collector runs it."""

    def __init__(self, broker: Broker, client_id: str, protocol: int = mqtt.MQTTv311) -> None:
        self.got: list[Received | mqtt.MQTTMessage] = []
        self.subscribed = threading.Event()
        v5 = protocol == mqtt.MQTTv5
        self.client = LeanClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            manual_ack=True,
            **({} if v5 else {"clean_session": False}),
        )
        self.client.max_inflight_messages_set(1000)
        self.client.on_message = lambda _c, _u, msg: self.got.append(msg)
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        else:
            self.client.connect(broker.host, broker.port)
        self.client.subscribe("lean/#", qos=1)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish(broker: Broker, payloads: list[bytes]) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lean-pub")
    pub.max_inflight_messages_set(1000)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    infos = [pub.publish(f"lean/{i % 7}", p, qos=1) for i, p in enumerate(payloads)]
    for info in infos:
        info.wait_for_publish(20)
    pub.disconnect()
    pub.loop_stop()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
def test_lean_client_receives_everything_and_ack_many_settles_it(
    broker: Broker, protocol: int
) -> None:
    """Every message arrives once, in order, whole (empty, small, and larger than one
    64 KiB read); acknowledged with ack_many, none comes again after a reconnect, while
    the ones left unacknowledged do."""
    payloads = [b"%d" % i for i in range(3000)]
    payloads[5] = b""
    payloads[17] = bytes(range(256)) * 700  # 179,200 bytes: several reads
    keep = set(payloads[-100:])  # left unacknowledged
    sub = _Subscriber(broker, f"lean-{protocol}", protocol)
    try:
        publisher = threading.Thread(target=_publish, args=(broker, payloads))
        publisher.start()
        acked = 0
        deadline = time.monotonic() + 30
        # Acknowledge in batches as they come (the broker sends a bounded window ahead).
        while acked < len(payloads) - 100 and time.monotonic() < deadline:
            batch = sub.got[acked:]
            settled = [m.mid for m in batch if bytes(m.payload) not in keep]
            sub.client.ack_many(settled)
            acked += len(settled)
            time.sleep(0.05)
        publisher.join(30)
        wait_until(lambda: len(sub.got) >= len(payloads), what="every message")
        assert all(type(m) is Received for m in sub.got)  # the lean path, not paho's
        assert [bytes(m.payload) for m in sub.got] == payloads
        assert {m.topic for m in sub.got} == {f"lean/{i}" for i in range(7)}
        assert {m.qos for m in sub.got} == {1}
        time.sleep(1.0)
    finally:
        sub.close()
    again = _Subscriber(broker, f"lean-{protocol}", protocol)
    try:
        wait_until(lambda: len(again.got) >= 100, what="the unacknowledged messages again")
        time.sleep(1.0)
        assert [bytes(m.payload) for m in again.got] == payloads[-100:]
        again.client.ack_many([m.mid for m in again.got])
        time.sleep(0.5)
    finally:
        again.close()
    third = _Subscriber(broker, f"lean-{protocol}", protocol)
    try:
        time.sleep(1.5)
        assert third.got == []
    finally:
        third.close()


def test_buffered_socket_hands_out_what_it_read() -> None:
    a, b = socket.socketpair()
    try:
        a.sendall(b"\x30\x05hello\x40\x02\x00\x01")
        time.sleep(0.05)
        sock = BufferedSocket(b)
        assert sock.recv(1) == b"\x30"
        assert sock.pending() == sock.buffered() == 10
        assert sock.recv(1) == b"\x05" and sock.recv(5) == b"hello"
        assert sock.recv(100) == b"\x40\x02\x00\x01"
        assert sock.pending() == 0
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        a.close()
        assert sock.recv(1) == b""  # end of stream, as paho expects it
    finally:
        b.close()


def test_acks_from_another_thread_go_out_at_once_under_loop_forever(broker: Broker) -> None:
    """The collector runs paho's loop_forever in its own thread and acknowledges from the
    writer thread: each ack_many must wake the network thread to write it. Without a
    wake-up the acks waited for select's 1 s timeout (or the next incoming packet) while
    the broker, its window of unacknowledged messages full, sent nothing more: 0.6 s
    latency at 5,000 messages/s."""
    got: list[Received | mqtt.MQTTMessage] = []
    subscribed = threading.Event()
    client = LeanClient(
        CallbackAPIVersion.VERSION2, client_id="lean-forever", clean_session=True, manual_ack=True
    )
    client.on_message = lambda _c, _u, msg: got.append(msg)
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect(broker.host, broker.port)
    client.subscribe("lean/#", qos=1)
    network = threading.Thread(target=client.loop_forever, daemon=True)
    network.start()
    try:
        assert subscribed.wait(10)
        _publish(broker, [b"x"] * 50)
        wait_until(lambda: len(got) >= 50, what="the messages")
        time.sleep(0.5)  # nothing more arrives: only a wake-up gets the acks written now
        for round_ in range(3):
            client.ack_many([m.mid for m in got[round_ * 10 : round_ * 10 + 10]])
            started = time.monotonic()
            while client.want_write() and time.monotonic() - started < 2:
                time.sleep(0.005)
            took = time.monotonic() - started
            assert not client.want_write() and took < 0.2, f"the acks waited {took:.2f} s"
    finally:
        client.disconnect()
        network.join(10)


@pytest.mark.timeout(300)
def test_collector_bench_counts_every_row_and_leaves_nothing() -> None:
    """bench/collector_bench.py, small: every message sent is stored, its figures are
    printed, and nothing of the run is left (files or processes)."""
    from tests.test_bench_cleanup import _assert_clean, _run

    short = Path(tempfile.mkdtemp(prefix="mfc-", dir="/tmp"))  # PostgreSQL's socket path
    try:
        tmp = short / "tmp"
        out = _run("collector_bench.py", ["--count", "3000", "--machines", "12"], tmp, 240)
        stored = re.search(r"^stored ([\d,]+) of ([\d,]+) sent", out, re.M)
        assert stored and stored[1] == stored[2] == "3,000", out
        assert re.search(r"collector CPU [\d.]+ µs per stored row", out), out
        assert re.search(r"rows per commit \(p10/p50/p90 \d+/\d+/\d+\)", out), out
        assert "latency publish -> ingest log" in out
        _assert_clean(tmp)
    finally:
        shutil.rmtree(short, ignore_errors=True)
