"""streams/labor.py: labor segments per person, station, work order, operation and shift.

The example plant (tests/conftest.py): molding (IM-*) runs day 08:00-20:00 and night
20:00-08:00, every day; the CNC cell one day shift 07:30-19:30 Monday to Friday; plant time
Asia/Shanghai (UTC+8). 2026-11-20 is a Friday.
"""

from __future__ import annotations

import itertools
import json
import pickle
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow.events import parse_event
from mesflow.plant import LaborPolicy, PlantConfig, load_plant_config
from streams.labor import Labor, LaborIssue, LaborSegment, LaborState, StationPresence
from streams.records import FloorInput
from streams.validate import OrderInput

CST = timezone(timedelta(hours=8))
DAY = datetime(2026, 11, 20, tzinfo=CST)
H = 3600.0


def at(h: float, day: int = 0) -> datetime:
    return DAY + timedelta(days=day, hours=h)


def rep(kind: str, machine: str, ts: datetime, **kw: Any) -> Any:
    body = {"type": "report", "kind": kind, "machine": machine, "ts": ts.isoformat(), **kw}
    return parse_event(json.dumps(body))


def sign_in(who: str, m: str, ts: datetime) -> Any:
    return rep("sign_in", m, ts, operator=who)


def sign_out(who: str, m: str, ts: datetime) -> Any:
    return rep("sign_out", m, ts, operator=who)


def wo_start(wo: str, m: str, ts: datetime, **kw: Any) -> Any:
    return rep("wo_start", m, ts, work_order=wo, **kw)


def wo_end(wo: str, m: str, ts: datetime) -> Any:
    return rep("wo_end", m, ts, work_order=wo)


class Sink:
    """What the results sink keeps: the last row per key."""

    def __init__(self) -> None:
        self.segments: dict[tuple[str, str, datetime], LaborSegment] = {}
        self.presence: dict[tuple[str, str], StationPresence] = {}
        self.issues: dict[tuple[int, str], LaborIssue] = {}

    def take(self, labor: Labor) -> Sink:
        for r in labor.take():
            if type(r) is LaborSegment:
                self.segments[(r.person, r.station, r.start)] = r
            elif type(r) is StationPresence:
                if r.present:
                    self.presence[(r.station, r.person)] = r
                else:
                    self.presence.pop((r.station, r.person), None)
            else:
                assert type(r) is LaborIssue
                self.issues[(r.seq, r.kind)] = r
        return self

    def closed(self) -> list[LaborSegment]:
        return sorted(
            (s for s in self.segments.values() if s.end is not None),
            key=lambda s: (s.person, s.station, s.start),
        )

    def hours_by(self, *fields: str) -> dict[tuple[Any, ...], float]:
        out: dict[tuple[Any, ...], float] = defaultdict(float)
        for s in self.closed():
            assert s.end is not None
            key = tuple(getattr(s, f) for f in fields)
            out[key] += (s.end - s.start).total_seconds() * s.share / H
        return {k: round(v, 6) for k, v in out.items() if v}


def run(plant: PlantConfig, events: list[Any], labor: Labor | None = None) -> tuple[Labor, Sink]:
    labor = labor or Labor(plant)
    sink = Sink()
    for seq, ev in enumerate(events, start=1):
        labor.on_event(seq, ev)
    return labor, sink.take(labor)


def test_time_adds_up_across_a_shift_boundary(plant: PlantConfig) -> None:
    _, sink = run(
        plant,
        [
            wo_start("WO-1", "IM-01", at(17)),
            sign_in("wang", "IM-01", at(18)),
            wo_start("WO-2", "IM-01", at(21)),  # ends WO-1 at this station
            sign_out("wang", "IM-01", at(22, 0)),
        ],
    )
    assert sink.hours_by("work_order", "shift_date", "shift_name") == {
        ("WO-1", date(2026, 11, 20), "day"): 2.0,
        ("WO-1", date(2026, 11, 20), "night"): 1.0,
        ("WO-2", date(2026, 11, 20), "night"): 1.0,
    }
    assert [s.closed_by for s in sink.closed()] == ["shift", "wo", "sign_out"]
    assert sink.presence == {}
    assert sink.issues == {}


