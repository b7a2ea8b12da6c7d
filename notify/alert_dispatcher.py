"""Sends the alert outbox (`alert_delivery`): e-mail, WeCom, DingTalk, Feishu, webhooks.

Runs inside `mesflow run notify`, next to the CRM callback dispatcher. Each round, per
channel with due deliveries: claim them with a lease (SKIP LOCKED: several dispatchers
share the work), take tokens from the robot's budget in PostgreSQL (20 a minute, shared by
every process), send, and record what the platform answered:

- code 0 (e-mail: 250): sent. Nothing else counts as sent.
- rate limited (WeCom 45009, DingTalk 130101, Feishu 11232, HTTP 429): retried after at
  least `rate_limited_retry_s`.
- too long (WeCom 40058): retried at once with half the size limit (up to 3 times).
- bad key (WeCom 93000, DingTalk 310000, Feishu 19021...): the channel is marked bad_key in
  `v_channel_status`, logged as an error, and its deliveries fail until its URL/secret
  changes. Retrying would never help.
- HTTP errors, timeouts, anything else: retried with backoff (`backoff_s`), failed after
  `max_attempts`.

When more deliveries are due than the budget has tokens, they are merged: one message
holds as many alerts as fit in 4,096 bytes, the rest follow in the next; nothing dropped.
"""

from __future__ import annotations

import hashlib
import logging
import random
import smtplib
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg

from mesflow.alert_channels import Channel
from mesflow.db import connect
from notify import alert_outbox as ob
from notify import robot_budget
from notify.ack_links import ack_url
from notify.channels import SendResult, dingtalk, feishu, post, webhook, wecom
from notify.channels import dumps as json_bytes
from notify.channels import email as mail
from notify.channels import render as r
from notify.dispatcher import _REDACT_HTTPX, backoff_s

log = logging.getLogger("notify.alerts")

WAKE_CHANNEL = "mesflow_alert_delivery"
ROBOTS = frozenset({"wecom", "dingtalk", "feishu"})
_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True, slots=True)
class AlertDispatchConfig:
    robot_limit: int = robot_budget.LIMIT
    robot_window_s: float = robot_budget.WINDOW_S
    max_attempts: int = 12
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 3600.0
    rate_limited_retry_s: float = 60.0  # WeCom/DingTalk throttle for a minute or more
    timeout_s: float = 15.0
    batch: int = 200
    poll_s: float = 1.0
    max_shorten: int = 3
    markdown_limit: int = r.MARKDOWN_LIMIT
    feishu_per_second: int = 4  # Feishu allows 5 a second; one spare for send-time jitter


def config_hash(ch: Channel) -> str:
    """Changes when the channel's URL or secret does (which clears bad_key)."""
    return hashlib.sha256(f"{ch.type}\0{ch.endpoint}\0{ch.secret or ''}".encode()).hexdigest()


