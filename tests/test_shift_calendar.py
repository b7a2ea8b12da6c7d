"""streams/shift_calendar.py: shift instances, breaks, planned windows, DST, caching."""

from __future__ import annotations

import itertools
import pickle
from datetime import date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow.plant import Break, Shift, ShiftCalendar, load_plant_config
from streams.hour_clock import HOUR_US, to_us
from streams.shift_calendar import CalendarIndex, PlannedWindow, ShiftInstance

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "plant.example.yaml"
SH = "Asia/Shanghai"
MIN_US = 60_000_000
DAY_US = 24 * HOUR_US


def at(zone: str, y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> int:
    return to_us(datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(zone)))


def hours(us: int) -> float:
    return us / HOUR_US


def cal(
    *shifts: tuple[str, str, str, list[tuple[str, str]]], workdays: list[int] | None = None
) -> ShiftCalendar:
    return ShiftCalendar(
        shifts=[
            Shift(
                name=name,
                start=time.fromisoformat(s),
                end=time.fromisoformat(e),
                breaks=[
                    Break(start=time.fromisoformat(bs), end=time.fromisoformat(be))
                    for bs, be in brs
                ],
            )
            for name, s, e, brs in shifts
        ],
        workdays=workdays or [1, 2, 3, 4, 5, 6, 7],
    )


@pytest.fixture(scope="module")
def plant_cal() -> ShiftCalendar:
    return load_plant_config(EXAMPLE).shift_calendar


@pytest.fixture
def idx(plant_cal: ShiftCalendar) -> CalendarIndex:
    return CalendarIndex(plant_cal, SH)


def covered(windows: list[PlannedWindow]) -> int:
    return sum(w.end - w.start for w in windows)


def merged(windows: list[PlannedWindow]) -> list[tuple[int, int]]:
    # Planned time as a set of instants: adjacent windows of the same shift would otherwise
    # differ only in where a split happened.
    out: list[tuple[int, int]] = []
    for w in windows:
        if out and out[-1][1] == w.start:
            out[-1] = (out[-1][0], w.end)
        else:
            out.append((w.start, w.end))
    return out


def check_windows(windows: list[PlannedWindow], a: int, b: int) -> None:
    for w in windows:
        assert a <= w.start < w.end <= b
        assert w.shift.start <= w.start and w.end <= w.shift.end
    for w1, w2 in itertools.pairwise(windows):
        assert w1.end <= w2.start


# -- the example plant ---------------------------------------------------------------------


def test_example_day_and_night_with_breaks(idx: CalendarIndex) -> None:
    a, b = at(SH, 2026, 5, 6, 8), at(SH, 2026, 5, 7, 8)
    day = ShiftInstance(date(2026, 5, 6), "day", a, at(SH, 2026, 5, 6, 20))
    night = ShiftInstance(date(2026, 5, 6), "night", at(SH, 2026, 5, 6, 20), b)
    assert idx.shifts_between(a, b) == [day, night]
    assert idx.planned_windows(a, b) == [
        PlannedWindow(a, at(SH, 2026, 5, 6, 12), day),
        PlannedWindow(at(SH, 2026, 5, 6, 12, 30), at(SH, 2026, 5, 6, 16), day),
        PlannedWindow(at(SH, 2026, 5, 6, 16, 10), at(SH, 2026, 5, 6, 20), day),
        # The 00:00 supper belongs to the night that started the day before.
        PlannedWindow(at(SH, 2026, 5, 6, 20), at(SH, 2026, 5, 7, 0), night),
        PlannedWindow(at(SH, 2026, 5, 7, 0, 30), b, night),
    ]
    assert idx.shift_at(at(SH, 2026, 5, 6, 12, 15)) == day  # during lunch
    assert idx.planned_at(at(SH, 2026, 5, 6, 12, 15)) is None
    assert idx.planned_at(at(SH, 2026, 5, 6, 12, 30)) == day
    assert idx.planned_at(at(SH, 2026, 5, 6, 12, 30) - 1) is None
    assert idx.shift_at(at(SH, 2026, 5, 7, 0, 10)) == night
    assert idx.planned_at(at(SH, 2026, 5, 7, 0, 10)) is None
    assert idx.planned_at(at(SH, 2026, 5, 7, 7, 59)) == night
    assert idx.planned_at(b).name == "day"  # type: ignore[union-attr]
    assert idx.planned_at(b).date == date(2026, 5, 7)  # type: ignore[union-attr]
    assert idx.planned_at(b - 1) == night


