"""Shared pieces of the benchmarks: the scaled plant, throwaway services, honest counters.

Every benchmark runs inside `private_tmp()`: its files (plant, replay file, recovery
store, PostgreSQL, broker) live in one folder, that folder is also the temporary folder of
this process and of its children (TMPDIR), and it is removed whatever ends the run.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from bench.scaled_plant import write_scaled_plant
from mesflow.db import migrate, sync_plant
from mesflow.plant import PlantConfig

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def big_plant(machines: int, directory: Path) -> PlantConfig:
    """The example plant scaled out to `machines` machines (bench/scaled_plant.py), written
    to `directory / f"plant-{machines}.yaml"`: every feature of the demo plant is kept."""
    return write_scaled_plant(machines, directory)[1]


class BenchDatabase:
    """An embedded PostgreSQL in `directory` with the plant migrated and loaded; `stop()`
    stops it and deletes its files."""

    def __init__(self, plant: PlantConfig, directory: Path) -> None:
        from mesflow.services import EmbeddedPostgres

        self.directory = directory
        self._pg = EmbeddedPostgres(directory / "pg", delete_on_stop=True)
        self.url = self._pg.url
        try:
            migrate(self.url, log=lambda _m: None)
            sync_plant(self.url, plant)
        except BaseException:
            self.stop()  # no server left running behind a failed start
            raise

    def server_pid(self) -> int | None:
        """The postmaster's pid (first line of postmaster.pid), None when not running."""
        try:
            return int((self.directory / "pg" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        try:
            self._pg.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def fresh_database(plant: PlantConfig, directory: Path | None = None) -> tuple[BenchDatabase, str]:
    """A migrated database with `plant` loaded: (handle with `.stop()`, URL)."""
    db = BenchDatabase(plant, directory or Path(tempfile.mkdtemp(prefix="mesflow-bench-")))
    return db, db.url


@contextmanager
def private_tmp(prefix: str = "mesflow-bench-") -> Iterator[Path]:
    """A work folder that is also the temporary folder of this run (tempfile and TMPDIR,
    inherited by child processes), removed on the way out, whatever ends the run."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = str(work)
    tempfile.tempdir = str(work)
    try:
        yield work
    finally:
        if saved[0] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[0]
        tempfile.tempdir = saved[1]
        shutil.rmtree(work, ignore_errors=True)


def peak_rss_mib() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process and its waited-for children (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # after the command: state is field 3; utime, stime, cutime, cstime are fields 14-17
    return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process, its reaped children (e.g. a PostgreSQL server's ended
    backends) and its live children (its current backends)."""
    total = cpu_seconds(pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(stat[1]) == pid:  # field 4: the parent's pid
            total += cpu_seconds(int(entry.name))
    return total


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)"


def ratio(value: float, ceiling: float) -> str:
    return f"{value / ceiling:.2f}" if ceiling > 0 else "n/a"


def module_at(rev: str, relpath: str, work: Path) -> ModuleType:
    """The repository's `relpath` (a Python module) as it was at git revision `rev`, loaded
    as a module of its own (`<name>_before`, its file in `work`), side by side with today's."""
    root = Path(__file__).resolve().parent.parent
    src = subprocess.run(
        ["git", "show", f"{rev}:{relpath}"], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    name = f"{Path(relpath).stem}_before"
    path = work / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
