"""The clock policy (docs/events.md#clock-policy): an event dated more than
`max_clock_skew_seconds` after it arrived is `future`, one more than `max_event_age_days`
before, `too_old`; a refused event never reaches a machine, so it moves no clock.

These tests use the example plant as shipped (the default policy), not the `plant`
fixture, whose horizon is widened for the fixed dates of the other tests.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mesflow.ingest_log import LogEntry
from mesflow.plant import ConfigError, PlantConfig, load_plant_config
from streams.records import Progress, Rejection
from streams.replay import replay_file
from streams.validate import OrderInput, Validator
from tests.conftest import EXAMPLE_CONFIG

RECEIVED = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def default_plant() -> PlantConfig:
    plant = load_plant_config(EXAMPLE_CONFIG)
    assert plant.plant.max_clock_skew_seconds == 300
    assert plant.plant.max_event_age_days == 30
    return plant


def _check(validator: Validator, ev: dict[str, Any], received: datetime | None = RECEIVED) -> Any:
    out = list(validator([LogEntry(7, json.dumps(ev).encode(), None, received)]))
    assert isinstance(out[-1], Progress)
    items = out[:-1]
    rejections = [o for o in items if isinstance(o, Rejection)]
    if rejections:
        # A refused event goes nowhere else: no machine or order step sees it.
        assert items == rejections
        return rejections[0].reason
    assert items
    return "ok"


def _at(offset: timedelta) -> str:
    return (RECEIVED + offset).astimezone(UTC).isoformat()


def _state(offset: timedelta, **extra: Any) -> dict[str, Any]:
    return {"type": "state", "machine": "IM-01", "state": "down", "ts": _at(offset)} | extra


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        (timedelta(seconds=300), "ok"),
        (timedelta(seconds=301), "future"),
        (timedelta(days=3653), "future"),
        (timedelta(0), "ok"),
        (-timedelta(days=30), "ok"),
        (-timedelta(days=30, seconds=1), "too_old"),
        (-timedelta(days=365 * 50), "too_old"),
    ],
)
def test_state_event_times(default_plant: PlantConfig, offset: timedelta, reason: str) -> None:
    assert _check(Validator(default_plant), _state(offset)) == reason


def test_the_offset_of_a_time_does_not_matter(default_plant: PlantConfig) -> None:
    v = Validator(default_plant)
    local = (RECEIVED + timedelta(seconds=301)).astimezone(
        datetime.fromisoformat("2026-01-01T00:00:00-14:00").tzinfo
    )
    assert _check(v, _state(timedelta(0)) | {"ts": local.isoformat()}) == "future"


def test_report_at_is_checked_too(default_plant: PlantConfig) -> None:
    v = Validator(default_plant)
    report = {
        "type": "report",
        "kind": "downtime_reason",
        "machine": "IM-01",
        "ts": _at(timedelta(0)),
        "reason": "heater_fault",
    }
    assert _check(v, report | {"at": _at(-timedelta(minutes=5))}) == "ok"
    assert _check(v, report | {"at": _at(timedelta(days=1))}) == "future"
    assert _check(v, report | {"at": _at(-timedelta(days=31))}) == "too_old"


def test_orders_are_only_checked_against_the_future(default_plant: PlantConfig) -> None:
    v = Validator(default_plant)
    order = {
        "type": "order",
        "order_no": "SO-1",
        "version": 1,
        "customer": "ACME",
        "priority": 1,
        "product": "P-100",
        "qty": 10,
        "due": _at(timedelta(days=400)),  # a due date may be far ahead
        "status": "open",
    }
    # A CRM may load an old open order with its original change time.
    assert _check(v, order | {"ts": _at(-timedelta(days=400))}) == "ok"
    assert _check(v, order | {"ts": _at(timedelta(hours=1))}) == "future"
    wo = {
        "type": "work_order",
        "work_order": "WO-1",
        "order_no": "SO-1",
        "product": "P-100",
        "qty": 5,
        "ts": _at(timedelta(hours=1)),
    }
    assert _check(v, wo) == "future"


def test_decided_by_the_receipt_time_not_by_today(default_plant: PlantConfig) -> None:
    v = Validator(default_plant)
    old = _state(timedelta(0))  # 2026-11-20
    assert _check(v, old, received=RECEIVED + timedelta(days=29)) == "ok"
    assert _check(v, old, received=RECEIVED + timedelta(days=31)) == "too_old"
    assert _check(v, old, received=RECEIVED - timedelta(hours=1)) == "future"
    # Rows written before the log recorded receipt times are not judged by the clock.
    assert _check(v, _state(timedelta(days=3653)), received=None) == "ok"


def test_settings_are_applied(default_plant: PlantConfig) -> None:
    info = default_plant.plant.model_copy(
        update={"max_clock_skew_seconds": 10, "max_event_age_days": 1}
    )
    v = Validator(default_plant.model_copy(update={"plant": info}))
    assert _check(v, _state(timedelta(seconds=11))) == "future"
    assert _check(v, _state(timedelta(seconds=9))) == "ok"
    assert _check(v, _state(-timedelta(days=1, seconds=1))) == "too_old"


def test_reason_codes_of_state_events_are_checked(default_plant: PlantConfig) -> None:
    v = Validator(default_plant)
    assert _check(v, _state(timedelta(0), reason="heater_fault")) == "ok"
    assert _check(v, _state(timedelta(0), reason="gremlins")) == "unknown_reason"


def test_a_work_order_reaches_its_order_and_machines(default_plant: PlantConfig) -> None:
    wo = {
        "type": "work_order",
        "work_order": "WO-1",
        "order_no": "SO-1",
        "product": "P-100",
        "qty": 5,
        "machine": "IM-01",
        "ts": _at(timedelta(0)),
    }
    out = list(Validator(default_plant)([LogEntry(1, json.dumps(wo).encode(), None, RECEIVED)]))
    assert isinstance(out[0], OrderInput) and out[1][0] == "IM-01"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_clock_skew_seconds", "0"),
        ("max_clock_skew_seconds", "-5"),
        ("max_event_age_days", "0"),
        ("max_event_age_days", "100000"),
    ],
)
def test_policy_settings_are_validated(tmp_path: Path, field: str, value: str) -> None:
    text, n = re.subn(
        rf"^  {field}: \S+", f"  {field}: {value}", EXAMPLE_CONFIG.read_text("utf-8"), flags=re.M
    )
    assert n == 1
    path = tmp_path / "plant.yaml"
    path.write_text(text, "utf-8")
    with pytest.raises(ConfigError, match=field) as caught:
        load_plant_config(path)
    assert "than" in str(caught.value)  # greater than / less than: the bound, not the syntax


def test_one_wrong_clock_does_not_wipe_a_machine(
    db_url: str, default_plant: PlantConfig, tmp_path: Path
) -> None:
    """A state event ten years ahead and one 40 days old, amid a machine's real events:
    both dead-lettered, every real event counted, no `late`, no run of empty hours."""
    now = datetime.now(UTC).replace(microsecond=0)

    def at(seconds: float) -> str:
        return (now - timedelta(hours=2) + timedelta(seconds=seconds)).isoformat()

    events: list[dict[str, Any]] = [
        {"type": "state", "machine": "IM-03", "ts": at(0), "state": "running"}
    ]
    events += [
        {"type": "count", "machine": "IM-03", "ts": at(10 + i), "good": 1, "id": f"a{i}"}
        for i in range(50)
    ]
    events.append(
        {
            "type": "state",
            "machine": "IM-03",
            "ts": (now + timedelta(days=3653)).isoformat(),
            "state": "down",
        }
    )
    events.append(
        {
            "type": "state",
            "machine": "IM-03",
            "ts": (now - timedelta(days=40)).isoformat(),
            "state": "down",
        }
    )
    events += [
        {"type": "count", "machine": "IM-03", "ts": at(100 + i), "good": 1, "id": f"b{i}"}
        for i in range(50)
    ]
    path = tmp_path / "clock.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    summary = replay_file(path, default_plant, db_url, tmp_path / "rec", progress=False)
    assert summary.dead_lettered == 2
    with psycopg.connect(db_url) as conn:
        reasons = sorted(r for (r,) in conn.execute("SELECT reason FROM dead_letter"))
        good = conn.execute(
            "SELECT good_total, state FROM machine_status WHERE machine = 'IM-03'"
        ).fetchone()
        hours = conn.execute("SELECT count(*) FROM machine_hour WHERE machine = 'IM-03'").fetchone()
    assert reasons == ["future", "too_old"]
    assert good == (100, "running")
    assert hours is not None and hours[0] <= 3
