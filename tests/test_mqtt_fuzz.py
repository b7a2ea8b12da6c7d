"""Property-based fuzzing of the MQTT decoders: the topic parser and map_message never raise
on any topic or payload, and whatever they return can be stored in the ingest log."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.mqtt_json import map_message
from collectors.topics import MACHINE_TYPES, PREFIX, TopicError, machine_topic, parse_topic
from mesflow.ingest_log import LogRecord, append
from mesflow.plant import PlantConfig

FUZZ = settings(max_examples=50, deadline=None)
REASONS = {
    "bad_topic",
    "too_large",
    "malformed",
    "bad_text",
    "invalid_field",
    "unmapped_state",
}

# Text as MQTT can carry it and worse: lone surrogates, NUL, separators, wildcards.
any_text = st.text(st.characters(codec=None, categories=None), max_size=60)
level = st.one_of(
    st.sampled_from(["suzhou", "molding", "IM", "IM-01", "IM-03", "CNC-01", "", "+", "#"]),
    any_text,
)
topics = st.one_of(
    any_text,
    st.builds(
        lambda parts: "/".join(parts),
        st.lists(level, min_size=0, max_size=9),
    ),
    st.builds(
        lambda s, a, li, m, t: f"{PREFIX}/{s}/{a}/{li}/{m}/{t}",
        level,
        level,
        level,
        level,
        st.one_of(st.sampled_from(MACHINE_TYPES), any_text),
    ),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=20,
)
event_fields = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(MACHINE_TYPES), json_values),
        "machine": st.one_of(st.sampled_from(["IM-01", "IM-03", "IM-02"]), json_values),
        "ts": st.one_of(st.just("2026-11-20T08:00:00+08:00"), json_values),
        "state": st.one_of(st.sampled_from(["1", "5", "99", "running", 1, 5]), json_values),
        "good": json_values,
        "id": json_values,
    },
)


def _raw_json(obj: Any) -> bytes:
    """JSON as a sender would write it: escapes make lone surrogates and NUL valid JSON."""
    return json.dumps(obj).encode()


payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(_raw_json, json_values),
    st.builds(_raw_json, event_fields),
    st.builds(lambda b, n: b * n, st.sampled_from([b"[", b'{"a":', b"{"]), st.integers(0, 3000)),
)


def _storable(text: str | None) -> bool:
    if text is None:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _check(plant: PlantConfig, topic: str, payload: bytes) -> LogRecord:
    rec = map_message(plant, topic, payload)
    assert isinstance(rec, LogRecord)
    assert _storable(rec.source) and _storable(rec.error) and _storable(rec.machine)
    if rec.error is not None:
        assert rec.error.partition(": ")[0] in REASONS, rec.error
        assert payload.startswith(rec.payload)
        return rec
    # An event: canonical JSON naming the topic's type and machine.
    where = parse_topic(topic)
    body = json.loads(rec.payload)
    assert body["type"] == where.type and body["machine"] == where.machine
    assert rec.machine == where.machine
    return rec


@FUZZ
@given(topics)
def test_parse_topic_raises_only_topic_error(topic: str) -> None:
    try:
        where = parse_topic(topic)
    except TopicError:
        return
    assert where.type in MACHINE_TYPES
    assert machine_topic(where.site, where.area, where.line, where.machine, where.type) == topic


@FUZZ
@given(topics, payloads)
def test_map_message_never_raises(plant: PlantConfig, topic: str, payload: bytes) -> None:
    _check(plant, topic, payload)


@FUZZ
@given(st.sampled_from(["IM-01", "IM-03"]), st.sampled_from(MACHINE_TYPES), event_fields)
def test_map_message_on_good_topics(
    plant: PlantConfig, machine: str, kind: str, body: dict[str, Any]
) -> None:
    line = plant.line_of_machine[machine]
    topic = machine_topic(plant.plant.site, line.area, line.id, machine, kind)
    _check(plant, topic, _raw_json(body))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(topics, payloads), min_size=1, max_size=20))
def test_every_record_can_be_appended(
    plant: PlantConfig, db_url: str, messages: list[tuple[str, bytes]]
) -> None:
    """What map_message returns, PostgreSQL stores: a batch of fuzzed messages is one
    append (a refused row would make the collector retry the whole batch)."""
    records = [_check(plant, t, p) for t, p in messages]
    with psycopg.connect(db_url, autocommit=True) as conn:
        append(conn, records)
