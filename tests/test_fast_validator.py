"""The validator's inline hot path (state, count and counter events that pass every check
go straight to their machine) gives exactly what the general path (`Validator._check`)
gives: the same outputs in the same order, the same rejections with the same reasons and
details, whatever the batch mixes (clock policy, unknown machines and reason codes, collector
errors, events the fast parser leaves to pydantic, receipt times changing mid-batch)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streams.validate as validate
from mesflow.events import parse_event
from mesflow.ingest_log import LogEntry
from mesflow.plant import PlantConfig, load_plant_config
from streams.records import Rejection
from streams.validate import Validator
from tests.conftest import EXAMPLE_CONFIG

RECEIVED = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def plant() -> PlantConfig:
    return load_plant_config(EXAMPLE_CONFIG)


def general_path(plant: PlantConfig, batch: list[LogEntry]) -> list[Any]:
    """The validator with its hot path off: every entry through `_check`."""
    saved = validate.parse_event

    def reference(payload: bytes | str) -> Any:
        return parse_event(payload)

    validate.parse_event = reference  # not the module's own: the hot path is skipped
    try:
        return list(Validator(plant)(batch))
    finally:
        validate.parse_event = saved


def outputs(items: list[Any]) -> list[Any]:
    # Events compared by what downstream sees of them (pydantic models compare by fields).
    return [
        (x[0], x[1][0], type(x[1][1]), repr(x[1][1].__dict__), x[1][1].model_fields_set)
        if type(x) is tuple
        else x
        for x in items
    ]


OFFSETS = st.sampled_from(
    [
        timedelta(0),
        timedelta(0),
        -timedelta(minutes=3),
        timedelta(seconds=300),
        timedelta(seconds=301),  # future
        -timedelta(days=30),
        -timedelta(days=30, seconds=1),  # too old
        -timedelta(hours=5),
    ]
)
MACHINES = st.sampled_from(["IM-01", "IM-02", "CNC-01", "IM-01", "NOPE-9"])  # last: unknown
REASONS = st.sampled_from([None, "material_shortage", "no_such_reason", "connection_lost"])


@st.composite
def hot_event(draw: st.DrawFn) -> dict[str, Any]:
    ts = (RECEIVED + draw(OFFSETS)).astimezone(
        draw(st.sampled_from([UTC, datetime.fromisoformat("2026-01-01T00:00:00+08:00").tzinfo]))
    )
    body: dict[str, Any] = {"machine": draw(MACHINES), "ts": ts.isoformat()}
    kind = draw(st.sampled_from(["state", "state", "count", "counter", "process_value", "bad"]))
    if kind == "state":
        body |= {"type": "state", "state": draw(st.sampled_from(["running", "down", "idle"]))}
        reason = draw(REASONS)
        if reason is not None:
            body["reason"] = reason
    elif kind == "count":
        body |= {"type": "count", "good": draw(st.integers(0, 3)), "scrap": draw(st.integers(0, 1))}
    elif kind == "counter":
        body |= {"type": "counter", "name": "total", "value": draw(st.integers(0, 10**6))}
    elif kind == "process_value":
        body |= {"type": "process_value", "values": {"cycle_s": 12.5}}
    else:  # not a hot event the fast parser takes: pydantic decides (here: an error)
        body |= {"type": "count", "good": -1}
    if draw(st.booleans()):
        body["id"] = f"e-{draw(st.integers(0, 99))}"
    return body


@st.composite
def batches(draw: st.DrawFn) -> list[LogEntry]:
    out = []
    for seq, ev in enumerate(draw(st.lists(hot_event(), min_size=1, max_size=30)), start=1):
        error = "malformed: not valid JSON" if draw(st.integers(0, 9)) == 0 else None
        received = draw(st.sampled_from([RECEIVED, RECEIVED, RECEIVED + timedelta(days=2), None]))
        out.append(LogEntry(seq, json.dumps(ev).encode(), error, received))
    return out


@SETTINGS
@given(batch=batches())
def test_hot_path_equals_general_path(plant: PlantConfig, batch: list[LogEntry]) -> None:
    fast = list(Validator(plant)(batch))
    assert outputs(fast) == outputs(general_path(plant, batch))


def test_hot_path_refusals(plant: PlantConfig) -> None:
    """Each check of the hot path refuses as the general path does (plain examples)."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"type": "count", "machine": "NOPE-9", "good": 1}, "unknown_machine"),
        ({"type": "state", "machine": "IM-01", "state": "down", "reason": "xx"}, "unknown_reason"),
        ({"type": "count", "machine": "IM-01", "good": 1, "ts": "2026-12-30T00:00:00Z"}, "future"),
        ({"type": "count", "machine": "IM-01", "good": 1, "ts": "2026-01-01T00:00:00Z"}, "too_old"),
    ]
    for body, reason in cases:
        body = {"ts": "2026-11-20T00:00:00Z"} | body
        batch = [LogEntry(1, json.dumps(body).encode(), None, RECEIVED)]
        fast = list(Validator(plant)(batch))
        assert isinstance(fast[0], Rejection) and fast[0].reason == reason, (body, fast)
        assert outputs(fast) == outputs(general_path(plant, batch))
