"""The ingest log: append (collectors, replay) and read in order (the dataflow source).

Every source builds its rows with the same functions, so that one event has one identity
whichever way it arrives (MQTT, a replayed file, the CRM API):

- `decode_object(raw)`: bytes -> a JSON object, or a `DecodeError` with a reason code;
- `record_for(source, body)`: a decoded object -> a `LogRecord` holding its canonical
  payload, its dedupe key (from the top-level `id`), its content key and its machine;
- `error_record(source, raw, reason, detail)`: an input that could not be decoded, kept
  (bounded) so that the dataflow dead-letters it with that reason.

None of them raises on any input: a poison message becomes an error row, never an
exception in a collector's writer thread.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import msgspec
import psycopg

# Serialises writers so that seq order equals commit order (see sql/001_ingest_log.sql).
_APPEND_LOCK = 0x6D6C6F67

# The largest input the log accepts. A canonical event is ~150 bytes and an order a few
# hundred: 64 KiB is far above any real event and keeps one message from filling the log,
# the dead letters and the dataflow's memory.
MAX_PAYLOAD_BYTES = 64 * 1024
# An input refused as too large is kept as its first bytes only, to show what it was.
_ERROR_PAYLOAD_PREFIX = 4096
# Longer machine names are not machines (the contract bounds ids at 200 characters).
_MAX_MACHINE = 200


class LogRecord(NamedTuple):
    """One input as a collector hands it to the log.

    `dedupe_key` is a 16-byte hash (`dedupe_key()`) of an event id or a replay line's
    identity: a small, fixed-size unique index keeps appends fast. `content_key` is a
    16-byte hash of the payload: the same dedupe key with another content is stored as an
    `id_conflict` error instead of being skipped. `machine` is the machine the input names
    (None for orders and for inputs that could not be decoded).
    """

    source: str
    payload: bytes
    dedupe_key: bytes | None = None
    error: str | None = None
    machine: str | None = None
    content_key: bytes | None = None


class LogEntry(NamedTuple):
    """One row read back from the log: only what the dataflow needs.

    `received_at` is when the log stored the row: the clock policy compares event times
    with it (not with the time of processing), so a recovery decides as the first run did.
    """

    seq: int
    payload: bytes
    error: str | None
    received_at: datetime | None = None


class DecodeError(ValueError):
    """An input that is not a usable JSON object; `reason` is a dead-letter reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def dedupe_key(key: str | bytes) -> bytes:
    """The stored form of a dedupe key: its 16-byte BLAKE2b hash."""
    return hashlib.blake2b(key if isinstance(key, bytes) else key.encode(), digest_size=16).digest()


def safe_text(text: str, limit: int = 2000) -> str:
    """`text` as PostgreSQL can store it: NUL and lone surrogates escaped, length bounded.

    PostgreSQL `text` refuses U+0000 and UTF-8 encoding refuses lone surrogates; either
    would make a whole append or dead-letter batch fail.
    """
    if len(text) > limit:
        text = text[:limit] + "…"
    if text.isascii():  # O(1) in CPython: the common case costs one check
        return text.replace("\x00", "\\x00") if "\x00" in text else text
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode()
    return text.replace("\x00", "\\x00")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise DecodeError("malformed", f"duplicate key {safe_text(k, 100)!r} in an object")
            seen.add(k)
    return obj


def _no_constants(name: str) -> Any:
    raise DecodeError("malformed", f"{name} is not a JSON number")


