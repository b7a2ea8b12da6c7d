"""Time on the hot path: integer microseconds since the epoch, and plant-local hour buckets.

Integers, not floats: interval boundaries are compared and used as primary keys, and
float round-trips would make `at` fall one microsecond outside the stop it names.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
HOUR_US = 3_600_000_000


def to_us(ts: datetime) -> int:
    return (ts - EPOCH) // _US


def from_us(t: int) -> datetime:
    # Positional timedelta arguments: twice as fast as the keyword (rows call this a lot).
    return EPOCH + _td(0, 0, t)


_td = timedelta


class HourClock:
    """Maps an instant to its hour of the plant's time zone, as (start, end) microseconds.

    Caches the last bucket: consecutive events of a machine almost always fall in the
    same hour, and the zone conversion is the expensive part. Pickles as its zone name.
    """

    __slots__ = ("_end", "_start", "_tz", "zone")

    def __init__(self, zone: str) -> None:
        self.zone = zone
        self._tz = ZoneInfo(zone)
        self._start = 1
        self._end = 0

    def __reduce__(self) -> tuple[type[HourClock], tuple[str]]:
        return (HourClock, (self.zone,))

    def bucket(self, t: int) -> tuple[int, int]:
        if self._start <= t < self._end:
            return self._start, self._end
        local = from_us(t).astimezone(self._tz)
        start = to_us(local.replace(minute=0, second=0, microsecond=0))
        # An hour of local time is 3600 s of real time, also across a DST change (the
        # local hour that repeats is two buckets, each with its own UTC start).
        end = start + HOUR_US
        self._start, self._end = start, end
        return start, end
