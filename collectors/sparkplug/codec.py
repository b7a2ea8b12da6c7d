"""Sparkplug B payloads <-> plain Python values (pure: no I/O, no state).

`decode` turns the protobuf bytes of one message into a `Payload` of scalar `Metric`s, or
raises `CodecError` with a dead-letter reason code; it never raises anything else.
`encode` builds the bytes (the host's Rebirth NCMD, and the test edge node).

The wire format is Eclipse Tahu's `sparkplug_b.proto` (vendored next to this file, EPL-2.0).
Signed 8/16/32-bit integers travel two's-complement in the uint32 `int_value`, Int64 in the
uint64 `long_value`: the declared datatype is needed to read them back, so a DATA metric
without a datatype is converted with the datatype of its birth (`value_as`).
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError as _PbDecodeError

from collectors.sparkplug import sparkplug_b_pb2 as pb

# Datatype numbers (DataType enum of the proto).
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT, UUID = 9, 10, 11, 12, 13, 14, 15
DATASET, BYTES, FILE, TEMPLATE = 16, 17, 18, 19
FIRST_ARRAY, LAST_ARRAY = 22, 34

DATATYPE_NAMES = {v.number: v.name for v in pb.DataType.DESCRIPTOR.values}

_SIGNED_BITS = {INT8: 8, INT16: 16, INT32: 32, INT64: 64}
_UNSIGNED_BITS = {UINT8: 8, UINT16: 16, UINT32: 32, UINT64: 64}
_INTEGER = {*_SIGNED_BITS, *_UNSIGNED_BITS, DATETIME}
_TEXT = {STRING, TEXT, UUID}
# Which protobuf value field each datatype may use. Integers are accepted in either
# integer field (Tahu's Python puts UInt32 in int_value, other encoders in long_value).
_FIELDS: dict[int, frozenset[str]] = {
    **{t: frozenset({"int_value", "long_value"}) for t in _INTEGER},
    FLOAT: frozenset({"float_value", "double_value"}),
    DOUBLE: frozenset({"double_value", "float_value"}),
    BOOLEAN: frozenset({"boolean_value"}),
    **{t: frozenset({"string_value"}) for t in _TEXT},
    BYTES: frozenset({"bytes_value"}),
    FILE: frozenset({"bytes_value"}),
    DATASET: frozenset({"dataset_value"}),
    TEMPLATE: frozenset({"template_value"}),
    **{t: frozenset({"bytes_value"}) for t in range(FIRST_ARRAY, LAST_ARRAY + 1)},
}

# One message holds at most this many metrics: a real birth has tens to a few hundred;
# more is a misconfigured or hostile edge, refused whole rather than half-read.
MAX_METRICS = 2000
MAX_NAME = 200
# Times (ms since 1970) after 2199 are a wrong clock, and the event contract refuses them.
MAX_TIMESTAMP_MS = int(datetime(2200, 1, 1, tzinfo=UTC).timestamp() * 1000) - 1

Scalar = bool | int | float | str | bytes | None


class CodecError(ValueError):
    """A payload that cannot be used; `reason` is the dead-letter reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Metric(NamedTuple):
    """One metric as received. `kind` is the protobuf value field that was set (None for
    no value); `raw` its value as protobuf gave it. `value` is the converted scalar when
    the metric declared its datatype (births), else None until `value_as` converts it."""

    name: str | None = None
    alias: int | None = None
    timestamp: int | None = None
    datatype: int | None = None
    kind: str | None = None
    raw: Any = None
    value: Scalar = None
    is_null: bool = False
    is_historical: bool = False

    def label(self) -> str:
        """How a message names this metric (for error details)."""
        if self.name is not None:
            return repr(self.name)
        return f"alias {self.alias}" if self.alias is not None else "a metric without name"


class Payload(NamedTuple):
    timestamp: int | None
    seq: int | None
    metrics: tuple[Metric, ...]


def datatype_name(datatype: int | None) -> str:
    return DATATYPE_NAMES.get(datatype, str(datatype)) if datatype is not None else "none"


