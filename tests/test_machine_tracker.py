"""The per-machine logic, driven directly (no Bytewax, no database)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow.events import parse_event
from mesflow.plant import PlantConfig, load_plant_config
from mesflow.settings import REPO_ROOT
from streams.hour_clock import to_us
from streams.machine_tracker import MachineSpec, MachineTracker
from streams.records import (
    HourRow,
    IntervalDelete,
    IntervalRow,
    KpiRow,
    ReasonSetRow,
    Rejection,
    ScrapSetRow,
    StatusRow,
    WorkOrderParts,
    WorkOrderStarted,
)

PLANT: PlantConfig = load_plant_config(REPO_ROOT / "config" / "plant.example.yaml")
T0 = datetime.fromisoformat("2026-11-20T10:50:00+08:00")  # a Friday day shift


def run(
    events: list[dict[str, Any]], batch: int = 7, partial: bool = False
) -> tuple[dict[Any, Any], list[Rejection]]:
    """Apply events in the given order, flushing every `batch`; the final row per key.

    `partial`: most flushes are the live kind (intervals and status only), as when the
    dataflow throttles figures; the last flush is full."""
    tracker = MachineTracker(MachineSpec.from_plant(PLANT, "IM-01"))
    final: dict[Any, Any] = {}
    rejected: list[Rejection] = []
    for i, e in enumerate(events):
        r = tracker.apply(i, parse_event(_json(e)))  # type: ignore[arg-type]
        if r is not None:
            rejected.append(r)
        if i % batch == batch - 1 or i == len(events) - 1:
            full = not partial or i == len(events) - 1 or i % (batch * 3) == 0
            for row in tracker.flush(full):
                if isinstance(row, WorkOrderParts):
                    # When the totals were observed depends on arrival; the totals do not.
                    row = row._replace(t=0)
                final[_key(row)] = None if isinstance(row, IntervalDelete) else row
    # A work order whose parts all moved away reads the same as one never written.
    return {
        k: v
        for k, v in final.items()
        if v is not None
        and not (isinstance(v, WorkOrderParts) and v.good_total == v.scrap_total == 0)
        and not (isinstance(v, ScrapSetRow) and not v.items)  # an empty set deletes nothing
    }, rejected


def _key(row: Any) -> tuple[Any, ...]:
    if isinstance(row, IntervalRow | IntervalDelete):
        return ("interval", row.start_ts)
    if isinstance(row, StatusRow):
        return ("StatusRow",)
    if isinstance(row, HourRow | ScrapSetRow):
        return (type(row).__name__, row.hour_start)
    if isinstance(row, WorkOrderParts | WorkOrderStarted):
        return (type(row).__name__, row.work_order, row.machine)
    return (type(row).__name__, *row[1:3])


def _json(e: dict[str, Any]) -> str:
    import json

    return json.dumps(e)


def ev(kind: str, minutes: float, **fields: Any) -> dict[str, Any]:
    ts = (T0 + timedelta(minutes=minutes)).isoformat()
    if kind in ("downtime_reason", "scrap_report", "wo_start", "wo_end"):
        base = {"type": "report", "kind": "scrap" if kind == "scrap_report" else kind}
    else:
        base = {"type": kind}
    return {**base, "machine": "IM-01", "ts": ts, **fields}


def kpi(rows: dict[Any, Any], bucket: str, start: str) -> Any:
    return rows[("KpiRow", bucket, datetime.fromisoformat(start))]


def test_an_hour_with_a_breakdown_a_microstop_and_lunch() -> None:
    events = [
        ev("state", 10, state="running"),  # 11:00
        *[ev("count", 10 + m, good=2) for m in range(1, 60, 1)],
        ev("state", 20, state="idle"),  # 11:10, 90 s: a micro-stop
        ev("state", 21.5, state="running"),
        ev("state", 40, state="down", reason="heater_fault"),  # 11:30 - 11:40
        ev("state", 50, state="running"),
        ev("state", 70, state="planned_stop"),  # 12:00, over the lunch break
        ev("state", 100, state="running"),  # 12:30
        ev("count", 101, good=1),
    ]
    events.sort(key=lambda e: e["ts"])  # stable: a state comes before a count at its instant
    rows, rejected = run(events)
    assert rejected == []
    h11 = kpi(rows, "hour", "2026-11-20T11:00:00+08:00")
    assert h11.planned_s == 3600
    assert h11.down_s == 600 and h11.failures == 1 and h11.failure_s == 600
    assert h11.microstop_s == 90 and h11.microstop_count == 1
    assert h11.running_s == 3600 - 600 - 90
    h12 = kpi(rows, "hour", "2026-11-20T12:00:00+08:00")
    # 12:00-12:30 is lunch (not planned); the planned_stop inside it is not subtracted twice.
    assert h12.planned_stop_s == 0
    assert h12.planned_s == 60  # 12:30 to the last event at 12:31
    reasons = rows[("ReasonSetRow", "hour", datetime.fromisoformat("2026-11-20T11:00:00+08:00"))]
    assert reasons.items == (("heater_fault", 600.0, 1),)


def test_late_reason_report_reattributes_the_stop() -> None:
    events = [
        ev("state", 10, state="running"),
        ev("state", 20, state="down"),
        ev("state", 30, state="running"),
        ev("count", 200, good=1),
        ev(
            "downtime_reason",
            210,
            at=(T0 + timedelta(minutes=25)).isoformat(),
            reason="material_shortage",
            operator="op7",
        ),
    ]
    rows, _ = run(events, batch=1)
    h = rows[("ReasonSetRow", "hour", datetime.fromisoformat("2026-11-20T11:00:00+08:00"))]
    assert h.items == (("material_shortage", 600.0, 1),)
    stop = rows[("interval", datetime.fromisoformat("2026-11-20T11:10:00+08:00"))]
    assert stop.reason == "material_shortage" and stop.is_microstop is False


def test_counter_baseline_and_reset() -> None:
    events = [
        ev("state", 0, state="running"),
        ev("counter", 1, name="total", value=1000),  # baseline
        ev("counter", 2, name="total", value=1010),
        ev("counter", 3, name="total", value=4),  # reset: 4 parts since
        ev("counter", 4, name="scrap", value=7),  # baseline
        ev("counter", 5, name="scrap", value=9),  # 2 of the good parts were scrap
    ]
    rows, _ = run(events)
    h = kpi(rows, "hour", "2026-11-20T10:00:00+08:00")
    assert (h.all_good, h.all_scrap, h.good, h.scrap) == (12, 2, 12, 2)


def test_event_beyond_the_allowed_lateness_waits_for_a_rebuild() -> None:
    tracker = MachineTracker(MachineSpec.from_plant(PLANT, "IM-01"))
    events = [
        ev("state", 0, state="running"),
        ev("count", 30, good=1),
        ev("count", 20, good=1),  # 10 min behind 11:20: not applied, remembered
        ev("count", 27, good=1),
    ]
    out = [tracker.apply(i, parse_event(_json(e))) for i, e in enumerate(events)]  # type: ignore[arg-type]
    assert out == [None] * 4
    assert tracker.take_late() == [2] and tracker.take_late() == []
    assert tracker.late_from == to_us(datetime.fromisoformat(events[2]["ts"]))
    assert tracker.good_total == 2 and tracker.seq == 3


def test_rejected_events_do_not_move_the_clock() -> None:
    tracker = MachineTracker(MachineSpec.from_plant(PLANT, "IM-01"))
    apply = lambda i, e: tracker.apply(i, parse_event(_json(e)))  # type: ignore[arg-type]  # noqa: E731
    assert apply(0, ev("state", 0, state="down")) is None
    clock = tracker.last_ts
    # An unknown reason code, on a report and on a state event: dead-lettered, clock kept.
    at = (T0 + timedelta(minutes=1)).isoformat()
    r1 = apply(1, ev("downtime_reason", 60, at=at, reason="no_such_code"))
    r2 = apply(2, ev("state", 61, state="idle", reason="no_such_code"))
    # A report about running time long ago: no_stop, clock kept.
    r3 = apply(3, ev("state", 62, state="running"))
    assert r3 is None
    clock = tracker.last_ts
    r4 = apply(4, ev("downtime_reason", 90, at=(T0 + timedelta(minutes=62.5)).isoformat(),
                     reason="material_shortage"))  # fmt: skip
    assert [r.reason for r in (r1, r2, r4) if r] == ["unknown_reason", "unknown_reason", "no_stop"]
    assert tracker.last_ts == clock
    assert [iv.state for iv in tracker.intervals] == ["down", "running"]


def test_unknown_reason_on_a_state_event_is_dead_lettered() -> None:
    rows, rejected = run(
        [ev("state", 0, state="running"), ev("state", 5, state="down", reason="bogus")]
    )
    assert [(r.seq, r.reason) for r in rejected] == [(1, "unknown_reason")]
    assert [v.state for k, v in rows.items() if k[0] == "interval"] == ["running"]


STATES = ["running", "running", "idle", "down", "setup", "planned_stop", "offline"]


@st.composite
def streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    rng = random.Random(draw(st.integers(0, 10_000)))
    n = draw(st.integers(5, 120))
    t = 0.0
    out: list[dict[str, Any]] = [ev("state", 0, state="running")]
    stop_starts: list[float] = []
    for i in range(n):
        t += rng.choice([0.05, 0.3, 1, 1.7, 4, 9])  # minutes; unique times
        r = rng.random()
        if r < 0.25:
            s = rng.choice(STATES)
            out.append(
                ev(
                    "state",
                    t,
                    state=s,
                    **({"reason": "hydraulic_fault"} if s == "down" and rng.random() < 0.5 else {}),
                )
            )
            if s in ("idle", "down"):
                stop_starts.append(t)
        elif r < 0.65:
            out.append(ev("count", t, good=rng.randint(0, 3), scrap=int(rng.random() < 0.1)))
        elif r < 0.72:
            out.append(
                ev(
                    "counter",
                    t,
                    name="total",
                    value=rng.randint(0, 30) if rng.random() < 0.2 else 100 + i,
                )
            )
        elif r < 0.78:
            out.append(ev("scrap_report", t, qty=1, reason="short_shot"))
        elif r < 0.86 and stop_starts:
            at = stop_starts[-1] + 0.01
            out.append(
                ev(
                    "downtime_reason",
                    t,
                    at=(T0 + timedelta(minutes=at)).isoformat(),
                    reason=rng.choice(["material_shortage", "mold_damage"]),
                )
            )
        elif r < 0.93:
            out.append(ev("wo_start", t, work_order=f"WO-{rng.randint(1, 2)}"))
        else:
            out.append(
                ev(
                    "work_order",
                    t,
                    work_order=f"WO-{rng.randint(1, 2)}",
                    order_no="SO-1",
                    product=rng.choice(["P-100", "P-200"]),
                    qty=100,
                )
            )
    for e in out:
        if e["type"] == "work_order":
            del e["machine"]
    return out


def shuffled_within(
    events: list[dict[str, Any]], lateness_min: float, seed: int
) -> list[dict[str, Any]]:
    """Arrival order that is never later than the allowed lateness."""
    rng = random.Random(seed)
    keyed = [
        (datetime.fromisoformat(e["ts"]) + timedelta(minutes=rng.uniform(0, lateness_min)), i, e)
        for i, e in enumerate(events)
    ]
    return [e for _, _, e in sorted(keyed, key=lambda k: (k[0], k[1]))]


@settings(max_examples=int(__import__("os").environ.get("MESFLOW_EXAMPLES", "60")), deadline=None)
@given(streams(), st.integers(0, 1000), st.sampled_from([1, 3, 50]))
def test_late_input_within_lateness_gives_the_in_order_results(
    events: list[dict[str, Any]], seed: int, batch: int
) -> None:
    in_order, _ = run(events, batch=batch)
    late, rejected = run(shuffled_within(events, 4.9, seed), batch=batch)
    assert [r for r in rejected if r.reason == "late"] == []
    assert late == in_order


@settings(max_examples=40, deadline=None)
@given(streams(), st.sampled_from([1, 4]))
def test_throttled_figures_end_the_same(events: list[dict[str, Any]], batch: int) -> None:
    """Live flushes (figures held back) then a full one store what full flushes store."""
    assert run(events, batch=batch, partial=True) == run(events, batch=batch)


def test_a_live_flush_writes_the_status_only_when_what_it_shows_changes() -> None:
    """Between full flushes (live, figures throttled) a count alone writes no status row;
    a new state or work order writes it at once, with the counters as they stand; the next
    full flush writes the counters."""
    tracker = MachineTracker(MachineSpec.from_plant(PLANT, "IM-01"))
    seq = iter(range(100))

    def feed(e: dict[str, Any]) -> None:
        assert tracker.apply(next(seq), parse_event(_json(e))) is None  # type: ignore[arg-type]

    def status(rows: list[Any]) -> list[StatusRow]:
        return [r for r in rows if isinstance(r, StatusRow)]

    feed(ev("state", 0, state="running"))
    feed(ev("count", 1, good=1))
    assert [r.good_total for r in status(tracker.flush(True))] == [1]
    feed(ev("count", 2, good=1))
    assert status(tracker.flush(False)) == []  # counters wait for the full flush
    assert tracker.has_pending()  # ... which the dataflow's timer asks for
    feed(ev("state", 3, state="idle"))
    [row] = status(tracker.flush(False))
    assert (row.state, row.good_total) == ("idle", 2)
    feed(ev("count", 4, good=3))
    assert status(tracker.flush(False)) == []
    feed(ev("wo_start", 5, work_order="WO-LIVE-1"))
    [row] = status(tracker.flush(False))
    assert (row.work_order, row.good_total) == ("WO-LIVE-1", 5)
    feed(ev("count", 6, good=1))
    assert status(tracker.flush(False)) == []
    [row] = status(tracker.flush(True))
    assert (row.state, row.good_total) == ("idle", 6)
    assert status(tracker.flush(True)) == []  # nothing new: nothing written


# -- late data: checkpoints and rebuilds (streams/rebuild.py), without the database ---------


def run_merging(
    events: list[dict[str, Any]], batch: int, *, every: int = 2
) -> tuple[dict[Any, Any], int]:
    """The dataflow's late-data path in memory: apply in arrival order, keep a checkpoint
    every `every` batches (never while a rebuild is pending), rebuild after a batch that
    met late events. Returns the final row per key and the number of rebuilds."""
    import pickle

    from streams.rebuild import CheckpointInfo, choose_checkpoint, replay_events

    spec = MachineSpec.from_plant(PLANT, "IM-01")
    tracker = MachineTracker(spec)
    log: list[tuple[int, Any]] = []
    checkpoints: dict[CheckpointInfo, bytes] = {}
    final: dict[Any, Any] = {}
    stored_intervals: set[int] = set()
    rebuilds = 0

    def store(rows: list[Any]) -> None:
        for row in rows:
            if isinstance(row, Rejection):
                continue
            if isinstance(row, WorkOrderParts):
                row = row._replace(t=0)
            if isinstance(row, IntervalRow):
                stored_intervals.add(to_us(row.start_ts))
            elif isinstance(row, IntervalDelete):
                stored_intervals.discard(to_us(row.start_ts))
            final[_key(row)] = None if isinstance(row, IntervalDelete) else row

    for i, e in enumerate(events):
        parsed = parse_event(_json(e))
        log.append((i, parsed))
        tracker.apply(i, parsed)  # type: ignore[arg-type]
        if i % batch == batch - 1 or i == len(events) - 1:
            store(tracker.flush())
            if tracker.take_late():
                times = [(s, to_us(x.ts)) for s, x in log]
                c = choose_checkpoint(list(checkpoints), times, spec.lateness_us)
                base = pickle.loads(checkpoints[c]) if c else MachineTracker(spec)
                after = [(s, x) for s, x in log if s > (c.seq if c else -1)]
                done = replay_events(
                    base, after, tracker.seq, stored_intervals, tracker.hours, tracker.shifts
                )
                tracker = done.tracker
                store(done.rows)
                # Buckets it wrote empty because its clock no longer reaches them read as
                # never written (an in-order run has no row there).
                shifts = {s.start for s in tracker.shifts}
                for row in done.rows:
                    if isinstance(row, HourRow) and to_us(row.hour_start) not in tracker.hours:
                        final[_key(row)] = None
                    elif isinstance(row, KpiRow | ReasonSetRow):
                        start = to_us(row.bucket_start)
                        if start not in (tracker.hours if row.bucket == "hour" else shifts):
                            final[_key(row)] = None
                rebuilds += 1
            elif tracker.last_ts is not None and (i // batch) % every == 0:
                info = CheckpointInfo(tracker.seq, tracker.last_ts)
                checkpoints[info] = pickle.dumps(tracker)
    return {
        k: v
        for k, v in final.items()
        if v is not None
        and not (isinstance(v, WorkOrderParts) and v.good_total == v.scrap_total == 0)
        and not (isinstance(v, ScrapSetRow) and not v.items)  # an empty set deletes nothing
    }, rebuilds


def shuffled_beyond(
    events: list[dict[str, Any]], seed: int, late_share: float = 0.15
) -> list[dict[str, Any]]:
    """Arrival order within the lateness, except some events held back for up to a day
    (a gateway's store and forward)."""
    rng = random.Random(seed)
    keyed = []
    for i, e in enumerate(events):
        delay = rng.uniform(0, 4.9)
        if i and rng.random() < late_share:
            delay = rng.choice([rng.uniform(6, 90), rng.uniform(90, 24 * 60)])
        keyed.append((datetime.fromisoformat(e["ts"]) + timedelta(minutes=delay), i, e))
    return [e for _, _, e in sorted(keyed, key=lambda k: (k[0], k[1]))]


@settings(max_examples=int(__import__("os").environ.get("MESFLOW_EXAMPLES", "50")), deadline=None)
@given(streams(), st.integers(0, 1000), st.sampled_from([1, 3, 20]), st.sampled_from([1, 3]))
def test_late_input_beyond_lateness_is_merged_to_the_in_order_results(
    events: list[dict[str, Any]], seed: int, batch: int, every: int
) -> None:
    in_order, _ = run(events, batch=batch)
    merged, _ = run_merging(shuffled_beyond(events, seed), batch=batch, every=every)
    assert merged == in_order


def test_a_late_state_event_splits_a_stop_across_hours() -> None:
    events = [
        ev("state", 0, state="running"),
        ev("state", 30, state="down"),  # 11:20 .. 13:10, over lunch
        ev("state", 140, state="running"),
        *[ev("count", 141 + m, good=1) for m in range(30)],
    ]
    late = ev("state", 60, state="running")  # 11:50: the stop was 30 min, not 110
    in_order, _ = run(sorted([*events, late], key=lambda e: e["ts"]))
    merged, rebuilds = run_merging([*events, late], batch=5)
    assert rebuilds == 1 and merged == in_order
    h11 = kpi(merged, "hour", "2026-11-20T11:00:00+08:00")
    assert h11.down_s == 1800 and h11.failure_s == 1800


def test_a_report_refused_after_a_merge_leaves_no_figures_past_the_clock() -> None:
    """A reason report accepted on arrival (its `at` then in a stop) and refused `no_stop`
    once a state event later than the allowed lateness makes that time running: the
    merge's clock ends at the last accepted event, and the hour the report had reached
    (14:00) is written empty, not left with its 10 idle minutes."""
    events = [
        ev("state", 130, state="running"),  # 13:00
        ev("state", 140, state="down"),  # 13:10
        ev("state", 142, state="running"),
        ev("state", 160, state="idle"),  # 13:30
        ev("state", 141, state="running"),  # 13:11, 19 minutes late
        ev("downtime_reason", 200, at=(T0 + timedelta(minutes=141)).isoformat(),
           reason="mold_damage"),  # 14:10: 13:11 is running in event-time order
    ]  # fmt: skip
    in_order, rejected = run(sorted(events, key=lambda e: e["ts"]), batch=1)
    assert [r.reason for r in rejected] == ["no_stop"]
    merged, rebuilds = run_merging(events, batch=10)
    assert rebuilds == 1 and merged == in_order
    assert ("HourRow", datetime.fromisoformat("2026-11-20T14:00:00+08:00")) not in merged


def test_a_refused_report_is_taken_when_a_state_event_within_lateness_makes_its_stop() -> None:
    """A reason report about 10:59:24.6, sent at 11:05:45, arrives while the machine's clock
    is 11:01:45 and 10:59:24.6 is running: refused `no_stop`. The idle state event at
    10:59:24 then arrives within the lateness of the clock: in event-time order it comes
    first, the report names that stop and its ts ends the offline interval."""
    at = (T0 + timedelta(minutes=9.41)).isoformat()
    idle = ev("state", 9.4, state="idle")  # 10:59:24
    events = [
        ev("state", 0, state="running"),
        ev("state", 11.75, state="offline"),  # 11:01:45
        ev("downtime_reason", 15.75, at=at, reason="material_shortage"),  # 11:05:45
    ]
    in_order, rejected = run([events[0], idle, *events[1:]], batch=1)
    assert rejected == []
    for batch in (1, 4):
        arrived, refused = run([*events, idle], batch=batch)
        assert [r.reason for r in refused] == ["no_stop"]  # its dead letter stays
        assert arrived == in_order
    stop = in_order[("interval", datetime.fromisoformat("2026-11-20T10:59:24+08:00"))]
    assert stop.reason == "material_shortage"
    assert in_order[("StatusRow",)].last_event_ts == datetime.fromisoformat(
        "2026-11-20T11:05:45+08:00"
    )


def test_a_rebuild_applies_a_remembered_refused_report_at_its_own_time() -> None:
    """The refused report (11:05:45 about 10:59:24.6) is in the checkpoint a rebuild starts
    from; the idle state event after it makes its stop. Taken at the state event, it would
    move the clock to 11:05:45 before the count at 11:00:00 (late by then: the rebuild
    failed); applied again at its own ts, the rebuild gives the in-order figures."""
    at = (T0 + timedelta(minutes=9.41)).isoformat()
    events = [
        ev("state", 0, state="running"),
        ev("state", 11.75, state="offline"),  # 11:01:45
        ev("downtime_reason", 15.75, at=at, reason="material_shortage"),  # refused
        ev("state", 9.4, state="idle"),  # 10:59:24: takes the report, clock 11:05:45
        ev("count", 10, good=2),  # 11:00:00, late: rebuilt from the checkpoint at 11:01:45
    ]
    in_order, _ = run(sorted(events, key=lambda e: e["ts"]), batch=1)
    merged, rebuilds = run_merging(events, batch=1, every=1)
    assert rebuilds == 1 and merged == in_order
    stop = merged[("interval", datetime.fromisoformat("2026-11-20T10:59:24+08:00"))]
    assert stop.reason == "material_shortage"


def test_a_refused_report_is_taken_when_a_silence_makes_its_stop() -> None:
    """Silent after 10 minutes: the report (11:30 about 11:20) arrives after the part at
    11:01 and is refused (11:20 is running then). The part at 11:28, sent before it in
    event time, ends the silence: offline from 11:01, and the report names that stop. A
    part after the report's ts (11:35, 11:32) ends the silence too, but the report came
    first in event time, whatever the arrival order: refused."""
    from tests.test_silent_machines import intervals
    from tests.test_silent_machines import run as run_silent

    at = (T0 + timedelta(minutes=30)).isoformat()
    report = ev("downtime_reason", 40, at=at, reason="material_shortage")
    head = [ev("state", 10, state="running"), ev("count", 11, good=1)]
    for part, reason in ((38, "material_shortage"), (45, "no_data")):
        events = [*head, report, ev("count", part, good=1)]
        in_order = run_silent(sorted(events, key=lambda e: e["ts"]), seconds=600, batch=1)
        assert intervals(in_order)[1] == (11.0, "offline", reason)
        assert run_silent(events, seconds=600, batch=1) == in_order
    # The other way round: the part at 11:32 arrives first and makes 11:01-11:32 offline,
    # but in event-time order the report came at 11:30, before that silence was decided.
    events = [*head, ev("count", 42, good=1), report]
    in_order = run_silent(sorted(events, key=lambda e: e["ts"]), seconds=600, batch=1)
    assert intervals(in_order)[1] == (11.0, "offline", "no_data")
    assert run_silent(events, seconds=600, batch=1) == in_order
    # A report about 11:26 at 11:30 is kept, whatever the state then (within the lateness
    # of its ts): the silence that the part at 11:31 decides takes its reason, also when
    # that part arrives first.
    near = ev("downtime_reason", 40, at=(T0 + timedelta(minutes=36)).isoformat(),
              reason="material_shortage")  # fmt: skip
    events = [*head, ev("count", 41, good=1), near]
    in_order = run_silent(sorted(events, key=lambda e: e["ts"]), seconds=600, batch=1)
    assert intervals(in_order)[1] == (11.0, "offline", "material_shortage")
    assert run_silent(events, seconds=600, batch=1) == in_order
    # Refused, then the part at 11:33 decides the silence (after the report's ts); an event
    # that is no message (11:29, before the report's ts), arriving last, takes nothing.
    events = [*head, report, ev("count", 43, good=1), ev("wo_start", 39, work_order="WO-1")]
    in_order = run_silent(sorted(events, key=lambda e: e["ts"]), seconds=600, batch=1)
    assert intervals(in_order)[1] == (11.0, "offline", "no_data")
    assert run_silent(events, seconds=600, batch=1) == in_order


def test_choose_checkpoint() -> None:
    from streams.rebuild import CheckpointInfo, choose_checkpoint

    c1, c2, c3 = CheckpointInfo(10, 1000), CheckpointInfo(20, 2000), CheckpointInfo(30, 3000)
    lateness = 100
    # Every event after the newest is within the lateness of its clock: the newest.
    assert choose_checkpoint([c1, c2, c3], [(31, 2950), (32, 3100)], lateness) == c3
    # An event logged after c3 dated before c3's clock minus the lateness rules c3 out ...
    assert choose_checkpoint([c1, c2, c3], [(25, 2500), (31, 1950)], lateness) == c2
    # ... and one merged earlier (logged after c2, before c3) rules c2 out too; c3 holds
    # that one already, so alone it changes nothing for c3.
    assert choose_checkpoint([c1, c2, c3], [(25, 1500), (31, 1950)], lateness) == c1
    assert choose_checkpoint([c1, c2, c3], [(25, 1500), (31, 2950)], lateness) == c3
    # Exactly at the lateness still qualifies; before every checkpoint: none (from seq 0).
    assert choose_checkpoint([c3], [(31, 2900)], lateness) == c3
    assert choose_checkpoint([c1, c2, c3], [(11, 800), (31, 850)], lateness) is None
    assert choose_checkpoint([], [(1, 5)], lateness) is None


def test_event_order_is_time_then_rank_then_arrival() -> None:
    from streams.rebuild import event_order

    def parsed(e: dict[str, Any]) -> Any:
        return parse_event(_json(e))

    same = [
        (5, parsed(ev("downtime_reason", 1, at=T0.isoformat(), reason="mold_damage"))),
        (4, parsed(ev("count", 1, good=1))),
        (3, parsed(ev("wo_start", 1, work_order="WO-1"))),
        (2, parsed(ev("state", 1, state="idle"))),
        (6, parsed(ev("count", 1, good=2))),
        (1, parsed(ev("count", 0.5, good=3))),
    ]
    assert [s for s, _ in sorted(same, key=event_order)] == [1, 2, 3, 4, 6, 5]
