"""The callback dispatcher under faults, against real services: a local HTTP server that
answers 429/503 with Retry-After and 410, an endpoint that is not listening at all, a
PostgreSQL server that crashes and comes back, and a dispatcher whose loop dies."""

from __future__ import annotations

import email.utils
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
import standardwebhooks

from mesflow.services import free_port
from mesflow.settings import REPO_ROOT
from notify import outbox, webhooks
from notify.dispatcher import DispatchConfig, Dispatcher, Endpoint
from tests.helpers import OwnPostgres

SECRET = webhooks.new_secret()
TOKEN = "s3cr3t-t0ken-do-not-log-0123456789"
QUICK = DispatchConfig(
    max_attempts=30, backoff_base_s=0.02, backoff_cap_s=5.0, timeout_s=2.0, poll_s=0.05
)

Answer = tuple[int, dict[str, str]]


@dataclass
class Crm:
    """A callback endpoint answering from a script: `script(n)` for the n-th request."""

    script: Callable[[int], Answer] = lambda n: (200, {})
    arrivals: list[tuple[float, str, int]] = field(default_factory=list)  # time, id, answer
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    port: int = 0

    def start(self, port: int = 0) -> Crm:
        crm = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                standardwebhooks.Webhook(SECRET).verify(body, headers)  # raises if unsigned
                with crm.lock:
                    n = len(crm.arrivals)
                    status, extra = crm.script(n)
                    crm.arrivals.append((time.monotonic(), headers["webhook-id"], status))
                    crm.paths.append(self.path)
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def url(self, path: str = "/cb") -> str:
        return f"http://127.0.0.1:{self.port}{path}?token={TOKEN}"

    def delivered_ids(self) -> list[str]:
        with self.lock:
            return [i for _, i, status in self.arrivals if 200 <= status < 300]


@pytest.fixture
def crm() -> Iterator[Crm]:
    server = Crm().start()
    yield server
    server.stop()


def _enqueue(db_url: str, order_no: str, percents: list[int]) -> None:
    with psycopg.connect(db_url) as conn:
        for p in percents:
            outbox.enqueue(
                conn,
                aggregate=order_no,
                event_type="milestone",
                payload={"percent": p},
                dedupe=f"{order_no}:{p}",
            )


def _rows(db_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            """SELECT order_no, payload->>'percent', status, attempts, last_http_status,
                      last_error, endpoint_disabled, webhook_id
               FROM v_outbox_status ORDER BY id"""
        ).fetchall()


@dataclass
class Running:
    """A dispatcher's `run` loop in a thread, as `mesflow run notify` runs it."""

    dispatcher: Dispatcher
    stop: threading.Event = field(default_factory=threading.Event)
    error: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        def target() -> None:
            try:
                self.dispatcher.run(self.stop)
            except BaseException as err:  # recorded: the test asserts the loop survived
                self.error.append(err)

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)
        self.dispatcher.close()


