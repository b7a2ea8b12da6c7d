"""Bytewax source over the ingest log: resumable by position (the last seq read)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from mesflow.db import connect
from mesflow.ingest_log import LogEntry, read_after

log = logging.getLogger(__name__)


class IngestLogSource(FixedPartitionedSource[LogEntry, int]):
    """Reads ingest_log in seq order, following it live; with `upto_seq`, stops there.

    `upto_seq` may be a callable returning None while the end is not known yet (a replay
    whose file is still being stored). `stop`, once set, ends the input at the next read:
    the dataflow then finishes its work in hand, writes it and stops cleanly (SIGTERM),
    and a restart resumes after the last seq read.

    PostgreSQL going away (a restart, a network blip) is not an error: the read is
    retried with a backoff on a new connection, from the same position.

    One partition: a plant's log is one ordered stream. More plants or machines scale by
    more logs/partitions (keyed by machine), not by sharing this one.
    """

    def __init__(
        self,
        database_url: str,
        *,
        batch_size: int = 2000,
        poll_interval: timedelta = timedelta(milliseconds=20),
        upto_seq: int | Callable[[], int | None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.database_url = database_url
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.upto_seq = upto_seq
        self.stop = stop

    def list_parts(self) -> list[str]:
        return ["ingest_log"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _LogPartition:
        return _LogPartition(self, resume_state or 0)


class _LogPartition(StatefulSourcePartition[LogEntry, int]):
    def __init__(self, source: IngestLogSource, position: int) -> None:
        self.s = source
        self.position = position
        self.conn: psycopg.Connection | None = None
        self._awake: datetime | None = None
        self._backoff = 0.5
        if position:
            log.info("resuming the ingest log after seq %d", position)

    def next_batch(self) -> list[LogEntry]:
        s = self.s
        if s.stop is not None and s.stop.is_set():
            raise StopIteration()
        upto = s.upto_seq() if callable(s.upto_seq) else s.upto_seq
        if upto is not None and self.position >= upto:
            raise StopIteration()
        try:
            if self.conn is None or self.conn.closed:
                self.conn = connect(s.database_url, autocommit=True)
            rows = read_after(self.conn, self.position, s.batch_size, upto)
        except psycopg.OperationalError as err:
            # The database restarted or the network blipped: retry, never crash the flow.
            log.warning("ingest log unreachable (%s); retrying in %.1fs", err, self._backoff)
            self.conn = None
            self._awake = datetime.now(UTC) + timedelta(seconds=self._backoff)
            self._backoff = min(self._backoff * 2, 10.0)
            return []
        self._backoff = 0.5
        if rows:
            self.position = rows[-1].seq
        # A full batch means more is waiting: read again at once; else poll.
        self._awake = None if len(rows) == s.batch_size else datetime.now(UTC) + s.poll_interval
        return rows

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self.position

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
