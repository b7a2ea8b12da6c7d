"""`mesflow labor` (mesflow/labor_report.py) on test_labor_flow's seeded plant: hours per
shift and person and per work order, as a table and as CSV; bad periods are usage errors."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mesflow.cli import main
from mesflow.labor_report import resolve_dates
from mesflow.plant import PlantConfig
from mesflow.report import ReportError
from tests.helpers import feed
from tests.test_labor_flow import events
from tests.test_labor_flow import run as run_flow


@pytest.fixture
def seeded(db_url: str, plant: PlantConfig, tmp_path: Path) -> str:
    feed(db_url, events())
    run_flow(db_url, plant, tmp_path / "rec")
    return db_url


def labor(url: str, plant_file: Path, *args: str) -> Result:
    env = {"MESFLOW_DATABASE_URL": url, "MESFLOW_PLANT_CONFIG": str(plant_file)}
    return CliRunner().invoke(main, ["labor", *args], env=env)


def test_hours_per_shift_and_person(seeded: str, plant_file: Path) -> None:
    result = labor(seeded, plant_file, "--date", "2026-11-20")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Labor hours by shift and person, shift dates 2026-11-20 (Asia/Shanghai)"
    rows = [line.split() for line in lines[4:-1]]
    assert rows == [
        ["2026-11-20", "day", "li", "IM-01", "IM-02", "1.00"],
        ["2026-11-20", "day", "sun", "IM-05", "11.00"],
        ["2026-11-20", "day", "wang", "IM-01", "2.00"],
        ["2026-11-20", "day", "zhao", "IM-03", "2.00"],
        ["2026-11-20", "night", "li", "IM-01", "IM-02", "2.50"],
        ["2026-11-20", "night", "wang", "IM-01", "2.00"],
    ]
    assert lines[-1] == "total 20.50 h"


def test_per_work_order_as_csv_with_filters(seeded: str, plant_file: Path) -> None:
    result = labor(
        seeded, plant_file, "--from", "2026-11-19", "--to", "2026-11-22",
        "--by", "work-order", "--format", "csv", "--station", "IM-01",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    got = {(r["work_order"], r["person"]): round(float(r["hours"]), 6) for r in rows}
    assert got == {("WO-1", "li"): 1.0, ("WO-1", "wang"): 3.0, ("WO-2", "li"): 0.25,
                   ("WO-2", "wang"): 1.0}  # fmt: skip
    assert {r["open"] for r in rows} == {"false"}
    li = labor(seeded, plant_file, "--date", "2026-11-21", "--person", "li")
    assert "li" in li.output and "*" in li.output  # still signed in: marked open


def test_bad_input_is_a_usage_error(seeded: str, plant_file: Path) -> None:
    for args in (
        ["--date", "20-11-2026"],
        ["--date", "today", "--from", "2026-11-01", "--to", "2026-11-02"],
        ["--from", "2026-11-02"],
        ["--from", "2026-11-02", "--to", "2026-11-01"],
        ["--station", "NO-SUCH"],
    ):
        result = labor(seeded, plant_file, *args)
        assert result.exit_code == 2, (args, result.output)
    empty = labor(seeded, plant_file, "--date", "2020-01-01", "--format", "csv")
    assert empty.exit_code == 0 and empty.stdout.splitlines()[0].startswith("shift_date")


def test_dates_are_plant_local(plant: PlantConfig) -> None:
    late = datetime.fromisoformat("2026-11-20T17:30:00+00:00")  # 01:30 on the 21st in Suzhou
    assert str(resolve_dates(plant, "today", None, None, late)[0]) == "2026-11-21"
    assert str(resolve_dates(plant, None, None, None, late)[0]) == "2026-11-21"
    with pytest.raises(ReportError):
        resolve_dates(plant, None, "2020-01-01", "2022-01-01", late)
