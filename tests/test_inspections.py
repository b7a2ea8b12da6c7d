"""The pure inspection logic (streams/inspections.py): first article, patrol, last piece."""

from __future__ import annotations

import json
import pickle
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow.events import parse_event
from mesflow.plant import InspectionPolicy, PlantConfig
from streams.inspections import (
    InspectionFlag,
    InspectionRecord,
    InspectionRun,
    InspectionRunSet,
    Inspections,
)
from streams.records import FloorInput, WorkOrderParts
from streams.validate import OrderInput

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=TZ)
POLICY = InspectionPolicy(
    first_article_within_parts=5,
    block_until_first_article_passes=True,
    patrol_every_minutes=60,
    patrol_grace_minutes=10,
    last_piece_required=True,
)


def with_policy(plant: PlantConfig, policy: InspectionPolicy = POLICY) -> PlantConfig:
    return plant.model_copy(update={"inspections": policy})


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def us(minutes: float) -> int:
    return round(at(minutes).timestamp() * 1_000_000)


def ev(body: dict[str, Any]) -> Any:
    return parse_event(json.dumps({"type": "report", "machine": "IM-01", **body}))


def start(minutes: float, wo: str = "WO-1", machine: str = "IM-01") -> FloorInput:
    return FloorInput(
        int(minutes * 100),
        ev(
            {
                "kind": "wo_start",
                "ts": at(minutes).isoformat(),
                "work_order": wo,
                "machine": machine,
            }
        ),
    )


def end(minutes: float, wo: str = "WO-1") -> FloorInput:
    return FloorInput(
        int(minutes * 100) + 1,
        ev({"kind": "wo_end", "ts": at(minutes).isoformat(), "work_order": wo}),
    )


def check(
    minutes: float, stage: str, result: str = "pass", wo: str = "WO-1", **kw: Any
) -> FloorInput:
    return FloorInput(
        int(minutes * 100) + 2,
        ev(
            {
                "kind": "inspection",
                "ts": at(minutes).isoformat(),
                "work_order": wo,
                "stage": stage,
                "result": result,
                **kw,
            }
        ),
    )


def parts(minutes: float, total: int, wo: str = "WO-1") -> WorkOrderParts:
    return WorkOrderParts("SO-1", wo, "IM-01", us(minutes), total, 0)


def final(rows: list[Any]) -> tuple[dict[Any, InspectionRun], dict[Any, InspectionFlag]]:
    """The last row of each run and flag episode (as the sink's upserts leave them)."""
    runs: dict[Any, InspectionRun] = {}
    flags: dict[Any, InspectionFlag] = {}
    for r in rows:
        if type(r) is InspectionRun:
            runs[(r.work_order, r.machine, r.operation, r.start_ts)] = r
            if r.gone:  # the sink deletes it
                del runs[(r.work_order, r.machine, r.operation, r.start_ts)]
        elif type(r) is InspectionRunSet:  # the sink deletes the machine's other runs
            keep = {(wo, r.machine, op, start) for wo, op, start in r.runs}
            for k in [k for k in runs if k[1] == r.machine and k[3] >= r.since]:
                if k not in keep:
                    del runs[k]
        elif type(r) is InspectionFlag:
            flags[(r.work_order, r.machine, r.operation, r.run_start, r.flag, r.since)] = r
    return runs, flags


def open_flags(flags: dict[Any, InspectionFlag]) -> list[tuple[str, str, datetime]]:
    return sorted((f.flag, f.detail, f.since) for f in flags.values() if f.until is None)


def test_characteristics_are_judged_from_their_limits(plant: PlantConfig) -> None:
    chars = [
        {"name": "len", "value": 10.2, "lsl": 9.9, "usl": 10.1, "unit": "mm"},
        {"name": "dia", "value": 5.0, "lsl": 4.9, "usl": 5.1},
        {"name": "look", "ok": True},
        {"name": "note only", "value": 3.0},
    ]
    steps = Inspections(with_policy(plant), lag_s=0)
    rows = steps.feed(
        [check(3, "first", characteristics=chars, defects=[{"code": "flash", "qty": 2}])]
    )
    rec = next(r for r in rows if type(r) is InspectionRecord)
    assert [c["ok"] for c in rec.characteristics] == [False, True, True, None]
    assert rec.all_ok is False
    assert rec.defects == ({"code": "flash", "qty": 2},)
    assert rec.stage == "first" and rec.result == "pass" and rec.work_order == "WO-1"