def _mentions(deliveries: Sequence[ob.Delivery]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for d in deliveries:
        for m in d.payload.get("mentions") or []:
            if isinstance(m, dict) and m.get("name") not in seen:
                seen[str(m.get("name"))] = m
    return list(seen.values())


class AlertDispatcher:
    def __init__(
        self,
        database_url: str,
        channels: Mapping[str, Channel],
        *,
        public_url: str,
        ack_secret: str,
        tz: ZoneInfo,
        smtp: mail.SmtpConfig | None = None,
        config: AlertDispatchConfig | None = None,
        http: httpx.Client | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.database_url = database_url
        self.channels = dict(channels)
        self.public_url = public_url
        self.ack_secret = ack_secret
        self.tz = tz
        self.smtp = smtp
        self.config = config or AlertDispatchConfig()
        # No redirects: a robot URL carries its key, which must go to that host only.
        self.http = http or httpx.Client(follow_redirects=False, trust_env=False)
        # httpx logs request URLs (with the robot's key) at INFO: redact them, as for the CRM.
        logging.getLogger("httpx").addFilter(_REDACT_HTTPX)
        self.rng = rng or random.Random()
        self.lease_s = 2 * self.config.timeout_s + 30
        self._conn: psycopg.Connection[Any] | None = None
        self.sent_messages = 0
        self.failed_attempts = 0

    # -- plumbing ---------------------------------------------------------------------

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.database_url, autocommit=True)
            for name, ch in self.channels.items():
                state, requeued = ob.register_channel(self._conn, name, ch.type, config_hash(ch))
                if requeued:
                    log.warning(
                        "alert channel %s: its URL/secret changed, bad_key cleared; %d recent "
                        "delivery(ies) failed for the bad key are sent again",
                        name,
                        requeued,
                    )
                if state == "bad_key":
                    log.error(
                        "alert channel %s (%s) has a bad key/URL/secret: its alerts fail until "
                        "its configuration changes (v_channel_status)",
                        name,
                        ch.type,
                    )
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self.http.close()

    def _names(self) -> list[str]:
        names = list(self.channels)
        if self.smtp is not None:
            names.append(ob.EMAIL_CHANNEL)
        return names

    def _ack(self, alert_id: str, who: str) -> str | None:
        try:
            return ack_url(self.public_url, self.ack_secret, alert_id, who)
        except ValueError:
            return None

    def _retry_delay(self, attempts: int) -> float:
        c = self.config
        return backoff_s(attempts, c.backoff_base_s, c.backoff_cap_s, self.rng)

    # -- rounds -----------------------------------------------------------------------

    def run_once(self) -> int:
        """One round over every channel with due deliveries. Returns deliveries handled."""
        conn = self.conn
        done = 0
        for name in ob.due_channels(conn, self._names()):
            try:
                if name == ob.EMAIL_CHANNEL:
                    done += self._email(conn)
                elif self.channels[name].type == "webhook":
                    done += self._webhook(conn, name, self.channels[name])
                else:
                    done += self._robot(conn, name, self.channels[name])
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise
            except Exception:
                # A bug in one channel must not stop the others; its leases expire.
                log.exception("alert channel %s: round failed", name)
        return done

    def _fail(
        self,
        conn: psycopg.Connection[Any],
        name: str,
        ctype: str,
        ids: Sequence[int],
        res: SendResult,
        *,
        attempts: int,
        shorten: bool = False,
    ) -> None:
        """Record a failed attempt of `ids` and the channel's health."""
        self.failed_attempts += 1
        c = self.config
        error = res.error or res.outcome
        if res.outcome == "bad_key":
            ob.record_health(conn, name, ctype, ok=False, error=error, code=res.code, bad_key=True)
            n = ob.fail_channel(conn, name, error, res.code)
            log.error(
                "alert channel %s (%s): %s; channel marked bad_key, %d delivery(ies) failed",
                name,
                ctype,
                error,
                n,
            )
            return
        ob.record_health(conn, name, ctype, ok=False, error=error, code=res.code)
        delay = self._retry_delay(attempts)
        if res.outcome == "rate_limited":
            delay = max(delay, c.rate_limited_retry_s, res.retry_after_s or 0.0)
        if shorten:
            delay = 0.0
        ob.mark_attempt_failed(
            conn,
            ids,
            error=error,
            code=res.code,
            retry_in_s=delay,
            max_attempts=c.max_attempts,
            shorten=shorten,
            permanent=res.outcome == "failed",
        )
        log.warning("alert channel %s (%s): %s; retry in %.0f s", name, ctype, error, delay)

    def _sent(
        self, conn: psycopg.Connection[Any], name: str, ctype: str, ids: Sequence[int]
    ) -> None:
        ob.mark_sent(conn, ids, f"amsg_{uuid.uuid4().hex}")
        ob.record_health(conn, name, ctype, ok=True)
        self.sent_messages += 1

    # -- e-mail -----------------------------------------------------------------------

    def _email(self, conn: psycopg.Connection[Any]) -> int:
        assert self.smtp is not None
        batch = ob.claim(conn, ob.EMAIL_CHANNEL, limit=50, lease_s=self.lease_s)
        if not batch:
            return 0
        try:
            with mail.SmtpSender(self.smtp) as sender:
                for n, d in enumerate(batch):
                    if n % 10 == 9:
                        ob.extend_lease(conn, [x.id for x in batch[n:]], self.lease_s)
                    if not d.address:
                        res = SendResult("failed", None, "no e-mail address")
                    else:
                        msg = mail.message(
                            d.payload,
                            d.language,
                            self.tz,
                            self._ack(d.alert_id, d.person or ""),
                            sender=self.smtp.sender,
                            to=d.address,
                            alert_id=d.alert_id,
                        )
                        res = sender.send(msg)
                    if res.ok:
                        self._sent(conn, ob.EMAIL_CHANNEL, "email", [d.id])
                    else:
                        self._fail(
                            conn, ob.EMAIL_CHANNEL, "email", [d.id], res, attempts=d.attempts + 1
                        )
        except (OSError, smtplib.SMTPException) as err:
            # Connect, STARTTLS or login failed: what is still leased was not sent.
            smtp = self.smtp
            res = SendResult(
                "retry", "smtp", f"SMTP {smtp.host}:{smtp.port}: {type(err).__name__}: {err}"
            )
            unsent = conn.execute(
                """SELECT id, attempts FROM alert_delivery
                   WHERE id = ANY(%s) AND status = 'pending' AND locked_until IS NOT NULL""",
                ([d.id for d in batch],),
            ).fetchall()
            for did, attempts in unsent:
                self._fail(
                    conn, ob.EMAIL_CHANNEL, "email", [int(did)], res, attempts=int(attempts) + 1
                )
        return len(batch)

    # -- generic webhook --------------------------------------------------------------

    def _webhook(self, conn: psycopg.Connection[Any], name: str, ch: Channel) -> int:
        if ob.channel_state(conn, name) == "bad_key":
            return ob.fail_channel(conn, name, "channel marked bad_key (see v_channel_status)")
        batch = ob.claim(conn, name, limit=20, lease_s=self.lease_s)
        for n, d in enumerate(batch):
            if n:
                ob.extend_lease(conn, [x.id for x in batch[n:]], self.lease_s)
            ack = self._ack(d.alert_id, name) if r.acknowledgeable(d.payload) else None
            raw = json_bytes(webhook.body(d.payload, ack))
            headers = webhook.headers(ch.secret, f"alert_{d.id}", raw)
            res = self._post(ch.endpoint, raw, webhook.classify, headers)
            if res.ok:
                self._sent(conn, name, "webhook", [d.id])
            else:
                self._fail(conn, name, "webhook", [d.id], res, attempts=d.attempts + 1)
                if res.outcome == "bad_key":
                    break
        return len(batch)

    def _post(
        self,
        url: str,
        raw: bytes,
        classify: Callable[[httpx.Response], SendResult],
        headers: Mapping[str, str] | None = None,
    ) -> SendResult:
        return post(self.http, url, raw, classify, headers=headers, timeout_s=self.config.timeout_s)

    # -- robots -----------------------------------------------------------------------

    def _robot(self, conn: psycopg.Connection[Any], name: str, ch: Channel) -> int:
        if ob.channel_state(conn, name) == "bad_key":
            return ob.fail_channel(conn, name, "channel marked bad_key (see v_channel_status)")
        batch = ob.claim(conn, name, limit=self.config.batch, lease_s=self.lease_s)
        if not batch:
            return 0
        if ch.type != "wecom":
            self._robot_part(conn, name, ch, batch, as_text=False)
            return len(batch)
        # WeCom: a step mentioning someone known only by mobile goes as text (markdown
        # cannot mention by mobile); the others as markdown. Each kind is merged apart.
        texts = [d for d in batch if wecom.use_text(_mentions([d]))]
        marks = [d for d in batch if not wecom.use_text(_mentions([d]))]
        for part, as_text in ((marks, False), (texts, True)):
            if not part:
                continue
            if ob.channel_state(conn, name) == "bad_key":
                break  # fail_channel already failed the rest
            self._robot_part(conn, name, ch, part, as_text=as_text)
        return len(batch)

    def _robot_part(
        self,
        conn: psycopg.Connection[Any],
        name: str,
        ch: Channel,
        batch: Sequence[ob.Delivery],
        *,
        as_text: bool,
    ) -> None:
        c = self.config
        lang = ch.language
        mentions = _mentions(batch)
        limit = r.TEXT_LIMIT if as_text else c.markdown_limit
        limit = max(256, limit >> max(d.shorten for d in batch))
        reserve = r.utf8_len(self._suffix(ch, mentions))
        parts = [r.parts(d.payload, lang, self.tz, self._ack(d.alert_id, name)) for d in batch]
        blocks = [r.text_block(p, lang) if as_text else r.markdown_block(p, lang) for p in parts]
        # Feishu also allows only 5 requests a second (research/protocols.md §3.3).
        burst = (c.feishu_per_second, 1.0) if ch.type == "feishu" else None
        with robot_budget.hold(
            conn, name, limit=c.robot_limit, window_s=c.robot_window_s, burst=burst
        ) as h:
            if h.available >= len(blocks):
                plan = [([i], r.cut_to_bytes(b, limit - reserve)) for i, b in enumerate(blocks)]
            else:
                plan = r.pack(blocks, limit, lang, markdown=not as_text, reserve=reserve)
            k = h.take(len(plan))
            wait = h.next_free_after_in_s
        to_send, rest = plan[:k], plan[k:]
        for n, (idx, text) in enumerate(to_send):
            if n:
                ob.extend_lease(conn, [batch[i].id for g, _ in plan[n:] for i in g], self.lease_s)
            group = [batch[i] for i in idx]
            ids = [d.id for d in group]
            title = (
                r.clean(parts[idx[0]].title, 64)
                if len(idx) == 1
                else r.merged_header(len(idx), lang, markdown=False)
            )
            severity = max((parts[i].severity for i in idx), key=lambda s: _SEVERITY_RANK.get(s, 0))
            res = self._send_robot(ch, title, text, severity, _mentions(group))
            if res.ok:
                self._sent(conn, name, ch.type, ids)
                continue
            too_long = res.outcome == "too_long" and max(d.shorten for d in group) < c.max_shorten
            if res.outcome == "too_long" and not too_long:
                res = SendResult("failed", res.code, res.error)
            self._fail(
                conn,
                name,
                ch.type,
                ids,
                res,
                attempts=max(d.attempts for d in group) + 1,
                shorten=too_long,
            )
            if res.outcome in ("rate_limited", "bad_key", "retry"):
                # The robot will refuse the rest of this round as well: give it back unsent.
                later = [batch[i].id for g, _ in to_send[n + 1 :] for i in g]
                if res.outcome != "bad_key":
                    ob.release(
                        conn,
                        later,
                        c.rate_limited_retry_s if res.outcome == "rate_limited" else 1.0,
                    )
                break
        if rest:
            ob.release(conn, [batch[i].id for g, _ in rest for i in g], max(wait, 0.05))

    def _suffix(self, ch: Channel, mentions: Sequence[Mapping[str, Any]]) -> str:
        if ch.type == "wecom":
            return wecom.mention_suffix(mentions)
        if ch.type == "dingtalk":
            return dingtalk.mention_suffix(mentions)
        return feishu.mention_suffix(mentions)

    def _send_robot(
        self,
        ch: Channel,
        title: str,
        text: str,
        severity: str,
        mentions: Sequence[Mapping[str, Any]],
    ) -> SendResult:
        now = time.time()
        if ch.type == "wecom":
            raw = json_bytes(wecom.body(text, mentions))
            return self._post(ch.endpoint, raw, wecom.classify)
        if ch.type == "dingtalk":
            url = dingtalk.signed_url(ch.endpoint, ch.secret, int(now * 1000))
            raw = json_bytes(dingtalk.body(title, text, mentions))
            return self._post(url, raw, dingtalk.classify)
        raw = json_bytes(feishu.body(title, text, severity, mentions, ch.secret, int(now)))
        return self._post(ch.endpoint, raw, feishu.classify)

    # -- loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Deliver until `stop` is set; LISTEN wakes it on a new delivery."""
        listener: psycopg.Connection[Any] | None = None
        while not stop.is_set():
            try:
                if listener is None or listener.closed:
                    listener = connect(self.database_url, autocommit=True)
                    listener.execute(f"LISTEN {WAKE_CHANNEL}")
                if self.run_once():
                    # More may be due at once, or only when a budget frees up: a short
                    # pause keeps a channel waiting for its budget from spinning.
                    stop.wait(0.05)
                    continue
                for _ in listener.notifies(timeout=self.config.poll_s, stop_after=1):
                    pass
            except (psycopg.OperationalError, psycopg.InterfaceError) as err:
                log.warning("database unavailable (%s); retrying in 2 s", err)
                for conn in (listener, self._conn):
                    if conn is not None:
                        conn.close()
                listener = None
                self._conn = None
                stop.wait(2.0)
        if listener is not None:
            listener.close()


def from_settings(database_url: str) -> AlertDispatcher | None:
    """The alert dispatcher `mesflow run notify` runs: channels from the alerts file
    (MESFLOW_ALERTS_CONFIG), e-mail from MESFLOW_SMTP_*. None without an alerts file.
    A bad alerts file or plant file raises (the component does not start half-configured).
    """
    from dashboards.auth import session_secret
    from mesflow.alert_rules import load_alerts_config
    from mesflow.plant import load_plant_config
    from mesflow.settings import get_settings

    settings = get_settings()
    if settings.alerts_config is None:
        return None
    plant = load_plant_config(settings.plant_config)
    alerts = load_alerts_config(settings.alerts_config, plant)
    smtp = None
    if settings.smtp_host:
        smtp = mail.SmtpConfig(
            host=settings.smtp_host,
            port=settings.smtp_port,
            user=settings.smtp_user,
            password=settings.smtp_password,
            sender=settings.smtp_from,
            starttls=settings.smtp_starttls,
            ca_file=settings.smtp_ca_file,
            timeout_s=settings.notify_timeout_s,
        )
    for name, ch in alerts.channels.items():
        if ch.type == "webhook" and ch.secret:
            from notify.webhooks import secret_key

            try:
                secret_key(ch.secret)
            except ValueError as err:
                raise ValueError(f"alert channel {name}: secret_env: {err}") from None
    config = AlertDispatchConfig(
        robot_limit=settings.alert_robot_limit,
        robot_window_s=settings.alert_robot_window_s,
        rate_limited_retry_s=settings.alert_rate_limited_retry_s,
        max_attempts=settings.notify_max_attempts,
        backoff_base_s=settings.notify_backoff_base_s,
        backoff_cap_s=settings.notify_backoff_cap_s,
        timeout_s=settings.notify_timeout_s,
    )
    return AlertDispatcher(
        database_url,
        alerts.channels,
        public_url=settings.public_url,
        ack_secret=session_secret(settings),
        tz=plant.tz,
        smtp=smtp,
        config=config,
    )


def start(database_url: str, stop: threading.Event) -> threading.Thread | None:
    """Run the alert dispatcher in a thread until `stop` is set (None: no alerts file)."""
    dispatcher = from_settings(database_url)
    if dispatcher is None:
        log.warning(
            "MESFLOW_ALERTS_CONFIG is not set: alert deliveries stay pending (nothing is lost)"
        )
        return None
    names = sorted(dispatcher.channels) + (["e-mail"] if dispatcher.smtp else [])
    print(f"notify: alerts to {', '.join(names) or 'nothing'}", flush=True)

    def work() -> None:
        try:
            dispatcher.run(stop)
        finally:
            dispatcher.close()

    thread = threading.Thread(target=work, name="alert-dispatcher", daemon=True)
    thread.start()
    return thread