def test_a_person_at_two_stations_books_half_to_each(plant: PlantConfig) -> None:
    _, sink = run(
        plant,
        [
            sign_in("li", "IM-01", at(9)),
            sign_in("li", "IM-02", at(10)),
            sign_out("li", "IM-01", at(11)),
            sign_out("li", "IM-02", at(12)),
        ],
    )
    assert sink.hours_by("person") == {("li",): 3.0}  # attendance, not 4 h
    assert sink.hours_by("station") == {("IM-01",): 1.5, ("IM-02",): 1.5}
    assert {s.share for s in sink.closed()} == {0.5, 1.0}


def test_presence_shows_who_is_where_now(plant: PlantConfig) -> None:
    labor, sink = run(
        plant,
        [
            wo_start("WO-1", "IM-01", at(8)),
            sign_in("li", "IM-01", at(9)),
            sign_in("li", "IM-02", at(10)),
            sign_in("zhao", "IM-02", at(10.5)),
            sign_out("li", "IM-02", at(11)),
        ],
    )
    assert sorted(sink.presence) == [("IM-01", "li"), ("IM-02", "zhao")]
    li = sink.presence[("IM-01", "li")]
    assert (li.since, li.work_order, li.share) == (at(9), "WO-1", 1.0)
    # Open segments: one per person and station, growing until their bound.
    opened = [s for s in sink.segments.values() if s.end is None]
    assert sorted((s.person, s.station, s.start, s.bound) for s in opened) == [
        ("li", "IM-01", at(11), at(20)),
        ("zhao", "IM-02", at(10.5), at(20)),
    ]
    assert labor.state.people["li"].clock == int(at(11).timestamp() * 1e6)


def test_forgotten_sign_out_closes_after_max_hours(plant: PlantConfig) -> None:
    assert plant.labor.max_sign_in_hours == 12
    _, sink = run(
        plant,
        [
            sign_in("sun", "IM-03", at(7)),
            sign_in("sun", "IM-03", at(9, day=1)),  # the next day: the old one expired
        ],
    )
    assert sink.hours_by("person") == {("sun",): 12.0}
    expired = [s for s in sink.closed() if s.closed_by == "expired"]
    assert [(s.start, s.end) for s in expired] == [(at(8), at(19))]  # 7-8 night, 8-19 day
    assert [(i.seq, i.kind, i.ts) for i in sink.issues.values()] == [(1, "expired", at(19))]
    assert sink.presence[("IM-03", "sun")].since == at(9, day=1)


def test_tick_closes_a_forgotten_sign_in_without_new_events(plant: PlantConfig) -> None:
    labor, sink = run(plant, [sign_in("sun", "IM-03", at(7))])
    labor.tick(int(at(30).timestamp() * 1e6))
    sink.take(labor)
    assert sink.hours_by("person") == {("sun",): 12.0}
    assert sink.presence == {}
    assert [s for s in sink.segments.values() if s.end is None] == []


def test_duplicate_sign_in_is_ignored_and_visible(plant: PlantConfig) -> None:
    once = run(plant, [sign_in("wu", "IM-04", at(9)), sign_out("wu", "IM-04", at(10))])[1]
    twice = run(
        plant,
        [
            sign_in("wu", "IM-04", at(9)),
            sign_in("wu", "IM-04", at(9.5)),
            sign_out("wu", "IM-04", at(10)),
        ],
    )[1]
    assert twice.segments == once.segments
    assert [(i.seq, i.kind) for i in twice.issues.values()] == [(2, "duplicate_sign_in")]


def test_sign_out_without_sign_in_is_a_visible_no_op(plant: PlantConfig) -> None:
    _, sink = run(plant, [sign_out("ghost", "IM-05", at(9))])
    assert sink.segments == {} and sink.presence == {}
    assert [(i.seq, i.kind, i.person) for i in sink.issues.values()] == [
        (1, "sign_out_without_sign_in", "ghost")
    ]


def test_late_reports_take_effect_at_the_persons_clock(plant: PlantConfig) -> None:
    _, sink = run(
        plant,
        [
            sign_in("he", "IM-01", at(9)),
            sign_in("he", "IM-02", at(10)),
            sign_out("he", "IM-01", at(9.5)),  # older than what is booked: applied at 10:00
            sign_out("he", "IM-02", at(11)),
        ],
    )
    assert sink.hours_by("person") == {("he",): 2.0}
    assert sink.hours_by("station") == {("IM-01",): 1.0, ("IM-02",): 1.0}
    late = list(sink.issues.values())
    assert [(i.seq, i.kind, i.ts, i.applied) for i in late] == [(3, "late", at(9.5), at(10))]


