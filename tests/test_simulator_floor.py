"""The simulator's people and quality events (issue 13): sign-in/out, routed work orders,
first-article, patrol and last-piece inspections, defects and rework. Every event passes
the contract and the example plant's validator; the stories they tell are consistent."""

from __future__ import annotations

import json
import re
from bisect import bisect_left, bisect_right
from collections import defaultdict
from datetime import datetime, timedelta
from functools import cache
from itertools import pairwise
from typing import Any

import yaml

from bench.scaled_plant import scaled_plant_data
from collectors.simulator import generate, machine_specs
from collectors.simulator.floor import Handoff, Job, Lot, crews, person
from mesflow.ingest_log import LogEntry
from mesflow.plant import PlantConfig, load_plant_config
from mesflow.settings import REPO_ROOT
from streams.records import FloorInput, Rejection
from streams.validate import Validator

Event = dict[str, Any]
PLANT = load_plant_config(REPO_ROOT / "config" / "plant.example.yaml")
TZ = PLANT.tz
MONDAY_9 = datetime(2026, 11, 16, 9, 0, tzinfo=TZ)
COUNTERS = {s.id for s in machine_specs(PLANT) if s.counter}
FLOOR_KINDS = {"sign_in", "sign_out", "inspection", "defect", "rework"}


@cache
def week(seed: int = 7) -> tuple[Event, ...]:
    return tuple(generate(PLANT, seed=seed, start=MONDAY_9, end=MONDAY_9 + timedelta(days=7)))


def ts(e: Event) -> datetime:
    return datetime.fromisoformat(e["ts"])


def reports(kind: str, events: tuple[Event, ...] | None = None) -> list[Event]:
    return [e for e in events or week() if e["type"] == "report" and e["kind"] == kind]


def test_every_event_passes_the_contract_and_the_example_plant() -> None:
    events = week()
    validator = Validator(PLANT)
    entries = [LogEntry(seq, json.dumps(e).encode(), None, None) for seq, e in enumerate(events, 1)]
    out = validator(entries)
    rejected = [r for r in out if isinstance(r, Rejection)]
    assert rejected == []
    floor = [r for r in out if isinstance(r, FloorInput)]
    kinds = {r.event.kind for r in floor}
    assert FLOOR_KINDS | {"wo_start", "wo_end"} <= kinds
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids)
    # Every defect code is a leaf of the plant's defect tree.
    codes = {e["code"] for e in reports("defect")}
    codes |= {d["code"] for e in reports("inspection") for d in e.get("defects", [])}
    tree = PLANT.defects_by_code
    assert codes and all(c in tree and not tree[c].children for c in codes)


def test_the_simulators_work_orders_never_take_the_crm_stand_ins_ids() -> None:
    crm_style = re.compile(r"^WO-[A-Z]+-\d\d-\d{4}$")  # collectors/simulator/crm.py
    wos = {e["work_order"] for e in week() if "work_order" in e}
    assert wos and not [w for w in wos if crm_style.match(w)]
    # Another run (another start) numbers its own: no shared ids, even after a restart.
    later = MONDAY_9 + timedelta(days=7)
    other = {e["work_order"] for e in generate(PLANT, seed=7, start=later, end=later + timedelta(hours=2)) if "work_order" in e}  # fmt: skip
    assert other and not other & wos


def test_operators_sign_in_and_out_around_their_shifts() -> None:
    events = week()
    crew = crews(PLANT)
    by_station: dict[tuple[str, str], list[Event]] = defaultdict(list)
    for e in reports("sign_in") + reports("sign_out"):
        by_station[(e["machine"], e["operator"])].append(e)
        assert e["operator"] in crew[e["machine"]].by_shift.values()
    forgotten = 0
    for evs in by_station.values():
        evs.sort(key=ts)
        # Alternating in, out; a sign-in directly after a sign-in is a forgotten sign-out.
        for a, b in pairwise(evs):
            assert (a["kind"], b["kind"]) != ("sign_out", "sign_out")
            if a["kind"] == b["kind"] == "sign_in":
                forgotten += 1
                assert a["operator"] in crew[a["machine"]].forgetful
            if (a["kind"], b["kind"]) == ("sign_in", "sign_out"):
                # Never longer than the labor step's limit (12-hour shifts, a 12-hour limit).
                assert ts(b) - ts(a) < timedelta(hours=PLANT.labor.max_sign_in_hours)
    assert forgotten >= 1
    # Sign-ins come within minutes of a shift start (or at the run's start).
    for e in reports("sign_in"):
        local = ts(e)
        minutes = local.hour * 60 + local.minute
        starts = [8 * 60, 20 * 60] if e["machine"].startswith("IM") else [7 * 60 + 30]
        assert ts(e) == MONDAY_9 + timedelta(seconds=1) or any(
            -13 <= minutes - s <= 6 for s in starts
        ), e
    # At night one person tends two presses at once.
    night = [e for e in reports("sign_in") if ts(e).hour == 19 and e["machine"].startswith("IM")]
    per_person: dict[tuple[str, str], set[str]] = defaultdict(set)
    for e in night:
        per_person[(e["operator"], e["ts"][:10])].add(e["machine"])
    assert max(len(m) for m in per_person.values()) == 2
    # Reports of the running machine name the operator on shift there.
    wo_reports = reports("wo_start") + reports("defect")
    on_shift = {n for c in crew.values() for n in c.by_shift.values()}
    assert all(e["operator"] in on_shift for e in wo_reports if e["ts"] != events[0]["ts"])


