"""`mesflow user ...` and `mesflow token ...`: who may open the dashboards (docs/users.md)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import click
import psycopg

from mesflow import users
from mesflow.db import unreachable
from mesflow.settings import get_settings

T = TypeVar("T")


@contextmanager
def _connect() -> Iterator[psycopg.Connection]:
    url = get_settings().database_url
    if not url:
        raise click.ClickException("MESFLOW_DATABASE_URL is not set")
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            yield conn
    except psycopg.errors.UndefinedTable:
        raise click.ClickException("no user tables: run `mesflow db migrate` first") from None
    except psycopg.OperationalError as err:  # the same one line as every other command
        raise click.ClickException(unreachable(url, err)) from None
    except psycopg.Error as err:  # e.g. a missing privilege: its first line, no traceback
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
        raise click.ClickException(f"database: {first or type(err).__name__}") from None


def _run(fn: Callable[[psycopg.Connection], T]) -> T:
    with _connect() as conn:
        try:
            return fn(conn)
        except users.UserError as err:
            raise click.ClickException(str(err)) from None


def _read_password(generate: bool, from_stdin: bool) -> tuple[str, bool]:
    """(password, was it generated); prompts twice on a terminal."""
    if generate:
        return users.new_password(), True
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    return click.prompt("Password", hide_input=True, confirmation_prompt=True), False


_ROLE = click.Choice(list(users.ROLES))
_PASSWORD_OPTIONS = [
    click.option("--generate", is_flag=True, help="Make up a password and print it."),
    click.option("--password-stdin", is_flag=True, help="Read the password from standard input."),
]


def _password_options(fn: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_PASSWORD_OPTIONS):
        fn = option(fn)
    return fn


@click.group("user")
def user_group() -> None:
    """Dashboard users: viewer < operator < manager < admin (see docs/users.md)."""


@user_group.command("add")
@click.argument("username")
@click.option("--role", type=_ROLE, required=True, help="What the user may open.")
@_password_options
@click.option(
    "--no-password",
    is_flag=True,
    help="No password: the user signs in only through the trusted proxy's header.",
)
def user_add(
    username: str, role: str, generate: bool, password_stdin: bool, no_password: bool
) -> None:
    """Add USERNAME with a role; asks for the password (or --generate / --password-stdin)."""
    password, generated = (None, False) if no_password else _read_password(generate, password_stdin)
    user = _run(lambda conn: users.add_user(conn, username, role, password))
    click.echo(f"user {user.username} added with role {user.role}")
    if generated:
        click.echo(f"password: {password}")


@user_group.command("passwd")
@click.argument("username")
@_password_options
def user_passwd(username: str, generate: bool, password_stdin: bool) -> None:
    """Set USERNAME's password; the user's open sessions end."""
    password, generated = _read_password(generate, password_stdin)
    _run(lambda conn: users.set_password(conn, username, password))
    click.echo(f"password of {username} changed; their open sessions have ended")
    if generated:
        click.echo(f"password: {password}")


@user_group.command("role")
@click.argument("username")
@click.argument("role", type=_ROLE)
def user_role(username: str, role: str) -> None:
    """Give USERNAME another ROLE; the user signs in again."""
    _run(lambda conn: users.set_role(conn, username, role))
    click.echo(f"{username} is now {role}; their open sessions have ended")


@user_group.command("list")
def user_list() -> None:
    """Every user with role and last sign-in (no passwords: only their hashes are stored)."""
    rows = _run(users.list_users)
    if not rows:
        click.echo("no users yet: mesflow user add NAME --role admin")
        return
    click.echo(f"{'user':<24} {'role':<9} {'last login':<20} note")
    for u in rows:
        last = u.last_login_at.strftime("%Y-%m-%d %H:%M") if u.last_login_at else "never"
        note = "" if u.has_password else "proxy only (no password)"
        click.echo(f"{u.username:<24} {u.role:<9} {last:<20} {note}")


@user_group.command("remove")
@click.argument("username")
def user_remove(username: str) -> None:
    """Remove USERNAME; their open sessions end at their next request."""
    _run(lambda conn: users.remove_user(conn, username))
    click.echo(f"user {username} removed")


@click.group("token")
def token_group() -> None:
    """Read-only (viewer) tokens for wall screens: /andon?token=..."""


def _board_base_url() -> str:
    settings = get_settings()
    host = settings.http_host
    if host in ("0.0.0.0", "", "::"):
        host = socket.gethostname()
    return f"http://{host}:{settings.http_port}"


@token_group.command("create")
@click.argument("name")
@click.option("--base-url", default=None, help="The dashboard's address as the TV reaches it.")
def token_create(name: str, base_url: str | None) -> None:
    """A new viewer token named NAME (e.g. hall-2-tv); prints its kiosk URL once."""
    row, token = _run(lambda conn: users.create_token(conn, name))
    base = (base_url or _board_base_url()).rstrip("/")
    click.echo(f"token {row.id} ({row.name}) created; it is shown only now:")
    click.echo(f"  {token}")
    click.echo(f"wall-screen URL: {base}/andon?token={token}")


@token_group.command("list")
def token_list() -> None:
    """Every token: id, name, last use, revoked or not (the tokens themselves are not stored)."""
    rows = _run(users.list_tokens)
    if not rows:
        click.echo("no tokens yet: mesflow token create NAME")
        return
    click.echo(f"{'id':>4}  {'name':<24} {'last used':<17} status")
    for t in rows:
        used = t.last_used_at.strftime("%Y-%m-%d %H:%M") if t.last_used_at else "never"
        status = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "live"
        click.echo(f"{t.id:>4}  {t.name:<24} {used:<17} {status}")


@token_group.command("revoke")
@click.argument("id_or_name")
def token_revoke(id_or_name: str) -> None:
    """Revoke a token by id, or every live token with that name; screens using it sign out."""
    n = _run(lambda conn: users.revoke_token(conn, id_or_name))
    click.echo(f"{n} token(s) revoked")
