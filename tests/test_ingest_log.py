"""The ingest log's record builders and append: one identity per event, whatever the source;
conflicting duplicates stored as errors; nothing raises on any input."""

from __future__ import annotations

import json
from datetime import datetime

import psycopg

from mesflow.ingest_log import (
    MAX_PAYLOAD_BYTES,
    append,
    decode_object,
    dedupe_key,
    error_record,
    read_after,
    record_for,
    record_from_bytes,
    safe_text,
)

EVENT = {
    "type": "count",
    "machine": "IM-01",
    "ts": "2026-11-20T08:00:00+08:00",
    "good": 1,
    "id": "ev-1",
}


def test_record_for_canonical_payload_and_keys() -> None:
    rec = record_for("mqtt:x", EVENT)
    assert rec.error is None
    assert rec.payload == json.dumps(
        EVENT, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    # Exactly the MQTT collector's key before issue 8: existing logs stay compatible.
    assert rec.dedupe_key == dedupe_key("id:ev-1")
    assert rec.machine == "IM-01"
    assert rec.content_key is not None and len(rec.content_key) == 16


def test_same_event_same_record_whatever_the_spelling() -> None:
    spaced = b'{ "id" : "ev-1", "good": 1, "ts": "2026-11-20T08:00:00+08:00",\n'
    spaced += b' "machine": "IM-01", "type": "count" }'
    a = record_from_bytes("replay:f:1", spaced)
    b = record_for("mqtt:t", EVENT)
    assert (a.payload, a.dedupe_key, a.content_key) == (b.payload, b.dedupe_key, b.content_key)
    # An escaped id is the same id once decoded.
    esc = record_from_bytes("replay:f:2", json.dumps({**EVENT, "id": "é"}).encode())
    assert esc.dedupe_key == dedupe_key("id:é")


def test_nested_id_is_not_the_event_id() -> None:
    rec = record_for("f", {**{k: v for k, v in EVENT.items() if k != "id"}, "meta": {"id": "x"}})
    assert rec.dedupe_key is None
    line = record_from_bytes("f", b'{"meta": {"id": "x"}}', line_key=b"L" * 16)
    assert line.dedupe_key == b"L" * 16


def test_record_for_never_raises_on_bad_text() -> None:
    rec = record_for("mqtt:x", {**EVENT, "reason": "\ud800"})
    assert rec.error is not None and rec.error.startswith("bad_text: ")
    assert rec.dedupe_key is None
    rec = record_for("mqtt:x", {**EVENT, "good": float("nan")})
    assert rec.error is not None and rec.error.startswith("malformed: ")


def test_decode_object_reasons() -> None:
    def reason(raw: bytes) -> str:
        try:
            decode_object(raw)
        except ValueError as err:
            return str(err).split(":")[0]
        return "ok"

    assert reason(b"[" * 30_000 + b"]" * 30_000) == "malformed"
    assert reason(b'{"a":' * 10_000 + b"1" + b"}" * 10_000) == "malformed"
    assert reason(b"\xff\xfe{}") == "bad_text"
    assert reason(b'{"a": 1, "a": 2}') == "malformed"
    assert reason(b'{"a": NaN}') == "malformed"
    assert reason(b"[1]") == "malformed"
    assert reason(b"") == "malformed"
    assert reason(b'{"a": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}') == "too_large"
    assert reason(b'{"a": ' + b"9" * 5000 + b"}") == "malformed"
    assert reason(b'{"a": 1}') == "ok"


def test_safe_text() -> None:
    assert safe_text("a\x00b") == "a\\x00b"
    assert safe_text("a\ud800b") == "a\\ud800b"
    assert safe_text("é\x00") == "é\\x00"
    assert len(safe_text("x" * 5000)) == 2001


def test_error_record_bounds_payload() -> None:
    rec = error_record("s", b"x" * (5 << 20), "too_large", "big")
    assert len(rec.payload) < 5000
    assert rec.error is not None and rec.error.startswith("too_large: big")


def _rows(url: str) -> list[tuple[str | None, str | None, bytes | None]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT machine, error, dedupe_key FROM ingest_log ORDER BY seq"
        ).fetchall()


def test_append_stores_machine_and_dedupes_across_sources(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = append(conn, [record_for("mqtt:t", EVENT)])
        assert first.new == 1
        # The same event from a file: a silent duplicate.
        again = append(conn, [record_from_bytes("replay:f:1", json.dumps(EVENT).encode())])
        assert again.new == 0
        entries = read_after(conn, 0, 10)
    assert len(entries) == 1
    assert isinstance(entries[0].received_at, datetime)
    assert _rows(db_url)[0][:2] == ("IM-01", None)


def test_same_id_different_content_is_an_id_conflict(db_url: str) -> None:
    changed = {**EVENT, "good": 5}
    with psycopg.connect(db_url, autocommit=True) as conn:
        append(conn, [record_for("mqtt:t", EVENT)])
        res = append(conn, [record_for("mqtt:t", changed), record_for("mqtt:t", EVENT)])
        assert res.new == 1
        # The same conflicting input again (a redelivery) is stored once.
        assert append(conn, [record_for("mqtt:t", changed)]).new == 0
        # Within one batch too: the second occurrence conflicts with the first.
        other = {**EVENT, "id": "ev-2"}
        res = append(conn, [record_for("f", other), record_for("f", {**other, "good": 7})])
        assert res.new == 2
    rows = _rows(db_url)
    errors = [e for _, e, _ in rows if e]
    assert len(rows) == 4 and len(errors) == 2
    assert all(e.startswith("id_conflict: the log already holds this id (seq ") for e in errors)


def test_error_records_land_and_text_is_safe(db_url: str) -> None:
    recs = [
        error_record("mqtt:\x00bad\ud800", b"\x00\xff", "bad_text", "detail \x00 \udfff"),
        record_for("mqtt:t", {**EVENT, "id": None, "machine": "a\x00b"}),
    ]
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert append(conn, recs).new == 2
    rows = _rows(db_url)
    assert rows[0][1] == "bad_text: detail \\x00 \\udfff"
    assert rows[1][0] is None  # a machine name with NUL is no machine