def _runs(events: tuple[Event, ...]) -> list[dict[str, Any]]:
    """Each (work order, machine) run: its start, end, operation and parts made."""
    runs: list[dict[str, Any]] = []
    open_run: dict[str, dict[str, Any]] = {}
    for e in events:
        m: str = e.get("machine", "")
        if e["type"] == "report" and e["kind"] == "wo_start":
            open_run[m] = {"wo": e["work_order"], "machine": m, "op": e.get("operation"),
                           "start": ts(e), "end": None, "good": 0, "made": 0}  # fmt: skip
            runs.append(open_run[m])
        elif e["type"] == "report" and e["kind"] == "wo_end":
            run = open_run.pop(m)
            assert run["wo"] == e["work_order"] and run["op"] == e.get("operation")
            run["end"] = ts(e)
        elif e["type"] == "count" and m in open_run:
            open_run[m]["good"] += e["good"]
            open_run[m]["made"] += e["good"] + e["scrap"]
    return runs


def test_routed_work_orders_move_from_step_to_step() -> None:
    runs = _runs(week())
    routings = PLANT.routings_by_product
    steps = {(p, s.op): s for p, r in routings.items() for s in r.operations}
    by_wo: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_wo[run["wo"]].append(run)
        if run["op"] is not None:  # a routed step runs only on its listed machines
            assert any(
                run["machine"] in s.machines for (_, op), s in steps.items() if op == run["op"]
            )
    chains = [rs for rs in by_wo.values() if len(rs) > 1]
    assert chains
    three = 0
    for rs in chains:
        ops = [r["op"] for r in rs]
        assert ops == sorted(ops) and len(set(ops)) == len(ops), ops
        for prev, nxt in pairwise(rs):
            # The next step starts after the previous one ended, with at most its good parts.
            assert prev["end"] is not None and nxt["start"] > prev["end"]
            assert nxt["made"] <= prev["good"], (prev, nxt)
        three += len(rs) == 3
    assert three >= 1  # a mold insert went rough milling -> EDM -> finish milling
    # Each step's machine gets the work order dispatched (so it knows the product and
    # judges its parts by it): same id, order, product and quantity as at the first step.
    announced: dict[str, list[Event]] = defaultdict(list)
    for e in week():
        if e["type"] == "work_order":
            announced[e["work_order"]].append(e)
    for rs in chains:
        dispatched = announced[rs[0]["wo"]]
        assert [e["machine"] for e in dispatched] == [r["machine"] for r in rs]
        assert len({(e["order_no"], e["product"], e["qty"]) for e in dispatched}) == 1


