"""The ingest log: append (collectors, replay) and read in order (the dataflow source)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import psycopg

# Serialises writers so that seq order equals commit order (see sql/001_ingest_log.sql).
_APPEND_LOCK = 0x6D6C6F67


class LogRecord(NamedTuple):
    """One input as a collector hands it to the log.

    `dedupe_key` is a 16-byte hash (`dedupe_key()`) of an event id or a replay line's
    identity: a small, fixed-size unique index keeps appends fast.
    """

    source: str
    payload: bytes
    dedupe_key: bytes | None = None
    error: str | None = None


class LogEntry(NamedTuple):
    """One row read back from the log: only what the dataflow needs."""

    seq: int
    payload: bytes
    error: str | None


def dedupe_key(key: str | bytes) -> bytes:
    """The stored form of a dedupe key: its 16-byte BLAKE2b hash."""
    return hashlib.blake2b(key if isinstance(key, bytes) else key.encode(), digest_size=16).digest()


_STAGE = """CREATE TEMP TABLE IF NOT EXISTS ingest_stage (
    ord int, source text, payload bytea, error text, dedupe_key bytea
) ON COMMIT DELETE ROWS"""


@dataclass(frozen=True, slots=True)
class Appended:
    """What one append stored: how many rows were new, and their seq range."""

    new: int
    first_seq: int | None
    last_seq: int | None


def append(conn: psycopg.Connection, records: Sequence[LogRecord]) -> Appended:
    """Durably append `records` in one transaction; report what was new.

    A record whose dedupe_key is already in the log (a redelivered MQTT message with an
    event id, a replayed file line) is skipped. Returns only after COMMIT, so a caller
    may acknowledge its source once this returns.
    """
    if not records:
        return Appended(0, None, None)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_STAGE)
        # Binary COPY: about 5x less client CPU per row than text (ceilings.md).
        with cur.copy(
            "COPY ingest_stage (ord, source, payload, error, dedupe_key) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int4", "text", "bytea", "text", "bytea"])
            for i, r in enumerate(records):
                copy.write_row((i, r.source, r.payload, r.error, r.dedupe_key))
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_APPEND_LOCK,))
        cur.execute(
            """WITH ins AS (
                   INSERT INTO ingest_log (source, payload, error, dedupe_key)
                   SELECT source, payload, error, dedupe_key FROM ingest_stage ORDER BY ord
                   ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
                   RETURNING seq)
               SELECT count(*), min(seq), max(seq) FROM ins"""
        )
        row = cur.fetchone()
    assert row is not None
    return Appended(int(row[0]), row[1], row[2])


def read_after(
    conn: psycopg.Connection, after_seq: int, limit: int, upto_seq: int | None = None
) -> list[LogEntry]:
    """Up to `limit` rows with after_seq < seq (<= upto_seq), in seq order."""
    # Binary results: bytea arrives as raw bytes instead of hex text.
    with conn.cursor(binary=True) as cur:
        rows = cur.execute(
            """SELECT seq, payload, error FROM ingest_log
               WHERE seq > %s AND seq <= %s ORDER BY seq LIMIT %s""",
            (after_seq, upto_seq if upto_seq is not None else 2**62, limit),
        ).fetchall()
    return [LogEntry(*row) for row in rows]


def last_seq(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT COALESCE(max(seq), 0) FROM ingest_log").fetchone()
    return int(row[0]) if row else 0
