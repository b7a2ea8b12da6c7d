"""Silent machines (streams/silence.py, docs/metrics.md "Silent machines"): a machine that
sends nothing for longer than `silent_after_s` is offline (no_data) from its last message to
its next; decided from event times, so late input, rebuilds and replays give the in-order
figures; live, a wall-clock check shows it at once and the next message gives the same
result."""

from __future__ import annotations

import json
import pickle
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tests.test_machine_tracker as tmt
from mesflow.events import parse_event
from mesflow.plant import ConfigError, PlantConfig, load_plant_config
from mesflow.settings import REPO_ROOT
from streams.hour_clock import to_us
from streams.machine_tracker import MachineSpec, MachineTracker
from streams.records import IntervalRow, StatusRow
from streams.replay import replay_file
from tests.helpers import write_jsonl
from tests.test_machine_tracker import T0, ev, kpi, shuffled_beyond, shuffled_within, streams

S_MIN = 3.0  # silent_after_s, in minutes, for the generated streams (gaps up to 9 min)


def silent_plant(seconds: float, plant: PlantConfig | None = None) -> PlantConfig:
    base = plant or tmt.PLANT
    return base.model_copy(
        update={"defaults": base.defaults.model_copy(update={"silent_after_s": seconds})}
    )


def run(events: list[dict[str, Any]], seconds: float = S_MIN * 60, **kw: Any) -> dict[Any, Any]:
    with patch.object(tmt, "PLANT", silent_plant(seconds)):
        rows, rejected = tmt.run(events, **kw)
    assert [r for r in rejected if r.reason == "late"] == []
    return rows


def intervals(rows: dict[Any, Any]) -> list[tuple[float, str, str | None]]:
    """(minutes after T0, state, reason) of the stored intervals, in time order."""
    out = [
        ((r.start_ts - T0).total_seconds() / 60, r.state, r.reason)
        for r in rows.values()
        if isinstance(r, IntervalRow)
    ]
    return sorted(out)


def working_day() -> list[dict[str, Any]]:
    """IM-01 from 11:00 (day shift): running, a part a minute to 11:20, then nothing until
    a part at 12:40 (the lunch break 12:00-12:30 lies inside), parts to 12:50."""
    return [
        ev("state", 10, state="running"),
        *[ev("count", 10 + m, good=1) for m in range(1, 21)],  # 11:01 .. 11:20
        *[ev("count", 110 + m, good=1) for m in range(0, 11)],  # 12:40 .. 12:50
    ]


def test_a_silence_is_offline_no_data_from_the_last_message_to_the_next() -> None:
    rows = run(working_day(), seconds=600)
    assert intervals(rows) == [
        (10, "running", None),
        (30, "offline", "no_data"),  # 11:20, the last part before the silence
        (110, "running", None),  # 12:40: the state it had, again
    ]
    h11 = kpi(rows, "hour", "2026-11-20T11:00:00+08:00")
    assert h11.offline_s == 40 * 60 and h11.running_s == 20 * 60
    reasons = rows[("ReasonSetRow", "hour", datetime.fromisoformat("2026-11-20T11:00:00+08:00"))]
    assert reasons.items == (("no_data", 2400.0, 1),)
    # Not watched (the default): the same input is 100 minutes of running.
    rows = run(working_day(), seconds=0)
    assert intervals(rows) == [(10, "running", None)]


def test_gaps_up_to_the_limit_and_planned_stops_are_not_silences() -> None:
    events = working_day()
    assert intervals(run(events, seconds=80 * 60)) == [(10, "running", None)]  # exactly 80
    planned = [ev("state", 10, state="planned_stop"), *events[1:]]
    assert intervals(run(planned, seconds=600)) == [(10, "planned_stop", None)]


def test_a_state_event_ends_the_silence_with_its_own_state() -> None:
    events = [*working_day()[:21], ev("state", 110, state="down", reason="heater_fault")]
    assert intervals(run(events, seconds=600)) == [
        (10, "running", None),
        (30, "offline", "no_data"),
        (110, "down", "heater_fault"),
    ]


def test_a_stop_cut_by_a_silence_resumes_with_its_reason() -> None:
    events = [
        ev("state", 10, state="running"),
        ev("state", 20, state="down", reason="heater_fault"),
        ev("count", 60, good=0),  # 40 min later: silent since 11:00
        ev("state", 62, state="running"),
    ]
    assert intervals(run(events, seconds=600)) == [
        (10, "running", None),
        (20, "offline", "no_data"),
        (60, "down", "heater_fault"),
        (62, "running", None),
    ]