def test_example_planned_time_per_day(idx: CalendarIndex) -> None:
    # Day 12 h - 40 min of breaks, night 12 h - 30 min: 22 h 50 min per 24 h.
    a = at(SH, 2026, 1, 1, 8)
    for k in range(10):
        windows = idx.planned_windows(a + k * DAY_US, a + (k + 1) * DAY_US)
        assert covered(windows) == 22 * HOUR_US + 50 * MIN_US
    whole = idx.planned_windows(a, a + 10 * DAY_US)
    check_windows(whole, a, a + 10 * DAY_US)
    assert covered(whole) == 10 * (22 * HOUR_US + 50 * MIN_US)
    assert len(idx.shifts_between(a, a + 10 * DAY_US)) == 20


def test_shifts_between_clips_nothing_and_includes_partial_overlaps(idx: CalendarIndex) -> None:
    t = at(SH, 2026, 5, 7, 7)
    got = idx.shifts_between(t, t + 2 * HOUR_US)  # 07:00-09:00: end of night, start of day
    assert [(s.date, s.name) for s in got] == [
        (date(2026, 5, 6), "night"),
        (date(2026, 5, 7), "day"),
    ]
    assert got[0].start == at(SH, 2026, 5, 6, 20)
    assert idx.shifts_between(t, t) == []
    assert idx.planned_windows(t, t - 1) == []


def test_workdays_friday_night_runs_into_saturday() -> None:
    weekdays = cal(
        ("day", "08:00", "20:00", []),
        ("night", "20:00", "08:00", [("00:00", "00:30")]),
        workdays=[1, 2, 3, 4, 5],
    )
    idx = CalendarIndex(weekdays, SH)
    fri = date(2026, 5, 8)
    assert fri.isoweekday() == 5
    sat_morning = at(SH, 2026, 5, 9, 7)
    night = idx.shift_at(sat_morning)
    assert night == ShiftInstance(fri, "night", at(SH, 2026, 5, 8, 20), at(SH, 2026, 5, 9, 8))
    # The Friday night's supper is on Saturday.
    assert idx.planned_at(at(SH, 2026, 5, 9, 0, 15)) is None
    assert idx.planned_at(at(SH, 2026, 5, 9, 0, 30)) == night
    # Nothing starts on Saturday or Sunday; Monday starts again at 08:00.
    weekend = idx.shifts_between(at(SH, 2026, 5, 9, 8), at(SH, 2026, 5, 11, 8))
    assert weekend == []
    assert idx.shift_at(at(SH, 2026, 5, 9, 12)) is None
    assert idx.planned_at(at(SH, 2026, 5, 10, 21)) is None
    assert idx.shift_at(at(SH, 2026, 5, 11, 8)).date == date(2026, 5, 11)  # type: ignore[union-attr]
    week = idx.planned_windows(at(SH, 2026, 5, 11), at(SH, 2026, 5, 18))
    assert covered(week) == 5 * (24 * HOUR_US - 30 * MIN_US)


def test_cnc_override_calendar() -> None:
    config = load_plant_config(EXAMPLE)
    cnc = config.calendar_for("CNC-01")
    assert cnc != config.shift_calendar
    idx = CalendarIndex(cnc, config.plant.timezone)
    mon = date(2026, 5, 11)
    day = ShiftInstance(mon, "day", at(SH, 2026, 5, 11, 7, 30), at(SH, 2026, 5, 11, 19, 30))
    assert idx.shift_at(at(SH, 2026, 5, 11, 12)) == day
    assert idx.planned_at(at(SH, 2026, 5, 11, 12)) is None  # lunch 11:30-12:30
    assert idx.planned_at(at(SH, 2026, 5, 11, 12, 30)) == day
    assert idx.planned_at(at(SH, 2026, 5, 11, 7, 29)) is None
    assert idx.planned_at(at(SH, 2026, 5, 11, 20)) is None
    week = idx.planned_windows(at(SH, 2026, 5, 11), at(SH, 2026, 5, 18))
    assert covered(week) == 5 * 11 * HOUR_US
    assert [
        s.date.isoweekday() for s in idx.shifts_between(at(SH, 2026, 5, 11), at(SH, 2026, 5, 18))
    ] == [
        1,
        2,
        3,
        4,
        5,
    ]
    # Molding machines keep the plant calendar.
    assert config.calendar_for("IM-01") == config.shift_calendar


