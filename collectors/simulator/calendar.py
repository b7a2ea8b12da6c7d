"""A machine's shift calendar as a timeline: contiguous work, break and off-shift pieces.

Times are integer milliseconds since the epoch (UTC); shift and break times are read in the
plant's time zone, so a night shift crosses midnight and DST days have their real length.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from mesflow.plant import Shift, ShiftCalendar

WORK = "work"  # inside a shift, outside its breaks
BREAK = "break"  # a scheduled break inside a shift
OFF = "off"  # no shift (nights, weekends, holidays of the calendar)

DAY_MS = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

Piece = tuple[int, int, str]  # (start_ms, end_ms, kind)


def to_ms(dt: datetime) -> int:
    """Exact epoch milliseconds of an aware datetime (no float rounding)."""
    return (dt - _EPOCH) // _ONE_MS


def _at(day: date, t: time, tz: ZoneInfo) -> int:
    return to_ms(datetime.combine(day, t, tzinfo=tz))


def _shift_marks(shift: Shift, day: date, tz: ZoneInfo) -> list[Piece]:
    """The work interval of `shift` started on `day`, and its breaks (clipped to the shift)."""
    nxt = day + timedelta(days=1)
    start = _at(day, shift.start, tz)
    end = _at(day if shift.end > shift.start else nxt, shift.end, tz)
    marks: list[Piece] = [(start, end, WORK)]
    for brk in shift.breaks:
        # A break earlier in the day than the shift's start belongs to the shift's second day.
        b_day = day if brk.start >= shift.start else nxt
        b_start = _at(b_day, brk.start, tz)
        b_end = _at(b_day if brk.end > brk.start else b_day + timedelta(days=1), brk.end, tz)
        b_start, b_end = max(b_start, start), min(b_end, end)
        if b_start < b_end:
            marks.append((b_start, b_end, BREAK))
    return marks


def _kind_at(marks: list[Piece], t: int) -> str:
    in_work = False
    for start, end, kind in marks:
        if start <= t < end:
            if kind == BREAK:
                return BREAK
            in_work = True
    return WORK if in_work else OFF


def timeline(
    calendar: ShiftCalendar, tz: ZoneInfo, start_ms: int, end_ms: int | None
) -> Iterator[Piece]:
    """Contiguous pieces covering [start_ms, end_ms) (forever when end_ms is None).

    Adjacent pieces of one kind are merged, except that a piece is cut after a day so an
    always-on calendar still yields (consumers treat work followed by work as continuous).
    """
    workdays = set(calendar.workdays)
    day = datetime.fromtimestamp(start_ms / 1000, tz).date() - timedelta(days=1)
    marks: list[Piece] = []
    done = start_ms  # the timeline is final up to here
    open_start, open_kind = start_ms, ""
    while end_ms is None or done < end_ms:
        if day.isoweekday() in workdays:
            for shift in calendar.shifts:
                marks.extend(_shift_marks(shift, day, tz))
        day += timedelta(days=1)
        # Shifts that start on later days begin at or after this midnight, so the
        # timeline before it cannot change any more.
        horizon = _at(day, time(0), tz)
        if end_ms is not None:
            horizon = min(horizon, end_ms)
        if horizon <= done:
            continue
        cuts = sorted(
            {done, horizon} | {x for s, e, _ in marks for x in (s, e) if done < x < horizon}
        )
        for a in cuts[:-1]:
            kind = _kind_at(marks, a)
            if kind != open_kind:
                if open_kind and open_start < a:
                    yield (open_start, a, open_kind)
                open_start, open_kind = a, kind
        done = horizon
        marks = [m for m in marks if m[1] > done]
        if done - open_start >= DAY_MS:
            yield (open_start, done, open_kind)
            open_start = done
    if open_kind and open_start < done:
        yield (open_start, done, open_kind)
