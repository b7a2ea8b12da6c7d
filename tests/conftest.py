"""Fixtures that start real services: PostgreSQL (embedded, or MESFLOW_TEST_DATABASE_URL)
and an MQTT broker (mosquitto, with persistence, restartable on its port).

A missing service (broker, PostgreSQL, browser) is a failure, wherever the suite runs;
only a caller who says so with MESFLOW_SKIP_MISSING_SERVICES=1 turns it into a skip.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings as hypothesis_settings

from mesflow.db import migrate, sync_plant
from mesflow.plant import PlantConfig, load_plant_config
from mesflow.services import EmbeddedPostgres
from mesflow.settings import REPO_ROOT
from tests.helpers import PLANT_ENV, OwnPostgres, RestartableBroker, wide_horizon_plant_text

EXAMPLE_CONFIG = REPO_ROOT / "config" / "plant.example.yaml"
SKIP_MISSING = "MESFLOW_SKIP_MISSING_SERVICES"

# Property tests: CI runs a fixed set of examples (a red build is then reproducible and not
# a lottery); `HYPOTHESIS_PROFILE=fuzz` explores with random seeds and more examples, which
# is how the fuzz tests found their bugs (docs/operations.md, "Fuzzing").
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("fuzz", max_examples=500, deadline=None, print_blob=True)
hypothesis_settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE")
    or ("ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "default")
)


def require(condition: bool, what: str) -> None:
    """Fail when a service is missing: a runner that forgot to install it must not go green.

    Skipped only when the caller opts out explicitly (MESFLOW_SKIP_MISSING_SERVICES=1).
    """
    if condition:
        return
    if os.environ.get(SKIP_MISSING, "").lower() in ("1", "true", "yes"):
        pytest.skip(f"{what} not available ({SKIP_MISSING} is set)")
    pytest.fail(f"required service missing: {what} (set {SKIP_MISSING}=1 to skip its tests)")


@pytest.fixture(autouse=True)
def no_unstored_rows() -> Iterator[None]:
    """No flow run in a test's process sends the results sink a row type that no store
    takes (streams/pg_sink.py `unstored`): such rows would be lost without a trace."""
    yield
    sink = sys.modules.get("streams.pg_sink")  # loaded only by the tests that run flows
    if sink is not None and sink._named_unstored:
        names = sorted(t.__qualname__ for t in sink._named_unstored)
        sink._named_unstored.clear()
        pytest.fail(f"rows of {names} reached the results sink and no store takes them")


@pytest.fixture(scope="session", autouse=True)
def plant_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example plant with a 20,000-day (54-year) event-age horizon, as a file that every
    child process and CLI run of the suite reads (MESFLOW_PLANT_CONFIG, set for the whole
    session): the tests' fixed 2026 dates must not turn `too_old` as the calendar moves on,
    while 1970 still is (tests/poison.py). Tests of the shipped default policy name
    EXAMPLE_CONFIG themselves (tests/test_clock_policy.py, tests/test_poison_replay.py)."""
    path = tmp_path_factory.mktemp("plant") / "plant.yaml"
    path.write_text(wide_horizon_plant_text(EXAMPLE_CONFIG), encoding="utf-8")
    before = os.environ.get(PLANT_ENV)
    os.environ[PLANT_ENV] = str(path)
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop(PLANT_ENV, None)
        else:
            os.environ[PLANT_ENV] = before


@pytest.fixture(scope="session")
def plant(plant_file: Path) -> PlantConfig:
    """The plant the child processes read (plant_file): the example with a wide horizon."""
    return load_plant_config(plant_file)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a migrated template database on a real PostgreSQL server."""
    external = os.environ.get("MESFLOW_TEST_DATABASE_URL")
    if external:
        yield external
        return
    try:
        server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", delete_on_stop=True)
    except Exception as err:  # no wheel for this platform, no shared memory, ...
        require(False, f"PostgreSQL (the embedded server did not start: {err})")
        raise
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_template(pg_server: str, plant: PlantConfig) -> str:
    """A migrated database with the example plant loaded, cloned per test."""
    name = "mesflow_template"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    url = _with_db(pg_server, name)
    migrate(url, log=lambda _msg: None)
    sync_plant(url, plant)
    return name


@pytest.fixture
def db_url(pg_server: str, pg_template: str) -> Iterator[str]:
    """A fresh, migrated database for one test (a copy of the template: ~50 ms)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    yield _with_db(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def ref_db_url(pg_server: str, pg_template: str) -> Iterator[str]:
    """A second fresh database, for the clean replay a test compares its results with."""
    name = f"r_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    yield _with_db(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def empty_db_url(pg_server: str) -> Iterator[str]:
    """A fresh database with no tables, for migration tests."""
    name = f"e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield _with_db(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _with_db(url: str, name: str) -> str:
    # Works for both postgresql://u@/db?host=/sock and postgresql://u@h:p/db URLs.
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RestartableBroker]:
    """A private mosquitto with persistence on a port of its own; `broker.restart()`
    stops it (saving its sessions and queued messages) and starts it on the same port."""
    have_mosquitto = bool(shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto"))
    require(have_mosquitto, "mosquitto (apt-get install mosquitto)")
    b = RestartableBroker.start(tmp_path / "broker")
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def own_pg(tmp_path_factory: pytest.TempPathFactory, plant: PlantConfig) -> Iterator[OwnPostgres]:
    """A PostgreSQL server of this test alone, migrated, that the test may restart or crash
    (`own_pg.restart()`) without disturbing the session's shared server."""
    server = OwnPostgres(tmp_path_factory.mktemp("own-pg") / "data")
    try:
        migrate(server.url, log=lambda _msg: None)
        sync_plant(server.url, plant)
        yield server
    finally:
        server.stop()
