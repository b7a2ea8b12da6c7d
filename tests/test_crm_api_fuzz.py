"""Property-based fuzzing of the CRM intake's bodies on real PostgreSQL.

Each body mixes valid fields with hostile ones (NUL, lone surrogates, integers past every
column, times from year 1 to 9999 with any offset, wrong JSON types, broken JSON). The
properties: never a 5xx; a 2xx stored exactly what the contract accepts (the logged event
parses) and can be read back; a 4xx stored nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.crm_api import create_app
from mesflow.events import parse_event
from mesflow.plant import PlantConfig
from mesflow.settings import Settings

TOKEN = "tok-fuzz-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}


@pytest.fixture
def api(db_url: str, plant: PlantConfig) -> Iterator[TestClient]:
    with TestClient(create_app(plant, db_url, Settings(crm_tokens=f"fuzz:{TOKEN}"))) as client:
        yield client


def _times() -> st.SearchStrategy[Any]:
    offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
        lambda m: timezone(timedelta(minutes=m))
    )
    anywhere = st.builds(
        lambda d, tz: d.replace(tzinfo=tz).isoformat(),
        st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
        offsets,
    )
    edges = st.sampled_from(
        [
            "0001-01-01T00:00:00+05:00",
            "0001-01-01T00:00:00-14:00",
            "9999-12-31T23:59:59-05:00",
            "1970-01-01T00:00:00+01:00",
            "2199-12-31T23:59:59-05:00",
            "2026-11-28T18:00:00",  # no offset
            "1763596800",
        ]
    )
    sane = st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
    ).map(lambda d: d.isoformat())
    return st.one_of(sane, sane, anywhere, edges)


_hostile_text = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.sampled_from(["a", "\x00", "\ud800", "\udfff", "客", "\U0001f3ed"])),
    st.just(""),
    st.just("x" * 201),
)
_hostile_int = st.one_of(
    st.integers(min_value=-3, max_value=10),
    st.sampled_from([2**31 - 1, 2**31, 2**53 - 1, 2**53, 2**63, 2**64, 10**40, 10**9, 10**9 + 1]),
)
_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


_hostile = st.one_of(_hostile_text, _hostile_int, _times(), _junk)

VALID_ORDER = st.fixed_dictionaries(
    {
        "order_no": st.sampled_from(["SO-1", "SO-2", "SO-3"]),
        "version": st.integers(min_value=0, max_value=50),
        "customer": st.sampled_from(["ACME", "客户 A"]),
        "priority": st.integers(min_value=1, max_value=3),
        "product": st.sampled_from(["P-100", "P-200"]),
        "qty": st.integers(min_value=1, max_value=10_000),
        "due": _times(),
        "status": st.sampled_from(["open", "on_hold", "cancelled"]),
    },
    optional={"ts": _times(), "id": st.just("ev-1")},
)
VALID_WORK_ORDER = st.fixed_dictionaries(
    {
        "work_order": st.sampled_from(["WO-1", "WO-2"]),
        "order_no": st.sampled_from(["SO-1", "SO-2"]),
        "product": st.sampled_from(["P-100", "P-200"]),
        "qty": st.integers(min_value=1, max_value=10_000),
    },
    optional={"machine": st.sampled_from(["IM-01", "IM-02"]), "ts": _times()},
)


@st.composite
def _bodies(draw: st.DrawFn, valid: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid body with up to two fields made hostile (or dropped)."""
    body = draw(valid)
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        name = draw(st.sampled_from(sorted(body)))
        if draw(st.integers(min_value=0, max_value=5)) == 0:
            del body[name]
        else:
            body[name] = draw(_hostile)
    return body


ORDERS = _bodies(VALID_ORDER)
WORK_ORDERS = _bodies(VALID_WORK_ORDER)


def _encode(body: Any, how: int) -> bytes:
    text = json.dumps(body)  # a lone surrogate becomes the escape \ud800: valid JSON text
    if how == 1:
        return text[: len(text) // 2].encode()  # cut short
    if how == 2:
        return b"[" + text.encode() + b"]"  # not an object
    return text.encode()


ACCEPTED: list[int] = []


def _log_count(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM ingest_log").fetchone()
    assert row is not None
    return int(row[0])


@settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(["orders", "work-orders"]),
    order=ORDERS,
    work_order=WORK_ORDERS,
    how=st.sampled_from([0, 0, 0, 0, 1, 2]),
    key=st.one_of(st.none(), st.sampled_from(["k1", "k2"])),
)
def test_no_body_makes_a_server_error_or_an_unreadable_order(
    api: TestClient,
    db_url: str,
    kind: str,
    order: dict[str, Any],
    work_order: dict[str, Any],
    how: int,
    key: str | None,
) -> None:
    body = order if kind == "orders" else work_order
    headers = BEARER if key is None else {**BEARER, "Idempotency-Key": key}
    before = _log_count(db_url)
    resp = api.post(f"/api/v1/{kind}", content=_encode(body, how), headers=headers)
    assert resp.status_code in (200, 201, 409, 422), (resp.status_code, resp.text, body)
    problem = resp.json()
    after = _log_count(db_url)
    if resp.status_code >= 400:
        assert after == before, body  # nothing stored
        if resp.status_code == 422:
            assert problem["fields"] or problem["message"].startswith("nothing stored")
        return
    assert after - before in (0, 1)
    # Whatever was accepted is readable and is a valid contract event.
    ACCEPTED.append(resp.status_code)
    order_no = body["order_no"]
    got = api.get(f"/api/v1/orders/{order_no}", headers=BEARER)
    assert got.status_code == 200, got.text
    with psycopg.connect(db_url) as conn:
        for (payload,) in conn.execute("SELECT payload FROM ingest_log ORDER BY seq"):
            parse_event(bytes(payload))  # raises if the log holds what the contract refuses


def test_the_fuzzing_reached_the_stored_paths() -> None:
    # Runs after the property above (file order): some bodies were accepted and read back.
    assert len(ACCEPTED) >= 5, ACCEPTED
