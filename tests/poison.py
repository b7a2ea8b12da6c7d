"""THE poison list: inputs that once stopped or corrupted the pipeline, with the dead-letter
reason each must get. Used by the replay tests (tests/test_poison_replay.py) and the MQTT
collector's tests.

`POISON` is a list of (name, raw payload bytes, expected reason). Every payload that is a
JSON object names `"type"` and `"machine"` (POISON_MACHINE unless the case is about the
machine), so it can be published on that machine's topic as it is. Expected reasons
assume the clock policy's defaults or any horizon under 54 years (the test plant's is
20,000 days): "1970" is `too_old`, "ten years ahead" is `future`.

Not every input exists on every path: an empty payload is a blank line in a replay file
(skipped, not an input), and a payload with a newline byte is two lines. `FILE_ONLY` and
`MQTT_ONLY` name those cases; `MQTT_REASON` gives the reason where the collector decides
otherwise (the topic names the type and machine).

`TRICKY_VALID` are inputs that look suspicious but are valid: they must be stored and
counted, e.g. two different events that carry the same nested `"meta": {"id": ...}`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

POISON_MACHINE = "IM-03"  # no state mapping: canonical states only
_NOW = datetime.now(UTC).replace(microsecond=0)
# Time order (allowed lateness is 5 minutes): running_state() at -3 h, the poisons and
# TRICKY_VALID at -2.5 h, valid_events() from -2 h on. A poison that were wrongly accepted
# could not move the machine's clock past the valid events that follow it.
_EARLY = timedelta(hours=-2, minutes=-30)


def ts(offset: timedelta = timedelta(0)) -> str:
    """A time near now (the clock policy refuses times far from the receiving clock)."""
    return (_NOW + offset).isoformat()


def _ev(**fields: Any) -> dict[str, Any]:
    return {"type": "count", "machine": POISON_MACHINE, "ts": ts(_EARLY)} | fields


def _j(obj: Any) -> bytes:
    """JSON as a sender would write it (escapes, so NUL and surrogates are valid JSON text)."""
    return json.dumps(obj).encode()


def _field(name: str, value: str | bytes) -> bytes:
    """A count event with one extra raw JSON member (for what json.dumps cannot write)."""
    raw = value.encode() if isinstance(value, str) else value
    return _j(_ev())[:-1] + b', "' + name.encode() + b'": ' + raw + b"}"


_STATE = {"type": "state", "machine": POISON_MACHINE, "ts": ts(_EARLY)}
_REPORT = {
    "type": "report",
    "machine": POISON_MACHINE,
    "ts": ts(_EARLY),
    "operator": "op1",
}
_ORDER = {
    "type": "order",
    "ts": ts(_EARLY),
    "order_no": "SO-POISON",
    "version": 1,
    "customer": "ACME",
    "priority": 1,
    "product": "P-100",
    "qty": 10,
    "due": ts(timedelta(days=7)),
    "status": "open",
}
_BIG = 2**64 + 1
_DEEP = 100_000

POISON: list[tuple[str, bytes, str]] = [
    # -- structure ----------------------------------------------------------------------
    ("arrays nested 100,000 deep", b"[" * _DEEP + b"]" * _DEEP, "too_large"),
    ("objects nested 100,000 deep", b'{"a":' * _DEEP + b"1" + b"}" * _DEEP, "too_large"),
    ("arrays nested 30,000 deep", b"[" * 30_000 + b"]" * 30_000, "malformed"),
    ("objects nested 10,000 deep", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "malformed"),
    (
        "an event with a field nested 20,000 deep",
        _field("x", "[" * 20_000 + "]" * 20_000),
        "malformed",
    ),
    ("empty payload", b"", "malformed"),
    ("a JSON array", _j([_ev(good=1)]), "malformed"),
    ("a JSON number", b"42", "malformed"),
    ("a JSON string", b'"count"', "malformed"),
    ("JSON null", b"null", "malformed"),
    ("truncated JSON", _j(_ev(good=1))[:-5], "malformed"),
    ("duplicate keys", _field("good", "1")[:-1] + b', "good": 1000}', "malformed"),
    ("a 1 MB string field", _j(_ev(note="x" * (1 << 20))), "too_large"),
    ("a 5 MB payload", _j(_ev(pad=["y" * 1000] * 5000)), "too_large"),
    # -- text -----------------------------------------------------------------------------
    ("not UTF-8", b'{"type": "count", "machine": "\xff\xfe", "good": 1}', "bad_text"),
    ("UTF-16 with a BOM", "\ufeff".encode("utf-16-le") + _j(_ev()).decode().encode("utf-16-le"),
     "bad_text"),
    ("an encoded surrogate (CESU-8)", _field("note", b'"\xed\xa0\x80"'), "bad_text"),
    ("lone surrogate in a string field", _j(_ev(note="\ud800")), "bad_text"),
    ("lone surrogate in machine", _j(_ev(machine="IM-\udfff")), "bad_text"),
    ("raw NUL byte in a string", _j(_ev()).replace(b'"IM-03"', b'"IM\x00-03"'), "malformed"),
    ("NUL in machine", _j(_ev(machine="IM-03\x00")), "invalid_field"),
    ("NUL in reason", _j(_STATE | {"state": "down", "reason": "heater_fault\x00"}), "invalid_field"),
    ("NUL in operator", _j(_REPORT | {"kind": "wo_end", "work_order": "W", "operator": "o\x00"}),
     "invalid_field"),
    ("NUL in id", _j(_ev(good=1, id="poison-\x00")), "invalid_field"),
    ("NUL in customer", _j(_ORDER | {"customer": "AC\x00ME"}), "invalid_field"),
    ("an id of 10,000 characters", _j(_ev(good=1, id="i" * 10_000)), "invalid_field"),
    ("an id that is a number", _j(_ev(good=1, id=12345)), "invalid_field"),
    ("an id that is an object", _j(_ev(good=1, id={"id": "x"})), "invalid_field"),
    ("a machine of 300 characters", _j(_ev(machine="M" * 300)), "invalid_field"),
    # -- numbers --------------------------------------------------------------------------
    ("good beyond 64 bits", _j(_ev(good=_BIG)), "invalid_field"),
    ("scrap beyond 64 bits", _j(_ev(scrap=_BIG)), "invalid_field"),
    ("counter value beyond 64 bits",
     _j(_ev(type="counter", name="total", value=_BIG)), "invalid_field"),
    ("scrap report qty beyond 64 bits",
     _j(_REPORT | {"kind": "scrap", "qty": _BIG}), "invalid_field"),
    ("order qty beyond 64 bits", _j(_ORDER | {"qty": _BIG}), "invalid_field"),
    ("good beyond int32", _j(_ev(good=2**31)), "invalid_field"),
    ("order priority beyond int32", _j(_ORDER | {"priority": 2**31}), "invalid_field"),
    ("order version beyond 2^53", _j(_ORDER | {"version": 2**53}), "invalid_field"),
    ("an integer of 5,000 digits", _field("good", "9" * 5000), "malformed"),
    ('the string "1" as a count', _j(_ev(good="1")), "invalid_field"),
    ("true as a count", _j(_ev(good=True)), "invalid_field"),
    ("1.0 as a count", _field("good", "1.0"), "invalid_field"),
    ("1.5 as a count", _j(_ev(good=1.5)), "invalid_field"),
    ("1e308 as a count", _field("good", "1e308"), "invalid_field"),
    ("1e400 (infinite) as a count", _field("good", "1e400"), "malformed"),
    ("NaN as a count", _field("good", "NaN"), "malformed"),
    ("Infinity as a count", _field("scrap", "-Infinity"), "malformed"),
    ("a negative count", _j(_ev(good=-1)), "negative_count"),
    ("a negative counter", _j(_ev(type="counter", name="total", value=-5)), "negative_count"),
    ("a zero scrap report", _j(_REPORT | {"kind": "scrap", "qty": 0}), "invalid_field"),
    # -- time -----------------------------------------------------------------------------
    ("ts in year 0001", _j(_ev(ts="0001-01-01T00:00:00Z")), "bad_timestamp"),
    ("ts in year 9999", _j(_ev(ts="9999-12-31T23:59:59Z")), "bad_timestamp"),
    ("ts in year 9999 with an offset", _j(_STATE | {"state": "down", "ts": "9999-12-31T23:59:59-14:00"}),
     "bad_timestamp"),
    ("order due in year 9999", _j(_ORDER | {"due": "9999-12-31T00:00:00Z"}), "bad_timestamp"),
    ("ts as epoch seconds", _j(_ev(ts=1763596800)), "bad_timestamp"),
    ("ts ten years ahead", _j(_STATE | {"state": "idle", "ts": ts(timedelta(days=3653))}),
     "future"),
    ("a count an hour ahead", _j(_ev(good=1, ts=ts(timedelta(hours=1)))), "future"),
    ("report 'at' ten years ahead",
     _j(_REPORT | {"kind": "downtime_reason", "reason": "heater_fault",
                   "at": ts(timedelta(days=3653))}), "future"),
    ("order ts ten years ahead", _j(_ORDER | {"ts": ts(timedelta(days=3653))}), "future"),
    ("ts in 1970", _j(_STATE | {"state": "down", "ts": "1970-01-01T00:00:00Z"}), "too_old"),
    # -- meaning --------------------------------------------------------------------------
    ("unknown type", _j(_ev(type="temperature", value=21)), "unknown_type"),
    ("no type", _j({k: v for k, v in _ev(good=1).items() if k != "type"}), "unknown_type"),
    ("unknown machine", _j(_ev(machine="NOPE-99", good=1)), "unknown_machine"),
    ("unknown reason on a state", _j(_STATE | {"state": "down", "reason": "gremlins"}),
     "unknown_reason"),
    ("unknown reason in a report",
     _j(_REPORT | {"kind": "downtime_reason", "reason": "gremlins", "at": ts(-timedelta(hours=1))}),
     "unknown_reason"),
    ("unknown state", _j(_STATE | {"state": "automatic"}), "invalid_field"),
    ("missing ts", _j({k: v for k, v in _ev(good=1).items() if k != "ts"}), "missing_field"),
]  # fmt: skip

# A blank line is no input in a replay file; over MQTT an empty payload is one.
MQTT_ONLY = {"empty payload"}
FILE_ONLY: set[str] = set()

# Where the MQTT collector decides before the dataflow: it takes type and machine from the
# topic, so a payload naming another type or machine contradicts the topic.
MQTT_REASON = {
    "unknown type": "invalid_field",
    "unknown machine": "invalid_field",
}

# Valid inputs that look suspicious: each must be stored and counted.
TRICKY_VALID: list[tuple[str, bytes]] = [
    ("nested meta id (1)", _j(_ev(good=1, meta={"id": "shared-meta"}))),
    ("nested meta id (2)", _j(_ev(good=2, meta={"id": "shared-meta"}))),
    ("an id with escapes", _j(_ev(good=1, id='tricky-"quoted"\\é'))),
    ("an id of 200 characters", _j(_ev(good=1, id="t" * 200))),
    ("unicode text", _j(_STATE | {"state": "down", "reason": "heater_fault", "note": "加热圈"})),
    ("a count of one billion", _j(_ev(good=10**9, id="tricky-billion"))),
]


def valid_events(start: int, n: int) -> list[dict[str, Any]]:
    """`n` valid count events of POISON_MACHINE (1 good part each), ids from `start`.

    Their times rise by one second from two hours ago, so that a run of several batches
    stays in order and well inside the clock policy.
    """
    return [
        _ev(good=1, id=f"valid-{i}", ts=ts(timedelta(hours=-2, seconds=i)))
        for i in range(start, start + n)
    ]


def running_state() -> dict[str, Any]:
    """A state event that starts the poison machine's timeline before the valid events."""
    return _STATE | {"state": "running", "ts": ts(timedelta(hours=-3)), "id": "valid-running"}
