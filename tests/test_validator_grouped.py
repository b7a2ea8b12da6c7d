"""Validator.grouped, the one-pass validation the dataflow's single process uses, gives
exactly what the validator's output grouped by machine (streams/dataflow.py `_grouped`)
gives: the same groups in the same order, the same other items (rejections with their
reasons and details, orders, floor reports, Progress), and the same highest event time
for the replay's clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given

from collectors.simulator.history import write_history
from mesflow.ingest_log import LogEntry
from mesflow.plant import PlantConfig, load_plant_config
from streams.dataflow import EventClock, _grouped, _Watched
from streams.validate import Validator
from tests.conftest import EXAMPLE_CONFIG
from tests.test_fast_validator import RECEIVED, SETTINGS, batches


@pytest.fixture(scope="module")
def plant() -> PlantConfig:
    return load_plant_config(EXAMPLE_CONFIG)


def normal(out: list[Any]) -> list[Any]:
    """Events compared by what downstream sees of them (models compare by fields)."""

    def event(item: tuple[int, Any]) -> Any:
        seq, ev = item
        return (seq, type(ev), repr(ev.__dict__), ev.model_fields_set)

    return [
        (x[0], [event(i) for i in x[1]]) if type(x) is tuple else [repr(y) for y in x] for x in out
    ]


def both(plant: PlantConfig, batches: list[list[LogEntry]]) -> None:
    """Every batch through both paths (one validator and clock each, as a flow has)."""
    one_pass, one_clock = Validator(plant), EventClock()
    general, general_clock = Validator(plant), EventClock()
    fast = _grouped(one_clock.watch(one_pass))
    # A step that is not the Validator itself: _grouped's general pass over its output.
    slow = _grouped(_Watched(general_clock, lambda batch: general(batch)))
    for batch in batches:
        assert normal(fast(batch)) == normal(slow(batch))
        assert one_clock.high == general_clock.high
    # Live: no clock.
    live, reference = _grouped(Validator(plant)), _grouped(lambda b: Validator(plant)(b))
    for batch in batches:
        assert normal(live(batch)) == normal(reference(batch))


@SETTINGS
@given(first=batches(), second=batches())
def test_one_pass_equals_grouping_the_output(
    plant: PlantConfig, first: list[LogEntry], second: list[LogEntry]
) -> None:
    both(plant, [first, second])


def test_one_pass_equals_grouping_on_a_simulated_plant(plant: PlantConfig, tmp_path: Path) -> None:
    """Every kind of event the simulator sends (reports, work orders, inspections...) and
    a few refused ones, in batches whose receipt times differ."""
    start = datetime(2026, 11, 16, 7, 0, tzinfo=plant.tz)
    path = tmp_path / "sim.jsonl"
    write_history(plant, path, seed=3, start=start, duration_s=4 * 3600)
    lines = path.read_bytes().splitlines()
    extra = [
        {"type": "work_order", "ts": "2026-11-16T09:00:00Z", "order_no": "X-1"},  # no machine
        {"type": "count", "ts": "2026-11-16T09:00:00Z", "machine": "NOPE-9", "good": 1},
        {"type": "count", "ts": "2036-11-16T09:00:00Z", "machine": "IM-01", "good": 1},
        {"type": "state", "ts": "2026-11-16T09:00:00Z", "machine": "IM-01", "state": "down",
         "reason": "no_such_reason"},
    ]  # fmt: skip
    payloads = lines + [json.dumps(e).encode() for e in extra] + [b"{not json"]
    entries = []
    for seq, payload in enumerate(payloads, start=1):
        received = start + timedelta(hours=seq // 500) if seq % 7 else None
        error = "malformed: not valid JSON" if payload == b"{not json" else None
        entries.append(LogEntry(seq, payload, error, received))
    assert len({type(x) for x in Validator(plant)(entries)}) > 3  # a mixed corpus
    both(plant, [entries[i : i + 997] for i in range(0, len(entries), 997)])


def test_the_clock_takes_the_highest_instant(plant: PlantConfig) -> None:
    """Across offsets: the latest instant, not the latest wall-clock text."""
    body = {"type": "count", "machine": "IM-01", "good": 1}
    early_text_late_instant = "2026-11-20T01:00:00-05:00"  # 06:00Z
    late_text_early_instant = "2026-11-20T09:00:00+08:00"  # 01:00Z
    batch = [
        LogEntry(i, json.dumps(body | {"ts": ts}).encode(), None, RECEIVED + timedelta(days=1))
        for i, ts in enumerate([late_text_early_instant, early_text_late_instant], start=1)
    ]
    clock = EventClock()
    _grouped(clock.watch(Validator(plant)))(batch)
    assert clock.high == int(datetime(2026, 11, 20, 6, tzinfo=UTC).timestamp()) * 1_000_000


def test_the_clock_takes_events_of_the_general_path(plant: PlantConfig) -> None:
    """A report or a work order (not the hot path) may be the batch's latest event."""
    received = RECEIVED + timedelta(days=1)
    count = {"type": "count", "machine": "IM-01", "good": 1, "ts": "2026-11-20T01:00:00Z"}
    later = [
        {"type": "report", "kind": "scrap", "machine": "IM-01", "qty": 1,
         "ts": "2026-11-20T02:00:00Z"},
        {"type": "work_order", "ts": "2026-11-20T03:00:00Z", "order_no": "X-1",
         "work_order": "WO-1", "product": "P-100", "qty": 5},
    ]  # fmt: skip
    for i, ev in enumerate(later):
        batch = [
            LogEntry(1, json.dumps(count).encode(), None, received),
            LogEntry(2, json.dumps(ev).encode(), None, received),
        ]
        clock = EventClock()
        _grouped(clock.watch(Validator(plant)))(batch)
        assert clock.high == int(datetime(2026, 11, 20, 2 + i, tzinfo=UTC).timestamp()) * 10**6
        both(plant, [batch])


def test_the_clock_policy_bounds_to_the_microsecond(plant: PlantConfig) -> None:
    """Event times one microsecond either side of each bound, in several offsets, with
    receipt times in UTC and in a zone (as psycopg gives them): the one pass refuses and
    passes exactly what the general path does."""
    info = plant.plant
    skew = timedelta(seconds=info.max_clock_skew_seconds)
    age = timedelta(days=info.max_event_age_days)
    us = timedelta(microseconds=1)
    zones = [UTC, timezone(timedelta(hours=8)), timezone(-timedelta(hours=5, minutes=30))]
    receipts = [RECEIVED, RECEIVED.astimezone(ZoneInfo("Asia/Shanghai")), RECEIVED + us]
    batch: list[LogEntry] = []
    for received in receipts:
        for edge in (received + skew, received - age):
            for t in (edge - us, edge, edge + us):
                for tz in zones:
                    body = {"type": "count", "machine": "IM-01", "good": 1}
                    body["ts"] = t.astimezone(tz).isoformat()
                    batch.append(
                        LogEntry(len(batch) + 1, json.dumps(body).encode(), None, received)
                    )
    out = Validator(plant)(batch)
    refused = [x for x in out if type(x) is not tuple and hasattr(x, "reason")]
    assert {r.reason for r in refused} == {"future", "too_old"}
    assert len(refused) == len(receipts) * 2 * len(zones)
    both(plant, [batch])