def test_a_late_message_inside_a_silence_gives_the_in_order_result() -> None:
    events = working_day()
    late = ev("count", 70, good=1)  # 12:00, arrives last: beyond the lateness, merged
    in_order = run(sorted([*events, late], key=lambda e: e["ts"]), seconds=2400)
    assert intervals(in_order) == [(10, "running", None)]  # two gaps of 40 min: not over
    with patch.object(tmt, "PLANT", silent_plant(2400)):
        merged, rebuilds = tmt.run_merging([*events, late], batch=4)
    assert rebuilds == 1 and merged == in_order
    # Within the allowed lateness: undone and decided again at once, half by half.
    near = [*events[:21], ev("count", 38, good=1), ev("count", 34, good=1)]
    in_order = run(sorted(near, key=lambda e: e["ts"]), seconds=180)
    assert run(near, seconds=180) == in_order
    assert intervals(in_order) == [
        (10, "running", None),
        (30, "offline", "no_data"),  # 11:20-11:24
        (34, "running", None),  # the part at 11:24, for a microsecond (docs/metrics.md)
        (34 + 1e-6 / 60, "offline", "no_data"),  # 11:24-11:28
        (38, "running", None),
    ]


@settings(max_examples=40, deadline=None)
@given(streams(), st.integers(0, 1000), st.sampled_from([1, 3, 50]))
def test_late_input_within_lateness_gives_the_in_order_silences(
    events: list[dict[str, Any]], seed: int, batch: int
) -> None:
    in_order = run(events, batch=batch)
    assert run(shuffled_within(events, 4.9, seed), batch=batch) == in_order


@settings(max_examples=30, deadline=None)
@given(streams(), st.integers(0, 1000), st.sampled_from([1, 3, 20]))
def test_late_input_beyond_lateness_is_merged_to_the_in_order_silences(
    events: list[dict[str, Any]], seed: int, batch: int
) -> None:
    in_order = run(events, batch=batch)
    with patch.object(tmt, "PLANT", silent_plant(S_MIN * 60)):
        merged, _ = tmt.run_merging(shuffled_beyond(events, seed), batch=batch)
    assert merged == in_order


# --- live: the wall-clock check -------------------------------------------------------------


def tracker(seconds: float) -> MachineTracker:
    return MachineTracker(MachineSpec.from_plant(silent_plant(seconds), "IM-01"))


def feed(tr: MachineTracker, events: list[dict[str, Any]], start: int = 0) -> list[Any]:
    rows: list[Any] = []
    for i, e in enumerate(events, start):
        assert tr.apply(i, parse_event(json.dumps(e))) is None  # type: ignore[arg-type]
        rows.extend(tr.flush())
    return rows


