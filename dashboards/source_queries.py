"""Reads for the sources page (/sources): collector endpoints (v_source_health) and each
machine's last input (v_machine_last_input), both in sql/027_source_health.sql.

The rules that classify a row are pure functions here, next to the reads, so the page and
its tests agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg

Status = Literal["connected", "disconnected", "stale"]


@dataclass(frozen=True)
class SourceRow:
    kind: str
    instance: str
    endpoint: str
    connected: bool
    since: datetime | None
    last_message_at: datetime | None
    messages_total: int
    errors_total: int
    last_error: str | None
    last_error_at: datetime | None
    updated_at: datetime
    messages_per_s: float | None
    stale: bool


@dataclass(frozen=True)
class MachineInput:
    machine: str
    line: str
    received_at: datetime | None  # last row of the ingest log naming the machine
    source: str | None
    last_event_ts: datetime | None  # the dataflow's latest event time for it
    silent_s: float | None  # seconds since received_at (None: never heard from)


def status(row: SourceRow) -> Status:
    """Stale wins: a collector that stopped reporting no longer knows whether it is connected."""
    if row.stale:
        return "stale"
    return "connected" if row.connected else "disconnected"


def is_silent(m: MachineInput, silent_after_s: float) -> bool:
    return m.silent_s is None or m.silent_s > silent_after_s


def read_sources(conn: psycopg.Connection) -> list[SourceRow]:
    rows = conn.execute(
        """SELECT kind, instance, endpoint, connected, since, last_message_at, messages_total,
                  errors_total, last_error, last_error_at, updated_at, messages_per_s, stale
           FROM v_source_health ORDER BY kind, instance, endpoint"""
    ).fetchall()
    return [SourceRow(*r) for r in rows]


def read_machine_inputs(conn: psycopg.Connection) -> list[MachineInput]:
    rows = conn.execute(
        """SELECT machine, line, received_at, source, last_event_ts, silent_s
           FROM v_machine_last_input ORDER BY line_position, line, machine_position, machine"""
    ).fetchall()
    return [MachineInput(*r) for r in rows]


def read_all(conn: psycopg.Connection) -> tuple[list[SourceRow], list[MachineInput], datetime]:
    """Both lists and the database's clock (relative times are against it, not the web
    server's, so a skewed web host does not age every row)."""
    now: Any = conn.execute("SELECT now()").fetchone()
    return read_sources(conn), read_machine_inputs(conn), now[0]


def ago(seconds: float | None, lang: str) -> str:
    """'12 s ago' / '12 秒前' with the largest unit that fits; '—' for never."""
    if seconds is None:
        return "—"
    s = max(0, int(seconds))
    for size, en, zh in ((86400, "d", "天"), (3600, "h", "小时"), (60, "min", "分钟")):
        if s >= size:
            n = s // size
            return f"{n} {zh}前" if lang == "zh" else f"{n} {en} ago"
    return f"{s} 秒前" if lang == "zh" else f"{s} s ago"
