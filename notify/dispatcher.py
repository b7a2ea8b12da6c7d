"""`mesflow run notify`: deliver the outbox's callbacks to their endpoints.

Each round claims at most one due callback per order (head-of-line, `outbox.claim`),
posts them concurrently (they belong to different orders), and records each outcome:

- 2xx: delivered.
- 410 Gone: the endpoint is disabled and its pending callbacks are failed with the reason.
- anything else, a timeout or a connection error: retried after an exponential backoff
  with full jitter (a `Retry-After` is respected as a minimum), dead-lettered (status
  'failed') after `max_attempts`. Later callbacks of that order wait meanwhile, so order
  is kept; once one is dead-lettered, the order's next callbacks go on.

Several dispatchers may run against one database. Delivery is at least once: a receiver
that processed a callback but whose answer was lost gets it again with the same
`webhook-id`, which is why receivers deduplicate on it (docs/crm.md).
"""

from __future__ import annotations

import email.utils
import logging
import random
import signal
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import httpx
import psycopg

from mesflow.db import connect
from notify import outbox, webhooks

log = logging.getLogger("notify")

WAKE_CHANNEL = "mesflow_outbox"


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    url: str
    secret: str  # whsec_...

    @property
    def shown(self) -> str:
        """The URL as logs and stored errors show it: no token, password or query value."""
        return webhooks.redact_url(self.url)

    def __repr__(self) -> str:  # a dataclass repr would print the URL and the secret
        return f"Endpoint({self.name!r}, {self.shown!r})"


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    max_attempts: int = 12
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 3600.0
    timeout_s: float = 15.0
    batch: int = 50
    concurrency: int = 8
    poll_s: float = 1.0


@dataclass(frozen=True, slots=True)
class Outcome:
    message: outbox.Message
    http_status: int | None
    error: str | None
    retry_after_s: float | None = None


