"""CRM order intake (collectors/crm_api.py) on real PostgreSQL, and the CRM stand-in
end to end: real uvicorn server, real dispatcher, real callback receiver."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from fastapi.testclient import TestClient

from collectors.crm_api import RedactQuery, create_app
from collectors.simulator.crm import (
    CrmClient,
    CrmStandIn,
    Received,
    credential_lines,
    demo_env,
    start_receiver,
)
from mesflow.events import OrderEvent, WorkOrderEvent, parse_event
from mesflow.plant import PlantConfig
from mesflow.services import free_port, wait_for_port
from mesflow.settings import Settings
from notify import outbox, webhooks
from notify.dispatcher import DispatchConfig, Dispatcher, Endpoint

TOKEN = "tok-a-0123456789"
SIGNING = webhooks.new_secret()
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def _settings(**extra: Any) -> Settings:
    return Settings(crm_tokens=f"crm-a:{TOKEN}", crm_signing_secrets=f"crm-b:{SIGNING}", **extra)


@pytest.fixture
def api(db_url: str, plant: PlantConfig) -> Iterator[TestClient]:
    with TestClient(create_app(plant, db_url, _settings())) as client:
        yield client


def _order(**changes: Any) -> dict[str, Any]:
    return {
        "order_no": "SO-2026-0042",
        "version": 1,
        "customer": "ACME",
        "priority": 2,
        "product": "P-100",
        "qty": 5000,
        "due": "2026-11-28T18:00:00+08:00",
        "status": "open",
        "ts": "2026-11-20T08:00:00+08:00",
        **changes,
    }


def _counts(db_url: str) -> dict[str, int]:
    tables = ("crm_order", "work_order", "order_history", "intake_delivery", "ingest_log")
    with psycopg.connect(db_url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}  # type: ignore[index]


def _log(db_url: str) -> list[tuple[str, Any]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT source, payload FROM ingest_log ORDER BY seq").fetchall()
    return [(source, parse_event(bytes(payload))) for source, payload in rows]


def _signed(
    body: dict[str, Any],
    msg_id: str = "msg_1",
    secret: str = SIGNING,
    *,
    method: str = "POST",
    path: str = "/api/v1/orders",
) -> dict[str, Any]:
    raw = json.dumps(body).encode()
    return {
        "content": raw,
        "headers": {
            "content-type": "application/json",
            **webhooks.signed_request_headers(secret, method, path, raw, msg_id=msg_id),
        },
    }


def test_authentication_is_required(api: TestClient, db_url: str) -> None:
    resp = api.post("/api/v1/orders", json=_order())
    assert resp.status_code == 401
    assert "authentication required" in resp.json()["message"]
    resp = api.post("/api/v1/orders", json=_order(), headers={"Authorization": "Bearer nope"})
    assert resp.status_code == 401 and resp.json()["error"] == "unauthorized"
    resp = api.get("/api/v1/orders/SO-2026-0042")
    assert resp.status_code == 401
    assert set(_counts(db_url).values()) == {0}


def test_accepted_changes_are_stored_with_history_and_logged(api: TestClient, db_url: str) -> None:
    resp = api.post("/api/v1/orders", json=_order(), headers={**BEARER, "Idempotency-Key": "d1"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"] == "accepted"
    resp = api.post(
        "/api/v1/orders",
        json=_order(version=2, qty=6000, due="2026-11-27T18:00:00+08:00"),
        headers={**BEARER, "Idempotency-Key": "d2"},
    )
    assert resp.status_code == 200
    assert resp.json() == {
        "status": "accepted",
        "order_no": "SO-2026-0042",
        "version": 2,
        "changed": ["due", "qty"],
    }
    got = api.get("/api/v1/orders/SO-2026-0042", headers=BEARER).json()
    assert got["order"]["version"] == 2 and got["order"]["qty"] == 6000
    assert got["order"]["changed_by"] == "crm-a"
    first, second = got["history"]
    assert first["version"] == 1 and first["change"]["qty"] == {"old": None, "new": 5000}
    assert second["changed_by"] == "crm-a" and second["delivery_id"] == "d2"
    assert second["change"]["qty"] == {"old": 5000, "new": 6000}
    assert set(second["change"]) == {"qty", "due"}
    assert second["accepted_at"] and second["event_ts"]

    log = _log(db_url)
    assert [source for source, _ in log] == ["crm:crm-a", "crm:crm-a"]
    events = [ev for _, ev in log]
    assert all(isinstance(ev, OrderEvent) for ev in events)
    assert [(ev.version, ev.qty) for ev in events] == [(1, 5000), (2, 6000)]


def test_a_stale_version_is_ignored(api: TestClient, db_url: str) -> None:
    assert api.post("/api/v1/orders", json=_order(version=3), headers=BEARER).status_code == 201
    for version in (2, 3):  # older, and equal
        resp = api.post("/api/v1/orders", json=_order(version=version, qty=1), headers=BEARER)
        assert resp.status_code == 200
        assert resp.json() == {
            "status": "ignored",
            "reason": "stale_version",
            "order_no": "SO-2026-0042",
            "version": version,
            "stored_version": 3,
            "changed": [],
        }
    got = api.get("/api/v1/orders/SO-2026-0042", headers=BEARER).json()
    assert got["order"]["qty"] == 5000 and len(got["history"]) == 1
    assert len(_log(db_url)) == 1


def test_a_replayed_delivery_gets_the_first_answer_again(api: TestClient, db_url: str) -> None:
    headers = {**BEARER, "Idempotency-Key": "delivery-7"}
    first = api.post("/api/v1/orders", json=_order(), headers=headers)
    assert first.status_code == 201
    # The same delivery again (the CRM missed the answer): the same answer, nothing changes.
    # Key order and whitespace do not make another request.
    again = api.post(
        "/api/v1/orders",
        content=json.dumps(dict(reversed(_order().items())), indent=2),
        headers={**headers, "content-type": "application/json"},
    )
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    # signed: the webhook-id is the delivery id
    signed = _signed(_order(version=2, qty=7000), "msg_replay")
    accepted = api.post("/api/v1/orders", **signed)
    assert accepted.status_code == 200 and accepted.json()["status"] == "accepted"
    replay = api.post("/api/v1/orders", **signed)
    assert (replay.status_code, replay.json()) == (200, accepted.json())
    counts = _counts(db_url)
    assert counts["order_history"] == 2 and counts["ingest_log"] == 2
    assert counts["intake_delivery"] == 2


def test_a_delivery_id_reused_for_another_body_is_a_conflict(api: TestClient, db_url: str) -> None:
    headers = {**BEARER, "Idempotency-Key": "delivery-8"}
    assert api.post("/api/v1/orders", json=_order(), headers=headers).status_code == 201
    before = _counts(db_url)
    resp = api.post("/api/v1/orders", json=_order(version=9, qty=1), headers=headers)
    assert resp.status_code == 409, resp.text
    assert resp.json()["error"] == "conflict" and "delivery-8" in resp.json()["message"]
    # another kind of request with the same id: also a conflict
    wo = {"work_order": "WO-1", "order_no": "SO-2026-0042", "product": "P-100", "qty": 1}
    assert api.post("/api/v1/work-orders", json=wo, headers=headers).status_code == 409
    # the same for a signed request whose webhook-id is reused with another (signed) body
    assert api.post("/api/v1/orders", **_signed(_order(version=2), "msg_9")).status_code == 200
    assert api.post("/api/v1/orders", **_signed(_order(version=3), "msg_9")).status_code == 409
    got = api.get("/api/v1/orders/SO-2026-0042", headers=BEARER).json()
    assert got["order"]["version"] == 2 and got["order"]["qty"] == 5000
    after = _counts(db_url)
    assert after["ingest_log"] == before["ingest_log"] + 1  # only msg_9's first body


def test_signed_requests(api: TestClient, db_url: str) -> None:
    resp = api.post("/api/v1/orders", **_signed(_order()))
    assert resp.status_code == 201 and resp.json()["status"] == "accepted"
    got = api.get("/api/v1/orders/SO-2026-0042", headers=BEARER).json()
    assert got["order"]["changed_by"] == "crm-b"
    assert got["history"][0]["delivery_id"] == "msg_1"

    bad = _signed(_order(version=2), "msg_2")
    bad["content"] = bad["content"].replace(b"ACME", b"EVIL")
    resp = api.post("/api/v1/orders", **bad)
    assert resp.status_code == 401 and "bad signature" in resp.json()["message"]
    resp = api.post("/api/v1/orders", **_signed(_order(version=2), "msg_3", webhooks.new_secret()))
    assert resp.status_code == 401
    raw = json.dumps(_order(version=2)).encode()
    old = webhooks.signed_headers(SIGNING, "msg_4", raw, timestamp=int(time.time()) - 301)
    resp = api.post("/api/v1/orders", content=raw, headers=old)
    assert resp.status_code == 401 and "300 s" in resp.json()["message"]
    assert _counts(db_url)["order_history"] == 1


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"qty": None}, "qty", "required"),
        ({"qty": -5}, "qty", "greater than 0"),
        ({"qty": "many"}, "qty", "integer"),
        ({"due": "next friday"}, "due", "RFC 3339"),
        ({"due": "2026-11-28T18:00:00"}, "due", "RFC 3339"),
        ({"status": "deleted"}, "status", "'open'"),
        ({"version": -1}, "version", "greater than or equal to 0"),
        ({"product": "P-999"}, "product", "unknown product"),
        ({"order_no": ""}, "order_no", "at least 1 character"),
    ],
)
def test_a_bad_request_names_the_field_and_stores_nothing(
    api: TestClient, db_url: str, change: dict[str, Any], field: str, words: str
) -> None:
    body = {k: v for k, v in _order(**change).items() if v is not None}
    resp = api.post("/api/v1/orders", json=body, headers={**BEARER, "Idempotency-Key": "x"})
    assert resp.status_code == 422, resp.text
    problem = resp.json()
    assert problem["error"] == "invalid_request"
    assert problem["fields"][0]["field"] == field
    assert words in problem["fields"][0]["message"]
    assert problem["message"].startswith(f"nothing stored: {field}: ")
    assert set(_counts(db_url).values()) == {0}
    # the same delivery id, corrected, is then accepted: the bad one left no trace
    fixed = api.post("/api/v1/orders", json=_order(), headers={**BEARER, "Idempotency-Key": "x"})
    assert fixed.status_code == 201


def test_malformed_json_is_a_clear_422(api: TestClient, db_url: str) -> None:
    resp = api.post(
        "/api/v1/orders",
        content=b'{"order_no": ',
        headers={**BEARER, "content-type": "application/json"},
    )
    assert resp.status_code == 422
    assert resp.json()["fields"][0]["field"] == "body"
    assert "JSON" in resp.json()["message"]
    assert set(_counts(db_url).values()) == {0}


def test_holds_and_cancellations_are_statuses(api: TestClient, db_url: str) -> None:
    for version, status in enumerate(("open", "on_hold", "open", "cancelled"), start=1):
        resp = api.post(
            "/api/v1/orders", json=_order(version=version, status=status), headers=BEARER
        )
        assert resp.json()["status"] == "accepted"
    got = api.get("/api/v1/orders/SO-2026-0042", headers=BEARER).json()
    assert got["order"]["status"] == "cancelled"
    assert [h["change"].get("status", {}).get("new") for h in got["history"]] == [
        "open",
        "on_hold",
        "open",
        "cancelled",
    ]
    statuses = [ev.status for _, ev in _log(db_url)]
    assert statuses == ["open", "on_hold", "open", "cancelled"]


def test_work_orders(api: TestClient, db_url: str) -> None:
    wo = {"work_order": "WO-1", "order_no": "SO-2026-0042", "product": "P-100", "qty": 2500}
    resp = api.post("/api/v1/work-orders", json=wo, headers=BEARER)
    assert resp.status_code == 422 and resp.json()["fields"][0]["field"] == "order_no"
    assert api.post("/api/v1/orders", json=_order(), headers=BEARER).status_code == 201
    resp = api.post("/api/v1/work-orders", json={**wo, "machine": "NOPE"}, headers=BEARER)
    assert resp.status_code == 422 and resp.json()["fields"][0]["field"] == "machine"
    resp = api.post("/api/v1/work-orders", json={**wo, "product": "P-200"}, headers=BEARER)
    assert resp.status_code == 422 and resp.json()["fields"][0]["field"] == "product"
    resp = api.post("/api/v1/work-orders", json={**wo, "qty": 0}, headers=BEARER)
    assert resp.status_code == 422 and resp.json()["fields"][0]["field"] == "qty"
    assert _counts(db_url)["work_order"] == 0

    resp = api.post("/api/v1/work-orders", json={**wo, "machine": "IM-01"}, headers=BEARER)
    assert resp.status_code == 201 and resp.json()["version"] == 1
    resp = api.post("/api/v1/work-orders", json={**wo, "machine": "IM-01"}, headers=BEARER)
    assert resp.json()["status"] == "unchanged"
    resp = api.post(
        "/api/v1/work-orders", json={**wo, "machine": "IM-01", "qty": 3000}, headers=BEARER
    )
    assert resp.json() == {
        "status": "accepted",
        "order_no": "SO-2026-0042",
        "work_order": "WO-1",
        "version": 2,
        "changed": ["qty"],
    }
    old = {**wo, "qty": 1, "ts": "2020-01-01T00:00:00Z"}
    assert api.post("/api/v1/work-orders", json=old, headers=BEARER).json()["reason"] == (
        "stale_timestamp"
    )
    got = api.get("/api/v1/orders/SO-2026-0042", headers=BEARER).json()
    assert got["work_orders"][0]["qty"] == 3000 and got["work_orders"][0]["machine"] == "IM-01"
    wo_history = [h for h in got["history"] if h["work_order"] == "WO-1"]
    assert [h["change"].get("qty") for h in wo_history] == [
        {"old": None, "new": 2500},
        {"old": 2500, "new": 3000},
    ]
    events = [ev for _, ev in _log(db_url) if isinstance(ev, WorkOrderEvent)]
    assert [(ev.qty, ev.machine) for ev in events] == [(2500, "IM-01"), (3000, "IM-01")]


def test_openapi_documents_the_intake(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    assert {"/api/v1/orders", "/api/v1/work-orders", "/api/v1/orders/{order_no}"} <= set(
        spec["paths"]
    )
    order_schema = spec["components"]["schemas"]["OrderIn"]
    assert {"order_no", "version", "qty", "due", "status"} <= set(order_schema["required"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert api.get("/docs").status_code == 200


def test_concurrent_duplicates_are_processed_once(api: TestClient, db_url: str) -> None:
    results: list[tuple[int, str, str | None]] = []

    def post() -> None:
        resp = api.post(
            "/api/v1/orders", json=_order(), headers={**BEARER, "Idempotency-Key": "same"}
        )
        results.append(
            (resp.status_code, resp.json()["status"], resp.headers.get("idempotent-replayed"))
        )

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # one processed it, five got its answer again
    assert (
        sorted(results, key=lambda r: r[2] is not None)
        == [(201, "accepted", None)] + [(201, "accepted", "true")] * 5
    )
    assert _counts(db_url)["ingest_log"] == 1


# --- the CRM stand-in, end to end -----------------------------------------------------


@pytest.fixture
def live_api(db_url: str, plant: PlantConfig) -> Iterator[str]:
    """The intake on a real uvicorn server, as `mesflow run api` serves it."""
    port = free_port()
    config = uvicorn.Config(
        create_app(plant, db_url, _settings()), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port("127.0.0.1", port, timeout=20)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_crm_stand_in_posts_orders_and_verifies_callbacks(
    live_api: str, db_url: str, plant: PlantConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    callback_secret = webhooks.new_secret()
    received = Received()
    port = free_port()
    server = start_receiver("127.0.0.1", port, callback_secret, received, show=lambda _m: None)
    try:
        for client in (
            CrmClient(live_api, token=TOKEN, secret=None),
            CrmClient(live_api, token=None, secret=SIGNING),
        ):
            sim = CrmStandIn(plant, client, seed=7)
            sim.create_orders(3)  # the second round resumes: versions continue
            for _ in range(25):
                sim.change_one()
            client.close()
        out = capsys.readouterr().out
        assert "HTTP 422" not in out and "HTTP 401" not in out, out
        with psycopg.connect(db_url) as conn:
            orders = conn.execute("SELECT order_no, version, changed_by FROM crm_order").fetchall()
            n_wo = conn.execute("SELECT count(*) FROM work_order").fetchone()
        assert len(orders) == 3 and all(v > 1 for _, v, _ in orders)
        assert {who for *_, who in orders} == {"crm-b"}  # the signed client changed them last
        assert n_wo is not None and n_wo[0] >= 3

        # Callbacks the dataflow would enqueue: the stand-in verifies and prints them.
        with psycopg.connect(db_url) as conn:
            for order_no, *_ in orders:
                outbox.enqueue(
                    conn, aggregate=order_no, event_type="work_started",
                    payload={"work_order": "WO-X"}, dedupe=f"{order_no}:started",
                )  # fmt: skip
                outbox.enqueue(
                    conn, aggregate=order_no, event_type="milestone",
                    payload={"percent": 25, "good": 10, "eta": "2026-11-28T10:00:00+08:00"},
                    dedupe=f"{order_no}:m25",
                )  # fmt: skip
        url = f"http://127.0.0.1:{port}/mesflow/callbacks"
        d = Dispatcher(db_url, {"crm": Endpoint("crm", url, callback_secret)}, DispatchConfig())
        try:
            while d.run_once():
                pass
        finally:
            d.close()
        assert received.bad_signatures == 0
        assert len(received.callbacks) == 6
        assert {m["type"] for m in received.callbacks} == {"order.work_started", "order.milestone"}
    finally:
        server.shutdown()
        server.server_close()


# --- hostile input: a 422 naming the field, nothing stored, every stored order readable ---

BIG = [2**31, 2**53, 2**63, 2**64, 10**30]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"customer": "AC\x00ME"}, "customer"),
        ({"order_no": "SO-\x00"}, "order_no"),
        ({"customer": "\ud800"}, "customer"),
        ({"product": "P-100\udfff"}, "product"),
        ({"id": "ev\x00"}, "id"),
        *[({"qty": n}, "qty") for n in BIG],
        *[({"priority": n}, "priority") for n in BIG],
        *[({"version": n}, "version") for n in BIG[1:]],
        ({"qty": 5.0}, "qty"),
        ({"qty": "5"}, "qty"),
        ({"version": True}, "version"),
        ({"due": "0001-01-01T00:00:00+05:00"}, "due"),
        ({"due": "0001-01-01T00:00:00-05:00"}, "due"),
        ({"due": "9999-12-31T23:59:59-05:00"}, "due"),
        ({"due": "9999-12-31T23:59:59+14:00"}, "due"),
        ({"due": "1969-12-31T23:59:59Z"}, "due"),
        ({"ts": "0001-01-01T00:00:00Z"}, "ts"),
        ({"ts": "9999-12-31T23:59:59Z"}, "ts"),
    ],
)
def test_poison_fields_are_refused_by_name(
    api: TestClient, db_url: str, change: dict[str, Any], field: str
) -> None:
    # json.dumps escapes a lone surrogate as \ud800: valid JSON text, invalid Unicode.
    raw = json.dumps(_order(**change))
    resp = api.post(
        "/api/v1/orders", content=raw, headers={**BEARER, "content-type": "application/json"}
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["fields"][0]["field"] == field, resp.json()
    assert set(_counts(db_url).values()) == {0}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"work_order": "WO\x00"}, "work_order"),
        ({"machine": "IM-01\ud800"}, "machine"),
        ({"qty": 2**31}, "qty"),
        ({"qty": 2**64}, "qty"),
        ({"ts": "0001-01-01T00:00:00+05:00"}, "ts"),
        ({"ts": "9999-12-31T23:59:59-05:00"}, "ts"),
    ],
)
def test_poison_work_order_fields_are_refused_by_name(
    api: TestClient, db_url: str, change: dict[str, Any], field: str
) -> None:
    assert api.post("/api/v1/orders", json=_order(), headers=BEARER).status_code == 201
    wo = {"work_order": "WO-1", "order_no": "SO-2026-0042", "product": "P-100", "qty": 1}
    resp = api.post(
        "/api/v1/work-orders",
        content=json.dumps({**wo, **change}),
        headers={**BEARER, "content-type": "application/json"},
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["fields"][0]["field"] == field
    assert _counts(db_url)["work_order"] == 0


def test_the_extremes_that_are_accepted_can_be_read_back(api: TestClient, db_url: str) -> None:
    edge = _order(
        order_no="S" * 200,
        customer="客户 ✓ \U0001f3ed",
        version=2**53 - 1,
        priority=2**31 - 1,
        qty=10**9,
        due="2199-12-31T23:59:59+00:00",
        ts="1970-01-01T00:00:00Z",
    )
    resp = api.post("/api/v1/orders", json=edge, headers=BEARER)
    assert resp.status_code == 201, resp.text
    got = api.get(f"/api/v1/orders/{'S' * 200}", headers=BEARER)
    assert got.status_code == 200, got.text
    assert got.json()["order"]["version"] == 2**53 - 1
    assert got.json()["order"]["customer"] == "客户 ✓ \U0001f3ed"
    [(_, event)] = _log(db_url)
    assert isinstance(event, OrderEvent) and event.qty == 10**9


@pytest.mark.parametrize("order_no", ["a%00b", "%ED%A0%80", "x" * 201, "%FF"])
def test_a_hostile_order_number_in_the_path_is_not_a_server_error(
    api: TestClient, order_no: str
) -> None:
    resp = api.get(f"/api/v1/orders/{order_no}", headers=BEARER)
    assert resp.status_code in (404, 422), resp.text


def test_invalid_utf8_is_a_422(api: TestClient, db_url: str) -> None:
    resp = api.post(
        "/api/v1/orders",
        content=b'{"order_no": "\xff"}',
        headers={**BEARER, "content-type": "application/json"},
    )
    assert resp.status_code == 422 and "UTF-8" in resp.json()["message"]


# --- signatures bound to method and path ----------------------------------------------


def test_a_signature_covers_method_path_and_query(api: TestClient, db_url: str) -> None:
    assert api.post("/api/v1/orders", json=_order(), headers=BEARER).status_code == 201
    assert (
        api.post("/api/v1/orders", json=_order(order_no="SO-2"), headers=BEARER).status_code == 201
    )
    # Signed GET headers for one order...
    get_a = webhooks.signed_request_headers(SIGNING, "GET", "/api/v1/orders/SO-2026-0042", b"")
    assert api.get("/api/v1/orders/SO-2026-0042", headers=get_a).status_code == 200
    # ...replayed on another path, with a query added, or as another method: refused.
    for method, url in [
        ("GET", "/api/v1/orders/SO-2"),
        ("GET", "/api/v1/orders/SO-2026-0042?x=1"),
        ("POST", "/api/v1/orders/SO-2026-0042"),
    ]:
        resp = api.request(method, url, headers=get_a)
        assert resp.status_code == 401, (method, url, resp.text)
        assert "method, path and body" in resp.json()["message"]
    # A query string is part of what is signed.
    signed_q = webhooks.signed_request_headers(SIGNING, "GET", "/api/v1/orders/SO-2?verbose=1", b"")
    assert api.get("/api/v1/orders/SO-2?verbose=1", headers=signed_q).status_code == 200
    # A signed order posted to the work-order route: refused, nothing stored.
    signed = _signed(_order(version=5), "msg_x")
    assert api.post("/api/v1/work-orders", **signed).status_code == 401
    # The previous scheme (body only) is no longer enough.
    raw = json.dumps(_order(version=6)).encode()
    body_only = webhooks.signed_headers(SIGNING, "msg_old", raw)
    assert api.post("/api/v1/orders", content=raw, headers=body_only).status_code == 401
    assert _counts(db_url)["order_history"] == 2
    # What the reference library signs with the documented content verifies too.
    from standardwebhooks import Webhook

    now = datetime.now(UTC)
    payload = webhooks.request_payload("POST", "/api/v1/orders", raw)
    lib = {
        "webhook-id": "msg_lib",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SIGNING).sign("msg_lib", now, payload.decode()),
        "content-type": "application/json",
    }
    assert api.post("/api/v1/orders", content=raw, headers=lib).status_code == 200


# --- credentials and size before the body ---------------------------------------------


def _raw_request(base: str, head: str, body: bytes = b"", *, wait_s: float = 5.0) -> bytes:
    """Send a request head (and maybe part of a body) on a raw socket; return the answer."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        answer = b""
        # Early refusals close the connection: read the whole answer up to that.
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_credentials_and_size_are_checked_before_the_body_is_read(
    live_api: str, db_url: str
) -> None:
    big = 100 * 1024 * 1024
    # 100 MB announced, not one byte sent: the answer comes anyway, so nothing was read.
    started = time.monotonic()
    answer = _raw_request(
        live_api,
        f"POST /api/v1/orders HTTP/1.1\nHost: x\nContent-Type: application/json\n"
        f"Content-Length: {big}\n",
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    answer = _raw_request(
        live_api,
        f"POST /api/v1/orders HTTP/1.1\nHost: x\nAuthorization: Bearer nope\n"
        f"Content-Length: {big}\n",
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    # Signed headers are checked for shape and age before the body, too.
    answer = _raw_request(
        live_api,
        f"POST /api/v1/orders HTTP/1.1\nHost: x\nwebhook-id: m1\nwebhook-timestamp: 1\n"
        f"webhook-signature: v1,AAAA\nContent-Length: {big}\n",
    )
    assert answer.startswith(b"HTTP/1.1 401") and b"300 s" in answer, answer[:300]
    # A good token but a body over the limit: 413 before reading it.
    answer = _raw_request(
        live_api,
        f"POST /api/v1/orders HTTP/1.1\nHost: x\nAuthorization: Bearer {TOKEN}\n"
        f"Content-Length: {big}\n",
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # Chunked (no length announced): 413 as soon as the limit is passed, without the end.
    limit = Settings().api_max_body_bytes
    chunk = b"x" * 8192
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(limit // 8192 + 2))
    answer = _raw_request(
        live_api,
        f"POST /api/v1/orders HTTP/1.1\nHost: x\nAuthorization: Bearer {TOKEN}\n"
        "Transfer-Encoding: chunked\nContent-Type: application/json\n",
        body,  # ...and no terminating 0-chunk: the server must not wait for it
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 10
    assert set(_counts(db_url).values()) == {0}
    # and the server still serves
    resp = httpx.post(f"{live_api}/api/v1/orders", json=_order(), headers=BEARER)
    assert resp.status_code == 201


# --- the docs page works offline ------------------------------------------------------


def test_the_docs_pages_load_their_assets_from_the_api_itself(live_api: str) -> None:
    with httpx.Client(base_url=live_api, trust_env=False) as http:
        for page in ("/docs", "/redoc"):
            html = http.get(page)
            assert html.status_code == 200
            urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
            urls += re.findall(r"""url: ?["']([^"']+)["']""", html.text)
            assert urls, html.text
            # every asset is on this server: nothing from a CDN or any other host
            assert not re.search(r"https?://", html.text), html.text
            for url in urls:
                asset = http.get(url)
                assert asset.status_code == 200, url
                assert len(asset.content) > 100, url
            assert "validatorUrl" not in html.text or '"validatorUrl": null' in html.text


# --- secrets: kept for integrators, out of logs ----------------------------------------


def test_demo_credentials_persist_and_are_described_by_variable(tmp_path: Any) -> None:
    store = tmp_path / "demo-crm.json"
    first = demo_env(8060, 8061, store)
    assert demo_env(8070, 8071, store)["MESFLOW_CRM_TOKENS"] == first["MESFLOW_CRM_TOKENS"]
    assert demo_env(8060, 8061)["MESFLOW_CRM_TOKENS"] != first["MESFLOW_CRM_TOKENS"]
    lines = "\n".join(credential_lines(first))
    token = first["MESFLOW_CRM_TOKENS"].split(":", 1)[1]
    assert f"Authorization: Bearer {token}" in lines and "MESFLOW_CRM_TOKENS" in lines
    assert first["MESFLOW_CRM_WEBHOOK_SECRET"] in lines


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://h:1/cb?token=abc&x=1&flag", "http://h:1/cb?token=***&x=***&flag"),
        ("https://user:pw@crm.example.com/in", "https://***:***@crm.example.com/in"),
        ("https://hooks.example.com/T0ABCDEF123/B0456XYZ789/abcdefgh12345678", None),
        ("http://crm.local/mesflow/callbacks", "http://crm.local/mesflow/callbacks"),
    ],
)
def test_urls_are_redacted_for_logs(url: str, shown: str | None) -> None:
    got = webhooks.redact_url(url)
    if shown is not None:
        assert got == shown
    assert "abc" not in got.split("?")[-1] if "?" in url else True
    assert "pw" not in got and "abcdefgh12345678" not in got


def test_the_access_log_shows_no_query_values() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/api/v1/orders/A?token=s3cret&b=1", "1.1", 200), None,
    )  # fmt: skip
    RedactQuery().filter(record)
    assert "s3cret" not in record.getMessage() and "token=***" in record.getMessage()


def test_a_change_dated_ahead_of_the_clock_is_refused_as_the_dataflow_would(
    api: TestClient, db_url: str, plant: PlantConfig
) -> None:
    skew = plant.plant.max_clock_skew_seconds
    ahead = (datetime.now(UTC) + timedelta(seconds=skew + 600)).isoformat()
    resp = api.post("/api/v1/orders", json=_order(ts=ahead), headers=BEARER)
    assert resp.status_code == 422 and resp.json()["fields"][0]["field"] == "ts"
    assert "ahead of the server's clock" in resp.json()["message"]
    assert set(_counts(db_url).values()) == {0}
    within = (datetime.now(UTC) + timedelta(seconds=skew / 2)).isoformat()
    assert api.post("/api/v1/orders", json=_order(ts=within), headers=BEARER).status_code == 201
    wo = {"work_order": "WO-1", "order_no": "SO-2026-0042", "product": "P-100", "qty": 1}
    resp = api.post("/api/v1/work-orders", json={**wo, "ts": ahead}, headers=BEARER)
    assert resp.status_code == 422 and resp.json()["fields"][0]["field"] == "ts"
    # A due date far ahead is a plan, not a clock: fine.
    far = _order(version=2, due="2150-01-01T00:00:00Z", ts=within)
    assert api.post("/api/v1/orders", json=far, headers=BEARER).status_code == 200
