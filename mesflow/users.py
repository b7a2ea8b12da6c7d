"""Dashboard users, roles and wall-screen tokens (tables from sql/012_dashboard_users.sql).

The store functions take a psycopg connection, so the dashboards (through their pool) and the
`mesflow user ...` / `mesflow token ...` commands share one implementation. Passwords are
hashed with werkzeug (scrypt, salted); tokens are random and stored as their SHA-256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, Literal

import psycopg
from psycopg.rows import class_row
from werkzeug.security import check_password_hash, generate_password_hash

Role = Literal["viewer", "operator", "manager", "admin"]
# Ordered: each role may do everything the ones before it may.
ROLES: Final[tuple[Role, ...]] = ("viewer", "operator", "manager", "admin")

NO_PASSWORD: Final = "!"  # never a werkzeug hash, so no password matches it
TOKEN_PREFIX: Final = "mft_"
MAX_PASSWORD_CHARS: Final = 1024  # scrypt of a megabyte is still fast, but bound the work
MIN_PASSWORD_CHARS: Final = 8
# Letters (any script), digits and . _ @ -: safe in a URL, a log line and a proxy header.
_USERNAME = re.compile(r"^[\w.@-]{1,64}$")
# The hash of a random password: checked when the user does not exist, so an unknown name
# takes as long as a wrong password (no user enumeration by timing).
_DUMMY_HASH: Final = generate_password_hash(secrets.token_urlsafe(16))


class UserError(ValueError):
    """A user or token request that cannot be done; the message says why."""


def role_rank(role: str) -> int:
    """Position of `role` in ROLES; -1 for anything else (which satisfies no requirement)."""
    try:
        return ROLES.index(role)
    except ValueError:
        return -1


def has_role(role: str | None, required: str) -> bool:
    return role is not None and role_rank(role) >= role_rank(required) >= 0


def normalize_username(raw: str) -> str:
    """The canonical form of a user name, or UserError (NFC, so 张三 typed two ways is one user)."""
    name = unicodedata.normalize("NFC", raw.strip())
    if not _USERNAME.fullmatch(name):
        raise UserError(
            "a user name is 1 to 64 letters, digits or . _ @ - (no spaces): " + repr(raw[:80])
        )
    return name


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return role


def check_new_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserError(f"a password has at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise UserError(f"a password has at most {MAX_PASSWORD_CHARS} characters")
    if "\x00" in password:
        raise UserError("a password cannot contain a NUL character")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. undecodable bytes on stdin
        raise UserError("a password must be valid text (UTF-8)") from None
    return password


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_password() -> str:
    """A password a person can type from a printout: 16 characters, no look-alikes."""
    alphabet = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(16))


@dataclass(frozen=True, slots=True)
class User:
    username: str
    role: str
    session_epoch: int
    created_at: datetime
    last_login_at: datetime | None
    has_password: bool


@dataclass(frozen=True, slots=True)
class Token:
    id: int
    name: str
    role: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


_USER_COLUMNS = (
    "username, role, session_epoch, created_at, last_login_at, password_hash <> '!' AS has_password"
)


# -- users -------------------------------------------------------------------------------------


def add_user(conn: psycopg.Connection, username: str, role: str, password: str | None) -> User:
    """A new user; `password=None` makes one that can sign in only through a trusted proxy."""
    name = normalize_username(username)
    hashed = generate_password_hash(check_new_password(password)) if password else NO_PASSWORD
    with conn.cursor(row_factory=class_row(User)) as cur:
        row = cur.execute(
            f"INSERT INTO dashboard_user (username, role, password_hash) VALUES (%s, %s, %s)"
            f" ON CONFLICT (username) DO NOTHING RETURNING {_USER_COLUMNS}",
            (name, check_role(role), hashed),
        ).fetchone()
    if row is None:
        raise UserError(f"user {name!r} exists already (mesflow user passwd / user role)")
    return row


def set_password(conn: psycopg.Connection, username: str, password: str) -> None:
    """New password; every session of the user ends (epoch + 1)."""
    name = normalize_username(username)
    hashed = generate_password_hash(check_new_password(password))
    cur = conn.execute(
        "UPDATE dashboard_user SET password_hash = %s, session_epoch = session_epoch + 1,"
        " updated_at = now() WHERE username = %s",
        (hashed, name),
    )
    if cur.rowcount == 0:
        raise UserError(f"no user {name!r}")


def set_role(conn: psycopg.Connection, username: str, role: str) -> None:
    """New role; every session of the user ends, so the new role applies at once."""
    name = normalize_username(username)
    cur = conn.execute(
        "UPDATE dashboard_user SET role = %s, session_epoch = session_epoch + 1,"
        " updated_at = now() WHERE username = %s",
        (check_role(role), name),
    )
    if cur.rowcount == 0:
        raise UserError(f"no user {name!r}")


def remove_user(conn: psycopg.Connection, username: str) -> None:
    name = normalize_username(username)
    if conn.execute("DELETE FROM dashboard_user WHERE username = %s", (name,)).rowcount == 0:
        raise UserError(f"no user {name!r}")


def list_users(conn: psycopg.Connection) -> list[User]:
    with conn.cursor(row_factory=class_row(User)) as cur:
        return cur.execute(
            f"SELECT {_USER_COLUMNS} FROM dashboard_user ORDER BY username"
        ).fetchall()


def get_user(conn: psycopg.Connection, username: str) -> User | None:
    try:
        name = normalize_username(username)
    except UserError:
        return None
    with conn.cursor(row_factory=class_row(User)) as cur:
        return cur.execute(
            f"SELECT {_USER_COLUMNS} FROM dashboard_user WHERE username = %s", (name,)
        ).fetchone()


def authenticate(conn: psycopg.Connection, username: str, password: str) -> User | None:
    """The user if `password` is theirs, else None; same work whether the user exists or not."""
    try:
        name = normalize_username(username)
    except UserError:
        name = None
    row = None
    if name is not None:
        row = conn.execute(
            "SELECT password_hash FROM dashboard_user WHERE username = %s", (name,)
        ).fetchone()
    stored = row[0] if row else _DUMMY_HASH
    if stored == NO_PASSWORD:
        stored = _DUMMY_HASH
    # Bounded and NUL-free before it reaches the hash (hostile forms send both).
    candidate = password[:MAX_PASSWORD_CHARS].replace("\x00", "")
    candidate = candidate.encode("utf-8", "replace").decode("utf-8")  # lone surrogates
    ok = check_password_hash(stored, candidate)
    if not ok or row is None or row[0] == NO_PASSWORD or name is None:
        return None
    conn.execute("UPDATE dashboard_user SET last_login_at = now() WHERE username = %s", (name,))
    return get_user(conn, name)


# -- wall-screen tokens ----------------------------------------------------------------------


def create_token(conn: psycopg.Connection, name: str) -> tuple[Token, str]:
    """A new viewer token: (its row, the token itself, shown once and never stored)."""
    label = name.strip()
    if not 1 <= len(label) <= 64 or "\x00" in label:
        raise UserError("a token name is 1 to 64 characters, e.g. the screen's place: hall-2-tv")
    token = new_token()
    with conn.cursor(row_factory=class_row(Token)) as cur:
        row = cur.execute(
            "INSERT INTO dashboard_token (name, token_sha256) VALUES (%s, %s)"
            " RETURNING id, name, role, created_at, last_used_at, revoked_at",
            (label, hash_token(token)),
        ).fetchone()
    assert row is not None
    return row, token


def list_tokens(conn: psycopg.Connection) -> list[Token]:
    with conn.cursor(row_factory=class_row(Token)) as cur:
        return cur.execute(
            "SELECT id, name, role, created_at, last_used_at, revoked_at FROM dashboard_token"
            " ORDER BY id"
        ).fetchall()


def revoke_token(conn: psycopg.Connection, id_or_name: str) -> int:
    """Revoke the token with this id, or every live token with this name; how many."""
    if id_or_name.isdigit():
        cur = conn.execute(
            "UPDATE dashboard_token SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
            (int(id_or_name),),
        )
    else:
        cur = conn.execute(
            "UPDATE dashboard_token SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL",
            (id_or_name,),
        )
    if cur.rowcount == 0:
        raise UserError(f"no live token with id or name {id_or_name!r} (mesflow token list)")
    return cur.rowcount


def token_by_secret(conn: psycopg.Connection, token: str) -> Token | None:
    """The live token matching `token`, marked as used now; None if unknown or revoked."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    with conn.cursor(row_factory=class_row(Token)) as cur:
        return cur.execute(
            "UPDATE dashboard_token SET last_used_at = now()"
            " WHERE token_sha256 = %s AND revoked_at IS NULL"
            " RETURNING id, name, role, created_at, last_used_at, revoked_at",
            (hash_token(token),),
        ).fetchone()


