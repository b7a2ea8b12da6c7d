"""Priority dispatch (mesflow/dispatch.py): run order, projections in planned time, the
orders a VIP order pushes past their due date, measured rates and promises. Pure: no I/O.

The hand-worked plant used throughout (UTC, every day):

    early shift 06:00-14:00, break 10:00-10:30    -> planned 06-10, 10:30-14
    late  shift 14:00-22:00, break 18:00-18:30    -> planned 14-18, 18:30-22

Machine M1: product PA at 60 parts/h (measured), product PB at the ideal 120 s/part = 30/h.
"Now" is Monday 2026-03-02 07:00.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow.dispatch import (
    HOUR_US,
    NO_DUE,
    Entry,
    Job,
    MachineInput,
    Plan,
    Rate,
    RunSpan,
    dispatch,
    measured_rates,
    planned_us,
    promise,
    pushed_by,
    rate_for,
    run_key,
    with_new,
)
from mesflow.plant import ShiftCalendar
from streams.hour_clock import to_us
from streams.shift_calendar import CalendarIndex

CAL = ShiftCalendar.model_validate(
    {
        "shifts": [
            {"name": "early", "start": "06:00", "end": "14:00",
             "breaks": [{"start": "10:00", "end": "10:30"}]},
            {"name": "late", "start": "14:00", "end": "22:00",
             "breaks": [{"start": "18:00", "end": "18:30"}]},
        ]
    }
)  # fmt: skip
PLAN = Plan(CalendarIndex(CAL, "UTC"))


def at(d: int, h: int, m: int = 0) -> int:
    return to_us(datetime(2026, 3, d, h, m, tzinfo=UTC))


NOW = at(2, 7)
IDEAL = {("M1", "PA"): 45.0, ("M1", "PB"): 120.0, ("M2", "PA"): 90.0}
RATE = rate_for("M1", {("M1", "PA"): 60.0}, lambda m, p: IDEAL[(m, p)])


def job(wo: str, prio: int, due: int, product: str, qty: int, good: int = 0, **kw: object) -> Job:
    return Job(wo, "SO-" + wo, product, qty, good, prio, due, **kw)  # type: ignore[arg-type]


A = job("A", 3, at(2, 13), "PA", 180, good=60)  # 120 left at 60/h: 2 h
B = job("B", 2, at(2, 16), "PB", 90)  # 90 at 30/h: 3 h
C = job("C", 3, at(3, 8), "PA", 300)  # 300 at 60/h: 5 h
VIP = job("V", 1, at(2, 20), "PA", 90)  # 90 at 60/h: 1.5 h


def times(entries: list[Entry]) -> list[tuple[str, int | None, int | None]]:
    return [(e.job.work_order, e.start, e.finish) for e in entries]


def test_hand_worked_list_and_projections() -> None:
    # Order: B (priority 2) before A and C (priority 3; A's due is earlier).
    # B: 07:00 + 3 h of planned time = 10:00 (just at the break).
    # A: after the break, 10:30 + 2 h = 12:30 (due 13:00: 30 min of slack).
    # C: 12:30 + 5 h: 12:30-14:00 is 1.5 h (the late shift follows at once), then 3.5 h
    #    from 14:00 = 17:30 (before the 18:00 break; due Tuesday 08:00).
    out = dispatch([A, C, B], RATE, PLAN, NOW)
    assert times(out) == [
        ("B", at(2, 7), at(2, 10)),
        ("A", at(2, 10, 30), at(2, 12, 30)),
        ("C", at(2, 12, 30), at(2, 17, 30)),
    ]
    assert [e.position for e in out] == [1, 2, 3]
    assert out[1].slip_us == -30 * 60 * 1_000_000
    assert not any(e.late for e in out)
    assert out[0].rate == Rate(30.0, "ideal") and out[1].rate == Rate(60.0, "measured")


def test_a_vip_order_moves_up_and_pushes_the_right_order_past_due() -> None:
    # With V (priority 1, 90 parts = 1.5 h) the order is V, B, A, C:
    # V: 07:00-08:30.
    # B: 08:30 + 3 h: 1.5 h to the 10:00 break, 1.5 h from 10:30 -> 12:00 (due 16:00: fine).
    # A: 12:00 + 2 h -> 14:00, due 13:00: one hour late. It was on time (12:30) before.
    # C: 14:00 + 5 h: 4 h to the 18:00 break, 1 h from 18:30 -> 19:30 (due Tuesday: fine).
    impact = with_new([A, B, C], VIP, RATE, PLAN, NOW)
    assert times(impact.after) == [
        ("V", at(2, 7), at(2, 8, 30)),
        ("B", at(2, 8, 30), at(2, 12)),
        ("A", at(2, 12), at(2, 14)),
        ("C", at(2, 14), at(2, 19, 30)),
    ]
    assert impact.new.job.work_order == "V" and impact.new.job.hypothetical
    assert [(s.job.work_order, s.finish_before, s.finish_after) for s in impact.pushed] == [
        ("A", at(2, 12, 30), at(2, 14))
    ]
    assert impact.after[2].slip_us == HOUR_US
    # The board's question for an order already listed: the same answer.
    pushed = pushed_by([A, B, C, VIP], "V", RATE, PLAN, NOW)
    assert [(s.job.work_order, s.finish_after) for s in pushed] == [("A", at(2, 14))]
    # An order already late is not "pushed past" its due again.
    late_a = job("A", 3, at(2, 11), "PA", 180, good=60)
    assert with_new([late_a, B, C], VIP, RATE, PLAN, NOW).pushed == []


def test_at_risk_goes_first_then_priority_then_due_then_order_no() -> None:
    risky = job("Z", 9, at(9, 0), "PA", 10, at_risk=True)
    tie1 = job("T1", 2, at(5, 0), "PA", 10)
    tie2 = job("T0", 2, at(5, 0), "PA", 10)
    out = dispatch([A, tie1, B, risky, tie2, C], RATE, PLAN, NOW)
    # Z (at risk) first whatever its priority; B and the ties share priority 2, B is due
    # first; T0 and T1 tie on due too: order no decides. Then priority 3: A, C.
    assert [e.job.work_order for e in out] == ["Z", "B", "T0", "T1", "A", "C"]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(1, 5), st.integers(0, 100), st.integers(1, 500)),
        min_size=1,
        max_size=8,
    )
)
def test_projections_are_back_to_back_in_run_order(rows: list[tuple[bool, int, int, int]]) -> None:
    jobs = [
        job(f"W{i}", p, at(2, 0) + d * HOUR_US, "PA", q, at_risk=r)
        for i, (r, p, d, q) in enumerate(rows)
    ]
    out = dispatch(jobs, RATE, PLAN, NOW)
    assert [e.job for e in out] == sorted(jobs, key=run_key)
    prev = NOW
    for e in out:
        assert e.start is not None and e.finish is not None
        assert prev <= e.start <= e.finish
        # The planned time between start and finish is exactly the work: remaining / rate.
        assert planned_us(PLAN, e.start, e.finish) == round(e.job.remaining * HOUR_US / 60.0)
        prev = e.finish


def test_planned_stops_and_the_horizon() -> None:
    # A planned stop 07:30-08:30 delays B by one hour: 07:00-07:30, 08:30-10:00 is 2 h,
    # then 1 h from 10:30 -> 11:30.
    plan = Plan(PLAN.calendar, ((at(2, 7, 30), at(2, 8, 30)),))
    assert times(dispatch([B], RATE, plan, NOW)) == [("B", at(2, 7), at(2, 11, 30))]
    # 60 days hold 900 planned hours: 100 000 parts at 60/h (1667 h) do not fit.
    huge = job("H", 1, at(3, 0), "PA", 100_000)
    out = dispatch([huge, C], RATE, PLAN, NOW)
    assert out[0].finish is None and out[0].late and out[1].finish is None


def test_measured_rate_counts_planned_time_only() -> None:
    # 09:00-11:00 holds 1.5 h of planned time (the 10:00-10:30 break): 90 good -> 60/h.
    spans = [RunSpan("M1", "PA", 90, at(1, 9), at(1, 11))]
    assert measured_rates(spans, {"M1": PLAN}, NOW) == {("M1", "PA"): 60.0}
    # Under an hour of evidence, or older than the window: the ideal cycle time stands in.
    short = [RunSpan("M1", "PA", 30, at(1, 9), at(1, 9, 30))]
    assert measured_rates(short, {"M1": PLAN}, NOW) == {}
    old = [RunSpan("M1", "PA", 90, at(1, 9) - 10 * 24 * HOUR_US, at(1, 11) - 10 * 24 * HOUR_US)]
    assert measured_rates(old, {"M1": PLAN}, NOW) == {}
    assert rate_for("M1", {}, lambda m, p: 120.0)("PB") == Rate(30.0, "ideal")


def test_promise_takes_the_earliest_finish_over_the_machines() -> None:
    # 90 PA, priority 2, no due date (it sorts after B, priority 2 with a due date):
    # M1: B 07:00-10:00, then the new order 10:30 + 1.5 h = 12:00, before A and C; A moves to
    #     12:00-14:00 and is late (due 13:00).
    # M2: empty, ideal 90 s/part = 40/h: 90 parts = 2.25 h -> 07:00 + 2.25 h = 09:15.
    # M2 finishes first and pushes nothing.
    new = job("NEW", 2, NO_DUE, "PA", 90)
    m2_rate = rate_for("M2", {}, lambda m, p: IDEAL[(m, p)])
    machines = {
        "M1": MachineInput([A, B, C], RATE, PLAN),
        "M2": MachineInput([], m2_rate, PLAN),
    }
    got = promise(new, machines, NOW)
    assert got is not None
    assert (got.machine, got.start, got.finish, got.impact.pushed) == ("M2", NOW, at(2, 9, 15), [])
    only_m1 = promise(new, {"M1": machines["M1"]}, NOW)
    assert only_m1 is not None and (only_m1.start, only_m1.finish) == (at(2, 10, 30), at(2, 12))
    assert [s.job.work_order for s in only_m1.impact.pushed] == ["A"]
    assert promise(new, {}, NOW) is None
