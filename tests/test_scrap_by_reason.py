"""Scrap by reason and product (issue 9, item 3): the machine tracker keeps scrap per hour,
reason and product; the sink stores each machine-hour's set in `machine_scrap`; the public
view `v_scrap_by_reason` gives it with line, shift and reason names.

In memory: a scrap report with a reason moves parts, machine-counted scrap is `unspecified`,
the product is the active work order's, a late event merged by a rebuild gives the in-order
sets, and a snapshot from before this feature still loads. Through the real dataflow (a replay
into PostgreSQL): the view equals hand-computed figures, also with a late report merged, a
huge quantity and a reason code outside the reason tree.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
from dataclasses import fields
from datetime import date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dashboards import scrap_queries as sq
from dashboards.analytics_queries import Filters
from dashboards.pages import analytics as an
from dashboards.pages import analytics_scrap
from dashboards.queries import Database
from mesflow.events import MAX_COUNT, parse_event
from mesflow.plant import PlantConfig
from mesflow.report import Scope
from streams.hour_clock import to_us
from streams.machine_tracker import UNSPECIFIED, MachineSpec, MachineTracker
from streams.records import ScrapSetRow
from streams.replay import replay_file
from tests.test_machine_tracker import PLANT, ev, run, run_merging

H10 = datetime.fromisoformat("2026-11-20T10:00:00+08:00")
H11 = datetime.fromisoformat("2026-11-20T11:00:00+08:00")
H12 = datetime.fromisoformat("2026-11-20T12:00:00+08:00")


def scrap(rows: dict[Any, Any], hour: datetime) -> dict[tuple[str, str], int]:
    row = rows.get(("ScrapSetRow", hour))
    assert row is None or isinstance(row, ScrapSetRow)
    return {} if row is None else {(r, p): q for r, p, q in row.items}


def work_order(minutes: float, wo: str, product: str) -> dict[str, Any]:
    e = ev("work_order", minutes, work_order=wo, order_no="SO-1", product=product, qty=100)
    del e["machine"]
    return e


# T0 is 10:50 on a Friday, inside the day shift (08:00-20:00).
BASE = [
    work_order(-60, "WO-A", "P-100"),
    ev("state", 0, state="running"),
    ev("count", 1, good=5),
    ev("count", 2, good=3, scrap=2),  # 10:52, no work order: unspecified / unknown
    ev("wo_start", 12, work_order="WO-A"),  # 11:02
    ev("count", 13, good=10, scrap=1),  # unspecified / P-100
    ev("scrap_report", 14, qty=3, reason="short_shot"),  # 11:04
    ev("scrap_report", 15, qty=1),  # a report without a reason: unspecified
    ev("counter", 16, name="scrap", value=50),  # baseline
    ev("counter", 17, name="scrap", value=54),  # +4 counted by the machine: unspecified
    ev("wo_end", 20, work_order="WO-A"),  # 11:10
    ev("scrap_report", 21, qty=2, reason="flash"),  # no work order: unknown product
    ev("count", 75, good=1),  # 12:05
]


def test_scrap_by_reason_and_product_in_an_hour() -> None:
    rows, rejected = run(BASE)
    assert rejected == []
    assert scrap(rows, H10) == {(UNSPECIFIED, "unknown"): 2}
    assert scrap(rows, H11) == {
        (UNSPECIFIED, "P-100"): 1 + 1 + 4,
        ("short_shot", "P-100"): 3,
        ("flash", "unknown"): 2,
    }
    # Only hours whose scrap changed are written.
    assert ("ScrapSetRow", H12) not in rows and ("HourRow", H12) in rows
    # The sets add up to the hour's scrap, and reports moved good parts into scrap.
    hour = rows[("HourRow", H11)]
    assert sum(scrap(rows, H11).values()) == hour.scrap == 11
    assert hour.good == 10 - 3 - 1 - 4 - 2


def test_an_hour_counts_on_its_shift_date_or_its_own_date() -> None:
    """The night shift's hours after midnight count on the date the shift starts; an hour
    outside every shift (the CNC cell works one day shift) on its own plant-local date."""

    def rows_of(machine: str, events: list[dict[str, Any]]) -> list[ScrapSetRow]:
        tracker = MachineTracker(MachineSpec.from_plant(PLANT, machine))
        for i, e in enumerate(events):
            tracker.apply(i, parse_event(json.dumps({**e, "machine": machine})))  # type: ignore[arg-type]
        return [r for r in tracker.flush() if isinstance(r, ScrapSetRow) and r.items]

    night = [ev("state", 840, state="running"), ev("scrap_report", 855, qty=1)]  # Sat 01:05
    (im,) = rows_of("IM-01", night)
    assert (im.day, im.shift_name) == (date(2026, 11, 20), "night")
    (cnc,) = rows_of("CNC-01", night)
    assert (cnc.day, cnc.shift_name) == (date(2026, 11, 21), None)
    (cnc_day,) = rows_of("CNC-01", [ev("state", 0, state="running"), ev("count", 5, scrap=1)])
    assert (cnc_day.day, cnc_day.shift_name) == (date(2026, 11, 20), "day")


def test_a_late_work_order_product_moves_scrap_to_it() -> None:
    """The product takes effect from the work_order event's ts: a late one (within the
    allowed lateness) moves the scrap counted since into its product."""
    events = [
        ev("state", 0, state="running"),
        ev("wo_start", 11, work_order="WO-B"),  # 11:01, product not known yet
        ev("scrap_report", 13, qty=2, reason="short_shot"),
        ev("count", 14, good=1, scrap=1),
        ev("count", 16, good=1),
    ]
    before, _ = run(events, batch=1)
    assert scrap(before, H11) == {("short_shot", "unknown"): 2, (UNSPECIFIED, "unknown"): 1}
    late = work_order(12, "WO-B", "P-200")  # 11:02, arrives after 11:06
    after, _ = run([*events, late], batch=1)
    assert scrap(after, H11) == {("short_shot", "P-200"): 2, (UNSPECIFIED, "P-200"): 1}
    in_order, _ = run(sorted([*events, late], key=lambda e: e["ts"]), batch=1)
    assert after == in_order


def test_a_late_scrap_report_is_merged_by_a_rebuild() -> None:
    """Later than the allowed lateness: the machine is rebuilt from a checkpoint, and the
    hour's set is written again with the report in it, as if it had come in order."""
    events = [*BASE]
    late = ev("scrap_report", 18, qty=5, reason="dimension_out")  # 11:08
    in_order, _ = run(sorted([*events, late], key=lambda e: e["ts"]), batch=3)
    merged, rebuilds = run_merging([*events, late], batch=3, every=1)
    assert rebuilds == 1
    assert merged == in_order
    assert scrap(merged, H11)[("dimension_out", "P-100")] == 5


