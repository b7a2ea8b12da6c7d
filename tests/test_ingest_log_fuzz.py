"""Property-based fuzzing of the decoders every source shares: `record_from_bytes` /
`record_for` (ingest log) and `parse_event` (contract) on arbitrary bytes, arbitrary JSON
values and event-shaped objects with arbitrary field values.

The guarantees: nothing raises except ContractError from parse_event; an error record
has a known reason and text PostgreSQL can store; an accepted event round-trips.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesflow.events import ContractError, parse_event
from mesflow.ingest_log import (
    MAX_PAYLOAD_BYTES,
    LogEntry,
    dedupe_key,
    record_for,
    record_from_bytes,
)
from mesflow.plant import PlantConfig
from streams.records import Progress, Rejection
from streams.validate import Validator

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DECODE_REASONS = {"malformed", "bad_text", "too_large"}
CONTRACT_REASONS = {
    "malformed",
    "unknown_type",
    "missing_field",
    "bad_timestamp",
    "negative_count",
    "invalid_field",
}

# Any JSON value, including what json.loads lets through: lone surrogates, NUL, huge ints.
json_text = st.text(st.characters(codec=None), max_size=30) | st.sampled_from(
    ["\ud800", "a\x00b", "\udfff\ud800", "2026-11-20T08:00:00Z", "9999-12-31T23:59:59Z"]
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**31, 2**63, 2**64 + 1, -(2**70), 10**9, 10**12 + 1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_text, inner, max_size=4),
    max_leaves=12,
)

BASES: list[dict[str, Any]] = [
    {"type": "state", "machine": "IM-01", "ts": "2026-11-20T08:00:00+08:00", "state": "down"},
    {"type": "count", "machine": "IM-01", "ts": "2026-11-20T08:00:00+08:00", "good": 1},
    {"type": "counter", "machine": "IM-01", "ts": "2026-11-20T08:00:00Z", "name": "total",
     "value": 5},
    {"type": "report", "kind": "downtime_reason", "machine": "IM-01",
     "ts": "2026-11-20T08:00:00Z", "at": "2026-11-20T07:59:00Z", "reason": "heater_fault"},
    {"type": "report", "kind": "scrap", "machine": "IM-01", "ts": "2026-11-20T08:00:00Z",
     "qty": 1},
    {"type": "order", "ts": "2026-11-20T08:00:00Z", "order_no": "SO-1", "version": 1,
     "customer": "ACME", "priority": 1, "product": "P-100", "qty": 5,
     "due": "2026-11-28T08:00:00Z", "status": "open"},
    {"type": "work_order", "ts": "2026-11-20T08:00:00Z", "work_order": "WO-1",
     "order_no": "SO-1", "product": "P-100", "qty": 5},
]  # fmt: skip


@st.composite
def event_shaped(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with some fields replaced by arbitrary JSON values (or removed)."""
    body = dict(draw(st.sampled_from(BASES)))
    fields = sorted({*body, "id", "good", "scrap", "reason", "operator", "meta"})
    for key in draw(st.lists(st.sampled_from(fields), max_size=3, unique=True)):
        if draw(st.booleans()):
            body[key] = draw(json_values)
        else:
            body.pop(key, None)
    return body


def _storable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _check_record(rec: Any) -> None:
    assert _storable(rec.source)
    if rec.error is not None:
        reason = rec.error.split(":", 1)[0]
        assert reason in DECODE_REASONS, rec.error
        assert _storable(rec.error)
        assert len(rec.payload) <= MAX_PAYLOAD_BYTES
    else:
        assert rec.content_key is not None
        assert rec.machine is None or _storable(rec.machine)
        json.loads(rec.payload)  # the stored form is JSON


@FUZZ
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_record_from_bytes_never_raises(raw: bytes) -> None:
    _check_record(record_from_bytes("replay:f:1", raw, line_key=dedupe_key(raw)))


@FUZZ
@given(st.dictionaries(json_text, json_values, max_size=6) | event_shaped())
def test_record_for_never_raises(body: dict[str, Any]) -> None:
    rec = record_for("mqtt:t", body)
    _check_record(rec)
    event_id = body.get("id")
    if rec.error is None:
        # The key is the decoded top-level id and nothing else.
        has_id = isinstance(event_id, str) and event_id
        assert rec.dedupe_key == (dedupe_key(f"id:{event_id}") if has_id else None)


@FUZZ
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_parse_event_raises_only_contract_errors(raw: bytes) -> None:
    try:
        parse_event(raw)
    except ContractError as err:
        assert err.reason in CONTRACT_REASONS
        assert _storable(err.detail)


@FUZZ
@given(event_shaped())
def test_accepted_events_round_trip(body: dict[str, Any]) -> None:
    rec = record_for("f", body)
    if rec.error is not None:
        return
    try:
        event = parse_event(rec.payload)
    except ContractError as err:
        assert err.reason in CONTRACT_REASONS
        assert _storable(err.detail)
        return
    assert parse_event(event.model_dump_json()) == event
    # The same object from another source (other spelling) gives the same record.
    again = record_from_bytes("mqtt:t", json.dumps(body, indent=1).encode())
    assert (again.payload, again.dedupe_key) == (rec.payload, rec.dedupe_key)


@FUZZ
@given(st.lists(event_shaped(), min_size=1, max_size=5))
def test_validator_never_raises(plant: PlantConfig, bodies: list[dict[str, Any]]) -> None:
    received = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)
    entries = []
    for seq, body in enumerate(bodies, start=1):
        rec = record_for("f", body)
        entries.append(LogEntry(seq, rec.payload, rec.error, received))
    out = list(Validator(plant)(entries))
    assert isinstance(out[-1], Progress) and out[-1].events == len(bodies)
    for item in out:
        if isinstance(item, Rejection):
            assert _storable(item.detail) and _storable(item.reason)
