"""SQL on the public views (sql/004_public_views.sql), and nothing else.

Boards read the documented views, never the tables behind them or the dataflow, so a BI tool
sees exactly what a wall screen sees. Every function returns typed rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import psycopg
from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

T = TypeVar("T")


class Database:
    """A bounded pool of connections to one database (psycopg-pool), safe from many threads.

    At most `max_size` connections, whatever the number of wall screens: a request that finds
    them all busy waits up to `timeout` seconds, then fails like an unreachable database (the
    board shows its banner). Each connection is checked before it is lent, so a database
    restart costs no failed request once the server is back. Opened on first use: building
    the app never connects.
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        timeout: float = 5.0,
        connect_timeout: int = 3,
    ) -> None:
        self.url = url
        self.pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            # autocommit: views are read one statement at a time; no transaction left open
            # (an idle-in-transaction session would hold back vacuum on the results tables).
            kwargs={
                "autocommit": True,
                "connect_timeout": connect_timeout,
                "application_name": "mesflow-dashboard",
            },
            check=ConnectionPool.check_connection,
            open=False,
            name="mesflow-dashboard",
        )
        self._lock = threading.Lock()
        self._opened = False

    def _open(self) -> None:
        with self._lock:
            if not self._opened:
                # wait=False: a database that is down now must not stop the boards starting;
                # the pool keeps trying in the background.
                self.pool.open(wait=False)
                self._opened = True

    def run(self, fn: Callable[[psycopg.Connection], T], *, timeout: float | None = None) -> T:
        """`fn(conn)` on a pooled connection (psycopg_pool.PoolTimeout when none comes in
        `timeout` seconds, default the pool's)."""
        self._open()
        with self.pool.connection(timeout=timeout) as conn:
            return fn(conn)

    def close(self) -> None:
        with self._lock:
            if self._opened:
                self.pool.close()  # for good: a closed pool is not reopened


@dataclass(frozen=True, slots=True)
class AndonTile:
    """One row of `v_andon_tile` (sql/015_andon.sql): what a machine's andon tile shows."""

    machine: str
    line: str
    name_en: str
    name_zh: str
    state: str
    since: datetime | None
    reason: str | None
    reason_en: str | None
    reason_zh: str | None
    work_order: str | None
    product: str | None
    wo_qty: int | None
    wo_good: int | None
    last_event_ts: datetime | None
    db_now: datetime
    ref_ts: datetime
    state_seconds: float | None
    silent_seconds: float | None
    shift_start: datetime | None
    shift_end: datetime | None
    shift_name: str | None
    shift_good: int | None
    shift_scrap: int | None
    shift_planned_s: float | None
    shift_apt_s: float | None
    shift_ideal_s: float | None
    shift_oee: float | None
    ideal_cycle_s: float
    machine_position: int
    line_position: int

    def name(self, lang: str) -> str:
        return self.name_zh if lang == "zh" else self.name_en

    def reason_text(self, lang: str) -> str | None:
        if self.reason is None:
            return None
        named = self.reason_zh if lang == "zh" else self.reason_en
        return named or self.reason


_ANDON_TILE_SQL = """
SELECT machine, line, name_en, name_zh, state, since, reason, reason_en, reason_zh,
       work_order, product, wo_qty, wo_good, last_event_ts, db_now, ref_ts, state_seconds,
       silent_seconds, shift_start, shift_end, shift_name, shift_good, shift_scrap,
       shift_planned_s, shift_apt_s, shift_ideal_s, shift_oee, ideal_cycle_s, machine_position,
       line_position
FROM v_andon_tile
ORDER BY line_position, machine_position, machine
"""


def andon_tiles(db: Database) -> list[AndonTile]:
    """Every machine's andon tile figures, in plant order (one query, one round trip)."""

    def query(conn: psycopg.Connection) -> list[AndonTile]:
        with conn.cursor(row_factory=class_row(AndonTile)) as cur:
            return cur.execute(_ANDON_TILE_SQL).fetchall()

    return db.run(query)