def test_a_stale_scrap_counter_reading_does_not_touch_reports() -> None:
    """A late counter reading recounts only that counter's parts, not scrap reports whose
    reason happens to equal the counter's name."""
    events = [
        ev("state", 0, state="running"),
        ev("counter", 1, name="scrap", value=10),
        ev("scrap_report", 3, qty=2, reason="scrap"),
        ev("counter", 4, name="scrap", value=13),
    ]
    late = ev("counter", 2, name="scrap", value=11)
    got, _ = run([*events, late], batch=1)
    want, _ = run(sorted([*events, late], key=lambda e: e["ts"]), batch=1)
    assert got == want
    assert scrap(got, H10) == {(UNSPECIFIED, "unknown"): 3, ("scrap", "unknown"): 2}


def test_an_hour_whose_scrap_moves_away_is_written_empty() -> None:
    """A late scrap-counter reading moves the counted scrap into the previous hour: the later
    hour's set is written again, empty, so that its stored rows are deleted."""
    tracker = MachineTracker(MachineSpec.from_plant(PLANT, "IM-01"))
    events = [
        ev("state", 60, state="running"),  # 11:50
        ev("counter", 68, name="scrap", value=10),  # 11:58, baseline
        ev("counter", 71, name="scrap", value=14),  # 12:01: +4 in hour 12
        ev("counter", 69, name="scrap", value=14),  # 11:59, late: the 4 were before noon
    ]
    written: list[ScrapSetRow] = []
    for i, e in enumerate(events):
        tracker.apply(i, parse_event(json.dumps(e)))  # type: ignore[arg-type]
        written += [r for r in tracker.flush() if isinstance(r, ScrapSetRow)]
    last = {r.hour_start: r.items for r in written}
    assert last == {H11: ((UNSPECIFIED, "unknown", 4),), H12: ()}
    assert [r.items for r in written if r.hour_start == H12] == [((UNSPECIFIED, "unknown", 4),), ()]