def backoff_s(attempts: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^(attempts-1))].

    Spreading retries over the whole window keeps a receiver that just came back from
    being hit by every dispatcher's retries at the same instant.
    """
    ceiling = min(cap_s, base_s * 2 ** max(attempts - 1, 0))
    return rng.uniform(0.0, ceiling)


def _retry_after(headers: httpx.Headers, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date."""
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unreadable: the backoff alone applies
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class RedactUrls(logging.Filter):
    """httpx logs each request's full URL at INFO: with a callback URL's token in it.
    Attached to the `httpx` logger, it replaces every URL argument by its redacted form."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                webhooks.redact_url(str(a))
                if isinstance(a, httpx.URL) or (isinstance(a, str) and "://" in a)
                else a
                for a in record.args
            )
        return True


_REDACT_HTTPX = RedactUrls()


class Dispatcher:
    """Delivers callbacks for the configured endpoints; `run` until `stop` is set."""

    def __init__(
        self,
        database_url: str,
        endpoints: Mapping[str, Endpoint],
        config: DispatchConfig | None = None,
        *,
        http: httpx.Client | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.database_url = database_url
        self.endpoints = dict(endpoints)
        self.config = config or DispatchConfig()
        # No redirects: a signed callback must reach the URL the CRM registered, nothing else.
        self.http = http or httpx.Client(
            timeout=self.config.timeout_s, follow_redirects=False, trust_env=False
        )
        self.rng = rng or random.Random()
        logging.getLogger("httpx").addFilter(_REDACT_HTTPX)  # a set: added once
        # The lease outlives the slowest possible attempt, so no two dispatchers send
        # the same callback at once.
        self.lease_s = 2 * self.config.timeout_s + 30
        self._conn: psycopg.Connection[Any] | None = None
        self._pool = ThreadPoolExecutor(max(1, self.config.concurrency), "notify-http")
        self.delivered = 0
        self.failed_attempts = 0

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.database_url, autocommit=True)
            for ep in self.endpoints.values():
                state = outbox.register_endpoint(self._conn, ep.name, ep.url)
                if state.requeued:
                    log.warning(
                        "endpoint %s registered anew (%s): enabled again, %d callback(s) "
                        "failed while it was disabled are sent again",
                        ep.name,
                        ep.shown,
                        state.requeued,
                    )
                if not state.enabled:
                    log.warning(
                        "endpoint %s (%s) is disabled after an HTTP 410; its callbacks are "
                        "failed until it is registered with a new URL or they are replayed "
                        "(docs/crm.md)",
                        ep.name,
                        ep.shown,
                    )
        return self._conn

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._conn is not None:
            self._conn.close()
        self.http.close()

    def run_once(self) -> int:
        """One round: claim, send, record. Returns how many callbacks were attempted."""
        conn = self.conn
        outbox.fail_disabled_endpoints(conn)
        batch = outbox.claim(
            conn, endpoints=list(self.endpoints), limit=self.config.batch, lease_s=self.lease_s
        )
        if not batch:
            return 0
        for outcome in self._pool.map(self._send, batch):
            self._record(conn, outcome)
        return len(batch)

    def _send(self, msg: outbox.Message) -> Outcome:
        try:
            return self._attempt(msg)
        except Exception as err:
            # One callback that cannot even be built or sent (a bug, a payload the encoder
            # refuses) is a failed attempt of that callback, retried and then dead-lettered:
            # it must not stop the deliveries of every other order.
            log.exception("callback %s could not be sent", msg.webhook_id)
            return Outcome(msg, None, f"internal error: {type(err).__name__}: {err}")

    def _attempt(self, msg: outbox.Message) -> Outcome:
        ep = self.endpoints[msg.endpoint]
        body = msg.body()
        headers = {
            "content-type": "application/json",
            "user-agent": "mesflow-notify/1",
            **webhooks.signed_headers(ep.secret, msg.webhook_id, body),
        }
        try:
            resp = self.http.post(ep.url, content=body, headers=headers)
        except httpx.TimeoutException as err:
            return Outcome(
                msg, None, f"timeout after {self.config.timeout_s:g} s ({type(err).__name__})"
            )
        except httpx.HTTPError as err:
            # httpx may name the URL in its message: stored errors and logs get it redacted.
            return Outcome(msg, None, webhooks.redact_text(f"{type(err).__name__}: {err}", ep.url))
        if 200 <= resp.status_code < 300:
            return Outcome(msg, resp.status_code, None)
        snippet = resp.text[:200].replace("\n", " ")
        return Outcome(
            msg,
            resp.status_code,
            f"HTTP {resp.status_code}: {snippet}" if snippet else f"HTTP {resp.status_code}",
            _retry_after(resp.headers),
        )

    def _record(self, conn: psycopg.Connection[Any], out: Outcome) -> None:
        msg = out.message
        if out.error is None:
            assert out.http_status is not None
            outbox.mark_delivered(conn, msg.id, out.http_status)
            self.delivered += 1
            log.debug("delivered %s %s of %s", msg.webhook_id, msg.event_type, msg.aggregate)
            return
        self.failed_attempts += 1
        if out.http_status == 410:
            reason = f"HTTP 410 Gone from {self.endpoints[msg.endpoint].shown}"
            n = outbox.mark_endpoint_gone(conn, msg.id, msg.endpoint, reason)
            log.warning(
                "callback %s (%s, order %s): %s; endpoint %s disabled, %d pending callback(s) failed",
                msg.webhook_id,
                msg.event_type,
                msg.aggregate,
                reason,
                msg.endpoint,
                n,
            )
            return
        attempts = msg.attempts + 1
        delay = backoff_s(attempts, self.config.backoff_base_s, self.config.backoff_cap_s, self.rng)
        if out.retry_after_s is not None:
            delay = max(delay, min(out.retry_after_s, self.config.backoff_cap_s))
        status, attempts = outbox.mark_attempt_failed(
            conn,
            msg.id,
            error=out.error,
            http_status=out.http_status,
            retry_in_s=delay,
            max_attempts=self.config.max_attempts,
        )
        if status == "failed":
            log.warning(
                "callback %s (%s, order %s) attempt %d failed: %s; dead-lettered after %d attempts",
                msg.webhook_id,
                msg.event_type,
                msg.aggregate,
                attempts,
                out.error,
                attempts,
            )
        else:
            log.warning(
                "callback %s (%s, order %s) attempt %d failed: %s; retry in %.1f s",
                msg.webhook_id,
                msg.event_type,
                msg.aggregate,
                attempts,
                out.error,
                delay,
            )

    def run(self, stop: threading.Event) -> None:
        """Deliver until `stop` is set; sleeps on LISTEN between rounds, so a new
        callback goes out at once and an idle dispatcher costs one query per poll."""
        listener: psycopg.Connection[Any] | None = None
        while not stop.is_set():
            try:
                if listener is None or listener.closed:
                    listener = connect(self.database_url, autocommit=True)
                    listener.execute(f"LISTEN {WAKE_CHANNEL}")
                if self.run_once():
                    continue  # there may be more due right away
                # Wake on an insert, or after poll_s for retries that came due.
                for _ in listener.notifies(timeout=self.config.poll_s, stop_after=1):
                    pass
            except (psycopg.OperationalError, psycopg.InterfaceError) as err:
                # The database restarts or the network blips: nothing is lost (leases
                # expire, rows stay pending); wait and reconnect.
                log.warning("database unavailable (%s); retrying in 2 s", err)
                for c in (listener, self._conn):
                    if c is not None:
                        c.close()
                listener = None
                self._conn = None
                stop.wait(2.0)
        if listener is not None:
            listener.close()


def endpoints_from_settings(callback_url: str | None, secret: str | None) -> dict[str, Endpoint]:
    if not callback_url:
        return {}
    if not secret:
        raise ValueError("MESFLOW_CRM_WEBHOOK_SECRET (whsec_...) is needed to sign callbacks")
    webhooks.secret_key(secret)  # fail at start, not at the first delivery
    return {outbox.DEFAULT_ENDPOINT: Endpoint(outbox.DEFAULT_ENDPOINT, callback_url, secret)}


def run_notify(
    database_url: str, endpoints: Mapping[str, Endpoint], config: DispatchConfig
) -> None:
    """The `mesflow run notify` component: runs until SIGINT or SIGTERM."""
    stop = threading.Event()
    # httpx logs every request at INFO; the dispatcher logs a line per failure instead.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if not endpoints:
        log.warning(
            "MESFLOW_CRM_CALLBACK_URL is not set: callbacks stay pending in the outbox "
            "(nothing is lost) until a dispatcher with an endpoint runs"
        )
    dispatcher = Dispatcher(database_url, endpoints, config)
    # The one long-running database-side worker: also applies retention (docs/operations.md).
    from mesflow.retention import start_periodic

    start_periodic(database_url, stop)
    print(
        f"notify: delivering to {', '.join(ep.shown for ep in endpoints.values()) or 'nothing'}",
        flush=True,
    )
    # Alerts (e-mail, chat robots) go out from the same component (notify/alert_dispatcher.py).
    from notify import alert_dispatcher

    alerts = alert_dispatcher.start(database_url, stop)
    started = time.monotonic()
    try:
        dispatcher.run(stop)
    finally:
        stop.set()
        if alerts is not None:
            alerts.join(30)
        dispatcher.close()
        print(
            f"notify: stopped after {time.monotonic() - started:.0f} s, "
            f"{dispatcher.delivered} delivered, {dispatcher.failed_attempts} failed attempt(s)",
            flush=True,
        )
