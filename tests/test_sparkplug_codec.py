"""The Sparkplug B codec (collectors/sparkplug/codec.py): round trips of every scalar
datatype, Tahu's encoding of signed integers, and hostile payloads refused with a reason
(never another exception)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.sparkplug import codec
from collectors.sparkplug import sparkplug_b_pb2 as pb
from collectors.sparkplug.codec import CodecError, Metric

T0 = 1_795_000_000_000

RANGES = {
    codec.INT8: (-(2**7), 2**7 - 1),
    codec.INT16: (-(2**15), 2**15 - 1),
    codec.INT32: (-(2**31), 2**31 - 1),
    codec.INT64: (-(2**63), 2**63 - 1),
    codec.UINT8: (0, 2**8 - 1),
    codec.UINT16: (0, 2**16 - 1),
    codec.UINT32: (0, 2**32 - 1),
    codec.UINT64: (0, 2**64 - 1),
}


@settings(max_examples=50)
@given(
    st.sampled_from(sorted(RANGES)).flatmap(
        lambda dt: st.tuples(st.just(dt), st.integers(*RANGES[dt]))
    )
)
def test_integers_of_every_width_round_trip(case: tuple[int, int]) -> None:
    datatype, value = case
    raw = codec.encode([Metric(name="m", datatype=datatype, value=value, timestamp=T0)], seq=1)
    (m,) = codec.decode(raw).metrics
    assert m.value == value and m.datatype == datatype
    # A DATA metric has no datatype: the birth's datatype reads it back the same.
    assert codec.value_as(datatype, m.kind, m.raw) == value


@settings(max_examples=50)
@given(
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(
        alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
        max_size=50,
    ),
)
def test_double_boolean_string_round_trip(x: float, b: bool, s: str) -> None:
    raw = codec.encode(
        [
            Metric(name="d", datatype=codec.DOUBLE, value=x),
            Metric(name="b", datatype=codec.BOOLEAN, value=b),
            Metric(name="s", datatype=codec.STRING, value=s),
            Metric(name="t", datatype=codec.DATETIME, value=T0),
        ],
        timestamp=T0,
        seq=255,
    )
    p = codec.decode(raw)
    assert [m.value for m in p.metrics] == [x, b, s, T0]
    assert (p.timestamp, p.seq) == (T0, 255)


def test_reads_what_tahu_writes() -> None:
    """Built with the generated classes as Tahu's Python does (Int8 -3 as 253 in int_value)."""
    msg = pb.Payload(timestamp=T0, seq=0)
    m = msg.metrics.add(name="Temp", alias=7, timestamp=T0, datatype=pb.Int8)
    m.int_value = 253
    f = msg.metrics.add(name="Speed", timestamp=T0, datatype=pb.Float)
    f.float_value = 1.5
    n = msg.metrics.add(name="Gone", timestamp=T0, datatype=pb.Double, is_null=True)
    assert n.is_null
    p = codec.decode(msg.SerializeToString())
    assert [(m.name, m.alias, m.value) for m in p.metrics] == [
        ("Temp", 7, -3),
        ("Speed", None, 1.5),
        ("Gone", None, None),
    ]
    assert p.metrics[2].is_null


def _reason(raw: bytes, **kw: int) -> str:
    with pytest.raises(CodecError) as err:
        codec.decode(raw, **kw)
    return err.value.reason


def test_hostile_payloads_are_refused_with_reasons() -> None:
    good = codec.encode([Metric(name="m", datatype=codec.INT32, value=5, timestamp=T0)], seq=3)
    assert _reason(b"\xff\xff\xff\xff garbage") == "malformed"
    assert _reason(good[:4]) == "malformed"  # truncated inside the metric
    assert _reason(b"\x0a") == "malformed"  # a field tag without its value
    many = codec.encode([Metric(alias=i, datatype=codec.BOOLEAN, value=True) for i in range(3000)])
    assert _reason(many) == "too_many_metrics"
    assert (
        _reason(codec.encode([Metric(alias=1, datatype=codec.INT32, value=1)]), max_metrics=0)
        == "too_many_metrics"
    )
    # Declared Double, carrying a string
    msg = pb.Payload(seq=1)
    m = msg.metrics.add(name="x", datatype=pb.Double)
    m.string_value = "3.5"
    assert _reason(msg.SerializeToString()) == "bad_datatype"
    # Unknown datatype number
    msg = pb.Payload(seq=1)
    msg.metrics.add(name="x", datatype=99).int_value = 1
    assert _reason(msg.SerializeToString()) == "bad_datatype"
    # UInt8 value that does not fit
    msg = pb.Payload(seq=1)
    msg.metrics.add(name="x", datatype=pb.UInt8).int_value = 300
    assert _reason(msg.SerializeToString()) == "bad_datatype"
    # NUL in a name and in a string value; bytes that are not UTF-8
    assert (
        _reason(codec.encode([Metric(name="a\x00b", datatype=codec.INT32, value=1)])) == "bad_text"
    )
    assert (
        _reason(codec.encode([Metric(name="s", datatype=codec.STRING, value="x\x00y")]))
        == "bad_text"
    )
    msg = pb.Payload(seq=1)
    msg.metrics.add(string_value="ok")
    raw = msg.SerializeToString().replace(b"ok", b"\xff\xfe")
    assert _reason(raw) == "bad_text"
    # Timestamps beyond 2199 (payload, metric, DateTime value); seq beyond 255
    assert _reason(pb.Payload(timestamp=2**63).SerializeToString()) == "bad_timestamp"
    assert (
        _reason(
            codec.encode([Metric(name="m", datatype=codec.INT32, value=1, timestamp=2**64 - 1)])
        )
        == "bad_timestamp"
    )
    assert (
        _reason(codec.encode([Metric(name="d", datatype=codec.DATETIME, value=2**62)]))
        == "bad_timestamp"
    )
    assert _reason(pb.Payload(seq=256).SerializeToString()) == "bad_seq"


@settings(max_examples=50)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_a_codec_error(raw: bytes) -> None:
    try:
        p = codec.decode(raw)
    except CodecError as err:
        assert err.reason in {
            "malformed",
            "too_many_metrics",
            "bad_datatype",
            "bad_text",
            "bad_timestamp",
            "bad_seq",
        }
        return
    for m in p.metrics:  # what decodes is usable: no NUL, no bad text, times in range
        assert m.name is None or "\x00" not in m.name
        assert m.timestamp is None or 0 <= m.timestamp <= codec.MAX_TIMESTAMP_MS
        assert not isinstance(m.value, str) or "\x00" not in m.value


def test_ms_to_rfc3339() -> None:
    assert codec.ms_to_rfc3339(0) == "1970-01-01T00:00:00.000+00:00"
    assert codec.ms_to_rfc3339(T0 + 7).endswith(".007+00:00")
