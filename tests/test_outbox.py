"""The outbox and its dispatcher against real PostgreSQL and a real HTTP receiver that
stands in for the CRM and checks every signature with the reference `standardwebhooks`."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
import standardwebhooks

from notify import outbox, webhooks
from notify.dispatcher import DispatchConfig, Dispatcher, Endpoint, backoff_s

SECRET = webhooks.new_secret()
FAST = DispatchConfig(
    max_attempts=60, backoff_base_s=0.02, backoff_cap_s=0.3, timeout_s=2.0, poll_s=0.05
)


@dataclass
class Receiver:
    """A CRM callback endpoint: verifies with the reference library, dedupes by webhook-id.

    `behaviour(n, msg)` gives the HTTP status for the n-th request (0-based); "lost"
    means: process it, then answer 500 (the acknowledgement is lost).
    """

    behaviour: Callable[[int, dict[str, Any]], int | str] = lambda n, msg: 200
    requests: int = 0
    processed: list[dict[str, Any]] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    repeats: int = 0
    bad: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        try:
            msg = standardwebhooks.Webhook(SECRET).verify(body, headers)
        except standardwebhooks.WebhookVerificationError:
            with self.lock:
                self.bad += 1
            return 401
        with self.lock:
            n = self.requests
            self.requests += 1
        answer = self.behaviour(n, msg)
        if answer in (200, "lost"):
            with self.lock:
                if headers["webhook-id"] in self.ids:
                    self.repeats += 1
                else:
                    self.ids.add(headers["webhook-id"])
                    self.processed.append(msg)
            return 500 if answer == "lost" else 200
        assert isinstance(answer, int)
        return answer


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            code = rec.handle({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/callbacks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


def _endpoints(url: str) -> dict[str, Endpoint]:
    return {"crm": Endpoint("crm", url, SECRET)}


def _enqueue(db_url: str, items: list[tuple[str, str, dict[str, Any]]]) -> None:
    with psycopg.connect(db_url) as conn, conn.cursor() as cur:
        for order_no, kind, payload in items:
            outbox.enqueue(cur, aggregate=order_no, event_type=kind, payload=payload, dedupe=None)


def _status(db_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            """SELECT id, order_no, event_type, status, attempts, last_http_status, last_error,
                      endpoint_disabled
               FROM v_outbox_status ORDER BY id"""
        ).fetchall()


def _drain(dispatchers: list[Dispatcher], db_url: str, timeout_s: float = 60.0) -> None:
    """Run the dispatchers concurrently until nothing is pending."""
    stop = threading.Event()
    threads = [threading.Thread(target=d.run, args=(stop,), daemon=True) for d in dispatchers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            with psycopg.connect(db_url) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM outbox WHERE status = 'pending'"
                ).fetchone()
            if row is not None and row[0] == 0:
                return
            time.sleep(0.05)
        raise AssertionError("the outbox did not drain in time")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for d in dispatchers:
            d.close()


# --- signing ---------------------------------------------------------------------------


def test_signature_verifies_with_the_reference_library() -> None:
    body = json.dumps({"type": "order.milestone", "data": {"percent": 50}}).encode()
    headers = webhooks.signed_headers(SECRET, "msg_abc", body)
    assert standardwebhooks.Webhook(SECRET).verify(body, headers) == json.loads(body)
    # and the other way round: ours verifies what the library signs
    wh = standardwebhooks.Webhook(SECRET)
    now = datetime.now(UTC)
    lib_headers = {
        "webhook-id": "msg_x",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": wh.sign("msg_x", now, body.decode()),
    }
    assert webhooks.verify(SECRET, lib_headers, body) == "msg_x"
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        wh.verify(body + b" ", headers)
    with pytest.raises(webhooks.SignatureError, match="no webhook-signature matches"):
        webhooks.verify(SECRET, headers, body + b" ")
    with pytest.raises(webhooks.SignatureError, match="more than 300 s"):
        webhooks.verify(SECRET, headers, body, now=time.time() + 301)
    with pytest.raises(webhooks.SignatureError, match="no webhook-signature matches"):
        webhooks.verify(webhooks.new_secret(), headers, body)
    # key rotation: two signatures, one of them ours
    rotated = {**headers, "webhook-signature": "v1,AAAA " + headers["webhook-signature"]}
    assert webhooks.verify(SECRET, rotated, body) == "msg_abc"


def test_backoff_is_exponential_with_full_jitter() -> None:
    rng = random.Random(1)
    samples = [backoff_s(5, 1.0, 100.0, rng) for _ in range(2000)]
    assert 0 <= min(samples) < 1 and 15 < max(samples) <= 16  # uniform in [0, 2^4]
    assert max(backoff_s(30, 1.0, 100.0, rng) for _ in range(200)) <= 100  # the cap


# --- enqueue and claim ---------------------------------------------------------------


def test_enqueue_is_part_of_the_callers_transaction_and_deduplicated(db_url: str) -> None:
    eta = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    with psycopg.connect(db_url) as conn:
        with conn.cursor() as cur:
            outbox.enqueue(
                cur, aggregate="SO-1", event_type="at_risk", payload={"eta": eta}, dedupe="k1"
            )
        conn.rollback()  # the results were not committed: no callback either
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
        for _ in range(2):  # a dataflow re-emitting after a restart
            outbox.enqueue(
                conn,
                aggregate="SO-1",
                event_type="order.at_risk",
                payload={"eta": eta},
                dedupe="k1",
            )
        conn.commit()
        rows = conn.execute("SELECT event_type, payload, status FROM outbox").fetchall()
    assert rows == [
        ("order.at_risk", {"order_no": "SO-1", "eta": "2026-11-28T10:00:00+00:00"}, "pending")
    ]
    with psycopg.connect(db_url) as conn:
        with pytest.raises(ValueError, match="unknown callback type"):
            outbox.enqueue(conn, aggregate="SO-1", event_type="progress", payload={}, dedupe=None)
        with pytest.raises(ValueError, match=r"lacks \['percent'\]"):
            outbox.enqueue(conn, aggregate="SO-1", event_type="milestone", payload={}, dedupe=None)


def test_claim_takes_only_the_head_of_each_order(db_url: str) -> None:
    _enqueue(
        db_url,
        [("A", "milestone", {"percent": p}) for p in (25, 50, 75)]
        + [("B", "milestone", {"percent": p}) for p in (25, 50)],
    )
    with (
        psycopg.connect(db_url, autocommit=True) as c1,
        psycopg.connect(db_url, autocommit=True) as c2,
    ):
        first = outbox.claim(c1, endpoints=["crm"], limit=10, lease_s=60)
        assert [(m.aggregate, m.payload["percent"]) for m in first] == [("A", 25), ("B", 25)]
        # A second dispatcher gets nothing: the heads are leased, the rest wait behind them.
        assert outbox.claim(c2, endpoints=["crm"], limit=10, lease_s=60) == []
        outbox.mark_delivered(c1, first[0].id, 200)
        again = outbox.claim(c2, endpoints=["crm"], limit=10, lease_s=60)
        assert [(m.aggregate, m.payload["percent"]) for m in again] == [("A", 50)]
        assert outbox.claim(c2, endpoints=["other"], limit=10, lease_s=60) == []
    body = json.loads(first[0].body())
    assert body["type"] == "order.milestone"
    assert body["data"] == {"order_no": "A", "percent": 25, "sequence": first[0].id}
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None


# --- delivery --------------------------------------------------------------------------


def test_receiver_down_then_back_gets_everything_once_and_in_order(
    db_url: str, receiver: Receiver
) -> None:
    down_until = time.monotonic() + 1.5

    def flaky(n: int, msg: dict[str, Any]) -> int | str:
        if time.monotonic() < down_until:
            return 503
        return "lost" if n % 7 == 3 else 200  # processed, but the 2xx never arrives

    receiver.behaviour = flaky
    orders = [f"SO-{i:03d}" for i in range(12)]
    items = [
        (o, "milestone", {"percent": step, "good": step * 10})
        for step in range(1, 9)
        for o in orders  # interleaved across orders, like a live dataflow
    ]
    _enqueue(db_url, items)
    dispatchers = [
        Dispatcher(db_url, _endpoints(receiver.url), FAST, rng=random.Random(i)) for i in range(3)
    ]
    _drain(dispatchers, db_url)

    rows = _status(db_url)
    assert {r[3] for r in rows} == {"delivered"} and len(rows) == len(items)
    assert receiver.bad == 0
    assert len(receiver.processed) == len(items) == len(receiver.ids)  # each id once
    assert receiver.repeats > 0  # the lost acknowledgements were retried...
    per_order: dict[str, list[int]] = defaultdict(list)
    for msg in receiver.processed:
        per_order[msg["data"]["order_no"]].append(msg["data"]["percent"])
    # ...and still every order's callbacks were processed in the order they were enqueued.
    assert per_order == {o: list(range(1, 9)) for o in orders}
    assert max(r[4] for r in rows) > 1  # the outage really caused retries


def test_http_410_disables_the_endpoint_and_fails_its_callbacks(
    db_url: str, receiver: Receiver
) -> None:
    receiver.behaviour = lambda n, msg: 410
    _enqueue(
        db_url, [("A", "work_started", {"work_order": "WO-1"}), ("B", "completed", {"good": 5})]
    )
    d = Dispatcher(db_url, _endpoints(receiver.url), FAST)
    try:
        while d.run_once():
            pass
        # A and B were sent concurrently (different orders); nothing is sent after the 410.
        in_flight = receiver.requests
        assert in_flight <= 2
        _enqueue(db_url, [("C", "completed", {"good": 1})])
        d.run_once()
    finally:
        d.close()
    assert receiver.requests == in_flight
    rows = _status(db_url)
    assert [r[3] for r in rows] == ["failed"] * 3
    assert all(r[7] for r in rows)  # endpoint_disabled
    assert all("410" in r[6] for r in rows), rows

    # The CRM fixes its endpoint; an operator replays the failed callbacks.
    receiver.behaviour = lambda n, msg: 200
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert outbox.replay_failed(conn, endpoint="crm") == 3
    _drain([Dispatcher(db_url, _endpoints(receiver.url), FAST)], db_url)
    assert [r[3] for r in _status(db_url)] == ["delivered"] * 3
    assert len(receiver.ids) == 3


def test_max_attempts_dead_letters_and_the_order_moves_on(db_url: str, receiver: Receiver) -> None:
    def reject_first_of_a(n: int, msg: dict[str, Any]) -> int:
        data = msg["data"]
        return 500 if data["order_no"] == "A" and data["percent"] == 25 else 200

    receiver.behaviour = reject_first_of_a
    _enqueue(
        db_url,
        [("A", "milestone", {"percent": 25}), ("A", "milestone", {"percent": 50}),
         ("B", "milestone", {"percent": 25})],
    )  # fmt: skip
    config = DispatchConfig(max_attempts=3, backoff_base_s=0.01, backoff_cap_s=0.05, poll_s=0.02)
    _drain([Dispatcher(db_url, _endpoints(receiver.url), config)], db_url)
    rows = _status(db_url)
    assert [(r[1], r[3], r[4], r[5]) for r in rows] == [
        ("A", "failed", 3, 500),
        ("A", "delivered", 1, 200),
        ("B", "delivered", 1, 200),
    ]
    assert rows[0][6].startswith("HTTP 500")
    with psycopg.connect(db_url) as conn:
        summary: dict[str, int] = dict(
            conn.execute("SELECT status, messages FROM v_outbox_summary WHERE endpoint = 'crm'")
        )
    assert summary == {"failed": 1, "delivered": 2}


def test_a_slow_receiver_times_out_and_is_retried(db_url: str, receiver: Receiver) -> None:
    def slow_first(n: int, msg: dict[str, Any]) -> int:
        if n == 0:
            time.sleep(1.0)
        return 200

    receiver.behaviour = slow_first
    _enqueue(db_url, [("A", "completed", {"good": 10, "scrap": 1})])
    config = DispatchConfig(backoff_base_s=0.01, backoff_cap_s=0.05, timeout_s=0.3, poll_s=0.02)
    _drain([Dispatcher(db_url, _endpoints(receiver.url), config)], db_url)
    rows = _status(db_url)
    assert rows[0][3] == "delivered" and rows[0][4] == 2
    assert rows[0][6].startswith("timeout after 0.3 s")
    assert len(receiver.ids) == 1


def test_unreachable_endpoint_keeps_callbacks_pending_until_it_is_up(
    db_url: str, receiver: Receiver
) -> None:
    _enqueue(db_url, [("A", "completed", {"good": 10})])
    dead = Dispatcher(db_url, _endpoints("http://127.0.0.1:9/nothing"), FAST)
    try:
        dead.run_once()
    finally:
        dead.close()
    rows = _status(db_url)
    assert rows[0][3] == "pending" and rows[0][4] == 1 and "ConnectError" in rows[0][6]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE outbox SET next_attempt_at = now() - interval '1 s'")
    _drain([Dispatcher(db_url, _endpoints(receiver.url), FAST)], db_url)
    assert _status(db_url)[0][3] == "delivered"
    # a different URL for the endpoint is recorded (and would re-enable it after a 410)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT url FROM webhook_endpoint").fetchone() == (receiver.url,)


def test_old_lease_is_claimable_again(db_url: str) -> None:
    """A dispatcher that died mid-send: after its lease the callback goes out again."""
    _enqueue(db_url, [("A", "completed", {"good": 1})])
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert len(outbox.claim(conn, endpoints=["crm"], limit=5, lease_s=60)) == 1
        assert outbox.claim(conn, endpoints=["crm"], limit=5, lease_s=60) == []
        conn.execute("UPDATE outbox SET locked_until = now() - %s", (timedelta(seconds=1),))
        assert len(outbox.claim(conn, endpoints=["crm"], limit=5, lease_s=60)) == 1
