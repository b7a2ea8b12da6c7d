"""Source health: each collector's endpoints, upserted into `source_health` every few seconds.

A collector gives a snapshot function (its current counters per endpoint, read without
locks: plain ints and bools written by its own threads); the reporter thread turns
snapshots into rows (sql/027_source_health.sql) on a connection of its own. It never
blocks or stops the collector: a database error is logged and the next round tries again.

The reporter keeps `since` (when `connected` last changed) and `last_message_at` (when
`messages_total` last grew) itself, so a collector only has to count.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

import psycopg

log = logging.getLogger(__name__)

Kind = Literal["mqtt", "opcua", "sparkplug", "crm_api", "other"]
DEFAULT_INTERVAL_S: Final = 5.0
MAX_ERROR_CHARS: Final = 500


@dataclass(frozen=True)
class EndpointHealth:
    """One endpoint as its collector sees it now. `since`/`last_message_at`: give them if
    the collector knows better than the reporter's sampling (else None)."""

    endpoint: str
    connected: bool
    messages_total: int
    errors_total: int = 0
    last_error: str | None = None
    since: datetime | None = None
    last_message_at: datetime | None = None


@dataclass
class _Seen:
    connected: bool
    since: datetime
    messages_total: int
    last_message_at: datetime | None
    errors_total: int
    last_error_at: datetime | None


@dataclass(frozen=True)
class HealthRow:
    kind: str
    instance: str
    endpoint: str
    connected: bool
    since: datetime
    last_message_at: datetime | None
    messages_total: int
    errors_total: int
    last_error: str | None
    last_error_at: datetime | None


class HealthTracker:
    """Pure: snapshots in, rows out (when `connected` changed, when messages last came)."""

    def __init__(self, kind: Kind, instance: str) -> None:
        self.kind = kind
        self.instance = instance
        self._seen: dict[str, _Seen] = {}

    def rows(self, snapshot: Iterable[EndpointHealth], now: datetime) -> list[HealthRow]:
        out: list[HealthRow] = []
        for h in snapshot:
            prev = self._seen.get(h.endpoint)
            if prev is None:
                seen = _Seen(
                    h.connected, h.since or now, h.messages_total, None, h.errors_total, None
                )
                if h.messages_total > 0:
                    seen.last_message_at = now
                if h.errors_total > 0 and h.last_error:
                    seen.last_error_at = now
            else:
                seen = prev
                if h.connected != prev.connected:
                    seen.connected, seen.since = h.connected, now
                if h.messages_total > prev.messages_total:
                    seen.last_message_at = now
                if h.errors_total > prev.errors_total:
                    seen.last_error_at = now
                seen.messages_total, seen.errors_total = h.messages_total, h.errors_total
                if h.since is not None:
                    seen.since = h.since
            self._seen[h.endpoint] = seen
            out.append(
                HealthRow(
                    self.kind,
                    self.instance,
                    h.endpoint,
                    h.connected,
                    seen.since,
                    h.last_message_at or seen.last_message_at,
                    h.messages_total,
                    h.errors_total,
                    h.last_error[:MAX_ERROR_CHARS] if h.last_error else None,
                    seen.last_error_at,
                )
            )
        return out


# prev_* take the row's values before this report: v_source_health's messages per second.
# last_message_at and last_error survive a restart of the collector (COALESCE).
UPSERT: Final = """
INSERT INTO source_health AS h (kind, instance, endpoint, connected, since, last_message_at,
    messages_total, errors_total, last_error, last_error_at, report_interval_s, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
ON CONFLICT (kind, instance, endpoint) DO UPDATE SET
    connected = EXCLUDED.connected,
    since = EXCLUDED.since,
    last_message_at = COALESCE(EXCLUDED.last_message_at, h.last_message_at),
    messages_total = EXCLUDED.messages_total,
    errors_total = EXCLUDED.errors_total,
    last_error = COALESCE(EXCLUDED.last_error, h.last_error),
    last_error_at = COALESCE(EXCLUDED.last_error_at, h.last_error_at),
    report_interval_s = EXCLUDED.report_interval_s,
    prev_messages_total = h.messages_total,
    prev_updated_at = h.updated_at,
    updated_at = now()
"""


def upsert(conn: psycopg.Connection, rows: list[HealthRow], interval_s: float) -> None:
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            UPSERT,
            [
                (r.kind, r.instance, r.endpoint, r.connected, r.since, r.last_message_at,
                 r.messages_total, r.errors_total, r.last_error, r.last_error_at, interval_s)
                for r in rows
            ],
        )  # fmt: skip


class SourceHealthReporter:
    """A daemon thread: every `interval_s`, snapshot() → upsert. start() / stop()."""

    def __init__(
        self,
        database_url: str,
        kind: Kind,
        instance: str,
        snapshot: Callable[[], Iterable[EndpointHealth]],
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self.database_url = database_url
        self.tracker = HealthTracker(kind, instance)
        self.snapshot = snapshot
        self.interval_s = interval_s
        self.reports = 0  # successful upserts (tests, logs)
        self.failures = 0
        self._conn: psycopg.Connection | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"health-{kind}", daemon=True)
        self._failed_logged_at = -600.0

    def report_once(self) -> bool:
        """One round; True if stored. Never raises."""
        try:
            rows = self.tracker.rows(list(self.snapshot()), datetime.now(UTC))
        except Exception as err:  # a collector's snapshot bug must not stop the reports
            self._logged_failure("reading the collector's counters", err)
            return False
        try:
            if self._conn is None or self._conn.closed:
                # Short timeouts: a hung database must not hold this thread for long.
                self._conn = psycopg.connect(
                    self.database_url,
                    autocommit=True,
                    connect_timeout=3,
                    application_name="mesflow-health",
                    options="-c statement_timeout=5000",
                )
            upsert(self._conn, rows, self.interval_s)
        except psycopg.Error as err:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            self._logged_failure("storing source health", err)
            return False
        self.reports += 1
        return True

    def _logged_failure(self, what: str, err: BaseException) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._failed_logged_at >= 60:  # once a minute while it lasts
            self._failed_logged_at = now
            log.warning("%s failed (%s: %s); next try in %.0f s", what,
                        type(err).__name__, str(err).splitlines()[0] if str(err) else "",
                        self.interval_s)  # fmt: skip

    def _main(self) -> None:
        self.report_once()
        while not self._stop.wait(self.interval_s):
            self.report_once()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop reporting; the last report is the snapshot at this moment (e.g. disconnected)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 10)
        self.report_once()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
