"""Defects, rework, first-pass and final yield (issue 13 part D, docs/quality.md).

In memory (streams/quality.py): the hand-worked example of docs/quality.md, inspection
defects move nothing, figures that arrive in any order, the defect tree's chain, a snapshot.
Through the real dataflow into PostgreSQL: v_yield equals the hand-worked example, the
machine's good/scrap moved exactly once (a redelivered event is deduped by the log),
v_defects and v_rework, the rework rate KPI, and an unknown defect code dead-lettered.
"""

from __future__ import annotations

import json
import pickle
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboards.pages import kpis
from mesflow.delivery_kpis import MonthRange, fetch_delivery_kpis
from mesflow.events import parse_event
from mesflow.plant import PlantConfig
from streams.hour_clock import to_us
from streams.quality import (
    MachineQuality,
    Quality,
    QualityRecord,
    YieldRow,
    defect_paths,
    machine_of,
)
from streams.records import FloorInput, WorkOrderParts
from streams.replay import replay_file
from streams.runner import run_flow
from tests.helpers import copy_log, feed

T0 = datetime.fromisoformat("2026-11-20T08:00:00+08:00")  # a Friday, day shift

DEFECT_TREE = [
    {
        "code": "appearance",
        "name": {"en": "Appearance", "zh": "外观"},
        "children": [
            {"code": "flash", "name": {"en": "Flash", "zh": "飞边"}},
            {"code": "sink_mark", "name": {"en": "Sink mark", "zh": "缩痕"}},
        ],
    },
    {
        "code": "dimension",
        "name": {"en": "Dimension", "zh": "尺寸"},
        "children": [{"code": "burr", "name": {"en": "Burr", "zh": "毛刺"}}],
    },
]


@pytest.fixture(scope="module")
def qplant(plant_file: Path) -> PlantConfig:
    """The suite's plant with this test's own defect tree (the example's may change)."""
    raw = yaml.safe_load(plant_file.read_text(encoding="utf-8"))
    raw["defects"] = DEFECT_TREE
    return PlantConfig.model_validate(raw)


def line(kind: str, minutes: float, machine: str | None = "IM-02", **fields: Any) -> dict[str, Any]:
    ts = (T0 + timedelta(minutes=minutes)).isoformat()
    reports = ("wo_start", "wo_end", "defect", "rework", "inspection", "scrap")
    base: dict[str, Any] = {"type": "report", "kind": kind} if kind in reports else {"type": kind}
    e = {**base, "ts": ts, **fields}
    if machine is not None:
        e["machine"] = machine
    return e


# The hand-worked example of docs/quality.md, at IM-02 (P-200: no routing, so the work
# order's progress counts all its parts).
EXAMPLE = [
    line("work_order", -60, None, work_order="WO-Q1", order_no="SO-Q1", product="P-200", qty=200),
    line("state", 0, state="running"),
    line("wo_start", 0, work_order="WO-Q1", operator="op-7"),
    line("count", 10, good=95, scrap=5),  # the machine's own scrap: 5
    line("defect", 20, work_order="WO-Q1", code="flash", qty=3, disposition="scrap"),
    line("defect", 30, work_order="WO-Q1", code="sink_mark", qty=6, disposition="rework"),
    # Found in a patrol sample: recorded, moves nothing.
    line(
        "inspection",
        40,
        work_order="WO-Q1",
        stage="patrol",
        result="fail",
        defects=[{"code": "burr", "qty": 2}],
        operator="qc-1",
    ),
    line("rework", 60, work_order="WO-Q1", code="sink_mark", qty=4, outcome="good"),
    line("rework", 70, work_order="WO-Q1", code="sink_mark", qty=1, outcome="scrap"),
    line("wo_end", 90, work_order="WO-Q1"),
]
# made 100; first-time scrap 5 + 3 = 8; sent 6; back good 4, scrapped 1, pending 1;
# first-pass good 100 - 8 - 6 = 86; final good 86 + 4 = 90.
WANT = {
    "made": 100,
    "first_scrap": 8,
    "sent_to_rework": 6,
    "rework_good": 4,
    "rework_scrap": 1,
    "rework_pending": 1,
    "first_pass_good": 86,
    "final_good": 90,
}