def test_first_article_missing_after_the_part_limit_then_passed(plant: PlantConfig) -> None:
    steps = Inspections(with_policy(plant), lag_s=0)
    rows = steps.feed([start(0), parts(2, 3)])
    runs, flags = final(rows)
    (run,) = runs.values()
    assert run.first_article == "pending" and run.blocked and not flags
    rows += steps.feed([parts(4, 6)])  # 6 parts > 5 without a first article
    runs, flags = final(rows)
    (run,) = runs.values()
    assert run.first_article == "missing" and run.blocked
    assert open_flags(flags) == [("first_article", "missing", at(0))]
    rows += steps.feed([check(9, "first", "pass")])
    runs, flags = final(rows)
    (run,) = runs.values()
    assert run.first_article == "passed" and not run.blocked
    (fl,) = flags.values()
    assert (fl.since, fl.until) == (at(0), at(9))
    assert run.slots[0][:4] == ("first", at(0), at(0).date(), "late")


def test_failed_first_article_stays_flagged_until_a_later_pass(plant: PlantConfig) -> None:
    steps = Inspections(with_policy(plant), lag_s=0)
    rows = steps.feed([start(0), parts(1, 1), check(2, "first", "fail")])
    runs, flags = final(rows)
    assert next(iter(runs.values())).first_article == "failed"
    assert open_flags(flags) == [("first_article", "failed", at(0))]
    rows += steps.feed([parts(20, 40), check(25, "first", "fail")])
    assert open_flags(final(rows)[1]) == [("first_article", "failed", at(0))]
    rows += steps.feed([check(30, "first", "pass")])
    runs, flags = final(rows)
    run = next(iter(runs.values()))
    assert run.first_article == "passed"
    assert [(f.since, f.until) for f in flags.values()] == [(at(0), at(30))]
    # Done on time (a first article before the limit), and failed.
    assert run.slots[0][3:] == ("on_time", at(2), "fail")


def test_an_inspection_arriving_after_the_parts_withdraws_the_flag(plant: PlantConfig) -> None:
    """The branches deliver out of order: the parts row (t=10) comes before the first
    article at 08:03; the run was never missing, and the flag is withdrawn."""
    steps = Inspections(with_policy(plant), lag_s=0)
    rows = steps.feed([start(0), parts(10, 20)])
    assert open_flags(final(rows)[1]) == [("first_article", "missing", at(0))]
    rows += steps.feed([check(3, "first", "pass")])
    runs, flags = final(rows)
    (fl,) = flags.values()
    assert fl.until == fl.since  # withdrawn: never was
    assert next(iter(runs.values())).slots[0][3] == "on_time"


def test_patrols_due_missed_and_restarted(plant: PlantConfig) -> None:
    """Patrol every 60 min, grace 10: due 09:00 (done 09:05), due 10:05 missed at 10:15,
    11:05 missed too; the patrol at 11:30 restarts the clock: next due 12:30."""
    steps = Inspections(with_policy(plant), lag_s=0)
    rows = steps.feed([start(0), check(1, "first"), check(65, "patrol"), parts(200, 10)])
    runs, flags = final(rows)
    run = next(iter(runs.values()))
    assert run.patrol_missed_since == at(135)
    assert open_flags(flags) == [("patrol_missed", "missed", at(135))]
    rows += steps.feed([check(210, "patrol", "fail")])
    runs, flags = final(rows)
    run = next(iter(runs.values()))
    assert run.patrol_missed_since is None and run.next_patrol_due == at(270)
    assert [(s[0], s[1], s[3], s[5]) for s in run.slots if s[0] == "patrol"] == [
        ("patrol", at(60), "on_time", "pass"),
        ("patrol", at(125), "missed", None),
        ("patrol", at(185), "missed", None),
        ("patrol", at(245), "on_time", "fail"),
    ]
    assert [(f.since, f.until) for f in flags.values()] == [(at(135), at(210))]


def test_the_clock_alone_makes_a_patrol_missed(plant: PlantConfig) -> None:
    steps = Inspections(with_policy(plant), lag_s=0)
    rows = steps.feed([start(0), check(1, "first")])
    rows += steps.tick(us(69))
    assert not open_flags(final(rows)[1])  # due 09:00, within its grace
    rows += steps.tick(us(71))
    assert open_flags(final(rows)[1]) == [("patrol_missed", "missed", at(70))]


def test_replay_decides_at_its_end_with_the_lag(plant: PlantConfig) -> None:
    steps = Inspections(with_policy(plant), lag_s=300)
    rows = steps.feed([start(0), check(1, "first"), parts(74, 3)])
    assert not open_flags(final(rows)[1])  # 09:14 less 5 min: not yet past 09:10
    rows += steps.settle()
    assert open_flags(final(rows)[1]) == [("patrol_missed", "missed", at(70))]