def _old_snapshot(tracker: MachineTracker) -> bytes:
    """The tracker pickled as the version before scrap by reason did: no `scrap` field, part
    classes without a product, scrap reports as kind 1 without their reason."""
    state = tracker.__getstate__()
    del state["scrap"]
    state["parts"] = [
        (t, o, 1 if kind == 2 else kind, g, s, None if kind == 2 else src, cls[:5])
        for t, o, kind, g, s, src, cls in tracker.parts
    ]
    state["runs"] = [((g, s, cls[:5]), ts) for (g, s, cls), ts in tracker.runs]
    old = MachineTracker.__new__(MachineTracker)
    old.__dict__.update(state)
    data = pickle.dumps(old)
    assert b"_upgrade_scrap" not in data
    return data


def test_a_snapshot_from_before_scrap_by_reason_still_loads() -> None:
    spec = MachineSpec.from_plant(PLANT, "IM-01")
    tracker = MachineTracker(spec)
    first = [parse_event(json.dumps(e)) for e in BASE[:9]]  # up to 11:06, all within lateness
    for i, e in enumerate(first):
        tracker.apply(i, e)  # type: ignore[arg-type]
    tracker.flush()
    loaded = pickle.loads(_old_snapshot(tracker))
    assert isinstance(loaded, MachineTracker)
    assert hasattr(loaded, "scrap")
    assert all(len(p[6]) == 6 for p in loaded.parts)
    assert all(len(key[2]) == 6 for key, _ in loaded.runs)
    # Parts it still keeps seed their hours (reasons of old reports are not in old snapshots).
    h11 = to_us(H11)
    assert loaded.scrap[h11] == {(UNSPECIFIED, "P-100"): 1 + 3 + 1}
    # It goes on: new scrap, and a late product change that revises the kept parts, never
    # leaving a negative or zero item behind.
    more = [
        ev("scrap_report", 16, qty=2, reason="flash"),
        work_order(13, "WO-A", "P-200"),  # 11:03: the parts from then on are P-200's
        ev("count", 17, good=1),
    ]
    rows: list[Any] = []
    for i, raw in enumerate(more, start=100):
        loaded.apply(i, parse_event(json.dumps(raw)))  # type: ignore[arg-type]
        rows.extend(loaded.flush())
    last = [r for r in rows if isinstance(r, ScrapSetRow) and r.hour_start == H11][-1]
    # Everything from 11:03 on moved to P-200: the seeded parts and the new report.
    assert {(r, p): q for r, p, q in last.items} == {
        (UNSPECIFIED, "P-200"): 1 + 3 + 1,
        ("flash", "P-200"): 2,
    }


# -- through the real dataflow and PostgreSQL ------------------------------------------------


def _line(kind: str, ts: str, machine: str | None = "IM-02", **fields: Any) -> dict[str, Any]:
    if kind in ("scrap", "wo_start", "wo_end"):
        e: dict[str, Any] = {"type": "report", "kind": kind, "ts": ts, **fields}
    else:
        e = {"type": kind, "ts": ts, **fields}
    if machine is not None:
        e["machine"] = machine
    return e


def _day(hh_mm: str, day: int = 20) -> str:
    return f"2026-11-{day}T{hh_mm}:00+08:00"