def test_wo_end_of_another_work_order_changes_nothing(plant: PlantConfig) -> None:
    _, sink = run(
        plant,
        [
            wo_start("WO-1", "IM-01", at(9)),
            sign_in("li", "IM-01", at(9)),
            wo_end("WO-9", "IM-01", at(10)),
            wo_end("WO-1", "IM-01", at(11)),
            sign_out("li", "IM-01", at(12)),
        ],
    )
    assert sink.hours_by("work_order") == {("WO-1",): 2.0, ("",): 1.0}


def test_operation_explicit_or_from_the_routing(plant: PlantConfig) -> None:
    routing = [
        {"op": "10", "machines": ["IM-01", "IM-02"]},
        {"op": "20", "machines": ["CNC-01"]},
    ]
    wo = parse_event(
        json.dumps(
            {
                "type": "work_order",
                "work_order": "WO-R",
                "order_no": "SO-1",
                "product": "P-100",
                "qty": 100,
                "ts": at(6).isoformat(),
                "routing": routing,
            }
        )
    )
    labor = Labor(plant)
    labor.on_event(0, OrderInput("SO-1", wo).event)  # type: ignore[arg-type]
    labor, sink = run(
        plant,
        [
            wo_start("WO-R", "CNC-01", at(8)),  # the step listing CNC-01
            wo_start("WO-R", "IM-01", at(8), operation="20"),  # explicit wins
            wo_start("WO-R", "IM-02", at(8)),
            sign_in("a", "CNC-01", at(9)),
            sign_in("b", "IM-01", at(9)),
            sign_in("c", "IM-02", at(9)),
            sign_out("a", "CNC-01", at(10)),
            sign_out("b", "IM-01", at(10)),
            sign_out("c", "IM-02", at(10)),
        ],
        labor,
    )
    assert sink.hours_by("person", "operation") == {
        ("a", "20"): 1.0,
        ("b", "20"): 1.0,
        ("c", "10"): 1.0,
    }


def test_cnc_time_outside_its_shift_books_to_no_shift(plant: PlantConfig) -> None:
    # The CNC day shift ends 19:30; Saturday is no workday there.
    _, sink = run(plant, [sign_in("ma", "CNC-02", at(19)), sign_out("ma", "CNC-02", at(25))])
    assert sink.hours_by("shift_date", "shift_name") == {
        (date(2026, 11, 20), "day"): 0.5,
        (date(2026, 11, 20), ""): 4.5,  # 19:30 to midnight
        (date(2026, 11, 21), ""): 1.0,
    }


def test_daylight_saving_night_shift_is_an_hour_longer(plant_file: Path, tmp_path: Path) -> None:
    text = plant_file.read_text(encoding="utf-8").replace("Asia/Shanghai", "Europe/Berlin")
    berlin = load_plant_config(_write(tmp_path / "berlin.yaml", text)).model_copy(
        update={"labor": LaborPolicy(max_sign_in_hours=14)}  # 12 h would expire first
    )
    tz = berlin.plant.timezone
    from zoneinfo import ZoneInfo

    z = ZoneInfo(tz)
    start = datetime(2026, 10, 24, 20, 0, tzinfo=z)  # clocks go back at 03:00 on the 25th
    end = datetime(2026, 10, 25, 8, 0, tzinfo=z)
    _, sink = run(berlin, [sign_in("k", "IM-01", start), sign_out("k", "IM-01", end)])
    assert sink.hours_by("shift_date", "shift_name") == {(date(2026, 10, 24), "night"): 13.0}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _script() -> list[Any]:
    return [
        wo_start("WO-1", "IM-01", at(7)),
        sign_in("wang", "IM-01", at(7.5)),
        sign_in("li", "IM-02", at(7.75)),
        sign_in("wang", "IM-02", at(9)),
        wo_start("WO-2", "IM-02", at(10)),
        sign_out("li", "IM-02", at(19.5)),
        wo_end("WO-1", "IM-01", at(21)),
        sign_out("wang", "IM-02", at(22)),
        sign_in("li", "IM-02", at(7.5, day=1)),
        sign_out("wang", "IM-01", at(8, day=1)),
    ]