def _parts(good: int, scrap: int, minutes: float, machine: str = "IM-02") -> WorkOrderParts:
    t = int((T0 + timedelta(minutes=minutes)).timestamp() * 1_000_000)
    return WorkOrderParts("SO-Q1", "WO-Q1", machine, t, good, scrap)


def _floor(seq: int, e: dict[str, Any]) -> Any:
    return FloorInput(seq, parse_event(json.dumps(e)))


def _memory_inputs() -> list[Any]:
    """EXAMPLE as the step sees it: the reports, and the machine's counts after each
    (scrap moved by the tracker for the defect-scrap and the rework-scrap)."""
    floor = [_floor(i, e) for i, e in enumerate(EXAMPLE) if e["type"] == "report"]
    return [
        floor[0],  # wo_start
        _parts(95, 5, 10),
        floor[1],  # defect scrap 3
        _parts(92, 8, 20),
        floor[2],  # defect rework 6: no move
        floor[3],  # inspection
        floor[4],  # rework good 4
        floor[5],  # rework scrap 1
        _parts(91, 9, 70),
        floor[6],  # wo_end
    ]


def _final(rows: list[Any]) -> tuple[dict[str, YieldRow], list[QualityRecord]]:
    yields: dict[str, YieldRow] = {}
    records: list[QualityRecord] = []
    for r in rows:
        if isinstance(r, YieldRow):
            yields[r.machine] = r
        elif isinstance(r, QualityRecord):
            records.append(r)
    return yields, records


def test_hand_worked_example_in_memory(qplant: PlantConfig) -> None:
    q = Quality(qplant)
    state = MachineQuality("IM-02")
    rows: list[Any] = []
    for x in _memory_inputs():
        assert machine_of(x) == "IM-02"
        rows.extend(q.feed(state, [x]))
    yields, records = _final(rows)
    y = yields["IM-02"]
    assert {k: getattr(y, k) for k in WANT} == WANT
    # The machine's good equals final good + what is still in rework.
    assert y.final_good + y.rework_pending == 91
    kinds = [(r.kind, r.code, r.qty, r.disposition) for r in records]
    assert kinds == [
        ("defect", "flash", 3, "scrap"),
        ("defect", "sink_mark", 6, "rework"),
        ("inspection", "burr", 2, "found"),
        ("rework", "sink_mark", 4, "good"),
        ("rework", "sink_mark", 1, "scrap"),
    ]
    burr = records[2]
    assert burr.code_path == ("dimension", "burr") and burr.operator == "qc-1"
    assert (burr.day.isoformat(), burr.shift_name) == ("2026-11-20", "day")


@settings(max_examples=40, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(min_value=1, max_value=5))
def test_any_order_and_batching_gives_the_same_final_row(
    qplant: PlantConfig, rnd: Any, size: int
) -> None:
    """Reports may reach the step before or after the counts that reflect them: once all
    are in, the row is the same (the counts are absolute, the latest by t wins)."""
    items = _memory_inputs()
    rnd.shuffle(items)
    q = Quality(qplant)
    state = MachineQuality("IM-02")
    rows: list[Any] = []
    for i in range(0, len(items), size):
        rows.extend(q.feed(state, items[i : i + size]))
        state = pickle.loads(pickle.dumps(state))  # a snapshot between batches
    y = _final(rows)[0]["IM-02"]
    assert {k: getattr(y, k) for k in WANT} == WANT


def test_inspection_defects_move_no_part(qplant: PlantConfig) -> None:
    q = Quality(qplant)
    state = MachineQuality("IM-02")
    insp = _floor(
        1,
        line(
            "inspection",
            5,
            work_order="WO-Q1",
            stage="first",
            result="fail",
            defects=[{"code": "flash", "qty": 1}, {"code": "burr", "qty": 3}],
        ),
    )
    rows = q.feed(state, [_parts(10, 0, 1), insp])
    y, records = _final(rows)
    assert (y["IM-02"].first_pass_good, y["IM-02"].final_good) == (10, 10)
    assert [(r.line, r.code, r.qty) for r in records] == [(0, "flash", 1), (1, "burr", 3)]


