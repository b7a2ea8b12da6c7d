"""The plant simulator: a valid, deterministic and believable event stream, file and MQTT."""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from datetime import datetime, timedelta
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from collectors.simulator import generate, machine_specs, run_simulator, write_history
from collectors.topics import parse_topic
from mesflow.events import parse_event
from mesflow.plant import PlantConfig, load_plant_config
from mesflow.services import Broker
from mesflow.settings import REPO_ROOT
from tests.helpers import listening

Event = dict[str, Any]
PLANT = load_plant_config(REPO_ROOT / "config" / "plant.example.yaml")
TZ = PLANT.tz
MONDAY_9 = datetime(2026, 11, 16, 9, 0, tzinfo=TZ)  # 2026-11-16 is a Monday
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+08:00$")
IM = [f"IM-0{i}" for i in range(1, 7)]
CNC = [f"CNC-0{i}" for i in range(1, 7)]
LATHES = {"CNC-04", "CNC-05"}
CREW = {name for s in machine_specs(PLANT) if s.crew for name in s.crew.by_shift.values()}
# Machines that only run later steps of a routing (drilling, EDM, finish milling).
DOWNSTREAM_ONLY = {s.id for s in machine_specs(PLANT) if not s.jobs}


def at(day: int, hh: int, mm: int = 0) -> datetime:
    """A time in November 2026, plant time."""
    return datetime(2026, 11, day, hh, mm, tzinfo=TZ)


@cache
def day_run(seed: int = 7, start: datetime = MONDAY_9, hours: float = 24) -> tuple[Event, ...]:
    return tuple(generate(PLANT, seed=seed, start=start, end=start + timedelta(hours=hours)))


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def by_machine(events: tuple[Event, ...]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        out[e["machine"]].append(e)
    return out


def intervals(events: list[Event], end: datetime) -> list[tuple[datetime, datetime, Event]]:
    """(from, to, state event) for one machine's state events, the last one closed at `end`."""
    states = [e for e in events if e["type"] == "state"]
    bounds = [ts(e["ts"]) for e in states] + [end]
    return [(bounds[i], bounds[i + 1], e) for i, e in enumerate(states)]


def state_at(events: list[Event], when: datetime) -> Event:
    last = None
    for e in events:
        if e["type"] == "state" and ts(e["ts"]) <= when:
            last = e
    assert last is not None, f"no state before {when}"
    return last


def parts(events: list[Event]) -> int:
    """Parts made, from count increments or from a cumulative counter (contract rules)."""
    total, prev = 0, None
    for e in events:
        if e["type"] == "count":
            total += e["good"] + e["scrap"]
        elif e["type"] == "counter":
            if prev is not None:
                total += e["value"] - prev if e["value"] >= prev else e["value"]
            prev = e["value"]
    return total


# -- the model ------------------------------------------------------------------------------


def test_same_seed_and_start_give_the_same_stream() -> None:
    a = day_run()
    assert a == tuple(generate(PLANT, seed=7, start=MONDAY_9, end=MONDAY_9 + timedelta(hours=24)))
    assert a != day_run(seed=8)
    # A run starting at another time gets other event ids (ids are deduplicated downstream).
    later = day_run(start=MONDAY_9 + timedelta(minutes=1), hours=1)
    assert not {e["id"] for e in a} & {e["id"] for e in later}
    # A shorter run is a prefix of a longer one.
    short = day_run(hours=2)
    assert a[: len(short)] == short


def test_every_event_is_valid_unique_and_in_time_order() -> None:
    events = day_run()
    assert len(events) > 10_000
    for e in events:
        parse_event(json.dumps(e))
        assert TS_RE.match(e["ts"]), e
    times = [ts(e["ts"]) for e in events]
    assert times == sorted(times)
    assert times[0] == MONDAY_9 and times[-1] < MONDAY_9 + timedelta(hours=24)
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids)
    reasons = {e["reason"] for e in events if e.get("reason")}
    assert reasons <= set(PLANT.reasons_by_code)


def test_every_machine_starts_with_its_state_and_work_order() -> None:
    # Molding runs 24/7; the CNC line's own calendar has no Sunday shift (22nd: Sunday).
    for start, sunday in ((MONDAY_9, False), (at(22, 9), True)):
        first = by_machine(day_run(start=start, hours=1))
        assert set(first) == set(PLANT.machines)
        for mid, events in first.items():
            if mid in DOWNSTREAM_ONLY:
                # Only later routing steps run here: no work until a lot is handed over
                # (and on Sunday no shift either: that is what the board says first).
                why = "no_shift" if sunday else "no_order"
                assert events[0]["state"] == "planned_stop" and events[0]["reason"] == why
                assert not [e for e in events if e["type"] == "work_order"]
                continue
            expected = "planned_stop" if sunday and mid.startswith("CNC") else "running"
            assert events[0]["type"] == "state" and events[0]["state"] == expected, mid
            assert events[0]["ts"] == events[1]["ts"] == events[2]["ts"]
            # The work order's product comes first, then its start.
            wo, started = events[1], events[2]
            assert wo["type"] == "work_order" and wo["work_order"].startswith(f"WO-{mid}-")
            assert wo["machine"] == mid and wo["product"] in {p.id for p in PLANT.products}
            assert started["kind"] == "wo_start" and started["work_order"] == wo["work_order"]


