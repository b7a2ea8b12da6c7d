"""The collectors' side of the ingest log: batches from an inbox, appended until committed.

Shared by every collector (MQTT JSON, OPC UA, Sparkplug B). The guarantees the callers
build on:
- `IngestWriter.append` returns only after the batch is committed, so the caller may then
  acknowledge its source; while PostgreSQL is unreachable it retries with backoff and keeps
  the batch (nothing acknowledged, nothing lost).
- A value PostgreSQL refuses does not block the batch: the batch is stored one record at a
  time and each refused record becomes an error record (its raw payload is dead-lettered).
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Protocol, TypeVar

import psycopg

from mesflow.db import connect
from mesflow.ingest_log import LogRecord, append, error_record, safe_text

log = logging.getLogger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Inbox(Protocol[T_co]):
    """What take_batch needs of a queue (queue.Queue and queue.SimpleQueue both fit)."""

    def get(self, block: bool = True, timeout: float | None = None) -> T_co: ...

    def get_nowait(self) -> T_co: ...


FIRST_RETRY_S = 0.5
MAX_RETRY_S = 10.0


def take_batch(inbox: Inbox[T], max_batch: int, max_wait: float) -> list[T]:
    """Up to `max_batch` items: waits 0.1 s for the first (so a stop flag is seen soon),
    then at most `max_wait` more for the rest. Empty if nothing came."""
    try:
        first = inbox.get(timeout=0.1)
    except queue.Empty:
        return []
    batch = [first]
    deadline = time.monotonic() + max_wait
    while len(batch) < max_batch:
        try:
            batch.append(inbox.get_nowait())
        except queue.Empty:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(inbox.get(timeout=left))
            except queue.Empty:
                break
    return batch


def append_isolating(conn: psycopg.Connection, records: list[LogRecord]) -> int:
    """Append a batch; if PostgreSQL refuses a value in it, append one by one and turn
    each refused record into an error record (its raw payload goes to the dead letters).

    Raises what cannot be handled per record (connection lost: the caller retries; a
    missing table or privilege: the writer dies and the process exits).
    """
    try:
        return append(conn, records).new
    except (psycopg.DataError, psycopg.IntegrityError) as err:
        log.warning("a batch was refused (%s); storing its messages one by one", err.sqlstate)
    new = 0
    for record in records:
        try:
            new += append(conn, [record]).new
        except (psycopg.DataError, psycopg.IntegrityError) as err:
            refused = error_record(
                safe_text(record.source, 1024),
                record.payload,
                "refused",
                f"the database refused it ({err.sqlstate}: "
                f"{safe_text(str(err).splitlines()[0] if str(err) else '', 200)})",
            )
            new += append(conn, [refused]).new
    return new


class IngestWriter:
    """One writer thread's connection to the ingest log. Not thread-safe: one per thread."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._conn: psycopg.Connection | None = None
        self._delay = FIRST_RETRY_S

    def append(self, records: list[LogRecord]) -> int:
        """Append `records` (isolating refused ones); return how many were new. Returns only
        after COMMIT; retries for as long as the database is unreachable."""
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(self.database_url, autocommit=True)
                new = append_isolating(self._conn, records)
            except psycopg.OperationalError as err:
                # Not acknowledged, so not lost: keep the batch and try again.
                log.warning("ingest log unreachable (%s); retrying in %.1fs", err, self._delay)
                self.close()
                time.sleep(self._delay)
                self._delay = min(self._delay * 2, MAX_RETRY_S)
                continue
            self._delay = FIRST_RETRY_S
            return new

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