def test_defects_before_any_count_and_without_a_tree(plant: PlantConfig) -> None:
    """No count yet (the work order unknown to the machine): made 0, yields undefined (the
    view divides by NULLIF(made, 0)), and the first-time scrap is at least the reported.
    A code without a tree is its own path."""
    q = Quality(plant.model_copy(update={"defects": []}))
    q.paths = {}
    state = MachineQuality("IM-02")
    rows = q.feed(
        state,
        [_floor(1, line("defect", 5, work_order="WO-Q1", code="x", qty=2, disposition="scrap"))],
    )
    y, records = _final(rows)
    assert (y["IM-02"].made, y["IM-02"].first_scrap, y["IM-02"].first_pass_good) == (0, 2, 0)
    assert records[0].code_path == ("x",)


def _parts_of(wo: str, good: int, scrap: int, minutes: float) -> WorkOrderParts:
    t = int((T0 + timedelta(minutes=minutes)).timestamp() * 1_000_000)
    return WorkOrderParts("SO-Q1", wo, "IM-02", t, good, scrap)


def test_rework_scrapped_after_the_work_order_ended(qplant: PlantConfig) -> None:
    """Rework often comes back after its work order ended: the tracker still moves the
    scrapped parts onto this work order (the scrap report names it), not onto the one
    running then. The first-time scrap stays 8, and the other work order's own scrap is
    not inflated."""
    events = [
        line("wo_start", 0, work_order="WO-Q1"),
        line("defect", 20, work_order="WO-Q1", code="flash", qty=3, disposition="scrap"),
        line("defect", 30, work_order="WO-Q1", code="sink_mark", qty=6, disposition="rework"),
        line("wo_end", 50, work_order="WO-Q1"),
        line("wo_start", 55, work_order="WO-Q2"),
        # Reported while WO-Q2 runs: the tracker still moves 2 of WO-Q1's good to scrap.
        line("rework", 70, work_order="WO-Q1", code="sink_mark", qty=2, outcome="scrap"),
        line("rework", 75, work_order="WO-Q1", code="sink_mark", qty=4, outcome="good"),
    ]
    counts = [
        _parts_of("WO-Q1", 90, 8 + 2, 80),  # 95/5 counted, 3 flash and 2 after rework moved
        _parts_of("WO-Q2", 48, 2, 80),  # 50 made: 2 own scrap
    ]
    items = [_floor(i, e) for i, e in enumerate(events)] + counts
    for order in (items, items[::-1]):
        q = Quality(qplant)
        state = MachineQuality("IM-02")
        rows: list[Any] = []
        for x in order:
            rows.extend(q.feed(state, [x]))
        final: dict[str, YieldRow] = {}
        for r in rows:
            if isinstance(r, YieldRow):
                final[r.work_order] = r
        q1, q2 = final["WO-Q1"], final["WO-Q2"]
        assert (q1.made, q1.first_scrap, q1.sent_to_rework, q1.rework_scrap) == (100, 8, 6, 2)
        assert (q1.first_pass_good, q1.final_good, q1.rework_pending) == (86, 90, 0)
        assert (q2.made, q2.first_scrap, q2.first_pass_good) == (50, 2, 48)


def test_old_work_orders_are_forgotten(qplant: PlantConfig) -> None:
    q = Quality(qplant)
    state = MachineQuality("IM-02")
    q.feed(state, [_floor(1, line("wo_start", 0, work_order="WO-Q1")), _parts_of("WO-Q1", 5, 0, 1)])
    later = 60 * 24 * (qplant.plant.max_event_age_days + 1)
    q.feed(state, [_floor(2, line("wo_start", later, work_order="WO-Q2"))])
    assert list(state.work_orders) == [] and [c[2] for c in state.changes] == ["WO-Q1", "WO-Q2"]
    q.feed(state, [_floor(3, line("wo_start", later * 2, work_order="WO-Q3"))])
    assert [c[2] for c in state.changes] == ["WO-Q2", "WO-Q3"]
    assert state.running_at(to_us(T0 + timedelta(minutes=later * 2))) == "WO-Q3"