def test_last_piece_and_a_displacing_start(plant: PlantConfig) -> None:
    """WO-1 ends with a last piece; WO-2 is displaced by WO-3's start without one: its
    last piece is missing, and it owes no more patrols."""
    steps = Inspections(with_policy(plant), lag_s=0)
    rows = steps.feed(
        [
            start(0),
            check(1, "first"),
            check(30, "last"),
            end(40),
            start(50, "WO-2"),
            check(51, "first", wo="WO-2"),
            start(100, "WO-3"),
            check(101, "first", wo="WO-3"),
            parts(400, 3, "WO-3"),
        ]
    )
    runs, flags = final(rows)
    by_wo = {k[0]: r for k, r in runs.items()}
    assert by_wo["WO-1"].last_piece == "done" and by_wo["WO-1"].end_ts == at(40)
    assert by_wo["WO-2"].last_piece == "missing" and by_wo["WO-2"].end_ts == at(100)
    assert by_wo["WO-2"].patrol_missed_since is None
    assert by_wo["WO-3"].last_piece == "pending"
    got = open_flags(flags)
    assert ("last_piece", "missed", at(100)) in got
    assert not [f for f in flags.values() if f.work_order == "WO-2" and f.flag == "patrol_missed"]
    # A day after its end, the missing last piece is no longer an open flag.
    rows += steps.tick(us(100 + 24 * 60))
    closed = [f for f in final(rows)[1].values() if f.flag == "last_piece"]
    assert [(f.since, f.until) for f in closed] == [(at(100), at(100 + 24 * 60))]


def test_product_policy_and_off_by_default(plant: PlantConfig) -> None:
    steps = Inspections(plant.model_copy(update={"inspections": InspectionPolicy()}), lag_s=0)
    rows = steps.feed([start(0), parts(50, 500), end(60)])
    runs, flags = final(rows)
    run = next(iter(runs.values()))
    assert (run.first_article, run.last_piece, run.slots, flags) == ("off", "off", (), {})
    # A product's override applies once the work order names it.
    products = [
        p.model_copy(update={"inspections": POLICY}) if p.id == "P-100" else p
        for p in plant.products
    ]
    strict = plant.model_copy(update={"inspections": InspectionPolicy(), "products": products})
    steps = Inspections(strict, lag_s=0)
    wo = parse_event(
        json.dumps(
            {
                "type": "work_order",
                "ts": at(0).isoformat(),
                "work_order": "WO-1",
                "order_no": "SO-1",
                "product": "P-100",
                "qty": 10,
            }
        )
    )
    rows = steps.feed([start(0), parts(5, 9)])
    assert next(iter(final(rows)[0].values())).first_article == "off"
    rows += steps.feed([OrderInput("SO-1", wo)])  # type: ignore[arg-type]
    run = next(iter(final(rows)[0].values()))
    assert run.first_article == "missing" and run.product == "P-100"


EVENTS = [
    start(0),
    parts(2, 2),
    check(3, "first", "fail"),
    parts(6, 8),
    check(8, "first"),
    check(70, "patrol"),
    parts(150, 40),
    check(190, "patrol"),
    check(230, "last"),
    end(240),
    start(250, "WO-2"),
    parts(260, 9, "WO-2"),
    check(330, "patrol", wo="WO-2"),
]


@settings(max_examples=40, deadline=None)
@given(st.permutations(range(len(EVENTS))), st.integers(1, len(EVENTS)))
def test_the_outcome_does_not_depend_on_arrival_order_or_batches(
    plant: PlantConfig, order: list[int], cut: int
) -> None:
    """Any arrival order, split in two batches with a snapshot between, ends in the same
    run and flag rows (after the replay's settle)."""
    p = with_policy(plant)
    ref = Inspections(p, lag_s=300)
    want = final(ref.feed(list(EVENTS)) + ref.settle())
    items = [EVENTS[i] for i in order]
    one = Inspections(p, lag_s=300)
    rows = one.feed(items[:cut])
    two = Inspections(p, pickle.loads(pickle.dumps(one.state)), lag_s=300)
    rows += two.feed(items[cut:]) + two.settle()
    got = final(rows)
    assert got[0] == want[0]

    # Withdrawn episodes may differ (they never were); the real ones are the same (a closed
    # one's part count is not written again: it says how many were made while it was open).
    def real(flags: dict[Any, InspectionFlag]) -> dict[Any, InspectionFlag]:
        return {
            k: f._replace(parts_made=0) if f.until is not None else f
            for k, f in flags.items()
            if f.until != f.since
        }

    assert real(got[1]) == real(want[1])


def test_old_runs_are_forgotten(plant: PlantConfig) -> None:
    steps = Inspections(with_policy(plant), lag_s=0)
    steps.feed([start(0), check(1, "first"), end(30)])
    steps.feed([start(5 * 24 * 60, "WO-9"), check(5 * 24 * 60 + 1, "first", wo="WO-9")])
    assert [k[0] for k in steps.state.runs] == ["WO-9"]
    assert ("WO-1", "IM-01") not in steps.state.checks