def test_view_through_the_dataflow(db_url: str, plant: PlantConfig, tmp_path: Path) -> None:
    events = [
        _line(
            "work_order",
            _day("07:00"),
            None,
            work_order="WO-9",
            order_no="SO-9",
            product="P-100",
            qty=500,
        ),
        _line("state", _day("08:00"), state="running"),
        _line("wo_start", _day("08:00"), work_order="WO-9"),
        _line("count", _day("08:10"), good=10),
        _line("count", _day("08:20"), good=5, scrap=2),  # unspecified, P-100
        _line("scrap", _day("08:30"), qty=3, reason="short_shot"),
        _line("scrap", _day("08:40"), qty=1),  # no reason: unspecified
        _line("wo_end", _day("09:00"), work_order="WO-9"),
        _line("count", _day("09:10"), good=1, scrap=1),  # unspecified, unknown
        _line("scrap", _day("09:20"), qty=2, reason="flash"),  # flash, unknown
        _line("counter", _day("09:30"), name="scrap", value=100),
        _line("counter", _day("09:40"), name="scrap", value=104),  # unspecified, unknown +4
        # Later than the allowed lateness (5 min behind 09:40): merged by a rebuild.
        _line("scrap", _day("08:50"), qty=2, reason="short_shot"),
        # Hostile but valid: the contract's largest quantity, twice in one hour (more than
        # an int4 holds), and a reason code outside the reason tree (the contract leaves a
        # scrap reason free; it is stored as given, category "other").
        _line("scrap", _day("20:30"), qty=MAX_COUNT, reason="short_shot"),
        _line("scrap", _day("20:31"), qty=MAX_COUNT, reason="short_shot"),
        _line("scrap", _day("20:32"), qty=7, reason="no_such_reason"),
        _line("count", _day("20:40"), good=1),
    ]
    for i, e in enumerate(events):
        e["id"] = f"scrap-{i}"
    path = tmp_path / "scrap.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    replay_file(path, plant, db_url, tmp_path / "rec", progress=False)

    with psycopg.connect(db_url) as conn:
        got = {
            (h.astimezone(plant.tz).strftime("%H:%M"), reason, product): (
                qty,
                day,
                shift,
                line,
                cat,
            )
            for h, reason, product, qty, day, shift, line, cat in conn.execute(
                "SELECT hour_start, reason, product, qty, shift_date::text, shift_name, line, "
                "category FROM v_scrap_by_reason WHERE machine = 'IM-02'"
            ).fetchall()
        }
        hours: dict[datetime, int] = dict(
            conn.execute(
                "SELECT hour_start, scrap FROM machine_hour WHERE machine = 'IM-02'"
            ).fetchall()
        )
        by_hour: dict[datetime, int] = dict(
            conn.execute(
                "SELECT hour_start, sum(qty) FROM machine_scrap WHERE machine = 'IM-02' "
                "GROUP BY hour_start"
            ).fetchall()
        )
        dead = conn.execute("SELECT reason FROM dead_letter").fetchall()
    assert dead == []
    day, night = ("2026-11-20", "day", "IM"), ("2026-11-20", "night", "IM")
    assert got == {
        ("08:00", "unspecified", "P-100"): (2 + 1, *day, "unspecified"),
        ("08:00", "short_shot", "P-100"): (3 + 2, *day, "quality"),
        ("09:00", "unspecified", "unknown"): (1 + 4, *day, "unspecified"),
        ("09:00", "flash", "unknown"): (2, *day, "quality"),
        ("20:00", "short_shot", "unknown"): (2 * MAX_COUNT, *night, "quality"),
        ("20:00", "no_such_reason", "unknown"): (7, *night, "other"),
    }
    # Every hour's sets add up to the hour's scrap.
    assert {h: s for h, s in hours.items() if s} == by_hour
    _check_panel(db_url, plant)