def test_defect_paths() -> None:
    plant = PlantConfig.model_validate(
        {**yaml.safe_load(Path("config/plant.example.yaml").read_text()), "defects": DEFECT_TREE}
    )
    assert defect_paths(plant.defects) == {
        "appearance": ("appearance",),
        "flash": ("appearance", "flash"),
        "sink_mark": ("appearance", "sink_mark"),
        "dimension": ("dimension",),
        "burr": ("dimension", "burr"),
    }


# -- through the real dataflow and PostgreSQL -------------------------------------------------


def _write(path: Path, events: list[dict[str, Any]], prefix: str) -> Path:
    for i, e in enumerate(events):
        e.setdefault("id", f"{prefix}-{i}")
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


def _yield_row(conn: psycopg.Connection[Any], wo: str) -> dict[str, Any]:
    cur = conn.execute(
        "SELECT made, first_scrap, sent_to_rework, rework_good, rework_scrap, rework_pending, "
        "first_pass_good, final_good, first_pass_yield, final_yield, product, line, order_no "
        "FROM v_yield WHERE work_order = %s AND machine = 'IM-02'",
        (wo,),
    )
    names = [d.name for d in cur.description or []]
    row = cur.fetchone()
    assert row is not None, f"no v_yield row for {wo}"
    return dict(zip(names, row, strict=True))


def test_yield_through_the_dataflow(db_url: str, qplant: PlantConfig, tmp_path: Path) -> None:
    events = [dict(e) for e in EXAMPLE]
    path = _write(tmp_path / "q.jsonl", events, "q")
    replay_file(path, qplant, db_url, tmp_path / "rec", progress=False)
    with psycopg.connect(db_url) as conn:
        got = _yield_row(conn, "WO-Q1")
        assert {k: got[k] for k in WANT} == WANT
        assert got["first_pass_yield"] == pytest.approx(0.86)
        assert got["final_yield"] == pytest.approx(0.90)
        assert (got["product"], got["line"], got["order_no"]) == ("P-200", "IM", "SO-Q1")
        # The machine's figures moved good -> scrap for the defect-scrap and the
        # rework-scrap exactly once: 95 - 3 - 1 good, 5 + 3 + 1 scrap.
        machine = conn.execute(
            "SELECT sum(good), sum(scrap) FROM machine_hour WHERE machine = 'IM-02'"
        ).fetchone()
        assert machine == (91, 9)
        wo = conn.execute(
            "SELECT good, scrap FROM work_order_progress WHERE work_order = 'WO-Q1'"
        ).fetchone()
        assert wo == (91, 9)
        defects = conn.execute(
            "SELECT kind, code, root, parent, qty, disposition, product, line, shift_name "
            "FROM v_defects ORDER BY seq, defect_line"
        ).fetchall()
        assert defects == [
            ("defect", "flash", "appearance", "appearance", 3, "scrap", "P-200", "IM", "day"),
            ("defect", "sink_mark", "appearance", "appearance", 6, "rework", "P-200", "IM", "day"),
            ("inspection", "burr", "dimension", "dimension", 2, "found", "P-200", "IM", "day"),
        ]
        rework = conn.execute(
            "SELECT work_order, sent_to_rework, rework_pending FROM v_rework"
        ).fetchall()
        assert rework == [("WO-Q1", 6, 1)]
        assert conn.execute("SELECT count(*) FROM dead_letter").fetchone() == (0,)

    # Redelivery: the same events again (same ids, as a collector retrying) and a second
    # replay of the same file: the log dedupes them, no figure moves.
    feed(db_url, events[4:9])
    replay_file(path, qplant, db_url, tmp_path / "rec", progress=False)
    with psycopg.connect(db_url) as conn:
        got = _yield_row(conn, "WO-Q1")
        assert {k: got[k] for k in WANT} == WANT
        machine = conn.execute(
            "SELECT sum(good), sum(scrap) FROM machine_hour WHERE machine = 'IM-02'"
        ).fetchone()
        assert machine == (91, 9)
        assert conn.execute("SELECT count(*) FROM quality_record").fetchone() == (5,)
        # The CRM's order (as the intake stores it): the rework rate reaches the KPIs.
        conn.execute(
            "INSERT INTO crm_order (order_no, version, customer, priority, product, qty, due,"
            " status, event_ts, changed_by) VALUES ('SO-Q1', 1, 'ACME', 5, 'P-200', 200,"
            " '2026-11-30 00:00+08', 'open', '2026-11-19 00:00+08', 'crm')"
        )
        conn.commit()
    (kpi,) = fetch_delivery_kpis(db_url, qplant.tz, "customer", MonthRange())
    assert (kpi.key, kpi.made, kpi.sent_to_rework) == ("ACME", 100, 6)
    assert kpi.rework_rate == pytest.approx(0.06)
    board = str(kpis.render([kpi], "customer", "en"))  # the /kpis board's table
    assert "Rework rate" in board and "6.0%" in board
    with psycopg.connect(db_url) as conn:
        conn.execute("SET TIME ZONE 'Asia/Shanghai'")
        assert conn.execute(
            "SELECT month, made, sent_to_rework, rework_rate FROM v_delivery_kpis"
        ).fetchall() == [("2026-11", 100, 6, pytest.approx(0.06))]


