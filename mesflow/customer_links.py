"""A customer's read-only link to one order: /c/<token> (docs/crm.md, "The customer's link").

The token is 32 random bytes (URL-safe base64, 43 characters): unguessable, so it needs no
signature to be unforgeable, and unlike a signed token it can be revoked. Only its SHA-256
is stored (customer_link.token_hash, sql/024): a copy of the database opens no link, and the
token is shown once, when the link is made. A link is for one order, in one language
(zh|en), until it expires or a manager revokes it.

`mesflow customer-link create|list|revoke` (registered in mesflow/cli.py) and the order page
(dashboards/pages/order_customer_link.py) call the functions here; the page /c/<token>
(dashboards/customer_route.py) reads what the customer may see through `customer_view`,
and nothing else.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Final, Literal

import click
import psycopg

TOKEN_BYTES: Final = 32
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")
MAX_DAYS: Final = 366
LANGS: Final = ("zh", "en")
Status = Literal["ok", "revoked", "expired", "unknown"]


class LinkError(ValueError):
    """A link that cannot be made; `code` is short and stable (unknown_order, bad_days, ...)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


@dataclass(frozen=True, slots=True)
class CustomerLink:
    id: int
    order_no: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    language: str

    def status(self, now: datetime) -> Status:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now >= self.expires_at else "ok"


def well_formed(token: str) -> bool:
    """Exactly what `new_token` makes: anything else is not looked up at all."""
    return bool(_TOKEN.fullmatch(token))


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


_COLUMNS = "id, order_no, created_by, created_at, expires_at, revoked_at, language"


def create(
    conn: psycopg.Connection[Any],
    order_no: str,
    by: str,
    days: int,
    lang: str,
    now: datetime | None = None,
) -> tuple[CustomerLink, str]:
    """A new link to `order_no` valid `days` days; returns it and its token (shown once)."""
    if not 1 <= days <= MAX_DAYS:
        raise LinkError("bad_days", f"days must be 1 to {MAX_DAYS}")
    if lang not in LANGS:
        raise LinkError("bad_lang", "language must be zh or en")
    now = now or datetime.now(UTC)
    token = new_token()
    with conn.transaction():
        if (
            conn.execute("SELECT 1 FROM crm_order WHERE order_no = %s", (order_no,)).fetchone()
            is None
        ):
            raise LinkError("unknown_order", f"no order {order_no!r}")
        row = conn.execute(
            "INSERT INTO customer_link (order_no, token_hash, created_by, created_at, expires_at,"
            f" language) VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (order_no, token_hash(token), by, now, now + timedelta(days=days), lang),
        ).fetchone()
    assert row is not None
    return CustomerLink(*row), token


def list_links(conn: psycopg.Connection[Any], order_no: str) -> list[CustomerLink]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM customer_link WHERE order_no = %s ORDER BY id", (order_no,)
    ).fetchall()
    return [CustomerLink(*r) for r in rows]


def revoke(
    conn: psycopg.Connection[Any], link_id: int, by: str, order_no: str | None = None
) -> bool:
    """Revoke link `link_id` (of `order_no`, when given); False if no such active link."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE customer_link SET revoked_at = now(), revoked_by = %s"
            " WHERE id = %s AND revoked_at IS NULL AND (%s::text IS NULL OR order_no = %s)"
            " RETURNING id",
            (by, link_id, order_no, order_no),
        ).fetchone()
    return row is not None


def resolve(
    conn: psycopg.Connection[Any], token: str, now: datetime | None = None
) -> tuple[Status, CustomerLink | None]:
    """The link a token opens, and whether it may show anything ("ok")."""
    if not well_formed(token):
        return "unknown", None
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM customer_link WHERE token_hash = %s", (token_hash(token),)
    ).fetchone()
    if row is None:
        return "unknown", None
    link = CustomerLink(*row)
    return link.status(now or datetime.now(UTC)), link


# -- what the customer sees ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Milestone:
    kind: str  # started | percent | completed
    at: datetime | None
    percent: int | None = None


@dataclass(frozen=True, slots=True)
class CustomerView:
    """Everything the page shows: one order's own figures. No customer name, no other
    order, no machine, work order or person (docs/crm.md says why)."""

    order_no: str
    product: str
    qty: int
    good: int
    status: str
    due: datetime
    eta: datetime | None
    milestones: list[Milestone]

    @property
    def progress(self) -> float:
        return min(self.good / self.qty, 1.0) if self.qty else 0.0


_VIEW = """
SELECT o.order_no, o.product, o.qty, COALESCE(p.good, 0), o.status, o.due, p.eta
FROM crm_order o LEFT JOIN order_progress p USING (order_no)
WHERE o.order_no = %s"""

# The callbacks the CRM was sent about this order (notify/outbox.py), as milestones: the
# first start, each percent step, the completion. Times are event times where the payload
# has one, else when the MES decided it.
_MILESTONES = """
SELECT event_type, payload, created_at FROM outbox
WHERE aggregate = %s
  AND event_type IN ('order.work_started', 'order.milestone', 'order.completed')