# -- DST -----------------------------------------------------------------------------------

BER = "Europe/Berlin"


@pytest.mark.parametrize(
    ("night_of", "length_h", "supper"),
    [
        (date(2026, 3, 28), 11, date(2026, 3, 29)),  # clocks go 02:00 -> 03:00
        (date(2026, 10, 24), 13, date(2026, 10, 25)),  # clocks go 03:00 -> 02:00
        (date(2026, 5, 6), 12, date(2026, 5, 7)),
    ],
)
def test_dst_night_shift_length(
    plant_cal: ShiftCalendar, night_of: date, length_h: int, supper: date
) -> None:
    idx = CalendarIndex(plant_cal, BER)
    start = at(BER, night_of.year, night_of.month, night_of.day, 20)
    night = idx.shift_at(start)
    assert night is not None and night.name == "night" and night.date == night_of
    assert night.end - night.start == length_h * HOUR_US
    windows = idx.planned_windows(night.start, night.end)
    assert covered(windows) == length_h * HOUR_US - 30 * MIN_US
    assert windows[0].end == at(BER, supper.year, supper.month, supper.day, 0)
    # The day shifts either side are 12 h of real time (the change is at night).
    assert idx.shift_at(night.start - 1).end - idx.shift_at(night.start - 1).start == 12 * HOUR_US  # type: ignore[union-attr]
    assert idx.shift_at(night.end).end - idx.shift_at(night.end).start == 12 * HOUR_US  # type: ignore[union-attr]


def test_dst_hour_by_hour_walk_matches_windows(plant_cal: ShiftCalendar) -> None:
    # Walk the planned time over both 2026 changes minute by minute through the hot path.
    idx = CalendarIndex(plant_cal, BER)
    for day in (date(2026, 3, 28), date(2026, 10, 24)):
        a = at(BER, day.year, day.month, day.day)
        b = a + 3 * DAY_US
        step = MIN_US
        walked = sum(step for t in range(a, b, step) if idx.planned_at(t) is not None)
        assert walked == covered(idx.planned_windows(a, b))


# -- overlapping calendars -----------------------------------------------------------------


def test_overlap_first_starting_instance_owns_it() -> None:
    bad = cal(
        ("a", "06:00", "14:00", [("13:00", "13:30")]), ("b", "12:00", "22:00", [("12:30", "13:00")])
    )
    idx = CalendarIndex(bad, SH)
    a, b = at(SH, 2026, 5, 6), at(SH, 2026, 5, 7)
    first, second = idx.shifts_between(a, b)
    assert (first.name, first.start, first.end) == (
        "a",
        at(SH, 2026, 5, 6, 6),
        at(SH, 2026, 5, 6, 14),
    )
    assert (second.name, second.start, second.end) == (
        "b",
        at(SH, 2026, 5, 6, 14),
        at(SH, 2026, 5, 6, 22),
    )
    assert idx.shift_at(at(SH, 2026, 5, 6, 13)) == first
    # b's break lies in the part a owns and disappears; a's break stays.
    assert idx.planned_at(at(SH, 2026, 5, 6, 12, 45)) == first
    assert idx.planned_at(at(SH, 2026, 5, 6, 13, 15)) is None
    assert covered(idx.planned_windows(a, b)) == 16 * HOUR_US - 30 * MIN_US


def test_overlap_covered_instance_does_not_exist() -> None:
    idx = CalendarIndex(cal(("long", "06:00", "22:00", []), ("short", "08:00", "10:00", [])), SH)
    a = at(SH, 2026, 5, 6)
    assert [s.name for s in idx.shifts_between(a, a + DAY_US)] == ["long"]


# -- properties ----------------------------------------------------------------------------

T0 = at(SH, 2025, 1, 1)
T1 = at(SH, 2028, 1, 1)
instants = st.integers(min_value=T0, max_value=T1)

