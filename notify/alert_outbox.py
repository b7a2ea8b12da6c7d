"""The alert outbox (sql/019_alert_delivery.sql): one delivery per person e-mail and per
channel of each alert step, written in the results sink's transaction.

`enqueue_alert` is called by streams/pg_sink.py for every AlertRow, with the sink's cursor:
the deliveries exist if and only if the alert step was committed. The dispatcher
(notify/alert_dispatcher.py) claims and marks rows with the other functions here; nothing
in this module talks to a network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Protocol

import psycopg
from psycopg.types.json import Jsonb

from mesflow.alert_channels import Channel, Person
from streams.records import AlertRow

# Older steps (a backfill, a replay of last week's log) are stored but never sent: the
# demo's week of history must not page anyone 300 times.
DEFAULT_MAX_AGE: Final = timedelta(hours=1)
EMAIL_CHANNEL: Final = "email"


class AlertsConfig(Protocol):
    """What the outbox needs of the alerts file (mesflow/alert_rules.py's model)."""

    @property
    def people(self) -> Mapping[str, Person]: ...

    @property
    def channels(self) -> Mapping[str, Channel]: ...


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)  # facts are shown, not computed with: never fail the sink over one


def dumps(value: object) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":"))


MAX_TEXT: Final = 2000  # characters of one stored fact value (the message shows fewer)
MAX_ITEMS: Final = 50  # keys or items of one fact value


