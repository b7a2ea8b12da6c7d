"""The alert engine (streams/alert_engine.py): pure logic, in event time."""

from __future__ import annotations

import os
import pickle
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow.alert_rules import AlertsConfig
from mesflow.plant import PlantConfig, load_plant_config
from streams.alert_engine import AckInput, AlertEngine
from streams.hour_clock import from_us, to_us
from streams.order_progress import Callback, OrderProgressRow
from streams.records import (
    AlertRow,
    HourRow,
    IntervalDelete,
    IntervalRow,
    KpiRow,
    Progress,
    StatusRow,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
T0 = to_us(datetime(2026, 11, 20, 10, 0, tzinfo=SHANGHAI))  # 10:00 plant time
MIN = 60_000_000


@pytest.fixture(scope="module")
def plant() -> PlantConfig:
    return load_plant_config("config/plant.example.yaml")


PEOPLE = {
    "zhang": {"display": "张伟", "email": "zhang@plant.example"},
    "li": {"display": "Li Na", "email": "li@plant.example", "language": "en"},
    "wang": {"display": "王强", "email": "wang@plant.example"},
    "zhao": {"display": "赵敏", "email": "zhao@plant.example"},
    "sun": {"display": "Sun Lei", "email": "sun@plant.example"},
}
CHANNELS = {"hook": {"type": "webhook", "url": "https://it.example/hook"}}
THREE_LEVELS = [
    {"after_min": 5, "people": ["zhang"], "channels": ["hook"]},
    {"after_min": 15, "people": ["li"]},
    {"after_min": 30, "people": ["wang"], "channels": ["hook"]},
]


def config(*rules: dict[str, Any]) -> AlertsConfig:
    return AlertsConfig.model_validate({"people": PEOPLE, "channels": CHANNELS, "rules": rules})


def engine(plant: PlantConfig, *rules: dict[str, Any], grace_s: float = 0) -> AlertEngine:
    return AlertEngine(config(*rules), plant, grace_s=grace_s)


def at(minutes: float) -> datetime:
    return from_us(T0 + round(minutes * MIN))


def iv(machine: str, start: float, end: float | None, state: str, reason: str | None = None) -> IntervalRow:  # fmt: skip
    e = None if end is None else at(end)
    dur = 0.0 if end is None else (end - start) * 60
    return IntervalRow(machine, at(start), e, state, reason, None, dur, None)


def heard(machine: str, minutes: float, state: str = "running") -> StatusRow:
    return StatusRow(machine, state, at(0), None, None, at(minutes), 0, 0)


DOWN = {"name": "down", "kind": "machine_down", "scope": {"line": "IM"}, "severity": "critical",
        "levels": THREE_LEVELS}  # fmt: skip


def steps(rows: list[AlertRow]) -> list[tuple[str, int, datetime]]:
    return [(r.step, r.level, r.at) for r in rows]


def test_machine_down_escalates_through_three_levels_and_resolves(plant: PlantConfig) -> None:
    e = engine(plant, DOWN)
    assert e.feed([iv("IM-01", 0, None, "down", "E12"), heard("IM-02", 1)]) == []
    opened = e.feed([heard("IM-02", 6)])
    assert steps(opened) == [("opened", 0, at(5))]
    row = opened[0]
    assert row.alert_id == f"down:machine:IM-01:{T0}"
    assert (row.machine, row.line, row.kind, row.severity) == (
        "IM-01",
        "IM",
        "machine_down",
        "critical",
    )
    assert (row.people, row.channels, row.quiet_until) == (("zhang",), ("hook",), None)
    assert row.opened_at == at(5) and row.facts["reason"] == "E12" and row.facts["minutes"] == 5
    assert e.feed([heard("IM-02", 10)]) == []  # no repeats while it stays open
    assert steps(e.feed([heard("IM-02", 16)])) == [("escalated", 1, at(15))]
    third = e.feed([heard("IM-02", 31)])
    assert steps(third) == [("escalated", 2, at(30))]
    assert third[0].people == ("wang",)
    # Back up at 40 min; resolved once the condition stayed away clear_after_s (120 s).
    assert e.feed([iv("IM-01", 0, 40, "down", "E12"), iv("IM-01", 40, None, "running")]) == []
    assert e.feed([heard("IM-02", 41)]) == []
    done = e.feed([heard("IM-02", 43)])
    assert steps(done) == [("resolved", 2, at(40))]
    assert done[0].facts["duration_s"] == 2400
    assert set(done[0].people) == {"zhang", "li", "wang"}  # everyone who was told
    assert e.feed([heard("IM-02", 90)]) == []
    assert e.state.tracks == {}  # nothing kept once it is over


def test_a_short_stop_opens_nothing_and_other_lines_are_out_of_scope(plant: PlantConfig) -> None:
    e = engine(plant, DOWN)
    rows = e.feed([iv("IM-01", 0, 4, "down"), iv("IM-01", 4, None, "running"),
                   iv("CNC-01", 0, None, "down"), heard("IM-02", 60)])  # fmt: skip
    assert rows == []


def test_history_in_one_batch_gives_the_same_steps(plant: PlantConfig) -> None:
    """A whole breakdown arriving at once (a replay) gives the steps at their own times."""
    e = engine(plant, DOWN)
    rows = e.feed(
        [iv("IM-01", 0, 20, "down"), iv("IM-01", 20, None, "running"), heard("IM-02", 30)]
    )
    assert steps(rows) == [("opened", 0, at(5)), ("escalated", 1, at(15)), ("resolved", 1, at(20))]


def test_acknowledgement_stops_escalation_but_not_the_resolve(plant: PlantConfig) -> None:
    e = engine(plant, DOWN)
    e.feed([iv("IM-01", 0, None, "down")])
    [opened] = e.feed([heard("IM-02", 6)])
    acked = e.feed([AckInput(opened.alert_id, "zhang", "board", T0 + 8 * MIN)])
    assert steps(acked) == [("acknowledged", 0, at(8))]
    assert acked[0].facts["by"] == "zhang"
    assert e.feed([heard("IM-02", 50)]) == []  # no level 1 at 15, no level 2 at 30
    e.feed([iv("IM-01", 50, None, "running")])
    assert steps(e.feed([heard("IM-02", 55)])) == [("resolved", 0, at(50))]
    # An ack of an unknown or resolved alert changes nothing.
    assert e.feed([AckInput(opened.alert_id, "li", "link", T0 + 60 * MIN)]) == []
    assert e.feed([AckInput("nonsense", "li", "link", T0)]) == []


def test_flapping_continues_the_same_alert(plant: PlantConfig) -> None:
    e = engine(plant, {**DOWN, "clear_after_s": 180})
    rows = e.feed([iv("IM-01", 0, None, "down"), heard("IM-02", 6)])
    rows += e.feed([iv("IM-01", 8, None, "running"), heard("IM-02", 8.5)])
    rows += e.feed([iv("IM-01", 9, None, "down"), heard("IM-02", 12)])  # back within 3 min
    rows += e.feed([iv("IM-01", 12.5, None, "running"), heard("IM-02", 14)])
    rows += e.feed([iv("IM-01", 14.5, None, "down"), heard("IM-02", 16)])
    rows += e.feed([iv("IM-01", 20, None, "running"), heard("IM-02", 30)])
    assert steps(rows) == [("opened", 0, at(5)), ("escalated", 1, at(15)), ("resolved", 1, at(20))]
    assert len({r.alert_id for r in rows}) == 1
    # Down again after the damping window: a new alert, with a new id.
    later = e.feed([iv("IM-01", 40, None, "down"), heard("IM-02", 46)])
    assert steps(later) == [("opened", 0, at(45))]
    assert later[0].alert_id == f"down:machine:IM-01:{T0 + 40 * MIN}"


def test_no_reason_ends_with_the_reason_report(plant: PlantConfig) -> None:
    rule = {"name": "why", "kind": "no_reason", "levels": [{"after_min": 10, "people": ["zhang"]}]}
    e = engine(plant, rule)
    assert e.feed([iv("IM-03", 0, None, "idle"), heard("IM-02", 9)]) == []
    assert steps(e.feed([heard("IM-02", 11)])) == [("opened", 0, at(10))]
    # The operator gives the reason at 12 min (the stop's interval now carries it).
    e.feed([iv("IM-03", 0, None, "idle", "material"), heard("IM-03", 12, "idle")])
    assert steps(e.feed([heard("IM-02", 15)])) == [("resolved", 0, at(12))]
    # A stop that has its reason from the start (the machine's own code) opens nothing.
    assert e.feed([iv("IM-03", 20, None, "down", "E7"), heard("IM-02", 50)]) == []
    # A running machine is no stop.
    assert e.feed([iv("IM-03", 60, None, "running"), heard("IM-02", 90)]) == []


def kpi(machine: str, start: float, hours: float, running_h: float, good: int = 100) -> KpiRow:
    planned = hours * 3600
    running = running_h * 3600
    return KpiRow(machine, "shift", at(start), at(start + 8 * 60), date(2026, 11, 20), "day",
                  planned, running, 0.0, 0, planned - running, 0.0, 0.0, 0.0, 0.0,
                  good, 0, running, 0, 0.0, good, 0)  # fmt: skip


def test_kpi_below_only_after_the_first_hour_of_the_shift(plant: PlantConfig) -> None:
    rule = {"name": "avail", "kind": "kpi_below", "metric": "availability", "target": 0.8,
            "levels": [{"after_min": 0, "people": ["li"]}]}  # fmt: skip
    e = engine(plant, rule)
    # 30 minutes into the shift, availability 0.5: too early to judge.
    assert e.feed([heard("IM-01", 30), kpi("IM-01", 0, 0.5, 0.25)]) == []
    opened = e.feed([heard("IM-01", 70), kpi("IM-01", 0, 70 / 60, 0.5)])
    assert steps(opened) == [("opened", 0, at(70))]
    value = opened[0].facts["value"]
    assert opened[0].facts["metric"] == "availability" and isinstance(value, float) and value < 0.8
    # Recovered to 0.9 by 5 h: resolved at that time.
    done = e.feed([heard("IM-01", 300), kpi("IM-01", 0, 5, 4.5)])
    done += e.feed([heard("IM-01", 303)])
    assert steps(done) == [("resolved", 0, at(300))]


def test_kpi_oee_below_target(plant: PlantConfig) -> None:
    rule = {"name": "oee", "kind": "kpi_below", "metric": "oee", "target": 0.6,
            "levels": [{"after_min": 0, "people": ["li"]}]}  # fmt: skip
    e = engine(plant, rule)
    # A = 1, P = ideal/APT = 1, Q = 50/100: OEE 0.5.
    row = kpi("IM-01", 0, 2, 2)._replace(good=50, scrap=50)
    opened = e.feed([heard("IM-01", 120), row])
    assert steps(opened) == [("opened", 0, at(120))] and opened[0].facts["value"] == 0.5


def hour(machine: str, h: int, good: int, scrap: int) -> HourRow:
    return HourRow(machine, at(h * 60), 3600, 0, 0, 0, 0, 0, good, scrap)


def test_scrap_rate_over_threshold_in_the_window(plant: PlantConfig) -> None:
    rule = {"name": "scrap", "kind": "scrap_rate", "threshold": 0.05, "window_min": 60,
            "min_parts": 20, "levels": [{"after_min": 0, "people": ["zhang"]}]}  # fmt: skip
    e = engine(plant, rule)
    assert e.feed([heard("IM-01", 30), hour("IM-01", 0, 10, 5)]) == []  # too few parts
    opened = e.feed([heard("IM-01", 50), hour("IM-01", 0, 90, 10)])
    assert steps(opened) == [("opened", 0, at(50))]
    assert opened[0].facts["rate"] == 0.1
    # The next hour is clean: 10 scrap in 300 parts over the last 60 minutes is 3.3 %.
    assert e.feed([heard("IM-01", 100), hour("IM-01", 1, 200, 0)]) == []
    done = e.feed([heard("IM-01", 103)])
    assert steps(done) == [("resolved", 0, at(100))]
    # Hour 1 bad again, then hour 2 clean: hour 1 still counts until it leaves the window.
    e.feed([heard("IM-01", 110), hour("IM-01", 1, 200, 30)])
    assert e.feed([heard("IM-01", 170), hour("IM-01", 2, 300, 0)]) == []
    done = e.feed([heard("IM-01", 181), hour("IM-01", 3, 10, 0)])
    done += e.feed([heard("IM-01", 185)])
    assert steps(done)[-1] == ("resolved", 0, at(181))


def test_silent_machine_found_by_the_plant_clock(plant: PlantConfig) -> None:
    rule = {"name": "quiet", "kind": "silent", "after_s": 600,
            "levels": [{"after_min": 0, "people": ["zhang"]}, {"after_min": 20, "people": ["li"]}]}  # fmt: skip
    e = engine(plant, rule)
    e.feed([heard("IM-01", 0), heard("IM-02", 0)])
    assert e.feed([heard("IM-02", 9)]) == []
    opened = e.feed([heard("IM-02", 11)])
    assert steps(opened) == [("opened", 0, at(10))]
    assert (
        opened[0].scope == "machine:IM-01"
        and opened[0].facts["last_heard"] == at(0).astimezone(SHANGHAI).isoformat()
    )
    # IM-02 keeps talking: it is never silent. IM-01 speaks again at 12 min.
    e.feed([heard("IM-01", 12)])
    done = e.feed([heard("IM-02", 15)])
    assert steps(done) == [("resolved", 0, at(12))]


def test_silent_live_wall_clock_moves_time(plant: PlantConfig) -> None:
    """Live, with the whole plant silent, the wall clock still finds it."""
    rule = {"name": "quiet", "kind": "silent", "after_s": 600,
            "levels": [{"after_min": 0, "people": ["zhang"]}]}  # fmt: skip
    e = AlertEngine(config(rule), plant, grace_s=300, lag_s=10)
    wall0 = T0 + 5_000_000  # the rows arrive 5 s after their event time
    assert e.feed([heard("IM-01", 0)], wall_us=wall0) == []
    assert e.tick(wall0 + 9 * MIN) == []
    rows = e.tick(wall0 + 11 * MIN)
    assert steps(rows) == [("opened", 0, at(10))]


def order_row(at_risk: bool, minutes: float, priority: int = 1) -> OrderProgressRow:
    return OrderProgressRow("SO-1", "ACME", priority, "P-100", 100, at(600), "open", 1, 10, 0,
                            0.1, at(700), at_risk, at(minutes))  # fmt: skip


def test_priority_order_at_risk_and_back_on_track(plant: PlantConfig) -> None:
    rule = {"name": "risk", "kind": "order_at_risk", "min_priority": 1,
            "levels": [{"after_min": 0, "people": ["zhao", "sun"]}]}  # fmt: skip
    e = engine(plant, rule)
    risk = Callback("SO-1", "at_risk", {"eta": at(700), "due": at(600)}, "SO-1:risk:1")
    opened = e.feed([order_row(True, 30), risk])
    assert steps(opened) == [("opened", 0, at(30))]
    r = opened[0]
    assert (r.scope, r.order_no, r.people) == ("order:SO-1", "SO-1", ("zhao", "sun"))
    assert r.facts["priority"] == 1 and r.facts["due"] == at(600).astimezone(SHANGHAI).isoformat()
    back = Callback("SO-1", "back_on_track", {}, "SO-1:risk:2")
    done = e.feed([order_row(False, 50), back])
    done += e.feed([order_row(False, 55)])
    assert steps(done) == [("resolved", 0, at(50))]
    # A priority-3 order at risk is not this rule's business.
    assert e.feed([order_row(True, 60, priority=3), risk]) == []


QUIET = {**DOWN, "severity": "warning", "quiet_hours": {"from": "22:00", "to": "06:00"}}


@pytest.mark.parametrize(
    ("local", "until"),
    [
        (datetime(2026, 11, 20, 23, 30), datetime(2026, 11, 21, 6, 0)),  # before midnight
        (datetime(2026, 11, 21, 1, 0), datetime(2026, 11, 21, 6, 0)),  # after midnight
        (datetime(2026, 11, 21, 5, 54), datetime(2026, 11, 21, 6, 0)),
        (datetime(2026, 11, 21, 5, 55), None),  # opens at 06:00 sharp: not quiet
        (datetime(2026, 11, 21, 12, 0), None),
        (datetime(2026, 11, 21, 21, 54), None),
    ],
)
def test_quiet_hours_across_midnight_in_shanghai(
    plant: PlantConfig, local: datetime, until: datetime | None
) -> None:
    e = engine(plant, QUIET)
    start = local.replace(tzinfo=SHANGHAI)
    down = IntervalRow("IM-01", start, None, "down", None, None, 0.0, None)
    later = StatusRow("IM-02", "running", start, None, None, start + timedelta(minutes=6), 0, 0)
    [row] = e.feed([down, later])
    expected = None if until is None else until.replace(tzinfo=SHANGHAI)
    assert row.quiet_until == expected
    if expected is not None:  # Shanghai is UTC+8: 06:00 there is 22:00 UTC the day before
        assert row.quiet_until is not None and row.quiet_until.astimezone(UTC).hour == 22


def test_quiet_hours_except_critical(plant: PlantConfig) -> None:
    rule = {**DOWN, "quiet_hours": {"from": "22:00", "to": "06:00", "except": "critical"}}
    e = engine(plant, rule)
    start = datetime(2026, 11, 20, 23, 0, tzinfo=SHANGHAI)
    down = IntervalRow("IM-01", start, None, "down", None, None, 0.0, None)
    later = StatusRow("IM-02", "running", start, None, None, start + timedelta(minutes=6), 0, 0)
    [row] = e.feed([down, later])
    assert row.quiet_until is None


BREAKDOWN: list[list[Any]] = [
    [iv("IM-01", 0, None, "down"), iv("IM-04", 2, None, "idle"), heard("IM-02", 3)],
    [heard("IM-02", 7), heard("IM-05", 8)],
    [heard("IM-02", 17)],
    [iv("IM-01", 0, 24, "down"), iv("IM-01", 24, None, "running"), heard("IM-02", 25)],
    [iv("IM-01", 26, None, "down"), heard("IM-02", 29)],
    [iv("IM-01", 40, None, "running"), heard("IM-02", 50)],
]
BREAKDOWN_RULES = (
    {**DOWN, "clear_after_s": 180},
    {"name": "why", "kind": "no_reason", "levels": [{"after_min": 10, "people": ["zhang"]}]},
)


def test_same_events_twice_give_the_same_rows(plant: PlantConfig) -> None:
    runs = []
    for _ in range(2):
        e = engine(plant, *BREAKDOWN_RULES)
        runs.append([r for batch in BREAKDOWN for r in e.feed(batch)])
    assert runs[0] == runs[1]
    steps_down = [r.step for r in runs[0] if r.rule == "down"]
    assert steps_down == ["opened", "escalated", "escalated", "resolved"]


def test_restart_from_a_snapshot_neither_reopens_nor_resends(plant: PlantConfig) -> None:
    e = engine(plant, *BREAKDOWN_RULES)
    whole = [r for batch in BREAKDOWN for r in e.feed(batch)]
    for cut in range(1, len(BREAKDOWN)):
        first = engine(plant, *BREAKDOWN_RULES)
        before = [r for batch in BREAKDOWN[:cut] for r in first.feed(batch)]
        state = pickle.loads(pickle.dumps(first.state))
        second = AlertEngine(config(*BREAKDOWN_RULES), plant, state, grace_s=0)
        after = [r for batch in BREAKDOWN[cut:] for r in second.feed(batch)]
        assert before + after == whole, cut
    assert len(pickle.dumps(e.state)) < 4000  # small: machines and open conditions only


# -- property: never two opens of one alert without a resolve between -----------------------

_EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["down", "running", "idle", "ack", "clock", "silence"]),
        st.integers(min_value=0, max_value=120),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=int(os.environ.get("MESFLOW_EXAMPLES", "50")), deadline=None)