@pytest.mark.parametrize("stage", ["first", "patrol", "last"])
def test_an_inspection_before_any_start_is_recorded_only(plant: PlantConfig, stage: str) -> None:
    steps = Inspections(with_policy(plant), lag_s=0)
    rows = steps.feed([check(1, stage)])
    assert [type(r) for r in rows] == [InspectionRecord]


def test_patrols_fall_due_in_shift_time(plant: PlantConfig) -> None:
    """CNC-01's line works 07:30-19:30 on weekdays: a run started Thursday 19:00 owes its
    hourly patrol at Friday 08:00 (30 minutes on Thursday, 30 on Friday), not at 20:00."""
    steps = Inspections(with_policy(plant), lag_s=0)
    rows = steps.feed([start(-13 * 60, "WO-C", "CNC-01")])
    rows += steps.tick(us(9))
    runs, flags = final(rows)
    assert next(iter(runs.values())).next_patrol_due == at(0)
    assert not open_flags(flags)
    rows += steps.tick(us(11))
    runs, flags = final(rows)
    assert open_flags(flags) == [("patrol_missed", "missed", at(10))]
    assert next(iter(runs.values())).next_patrol_due == at(60)


def _alerts(plant: PlantConfig) -> Any:
    from mesflow.alert_rules import AlertsConfig
    from streams.alert_engine import AlertEngine

    config = AlertsConfig.model_validate(
        {
            "rules": [
                {
                    "name": "fa",
                    "kind": "first_article",
                    "scope": {"line": "IM"},
                    "levels": [{"after_min": 0}, {"after_min": 30}],
                }
            ]
        }
    )
    return AlertEngine(config, plant, grace_s=0)


def _flag(since: float, until: float | None, machine: str = "IM-01") -> InspectionFlag:
    return InspectionFlag(
        "WO-1",
        machine,
        "",
        at(0),
        "first_article",
        at(since),
        None if until is None else at(until),
        "missing",
        "P-100",
        False,
        9,
    )


def test_flag_episodes_raise_first_article_alerts(plant: PlantConfig) -> None:
    from streams.records import StatusRow

    def clock(minutes: float) -> StatusRow:  # the machine's rows move its clock
        return StatusRow("IM-01", "running", at(0), None, "WO-1", at(minutes), 0, 0)

    engine = _alerts(plant)
    steps = engine.feed([_flag(0, None), clock(40)])
    assert [(r.step, r.level, r.at) for r in steps] == [
        ("opened", 0, at(0)),
        ("escalated", 1, at(30)),
    ]
    assert (
        steps[0].alert_id == f"fa:run:WO-1@IM-01:{us(0)}" and steps[0].facts["work_order"] == "WO-1"
    )
    steps = engine.feed([_flag(0, 45), clock(50)])
    assert [(r.step, r.at) for r in steps] == [("resolved", at(45))]
    # Withdrawn before the engine's clock reached it: never an alert.
    engine = _alerts(plant)
    assert engine.feed([_flag(0, None)]) == []  # no machine row yet: the clock is behind
    assert engine.feed([_flag(0, 0), clock(40)]) == []
    # Outside the rule's scope (line IM): none.
    assert _alerts(plant).feed([_flag(0, None, "CNC-01"), clock(40)]) == []


def test_a_long_history_in_one_batch_writes_the_runs_small_batches_write(
    plant: PlantConfig,
) -> None:
    """Runs older than the step keeps (KEEP_US) are still written when first seen, and
    forgetting never cuts inside a run (a repeated start of the running work order is not
    its start): one big batch (a clean replay) and one row at a time (a resumed or live
    run) leave the same rows. Found by the killed-storer replay test."""
    p = with_policy(plant)
    day = 24 * 60
    inputs: list[Any] = []
    for d in range(6):  # six days: the first runs fall out of the kept window
        base = d * day
        inputs += [
            start(base + 10, "WO-A"),
            parts(base + 12, 2, "WO-A"),
            start(base + 25, "WO-A"),  # started again while running: the same run
            check(base + 30, "first", wo="WO-A"),
            end(base + 90, "WO-A"),
            start(base + 100, "WO-B"),
            end(base + 200, "WO-B"),
        ]
    one = Inspections(p)
    big = final(one.feed(list(inputs)) + one.settle())
    step = Inspections(p)
    rows: list[Any] = []
    for x in inputs:
        rows += step.feed([x])
    small = final(rows + step.settle())
    assert big[0] == small[0]
    starts = sorted(k[3] for k in big[0] if k[0] == "WO-A")
    assert starts == [at(d * day + 10) for d in range(6)]  # never the repeated start