def test_parts_match_running_time_and_ideal_cycle_times() -> None:
    end = MONDAY_9 + timedelta(hours=8)
    specs = {s.id: s for s in machine_specs(PLANT)}
    for mid, events in by_machine(day_run(hours=8)).items():
        running = sum(
            (b - a).total_seconds() for a, b, e in intervals(events, end) if e["state"] == "running"
        )
        made = parts(events)
        cycles = [ms / 1000 for ms in specs[mid].cycle_ms.values()]
        if mid not in DOWNSTREAM_ONLY:  # those wait for the previous step's first lot
            assert running > 4 * 3600, mid  # most of a day shift is production
        # Cycles are the ideal time stretched by 2-25 %; a few are cut off by breaks.
        assert made * min(cycles) <= running, mid
        assert made * max(cycles) >= 0.7 * running, mid


def test_lathes_report_a_cumulative_counter_with_occasional_resets() -> None:
    events = by_machine(day_run(hours=24 * 5))
    resets = 0
    for mid, evs in events.items():
        kinds = {e["type"] for e in evs}
        if mid in LATHES:
            assert "counter" in kinds and "count" not in kinds
            values = [e["value"] for e in evs if e["type"] == "counter"]
            resets += sum(b < a for a, b in pairwise(values))
        else:
            assert "count" in kinds and "counter" not in kinds
    assert resets >= 1


def test_a_new_run_continues_the_counter_without_phantom_parts() -> None:
    """The demo backfills history, then runs live (and restarts): the plant sees one counter
    per lathe across runs, so a run's first value must not read as parts made in between."""
    first = by_machine(day_run(hours=24))
    second = by_machine(day_run(start=MONDAY_9 + timedelta(hours=24), hours=24))
    for mid in LATHES:
        assert parts(first[mid]) > 0
        assert parts(first[mid] + second[mid]) == parts(first[mid]) + parts(second[mid])


def test_stops_have_believable_reasons_and_late_operator_reports() -> None:
    events = day_run(hours=24 * 3)
    end = MONDAY_9 + timedelta(hours=72)
    machines = by_machine(events)
    reports = [e for e in events if e["type"] == "report" and e["kind"] == "downtime_reason"]
    assert len(reports) >= 5
    after_end = 0
    for r in reports:
        when = ts(r["at"])
        stop = [
            (a, b, e)
            for a, b, e in intervals(machines[r["machine"]], end)
            if a <= when < b and e["state"] in ("down", "idle")
        ]
        assert stop, f"report {r['id']} points at no stop"
        a, b, e = stop[0]
        assert "reason" not in e  # operators fill in stops the machine did not explain
        assert r["operator"] in CREW  # the operator signed in at the machine
        assert timedelta(minutes=1) <= ts(r["ts"]) - a <= timedelta(minutes=20)
        after_end += ts(r["ts"]) > b
    assert after_end >= 1
    downs = [e for e in events if e["type"] == "state" and e["state"] == "down"]
    im_faults = {e.get("reason") for e in downs if e["machine"] in IM} - {None}
    cnc_faults = {e.get("reason") for e in downs if e["machine"] in CNC} - {None}
    assert im_faults and im_faults <= {"hydraulic_fault", "heater_fault", "mold_damage"}
    assert cnc_faults and cnc_faults <= {"tool_break", "spindle_alarm"}
    # Repairs take 3-40 min (shorter only when a break or the shift end cuts them).
    for mid, evs in machines.items():
        for a, b, e in intervals(evs, end):
            if e["state"] == "down":
                nxt = state_at(evs, b)
                assert b - a <= timedelta(minutes=40), mid
                assert b - a >= timedelta(minutes=3) or nxt["state"] == "planned_stop", mid
    # Micro-stops: short idle without a reason, under the machine's micro-stop threshold.
    micro = [
        (mid, b - a)
        for mid, evs in machines.items()
        for a, b, e in intervals(evs, end)
        if e["state"] == "idle" and "reason" not in e and b - a < timedelta(seconds=120)
    ]
    assert len(micro) > 50
    assert all(d < timedelta(seconds=PLANT.microstop_seconds(mid)) for mid, d in micro)
    assert not [m for m, _ in micro if m == "CNC-06"]  # micro-stops are off for the EDM
    scrap = [e for e in events if e["type"] == "report" and e["kind"] == "scrap"]
    assert scrap and all(1 <= e["qty"] <= 5 and e["operator"] for e in scrap)