@functools.lru_cache(maxsize=4096)  # the metrics of one message mostly share a timestamp
def ms_to_rfc3339(ms: int) -> str:
    """Event time as the contract wants it: RFC 3339, UTC, milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _check_ms(ms: int, what: str) -> int:
    if not 0 <= ms <= MAX_TIMESTAMP_MS:
        raise CodecError(
            "bad_timestamp", f"{what} {ms} ms is not a time between 1970 and 2199 (ms since 1970)"
        )
    return ms


def _check_text(text: str | bytes, what: str) -> str:
    if isinstance(text, bytes):  # proto2 strings are not checked for UTF-8 by the parser
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise CodecError("bad_text", f"{what} is not valid UTF-8") from None
    if "\x00" in text:
        raise CodecError("bad_text", f"{what} contains a NUL character")
    return text


def value_as(datatype: int, kind: str | None, raw: Any, label: str = "metric") -> Scalar:
    """The metric's value read as `datatype`; CodecError `bad_datatype` when the value
    field does not fit the datatype (a String metric carrying a double, ...)."""
    if kind is None:
        return None
    allowed = _FIELDS.get(datatype)
    if allowed is None:
        raise CodecError("bad_datatype", f"{label}: unknown datatype {datatype}")
    if kind not in allowed:
        raise CodecError(
            "bad_datatype",
            f"{label} is declared {datatype_name(datatype)} but carries {kind}",
        )
    if datatype in _SIGNED_BITS:
        bits = _SIGNED_BITS[datatype]
        v = int(raw) & ((1 << bits) - 1)
        return v - (1 << bits) if v >= 1 << (bits - 1) else v
    if datatype in _UNSIGNED_BITS:
        v = int(raw)
        if v >= 1 << _UNSIGNED_BITS[datatype]:
            raise CodecError("bad_datatype", f"{label}: {v} does not fit {datatype_name(datatype)}")
        return v
    if datatype == DATETIME:
        return _check_ms(int(raw), f"{label} DateTime value")
    if datatype in (FLOAT, DOUBLE):
        return float(raw)
    if datatype == BOOLEAN:
        return bool(raw)
    if datatype in _TEXT:
        return _check_text(raw, f"{label} value")
    if datatype in (BYTES, FILE) or FIRST_ARRAY <= datatype <= LAST_ARRAY:
        return bytes(raw)
    return None  # DataSet / Template: kept out of scalar use


def decode(raw: bytes, *, max_metrics: int = MAX_METRICS) -> Payload:
    """Decode one Sparkplug B payload; CodecError (reasons `malformed`, `too_many_metrics`,
    `bad_datatype`, `bad_text`, `bad_timestamp`, `bad_seq`) on anything unusable."""
    msg = pb.Payload()
    try:
        msg.ParseFromString(raw)
    except _PbDecodeError as err:
        raise CodecError("malformed", f"not a Sparkplug B protobuf payload ({err})") from None
    except (ValueError, RecursionError) as err:  # defensive: other parser refusals
        raise CodecError("malformed", f"not a Sparkplug B protobuf payload ({err})") from None
    n = len(msg.metrics)
    if n > max_metrics:
        raise CodecError("too_many_metrics", f"{n} metrics; at most {max_metrics} per message")
    seq = msg.seq if msg.HasField("seq") else None
    if seq is not None and seq > 255:
        raise CodecError("bad_seq", f"seq {seq} is not in 0..255")
    ts = _check_ms(msg.timestamp, "payload timestamp") if msg.HasField("timestamp") else None
    try:
        metrics = tuple(_metric(m) for m in msg.metrics)
    except CodecError:
        raise
    except Exception as err:  # defensive: one payload must never stop the host
        raise CodecError("malformed", f"{type(err).__name__}: {err}") from None
    return Payload(timestamp=ts, seq=seq, metrics=metrics)


def _metric(m: Any) -> Metric:
    name = _check_text(m.name, "a metric name") if m.HasField("name") else None
    if name is not None and len(name) > MAX_NAME:
        raise CodecError("bad_text", f"metric name of {len(name)} characters (at most {MAX_NAME})")
    alias = m.alias if m.HasField("alias") else None
    # Built per metric only when it is needed (NamedTuple + no eager f-strings: this loop
    # is the collector's hot path).
    ts = m.timestamp if m.HasField("timestamp") else None
    if ts is not None and ts > MAX_TIMESTAMP_MS:
        _check_ms(ts, f"metric {_label(name, alias)} timestamp")
    datatype = m.datatype if m.HasField("datatype") else None
    kind = m.WhichOneof("value")
    raw: Any = getattr(m, kind) if kind is not None else None
    value: Scalar = None
    is_null = m.is_null  # proto2 default: False
    if datatype is not None:
        label = _label(name, alias)
        if datatype not in _FIELDS:
            raise CodecError("bad_datatype", f"metric {label}: unknown datatype {datatype}")
        if not is_null:
            value = value_as(datatype, kind, raw, f"metric {label}")
    elif kind == "string_value":
        raw = _check_text(raw, f"metric {_label(name, alias)} value")
    elif kind in ("dataset_value", "template_value"):
        raw = None
    return Metric(name, alias, ts, datatype, kind, raw, value, is_null, m.is_historical)


def _label(name: str | None, alias: int | None) -> str:
    return repr(name) if name is not None else f"alias {alias}"


def encode(
    metrics: list[Metric] | tuple[Metric, ...] = (),
    *,
    timestamp: int | None = None,
    seq: int | None = None,
) -> bytes:
    """Bytes of a payload. Each metric's `value` is written in the field its `datatype`
    calls for (two's complement for negative signed integers, as Tahu does)."""
    msg = pb.Payload()
    if timestamp is not None:
        msg.timestamp = timestamp
    if seq is not None:
        msg.seq = seq
    for m in metrics:
        out = msg.metrics.add()
        if m.name is not None:
            out.name = m.name
        if m.alias is not None:
            out.alias = m.alias
        if m.timestamp is not None:
            out.timestamp = m.timestamp
        if m.datatype is not None:
            out.datatype = m.datatype
        if m.is_historical:
            out.is_historical = True
        if m.is_null or m.value is None:
            if m.is_null:
                out.is_null = True
            continue
        _set_value(out, m.datatype, m.value)
    return msg.SerializeToString()


def _set_value(out: Any, datatype: int | None, value: Scalar) -> None:
    if datatype in _SIGNED_BITS or datatype in _UNSIGNED_BITS or datatype == DATETIME:
        assert isinstance(value, int)
        bits = _SIGNED_BITS.get(datatype, 0)
        if value < 0:
            value += 1 << bits
        if datatype in (INT64, UINT64, DATETIME):
            out.long_value = value
        else:
            out.int_value = value
    elif datatype == FLOAT:
        out.float_value = float(value)  # type: ignore[arg-type]
    elif datatype == DOUBLE:
        out.double_value = float(value)  # type: ignore[arg-type]
    elif datatype == BOOLEAN:
        out.boolean_value = bool(value)
    elif datatype in _TEXT:
        out.string_value = str(value)
    elif isinstance(value, bytes):
        out.bytes_value = value
    else:
        raise ValueError(f"cannot encode {value!r} as datatype {datatype_name(datatype)}")
