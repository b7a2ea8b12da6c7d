"""The event contract (shared/spec/events.md) against the models in mesflow.events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesflow.events import (
    CANONICAL_STATES,
    MAX_COUNT,
    MAX_COUNTER,
    ContractError,
    CounterEvent,
    CountEvent,
    DowntimeReasonReport,
    OrderEvent,
    ScrapReport,
    StateEvent,
    WorkOrderEndReport,
    WorkOrderEvent,
    WorkOrderStartReport,
    event_json_schema,
    parse_event,
)
from mesflow.settings import REPO_ROOT

# Every example of the spec, verbatim except that "..." timestamps got real times.
SPEC_EXAMPLES = [
    (
        '{"type": "state", "machine": "M1", "ts": "2026-11-20T08:00:00+08:00", '
        '"state": "down", "reason": "hydraulic_fault"}',
        StateEvent,
    ),
    (
        '{"type": "count", "machine": "M1", "ts": "2026-11-20T08:00:31+08:00", '
        '"good": 1, "scrap": 0}',
        CountEvent,
    ),
    (
        '{"type": "counter", "machine": "M1", "ts": "2026-11-20T08:05:00+08:00", '
        '"name": "total", "value": 10412}',
        CounterEvent,
    ),
    (
        '{"type": "report", "kind": "downtime_reason", "machine": "M1", '
        '"ts": "2026-11-20T09:20:00+08:00", "at": "2026-11-20T09:14:00+08:00", '
        '"reason": "material_shortage", "operator": "op7"}',
        DowntimeReasonReport,
    ),
    (
        '{"type": "report", "kind": "scrap", "machine": "M1", "ts": "2026-11-20T09:30:00+08:00", '
        '"qty": 2, "reason": "short_shot", "operator": "op7"}',
        ScrapReport,
    ),
    (
        '{"type": "report", "kind": "wo_start", "machine": "M1", '
        '"ts": "2026-11-20T08:00:00+08:00", "work_order": "WO-1001", "operator": "op7"}',
        WorkOrderStartReport,
    ),
    (
        '{"type": "report", "kind": "wo_end", "machine": "M1", '
        '"ts": "2026-11-20T18:00:00+08:00", "work_order": "WO-1001", "operator": "op7"}',
        WorkOrderEndReport,
    ),
    (
        '{"type": "order", "ts": "2026-11-19T10:00:00Z", "order_no": "SO-2026-0042", '
        '"version": 3, "customer": "ACME", "priority": 1, "product": "P-100", "qty": 5000, '
        '"due": "2026-11-28T18:00:00+08:00", "status": "open"}',
        OrderEvent,
    ),
    (
        '{"type": "work_order", "ts": "2026-11-19T11:00:00Z", "work_order": "WO-1001", '
        '"order_no": "SO-2026-0042", "product": "P-100", "qty": 2500, "machine": "M1"}',
        WorkOrderEvent,
    ),
]


@pytest.mark.parametrize(("line", "model"), SPEC_EXAMPLES, ids=lambda v: getattr(v, "__name__", ""))
def test_spec_example_parses_to_its_model(line: str, model: type) -> None:
    event = parse_event(line)
    assert type(event) is model
    # Every field of the example survives parsing (times compare as instants).
    for key, value in json.loads(line).items():
        got = getattr(event, key)
        if isinstance(got, datetime):
            assert got == datetime.fromisoformat(value)
            assert got.utcoffset() is not None
        else:
            assert got == value


def test_spec_times_keep_their_offset() -> None:
    event = parse_event(SPEC_EXAMPLES[0][0])
    assert event.ts.utcoffset() == timedelta(hours=8)
    assert event.ts == datetime(2026, 11, 20, 0, 0, tzinfo=UTC)


def test_optional_fields_default() -> None:
    event = parse_event('{"type": "count", "machine": "M1", "ts": "2026-11-20T08:00:00Z"}')
    assert isinstance(event, CountEvent)
    assert (event.good, event.scrap, event.id) == (0, 0, None)


def test_extra_unknown_fields_are_accepted() -> None:
    # Sources may send more than the contract needs (vendor fields, future optional fields).
    event = parse_event(
        '{"type": "state", "machine": "M1", "ts": "2026-11-20T08:00:00Z", "state": "idle", '
        '"plc_mode": 4, "vendor": {"alarm": [1, 2]}, "id": "evt-1"}'
    )
    assert isinstance(event, StateEvent)
    assert event.id == "evt-1"
    assert not hasattr(event, "plc_mode")


OK_TS = '"ts": "2026-11-20T08:00:00+08:00"'

# The bad-input classes of the spec's "Bad input" section, each with its stable reason code.
BAD_INPUT = {
    # malformed line
    "not json": ("not json at all", "malformed"),
    "truncated json": ('{"type": "state", "machine": "M1"', "malformed"),
    "json array": ('[{"type": "state"}]', "malformed"),
    "json number": ("42", "malformed"),
    "empty line": ("", "malformed"),
    # unknown type
    "unknown type": (f'{{"type": "temperature", "machine": "M1", {OK_TS}}}', "unknown_type"),
    "no type": (f'{{"machine": "M1", {OK_TS}, "state": "down"}}', "unknown_type"),
    "unknown report kind": (
        f'{{"type": "report", "kind": "coffee", "machine": "M1", {OK_TS}}}',
        "unknown_type",
    ),
    # missing field
    "state without machine": (f'{{"type": "state", {OK_TS}, "state": "down"}}', "missing_field"),
    "state without state": (f'{{"type": "state", "machine": "M1", {OK_TS}}}', "missing_field"),
    "count without ts": ('{"type": "count", "machine": "M1", "good": 1}', "missing_field"),
    "counter without value": (
        f'{{"type": "counter", "machine": "M1", {OK_TS}, "name": "total"}}',
        "missing_field",
    ),
    "order without version": (
        f'{{"type": "order", {OK_TS}, "order_no": "SO-1", "customer": "A", "priority": 1, '
        '"product": "P", "qty": 1, "due": "2026-11-28T18:00:00Z", "status": "open"}',
        "missing_field",
    ),
    # wrong type
    "good as text": (
        f'{{"type": "count", "machine": "M1", {OK_TS}, "good": "many"}}',
        "invalid_field",
    ),
    "good as fraction": (
        f'{{"type": "count", "machine": "M1", {OK_TS}, "good": 1.5}}',
        "invalid_field",
    ),
    "machine as number": (
        f'{{"type": "state", "machine": 7, {OK_TS}, "state": "down"}}',
        "invalid_field",
    ),
    "non-canonical state": (
        f'{{"type": "state", "machine": "M1", {OK_TS}, "state": "automatic"}}',
        "invalid_field",
    ),
    "order status unknown": (
        f'{{"type": "order", {OK_TS}, "order_no": "SO-1", "version": 1, "customer": "A", '
        '"priority": 1, "product": "P", "qty": 1, "due": "2026-11-28T18:00:00Z", '
        '"status": "deleted"}',
        "invalid_field",
    ),
    "scrap qty zero": (
        f'{{"type": "report", "kind": "scrap", "machine": "M1", {OK_TS}, "qty": 0}}',
        "invalid_field",
    ),
    # negative count
    "negative good": (
        f'{{"type": "count", "machine": "M1", {OK_TS}, "good": -1}}',
        "negative_count",
    ),
    "negative scrap": (
        f'{{"type": "count", "machine": "M1", {OK_TS}, "good": 1, "scrap": -2}}',
        "negative_count",
    ),
    "negative counter": (
        f'{{"type": "counter", "machine": "M1", {OK_TS}, "name": "total", "value": -5}}',
        "negative_count",
    ),
}

COUNT = f'{{{{"type": "count", "machine": "M1", {OK_TS}, {{}}}}}}'
ORDER = (
    f'{{{{"type": "order", {OK_TS}, "order_no": "SO-1", "version": 1, "customer": "A", '
    '"priority": 1, "product": "P", "qty": 1, "due": "2026-11-28T18:00:00Z", '
    '"status": "open", {}}}'
)
# Numbers are strict and bounded by the result columns (docs/events.md#numbers).
BAD_INPUT |= {
    "good as numeric text": (COUNT.format('"good": "1"'), "invalid_field"),
    "good as true": (COUNT.format('"good": true'), "invalid_field"),
    "good as whole float": (COUNT.format('"good": 1.0'), "invalid_field"),
    "good 1e308": (COUNT.format('"good": 1e308'), "invalid_field"),
    "good beyond 64 bits": (COUNT.format(f'"good": {2**64}'), "invalid_field"),
    "good beyond int32": (COUNT.format(f'"good": {2**31}'), "invalid_field"),
    "scrap above the bound": (COUNT.format(f'"scrap": {MAX_COUNT + 1}'), "invalid_field"),
    "counter above the bound": (
        f'{{"type": "counter", "machine": "M1", {OK_TS}, "name": "total", '
        f'"value": {MAX_COUNTER + 1}}}',
        "invalid_field",
    ),
    "scrap qty beyond 64 bits": (
        f'{{"type": "report", "kind": "scrap", "machine": "M1", {OK_TS}, "qty": {2**70}}}',
        "invalid_field",
    ),
    "order qty beyond int32": (
        ORDER.replace('"qty": 1', f'"qty": {2**31}').format('"x": 1'),
        "invalid_field",
    ),
    "order priority beyond int32": (
        ORDER.replace('"priority": 1', f'"priority": {2**31}').format('"x": 1'),
        "invalid_field",
    ),
    "order version beyond 2^53": (
        ORDER.replace('"version": 1', f'"version": {2**53}').format('"x": 1'),
        "invalid_field",
    ),
    # Text: no NUL (PostgreSQL text refuses it), bounded length.
    "NUL in machine": (COUNT.replace('"M1"', '"M\\u0000"').format('"good": 1'), "invalid_field"),
    "NUL in id": (COUNT.format('"id": "a\\u0000"'), "invalid_field"),
    "NUL in operator": (
        f'{{"type": "report", "kind": "wo_end", "machine": "M1", {OK_TS}, "work_order": "W", '
        '"operator": "\\u0000"}',
        "invalid_field",
    ),
    "NUL in customer": (ORDER.replace('"A"', '"A\\u0000"').format('"x": 1'), "invalid_field"),
    "customer too long": (
        ORDER.replace('"A"', '"' + "c" * 201 + '"').format('"x": 1'),
        "invalid_field",
    ),
    "id of 10,000 chars": (COUNT.format(f'"id": "{"i" * 10_000}"'), "invalid_field"),
    "id as number": (COUNT.format('"id": 7'), "invalid_field"),
    "id as object": (COUNT.format('"id": {"id": "x"}'), "invalid_field"),
    # Times outside the years 1970-2199.
    "year 1": (
        '{"type": "count", "machine": "M1", "ts": "0001-01-01T00:00:00Z"}',
        "bad_timestamp",
    ),
    "year 9999": (
        '{"type": "count", "machine": "M1", "ts": "9999-12-31T23:59:59Z"}',
        "bad_timestamp",
    ),
    "year 1969": (
        '{"type": "count", "machine": "M1", "ts": "1969-12-31T23:59:59Z"}',
        "bad_timestamp",
    ),
    "due in year 9999": (
        ORDER.replace('"due": "2026-11-28T18:00:00Z"', '"due": "9999-01-01T00:00:00Z"').format(
            '"x": 1'
        ),
        "bad_timestamp",
    ),
}

# Timestamps that are not RFC 3339 with an offset: all bad_timestamp, never misread.
BAD_TIMES = {
    "naive local time": '"2026-11-20T08:00:00"',
    "date only": '"2026-11-20"',
    "epoch seconds number": "1763596800",
    "epoch millis number": "1763596800000",
    "epoch seconds as text": '"1763596800"',
    "european format": '"20.11.2026 08:00:00"',
    "offset without colon": '"2026-11-20T08:00:00+0800"',
    "no seconds": '"2026-11-20T08:00+08:00"',
    "impossible month": '"2026-13-20T08:00:00Z"',
    "null": "null",
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_gives_its_reason(case: str) -> None:
    line, reason = BAD_INPUT[case]
    with pytest.raises(ContractError) as caught:
        parse_event(line)
    assert caught.value.reason == reason, caught.value


@pytest.mark.parametrize("case", sorted(BAD_TIMES))
def test_non_rfc3339_timestamp_is_bad_timestamp(case: str) -> None:
    line = f'{{"type": "state", "machine": "M1", "ts": {BAD_TIMES[case]}, "state": "down"}}'
    with pytest.raises(ContractError) as caught:
        parse_event(line)
    assert caught.value.reason == "bad_timestamp", caught.value


@pytest.mark.parametrize("field", ["at", "due"])
def test_other_time_fields_are_checked_too(field: str) -> None:
    lines = {
        "at": '{"type": "report", "kind": "downtime_reason", "machine": "M1", '
        f'{OK_TS}, "at": "2026-11-20 09:14", "reason": "x"}}',
        "due": f'{{"type": "order", {OK_TS}, "order_no": "SO-1", "version": 1, "customer": "A", '
        '"priority": 1, "product": "P", "qty": 1, "due": "2026-11-28", "status": "open"}',
    }
    with pytest.raises(ContractError) as caught:
        parse_event(lines[field])
    assert caught.value.reason == "bad_timestamp"
    assert field in caught.value.detail


def test_error_detail_names_the_field() -> None:
    with pytest.raises(ContractError) as caught:
        parse_event(f'{{"type": "report", "kind": "scrap", "machine": "M1", {OK_TS}, "qty": -1}}')
    assert "'qty'" in caught.value.detail


def test_published_schema_matches_the_models() -> None:
    # docs/events.schema.json is generated (`mesflow schema --out ...`); it must not drift.
    published = json.loads((REPO_ROOT / "docs" / "events.schema.json").read_text("utf-8"))
    assert published == json.loads(json.dumps(event_json_schema()))


# -- property: valid events survive a JSON round trip ---------------------------------------

_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
ids = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_categories=_SURROGATES, exclude_characters="\x00"
    ),
    min_size=1,
    max_size=40,
)
aware_times = st.builds(
    lambda naive, minutes: naive.replace(tzinfo=timezone(timedelta(minutes=minutes))),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2199, 12, 30)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
counts = st.integers(min_value=0, max_value=MAX_COUNT)

state_events = st.builds(
    StateEvent,
    type=st.just("state"),
    machine=ids,
    ts=aware_times,
    state=st.sampled_from(CANONICAL_STATES),
    reason=st.none() | ids,
    id=st.none() | ids,
)
count_events = st.builds(
    CountEvent,
    type=st.just("count"),
    machine=ids,
    ts=aware_times,
    good=counts,
    scrap=counts,
    id=st.none() | ids,
)


@given(state_events | count_events)
def test_valid_events_round_trip(event: StateEvent | CountEvent) -> None:
    assert parse_event(event.model_dump_json()) == event