@given(events=_EVENTS, order=st.randoms(use_true_random=False))
def test_any_event_order_never_opens_an_alert_twice(
    plant: PlantConfig, events: list[tuple[str, int]], order: Any
) -> None:
    rules = (
        {**DOWN, "clear_after_s": 60},
        {"name": "why", "kind": "no_reason", "levels": [{"after_min": 3, "people": ["zhang"]}]},
        {"name": "quiet", "kind": "silent", "after_s": 300, "levels": [{"people": ["li"]}]},
    )
    e = engine(plant, *rules, grace_s=30)
    shuffled = list(events)
    order.shuffle(shuffled)
    seen: list[AlertRow] = []
    for kind, minute in shuffled:
        if kind in ("down", "running", "idle"):
            batch: list[Any] = [iv("IM-01", minute, None, kind), heard("IM-01", minute, kind)]
        elif kind == "ack":
            opened = [r for r in seen if r.step == "opened"]
            if not opened:
                continue
            batch = [AckInput(opened[-1].alert_id, "zhang", "board", T0 + minute * MIN)]
        elif kind == "silence":
            batch = [heard("IM-02", minute)]
        else:
            batch = [heard("IM-02", minute + 200)]
        seen.extend(e.feed(batch))
    by_track: dict[tuple[str, str], list[str]] = defaultdict(list)
    opens: dict[str, int] = defaultdict(int)
    for r in seen:
        if r.step in ("opened", "resolved"):
            by_track[(r.rule, r.scope)].append(r.step)
        if r.step == "opened":
            opens[r.alert_id] += 1
    assert all(n == 1 for n in opens.values())
    for track, life in by_track.items():
        for a, b in pairwise(life):
            assert (a, b) != ("opened", "opened"), (track, life)
            assert (a, b) != ("resolved", "resolved"), (track, life)
    for r in seen:  # every step belongs to an alert that was opened first
        assert opens[r.alert_id] == 1
    lives: dict[str, list[AlertRow]] = defaultdict(list)
    for r in seen:
        lives[r.alert_id].append(r)
    for story in lives.values():  # in time order: opened first, resolved (if) last, once
        names = [r.step for r in story]
        assert names[0] == "opened" and "resolved" not in names[:-1]
        assert all(a.at <= b.at for a, b in pairwise(story)), [(r.step, r.at) for r in story]