def test_machines_are_planned_stop_during_breaks_and_off_shift() -> None:
    machines = by_machine(day_run())
    im_breaks = [(at(16, 12), at(16, 12, 30)), (at(16, 16), at(16, 16, 10))]
    im_breaks.append((at(17, 0), at(17, 0, 30)))  # the night shift's supper, after midnight
    cnc_breaks = [(at(16, 11, 30), at(16, 12, 30))]
    for mid, evs in machines.items():
        for a, b in im_breaks if mid in IM else cnc_breaks:
            for when in (a, a + (b - a) / 2, b - timedelta(seconds=1)):
                e = state_at(evs, when)
                assert e["state"] == "planned_stop" and ts(e["ts"]) == a, (mid, when)
            assert state_at(evs, b)["state"] != "planned_stop"
        if mid in CNC:  # the CNC cell works 07:30-19:30 only
            e = state_at(evs, at(16, 23))
            assert (e["state"], e.get("reason"), e["ts"][11:16]) == (
                "planned_stop",
                "no_shift",
                "19:30",
            )
    # Molding runs through the weekend; the CNC cell's Friday shift ends 19:30 and it
    # stays off until Monday 07:30.
    weekend = by_machine(day_run(start=at(21, 18), hours=18))
    for mid in IM:
        assert state_at(weekend[mid], at(22, 3))["state"] != "planned_stop"
        assert state_at(weekend[mid], at(22, 9))["state"] != "planned_stop"
    for mid in CNC:
        assert state_at(weekend[mid], at(22, 9))["state"] == "planned_stop"


def test_work_order_changes_go_through_setup() -> None:
    events = day_run()
    machines = by_machine(events)
    changes = 0
    for mid, evs in machines.items():
        for i, e in enumerate(evs):
            if e["type"] != "report" or e["kind"] != "wo_end":
                continue
            changes += 1
            setup = evs[i + 1]
            assert setup["type"] == "state" and setup["ts"] == e["ts"], mid
            assert setup["state"] == "setup"
            assert setup["reason"] == ("mold_change" if mid in IM else "parameter_tuning")
            start = next(
                (x for x in evs[i + 1 :] if x["type"] == "report" and x["kind"] == "wo_start"),
                None,
            )
            if start is None:  # the run ended during the changeover
                continue
            assert start["work_order"] != e["work_order"]
            assert ts(start["ts"]) - ts(e["ts"]) >= timedelta(minutes=10)
            assert state_at(evs, ts(start["ts"]))["state"] == "running"
            # No parts while the machine is changed over.
            between = [x for x in evs if e["ts"] < x["ts"] < start["ts"]]
            assert not [x for x in between if x["type"] == "count"]
    assert changes >= 6


# -- file output ------------------------------------------------------------------------------


def test_write_history_writes_valid_jsonl(tmp_path: Path) -> None:
    out = tmp_path / "day.jsonl"
    n = write_history(PLANT, out, seed=7, start=MONDAY_9, duration_s=4 * 3600)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert n == len(lines) > 1000
    events = [json.loads(line) for line in lines]
    assert tuple(events) == day_run(hours=4)
    for line in lines[:2000]:
        parse_event(line)
    # Default start: now in plant time, rounded down to the minute.
    n = write_history(PLANT, tmp_path / "now.jsonl", seed=1, start=None, duration_s=60)
    first = json.loads((tmp_path / "now.jsonl").read_text().splitlines()[0])
    assert n >= len(PLANT.machines) and first["ts"].endswith(":00.000+08:00")


# -- MQTT -------------------------------------------------------------------------------------


def test_run_simulator_publishes_the_stream_over_mqtt(
    broker: Broker, plant: PlantConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    start, duration = MONDAY_9, 1200.0
    expected = {
        e["id"]: e
        for e in generate(plant, seed=3, start=start, end=start + timedelta(seconds=duration))
        if e["type"] != "work_order"  # no MQTT topic: they go to the ingest log
    }
    with listening(broker, "test-sim-sub") as got:
        t0 = time.monotonic()
        run_simulator(plant, broker.url, seed=3, speed=3600, start=start, duration_s=duration)
        assert time.monotonic() - t0 < 5  # 20 simulated minutes at 3600x: ~1/3 s
        deadline = time.monotonic() + 10
        while len(got) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "connected to" in capsys.readouterr().out
    assert len(got) == len(expected)
    im01_codes = set()
    for topic, body in got:
        t = parse_topic(topic)
        line = plant.line_of_machine[t.machine]
        assert (t.site, t.area, t.line) == ("suzhou", line.area, line.id)
        assert "type" not in body and "machine" not in body
        want = expected[body["id"]]
        assert (t.machine, t.type) == (want["machine"], want["type"])
        if t.type == "state":
            mapping = plant.machines[t.machine].state_mapping
            if t.machine == "IM-01":
                im01_codes.add(body["state"])
            # The collector maps native codes back: the result is the canonical state.
            assert (plant.map_state(mapping, body["state"]) if mapping else body["state"]) == want[
                "state"
            ]
            body = {**body, "state": want["state"]}
        assert {**body, "type": t.type, "machine": t.machine} == want
        parse_event(json.dumps(want))
    assert "1" in im01_codes and "running" not in im01_codes  # EUROMAP 77 "automatic"