def test_unknown_defect_code_is_dead_lettered(
    db_url: str, qplant: PlantConfig, tmp_path: Path
) -> None:
    events = [
        *[dict(e) for e in EXAMPLE[:4]],
        line("defect", 20, work_order="WO-Q1", code="no_such", qty=3, disposition="scrap"),
        line("rework", 21, work_order="WO-Q1", code="no_such", qty=1, outcome="scrap"),
        line(
            "inspection",
            22,
            work_order="WO-Q1",
            stage="patrol",
            result="fail",
            defects=[{"code": "flash", "qty": 1}, {"code": "no_such", "qty": 1}],
        ),
    ]
    path = _write(tmp_path / "u.jsonl", events, "u")
    replay_file(path, qplant, db_url, tmp_path / "rec", progress=False)
    with psycopg.connect(db_url) as conn:
        dead = conn.execute("SELECT reason FROM dead_letter ORDER BY log_seq").fetchall()
        assert dead == [("unknown_defect",)] * 3
        assert conn.execute("SELECT count(*) FROM quality_record").fetchone() == (0,)
        # Nothing moved on the machine: the 5 it counted itself only.
        machine = conn.execute(
            "SELECT sum(good), sum(scrap) FROM machine_hour WHERE machine = 'IM-02'"
        ).fetchone()
        assert machine == (95, 5)


