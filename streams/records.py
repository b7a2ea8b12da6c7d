"""What the dataflow's logic emits: one row type per results table, plus rejections.

Plain NamedTuples: cheap to build on the hot path, picklable for Bytewax, and each one
maps 1:1 onto the upsert that stores it (streams/pg_sink.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple


class IntervalRow(NamedTuple):
    machine: str
    start_ts: datetime
    end_ts: datetime | None
    state: str
    reason: str | None
    work_order: str | None
    duration_s: float


class StatusRow(NamedTuple):
    machine: str
    state: str
    since: datetime
    reason: str | None
    work_order: str | None
    last_event_ts: datetime
    good_total: int
    scrap_total: int


class HourRow(NamedTuple):
    machine: str
    hour_start: datetime
    running_s: float
    idle_s: float
    down_s: float
    setup_s: float
    planned_stop_s: float
    offline_s: float
    good: int
    scrap: int


class Rejection(NamedTuple):
    """An ingest_log row that goes to the dead-letter table, with a stable reason code."""

    seq: int
    reason: str
    detail: str


class Progress(NamedTuple):
    """The highest ingest_log seq of a batch the dataflow has taken in, with batch counts."""

    last_seq: int
    events: int
    dead: int


ResultRow = IntervalRow | StatusRow | HourRow | Rejection | Progress