# I-JSON (RFC 7493): UTF-8, unique keys, no NaN/Infinity. Senders that disagree on which
# of two equal keys wins would otherwise read one message as two different events.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constants)
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def decode_object(raw: bytes) -> dict[str, Any]:
    """Decode one input as a JSON object; raise `DecodeError` (never anything else).

    Reasons: `too_large` (over MAX_PAYLOAD_BYTES), `bad_text` (not UTF-8), `malformed`
    (not JSON, nested too deep, duplicate keys, NaN/Infinity, not an object).
    """
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise DecodeError("too_large", f"{len(raw)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DecodeError("bad_text", f"not UTF-8: {err.reason} at byte {err.start}") from None
    try:
        body = _DECODER.decode(text)
    except DecodeError:
        raise
    except RecursionError:
        raise DecodeError("malformed", "JSON nested too deep") from None
    except ValueError as err:  # JSONDecodeError, or an integer of more than 4300 digits
        raise DecodeError("malformed", f"not valid JSON: {safe_text(str(err), 200)}") from None
    if not isinstance(body, dict):
        raise DecodeError("malformed", "an event must be a JSON object")
    return body


def canonical_payload(body: dict[str, Any]) -> bytes:
    """The stored form of an event: sorted keys, no spaces, UTF-8 (raises on bad input)."""
    return _ENCODER.encode(body).encode()


def error_record(
    source: str,
    raw: bytes,
    reason: str,
    detail: str,
    *,
    dedupe: bytes | None = None,
) -> LogRecord:
    """An input the dataflow will dead-letter with `reason`; `raw` is kept, bounded.

    `dedupe` (a `dedupe_key()`) lets a re-read source, such as a replayed file line,
    store the same bad input only once.
    """
    if len(raw) > MAX_PAYLOAD_BYTES:
        detail = f"{detail} (only the first {_ERROR_PAYLOAD_PREFIX} of {len(raw)} bytes kept)"
        raw = raw[:_ERROR_PAYLOAD_PREFIX]
    return LogRecord(
        safe_text(source, 1000),
        raw,
        dedupe_key=dedupe,
        error=f"{reason}: {safe_text(detail)}",
    )


def record_for(source: str, body: dict[str, Any], *, key: str | None = None) -> LogRecord:
    """A decoded JSON object as a log record; an error record if it cannot be stored.

    The dedupe key comes from the top-level `id` only (a non-empty string), as
    `dedupe_key(f"id:{id}")`, the same for every source; `key` names the input instead
    (e.g. the CRM API's `order:<no>:<version>`). Never raises.
    """
    try:
        payload = canonical_payload(body)
    except UnicodeEncodeError:
        return error_record(source, _fallback(body), "bad_text", "a string is not valid Unicode")
    except RecursionError:
        return error_record(source, b"", "malformed", "JSON nested too deep")
    except (ValueError, TypeError) as err:  # NaN/Infinity, a non-JSON value from a caller
        return error_record(source, _fallback(body), "malformed", str(err))
    return _record(source, body, payload, key)


def decode_plain(raw: bytes) -> dict[str, Any] | None:
    """`decode_object(raw)` for a plain compact JSON object, several times faster; None
    when the input is not plain (then call `decode_object`). Never raises.

    Plain (also what `fast_record` takes): msgspec re-encodes it to the same bytes (so no
    duplicate keys, spaces or escapes the stdlib writes otherwise) and every float is one
    both encoders write alike. Such an object gives the same dict as `decode_object`, and
    `record_for_plain` gives the same record as `record_for`.
    """
    if (
        type(raw) is not bytes
        or len(raw) > _MAX_PLAIN_BYTES
        or raw.count(b"{") + raw.count(b"[") > _MAX_PLAIN_BRACKETS
    ):
        return None
    try:
        body = _plain_decode(raw)
        if type(body) is not dict or _plain_encode(body) != raw or not _plain_floats(body):
            return None
    except (msgspec.MsgspecError, ValueError, TypeError, RecursionError):
        return None
    return body


def record_for_plain(source: str, body: dict[str, Any]) -> LogRecord:
    """`record_for(source, body)` for a body from `decode_plain` to which only str keys and
    values were added: msgspec writes the canonical payload (the same bytes as the stdlib
    encoder for every Unicode string; tests/test_collector_fast.py checks each code
    point). Anything msgspec cannot encode (a lone surrogate) goes to `record_for`."""
    try:
        payload = _plain_encode_sorted(body)
    except (msgspec.MsgspecError, ValueError, TypeError, UnicodeEncodeError, RecursionError):
        return record_for(source, body)
    return _record(source, body, payload, None)


# The codecs and limits of plain inputs (the collector's and the storer's fast paths): the
# stdlib has a recursion limit and refuses integers of over 4300 digits, so only short,
# shallow inputs are plain.
_plain_decode = msgspec.json.Decoder().decode
_plain_encode = msgspec.json.Encoder().encode
_plain_encode_sorted = msgspec.json.Encoder(order="sorted").encode
_MAX_PLAIN_BYTES = 4000
_MAX_PLAIN_BRACKETS = 64


def _plain_floats(value: Any) -> bool:
    """Whether every float in `value` (a dict or list) is one both encoders write alike
    (not in exponent form: at or above 1e16 or below 1e-4)."""
    items: Any = value.values() if type(value) is dict else value
    for v in items:
        kind = type(v)
        if kind is float:
            if v != 0.0 and not 1e-4 <= abs(v) < 1e16:
                return False
        elif (kind is dict or kind is list) and not _plain_floats(v):
            return False
    return True


def _record(source: str, body: dict[str, Any], payload: bytes, key: str | None) -> LogRecord:
    if len(payload) > MAX_PAYLOAD_BYTES:
        return error_record(
            source,
            payload,
            "too_large",
            f"{len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}",
        )
    if key is None:
        event_id = body.get("id")
        if isinstance(event_id, str) and event_id:
            try:
                key_hash: bytes | None = _blake2b(
                    b"id:" + event_id.encode(), digest_size=16
                ).digest()
            except UnicodeEncodeError:  # unreachable: the payload encoded; kept defensive
                key_hash = None
        else:
            key_hash = None
    else:
        key_hash = dedupe_key(key)
    machine = body.get("machine")
    if not isinstance(machine, str) or not 0 < len(machine) <= _MAX_MACHINE or "\x00" in machine:
        machine = None  # not a machine id: the contract will refuse the event
    # tuple.__new__: a NamedTuple's own __new__ is Python code, a third of this function.
    return _new_tuple(
        LogRecord,
        (
            safe_text(source, 1000),
            payload,
            key_hash,
            None,
            machine,
            _blake2b(payload, digest_size=16).digest(),
        ),
    )


_blake2b = hashlib.blake2b
_new_tuple = tuple.__new__

# The storer's fast path (`fast_record`): msgspec decodes and re-encodes several times
# faster than the stdlib json module with its duplicate-key hook. It is used only where
# it gives the stdlib path's bytes: a plain input as `decode_plain` defines it (it
# re-encodes to itself and holds no float the two encoders write differently). Anything
# else takes `decode_object` + `record_for`.


def fast_record(source: str, raw: bytes) -> LogRecord | None:
    """`record_from_bytes(source, raw)` for a plain compact JSON object, faster; None when
    the input is not plain (then call `record_from_bytes` or its parts). Never raises."""
    body = decode_plain(raw)
    if body is None:
        return None
    try:
        payload = _plain_encode_sorted(body)
    except (msgspec.MsgspecError, ValueError, TypeError, UnicodeEncodeError, RecursionError):
        return None
    return _record(source, body, payload, None)


def record_from_bytes(source: str, raw: bytes, *, line_key: bytes | None = None) -> LogRecord:
    """`decode_object` then `record_for`; an undecodable input becomes an error record.

    `line_key` is the source's own identity of the input (a replayed file line): used when
    the event has no id, and for error records, so re-reading the source stores nothing new.
    """
    rec = fast_record(source, raw)
    if rec is None:
        try:
            body = decode_object(raw)
        except DecodeError as err:
            return error_record(source, raw, err.reason, err.detail, dedupe=line_key)
        rec = record_for(source, body)
    if rec.dedupe_key is None and line_key is not None:
        rec = rec._replace(dedupe_key=line_key)
    return rec


def _fallback(body: dict[str, Any]) -> bytes:
    """Something to keep of an object that has no canonical form: escaped JSON, or repr."""
    try:
        return json.dumps(body, ensure_ascii=True, default=repr)[:MAX_PAYLOAD_BYTES].encode()
    except (ValueError, RecursionError):
        return repr(body)[:_ERROR_PAYLOAD_PREFIX].encode("utf-8", "backslashreplace")


_STAGE = """CREATE TEMP TABLE IF NOT EXISTS ingest_stage (
    ord int, source text, payload bytea, error text, dedupe_key bytea, machine text,
    content_key bytea
) ON COMMIT DELETE ROWS"""

_INSERT = """WITH ins AS (
    INSERT INTO ingest_log (source, payload, error, dedupe_key, machine, content_key)
    SELECT source, payload, error, dedupe_key, machine, content_key
    FROM ingest_stage ORDER BY ord
    ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
    RETURNING seq)
SELECT count(*), min(seq), max(seq) FROM ins"""

# Staged rows whose key the log already holds with another content: stored as errors for
# the dataflow to dead-letter. Their own key is the hash of (key, content): the conflict
# lands, and the same conflicting input read again (a redelivery, a file replayed twice)
# is stored once. Rows stored before the content key existed (NULL) cannot be compared
# and stay plain duplicates.
_INSERT_CONFLICTS = """WITH ins AS (
    INSERT INTO ingest_log (source, payload, error, dedupe_key, machine, content_key)
    SELECT s.source, s.payload,
           'id_conflict: the log already holds this id (seq ' || l.seq
               || ') with different content',
           decode(md5(s.dedupe_key || s.content_key), 'hex'), s.machine, s.content_key
    FROM ingest_stage s JOIN ingest_log l ON l.dedupe_key = s.dedupe_key
    WHERE s.content_key IS NOT NULL AND l.content_key IS NOT NULL
      AND s.content_key <> l.content_key
    ORDER BY s.ord
    ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
    RETURNING seq)
SELECT count(*), min(seq), max(seq) FROM ins"""


@dataclass(frozen=True, slots=True)
class Appended:
    """What one append stored: how many rows were new, and their seq range."""

    new: int
    first_seq: int | None
    last_seq: int | None


# From this many records an append first tries the direct path (`_append_direct`): a replay's
# chunks, the simulator's history, a collector's batch under load. A smaller append (an
# operator report, an acknowledgement, a redelivered message) goes the checked way at once:
# it saves little, and a refused attempt would leave an error line in the server's log.
DIRECT_FROM = 64


def append(conn: psycopg.Connection, records: Sequence[LogRecord]) -> Appended:
    """Durably append `records` in one transaction; report what was new.

    A record whose dedupe_key is already in the log (a redelivered MQTT message with an
    event id, a replayed file line) is skipped if its content is the same, and stored as
    an `id_conflict` error row if not (after the batch's other rows). Returns only after
    COMMIT, so a caller may acknowledge its source once this returns.
    """
    if not records:
        return Appended(0, None, None)
    if len(records) >= DIRECT_FROM:
        try:
            return _append_direct(conn, records)
        except psycopg.errors.UniqueViolation:
            pass  # a key already in the log, or twice in the batch: the checked path decides
    return _append_checked(conn, records)


def _append_direct(conn: psycopg.Connection, records: Sequence[LogRecord]) -> Appended:
    """Copy `records` straight into the log, all or nothing.

    About two thirds of the checked path's server CPU per row (bench/store_bench.py): no
    staging table, no sort, no speculative insertion. The dedupe index still guards every row: a
    key the log holds raises UniqueViolation and nothing of the batch stays (the seq values
    it drew are skipped: readers do not need seqs without gaps).
    """
    with conn.transaction(), conn.cursor() as cur:
        # The lock first: no other writer draws a seq until this batch commits.
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_APPEND_LOCK,))
        before = cur.execute("SELECT COALESCE(max(seq), 0) FROM ingest_log").fetchone()
        assert before is not None
        with cur.copy(
            "COPY ingest_log (source, payload, error, dedupe_key, machine, content_key)"
            " FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["text", "bytea", "text", "bytea", "text", "bytea"])
            for r in records:
                copy.write_row(
                    (r.source, r.payload, r.error, r.dedupe_key, r.machine, r.content_key)
                )
        row = cur.execute(
            "SELECT min(seq), max(seq) FROM ingest_log WHERE seq > %s", (before[0],)
        ).fetchone()
        assert row is not None
    return Appended(len(records), row[0], row[1])


def _append_checked(conn: psycopg.Connection, records: Sequence[LogRecord]) -> Appended:
    """Stage `records`, then insert those whose key the log does not hold yet."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_STAGE)
        # Binary COPY: about 5x less client CPU per row than text (ceilings.md).
        with cur.copy(
            "COPY ingest_stage (ord, source, payload, error, dedupe_key, machine, content_key)"
            " FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int4", "text", "bytea", "text", "bytea", "text", "bytea"])
            for i, r in enumerate(records):
                copy.write_row(
                    (
                        i,
                        r.source,
                        r.payload,
                        r.error,
                        r.dedupe_key,
                        r.machine,
                        r.content_key,
                    )
                )
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_APPEND_LOCK,))
        cur.execute(_INSERT)
        row = cur.fetchone()
        assert row is not None
        new, first, last = int(row[0]), row[1], row[2]
        if new < len(records):  # something was skipped: was it a true duplicate?
            cur.execute(_INSERT_CONFLICTS)
            conflicts = cur.fetchone()
            assert conflicts is not None
            if conflicts[0]:
                new += int(conflicts[0])
                first = conflicts[1] if first is None else first
                last = conflicts[2]
    return Appended(new, first, last)


def read_after(
    conn: psycopg.Connection, after_seq: int, limit: int, upto_seq: int | None = None
) -> list[LogEntry]:
    """Up to `limit` rows with after_seq < seq (<= upto_seq), in seq order."""
    # Binary results: bytea arrives as raw bytes instead of hex text.
    with conn.cursor(binary=True) as cur:
        rows = cur.execute(
            """SELECT seq, payload, error, received_at FROM ingest_log
               WHERE seq > %s AND seq <= %s ORDER BY seq LIMIT %s""",
            (after_seq, upto_seq if upto_seq is not None else 2**62, limit),
        ).fetchall()
    return [LogEntry(*row) for row in rows]


def last_seq(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT COALESCE(max(seq), 0) FROM ingest_log").fetchone()
    return int(row[0]) if row else 0