def _check_panel(db_url: str, plant: PlantConfig) -> None:
    """The analytics panel's query, chart, table and CSV over the replayed figures."""
    tz = plant.tz
    db = Database(db_url)
    try:

        def filters(scope: Scope, shift: str | None = None, day: int = 20) -> Filters:
            return Filters(date(2026, 11, day), date(2026, 11, day + 1), scope, shift)

        rows = sq.scrap_by_reason(db, filters(Scope("plant")), tz)
        want = {
            ("short_shot", "unknown"): 2 * MAX_COUNT,
            ("no_such_reason", "unknown"): 7,
            ("unspecified", "unknown"): 5,
            ("short_shot", "P-100"): 5,
            ("unspecified", "P-100"): 3,
            ("flash", "unknown"): 2,
        }
        assert {(r.reason, r.product): r.qty for r in rows} == want
        assert [r.qty for r in rows] == sorted(want.values(), reverse=True)
        assert sum(r.share or 0 for r in rows) == pytest.approx(1.0)
        assert sq.scrap_by_reason(db, filters(Scope("machine", "IM-02")), tz) == rows
        assert sq.scrap_by_reason(db, filters(Scope("line", "CNC")), tz) == []
        # The night shift of the 20th ends on the 21st: it stays on the 20th.
        assert sq.scrap_by_reason(db, filters(Scope("plant"), day=21), tz) == []
        day = sq.scrap_by_reason(db, filters(Scope("line", "IM"), "day"), tz)
        assert {(r.reason, r.product): r.qty for r in day} == {
            k: v for k, v in want.items() if k[1] == "P-100" or k[0] in ("flash", "unspecified")
        }
        night = sq.scrap_by_reason(db, filters(Scope("plant"), "night"), tz)
        assert sum(r.qty for r in night) == 2 * MAX_COUNT + 7

        # The chart: one bar per reason (most first), stacked by product; the table; the CSV.
        fig = analytics_scrap.figure(rows, plant, "en")
        assert fig.layout.barmode == "stack"
        order = ["short_shot", "unspecified", "no_such_reason", "flash"]
        assert list(fig.data[0].customdata) == order
        totals = [sum(tr.y[i] for tr in fig.data) for i in range(4)]
        assert totals == [2 * MAX_COUNT + 5, 8, 7, 2]
        assert {tr.name for tr in fig.data} == {"P-100 Housing top", "Unknown product"}
        zh = analytics_scrap.figure(rows, plant, "zh")
        assert "缺胶" in zh.data[0].x and "未注明原因" in zh.data[0].x
        table = analytics_scrap.scrap_table(rows, plant, "zh")
        assert len(table.children[1].children) == len(rows)
        name, text = analytics_scrap.export(db, filters(Scope("plant")), tz)
        assert name == "scrap_plant_2026-11-20_2026-11-20.csv"
        got = list(csv.DictReader(io.StringIO(text)))
        assert list(got[0]) == [fl.name for fl in fields(sq.ScrapRow)]
        assert {(r["reason"], r["product"]): int(r["qty"]) for r in got} == want
        assert {r["reason"]: r["category"] for r in got}["no_such_reason"] == "other"
    finally:
        db.close()


def test_defect_codes_scrapped_read_by_their_names(plant: PlantConfig) -> None:
    """A `defect` report scrapped names a defect code, which the view does not name (it joins
    the reason tree): the page showed 'sink_mark' in Chinese, under 'other'."""

    def row(reason: str, category: str = "other", en: str | None = None) -> sq.ScrapRow:
        return sq.ScrapRow(reason, category, en, None, "P-100", 3, 0.25)

    sink, burr, odd, flash = row("sink_mark"), row("burr"), row("no_such_code"), row("flash")
    assert analytics_scrap.reason_name(sink, plant, "zh") == "缩痕"
    assert analytics_scrap.category_name(sink, plant, "zh") == "注塑缺陷"
    assert analytics_scrap.reason_name(burr, plant, "en") == "Burr"
    assert analytics_scrap.category_name(burr, plant, "en") == "Machining defects"
    # A code of neither tree stays a code under 'other'.
    assert analytics_scrap.reason_name(odd, plant, "zh") == "no_such_code"
    assert analytics_scrap.category_name(odd, plant, "zh") == an.category_label("other", "zh")
    # A name from the reason tree wins (the view's), as does its category.
    named = sq.ScrapRow("flash", "quality", "Flash (reason)", "披锋", "P-100", 1, None)
    assert analytics_scrap.reason_name(named, plant, "zh") == "披锋"
    assert analytics_scrap.category_name(named, plant, "en") == an.category_label("quality", "en")
    assert analytics_scrap.reason_name(flash, plant, "en") == "Flash"  # unnamed: the defect's
    table = str(analytics_scrap.scrap_table([sink, burr, odd], plant, "zh"))
    assert "缩痕" in table and "毛刺" in table and "sink_mark" not in table
