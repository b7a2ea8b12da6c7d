"""The fast paths (msgspec) give exactly what the reference paths give, on any input.

- validation: `parse_event` (fast path for state, count, counter and process_value
  events, pydantic otherwise) against `parse_event_reference` (pydantic alone): the same
  model class, field values (types included), fields set, or the same ContractError
  reason and detail;
- storing: `fast_record` against `decode_object` + `record_for` (stdlib json): the same
  canonical payload, dedupe key, content key and machine, or None (then the reference
  path runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mesflow import events
from mesflow.events import ContractError, parse_event, parse_event_reference
from mesflow.ingest_log import DecodeError, decode_object, fast_record, record_for
from streams import replay

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(parse: Any, payload: bytes) -> tuple[Any, ...]:
    """Everything downstream can see of a parse: the model or the error."""
    try:
        ev = parse(payload)
    except ContractError as err:
        return ("error", err.reason, err.detail)
    return (
        "event",
        type(ev),
        repr(ev.__dict__),  # repr: 1 and 1.0 differ, so do time zones
        list(ev.__dict__),
        ev.model_fields_set,
        ev.__pydantic_extra__,
        ev.__pydantic_private__,
    )


def assert_same(payload: bytes) -> None:
    assert outcome(parse_event, payload) == outcome(parse_event_reference, payload), payload


def compact(body: Any, *, sort: bool = True) -> bytes:
    return json.dumps(body, sort_keys=sort, separators=(",", ":"), ensure_ascii=False).encode()


# --- Field values: valid ones, and each way a sender gets one wrong ---------------------

GOOD_TIMES = st.sampled_from(
    [
        "2026-11-16T07:00:00.000+08:00",
        "2026-11-16T07:00:00Z",
        "2026-11-16t07:00:00.123456z",
        "2026-11-16 07:00:00.5-05:30",
        "2026-03-29T01:59:59.999999+00:00",
        "1970-01-01T00:00:00+00:00",
        "2199-12-31T23:59:59+14:00",
    ]
)
BAD_TIMES = st.sampled_from(
    [
        "2026-11-16T07:00:00",  # naive
        "1763596800",  # numeric string
        "1969-12-31T23:59:59Z",  # years out of range
        "2200-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "2026-11-16T07:00:00.1234567+00:00",  # 7 fraction digits
        "2026-11-16T07:00:00.+00:00",
        "2026-11-16T24:00:00Z",
        "2026-02-30T07:00:00Z",
        "2026-11-16T07:00:60Z",
        "20261116T070000Z",
        "2026-11-16T07:00Z",
        "2026-11-16T07:00:00+0800",
        "٢٠٢٦-11-16T07:00:00Z",  # non-ASCII digits
        "2026-11-16T07:00:00\x00Z",
        "",
    ]
)
TIMES = st.one_of(GOOD_TIMES, BAD_TIMES, st.integers(), st.floats(), st.none(), st.text())
IDS = st.one_of(
    st.text(min_size=1, max_size=12),
    st.sampled_from(["", "a\x00b", "x" * 200, "x" * 201, "机床-01", "é" * 200, "\n"]),
    st.integers(),
    st.booleans(),
    st.none(),
    st.lists(st.text(max_size=2), max_size=2),
)
INTS = st.one_of(
    st.integers(min_value=-3, max_value=10),
    st.sampled_from(
        [
            0,
            1_000_000_000,
            1_000_000_001,
            1_000_000_000_000,
            1_000_000_000_001,
            2**63,
            2**64 + 1,
            10**30,
            -(10**30),
        ]
    ),
    st.booleans(),  # bools for ints
    st.sampled_from([1.0, 0.0, -0.0, 5.5, 1e16]),  # floats for ints
    st.text(max_size=3),
    st.none(),
)
NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 10**309, 1e-5, 1e16, -0.0]),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)
VALUE_NAMES = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_.]{0,10}", fullmatch=True),
    st.sampled_from(["A", "1a", "a" * 64, "a" * 65, "a\n", "a-b", "é", ""]),
)
STATES = st.one_of(
    st.sampled_from(list(events.CANONICAL_STATES)),
    st.sampled_from(["RUNNING", "stopped", ""]),
    st.integers(),
)
EXTRA = st.dictionaries(
    st.sampled_from(["extra", "note", "unit", "operator", "kind", "at"]),
    st.one_of(st.integers(), st.text(max_size=4), st.none(), st.lists(st.integers(), max_size=2)),
    max_size=2,
)


@st.composite
def hot_events(draw: st.DrawFn) -> dict[str, Any]:
    """A state, count, counter or process_value event, each field valid or broken."""
    kind = draw(st.sampled_from(["state", "count", "counter", "process_value"]))
    body: dict[str, Any] = {"type": kind}
    body["ts"] = draw(GOOD_TIMES) if draw(st.booleans()) else draw(TIMES)
    body["machine"] = draw(st.sampled_from(["IM-01", "m1"])) if draw(st.booleans()) else draw(IDS)
    if draw(st.booleans()):
        body["id"] = draw(IDS)
    if kind == "state":
        if draw(st.integers(0, 5)):
            body["state"] = draw(STATES)
        if draw(st.booleans()):
            body["reason"] = draw(IDS)
    elif kind == "count":
        for field in ("good", "scrap"):
            if draw(st.booleans()):
                body[field] = draw(INTS)
    elif kind == "counter":
        if draw(st.integers(0, 5)):
            body["name"] = draw(st.sampled_from(["total", "scrap", "good", 1]))
        if draw(st.integers(0, 5)):
            body["value"] = draw(INTS)
    else:
        if draw(st.integers(0, 8)):
            body["values"] = draw(
                st.one_of(
                    st.dictionaries(VALUE_NAMES, NUMBERS, max_size=4),
                    st.dictionaries(
                        st.from_regex(r"v[0-9]{1,3}", fullmatch=True),
                        st.just(1.5),
                        min_size=60,
                        max_size=70,
                    ),
                    st.lists(st.integers(), max_size=2),
                    st.none(),
                )
            )
    if draw(st.integers(0, 3)) == 0:
        body.update(draw(EXTRA))
    if draw(st.integers(0, 10)) == 0:  # a wrong or missing type
        body["type"] = draw(st.sampled_from(["report", "order", "", "State", 3]))
    return body


def mangled(draw: st.DrawFn, payload: bytes) -> bytes:
    """The payload as text, now and then made odd: duplicate keys, deep nesting, NaN,
    NUL, spaces, other number and escape forms, bad UTF-8, not an object."""
    how = draw(st.integers(0, 14))
    if how == 0:  # a duplicate key, first or last
        key = draw(st.sampled_from(["type", "ts", "machine", "state", "good", "values", "id"]))
        value = draw(st.sampled_from(['"count"', '"state"', "5", '"running"', "true", "{}"]))
        dup = f'"{key}":{value}'.encode()
        if draw(st.booleans()):
            return b"{" + dup + b"," + payload[1:]
        return payload[:-1] + b"," + dup + b"}"
    if how == 1:  # deep nesting in an extra field
        depth = draw(st.sampled_from([3, 8, 150, 300, 1200]))
        return payload[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}"
    if how == 2:
        return (
            payload[:-1]
            + b',"x":'
            + draw(st.sampled_from([b"NaN", b"Infinity", b"-0", b"1E400"]))
            + b"}"
        )
    if how == 3:
        return payload.replace(b",", b", ", 1)
    if how == 4:
        return payload.replace(b'"ts"', b'"t\\u0073"', 1)
    if how == 5:
        return payload.replace(b'"IM-01"', b'"IM-\\u0000"', 1)
    if how == 6:
        return (
            payload[:-1]
            + b',"n":'
            + draw(
                st.sampled_from(
                    [b"1e16", b"1e+16", b"0.00001", b"1.0e2", b"12345678901234567890123"]
                )
            )
            + b"}"
        )
    if how == 7:
        return payload + b"\xff"
    if how == 8:
        return draw(st.sampled_from([b"[]", b"null", b"", b"{", b'"x"', b"{}"]))
    if how == 9:
        return payload[:-1] + b',"s":"\\ud800"}'
    return payload


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    body = draw(hot_events())
    return mangled(draw, compact(body, sort=draw(st.integers(0, 3)) > 0))


@SETTINGS
@given(payloads())
@example(
    b'{"machine":"IM-01","state":"idle","state":"running","ts":"2026-11-16T07:00:00Z","type":"state"}'
)
@example(b'{"machine":"IM-01","good":1,"ts":"2026-11-16T07:00:00Z","type":"state","type":"count"}')
@example(b'{"good":true,"machine":"IM-01","ts":"2026-11-16T07:00:00Z","type":"count"}')
@example(b'{"good":1.0,"machine":"IM-01","ts":"2026-11-16T07:00:00Z","type":"count"}')
@example(
    b'{"machine":"IM-01","ts":"2026-11-16T07:00:00Z","type":"process_value","values":{"a":1e400}}'
)
@example(
    b'{"machine":"IM-01","ts":"2026-11-16T07:00:00Z","type":"process_value","values":{"a":9007199254740993}}'
)
@example(
    b'{"machine":"IM-01","ts":"2026-11-16T07:00:00Z","type":"process_value","values":{"a":1,"b":true}}'
)
@example(b'{"machine":"IM-01","ts":"1763596800","type":"counter","name":"total","value":5}')
@example(b'{"machine":"IM-\\u0000","state":"running","ts":"2026-11-16T07:00:00Z","type":"state"}')
@example(
    b'{"id":"a\\u0000","machine":"IM-01","state":"idle","ts":"2026-11-16T07:00:00Z","type":"state"}'
)
@example(
    b'{"machine":"IM-01","reason":"\\u0000","state":"down","ts":"2026-11-16T07:00:00Z","type":"state"}'
)
@example(b'{"machine":"IM-01","ts":"2026-11-16T07:00:00Z","type":"count"}')
@example(b'{"good":0,"machine":"IM-01","ts":"2026-11-16T07:00:00Z","type":"count"}')
def test_fast_validation_equals_pydantic(payload: bytes) -> None:
    assert_same(payload)


@SETTINGS
@given(hot_events())
def test_fast_validation_equals_pydantic_unsorted(body: dict[str, Any]) -> None:
    assert_same(compact(body, sort=False))


VALID = [
    {
        "type": "state",
        "ts": "2026-11-16T07:00:00.000+08:00",
        "machine": "IM-01",
        "state": "running",
        "id": "s-1",
    },
    {
        "type": "state",
        "ts": "2026-11-16T07:00:00Z",
        "machine": "IM-01",
        "state": "down",
        "reason": "jam",
        "id": None,
    },
    {
        "type": "count",
        "ts": "2026-11-16T07:00:01.5+08:00",
        "machine": "IM-01",
        "good": 3,
        "id": "c-1",
    },
    {
        "type": "count",
        "ts": "2026-11-16T07:00:01+08:00",
        "machine": "IM-01",
        "scrap": 1,
    },
    {
        "type": "counter",
        "ts": "2026-11-16T07:00:01+08:00",
        "machine": "IM-01",
        "name": "total",
        "value": 10**12,
    },
    {
        "type": "process_value",
        "ts": "2026-11-16T07:00:01+08:00",
        "machine": "IM-01",
        "values": {"cushion": 4.25, "cycle_time": 31, "temp.zone1": -0.0},
    },
]


@pytest.mark.parametrize("body", VALID)
def test_fast_path_takes_plain_hot_events(body: dict[str, Any]) -> None:
    """The fast path is used (not only ever falling back), and agrees with pydantic."""
    payload = compact(body)
    ev = events._fast_event(payload)
    assert ev is not None
    assert outcome(lambda _p: ev, payload) == outcome(parse_event_reference, payload)
    assert ev == parse_event_reference(payload)
    assert ev.model_dump_json() == parse_event_reference(payload).model_dump_json()


# --- The storer -----------------------------------------------------------------------


def reference_record(source: str, raw: bytes) -> Any:
    try:
        body = decode_object(raw)
    except DecodeError as err:
        return ("error", err.reason, err.detail)
    return record_for(source, body)


JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e16, 1e-5, 1e-4, 9999999999999998.0, 5e-324, 1.7976931348623157e308, 10**30]),
    st.text(),
    st.sampled_from(["\x00", "\x7f", "\u2028", "\U0001f600", '"\\', "\b\f\n\r\t\x01"]),
)
JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def raw_objects(draw: st.DrawFn) -> bytes:
    body = draw(st.dictionaries(st.text(max_size=6), JSON, max_size=5))
    if draw(st.booleans()):
        body["id"] = draw(IDS)
    if draw(st.booleans()):
        body["machine"] = draw(IDS)
    return mangled(draw, compact(body, sort=draw(st.booleans())))


@SETTINGS
@given(raw_objects())
@example(b'{"a":1,"a":1}')
@example(b'{"x":1e16}')
@example(b'{"x":0.00001}')
@example(b'{"x":1' + b"0" * 4400 + b"}")
@example(b'{"x":"\\ud800"}')
def test_fast_record_equals_stdlib(raw: bytes) -> None:
    fast = fast_record("src", raw)
    if fast is not None:
        assert fast == reference_record("src", raw)


@pytest.mark.parametrize("body", VALID)
def test_fast_record_takes_plain_objects(body: dict[str, Any]) -> None:
    raw = compact(body, sort=False)
    fast = fast_record("replay:x.jsonl:1", raw)
    assert fast is not None
    assert fast == reference_record("replay:x.jsonl:1", raw)
    assert fast.payload == compact(body)  # canonical: sorted keys


def test_extra_fields_take_the_pydantic_path() -> None:
    """An ignored extra field may hide nesting that pydantic refuses: pydantic decides."""
    plain = {"type": "count", "ts": "2026-11-16T07:00:01+08:00", "machine": "IM-01", "good": 1}
    extras: list[Any] = [[1, 2], [[[]]], "x"]
    for extra in extras:
        payload = compact({**plain, "extra": extra})
        assert events._fast_event(payload) is None
        assert_same(payload)
    deep = compact(plain)[:-1] + b',"deep":' + b"[" * 300 + b"]" * 300 + b"}"
    assert events._fast_event(deep) is None
    with pytest.raises(ContractError, match="malformed"):
        parse_event(deep)


GOOD_IDS = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    min_size=1,
    max_size=200,
)


@st.composite
def valid_hot_events(draw: st.DrawFn) -> dict[str, Any]:
    """Valid hot events only, in all their variety: each must take the fast path."""
    kind = draw(st.sampled_from(["state", "count", "counter", "process_value"]))
    body: dict[str, Any] = {"type": kind, "ts": draw(GOOD_TIMES), "machine": draw(GOOD_IDS)}
    if draw(st.booleans()):
        body["id"] = draw(st.none() | GOOD_IDS)
    if kind == "state":
        body["state"] = draw(st.sampled_from(list(events.CANONICAL_STATES)))
        if draw(st.booleans()):
            body["reason"] = draw(st.none() | GOOD_IDS)
    elif kind == "count":
        for field in ("good", "scrap"):
            if draw(st.booleans()):
                body[field] = draw(st.integers(0, events.MAX_COUNT))
    elif kind == "counter":
        body["name"] = draw(st.sampled_from(["total", "scrap"]))
        body["value"] = draw(st.integers(0, events.MAX_COUNTER))
    else:
        body["values"] = draw(
            st.dictionaries(
                st.from_regex(r"[a-z][a-z0-9_.]{0,63}", fullmatch=True),
                st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**63), 2**63),
                min_size=1,
                max_size=64,
            )
        )
    return body


@SETTINGS
@given(valid_hot_events(), st.booleans())
def test_fast_path_builds_what_pydantic_builds(body: dict[str, Any], sort: bool) -> None:
    payload = compact(body, sort=sort)
    ev = events._fast_event(payload)
    assert ev is not None, payload
    assert outcome(lambda _p: ev, payload) == outcome(parse_event_reference, payload)


def test_replayed_file_stores_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replayed file's log records, line keys included, are those of the stdlib path."""
    lines = [
        b'{"type":"count","machine":"IM-01","ts":"2026-11-16T07:00:00.000+08:00","good":1}',
        b'{"type":"count","machine":"IM-01","ts":"2026-11-16T07:00:00.000+08:00","good":1}',
        b'{"type":"state","machine":"IM-01","ts":"2026-11-16T07:00:00Z","state":"idle","id":"a"}',
        b'{"type":"process_value","machine":"IM-01","ts":"2026-11-16T07:00:00Z",'
        b'"values":{"t":1e-05,"p":12.5}}',
        b'{"a":1,"a":2}',
        b'{"x":NaN}',
        b"not json",
        b'{"id":"b", "machine":"IM-01"}',
        b"[1,2]",
        b'{"s":"\\ud800"}',
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    fast = [r for chunk in replay.line_records(path) for r in chunk]
    monkeypatch.setattr(replay, "fast_record", lambda source, raw: None)
    reference = [r for chunk in replay.line_records(path) for r in chunk]
    assert fast == reference
    assert len(fast) == len(lines)