ORDER BY id"""


def _time(value: Any, fallback: datetime, tz: tzinfo) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).astimezone(tz)
        except ValueError:
            pass
    return fallback.astimezone(tz)


def customer_view(conn: psycopg.Connection[Any], order_no: str, tz: tzinfo) -> CustomerView | None:
    row = conn.execute(_VIEW, (order_no,)).fetchone()
    if row is None:
        return None
    milestones: list[Milestone] = []
    started = False
    for event_type, payload, created_at in conn.execute(_MILESTONES, (order_no,)):
        data = payload if isinstance(payload, dict) else {}
        if event_type == "order.work_started":
            if not started:  # the first work order's start is the order's
                started = True
                milestones.append(
                    Milestone("started", _time(data.get("started_at"), created_at, tz))
                )
        elif event_type == "order.milestone":
            pct = data.get("percent")
            milestones.append(
                Milestone(
                    "percent", created_at.astimezone(tz), pct if isinstance(pct, int) else None
                )
            )
        else:
            milestones.append(
                Milestone("completed", _time(data.get("completed_at"), created_at, tz))
            )
    o_no, product, qty, good, status, due, eta = row
    return CustomerView(
        o_no,
        product,
        int(qty),
        int(good),
        status,
        due.astimezone(tz),
        eta.astimezone(tz) if eta is not None else None,
        milestones,
    )


# -- CLI (registered in mesflow/cli.py) -------------------------------------------------------


@click.group("customer-link")
def cli() -> None:
    """Customers' read-only order links (/c/<token>): create, list, revoke."""


def _db() -> psycopg.Connection[Any]:
    from mesflow.db import connect, unreachable
    from mesflow.settings import get_settings

    url = get_settings().database_url
    if not url:
        raise click.ClickException("MESFLOW_DATABASE_URL is not set")
    try:
        return connect(url, autocommit=True)
    except psycopg.OperationalError as err:
        raise click.ClickException(unreachable(url, err)) from None


def _fmt(link: CustomerLink, now: datetime) -> str:
    exp = link.expires_at.astimezone(UTC).isoformat(timespec="minutes")
    return f"{link.id}\t{link.order_no}\t{link.language}\t{link.status(now)}\texpires {exp}\tby {link.created_by}"


@cli.command("create")
@click.argument("order_no")
@click.option("--days", type=click.IntRange(1, MAX_DAYS), default=30, show_default=True)
@click.option("--lang", type=click.Choice(LANGS), default="zh", show_default=True)
@click.option("--by", default="cli", show_default=True, help="Recorded as the link's creator.")
@click.option(
    "--base-url", default="", help="Printed before /c/<token> (e.g. https://mes.example.com)."
)
def create_cmd(order_no: str, days: int, lang: str, by: str, base_url: str) -> None:
    """Make a link to ORDER_NO; prints its URL once (only a hash is kept)."""
    with _db() as conn:
        try:
            link, token = create(conn, order_no, by, days, lang)
        except LinkError as err:
            raise click.ClickException(str(err)) from None
    click.echo(f"link {link.id} for {order_no} ({lang}), expires {link.expires_at.isoformat()}")
    click.echo(f"{base_url.rstrip('/')}/c/{token}")


@cli.command("list")
@click.argument("order_no")
def list_cmd(order_no: str) -> None:
    """The links of ORDER_NO: id, order, language, status, expiry, creator."""
    now = datetime.now(UTC)
    with _db() as conn:
        for link in list_links(conn, order_no):
            click.echo(_fmt(link, now))


@cli.command("revoke")
@click.argument("link_id", type=int)
@click.option("--by", default="cli", show_default=True)
def revoke_cmd(link_id: int, by: str) -> None:
    """Revoke link LINK_ID at once: its page then shows nothing (410)."""
    with _db() as conn:
        if not revoke(conn, link_id, by):
            raise click.ClickException(f"no active link {link_id}")
    click.echo(f"link {link_id} revoked")
