"""The validator's fast path reads event times as pydantic does (mesflow/events.py).

msgspec parses the RFC 3339 text; the fast path must never accept a time that the
reference path (pydantic with `_rfc3339_text`) refuses, nor read one differently (its
offset, its microseconds). Times it is not sure of go to pydantic.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow import events
from mesflow.events import ContractError, parse_event_reference

# Text of each part of a time: mostly valid, and each way one goes wrong.
YEARS = ["2026", "1970", "1969", "2199", "2200", "0001", "9999", "20260", "026", "+2026", "٢٠٢٦"]
MONTHS = ["11", "01", "12", "00", "13", "1", "02"]
DAYS = ["16", "01", "29", "30", "31", "00", "32", "6"]
SEPARATORS = ["T", "t", " ", "_"]
HOURS = ["07", "00", "23", "24", "7", "25"]
MINUTES = ["00", "59", "60", "5"]
SECONDS = [":17", ":00", ":59", ":60", ":61", "", ":7"]
OFFSETS = [
    "Z", "z", "+08:00", "-00:00", "+00:00", "+0800", "+08", "-23:59", "+24:00", "+08:60", "",
    "+8:00", "+08:00:00", "UTC", " Z", "-05:30", "+14:00",
]  # fmt: skip
NOISE = "0123456789-:T t.Z z+_,/Wé٢１\x00"


def random_time(rnd: random.Random) -> str:
    def pick(options: list[str]) -> str:
        return options[0] if rnd.random() < 0.6 else rnd.choice(options)

    digits = "".join(rnd.choice("0123456789") for _ in range(rnd.randint(1, 12)))
    fraction = pick(["", "." + digits, "."]) if rnd.random() < 0.5 else "." + digits
    text = (
        f"{pick(YEARS)}-{pick(MONTHS)}-{pick(DAYS)}{pick(SEPARATORS)}{pick(HOURS)}:"
        f"{pick(MINUTES)}{pick(SECONDS)}{fraction}{pick(OFFSETS)}"
    )
    if rnd.random() < 0.3:  # a few characters changed, added or dropped
        chars = list(text)
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randrange(len(chars))
            op = rnd.random()
            if op < 0.33:
                chars[i] = rnd.choice(NOISE)
            elif op < 0.66:
                chars.insert(i, rnd.choice(NOISE))
            else:
                del chars[i]
        text = "".join(chars)
    return text


def payload_at(ts: str) -> bytes:
    return msgspec.json.encode(
        {"good": 1, "machine": "IM-01", "scrap": 0, "ts": ts, "type": "count"}, order="sorted"
    )


def reference(payload: bytes) -> Any:
    try:
        return parse_event_reference(payload)
    except ContractError as err:
        return err.reason


def assert_same_time(ts: str) -> bool:
    """The fast path's event for `ts` is pydantic's, to the offset; True if it took it."""
    payload = payload_at(ts)
    fast = events._fast_event(payload)
    if fast is None:
        return False
    ref = reference(payload)
    assert not isinstance(ref, str), f"fast path took {ts!r}, pydantic refuses it ({ref})"
    assert fast == ref
    assert fast.ts.isoformat() == ref.ts.isoformat()
    assert fast.ts.utcoffset() == ref.ts.utcoffset()
    return True


def test_fast_times_equal_pydantic_on_a_corpus() -> None:
    """20,000 generated times (about a tenth valid): never one that pydantic reads
    otherwise or refuses."""
    rnd = random.Random(14)
    taken = sum(assert_same_time(random_time(rnd)) for _ in range(20_000))
    assert taken > 500  # the corpus reaches the fast path's accepted times


@settings(max_examples=50, deadline=None)
@given(st.randoms(use_true_random=False))
def test_fast_times_equal_pydantic(rnd: random.Random) -> None:
    for _ in range(20):
        assert_same_time(random_time(rnd))


@pytest.mark.parametrize(
    "ts",
    [
        "2026-11-16T07:00:17.355+08:00",
        "2026-11-16t07:00:17.355z",
        "2026-11-16 07:00:17Z",
        "2026-11-16T07:00:17.123456-05:30",
        "2026-11-16T07:00:17-00:00",
        "1970-01-01T00:00:00+14:00",
        "2199-12-31T23:59:59.999999-12:00",
    ],
)
def test_fast_path_takes_rfc3339_times(ts: str) -> None:
    assert assert_same_time(ts)


@pytest.mark.parametrize(
    "ts",
    [
        "2026-11-16T07:00:17.1234567+08:00",  # msgspec rounds a 7th digit, pydantic cuts it
        "2026-11-16T07:00:17.9999995Z",
        "2026-11-16T07:00:17+0800",  # msgspec takes an offset without its colon
        "2026-11-16T07:00:17",  # naive
        "1969-12-31T23:59:59Z",
        "2200-01-01T00:00:00+00:00",
    ],
)
def test_fast_path_leaves_other_times_to_pydantic(ts: str) -> None:
    assert events._fast_event(payload_at(ts)) is None
