"""`pip install .` (not editable) gets everything mesflow needs at run time.

Builds the wheel, checks that it holds every module, migration, the example plant and the
boards' styles, then runs `mesflow db migrate` from the installed wheel (outside the source
tree) against an empty database: it must find its migrations and the example plant there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesflow.settings import REPO_ROOT

PACKAGES = ("mesflow", "collectors", "streams", "dashboards", "notify")


def _tracked(*paths: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", *paths], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [p for p in out.splitlines() if (REPO_ROOT / p).exists()]


def _untracked_but_present(*dirs: str) -> list[str]:
    # Files added but not committed yet belong in the wheel too; ignored ones (a local
    # password file, caches) do not.
    out = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard", *dirs],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.splitlines()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # From a clean copy: setuptools reuses a build/ folder left in the tree, which would hide
    # a file the configuration no longer ships.
    src = out / "src"
    shutil.copytree(
        REPO_ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "var", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (whl,) = out.glob("mesflow-*.whl")
    return whl


def _expected_in_wheel() -> dict[str, str]:
    """Source path -> path inside the wheel."""
    expected = {}
    for src in set(_tracked(*PACKAGES)) | set(_untracked_but_present(*PACKAGES)):
        if src.endswith(".pyc") or "/__pycache__/" in src or Path(src).name.startswith("."):
            continue
        expected[src] = src
    for src in set(_tracked("sql", "config")) | set(_untracked_but_present("sql", "config")):
        if src.startswith("config/") and src.count("/") == 1 and src != "config/plant.example.yaml":
            continue  # a local plant file next to the example is not shipped
        if Path(src).name.startswith("."):
            continue  # .gitignore and the like
        expected[src] = f"mesflow/_data/{src}"
    return expected


def test_wheel_holds_code_migrations_example_plant_and_styles(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _expected_in_wheel()
    assert "sql/001_ingest_log.sql" in expected
    assert "dashboards/assets/andon.css" in expected
    missing = sorted(src for src, inside in expected.items() if inside not in names)
    assert not missing, f"not in the wheel (see [tool.setuptools] in pyproject.toml): {missing}"


def test_pyproject_lists_every_package() -> None:
    listed = set(
        tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        str(p.parent.relative_to(REPO_ROOT)).replace("/", ".")
        for top in PACKAGES
        for p in (REPO_ROOT / top).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert on_disk - listed == set()


@pytest.fixture
def installed(wheel: Path, tmp_path: Path) -> Iterator[Path]:
    """The wheel installed into a private folder, run with this venv's dependencies."""
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    yield target


def _run_installed(
    target: Path, args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MESFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "mesflow.cli", *args],
        cwd=target.parent,  # not the source tree
        env={**clean, "PYTHONPATH": str(target), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_installed_wheel_migrates_from_its_own_files(installed: Path, empty_db_url: str) -> None:
    where = _run_installed(
        installed,
        ["--help"],
        {},
    )
    assert where.returncode == 0, where.stderr
    probe = subprocess.run(
        [sys.executable, "-c", "import mesflow.db, mesflow.settings as s; "
         "print(mesflow.db.SQL_DIR); print(s.get_settings().plant_config)"],
        cwd=installed.parent,
        # Without the suite's MESFLOW_PLANT_CONFIG (tests/conftest.py): the default is probed.
        env={**{k: v for k, v in os.environ.items() if not k.startswith("MESFLOW_")},
             "PYTHONPATH": str(installed)},
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert probe == [
        str(installed / "mesflow/_data/sql"),
        str(installed / "mesflow/_data/config/plant.example.yaml"),
    ]
    res = _run_installed(installed, ["db", "migrate"], {"MESFLOW_DATABASE_URL": empty_db_url})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "applied migration 001 (001_ingest_log.sql)" in res.stdout
    assert "plant model 'demo' loaded" in res.stdout


def test_installed_wheel_without_migrations_refuses(installed: Path, empty_db_url: str) -> None:
    shutil.rmtree(installed / "mesflow/_data/sql")
    res = _run_installed(installed, ["db", "migrate"], {"MESFLOW_DATABASE_URL": empty_db_url})
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "migrations folder missing" in res.stderr
    assert "applied" not in res.stdout
