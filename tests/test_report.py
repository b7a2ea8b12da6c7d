"""`mesflow report` against a real database: figures written into machine_kpi by SQL, read
back through the public views by the CLI (table, CSV, JSON), totals time-weighted."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from mesflow.cli import main
from mesflow.report import KpiRow, display_width, kpi_oee, total_row
from tests.conftest import EXAMPLE_CONFIG

# machine, bucket, start, end, shift_date, shift_name, then figures (seconds, parts).
# Plant time zone Asia/Shanghai (+08:00). IM runs day 08-20 / night 20-08, CNC day 07:30-19:30.
KPI = [
    # IM-01 day: A 32000/40000 = 0.8, P 29400/32000, Q 1000/1050, 2 failures of 3600 s in all.
    ("IM-01", "shift", "2026-11-20 08:00+08", "2026-11-20 20:00+08", "2026-11-20", "day",
     dict(planned_s=40000, running_s=30000, microstop_s=2000, microstop_count=10, idle_s=3000,
          down_s=4000, setup_s=1000, good=1000, scrap=50, ideal_s=29400, failures=2,
          failure_s=3600)),
    # IM-02 day, half the planned time of IM-01: A 0.9, P 16800/18000, Q 1.
    ("IM-02", "shift", "2026-11-20 08:00+08", "2026-11-20 20:00+08", "2026-11-20", "day",
     dict(planned_s=20000, running_s=18000, idle_s=2000, good=600, ideal_s=16800)),
    # IM-01 night: all planned stop, PBT = 0: every KPI null.
    ("IM-01", "shift", "2026-11-20 20:00+08", "2026-11-21 08:00+08", "2026-11-20", "night",
     dict(planned_stop_s=41400)),
    ("IM-01", "shift", "2026-11-21 08:00+08", "2026-11-21 20:00+08", "2026-11-21", "day",
     dict(planned_s=40000, running_s=40000, good=1400, ideal_s=39200)),
    ("CNC-01", "shift", "2026-11-20 07:30+08", "2026-11-20 19:30+08", "2026-11-20", "day",
     dict(planned_s=39600, running_s=20000, idle_s=9600, down_s=10000, good=200, scrap=10,
          ideal_s=19950, failures=1, failure_s=10000)),
    # Hours (no shift on the row: the report labels them from the shift rows).
    ("IM-01", "hour", "2026-11-20 08:00+08", "2026-11-20 09:00+08", None, None,
     dict(planned_s=3600, running_s=3000, microstop_s=100, microstop_count=2, idle_s=500,
          good=100, scrap=5, ideal_s=2940)),
    ("IM-01", "hour", "2026-11-20 09:00+08", "2026-11-20 10:00+08", None, None,
     dict(planned_s=3600, running_s=1800, down_s=1800, good=60, ideal_s=1680, failures=1,
          failure_s=1800)),
    ("IM-02", "hour", "2026-11-20 08:00+08", "2026-11-20 09:00+08", None, None,
     dict(planned_s=1800, running_s=1800, good=60, ideal_s=1680)),
    ("CNC-01", "hour", "2026-11-20 07:00+08", "2026-11-20 08:00+08", None, None,
     dict(planned_s=1800, running_s=1800, good=18, ideal_s=1710)),
    ("IM-01", "hour", "2026-11-21 07:00+08", "2026-11-21 08:00+08", None, None,
     dict(planned_stop_s=3600)),
]  # fmt: skip

REASONS = [
    ("IM-01", "shift", "2026-11-20 08:00+08", "hydraulic_fault", 4000, 2),
    ("IM-01", "shift", "2026-11-20 08:00+08", "no_operator", 3000, 1),
    ("IM-01", "shift", "2026-11-20 08:00+08", "mold_change", 1000, 1),
    ("IM-02", "shift", "2026-11-20 08:00+08", "material_shortage", 2000, 1),
    ("IM-01", "shift", "2026-11-21 08:00+08", "hydraulic_fault", 99999, 9),  # another day
    ("CNC-01", "shift", "2026-11-20 07:30+08", "tool_break", 10000, 1),
    ("CNC-01", "shift", "2026-11-20 07:30+08", "unassigned", 9600, 3),
    ("IM-01", "hour", "2026-11-20 08:00+08", "no_operator", 500, 1),
    ("IM-01", "hour", "2026-11-20 09:00+08", "hydraulic_fault", 1800, 1),
]


@pytest.fixture
def kpi_db(db_url: str) -> str:
    with psycopg.connect(db_url) as conn:
        for machine, bucket, start, end, sdate, sname, figures in KPI:
            cols = ", ".join(figures)
            marks = ", ".join(["%s"] * len(figures))
            conn.execute(
                f"INSERT INTO machine_kpi (machine, bucket, bucket_start, bucket_end, shift_date,"
                f" shift_name, {cols}) VALUES (%s, %s, %s, %s, %s, %s, {marks})",
                (machine, bucket, start, end, sdate, sname, *figures.values()),
            )
        conn.cursor().executemany(
            "INSERT INTO machine_kpi_reason VALUES (%s, %s, %s, %s, %s, %s)", REASONS
        )
    return db_url


def run(url: str, *args: str) -> Result:
    env = {
        "MESFLOW_DATABASE_URL": url,
        "MESFLOW_PLANT_CONFIG": str(EXAMPLE_CONFIG),
        "MESFLOW_LANGUAGE": "en",
    }
    return CliRunner().invoke(main, ["report", *args], env=env)


def ok(url: str, *args: str) -> str:
    result = run(url, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def as_json(url: str, *args: str) -> list[dict[str, Any]]:
    data = json.loads(ok(url, *args, "--format", "json"))
    assert isinstance(data, list)
    return data


def table(text: str) -> list[dict[str, str]]:
    """Parse an aligned text table: column spans come from the dashed rule under the header."""
    lines = text.splitlines()
    rule = next(i for i, ln in enumerate(lines) if ln.startswith("---"))
    spans, pos = [], 0
    for dashes in lines[rule].split("  "):
        spans.append((pos, pos + len(dashes)))
        pos += len(dashes) + 2
    header = [lines[rule - 1][a:b].strip() for a, b in spans]
    return [
        dict(zip(header, (ln[a:b].strip() for a, b in spans), strict=True))
        for ln in lines[rule + 1 :]
        if ln.strip()
    ]


# -- scope and time-weighted totals -------------------------------------------------------


def test_machine_table_with_time_weighted_total_and_null_shift(kpi_db: str) -> None:
    out = ok(kpi_db, "--machine", "IM-01", "--date", "2026-11-20")
    assert "machine IM-01 (Press 1 (Haitian 250t))" in out
    assert "Asia/Shanghai" in out
    day, night, total = table(out)
    assert day["start"] == "2026-11-20 08:00" and day["shift"] == "day"
    assert day["planned h"] == "11:07"  # 40000 s = 666.7 min
    assert day["APT h"] == "8:53"  # 32000 s
    assert day["downtime h"] == "2:13"  # idle + down + setup = 8000 s
    assert day["microstops"] == "10"
    assert day["avail"] == "80.0%"
    assert day["perf"] == "91.9%"  # 29400 / 32000
    assert day["quality"] == "95.2%"
    assert day["OEE"] == "70.0%"
    assert (day["good"], day["scrap"], day["failures"]) == ("1000", "50", "2")
    assert day["MTTR"] == "0:30" and day["MTBF"] == "4:27"  # 3600/2, 32000/2
    # PBT = 0: every KPI blank; no failures: MTTR and MTBF blank.
    assert night["start"] == "2026-11-20 20:00" and night["shift"] == "night"
    for col in ("avail", "perf", "quality", "OEE", "MTTR", "MTBF"):
        assert night[col] == ""
    assert night["planned h"] == "0:00"
    # The total adds the night's zero planned time: same ratios as the day alone.
    assert total["start"] == "total"
    assert (total["avail"], total["OEE"], total["good"]) == ("80.0%", "70.0%", "1000")


def test_line_is_time_weighted_not_mean_of_machines(kpi_db: str) -> None:
    [line] = as_json(kpi_db, "--line", "IM", "--shift", "2026-11-20/day")
    # 50000 APT / 60000 PBT; the mean of the machines' 0.8 and 0.9 would be 0.85.
    assert line["availability"] == pytest.approx(50000 / 60000, abs=5e-5)
    assert line["performance"] == pytest.approx(46200 / 50000, abs=5e-5)
    assert line["quality"] == pytest.approx(1600 / 1650, abs=5e-5)
    assert line["oee"] == pytest.approx(50000 / 60000 * 46200 / 50000 * 1600 / 1650, abs=5e-5)
    assert (line["planned_s"], line["apt_s"], line["good"], line["scrap"]) == (
        60000,
        50000,
        1600,
        50,
    )
    assert line["bucket_start"] == "2026-11-20T08:00:00+08:00"
    assert line["shift_date"] == "2026-11-20" and line["shift_name"] == "day"

    # The report's own total over the machines equals the SQL line figures.
    machines = [
        KpiRow(**{**r, "bucket_start": None, "bucket_end": None, "shift_date": None})
        for m in ("IM-01", "IM-02")
        for r in as_json(kpi_db, "--machine", m, "--shift", "2026-11-20/day")
    ]
    total = total_row(machines)
    for key in ("availability", "performance", "quality", "oee", "mttr_s", "mtbf_s"):
        assert getattr(total, key) == pytest.approx(
            line[key], abs=0.05 if key.endswith("_s") else 5e-5
        ), key

    [*_, text_total] = table(ok(kpi_db, "--line", "IM", "--shift", "2026-11-20/day"))
    assert text_total["avail"] == "83.3%"


def test_plant_scope_groups_shifts_by_date_and_name(kpi_db: str) -> None:
    rows = as_json(kpi_db, "--date", "2026-11-20")
    assert [(r["shift_name"], r["bucket_start"]) for r in rows] == [
        ("day", "2026-11-20T07:30:00+08:00"),  # CNC's day starts first
        ("night", "2026-11-20T20:00:00+08:00"),
    ]
    day = rows[0]
    assert day["planned_s"] == 99600 and day["apt_s"] == 70000
    assert day["availability"] == pytest.approx(70000 / 99600, abs=5e-5)
    assert day["failures"] == 3 and day["mttr_s"] == pytest.approx(13600 / 3, abs=0.05)
    assert rows[1]["availability"] is None and rows[1]["oee"] is None
    out = ok(kpi_db, "--date", "2026-11-20")
    assert "plant demo (Demo plant Suzhou)" in out


def test_null_rules_match_sql() -> None:
    assert kpi_oee(0, 0, 0, 0, 0) is None
    assert kpi_oee(3600, 0, 0, 0, 0) == 0.0  # planned, nothing ran: OEE 0, not unknown
    assert kpi_oee(3600, 3600, 3600, 0, 0) == 0.0  # ran but no parts
    empty = total_row([])
    assert empty.availability is None and empty.mttr_s is None


# -- periods and granularity -------------------------------------------------------------


def test_by_hour_labels_hours_with_their_shift(kpi_db: str) -> None:
    rows = as_json(kpi_db, "--line", "IM", "--date", "2026-11-20", "--by", "hour")
    assert [(r["bucket_start"], r["shift_name"]) for r in rows] == [
        ("2026-11-20T08:00:00+08:00", "day"),
        ("2026-11-20T09:00:00+08:00", "day"),
    ]
    assert rows[0]["planned_s"] == 5400 and rows[0]["apt_s"] == 4900
    assert rows[0]["microstop_count"] == 2
    assert rows[1]["failures"] == 1 and rows[1]["mttr_s"] == 1800

    # The hours of one shift instance: the night's hour after midnight, on the next date.
    [hour] = as_json(kpi_db, "--machine", "IM-01", "--shift", "2026-11-20/night", "--by", "hour")
    assert hour["bucket_start"] == "2026-11-21T07:00:00+08:00"
    assert (hour["shift_date"], hour["shift_name"]) == ("2026-11-20", "night")
    assert hour["availability"] is None

    # An hour that overlaps a shift starting at 07:30 belongs to it.
    [cnc] = as_json(kpi_db, "--line", "CNC", "--shift", "2026-11-20/day", "--by", "hour")
    assert cnc["bucket_start"] == "2026-11-20T07:00:00+08:00" and cnc["shift_name"] == "day"

    by_hour = table(ok(kpi_db, "--line", "IM", "--date", "2026-11-20", "--by", "hour"))
    assert [r["start"] for r in by_hour] == ["2026-11-20 08:00", "2026-11-20 09:00", "total"]
    assert by_hour[-1]["planned h"] == "2:30"  # 9000 s


def test_date_range_is_inclusive_from_exclusive_to(kpi_db: str) -> None:
    rows = as_json(kpi_db, "--machine", "IM-01", "--from", "2026-11-20", "--to", "2026-11-22")
    assert [(r["shift_date"], r["shift_name"]) for r in rows] == [
        ("2026-11-20", "day"),
        ("2026-11-20", "night"),
        ("2026-11-21", "day"),
    ]
    rows = as_json(kpi_db, "--machine", "IM-01", "--from", "2026-11-21", "--to", "2026-11-22")
    assert [r["shift_date"] for r in rows] == ["2026-11-21"]


def test_csv_has_raw_numbers_and_plant_times(kpi_db: str) -> None:
    text = ok(kpi_db, "--line", "IM", "--date", "2026-11-20", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == [f for f in KpiRow.__dataclass_fields__]
    day, night = rows
    assert day["bucket_start"] == "2026-11-20T08:00:00+08:00"
    assert day["bucket_end"] == "2026-11-20T20:00:00+08:00"
    assert float(day["planned_s"]) == 60000 and day["good"] == "1600"
    assert float(day["availability"]) == pytest.approx(50000 / 60000, abs=5e-5)
    assert night["availability"] == "" and night["oee"] == ""  # null: empty field


def test_no_figures_is_a_message_and_exit_0(kpi_db: str) -> None:
    result = run(kpi_db, "--machine", "IM-03", "--date", "2026-11-20")
    assert result.exit_code == 0
    assert "no figures for machine IM-03" in result.stdout
    result = run(kpi_db, "--date", "2027-01-01", "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []  # still parseable; the notice goes to stderr
    assert "no figures for plant demo" in result.stderr


# -- downtime by reason ------------------------------------------------------------------


def test_reasons_pareto(kpi_db: str) -> None:
    rows = as_json(kpi_db, "--line", "IM", "--date", "2026-11-20", "--reasons")
    assert [(r["reason"], r["seconds"], r["stops"]) for r in rows] == [
        ("hydraulic_fault", 4000, 2),
        ("no_operator", 3000, 1),
        ("material_shortage", 2000, 1),
        ("mold_change", 1000, 1),
    ]
    assert rows[0]["category"] == "technical" and rows[0]["reason_zh"] == "液压故障"
    assert rows[0]["share"] == pytest.approx(0.4)

    en = table(ok(kpi_db, "--line", "IM", "--date", "2026-11-20", "--reasons", "--lang", "en"))
    assert [r["name"] for r in en[:2]] == ["Hydraulic fault", "No operator"]
    assert (en[0]["time h"], en[0]["share"], en[1]["cumulative"]) == ("1:07", "40.0%", "70.0%")
    assert en[-1]["reason"] == "total" and en[-1]["time h"] == "2:47"  # 10000 s
    zh = ok(kpi_db, "--line", "IM", "--date", "2026-11-20", "--reasons", "--lang", "zh")
    rows_zh = zh.splitlines()[4:8]
    assert "注塑线" in zh and "液压故障" in rows_zh[0] and "缺料" in rows_zh[2]
    # Chinese names take two terminal columns each: the columns after them still line up.
    times = ("1:07", "0:50", "0:33", "0:17")
    assert len({display_width(r[: r.index(t)]) for r, t in zip(rows_zh, times, strict=True)}) == 1

    plant = as_json(kpi_db, "--date", "2026-11-20", "--reasons")
    assert [r["reason"] for r in plant[:3]] == ["tool_break", "unassigned", "hydraulic_fault"]
    assert plant[1]["category"] == "unassigned"

    hourly = as_json(
        kpi_db, "--machine", "IM-01", "--date", "2026-11-20", "--by", "hour", "--reasons"
    )
    assert [(r["reason"], r["seconds"]) for r in hourly] == [
        ("hydraulic_fault", 1800),
        ("no_operator", 500),
    ]
    one_shift = as_json(
        kpi_db, "--machine", "IM-01", "--shift", "2026-11-21/day", "--reasons", "--by", "hour"
    )
    assert one_shift == []  # no hour rows written for that shift


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--machine", "IM-99", "--date", "2026-11-20"], "unknown machine 'IM-99'; valid machines: IM-01, IM-02"),
        (["--line", "PAINT", "--date", "2026-11-20"], "unknown line 'PAINT'; valid lines: IM, CNC"),
        (["--line", "IM", "--machine", "IM-01", "--date", "2026-11-20"], "not both"),
        (["--date", "2026-13-01"], "--date: '2026-13-01' is not a date"),
        (["--date", "tomorrow"], "is not a date like 2026-11-20 (or today, yesterday)"),
        (["--shift", "2026-11-20"], "is not DATE/NAME"),
        (["--shift", "2026-11-31/day"], "--shift: '2026-11-31' is not a date"),
        (["--line", "CNC", "--shift", "2026-11-20/night"], "unknown shift 'night'; valid shifts: day"),
        (["--from", "2026-11-20"], "--from needs --to"),
        (["--from", "2026-11-22", "--to", "2026-11-20"], "must be after --from"),
        ([], "give one period"),
        (["--date", "2026-11-20", "--shift", "2026-11-20/day"], "give one period"),
        (["--date", "2026-11-20", "--format", "xml"], "'xml' is not one of"),
    ],
)  # fmt: skip
def test_errors(kpi_db: str, args: list[str], message: str) -> None:
    result = run(kpi_db, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_reads_only_the_public_views(kpi_db: str) -> None:
    """A role that may read the KPI views and nothing else gets the same report."""
    role = f"report_{uuid.uuid4().hex[:8]}"
    views = ", ".join(
        [f"v_kpi_{s}_{b}" for s in ("machine", "line", "plant") for b in ("hour", "shift")]
        + ["v_downtime_by_reason"]
    )
    info = psycopg.conninfo.conninfo_to_dict(kpi_db)
    with psycopg.connect(kpi_db, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON {views} TO {role}")
    try:
        info["user"] = role
        url = psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]
        for args in (
            ("--line", "IM", "--date", "2026-11-20", "--by", "hour"),
            ("--date", "2026-11-20", "--reasons"),
            ("--machine", "IM-01", "--shift", "2026-11-20/day", "--by", "hour", "--reasons"),
        ):
            assert ok(url, *args, "--format", "json") == ok(kpi_db, *args, "--format", "json")
    finally:
        with psycopg.connect(kpi_db, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    result = run(f"postgresql://nobody@/mesflow?host={tmp_path}", "--date", "2026-11-20")
    assert result.exit_code == 1
    assert "cannot reach the database at postgresql://nobody@" in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


# -- today, yesterday, the current shift; numbers without float noise ---------------------


def _plant() -> Any:
    from mesflow.plant import load_plant_config

    return load_plant_config(EXAMPLE_CONFIG)


def test_today_and_yesterday_are_plant_local_dates() -> None:
    from datetime import date, datetime

    from mesflow.report import Period, Scope, resolve_period

    plant = _plant()
    # 17:30 UTC on the 20th is 01:30 on the 21st in Shanghai: "today" is the 21st there.
    now = datetime.fromisoformat("2026-11-20T17:30:00+00:00")
    plant_scope = Scope("plant")
    assert resolve_period(plant, plant_scope, day="today", now=now) == Period(
        date(2026, 11, 21), date(2026, 11, 22)
    )
    assert resolve_period(plant, plant_scope, day="Yesterday", now=now).start == date(2026, 11, 20)
    period = resolve_period(plant, plant_scope, shift="yesterday/night", now=now)
    assert (period.start, period.shift) == (date(2026, 11, 20), "night")
    week = resolve_period(plant, plant_scope, date_from="2026-11-14", date_to="today", now=now)
    assert week.end == date(2026, 11, 21)


def test_current_shift_is_the_one_running_in_the_scope_calendar() -> None:
    from datetime import date, datetime

    from mesflow.report import ReportError, Scope, resolve_period

    plant = _plant()
    # 01:30 on Saturday the 21st: the molding night shift that began on the 20th.
    night = datetime.fromisoformat("2026-11-21T01:30:00+08:00")
    period = resolve_period(plant, Scope("line", "IM"), shift="current", now=night)
    assert (period.start, period.shift) == (date(2026, 11, 20), "night")
    # 07:45 on Friday: the CNC line's own day shift (07:30-19:30) has begun.
    morning = datetime.fromisoformat("2026-11-20T07:45:00+08:00")
    period = resolve_period(plant, Scope("machine", "CNC-01"), shift="current", now=morning)
    assert (period.start, period.shift) == (date(2026, 11, 20), "day")
    # Sunday: the CNC line has no shift at all.
    sunday = datetime.fromisoformat("2026-11-22T10:00:00+08:00")
    with pytest.raises(ReportError, match="no shift is running now"):
        resolve_period(plant, Scope("line", "CNC"), shift="current", now=sunday)


def test_today_and_current_shift_through_the_cli_without_float_noise(db_url: str) -> None:
    from datetime import datetime, timedelta

    from mesflow.report import Scope, current_shift

    plant = _plant()
    now = datetime.now(plant.tz)
    sdate, sname = current_shift(plant, Scope("machine", "IM-01"), now)
    start = now.replace(minute=0, second=0, microsecond=0)
    # Sums of many float durations carry noise like 13895.642999999998.
    noisy = dict(planned_s=13895.642999999998, running_s=11000.1 + 0.2, microstop_s=0.30000000000000004,
                 idle_s=2895.042999999998, good=400, scrap=3, ideal_s=10000.000000000002)  # fmt: skip
    with psycopg.connect(db_url) as conn:
        cols = ", ".join(noisy)
        conn.execute(
            "INSERT INTO machine_kpi (machine, bucket, bucket_start, bucket_end, shift_date,"
            f" shift_name, {cols}) VALUES (%s, 'shift', %s, %s, %s, %s, "
            + ", ".join(["%s"] * len(noisy))
            + ")",
            ("IM-01", start, start + timedelta(hours=1), sdate, sname, *noisy.values()),
        )
    text = ok(db_url, "--machine", "IM-01", "--shift", "current", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows  # the shift (and a total row when there are several)
    first = rows[0]
    assert first["shift_date"] == sdate.isoformat() and first["shift_name"] == sname
    assert first["planned_s"] == "13895.6" and first["apt_s"] == "11000.6"
    assert first["ideal_s"] == "10000.0"
    for row in rows:
        for name, value in row.items():
            if name.endswith("_s") and value:
                assert len(value.partition(".")[2]) <= 1, (name, value)
            elif name in ("availability", "performance", "quality", "oee") and value:
                assert len(value.partition(".")[2]) <= 4, (name, value)
    assert float(first["availability"]) == round(11000.6 / 13895.642999999998, 4)
    # --date today finds the same figures when the shift began today.
    if sdate == now.date():
        today = list(csv.DictReader(io.StringIO(ok(db_url, "--machine", "IM-01", "--date",
                                                   "today", "--format", "csv"))))  # fmt: skip
        assert today[0]["planned_s"] == "13895.6"
    data = as_json(db_url, "--machine", "IM-01", "--shift", "current")
    assert data[0]["planned_s"] == 13895.6