def test_acknowledgement_in_the_same_batch_as_the_breakdown(plant: PlantConfig) -> None:
    """A replay hands the whole story at once: the ack still stops the escalation at its
    own time, after the steps before it."""
    e = engine(plant, DOWN)
    alert_id = f"down:machine:IM-01:{T0}"
    rows = e.feed([AckInput(alert_id, "li", "link", T0 + 20 * MIN), iv("IM-01", 0, 50, "down"),
                   iv("IM-01", 50, None, "running"), heard("IM-02", 60)])  # fmt: skip
    assert steps(rows) == [("opened", 0, at(5)), ("escalated", 1, at(15)),
                           ("acknowledged", 1, at(20)), ("resolved", 1, at(50))]  # fmt: skip
    assert rows[2].facts["by"] == "li" and rows[2].facts["acknowledged_via"] == "link"


def test_rows_of_one_input_batch_in_several_calls_make_no_machine_look_silent(
    plant: PlantConfig,
) -> None:
    """The dataflow hands a replayed batch (hours of plant time) to the alert step machine by
    machine: IM-02's rows may come first. IM-04, running all along, is not silent; the
    clock only moves past what every machine has reported (two Progress markers back)."""
    rule = {"name": "quiet", "kind": "silent", "after_s": 600,
            "levels": [{"after_min": 0, "people": ["zhang"]}]}  # fmt: skip
    e = engine(plant, rule)
    mark = Progress(1, 1, 0)
    rows = e.feed([mark, heard("IM-02", 0), heard("IM-04", 0)])
    rows += e.feed([mark._replace(last_seq=2), heard("IM-02", 180)])  # batch 2: IM-02 first
    rows += e.feed([heard("IM-04", 179)])  # ... then IM-04
    rows += e.feed([mark._replace(last_seq=3), heard("IM-02", 360)])
    rows += e.feed([mark._replace(last_seq=4), heard("IM-04", 359), heard("IM-02", 365)])
    assert rows == []
    # IM-04 really stops talking: found once the plant is settled past 10 minutes of it.
    rows = e.feed([mark._replace(last_seq=5), heard("IM-02", 400)])
    rows += e.feed([mark._replace(last_seq=6), heard("IM-02", 420)])
    rows += e.feed([mark._replace(last_seq=7), heard("IM-02", 440)])
    assert rows == []  # the clock has settled at 365 (two markers back)
    rows = e.feed([mark._replace(last_seq=8), heard("IM-02", 460)])
    assert steps(rows) == [("opened", 0, at(369))]


