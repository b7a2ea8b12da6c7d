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
    """A locked budget row: `take(n)` spends tokens (at most `available`).

    `limits` are (messages, window seconds) pairs that all hold: a minute's budget, and for
    Feishu also its per-second one.
    """

    now: datetime
    sends: tuple[datetime, ...]
    limits: tuple[tuple[int, float], ...]
    taken: list[datetime] = field(default_factory=list)

    def _windows(self) -> list[Window]:
        all_sends = [*self.sends, *self.taken]
        return [window(all_sends, self.now, limit=n, window_s=w) for n, w in self.limits]

    @property
    def available(self) -> int:
        return min(w.available for w in self._windows())

    @property
    def next_free_after_in_s(self) -> float:
        """When one more token is free, counting the ones taken in this hold."""
        return max(w.next_free_in_s for w in self._windows())

    def kept(self) -> list[datetime]:
        """The sends to store: those still inside the longest window, and the new ones."""
        longest = max(w for _, w in self.limits)
        return [*window(self.sends, self.now, limit=1, window_s=longest).sends, *self.taken]

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
    burst: tuple[int, float] | None = None,
) -> Iterator[Hold]:
    """Lock `channel`'s budget for the block; tokens taken are written when it ends.

    `burst`: a second, shorter limit (messages, seconds), e.g. Feishu's 5 a second.
    Keep the block short (decide and take; send after it): other dispatchers wait on the lock.
    """
    limits = ((limit, window_s),) + ((burst,) if burst else ())
    with conn.transaction():
        conn.execute(
            # DO UPDATE (a no-op) locks an existing row at once: retention may delete a
            # silent robot's row, and it must not vanish before the SELECT below.
            "INSERT INTO robot_budget (channel) VALUES (%s)"
            " ON CONFLICT (channel) DO UPDATE SET sends = robot_budget.sends",
            (channel,),
        )
        row = conn.execute(
            "SELECT sends, clock_timestamp() FROM robot_budget WHERE channel = %s FOR UPDATE",
            (channel,),
        ).fetchone()
        assert row is not None
        h = Hold(row[1], tuple(row[0] or []), limits)
        yield h
        conn.execute("UPDATE robot_budget SET sends = %s WHERE channel = %s", (h.kept(), channel))


def sends_in_window(
    conn: psycopg.Connection[Any], channel: str, *, window_s: float = WINDOW_S
) -> int:
    row = conn.execute(
        """SELECT count(*) FROM robot_budget, unnest(sends) AS t
           WHERE channel = %s AND t > clock_timestamp() - make_interval(secs => %s)""",
        (channel, window_s),
    ).fetchone()
    return int(row[0]) if row else 0
