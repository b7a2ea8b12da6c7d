"""streams/shift_calendar.py: indexes of one calendar and zone share their day caches
(one per machine and step otherwise), and still answer exactly as an index alone."""

from __future__ import annotations

import pickle
from datetime import time

from mesflow.plant import Break, Shift, ShiftCalendar
from streams.hour_clock import HOUR_US
from streams.shift_calendar import _SHARED, CalendarIndex

SH = "Asia/Shanghai"
T0 = 1_794_787_200_000_000  # 2026-11-16T08:00+08:00


def calendar(day_start: str = "08:00") -> ShiftCalendar:
    return ShiftCalendar(
        shifts=[
            Shift(
                name="day",
                start=time.fromisoformat(day_start),
                end=time(20, 0),
                breaks=[Break(start=time(12, 0), end=time(12, 30))],
            ),
            Shift(name="night", start=time(20, 0), end=time.fromisoformat(day_start)),
        ],
        workdays=[1, 2, 3, 4, 5],
    )


def answers(idx: CalendarIndex) -> list[object]:
    out: list[object] = []
    for k in range(0, 24 * 9 * 4):  # every 15 minutes over 9 days (a weekend among them)
        t = T0 + k * HOUR_US // 4
        out += [idx.planned_at(t), idx.shift_at(t)]
    out += [idx.shifts_between(T0, T0 + 9 * 24 * HOUR_US)]
    out += [idx.planned_windows(T0 - 3 * HOUR_US, T0 + 5 * 24 * HOUR_US)]
    return out


def test_equal_calendars_share_the_day_caches() -> None:
    _SHARED.clear()
    a, b = CalendarIndex(calendar(), SH), CalendarIndex(calendar(), SH)
    assert a._day is b._day and a._raw is b._raw and a._timeline is b._timeline
    restored = pickle.loads(pickle.dumps(a))
    assert restored._day is a._day
    # Another calendar, or another zone, has its own.
    other = CalendarIndex(calendar("07:30"), SH)
    assert other._day is not a._day
    assert CalendarIndex(calendar(), "Europe/Berlin")._day is not a._day


def test_shared_caches_answer_as_an_index_alone() -> None:
    _SHARED.clear()
    first = CalendarIndex(calendar(), SH)
    warm = answers(first)  # builds the shared days
    other = answers(CalendarIndex(calendar("07:30"), SH))
    second = CalendarIndex(calendar(), SH)  # answers from the days `first` built
    assert answers(second) == warm
    _SHARED.clear()
    assert answers(CalendarIndex(calendar(), SH)) == warm  # built afresh, alone
    assert answers(CalendarIndex(calendar("07:30"), SH)) == other
    assert other != warm


def test_remembered_date_ranges_answer_as_computed() -> None:
    """The local dates of a range are remembered per zone (here 25 h apart): ranges asked
    again, and by other indexes of that zone, get what a fresh computation gives."""
    from streams import shift_calendar

    _SHARED.clear()
    shift_calendar._DATES.clear()
    idx = CalendarIndex(calendar(), "Pacific/Kiritimati")  # UTC+14
    ranges = [(T0 + k * HOUR_US, T0 + (k + h) * HOUR_US) for k in range(0, 96, 5) for h in (1, 9)]
    first = [(idx.shifts_between(a, b), idx.planned_windows(a, b)) for a, b in ranges]
    again = [(idx.shifts_between(a, b), idx.planned_windows(a, b)) for a, b in ranges]
    far = CalendarIndex(calendar(), "Pacific/Pago_Pago")
    other = [far.planned_windows(a, b) for a, b in ranges]
    shift_calendar._DATES.clear()
    _SHARED.clear()
    fresh = CalendarIndex(calendar(), "Pacific/Kiritimati")
    assert (
        first
        == again
        == [(fresh.shifts_between(a, b), fresh.planned_windows(a, b)) for a, b in ranges]
    )
    shift_calendar._DATES.clear()
    assert other == [
        CalendarIndex(calendar(), "Pacific/Pago_Pago").planned_windows(a, b) for a, b in ranges
    ]