def token_is_live(conn: psycopg.Connection, token_id: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM dashboard_token WHERE id = %s AND revoked_at IS NULL", (token_id,)
    ).fetchone()
    return row is not None


# -- demo --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoLogins:
    username: str
    password: str
    token: str


def demo_logins(url: str, data_dir: Path) -> DemoLogins:
    """An admin user and a wall-screen token for `mesflow demo`, the same on every start.

    Kept in data_dir/demo-logins.json (owner-only) so a browser stays signed in across demo
    restarts; recreated when the file or the database lost them.
    """
    path = data_dir / "demo-logins.json"
    saved: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(path.read_text(encoding="utf-8"))
        saved = {k: v for k, v in loaded.items() if isinstance(v, str)}
    with psycopg.connect(url, autocommit=True) as conn:
        password = saved.get("password", "")
        if not (password and authenticate(conn, "admin", password)):
            password = new_password()
            if get_user(conn, "admin") is None:
                add_user(conn, "admin", "admin", password)
            else:
                set_password(conn, "admin", password)
        token = saved.get("token", "")
        if not (token and token_by_secret(conn, token)):
            _row, token = create_token(conn, "demo wall screen")
    logins = DemoLogins("admin", password, token)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"password": logins.password, "token": logins.token}, f)
    return logins