def bounded(value: object, depth: int = 0) -> object:
    """Facts as stored with a delivery: JSON-safe, bounded in size, and without NUL (which
    PostgreSQL text and jsonb refuse). A fact is for a person to read, so cutting a huge one
    loses nothing a message could show."""
    if isinstance(value, str):
        text = value.replace("\x00", "\ufffd")
        return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= 4:
        return bounded(str(value), depth)
    if isinstance(value, Mapping):
        items = list(value.items())[:MAX_ITEMS]
        return {str(bounded(str(k), depth + 1)): bounded(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple | set | frozenset):
        return [bounded(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
    return bounded(_json_default(value), depth + 1)


def _nul_free(text: str | None) -> str | None:
    # PostgreSQL text refuses NUL; the sink's own columns are ENGINE's to guard.
    return None if text is None else text.replace("\x00", "\ufffd")


def _mention(name: str, person: Person) -> dict[str, Any]:
    return {
        "name": name,
        "display": person.display,
        "mobile": person.mobile,
        "wecom_userid": person.wecom_userid,
    }


def step_payload(row: AlertRow) -> dict[str, Any]:
    """The step as the message renderer reads it (notify/channels/render.py)."""
    payload = {
        "alert_id": row.alert_id,
        "rule": row.rule,
        "kind": row.kind,
        "scope": row.scope,
        "machine": row.machine,
        "line": row.line,
        "order_no": row.order_no,
        "severity": row.severity,
        "step": row.step,
        "level": row.level,
        "at": row.at.isoformat(),
        "opened_at": row.opened_at.isoformat(),
        "facts": bounded(dict(row.facts)),
    }
    # Names from the event stream (machine ids) are bounded and NUL-free as well.
    return {k: bounded(v) if k != "facts" else v for k, v in payload.items()}


def dedupe_key(row: AlertRow, target: str) -> str:
    return f"{row.alert_id}|{row.step}|{row.level}|{target}"


def enqueue_alert(
    cur: psycopg.Cursor[Any] | psycopg.Connection[Any],
    row: AlertRow,
    config: AlertsConfig,
    now: datetime | None = None,
    *,
    max_age: timedelta = DEFAULT_MAX_AGE,
) -> int:
    """Add the deliveries of one alert step, in the caller's transaction (no commit here).

    One delivery per person of the step who has an e-mail address, and one per channel;
    people are also mentioned in the channel messages (by mobile / WeCom user id). Due at
    `row.quiet_until` (quiet hours) or now. A step whose event time is more than `max_age`
    before `now` is stored as `stale` and never sent. A person or channel the alerts file
    does not name is stored as `failed` with the reason (visible, never silently dropped).
    Idempotent on (alert_id, step, level, target). Returns how many rows were new.
    """
    now = now or datetime.now(UTC)
    stale = row.at < now - max_age
    due = row.quiet_until if row.quiet_until is not None and row.quiet_until > now else now
    base = step_payload(row)
    mentions = [_mention(name, config.people[name]) for name in row.people if name in config.people]
    rows: list[tuple[Any, ...]] = []

    def add(
        target: str,
        person: str | None,
        channel: str,
        ctype: str,
        address: str | None,
        language: str,
        payload: dict[str, Any],
        error: str | None = None,
    ) -> None:
        status = "failed" if error else ("stale" if stale else "pending")
        rows.append(
            (
                _nul_free(dedupe_key(row, target)),
                _nul_free(row.alert_id),
                _nul_free(row.step),
                row.level,
                _nul_free(row.severity),
                _nul_free(target),
                _nul_free(person),
                _nul_free(channel),
                ctype,
                address,
                language,
                Jsonb(payload, dumps=dumps),
                row.at,
                status,
                due,
                error,
            )
        )

    for name in dict.fromkeys(row.people):
        p = config.people.get(name)
        if p is None:
            add(
                f"email:{name}",
                name,
                EMAIL_CHANNEL,
                "email",
                None,
                "zh",
                base,
                f"person {name!r} is not in the alerts file",
            )
        elif p.email is not None:
            payload = {**base, "recipient": {"name": name, "display": p.display}}
            add(f"email:{name}", name, EMAIL_CHANNEL, "email", p.email, p.language, payload)
    for name in dict.fromkeys(row.channels):
        ch = config.channels.get(name)
        if ch is None:
            add(
                f"channel:{name}",
                None,
                name,
                "webhook",
                None,
                "zh",
                base,
                f"channel {name!r} is not in the alerts file",
            )
        else:
            payload = {**base, "mentions": mentions}
            add(f"channel:{name}", None, name, ch.type, None, ch.language, payload)
    if not rows:
        return 0
    inserted = 0
    for values in rows:
        result = cur.execute(
            """INSERT INTO alert_delivery
                 (dedupe, alert_id, step, level, severity, target, person, channel,
                  channel_type, address, language, payload, event_at, status,
                  next_attempt_at, last_error)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (dedupe) DO NOTHING""",
            values,
        )
        inserted += max(result.rowcount, 0)
    return inserted


# --- the dispatcher's side -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """One claimed delivery."""

    id: int
    alert_id: str
    step: str
    channel: str
    channel_type: str
    person: str | None
    address: str | None
    language: str
    payload: dict[str, Any]
    event_at: datetime
    attempts: int
    shorten: int


_COLUMNS = (
    "id, alert_id, step, channel, channel_type, person, address, language, payload, "
    "event_at, attempts, shorten"
)


def due_channels(conn: psycopg.Connection[Any], channels: Sequence[str]) -> list[str]:
    """Channels (of those given) with at least one due, unleased delivery."""
    rows = conn.execute(
        """SELECT DISTINCT channel FROM alert_delivery
           WHERE status = 'pending' AND next_attempt_at <= now()
             AND (locked_until IS NULL OR locked_until < now())
             AND channel = ANY(%s)""",
        (list(channels),),
    ).fetchall()
    return sorted(str(r[0]) for r in rows)


def claim(
    conn: psycopg.Connection[Any], channel: str, *, limit: int, lease_s: float
) -> list[Delivery]:
    """Lease up to `limit` due deliveries of one channel, oldest first (SKIP LOCKED: other
    dispatchers take other rows; an expired lease makes a row claimable again)."""
    rows = conn.execute(
        f"""UPDATE alert_delivery SET locked_until = now() + make_interval(secs => %(lease)s)
            WHERE id IN (
                SELECT id FROM alert_delivery
                WHERE status = 'pending' AND channel = %(channel)s
                  AND next_attempt_at <= now()
                  AND (locked_until IS NULL OR locked_until < now())
                ORDER BY id
                LIMIT %(limit)s
                FOR UPDATE SKIP LOCKED)
            RETURNING {_COLUMNS}""",
        {"lease": lease_s, "channel": channel, "limit": limit},
    ).fetchall()
    return sorted((Delivery(*r) for r in rows), key=lambda d: d.id)


def mark_sent(conn: psycopg.Connection[Any], ids: Sequence[int], message_id: str) -> None:
    conn.execute(
        """UPDATE alert_delivery SET status = 'sent', sent_at = now(), attempts = attempts + 1,
                  locked_until = NULL, message_id = %s
           WHERE id = ANY(%s) AND status = 'pending'""",
        (message_id, list(ids)),
    )


def extend_lease(conn: psycopg.Connection[Any], ids: Sequence[int], lease_s: float) -> None:
    """Keep the lease of deliveries still to send in this round (sends are sequential, so
    a slow robot must not let the lease of the last ones run out and another dispatcher
    send them too)."""
    if ids:
        conn.execute(
            """UPDATE alert_delivery SET locked_until = now() + make_interval(secs => %s)
               WHERE id = ANY(%s) AND status = 'pending'""",
            (lease_s, list(ids)),
        )


def release(conn: psycopg.Connection[Any], ids: Sequence[int], at_s: float) -> None:
    """Give leased deliveries back without counting an attempt (no budget left yet)."""
    conn.execute(
        """UPDATE alert_delivery SET locked_until = NULL,
                  next_attempt_at = now() + make_interval(secs => %s)
           WHERE id = ANY(%s) AND status = 'pending'""",
        (at_s, list(ids)),
    )


def mark_attempt_failed(
    conn: psycopg.Connection[Any],
    ids: Sequence[int],
    *,
    error: str,
    code: str | None,
    retry_in_s: float,
    max_attempts: int,
    shorten: bool = False,
    permanent: bool = False,
) -> None:
    """Count a failed attempt: retry after `retry_in_s`, or fail once `max_attempts` are used
    (at once when `permanent`)."""
    conn.execute(
        """UPDATE alert_delivery
           SET attempts = attempts + 1,
               status = CASE WHEN %(perm)s OR attempts + 1 >= %(max)s THEN 'failed'
                             ELSE 'pending' END,
               next_attempt_at = now() + make_interval(secs => %(delay)s),
               shorten = shorten + CASE WHEN %(shorten)s THEN 1 ELSE 0 END,
               last_error = %(error)s, error_code = %(code)s, locked_until = NULL
           WHERE id = ANY(%(ids)s) AND status = 'pending'""",
        {
            "perm": permanent,
            "max": max_attempts,
            "delay": retry_in_s,
            "shorten": shorten,
            "error": error[:1000],
            "code": code,
            "ids": list(ids),
        },
    )


BAD_KEY_PREFIX: Final = "bad key: "
# After a channel's key is fixed, its deliveries failed for the bad key are sent again if
# they are this recent; older ones would only be noise by then (they stay failed, visible).
REQUEUE_AFTER_FIX: Final = timedelta(hours=1)


def fail_channel(
    conn: psycopg.Connection[Any], channel: str, error: str, code: str | None = None
) -> int:
    """Fail every pending delivery of a channel whose key is bad (they cannot be sent).
    Without `code`, the channel's recorded error code is used."""
    return conn.execute(
        """UPDATE alert_delivery SET status = 'failed', locked_until = NULL,
                  last_error = %(e)s,
                  error_code = COALESCE(%(c)s::text,
                      (SELECT error_code FROM alert_channel WHERE name = %(ch)s))
           WHERE channel = %(ch)s AND status = 'pending'""",
        {"e": (BAD_KEY_PREFIX + error)[:1000], "c": code, "ch": channel},
    ).rowcount


def register_channel(
    conn: psycopg.Connection[Any], name: str, channel_type: str, config_hash: str
) -> tuple[str, int]:
    """Record the channel. A changed URL/secret clears bad_key, and the deliveries failed
    for the bad key within the last hour are sent again. Returns (state, requeued)."""
    with conn.transaction():
        old = conn.execute(
            "SELECT state, config_hash FROM alert_channel WHERE name = %s FOR UPDATE", (name,)
        ).fetchone()
        row = conn.execute(
            """INSERT INTO alert_channel (name, channel_type, config_hash)
               VALUES (%(n)s, %(t)s, %(h)s)
               ON CONFLICT (name) DO UPDATE
               SET channel_type = EXCLUDED.channel_type, config_hash = EXCLUDED.config_hash,
                   state = CASE WHEN alert_channel.config_hash IS DISTINCT FROM EXCLUDED.config_hash
                                THEN 'ok' ELSE alert_channel.state END,
                   updated_at = now()
               RETURNING state""",
            {"n": name, "t": channel_type, "h": config_hash},
        ).fetchone()
        assert row is not None
        requeued = 0
        if old is not None and old[0] == "bad_key" and old[1] != config_hash:
            requeued = conn.execute(
                """UPDATE alert_delivery SET status = 'pending', attempts = 0,
                          next_attempt_at = now(), locked_until = NULL
                   WHERE channel = %s AND status = 'failed' AND last_error LIKE %s
                     AND event_at > now() - %s""",
                (name, BAD_KEY_PREFIX + "%", REQUEUE_AFTER_FIX),
            ).rowcount
    return str(row[0]), requeued


def channel_state(conn: psycopg.Connection[Any], name: str) -> str:
    row = conn.execute("SELECT state FROM alert_channel WHERE name = %s", (name,)).fetchone()
    return str(row[0]) if row else "ok"


def record_health(
    conn: psycopg.Connection[Any],
    name: str,
    channel_type: str,
    *,
    ok: bool,
    error: str | None = None,
    code: str | None = None,
    bad_key: bool = False,
) -> None:
    if ok:
        conn.execute(
            """INSERT INTO alert_channel (name, channel_type, state, last_success_at)
               VALUES (%s, %s, 'ok', now())
               ON CONFLICT (name) DO UPDATE SET state = 'ok', last_success_at = now(),
                   updated_at = now()""",
            (name, channel_type),
        )
        return
    state = "bad_key" if bad_key else "failing"
    conn.execute(
        """INSERT INTO alert_channel (name, channel_type, state, last_error, error_code,
                                      last_error_at)
           VALUES (%(n)s, %(t)s, %(s)s, %(e)s, %(c)s, now())
           ON CONFLICT (name) DO UPDATE
           SET state = CASE WHEN alert_channel.state = 'bad_key' THEN 'bad_key' ELSE %(s)s END,
               last_error = %(e)s, error_code = %(c)s, last_error_at = now(), updated_at = now()""",
        {"n": name, "t": channel_type, "s": state, "e": (error or "")[:1000], "c": code},
    )
