"""Process values (docs/events.md `process_value`, sql/021_process_values.sql): the contract
refuses hostile values; through the real dataflow and PostgreSQL the raw rows and the
per-minute rollup are stored once (replay, re-run), equal a hand computation, take late
values into their own minute; retention deletes raw values and keeps the rollup."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.mqtt_json import map_message
from collectors.simulator import generate, machine_specs
from collectors.simulator.publisher import payload, topics
from dashboards import context
from dashboards.app import create_app
from dashboards.pages import machine_values as mv
from dashboards.queries import Database
from mesflow import users
from mesflow.events import MAX_PROCESS_VALUES, ContractError, ProcessValueEvent, parse_event
from mesflow.ingest_log import LogEntry
from mesflow.plant import PlantConfig
from mesflow.retention import RetentionPolicy, retention_status, run_retention
from mesflow.settings import Settings
from streams.process_values import ProcessValues
from streams.records import Rejection
from streams.replay import replay_file
from streams.runner import run_flow
from streams.validate import Validator
from tests.helpers import count, feed, log_position, write_jsonl
from tests.test_analytics import _sign_in

M = "IM-03"
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def pv(ts: datetime, m: str = M, **values: Any) -> dict[str, Any]:
    return {"type": "process_value", "machine": m, "ts": ts.isoformat(), "values": values}


def line(values: Any) -> str:
    """A process_value event with `values` spliced in as raw JSON text."""
    return (
        '{"type": "process_value", "machine": "IM-03", "ts": "2026-11-20T08:00:00Z", '
        f'"values": {values}}}'
    )


# --- the contract -------------------------------------------------------------------------


def test_spec_example_parses() -> None:
    ev = parse_event(
        '{"type": "process_value", "machine": "IM-03", "ts": "2026-11-20T08:00:31+08:00", '
        '"values": {"cycle_time_s": 31.2, "cushion_mm": 4.1, "injection_pressure_bar": 1180}}'
    )
    assert isinstance(ev, ProcessValueEvent)
    assert ev.values == {"cycle_time_s": 31.2, "cushion_mm": 4.1, "injection_pressure_bar": 1180.0}
    assert all(type(v) is float for v in ev.values.values())


HOSTILE = {
    "NaN": line('{"a": NaN}'),
    "Infinity": line('{"a": Infinity}'),
    "-Infinity": line('{"a": -Infinity}'),
    "1e309 (reads as inf)": line('{"a": 1e309}'),
    "-1e309": line('{"a": -1e309}'),
    "true": line('{"a": true}'),
    "false": line('{"a": false}'),
    "string number": line('{"a": "31.2"}'),
    "null": line('{"a": null}'),
    "nested": line('{"a": {"b": 1}}'),
    "list": line('{"a": [1]}'),
    "values a list": line("[1, 2]"),
    "values a number": line("1"),
    "no values": line("{}"),
    "65 values": line(json.dumps({f"v{i}": i for i in range(MAX_PROCESS_VALUES + 1)})),
    "upper case": line('{"Cycle": 1}'),
    "space": line('{"cycle time": 1}'),
    "leading digit": line('{"1st": 1}'),
    "leading underscore": line('{"_a": 1}'),
    "empty name": line('{"": 1}'),
    "NUL in name": line('{"a\\u0000": 1}'),
    "newline after name": line('{"a\\n": 1}'),
    "65-character name": line(json.dumps({"a" * 65: 1})),
    "huge name": line(json.dumps({"a" * 100_000: 1})),
    "non-ASCII name": line('{"températur": 1}'),
}


@pytest.mark.parametrize("payload", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_values_are_refused(payload: str) -> None:
    with pytest.raises(ContractError) as err:
        parse_event(payload)
    assert err.value.reason in ("invalid_field", "malformed")
    assert "\x00" not in err.value.detail


def test_a_bad_name_is_named_in_the_detail() -> None:
    with pytest.raises(ContractError) as err:
        parse_event(line('{"ok": 1, "Bad Name": 2}'))
    assert err.value.reason == "invalid_field"
    assert "'Bad Name'" in err.value.detail


def test_limits_are_inclusive() -> None:
    many = {f"v{i}": float(i) for i in range(MAX_PROCESS_VALUES)}
    ev = parse_event(line(json.dumps(many)))
    assert isinstance(ev, ProcessValueEvent) and len(ev.values) == 64
    longest = "a" + "b" * 63
    big = parse_event(line(json.dumps({longest: 1.7976931348623157e308, "z.9_": -5e-324})))
    assert isinstance(big, ProcessValueEvent)
    assert big.values[longest] == 1.7976931348623157e308


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_.]{0,63}", fullmatch=True),
        st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
        min_size=1,
        max_size=MAX_PROCESS_VALUES,
    )
)
def test_any_finite_values_round_trip(values: dict[str, float]) -> None:
    ev = parse_event(line(json.dumps(values)))
    assert isinstance(ev, ProcessValueEvent)
    assert ev.values == {k: float(v) for k, v in values.items()}
    assert all(math.isfinite(v) for v in ev.values.values())


def test_validator_sends_process_values_past_the_trackers(plant: PlantConfig) -> None:
    rows = [
        LogEntry(1, json.dumps(pv(T0, cycle_time_s=30.5)).encode(), None, T0),
        LogEntry(2, json.dumps(pv(T0, m="NOPE", a=1)).encode(), None, T0),
        LogEntry(3, json.dumps(pv(T0 + timedelta(days=1), a=1)).encode(), None, T0),
    ]
    out = list(Validator(plant)(rows))
    assert out[0] == ProcessValues(1, M, ((M, T0, "cycle_time_s", 30.5),))
    assert not any(type(x) is tuple for x in out)  # nothing keyed for a machine tracker
    assert [(r.seq, r.reason) for r in out if isinstance(r, Rejection)] == [
        (2, "unknown_machine"),
        (3, "future"),
    ]


# --- through the dataflow into PostgreSQL -------------------------------------------------


def run(url: str, plant: PlantConfig, recovery: Path) -> None:
    run_flow(plant, url, recovery, 10.0, upto_seq=log_position(url))


def raw(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT machine, ts, name, value FROM v_process_values ORDER BY machine, name, ts"
        ).fetchall()


def minutes(url: str) -> dict[tuple[str, str, datetime], tuple[int, float, float, float]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT machine, name, minute, n, min, avg, max FROM v_process_values_minute"
        ).fetchall()
    return {(m, nm, t): (n, lo, avg, hi) for m, nm, t, n, lo, avg, hi in rows}


def sample_day() -> list[dict[str, Any]]:
    """IM-03: a cycle every 20 s for 5 minutes, with a 0.5 s odd cycle time at 08:02:40."""
    evs = []
    for i in range(15):
        t = T0 + timedelta(seconds=20 * i)
        evs.append(pv(t, cycle_time_s=30.0 + i % 3, cushion_mm=4.0 - 0.1 * (i % 2)))
    evs.append(pv(T0 + timedelta(seconds=160), cycle_time_s=0.5))
    evs.append(pv(T0 + timedelta(seconds=5), m="IM-04", melt_temp_c=231.5))
    return evs


def hand_rollup(
    events: list[dict[str, Any]],
) -> dict[tuple[str, str, datetime], tuple[int, float, float, float]]:
    """The rollup worked out by hand: every distinct (machine, name, ts) once, first wins."""
    first: dict[tuple[str, str, datetime], float] = {}
    for e in events:
        ts = datetime.fromisoformat(e["ts"])
        for name, v in e["values"].items():
            first.setdefault((e["machine"], name, ts), float(v))
    groups: dict[tuple[str, str, datetime], list[float]] = {}
    for (m, name, ts), v in first.items():
        minute = ts.astimezone(UTC).replace(second=0, microsecond=0)
        groups.setdefault((m, name, minute), []).append(v)
    return {k: (len(v), min(v), sum(v) / len(v), max(v)) for k, v in groups.items()}


def assert_rollup(url: str, expected: dict[Any, tuple[int, float, float, float]]) -> None:
    got = minutes(url)
    assert got.keys() == expected.keys()
    for key, (n, lo, avg, hi) in expected.items():
        assert got[key][0] == n and got[key][1] == lo and got[key][3] == hi, key
        assert got[key][2] == pytest.approx(avg, rel=1e-12), key


def test_rollup_equals_a_hand_computation(db_url: str, plant: PlantConfig, tmp_path: Path) -> None:
    events = sample_day()
    feed(db_url, events)
    run(db_url, plant, tmp_path / "rec")
    assert len(raw(db_url)) == 31
    expected = hand_rollup(events)
    # Worked for one minute: 08:02 has cycles at :00, :20, :40 (i = 6, 7, 8 -> 30, 31, 32)
    # and the 0.5 s cycle at 08:02:40 is the same instant as i = 8: the first value stays.
    assert expected[(M, "cycle_time_s", T0 + timedelta(minutes=2))] == (3, 30.0, 31.0, 32.0)
    assert expected[(M, "cycle_time_s", T0)] == (3, 30.0, 31.0, 32.0)
    assert_rollup(db_url, expected)
    # The rollup equals an aggregate over the raw rows while they exist.
    with psycopg.connect(db_url) as conn:
        agg = conn.execute(
            "SELECT machine, name, date_trunc('minute', ts), count(*), min(value), avg(value), "
            "max(value) FROM process_value GROUP BY 1, 2, 3"
        ).fetchall()
    assert_rollup(db_url, {(m, n, t): (c, lo, a, hi) for m, n, t, c, lo, a, hi in agg})


def test_replay_twice_and_rerun_store_nothing_twice(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    events = sample_day()
    for i, e in enumerate(events[:5]):
        e["id"] = f"pv-{i}"  # some with ids, the rest deduplicated by content
    path = write_jsonl(tmp_path / "pv.jsonl", events)
    replay_file(path, plant, db_url, tmp_path / "rec", progress=False)
    once_raw, once_min = raw(db_url), minutes(db_url)
    replay_file(path, plant, db_url, tmp_path / "rec", progress=False)
    assert raw(db_url) == once_raw and minutes(db_url) == once_min
    # The dataflow reading the whole log again (lost snapshots), and the same values resent
    # without ids (new log rows): the raw key keeps the rollup from counting them again.
    feed(db_url, [{k: v for k, v in e.items() if k != "id"} for e in events[:8]])
    run(db_url, plant, tmp_path / "fresh-recovery")
    assert raw(db_url) == once_raw and minutes(db_url) == once_min
    assert_rollup(db_url, hand_rollup(events))
    assert count(db_url, "SELECT count(*) FROM dead_letter") == 0


def test_late_values_land_in_their_minute(db_url: str, plant: PlantConfig, tmp_path: Path) -> None:
    events = sample_day()
    in_order = hand_rollup(events)
    # Shuffled far beyond the allowed lateness (5 min): the newest first, in two runs.
    backwards = sorted(events, key=lambda e: e["ts"], reverse=True)
    feed(db_url, backwards[:6])
    run(db_url, plant, tmp_path / "rec")
    feed(db_url, [*backwards[6:], pv(T0 - timedelta(hours=2), cycle_time_s=99.0)])
    run(db_url, plant, tmp_path / "rec")
    in_order[(M, "cycle_time_s", T0 - timedelta(hours=2))] = (1, 99.0, 99.0, 99.0)
    assert_rollup(db_url, in_order)
    assert count(db_url, "SELECT count(*) FROM dead_letter") == 0
    # Process values move no machine's clock and open no interval.
    assert count(db_url, "SELECT count(*) FROM machine_status") == 0


def test_hostile_values_are_dead_lettered_and_the_rest_stored(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    good = pv(T0, cycle_time_s=30.0)
    lines = [json.dumps(good), *HOSTILE.values(), json.dumps(pv(T0 + timedelta(seconds=1), a=1))]
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    replay_file(path, plant, db_url, tmp_path / "rec", progress=False)
    assert [(r[2], r[3]) for r in raw(db_url)] == [("a", 1.0), ("cycle_time_s", 30.0)]
    with psycopg.connect(db_url) as conn:
        reasons = conn.execute("SELECT reason FROM dead_letter").fetchall()
    assert len(reasons) == len(HOSTILE)
    assert {r for (r,) in reasons} <= {"invalid_field", "malformed", "too_large"}


def test_extreme_finite_values_sum_without_overflow(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    big = 1.7976931348623157e308
    feed(db_url, [pv(T0 + timedelta(seconds=s), x=big) for s in range(3)])
    feed(db_url, [pv(T0 + timedelta(seconds=s), y=-big if s else 5e-324) for s in range(2)])
    run(db_url, plant, tmp_path / "rec")
    got = minutes(db_url)
    assert got[(M, "x", T0)] == (3, big, big, big)  # a float8 sum would overflow
    assert got[(M, "y", T0)][0] == 2
    assert count(db_url, "SELECT count(*) FROM dead_letter") == 0


# --- retention ----------------------------------------------------------------------------


def test_retention_deletes_raw_values_and_keeps_the_rollup(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(second=30, microsecond=0)
    old, recent, ancient = (
        now - timedelta(days=10),
        now - timedelta(days=1),
        now - timedelta(days=200),
    )
    events = [
        pv(old, cycle_time_s=30.0, cushion_mm=4.0),
        pv(old + timedelta(seconds=10), cycle_time_s=34.0),
        pv(recent, cycle_time_s=31.0),
        pv(ancient, cycle_time_s=29.0),
    ]
    feed(db_url, events)
    run(db_url, plant, tmp_path / "rec")
    before = minutes(db_url)
    assert len(raw(db_url)) == 5
    policy = RetentionPolicy(process_value_days=7, process_minute_days=180)
    status = {s.table: s.would_go for s in retention_status(db_url, policy)}
    assert status["process_value"] == 4 and status["process_value_minute"] == 1
    removed = {r.table: r.rows for r in run_retention(db_url, policy)}
    assert removed["process_value"] == 4
    assert removed["process_value_minute"] == 1
    assert [r[1] for r in raw(db_url)] == [recent]
    old_minute = old.replace(second=0)
    after = minutes(db_url)
    assert after[(M, "cycle_time_s", old_minute)] == (2, 30.0, 32.0, 34.0)
    assert {k: v for k, v in before.items() if k[2] != ancient.replace(second=0)} == after
    # The same old values again (a gateway flushing an old buffer, without ids): their raw
    # rows are gone, but they are not counted a second time.
    feed(db_url, events[:2])
    run(db_url, plant, tmp_path / "rec")
    assert minutes(db_url) == after
    assert [r[1] for r in raw(db_url)] == [recent]
    # 0 days keeps everything.
    forever = RetentionPolicy(process_value_days=0, process_minute_days=0)
    assert {r.table: r.rows for r in run_retention(db_url, forever)}["process_value"] == 0


# --- the machine page's panel -------------------------------------------------------------


def test_band_breaks_at_gaps() -> None:
    tz = ZoneInfo("Asia/Shanghai")
    rows = [
        mv.MinuteRow(T0, 1, 1.0, 1.0, 1.0),
        mv.MinuteRow(T0 + timedelta(minutes=1), 2, 1.0, 2.0, 3.0),
        mv.MinuteRow(T0 + timedelta(minutes=20), 1, 5.0, 5.0, 5.0),
    ]
    xs, lo, avg, hi = mv.band(rows, tz)
    assert xs[:2] == [datetime(2026, 11, 20, 16, 0), datetime(2026, 11, 20, 16, 1)]
    assert xs[2] is None and lo[2] is None and avg[2] is None and hi[2] is None
    assert (lo, avg, hi) == ([1.0, 1.0, None, 5.0], [1.0, 2.0, None, 5.0], [1.0, 3.0, None, 5.0])


def test_machine_page_shows_a_value_band_to_managers_only(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    events = sample_day()  # 08:00Z = 16:00 in the plant's zone (Asia/Shanghai)
    feed(db_url, events)
    run(db_url, plant, tmp_path / "rec")
    day = date(2026, 11, 20)
    db = Database(db_url)
    try:
        assert mv.value_names(db, M, day, plant.tz) == ["cushion_mm", "cycle_time_s"]
        assert mv.value_names(db, M, day + timedelta(days=1), plant.tz) == []
        rows = mv.minutes(db, M, "cycle_time_s", day, plant.tz)
    finally:
        db.close()
    expected = hand_rollup(events)
    assert {(M, "cycle_time_s", r.minute): (r.n, r.min, r.avg, r.max) for r in rows} == {
        k: v for k, v in expected.items() if k[:2] == (M, "cycle_time_s")
    }
    assert len(rows) == 5

    with psycopg.connect(db_url, autocommit=True) as conn:
        users.add_user(conn, "boss", "manager", "manager-password-123")
        users.add_user(conn, "eye", "viewer", "viewer-password-123")
    app = create_app(Settings(auth_session_secret="s" * 40), plant, db_url)
    body = {
        "output": "mv-graph.figure",
        "outputs": {"id": "mv-graph", "property": "figure"},
        "inputs": [
            {"id": "mc-machine", "property": "value", "value": M},
            {"id": "mc-date", "property": "date", "value": "2026-11-20"},
            {"id": "mv-name", "property": "value", "value": "cycle_time_s"},
        ],
        "state": [{"id": "mc-lang", "property": "data", "value": "en"}],
        "changedPropIds": ["mv-name.value"],
    }
    try:
        manager = app.server.test_client()
        _sign_in(manager, "boss", "manager-password-123")
        page = manager.get(f"/machine?machine={M}&date=2026-11-20&lang=en")
        assert page.status_code == 200
        got = manager.post("/_dash-update-component", json=body)
        assert got.status_code == 200, got.get_data(as_text=True)
        traces = got.get_json()["response"]["mv-graph"]["figure"]["data"]
        assert [t["y"] for t in traces] == [
            [r.max for r in rows],
            [r.min for r in rows],
            [r.avg for r in rows],
        ]
        names_body = {
            "output": "..mv-name.options...mv-name.value...mv-empty.children...mv-body.style..",
            "outputs": [
                {"id": "mv-name", "property": "options"},
                {"id": "mv-name", "property": "value"},
                {"id": "mv-empty", "property": "children"},
                {"id": "mv-body", "property": "style"},
            ],
            "inputs": body["inputs"][:2],
            "state": [
                {"id": "mv-name", "property": "value", "value": None},
                {"id": "mc-lang", "property": "data", "value": "en"},
            ],
            "changedPropIds": ["mc-machine.value"],
        }
        got = manager.post("/_dash-update-component", json=names_body)
        assert got.status_code == 200, got.get_data(as_text=True)
        assert got.get_json()["response"]["mv-name"]["value"] == "cushion_mm"
        assert got.get_json()["response"]["mv-body"]["style"] == {}  # values: shown
        viewer = app.server.test_client()
        _sign_in(viewer, "eye", "viewer-password-123")
        assert viewer.post("/_dash-update-component", json=body).status_code == 403
    finally:
        context.of(app.server).db.close()


# --- the simulator ------------------------------------------------------------------------


def test_simulator_sends_believable_process_values_for_moulding_machines(
    plant: PlantConfig,
) -> None:
    start = datetime(2026, 11, 16, 9, 0, tzinfo=plant.tz)  # a Monday
    end = start + timedelta(hours=3)
    plain = list(generate(plant, seed=7, start=start, end=end))
    with_pv = list(generate(plant, seed=7, start=start, end=end, process_values_s=60))
    values = [e for e in with_pv if e["type"] == "process_value"]
    # The rest of the stream is the same event for event: its own rng and ids.
    assert [e for e in with_pv if e["type"] != "process_value"] == plain
    assert {e["machine"] for e in values} == {f"IM-0{i}" for i in range(1, 7)}
    assert len({e["id"] for e in values}) == len(values)
    cycles = {spec.id: spec.cycle_ms for spec in machine_specs(plant)}
    last: dict[str, datetime] = {}
    for e in values:
        ev = parse_event(json.dumps(e))
        assert isinstance(ev, ProcessValueEvent)
        assert set(ev.values) == {
            "cycle_time_s", "cushion_mm", "injection_pressure_bar", "melt_temp_c", "mold_temp_c"
        }  # fmt: skip
        ideal = [ms / 1000 for ms in cycles[ev.machine].values()]  # per product
        assert min(ideal) <= ev.values["cycle_time_s"] <= max(ideal) * 1.3
        assert 2 < ev.values["cushion_mm"] < 9
        assert 700 < ev.values["injection_pressure_bar"] < 1600
        assert 200 < ev.values["melt_temp_c"] < 270
        assert 30 < ev.values["mold_temp_c"] < 85
        if ev.machine in last:
            assert ev.ts - last[ev.machine] >= timedelta(seconds=60)
        last[ev.machine] = ev.ts
    # A steady machine: about one a minute of running time (3 h, a break, some stops).
    per_machine = {m: sum(e["machine"] == m for e in values) for m in last}
    assert all(90 <= n <= 180 for n in per_machine.values()), per_machine


def test_process_values_over_mqtt_topics(plant: PlantConfig) -> None:
    topic = topics(plant)["IM-03"]["process_value"]
    assert topic == "mesflow/v1/suzhou/molding/IM/IM-03/process_value"
    body = payload(pv(T0, cycle_time_s=24.5, melt_temp_c=231.0), None)
    record = map_message(plant, topic, body.encode())
    assert record.error is None
    ev = parse_event(record.payload)
    assert isinstance(ev, ProcessValueEvent) and ev.machine == "IM-03"
    assert ev.values == {"cycle_time_s": 24.5, "melt_temp_c": 231.0}