def final(rows: list[Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for r in rows:
        out[tmt._key(r)] = None if type(r).__name__ == "IntervalDelete" else r
    return {k: v for k, v in out.items() if v is not None}


def test_live_check_shows_offline_at_once_and_the_next_message_confirms_it() -> None:
    events = working_day()
    cut = 21  # the silence begins after 11:20
    live = tracker(600)
    rows = feed(live, events[:cut])
    h = to_us(datetime.fromisoformat(events[cut - 1]["ts"]))
    assert live.silence.due(live) == h + 600_000_000 + 1
    assert not live.silence.provisional(live, h + 600_000_000)  # not yet
    assert live.silence.provisional(live, h + 601_000_000)
    rows += live.flush()
    status = [r for r in rows if isinstance(r, StatusRow)][-1]
    assert (status.state, status.reason) == ("offline", "no_data")
    assert status.since == datetime.fromisoformat(events[cut - 1]["ts"])
    assert live.silence.due(live) is None  # once
    # A snapshot taken meanwhile resumes it (the dataflow restarted while it was silent).
    live = pickle.loads(pickle.dumps(live))
    rows += feed(live, events[cut:], cut)
    replayed = tracker(600)
    assert final(rows) == final(feed(replayed, events))


def test_live_check_is_undone_when_the_clocks_disagreed() -> None:
    # The machine's clock runs 8 minutes behind the server's: the check fires after 10
    # minutes of wall time, but its next part (5 minutes later by its own clock) is no gap.
    events = [*working_day()[:21], ev("count", 35, good=1)]
    live = tracker(600)
    rows = feed(live, events[:21])
    h = to_us(datetime.fromisoformat(events[20]["ts"]))
    assert live.silence.provisional(live, h + 601_000_000)
    rows += live.flush()
    rows += feed(live, events[21:], 21)
    assert final(rows) == final(feed(tracker(600), events))
    assert intervals(final(rows)) == [(10, "running", None)]


# --- the plant file and the real dataflow -------------------------------------------------


def test_plant_file_sets_it_per_machine_and_plant_wide(tmp_path: Path) -> None:
    text = (REPO_ROOT / "config" / "plant.example.yaml").read_text("utf-8")
    text = text.replace("defaults:\n", "defaults:\n  silent_after_s: 600\n", 1)
    text = text.replace(
        "{id: IM-03, name: {en: Press 3 (Engel 180t), zh: 3号注塑机}, ideal_cycle_seconds: 24}",
        "{id: IM-03, name: {en: Press 3 (Engel 180t), zh: 3号注塑机}, ideal_cycle_seconds: 24,"
        " silent_after_s: 0}",
    )
    path = tmp_path / "plant.yaml"
    path.write_text(text, encoding="utf-8")
    plant = load_plant_config(path)
    assert plant.silent_after_seconds("IM-01") == 600
    assert plant.silent_after_seconds("IM-03") == 0  # this one is never reported silent
    assert MachineSpec.from_plant(plant, "IM-01").silent_after_us == 600_000_000
    path.write_text(text.replace("silent_after_s: 600", "silent_after_s: -1"), encoding="utf-8")
    with pytest.raises(ConfigError, match="silent_after_s"):
        load_plant_config(path)


def test_replay_gives_the_same_figures_twice_and_as_in_order(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    from streams.runner import run_flow

    events = [{**e, "id": f"s-{i}"} for i, e in enumerate(working_day())]
    events.append({**ev("count", 140, good=1), "id": "late"})  # 13:10, after a 20 min gap
    events.insert(25, {**ev("count", 115, good=1), "id": "early-late"})  # out of order
    path = write_jsonl(tmp_path / "day.jsonl", events)
    silent = silent_plant(600, plant)

    def stored() -> list[tuple[Any, ...]]:
        with psycopg.connect(db_url) as conn:
            return conn.execute(
                "SELECT start_ts, end_ts, state, reason FROM v_state_intervals "
                "WHERE machine = 'IM-01' ORDER BY start_ts"
            ).fetchall()

    replay_file(path, silent, db_url, tmp_path / "rec", progress=False)
    first = stored()
    t = lambda m: T0 + timedelta(minutes=m)  # noqa: E731
    assert [(r[0], r[2], r[3]) for r in first] == [
        (t(10), "running", None),
        (t(30), "offline", "no_data"),
        (t(110), "running", None),
        (t(120), "offline", "no_data"),
        (t(140), "running", None),
    ]
    replay_file(path, silent, db_url, tmp_path / "rec", progress=False)  # nothing new
    assert stored() == first
    # The whole log again with no snapshot (a lost recovery store): the same figures.
    with psycopg.connect(db_url) as conn:
        upto = conn.execute("SELECT max(seq) FROM ingest_log").fetchone()
    assert upto is not None
    run_flow(silent, db_url, tmp_path / "fresh", 10.0, upto_seq=int(upto[0]))
    assert stored() == first


def test_live_dataflow_shows_a_silent_machine_offline_and_the_replay_agrees(
    db_url: str, ref_db_url: str, tmp_path: Path
) -> None:
    """The live dataflow with silent_after_s 3: offline/no_data about 3 s after the
    last message, without a new one; the next message ends it; a replay of the same log
    stores the same intervals."""
    from streams.runner import run_flow
    from tests.helpers import copy_log, feed, wait_until, wide_horizon_plant_text

    text = wide_horizon_plant_text(REPO_ROOT / "config" / "plant.example.yaml")
    text = text.replace("defaults:\n", "defaults:\n  silent_after_s: 3\n", 1)
    plant_path = tmp_path / "plant.yaml"
    plant_path.write_text(text, encoding="utf-8")
    plant = load_plant_config(plant_path)
    now = datetime.now(plant.tz)
    feed(
        db_url,
        [
            {"type": "state", "machine": "IM-01", "ts": (now - timedelta(seconds=1)).isoformat(),
             "state": "running", "id": "a"},
            {"type": "count", "machine": "IM-01", "ts": now.isoformat(), "good": 1, "id": "b"},
        ],
    )  # fmt: skip

    def status() -> tuple[Any, ...] | None:
        with psycopg.connect(db_url) as conn:
            return conn.execute(
                "SELECT state, reason, since FROM machine_status WHERE machine = 'IM-01'"
            ).fetchone()

    stop = threading.Event()
    flow = threading.Thread(
        target=run_flow,
        args=(plant, db_url, tmp_path / "recovery", 1.0),
        kwargs={"stop": stop},  # no upto: live, as `mesflow run dataflow`
        daemon=True,
    )
    flow.start()
    try:
        # Its first figures may already say offline (3 s pass quickly).
        wait_until(lambda: (status() or ("",))[0] == "offline", 60, "the machine offline")
        offline = status()
        assert offline is not None and offline[1] == "no_data"
        assert abs((offline[2] - now).total_seconds()) < 0.01  # from its last message on
        later = datetime.now(plant.tz)
        feed(db_url, [{"type": "count", "machine": "IM-01", "ts": later.isoformat(),
                       "good": 1, "id": "c"}])  # fmt: skip
        wait_until(lambda: (status() or ("",))[0] == "running", 30, "running again")
    finally:
        stop.set()
        flow.join(timeout=30)
    assert not flow.is_alive()

    def stored(url: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url) as conn:
            return conn.execute(
                "SELECT start_ts, end_ts, state, reason, duration_s FROM machine_state_interval "
                "WHERE machine = 'IM-01' ORDER BY start_ts"
            ).fetchall()

    live = stored(db_url)
    assert [(r[2], r[3]) for r in live] == [
        ("running", None),
        ("offline", "no_data"),
        ("running", None),
    ]
    upto = copy_log(db_url, ref_db_url)
    run_flow(plant, ref_db_url, tmp_path / "ref-rec", 10.0, upto_seq=upto)
    assert stored(ref_db_url) == live
