"""SQL on the public views (sql/004_public_views.sql), and nothing else.

Boards read the documented views, never the tables behind them or the dataflow, so a BI tool
sees exactly what a wall screen sees. Every function returns typed rows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import psycopg
from psycopg.rows import class_row

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MachineStatus:
    """One row of `v_machine_status`: a machine's current state (offline when never seen)."""

    machine: str
    line: str
    area: str
    name_en: str
    name_zh: str
    state: str
    since: datetime | None
    reason: str | None
    reason_en: str | None
    reason_zh: str | None
    work_order: str | None
    last_event_ts: datetime | None
    # Computed by the database from its own clock, so a dashboard host with a wrong clock
    # still shows the right duration.
    state_seconds: float | None
    good_total: int | None
    scrap_total: int | None
    updated_at: datetime | None
    machine_position: int
    line_position: int

    def name(self, lang: str) -> str:
        return self.name_zh if lang == "zh" else self.name_en

    def reason_text(self, lang: str) -> str | None:
        """The reason's name in `lang`, else its code (a code unknown to the reason tree)."""
        if self.reason is None:
            return None
        named = self.reason_zh if lang == "zh" else self.reason_en
        return named or self.reason


class Database:
    """A few reusable connections to one database, safe to use from many threads.

    Werkzeug's threaded server runs every request on a new thread, so a connection kept per
    thread would be a connection per request. Instead each call borrows an idle connection
    (one thread at a time uses it) and gives it back. A connection that fails is dropped and
    the call is retried once on a fresh one, so the boards recover by themselves after a
    database restart.
    """

    def __init__(self, url: str, *, max_idle: int = 4, connect_timeout: int = 3) -> None:
        self.url = url
        self._max_idle = max_idle
        self._connect_timeout = connect_timeout
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()

    def _connect(self) -> psycopg.Connection:
        # autocommit: views are read one statement at a time; no transaction left open
        # (an idle-in-transaction session would hold back vacuum on the results tables).
        return psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=self._connect_timeout,
            application_name="mesflow-dashboard",
        )

    @contextmanager
    def _borrow(self, *, fresh: bool = False) -> Iterator[psycopg.Connection]:
        conn = None
        if not fresh:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed:
            conn = self._connect()
        try:
            yield conn
        except BaseException:
            # A connection in an unknown state is never handed out again.
            conn.close()
            raise
        if conn.closed:
            return
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def run(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """`fn(conn)`, retried once on a new connection if a pooled one has gone away."""
        with self._lock:
            pooled = bool(self._idle)
        try:
            with self._borrow() as conn:
                return fn(conn)
        except psycopg.OperationalError as err:
            if not pooled:
                # A fresh connection failed: the database is down, and retrying at once
                # would only double the wait of a board that refreshes every 2 s anyway.
                raise
            # A restarted server kills every pooled session; the idle ones are dead too.
            log.info("database connection lost (%s); reconnecting", err)
            self.close()
            with self._borrow(fresh=True) as conn:
                return fn(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


_MACHINE_STATUS_SQL = """
SELECT machine, line, area, name_en, name_zh, state, since, reason, reason_en, reason_zh,
       work_order, last_event_ts, state_seconds, good_total, scrap_total, updated_at,
       machine_position, line_position
FROM v_machine_status
ORDER BY line_position, machine_position, machine
"""


def machine_status(db: Database) -> list[MachineStatus]:
    """Every machine of the plant model with its current state, in plant order."""

    def query(conn: psycopg.Connection) -> list[MachineStatus]:
        with conn.cursor(row_factory=class_row(MachineStatus)) as cur:
            return cur.execute(_MACHINE_STATUS_SQL).fetchall()

    return db.run(query)