def test_inspections_follow_the_plants_policy() -> None:
    events = week()
    runs = _runs(events)
    inspections = reports("inspection")
    by_run: dict[tuple[str, str], list[Event]] = defaultdict(list)
    for e in inspections:
        by_run[(e["work_order"], e["machine"])].append(e)
        for c in e["characteristics"]:
            if "value" in c and e["result"] == "pass":
                assert c.get("lsl", -1e9) <= c["value"] <= c.get("usl", 1e9), (e, c)
        if e["result"] == "fail":
            bad = [
                c for c in e["characteristics"]
                if c.get("ok") is False or not c.get("lsl", -1e9) <= c.get("value", 0) <= c.get("usl", 1e9)
            ]  # fmt: skip
            assert bad, e
    fa_fails = 0
    for run in runs:
        product = _product_of(run["wo"])
        policy = PLANT.inspection_policy(product)
        mine = sorted(by_run[(run["wo"], run["machine"])], key=ts)
        firsts = [e for e in mine if e["stage"] == "first"]
        if run["start"] == MONDAY_9:
            # Started before the run: its first article passed then, on record at the start.
            assert [(ts(e), e["result"]) for e in firsts] == [(MONDAY_9, "pass")]
            continue
        if run["end"] is None and not firsts:
            continue  # the week ended before the first piece was inspected
        assert firsts, run
        # The first article is judged before more than `first_article_within_parts` parts;
        # after a fail, one more piece is made (after tuning) and inspected.
        fails = sum(e["result"] == "fail" for e in firsts)
        assert [e["result"] for e in firsts[:-1]] == ["fail"] * (len(firsts) - 1)
        fa_fails += fails
        if run["machine"] in COUNTERS:
            continue  # lathes count parts with a cumulative counter
        made_before = _parts_between(run["machine"], run["start"], ts(firsts[0]))
        assert 1 <= made_before <= policy.first_article_within_parts, (run, made_before)
        made_before = _parts_between(run["machine"], run["start"], ts(firsts[-1]))
        assert made_before == 1 + fails
        assert firsts[-1]["result"] == "pass" or run["end"] is None
        if run["end"] is not None and policy.last_piece_required:
            last = [e for e in mine if e["stage"] == "last"]
            assert len(last) == 1 and ts(last[0]) == run["end"]
    assert fa_fails >= 1
    # Patrols: mostly within the interval, and now and then one is missed.
    gaps: list[float] = []
    missed = 0
    for (wo, _m), evs in by_run.items():
        policy = PLANT.inspection_policy(_product_of(wo))
        times = [ts(e) for e in sorted(evs, key=ts) if e["stage"] in ("first", "patrol")]
        for a, b in pairwise(times):
            if _working(a, b, _m):
                minutes = (b - a).total_seconds() / 60
                gaps.append(minutes)
                missed += minutes > policy.patrol_every_minutes + policy.patrol_grace_minutes
    assert gaps and missed >= 1
    assert missed < len(gaps) / 5


def test_defects_go_to_scrap_or_rework_and_rework_comes_back() -> None:
    defects = reports("defect")
    rework = reports("rework")
    assert {d["disposition"] for d in defects} == {"rework", "scrap"}
    assert {r["outcome"] for r in rework} == {"good", "scrap"}
    sent: dict[tuple[str, str, str], int] = defaultdict(int)
    first_sent: dict[tuple[str, str, str], datetime] = {}
    for d in defects:
        key = (d["work_order"], d["machine"], d["code"])
        if d["disposition"] == "rework":
            sent[key] += d["qty"]
            first_sent.setdefault(key, ts(d))
    back: dict[tuple[str, str, str], int] = defaultdict(int)
    for r in rework:
        key = (r["work_order"], r["machine"], r["code"])
        back[key] += r["qty"]
        assert ts(r) >= first_sent[key]  # back from rework after it was sent
    assert all(back[k] <= sent[k] for k in back)
    # A run's defect and rework reports come by its end (a scrap moves the parts of the
    # work order running when it arrives: it must not hit the next one).
    ends = {(e["work_order"], e["machine"]): ts(e) for e in reports("wo_end")}
    for e in defects + rework:
        end = ends.get((e["work_order"], e["machine"]))
        assert end is None or ts(e) <= end, e


def test_the_handoff_is_oldest_first_only_of_ready_lots_and_steps_take_turns() -> None:
    h = Handoff()
    job = Job("P-300", "20", 280_000)
    h.put(Lot(2_000, "WO-b", "P-300", "20", 5, 100))
    h.put(Lot(1_000, "WO-a", "P-300", "20", 7, 100))
    h.put(Lot(9_000, "WO-c", "P-300", "20", 3, 100))
    h.watermark = 5_000
    assert h.take((job,), 500) is None  # nothing ready yet
    got = h.take((job,), 8_000)
    assert got is not None and got[1].work_order == "WO-a"
    got = h.take((job,), 8_000)
    assert got is not None and got[1].work_order == "WO-b"
    assert h.take((job,), 10_000) is None  # WO-c is past the watermark: not seen yet
    assert h.take((Job("P-100", "20", 45_000),), 10_000) is None
    # Two steps at one machine take turns (oldest first within each).
    drill = Job("P-100", "20", 120_000)
    h.watermark = 50_000
    for i in range(3):
        h.put(Lot(1_000 + i, f"WO-p{i}", "P-100", "20", 5, 100))
    h.put(Lot(4_000, "WO-m", "P-300", "20", 5, 100))
    order = []
    last = None
    while (got := h.take((drill, job), 40_000, last)) is not None:
        last, lot = got
        order.append(lot.work_order)
    assert order == ["WO-p0", "WO-m", "WO-p1", "WO-c", "WO-p2"]