def _quality_tables(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {
            "record": conn.execute(
                "SELECT seq, line, ts, day, shift_name, kind, code, code_path, qty, disposition,"
                " machine, work_order, operation, product, operator FROM quality_record"
                " ORDER BY seq, line"
            ).fetchall(),
            "yield": conn.execute(
                "SELECT work_order, machine, operation, product, made, first_scrap,"
                " sent_to_rework, rework_good, rework_scrap, rework_pending, first_pass_good,"
                " final_good, first_ts, last_ts FROM quality_yield ORDER BY 1, 2"
            ).fetchall(),
        }


def test_a_restart_in_the_middle_gives_the_same_rows(
    db_url: str, ref_db_url: str, qplant: PlantConfig, tmp_path: Path
) -> None:
    """Stopped after the rework was sent and resumed from its snapshot: the same rows as
    one uninterrupted run over the same log."""
    events = [dict(e) for e in EXAMPLE]
    for i, e in enumerate(events):
        e["id"] = f"restart-{i}"
    feed(db_url, events)
    with psycopg.connect(db_url) as conn:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM ingest_log ORDER BY seq")]
    rec = tmp_path / "rec"
    run_flow(qplant, db_url, rec, 0.0, upto_seq=seqs[5])  # up to the defect sent to rework
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT sent_to_rework, rework_good FROM quality_yield").fetchone()
    assert row == (6, 0)
    run_flow(qplant, db_url, rec, 0.0, upto_seq=seqs[-1])
    assert copy_log(db_url, ref_db_url) == seqs[-1]
    run_flow(qplant, ref_db_url, tmp_path / "ref", 10.0, upto_seq=seqs[-1])
    got, want = _quality_tables(db_url), _quality_tables(ref_db_url)
    assert got == want
    assert [r[4:12] for r in got["yield"]] == [(100, 8, 6, 4, 1, 1, 86, 90)]


def test_late_rework_through_the_dataflow(db_url: str, qplant: PlantConfig, tmp_path: Path) -> None:
    """The machine tracker really moves a rework-scrap reported while another work order
    runs onto that one: both work orders' yields stay right."""
    wo2 = {"work_order": "WO-Q2", "order_no": "SO-Q1", "product": "P-200", "qty": 50}
    events = [
        *[dict(e) for e in EXAMPLE[:6]],  # up to the 6 sent to rework
        line("wo_end", 50, work_order="WO-Q1"),
        line("work_order", -60, None, **wo2),
        line("wo_start", 55, work_order="WO-Q2"),
        line("count", 60, good=48, scrap=2),
        line("rework", 70, work_order="WO-Q1", code="sink_mark", qty=2, outcome="scrap"),
        line("rework", 75, work_order="WO-Q1", code="sink_mark", qty=4, outcome="good"),
        line("count", 80, good=1),
    ]
    replay_file(_write(tmp_path / "late.jsonl", events, "late"), qplant, db_url, tmp_path / "r")
    with psycopg.connect(db_url) as conn:
        got = {
            wo: row
            for wo, *row in conn.execute(
                "SELECT work_order, made, first_scrap, sent_to_rework, rework_scrap,"
                " first_pass_good, final_good, rework_pending FROM v_yield ORDER BY 1"
            ).fetchall()
        }
        parts = dict(
            (wo, (g, s))
            for wo, g, s in conn.execute(
                "SELECT work_order, good, scrap FROM work_order_progress"
            ).fetchall()
        )
    assert got == {
        "WO-Q1": [100, 8, 6, 2, 86, 90, 0],
        "WO-Q2": [51, 2, 0, 0, 49, 49, 0],
    }
    # What the tracker did: WO-Q1's rework-scrap came off WO-Q1's good, not WO-Q2's.
    assert parts == {"WO-Q1": (90, 10), "WO-Q2": (49, 2)}


@st.composite
def floor_history(draw: st.DrawFn) -> tuple[list[Any], dict[str, dict[str, int]]]:
    """A machine's random history: starts and ends of three work orders, parts counted,
    defects and rework outcomes (any work order, also after it ended), with the counts the
    machine tracker reports (a scrapping report moves good to scrap on its work order if
    that started here by then, else on the one running) and the true figures per work
    order."""
    wos = ("WO-A", "WO-B", "WO-C")
    truth = {w: dict.fromkeys(("made", "own", "dscrap", "sent", "rgood", "rscrap"), 0) for w in wos}
    good = dict.fromkeys(wos, 0)
    scrap = dict.fromkeys(wos, 0)
    running: str | None = None
    started: set[str] = set()
    items: list[Any] = []
    last_t: dict[str, int] = {}
    steps = draw(st.lists(st.integers(0, 5), min_size=5, max_size=40))
    for minute, kind in enumerate(steps):
        ts = T0 + timedelta(minutes=minute)
        t = to_us(ts)
        wo = draw(st.sampled_from(wos))
        if kind == 0:
            items.append(_floor(minute, line("wo_start", minute, work_order=wo)))
            running = wo
            started.add(wo)
        elif kind == 1:  # the end of a work order not running here changes nothing
            items.append(_floor(minute, line("wo_end", minute, work_order=wo)))
            running = None if wo == running else running
        elif kind == 2 and running is not None:
            g, s = draw(st.integers(0, 20)), draw(st.integers(0, 3))
            good[running] += g
            scrap[running] += s
            truth[running]["made"] += g + s
            truth[running]["own"] += s
            last_t[running] = t
        elif kind in (3, 4):
            tr = truth[wo]
            free = tr["made"] - tr["own"] - tr["dscrap"] - tr["sent"]
            if free <= 0:
                continue
            qty = draw(st.integers(1, free))
            how = "scrap" if kind == 3 else "rework"
            tr["dscrap" if how == "scrap" else "sent"] += qty
            items.append(
                _floor(
                    minute,
                    line("defect", minute, work_order=wo, code="flash", qty=qty, disposition=how),
                )
            )
            onto = wo if wo in started else running
            if how == "scrap" and onto is not None:
                good[onto] -= qty
                scrap[onto] += qty
                last_t[onto] = t
        elif kind == 5:
            tr = truth[wo]
            pending = tr["sent"] - tr["rgood"] - tr["rscrap"]
            if pending <= 0:
                continue
            qty = draw(st.integers(1, pending))
            outcome = draw(st.sampled_from(("good", "scrap")))
            tr["rgood" if outcome == "good" else "rscrap"] += qty
            items.append(
                _floor(minute, line("rework", minute, work_order=wo, qty=qty, outcome=outcome))
            )
            onto = wo if wo in started else running
            if outcome == "scrap" and onto is not None:
                good[onto] -= qty
                scrap[onto] += qty
                last_t[onto] = t
    for w, t in last_t.items():
        items.append(WorkOrderParts("SO-Q1", w, "IM-02", t, good[w], scrap[w]))
    return items, {w: tr for w, tr in truth.items() if w in last_t}


@settings(max_examples=50, deadline=None)
@given(floor_history(), st.randoms(use_true_random=False))
def test_random_histories_give_the_true_figures(
    qplant: PlantConfig, history: tuple[list[Any], dict[str, dict[str, int]]], rnd: Any
) -> None:
    items, truth = history
    rnd.shuffle(items)  # any arrival order
    q = Quality(qplant)
    state = MachineQuality("IM-02")
    rows: dict[str, YieldRow] = {}
    for i in range(0, len(items), 3):
        for r in q.feed(state, items[i : i + 3]):
            if isinstance(r, YieldRow):
                rows[r.work_order] = r
        state = pickle.loads(pickle.dumps(state))
    for wo, tr in truth.items():
        first_scrap = tr["own"] + tr["dscrap"]
        first_pass = tr["made"] - first_scrap - tr["sent"]
        want = (
            tr["made"],
            first_scrap,
            tr["sent"],
            tr["rgood"],
            tr["rscrap"],
            tr["sent"] - tr["rgood"] - tr["rscrap"],
            first_pass,
            first_pass + tr["rgood"],
        )
        r = rows[wo]
        got = (
            r.made,
            r.first_scrap,
            r.sent_to_rework,
            r.rework_good,
            r.rework_scrap,
            r.rework_pending,
            r.first_pass_good,
            r.final_good,
        )
        assert got == want, wo


def test_a_long_work_order_keeps_what_placed_its_old_reports(qplant: PlantConfig) -> None:
    """A work order running longer than the kept horizon: its early defect-scrap stays
    placed on it (the start before it is kept) when new starts come and old state goes."""
    q = Quality(qplant)
    state = MachineQuality("IM-02")
    day = 60 * 24
    late = day * (qplant.plant.max_event_age_days + 5)
    items = [
        _floor(1, line("wo_start", 0, work_order="WO-X")),
        _floor(2, line("wo_end", 5, work_order="WO-X")),
        _floor(3, line("wo_start", 10, work_order="WO-L")),
        _floor(4, line("defect", 20, work_order="WO-L", code="flash", qty=3, disposition="scrap")),
        _parts_of("WO-L", 97, 3, 30),
        _floor(6, line("wo_end", day, work_order="WO-L")),
        _floor(7, line("wo_start", 2 * day, work_order="WO-L")),
        _parts_of("WO-L", 197, 3, late - 10),
        _floor(5, line("wo_start", late, machine="IM-02", work_order="WO-L")),
    ]
    rows: list[Any] = []
    for x in items:
        rows.extend(q.feed(state, [x]))
    last = [r for r in rows if isinstance(r, YieldRow) and r.work_order == "WO-L"][-1]
    assert (last.made, last.first_scrap, last.first_pass_good) == (200, 3, 197)
    assert state.changes[0][2] == "WO-L"  # the older starts went
