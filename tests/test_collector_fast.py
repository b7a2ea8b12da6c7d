"""The MQTT collector's fast path gives exactly what the reference path gives.

A plain payload (compact JSON as msgspec writes it: what machines and gateways send) is
decoded and encoded by msgspec (`decode_plain`, `record_for_plain`); anything else takes
the stdlib path with its duplicate-key and NaN checks. Records, error reasons and details
must be byte-identical either way, whatever the topic and payload.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors import mqtt_json
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
