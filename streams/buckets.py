"""Accumulators of one bucket (an hour or a shift instance) of one machine.

All times are integer microseconds, so adding a contribution and later subtracting the
same contribution (when a late event or an operator's reason report revises it) gives
back exactly the previous figures, with no float drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Time classes inside planned time, in this order (index into Bucket.time_us).
RUNNING, MICRO, IDLE, DOWN, SETUP, OFFLINE, PLANNED_STOP = range(7)
DOWNTIME_CLASSES = frozenset({IDLE, DOWN, SETUP, OFFLINE})


@dataclass(slots=True)
class Bucket:
    start: int
    end: int
    time_us: list[int] = field(default_factory=lambda: [0] * 7)
    raw_us: list[int] = field(default_factory=lambda: [0] * 6)  # all time by state (hours)
    micro_count: int = 0
    failures: int = 0
    failure_us: int = 0
    reasons: dict[str, list[int]] = field(default_factory=dict)  # reason -> [us, stops]
    all_good: int = 0
    all_scrap: int = 0
    good: int = 0
    scrap: int = 0
    ideal_us: int = 0

    def add_reason(self, reason: str, us: int, stops: int) -> None:
        entry = self.reasons.get(reason)
        if entry is None:
            entry = self.reasons[reason] = [0, 0]
        entry[0] += us
        entry[1] += stops
        if entry[0] == 0 and entry[1] == 0:
            del self.reasons[reason]