# Random calendars, including overlapping shifts, breaks outside their shift, 24 h shifts.
quarter_hours = st.integers(0, 95).map(lambda q: time(q // 4, q % 4 * 15))
breaks = st.builds(Break, start=quarter_hours, end=quarter_hours)
shifts = st.builds(
    Shift,
    name=st.sampled_from(["a", "b", "c"]),
    start=quarter_hours,
    end=quarter_hours,
    breaks=st.lists(breaks, max_size=3),
)
calendars = st.builds(
    ShiftCalendar,
    shifts=st.lists(shifts, min_size=1, max_size=3),
    workdays=st.lists(st.integers(1, 7), min_size=1, max_size=7, unique=True),
)
zones = st.sampled_from([SH, BER, "America/New_York", "UTC"])


@settings(max_examples=200, deadline=None)
@given(data=st.data(), zone=zones)
def test_split_windows_concatenate(
    plant_cal: ShiftCalendar, data: st.DataObject, zone: str
) -> None:
    idx = CalendarIndex(plant_cal, zone)
    a = data.draw(instants)
    b = data.draw(st.integers(a + 2, a + 4 * DAY_US))
    m = data.draw(st.integers(a + 1, b - 1))
    whole = idx.planned_windows(a, b)
    check_windows(whole, a, b)
    assert merged(idx.planned_windows(a, m) + idx.planned_windows(m, b)) == merged(whole)


@settings(max_examples=300, deadline=None)
@given(t=instants, zone=zones)
def test_planned_at_agrees_with_windows(plant_cal: ShiftCalendar, t: int, zone: str) -> None:
    idx = CalendarIndex(plant_cal, zone)
    around = idx.planned_windows(t - HOUR_US, t + HOUR_US)
    inside = [w.shift for w in around if w.start <= t < w.end]
    assert idx.planned_at(t) == (inside[0] if inside else None)
    shift = idx.shift_at(t)
    assert (shift is not None) == any(s.start <= t < s.end for s in idx.shifts_between(t, t + 1))


@settings(max_examples=150, deadline=None)
@given(calendar=calendars, zone=zones, data=st.data())
def test_random_calendars_are_consistent(
    calendar: ShiftCalendar, zone: str, data: st.DataObject
) -> None:
    idx = CalendarIndex(calendar, zone)
    a = data.draw(instants)
    b = a + data.draw(st.integers(1, 3 * DAY_US))
    insts = idx.shifts_between(a, b)
    for s1, s2 in itertools.pairwise(insts):
        assert s1.end <= s2.start  # overlaps resolved
    windows = idx.planned_windows(a, b)
    check_windows(windows, a, b)
    # Sample the hot path (in increasing order, as events arrive) against the ranges.
    for t in sorted(data.draw(st.lists(st.integers(a, b - 1), max_size=20))):
        inside = [w.shift for w in windows if w.start <= t < w.end]
        assert idx.planned_at(t) == (inside[0] if inside else None)
        owner = [s for s in insts if s.start <= t < s.end]
        assert idx.shift_at(t) == (owner[0] if owner else None)


# -- caching and pickling ------------------------------------------------------------------


def test_hot_path_cache_follows_jumps(idx: CalendarIndex) -> None:
    # Back and forth, across days and far away: the cached segment must never leak.
    fresh = CalendarIndex(idx.calendar, SH)
    ts = [
        at(SH, 2026, 5, 6, 12, 10),
        at(SH, 2026, 5, 6, 9),
        at(SH, 2027, 2, 1, 0, 5),
        at(SH, 2026, 5, 6, 12, 10),
    ]
    ts += [at(SH, 2026, 5, 6, 16, 5), at(SH, 2026, 5, 6, 20) - 1, at(SH, 2026, 5, 6, 20)]
    for t in ts:
        expected = CalendarIndex(idx.calendar, SH)
        assert fresh.planned_at(t) == expected.planned_at(t)
        assert fresh.shift_at(t) == expected.shift_at(t)


def test_pickle_round_trip(idx: CalendarIndex) -> None:
    t = at(SH, 2026, 5, 6, 9)
    before = idx.planned_at(t)
    idx.planned_windows(t, t + 7 * DAY_US)  # fill the caches
    data = pickle.dumps(idx)
    assert len(data) < 4000  # the calendar and the zone, not the caches
    back = pickle.loads(data)
    assert isinstance(back, CalendarIndex)
    assert back.zone == SH and back.calendar == idx.calendar
    assert back.planned_at(t) == before
    assert back.planned_windows(t, t + DAY_US) == idx.planned_windows(t, t + DAY_US)