def _wait(what: str, cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _all_delivered(db_url: str) -> Callable[[], bool]:
    return lambda: {r[2] for r in _rows(db_url)} == {"delivered"}


# --- Retry-After ------------------------------------------------------------------------


def test_retry_after_seconds_and_http_date_are_waited_for(db_url: str, crm: Crm) -> None:
    def script(n: int) -> Answer:
        if n == 0:
            return 429, {"Retry-After": "2"}
        if n == 1:
            when = datetime.now(UTC) + timedelta(seconds=3)
            return 503, {"Retry-After": email.utils.format_datetime(when, usegmt=True)}
        return 200, {}

    crm.script = script
    _enqueue(db_url, "A", [25])
    running = Running(Dispatcher(db_url, {"crm": Endpoint("crm", crm.url(), SECRET)}, QUICK))
    try:
        _wait("delivery", _all_delivered(db_url))
    finally:
        running.close()
    assert not running.error
    times = [t for t, _, _ in crm.arrivals]
    assert [s for _, _, s in crm.arrivals] == [429, 503, 200]
    # the backoff alone would be below 0.1 s; the receiver asked for 2 s, then ~3 s
    assert times[1] - times[0] >= 1.9, times
    assert times[2] - times[1] >= 1.9, times  # an HTTP date has whole seconds
    [row] = _rows(db_url)
    assert row[2] == "delivered" and row[3] == 3


def test_retry_after_is_capped_by_the_backoff_cap(db_url: str, crm: Crm) -> None:
    crm.script = lambda n: (503, {"Retry-After": "86400"}) if n == 0 else (200, {})
    _enqueue(db_url, "A", [25])
    config = DispatchConfig(backoff_base_s=0.01, backoff_cap_s=0.5, poll_s=0.05)
    running = Running(Dispatcher(db_url, {"crm": Endpoint("crm", crm.url(), SECRET)}, config))
    try:
        _wait("delivery", _all_delivered(db_url), timeout_s=10)
    finally:
        running.close()


# --- the endpoint away --------------------------------------------------------------------


def test_an_endpoint_that_refuses_connections_gets_everything_once_it_listens(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    crm = Crm()
    url = f"http://127.0.0.1:{port}/cb?token={TOKEN}"
    _enqueue(db_url, "A", [25, 50, 75])
    _enqueue(db_url, "B", [25])
    caplog.set_level(logging.INFO)
    running = Running(Dispatcher(db_url, {"crm": Endpoint("crm", url, SECRET)}, QUICK))
    try:
        _wait("failed attempts", lambda: min(r[3] for r in _rows(db_url)[:1]) >= 3)
        rows = _rows(db_url)
        assert rows[0][2] == "pending" and "ConnectError" in rows[0][5]
        assert [r[3] for r in rows[1:3]] == [0, 0]  # A's later callbacks wait behind the head
        crm.start(port)  # the CRM comes up
        _wait("delivery", _all_delivered(db_url))
    finally:
        running.close()
        crm.stop()
    assert not running.error
    by_id = {r[7]: (r[0], r[1]) for r in _rows(db_url)}
    delivered = [by_id[i] for i in crm.delivered_ids()]
    assert [p for o, p in delivered if o == "A"] == ["25", "50", "75"]
    # the token in the URL is in no log line and no stored error
    assert TOKEN not in caplog.text
    assert all(TOKEN not in (r[5] or "") for r in _rows(db_url))


# --- 410 and registering again -------------------------------------------------------


def test_an_endpoint_gone_with_410_is_enabled_again_when_registered_anew(
    db_url: str, crm: Crm, caplog: pytest.LogCaptureFixture
) -> None:
    crm.script = lambda n: (410, {})
    _enqueue(db_url, "A", [25, 50])
    caplog.set_level(logging.INFO)
    old = Endpoint("crm", crm.url("/old"), SECRET)
    d = Dispatcher(db_url, {"crm": old}, QUICK)
    try:
        while d.run_once():
            pass
    finally:
        d.close()
    rows = _rows(db_url)
    assert [r[2] for r in rows] == ["failed", "failed"] and all(r[6] for r in rows)
    assert len(crm.arrivals) == 1  # the 410 stopped all sending to it
    assert TOKEN not in caplog.text and all(TOKEN not in r[5] for r in rows)

    # A restart with the same URL keeps it disabled: 410 means gone for good.
    crm.script = lambda n: (200, {})
    _enqueue(db_url, "A", [75])
    d = Dispatcher(db_url, {"crm": old}, QUICK)
    try:
        assert d.run_once() == 0
    finally:
        d.close()
    assert len(crm.arrivals) == 1
    assert [r[2] for r in _rows(db_url)] == ["failed"] * 3

    # The integrator registers a new URL: enabled again, and what failed because it was
    # disabled goes out to the new URL, in order.
    new = Endpoint("crm", crm.url("/new"), SECRET)
    running = Running(Dispatcher(db_url, {"crm": new}, QUICK))
    try:
        _wait("delivery after re-registration", _all_delivered(db_url), timeout_s=15)
    finally:
        running.close()
    assert not running.error
    rows = _rows(db_url)
    assert not any(r[6] for r in rows)  # endpoint_disabled
    assert [p.split("?")[0] for p in crm.paths[1:]] == ["/new"] * 3
    by_id = {r[7]: r[1] for r in rows}
    assert [by_id[i] for i in crm.delivered_ids()] == ["25", "50", "75"]


# --- the database away ----------------------------------------------------------------


def test_the_dispatcher_survives_a_database_crash_and_delivers_after_it(
    own_pg: OwnPostgres, crm: Crm
) -> None:
    db_url = own_pg.url
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("TRUNCATE outbox, webhook_endpoint")
    _enqueue(db_url, "A", [25])
    running = Running(Dispatcher(db_url, {"crm": Endpoint("crm", crm.url(), SECRET)}, QUICK))
    try:
        _wait("first delivery", _all_delivered(db_url))
        own_pg.restart(down_s=3.0)  # crash (no checkpoint), 3 s away, back
        _enqueue(db_url, "A", [50, 75])
        _enqueue(db_url, "B", [25])
        _wait("delivery after the restart", _all_delivered(db_url), timeout_s=60)
        assert running.thread.is_alive() and not running.error
    finally:
        running.close()
    rows = _rows(db_url)
    assert len(rows) == 4
    assert set(crm.delivered_ids()) == {r[7] for r in rows}


# --- a loop that dies takes the process down ------------------------------------------------


def test_a_dispatcher_whose_loop_fails_exits_non_zero_without_printing_secrets(
    db_url: str, crm: Crm, tmp_path: Any
) -> None:
    env = {
        **os.environ,
        "MESFLOW_DATABASE_URL": db_url,
        "MESFLOW_CRM_CALLBACK_URL": crm.url(),
        "MESFLOW_CRM_WEBHOOK_SECRET": SECRET,
        "PYTHONPATH": str(REPO_ROOT),
    }
    out = tmp_path / "notify.log"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mesflow.cli", "run", "notify"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
    try:
        _wait("the dispatcher to start", lambda: "notify: delivering" in out.read_text())
        _enqueue(db_url, "A", [25])
        _wait("a delivery", _all_delivered(db_url))
        # Something no reconnect can fix (here: its table is gone): the loop raises, and
        # the process must end with an error instead of looking alive and sending nothing.
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("DROP TABLE outbox CASCADE")
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text()
    assert code != 0, text
    assert "UndefinedTable" in text or "outbox" in text, text
    assert TOKEN not in text and SECRET not in text, text
    assert "token=***" in text, text
