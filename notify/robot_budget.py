"""The per-robot message budget (20 a minute), shared by every dispatcher process.

Kept in PostgreSQL (`robot_budget`: the send times inside the sliding window, one row per
channel) and read and written under `SELECT ... FOR UPDATE`, so two dispatchers together
never exceed it. A sliding window, not a per-clock-minute counter: whichever way a
platform counts its minute, no 60 s span holds more than the limit. The time is the
database's (`clock_timestamp()`), so processes on hosts with skewed clocks agree.

A token is taken before the message is sent and kept whatever the answer: the platform
counts attempts too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg

LIMIT: Final = 20  # messages per window per robot (WeCom, DingTalk; Feishu allows more)
WINDOW_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class Window:
    """The sends still inside the window at `now`, and what that leaves."""

    sends: tuple[datetime, ...]
    available: int
    next_free_in_s: float  # when the next token frees up (0 when one is available)


def window(
    sends: Sequence[datetime], now: datetime, *, limit: int = LIMIT, window_s: float = WINDOW_S
) -> Window:
    """Pure: the state of a sliding-window budget at `now`."""
    start = now - timedelta(seconds=window_s)
    kept = tuple(sorted(t for t in sends if t > start))
    available = max(0, limit - len(kept))
    if available:
        wait = 0.0
    else:
        # The oldest send that must leave the window before one more fits.
        oldest = kept[len(kept) - limit]
        wait = max(0.0, (oldest - start).total_seconds())
    return Window(kept, available, wait)


@dataclass
class Hold:
    """A locked budget row: `take(n)` spends tokens (at most `available`)."""

    now: datetime
    state: Window
    limit: int
    window_s: float
    taken: list[datetime] = field(default_factory=list)

    @property
    def available(self) -> int:
        return self.state.available - len(self.taken)

    @property
    def next_free_in_s(self) -> float:
        return self.state.next_free_in_s

    @property
    def next_free_after_in_s(self) -> float:
        """When a token frees up, counting the ones taken in this hold."""
        return window(
            [*self.state.sends, *self.taken], self.now, limit=self.limit, window_s=self.window_s
        ).next_free_in_s

    def take(self, n: int) -> int:
        n = max(0, min(n, self.available))
        self.taken.extend([self.now] * n)
        return n


@contextmanager
def hold(
    conn: psycopg.Connection[Any],
    channel: str,
    *,
    limit: int = LIMIT,
    window_s: float = WINDOW_S,
) -> Iterator[Hold]:
    """Lock `channel`'s budget for the block; tokens taken are written when it ends.

    Keep the block short (decide and take; send after it): other dispatchers wait on the lock.
    """
    with conn.transaction():
        conn.execute(
            "INSERT INTO robot_budget (channel) VALUES (%s) ON CONFLICT (channel) DO NOTHING",
            (channel,),
        )
        row = conn.execute(
            "SELECT sends, clock_timestamp() FROM robot_budget WHERE channel = %s FOR UPDATE",
            (channel,),
        ).fetchone()
        assert row is not None
        now: datetime = row[1]
        h = Hold(
            now, window(list(row[0] or []), now, limit=limit, window_s=window_s), limit, window_s
        )
        yield h
        conn.execute(
            "UPDATE robot_budget SET sends = %s WHERE channel = %s",
            (list(h.state.sends) + h.taken, channel),
        )


def sends_in_window(
    conn: psycopg.Connection[Any], channel: str, *, window_s: float = WINDOW_S
) -> int:
    row = conn.execute(
        """SELECT count(*) FROM robot_budget, unnest(sends) AS t
           WHERE channel = %s AND t > clock_timestamp() - make_interval(secs => %s)""",
        (channel, window_s),
    ).fetchone()
    return int(row[0]) if row else 0
