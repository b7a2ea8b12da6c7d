"""`mesflow db migrate` on a real PostgreSQL server (no TimescaleDB here)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

import mesflow.db
from mesflow.cli import main
from mesflow.db import MigrationError, find_migrations, migrate
from mesflow.settings import REPO_ROOT

SQL_DIR = REPO_ROOT / "sql"
NUMBERED = [p.name for p in sorted(SQL_DIR.glob("*.sql"))]
TABLES = {
    "schema_migrations",
    "ingest_log",
    "dead_letter",
    "dataflow_progress",
    "plant_line",
    "plant_machine",
    "reason_code",
    "machine_state_interval",
    "machine_status",
    "machine_hour",
}
PUBLIC_VIEWS = {
    "v_machine_status",
    "v_state_intervals",
    "v_machine_hour",
    "v_dead_letter_summary",
    "v_dead_letter",  # sql/014
}


def _quiet(_msg: str) -> None:
    pass


def _recorded(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT version, name FROM schema_migrations ORDER BY applied_at, version"
        ).fetchall()


def _relations(url: str, kind: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public' AND c.relkind = %s""",
            (kind,),
        ).fetchall()
    return {r[0] for r in rows}


def test_there_are_numbered_migrations() -> None:
    assert NUMBERED[:4] == [
        "001_ingest_log.sql",
        "002_plant_model.sql",
        "003_machine_results.sql",
        "004_public_views.sql",
    ]


def test_migrate_applies_all_in_order_and_records_them(empty_db_url: str) -> None:
    messages: list[str] = []
    applied = migrate(empty_db_url, log=messages.append)
    versions = [name[:3] for name in NUMBERED]
    assert applied == versions
    assert _recorded(empty_db_url) == [(name[:3], name) for name in NUMBERED]
    with psycopg.connect(empty_db_url) as conn:
        checksums = dict(conn.execute("SELECT name, checksum FROM schema_migrations").fetchall())
    assert checksums == {m.path.name: m.checksum for m in find_migrations(SQL_DIR)}
    assert any("TimescaleDB extension not available" in m for m in messages)


def test_second_run_applies_nothing(empty_db_url: str) -> None:
    migrate(empty_db_url, log=_quiet)
    before = _recorded(empty_db_url)
    assert migrate(empty_db_url, log=_quiet) == []
    assert _recorded(empty_db_url) == before


def test_tables_and_public_views_exist(empty_db_url: str) -> None:
    migrate(empty_db_url, log=_quiet)
    assert _relations(empty_db_url, "r") >= TABLES
    assert _relations(empty_db_url, "v") >= PUBLIC_VIEWS
    with psycopg.connect(empty_db_url) as conn:
        # The views are queryable on an empty database (boards start before any event).
        for view in sorted(PUBLIC_VIEWS):
            conn.execute(f"SELECT * FROM {view} LIMIT 1").fetchall()


def test_timescaledb_layer_is_not_applied_without_the_extension(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url) as conn:
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone()
    if available:
        pytest.skip("this server has TimescaleDB; the test is about plain PostgreSQL")
    migrate(empty_db_url, log=_quiet)
    versions = [v for v, _ in _recorded(empty_db_url)]
    assert not [v for v in versions if v.startswith("timescaledb/")]
    with psycopg.connect(empty_db_url) as conn:
        ext = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    assert ext is None


def test_changed_applied_migration_is_refused(
    empty_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sql_copy = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_copy)
    monkeypatch.setattr(mesflow.db, "SQL_DIR", sql_copy)
    monkeypatch.setattr(mesflow.db, "TIMESCALE_DIR", sql_copy / "timescaledb")
    migrate(empty_db_url, log=_quiet)
    # Even a comment counts: a published migration is never edited, a new one is added.
    edited = sql_copy / "002_plant_model.sql"
    edited.write_text(edited.read_text("utf-8") + "\n-- edited later\n", encoding="utf-8")
    with pytest.raises(MigrationError, match=r"002_plant_model\.sql was changed"):
        migrate(empty_db_url, log=_quiet)


def test_new_numbered_file_is_applied_later(
    empty_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sql_copy = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_copy)
    monkeypatch.setattr(mesflow.db, "SQL_DIR", sql_copy)
    monkeypatch.setattr(mesflow.db, "TIMESCALE_DIR", sql_copy / "timescaledb")
    migrate(empty_db_url, log=_quiet)
    (sql_copy / "999_extra.sql").write_text("CREATE TABLE extra (x int);\n", encoding="utf-8")
    assert migrate(empty_db_url, log=_quiet) == ["999"]
    assert "extra" in _relations(empty_db_url, "r")


def test_concurrent_migrations_apply_each_file_once(empty_db_url: str) -> None:
    # Several containers may start `mesflow db migrate` at once; the advisory lock serialises.
    results: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run() -> None:
        try:
            start.wait()
            results.append(migrate(empty_db_url, log=_quiet))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == 2
    applied = sorted(v for r in results for v in r)
    assert applied == sorted(name[:3] for name in NUMBERED)
    assert len(_recorded(empty_db_url)) == len(NUMBERED)


def test_cli_db_migrate(empty_db_url: str) -> None:
    runner = CliRunner()
    env = {"MESFLOW_DATABASE_URL": empty_db_url, "MESFLOW_PLANT_CONFIG": None}
    result = runner.invoke(main, ["db", "migrate"], env=env)
    assert result.exit_code == 0, result.output
    assert f"{len(NUMBERED)} migration(s) applied; plant model 'demo' loaded" in result.output
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM plant_machine").fetchone() == (12,)
        assert conn.execute("SELECT count(*) FROM plant_line").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM v_machine_status").fetchone() == (12,)
    # A second run is harmless: nothing applied, the plant model rewritten.
    again = runner.invoke(main, ["db", "migrate"], env=env)
    assert again.exit_code == 0, again.output
    assert "0 migration(s) applied" in again.output


def test_cli_db_migrate_without_database_url() -> None:
    result = CliRunner().invoke(main, ["db", "migrate"], env={"MESFLOW_DATABASE_URL": None})
    assert result.exit_code != 0
    assert "MESFLOW_DATABASE_URL is not set" in result.output


def test_missing_or_empty_migrations_folder_is_an_error(
    empty_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "0 migrations applied" on a database with no tables would hide a broken install.
    monkeypatch.setattr(mesflow.db, "SQL_DIR", tmp_path / "absent")
    with pytest.raises(MigrationError, match="migrations folder missing"):
        migrate(empty_db_url, log=_quiet)
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(mesflow.db, "SQL_DIR", tmp_path / "empty")
    with pytest.raises(MigrationError, match="no migrations in this folder"):
        migrate(empty_db_url, log=_quiet)
    assert "schema_migrations" in _relations(empty_db_url, "r")
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (0,)