def test_a_late_merge_that_removes_the_stop_resolves_it_and_reasons_reach_the_facts(
    plant: PlantConfig,
) -> None:
    e = engine(plant, DOWN)
    e.feed([iv("IM-01", 0, None, "down"), heard("IM-02", 6)])
    # The operator names the reason: later steps carry it.
    e.feed([iv("IM-01", 0, None, "down", "hydraulics")])
    [esc] = e.feed([heard("IM-02", 16)])
    assert esc.facts["reason"] == "hydraulics"
    # A late event shows the machine was running since before: the down interval is gone.
    gone = IntervalDelete("IM-01", at(0))
    rows = e.feed([gone, iv("IM-01", -1, None, "running"), heard("IM-02", 20)])
    assert steps(rows) == [("resolved", 1, at(15))]  # not before the step already sent


def test_restart_with_an_edited_alerts_file(plant: PlantConfig) -> None:
    e = engine(plant, DOWN)
    e.feed([iv("IM-01", 0, None, "down"), heard("IM-02", 31)])  # at level 2
    state = pickle.loads(pickle.dumps(e.state))
    # The rule now has two levels: the open alert stays at the top one and still resolves.
    two = AlertEngine(config({**DOWN, "levels": THREE_LEVELS[:2]}), plant, state, grace_s=0)
    rows = two.feed([iv("IM-01", 40, None, "running"), heard("IM-02", 45)])
    assert steps(rows) == [("resolved", 1, at(40))]
    # The rule now covers the CNC line only: IM-01's open alert is dropped (nothing would end it).
    state = pickle.loads(pickle.dumps(e.state))
    cnc = AlertEngine(config({**DOWN, "scope": {"line": "CNC"}}), plant, state, grace_s=0)
    assert cnc.state.tracks == {} and cnc.feed([heard("IM-02", 90)]) == []