def test_crews_scale_to_any_plant() -> None:
    names = [person(i) for i in range(2000)]
    assert len(set(names)) == len(names)
    specs = machine_specs(PLANT)
    assert {s.id for s in specs if not s.jobs} == {"CNC-03", "CNC-06"}
    im = [s.crew for s in specs if s.id.startswith("IM") and s.crew]
    assert len({c.by_shift["day"] for c in im}) == 6 and len({c.by_shift["night"] for c in im}) == 5


# -- helpers ----------------------------------------------------------------------------------


@cache
def _products() -> dict[str, str]:
    return {e["work_order"]: e["product"] for e in week() if e["type"] == "work_order"}


def _product_of(wo: str) -> str | None:
    return _products().get(wo)


@cache
def _machine_events() -> dict[str, tuple[list[datetime], list[Event]]]:
    out: dict[str, tuple[list[datetime], list[Event]]] = defaultdict(lambda: ([], []))
    for e in week():
        if e.get("machine") and e["type"] in ("count", "state"):
            times, evs = out[e["machine"]]
            times.append(ts(e))
            evs.append(e)
    return dict(out)


def _between(machine: str, a: datetime, b: datetime, inclusive: bool) -> list[Event]:
    times, evs = _machine_events()[machine]
    lo = bisect_left(times, a) if inclusive else bisect_right(times, a)
    return evs[lo : bisect_right(times, b)]


def _parts_between(machine: str, a: datetime, b: datetime) -> int:
    return sum(
        e["good"] + e["scrap"] for e in _between(machine, a, b, True) if e["type"] == "count"
    )


def _working(a: datetime, b: datetime, machine: str) -> bool:
    """No break or off-shift between the two times (the simulator's inspectors work the
    shifts: a patrol due in a break comes after it)."""
    return not [
        e
        for e in _between(machine, a, b, False)
        if e["type"] == "state" and e["state"] == "planned_stop"
    ]


def _day(plant: PlantConfig) -> list[Event]:
    return list(generate(plant, seed=3, start=MONDAY_9, end=MONDAY_9 + timedelta(hours=24)))


def _rejections(plant: PlantConfig, events: list[Event]) -> list[Rejection]:
    entries = [LogEntry(i, json.dumps(e).encode(), None, None) for i, e in enumerate(events, 1)]
    return [r for r in Validator(plant)(entries) if isinstance(r, Rejection)]


def test_a_plant_without_routings_defects_or_inspections_gets_none() -> None:
    data = yaml.safe_load((REPO_ROOT / "config" / "plant.example.yaml").read_text("utf-8"))
    for key in ("routings", "defects", "inspections"):
        data.pop(key)
    for product in data["products"]:
        product.pop("inspections", None)
    plant = PlantConfig.model_validate(data)
    events = _day(plant)
    assert _rejections(plant, events) == []
    kinds = {e.get("kind") for e in events}
    assert "inspection" not in kinds and {"sign_in", "defect", "rework"} <= kinds
    assert not [e for e in events if e.get("operation")]
    # Every machine has work of its own again: none waits for a previous step.
    starts = {e["machine"] for e in events if e.get("kind") == "wo_start" and ts(e) == MONDAY_9}
    assert starts == set(plant.machines)


def test_the_scaled_benchmark_plant_simulates_valid_events() -> None:
    plant = PlantConfig.model_validate(scaled_plant_data(36))
    events = _day(plant)
    assert _rejections(plant, events) == []
    ops = {
        (e["machine"], e["operation"])
        for e in events
        if e.get("kind") == "wo_start" and e.get("operation")
    }
    assert ("CNC-06.k2", "20") in ops or ("CNC-06.k1", "20") in ops or ("CNC-06", "20") in ops
    people = [e["operator"] for e in events if e.get("kind") == "sign_in"]
    by_line: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e.get("kind") == "sign_in":
            by_line[plant.line_of_machine[e["machine"]].id].add(e["operator"])
    lines = list(by_line.values())
    assert people and all(not a & b for a, b in pairwise(lines))  # each line its own crew