@pytest.mark.parametrize("cut", [1, 4, 6, 9])
def test_pickled_state_resumes_to_the_same_rows(plant: PlantConfig, cut: int) -> None:
    events = _script()
    _, whole = run(plant, events)
    first = Labor(plant)
    sink = Sink()
    for seq, ev in enumerate(events[:cut], start=1):
        first.on_event(seq, ev)
    sink.take(first)
    second = Labor(plant, pickle.loads(pickle.dumps(first.state)))
    for seq, ev in enumerate(events[cut:], start=cut + 1):
        second.on_event(seq, ev)
    sink.take(second)
    assert sink.segments == whole.segments
    assert sink.presence == whole.presence
    assert sink.issues == whole.issues


def test_state_is_small_and_plain(plant: PlantConfig) -> None:
    labor, _ = run(plant, _script())
    assert isinstance(pickle.loads(pickle.dumps(labor.state)), LaborState)


_STATIONS = ["IM-01", "IM-02", "CNC-01"]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["in", "out", "wo"]),
            st.sampled_from(["p1", "p2"]),
            st.sampled_from(_STATIONS),
            st.integers(min_value=0, max_value=40 * 60),  # minutes after 06:00, any order
        ),
        max_size=30,
    )
)
def test_a_persons_shares_add_up_to_one_at_every_instant(
    plant: PlantConfig, steps: list[tuple[str, str, str, int]]
) -> None:
    events = []
    for i, (what, who, m, minute) in enumerate(steps):
        ts = at(6) + timedelta(minutes=minute)
        if what == "in":
            events.append(sign_in(who, m, ts))
        elif what == "out":
            events.append(sign_out(who, m, ts))
        else:
            events.append(wo_start(f"WO-{i}", m, ts))
    labor, sink = run(plant, events)
    labor.tick(int(at(80).timestamp() * 1e6))  # closes every sign-in (12 h at most)
    sink.take(labor)
    segs = list(sink.segments.values())
    assert all(s.end is not None and s.end >= s.start for s in segs)
    spans = [(s.person, s.station, s.start, s.end, s.share) for s in segs if s.end is not None]
    for person in {p for p, *_ in spans}:
        mine = [(st_, a, b, share) for p, st_, a, b, share in spans if p == person and a != b]
        # At any instant the person's shares sum to exactly 1 (or nothing is booked).
        for cut in sorted({t for _, a, b, _ in mine for t in (a, b)})[:-1]:
            total = sum(share for _, a, b, share in mine if a <= cut < b)
            assert total == 0 or abs(total - 1) < 1e-9, (person, cut, total)
        for station in _STATIONS:  # one station's segments never overlap
            own = sorted((a, b) for st_, a, b, _ in mine if st_ == station)
            assert all(y[0] >= x[1] for x, y in itertools.pairwise(own))
        # No booking lasts longer than the expiry allows after the sign-in.
        assert all(b - a <= timedelta(hours=12) for _, a, b, _ in mine)


def test_input_filter_takes_only_labor_inputs(plant: PlantConfig) -> None:
    from streams.labor import labor_events

    ev = sign_in("x", "IM-01", at(9))
    other = rep("scrap", "IM-01", at(9), qty=1)
    assert labor_events([FloorInput(5, ev), FloorInput(6, other), ("IM-01", (1, other))]) == [
        (5, ev)
    ]
    wo = parse_event(
        json.dumps(
            {"type": "work_order", "work_order": "WO-9", "order_no": "SO-9", "product": "P-100",
             "qty": 5, "ts": at(6).isoformat()}
        )
    )  # fmt: skip
    order = parse_event(
        json.dumps(
            {"type": "order", "order_no": "SO-9", "version": 1, "customer": "C", "priority": 1,
             "product": "P-100", "qty": 5, "due": at(30).isoformat(), "status": "open",
             "ts": at(6).isoformat()}
        )
    )  # fmt: skip
    batch = [OrderInput("SO-9", wo), OrderInput("SO-9", order)]  # type: ignore[arg-type]
    assert labor_events(batch) == [(0, wo)]
