"""Database access shared by every component: connections, migrations, the plant mirror."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import psycopg

from mesflow.plant import BUILTIN_REASONS, PlantConfig, Reason
from mesflow.resources import SOURCE_ROOT, MissingResource, resource_dir


def _sql_dir() -> Path:
    try:
        return resource_dir("sql")
    except MissingResource:
        return SOURCE_ROOT / "sql"  # absent: migrate() refuses with the path named


SQL_DIR = _sql_dir()
TIMESCALE_DIR = SQL_DIR / "timescaledb"
_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# Any constant works; it only has to be the same for every process that migrates.
_MIGRATION_LOCK = 0x6D657366


class MigrationError(RuntimeError):
    pass


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=autocommit, application_name="mesflow")


def check_reachable(url: str, timeout_s: float = 10.0) -> None:
    """Connect once and close: raises psycopg.OperationalError if the database is not there."""
    psycopg.connect(
        url, connect_timeout=max(1, round(timeout_s)), application_name="mesflow"
    ).close()


def redact_url(url: str) -> str:
    """`url` with its password replaced by ***, fit for a log or an error message."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unparsable URL)"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        # An empty password (the embedded server's trust login) is shown as none: a URL
        # with "***" in it could not be pasted into `export MESFLOW_DATABASE_URL=...`.
        userinfo = f"{user}:***" if password else user
        netloc = f"{userinfo}@{host}"
    query = "&".join(
        f"{k}=***" if k.lower() == "password" else f"{k}={v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    if "://" not in url:  # a key=value conninfo string: hide password=...
        return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", url, flags=re.IGNORECASE)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def unreachable(url: str | None, err: Exception) -> str:
    """One line for a database that cannot be reached: which one (no password) and why."""
    # libpq's messages run over several lines ("connection failed: ...\n\tIs the server
    # running ..."): the first line says it, the hint repeats the host.
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    cause = lines[0] if lines else type(err).__name__
    if url and "password" in cause.lower():
        cause = re.sub(r"(password\s*=\s*)\S+", r"\1***", cause, flags=re.IGNORECASE)
    where = redact_url(url) if url else "the database (MESFLOW_DATABASE_URL)"
    return f"cannot reach the database at {where}: {cause}"


@dataclass(frozen=True)
class Migration:
    version: str  # "003" or "timescaledb/001"
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def find_migrations(directory: Path, prefix: str = "") -> list[Migration]:
    # An empty plan would report "0 applied" on a database with no tables: refuse instead.
    if not directory.is_dir():
        raise MigrationError(f"{directory}: migrations folder missing (incomplete install?)")
    found = []
    for path in sorted(directory.glob("*.sql")):
        m = _MIGRATION_NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path}: migration files are named NNN_lower_case.sql")
        found.append(Migration(prefix + m.group(1), path))
    if not found:
        raise MigrationError(f"{directory}: no migrations in this folder (incomplete install?)")
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{directory}: two migrations share a number")
    return found


def timescaledb_available(conn: psycopg.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    return row is not None


def migrate(url: str, log: Callable[[str], None] = print) -> list[str]:
    """Apply the numbered migrations not yet recorded; return the versions applied.

    Idempotent and safe to run from several processes at once (an advisory lock
    serialises them). An applied file that has since been edited is an error: published
    migrations are never changed, a new numbered file is added instead.
    """
    applied_now: list[str] = []
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done: dict[str, str] = dict(
                conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
            )
            plan = find_migrations(SQL_DIR)
            if timescaledb_available(conn):
                plan += find_migrations(TIMESCALE_DIR, prefix="timescaledb/")
            else:
                log("TimescaleDB extension not available: plain PostgreSQL tables only")
            for mig in plan:
                if mig.version in done:
                    if done[mig.version] != mig.checksum:
                        raise MigrationError(
                            f"migration {mig.path.name} was changed after it was applied; "
                            "add a new numbered migration instead"
                        )
                    continue
                with conn.transaction():
                    conn.execute(mig.sql.encode())  # a trusted file, not a template
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)",
                        (mig.version, mig.path.name, mig.checksum),
                    )
                log(f"applied migration {mig.version} ({mig.path.name})")
                applied_now.append(mig.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied_now


def sync_plant(url: str, plant: PlantConfig) -> None:
    """Mirror the plant model into plant_line / plant_machine / reason_code."""
    lines = [(ln.id, ln.area, ln.name.en, ln.name.zh, i) for i, ln in enumerate(plant.lines)]
    machines = []
    pos = 0
    for ln in plant.lines:
        for m in ln.machines:
            machines.append(
                (
                    m.id,
                    ln.id,
                    m.name.en,
                    m.name.zh,
                    plant.ideal_cycle_seconds(m.id),
                    plant.microstop_seconds(m.id),
                    pos,
                )
            )
            pos += 1
    reasons: list[tuple[str, str | None, str, str, str]] = []

    def walk(items: list[Reason], parent: str | None) -> None:
        for r in items:
            reasons.append((r.code, parent, r.category, r.name.en, r.name.zh))
            walk(r.children, r.code)

    walk(plant.reasons, None)
    for code, (category, en, zh) in BUILTIN_REASONS.items():
        if code not in plant.reasons_by_code:
            reasons.append((code, None, category, en, zh))
    limits = [
        (scope, owner.id, name, v.lsl, v.usl, v.alarm_low, v.alarm_high)
        for scope, owners in (("product", plant.products), ("machine", plant.machines.values()))
        for owner in owners
        for name, v in (owner.process_limits or {}).items()
    ]
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM plant_machine")
        cur.execute("DELETE FROM plant_line")
        cur.execute("DELETE FROM reason_code")
        cur.executemany("INSERT INTO plant_line VALUES (%s, %s, %s, %s, %s)", lines)
        cur.executemany("INSERT INTO plant_machine VALUES (%s, %s, %s, %s, %s, %s, %s)", machines)
        cur.executemany("INSERT INTO reason_code VALUES (%s, %s, %s, %s, %s)", reasons)
        # Process limits (mesflow/process_limits.py), for Cpk (sql/026_process_limits.sql).
        cur.execute("DELETE FROM process_limit")
        cur.executemany("INSERT INTO process_limit VALUES (%s, %s, %s, %s, %s, %s, %s)", limits)
