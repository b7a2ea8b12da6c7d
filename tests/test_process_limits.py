"""Process limits (mesflow/process_limits.py, sql/026_process_limits.sql): the plant file
refuses bad limits with file and line; out-of-limit spans follow a hand-worked sequence
(pure and through the real dataflow and PostgreSQL, replayed twice); Cpk per shift equals a
hand computation; the machine page draws the limits."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mesflow.db import sync_plant
from mesflow.events import WorkOrderEvent, WorkOrderStartReport, parse_event
from mesflow.plant import ConfigError, PlantConfig, load_plant_config
from streams.limit_spans import LimitSpan, LimitTracker, ProductRun, limits_of
from streams.process_values import ProcessValues
from streams.replay import replay_file
from tests.helpers import write_jsonl

M = "IM-03"
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "plant.example.yaml"

MELT_P100 = {"lsl": 220, "usl": 240}
MELT_P200 = {"lsl": 225, "usl": 245}
CUSHION = {"lsl": 3.0, "usl": 5.0, "alarm_low": 3.5}


def limited(plant: PlantConfig) -> PlantConfig:
    """The test plant with limits: melt temperature per product, cushion on IM-03."""
    data = plant.model_dump(mode="json", exclude_none=True)
    for p in data["products"]:
        if p["id"] == "P-100":
            p["process_limits"] = {"melt_temp_c": MELT_P100}
        if p["id"] == "P-200":
            p["process_limits"] = {"melt_temp_c": MELT_P200}
    for ln in data["lines"]:
        for m in ln["machines"]:
            if m["id"] == M:
                m["process_limits"] = {"cushion_mm": CUSHION}
    return PlantConfig.model_validate(data)


# --- the plant file -----------------------------------------------------------------------


def with_limits(tmp_path: Path, block: str, where: str = "product") -> Path:
    text = EXAMPLE.read_text()
    if where == "product":
        anchor = "    ideal_cycle_seconds: {IM-01: 27, IM-02: 27, IM-03: 25}\n"
        assert anchor in text
        text = text.replace(anchor, anchor + "    process_limits:\n" + block, 1)
    path = tmp_path / "plant.yaml"
    path.write_text(text)
    return path


def test_good_limits_load(tmp_path: Path) -> None:
    path = with_limits(
        tmp_path, "      melt_temp_c: {lsl: 220, usl: 240}\n      cushion_mm: {alarm_low: 3}\n"
    )
    p = load_plant_config(path)
    lim = next(x for x in p.products if x.id == "P-100").process_limits
    assert lim is not None
    assert (lim["melt_temp_c"].lower, lim["melt_temp_c"].upper) == (220, 240)
    assert (lim["cushion_mm"].lower, lim["cushion_mm"].upper) == (3, None)


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        ("      melt_temp_c: {lsl: 240, usl: 240}\n", "lsl (240.0) must be below usl"),
        ("      melt_temp_c: {lsl: 250, usl: 240}\n", "must be below usl"),
        ("      melt_temp_c: {alarm_low: 5, alarm_high: 1}\n", "low alarm limit"),
        ("      melt_temp_c: {lsl: 1, usl: 9, alarm_low: 9.5}\n", "low alarm limit"),
        ("      Melt-Temp: {lsl: 1, usl: 2}\n", "Melt-Temp"),
        ("      melt_temp_c: {lsl: .nan, usl: 2}\n", "finite"),
        ("      melt_temp_c: {lsl: 0, usl: .inf}\n", "usl"),
        ("      melt_temp_c: {lsl: 0, usl: 1e300}\n", "less than or equal"),
        ("      melt_temp_c: {}\n", "at least one of"),
        ("      melt_temp_c: {lsl: 1, usl: 2, max: 3}\n", "max"),
        ("      melt_temp_c: {lsl: '1', usl: [2]}\n", "usl"),
    ],
)
def test_bad_limits_fail_with_file_and_line(tmp_path: Path, block: str, needle: str) -> None:
    path = with_limits(tmp_path, block)
    line_no = path.read_text().splitlines().index(block.rstrip("\n")) + 1
    with pytest.raises(ConfigError) as err:
        load_plant_config(path)
    msg = str(err.value)
    assert needle in msg, msg
    assert f"{path}:{line_no}" in msg or f"{path}:{line_no - 1}" in msg, msg


def test_machine_limits_win_over_the_product(plant: PlantConfig) -> None:
    data = limited(plant).model_dump(mode="json", exclude_none=True)
    for ln in data["lines"]:
        for m in ln["machines"]:
            if m["id"] == M:
                m["process_limits"]["melt_temp_c"] = {"usl": 300}
    of = limits_of(PlantConfig.model_validate(data), M)
    assert of("P-100")["melt_temp_c"].upper == 300 and of("P-100")["melt_temp_c"].lower is None
    assert of(None)["cushion_mm"].lower == 3.5  # no work order: the machine's own
    assert "melt_temp_c" not in limits_of(limited(plant), M)(None)


# --- spans: the hand-worked sequence ------------------------------------------------------


def pv(ts: datetime, m: str = M, **values: Any) -> dict[str, Any]:
    return {"type": "process_value", "machine": m, "ts": ts.isoformat(), "values": values}


def s(sec: float) -> datetime:
    return T0 + timedelta(seconds=sec)


def sequence() -> list[dict[str, Any]]:
    """IM-03 runs WO-1 (P-100: melt 220..240) then WO-2 (P-200: melt 225..245) from +150 s;
    cushion has a machine alarm limit of 3.5 (spec 3..5)."""
    wo = {"type": "work_order", "order_no": "O-1", "qty": 10, "machine": M, "ts": s(0).isoformat()}
    start = {"type": "report", "kind": "wo_start", "machine": M}
    return [
        {**wo, "work_order": "WO-1", "product": "P-100"},
        {**wo, "work_order": "WO-2", "product": "P-200"},
        {**start, "work_order": "WO-1", "ts": s(0).isoformat()},
        pv(s(0), melt_temp_c=230.0, cushion_mm=4.0),  # in
        pv(s(60), melt_temp_c=241.0, cushion_mm=3.4),  # melt > 240, cushion < 3.5: two open
        pv(s(120), melt_temp_c=243.0, cushion_mm=3.6),  # melt worse; cushion back in
        {**start, "work_order": "WO-2", "ts": s(150).isoformat()},
        pv(s(180), melt_temp_c=246.0, cushion_mm=4.0),  # P-200: still out (> 245): new span
        pv(s(240), melt_temp_c=244.0),  # back in under P-200
        pv(s(200), melt_temp_c=300.0),  # late (older than 240): stored, moves no span
        pv(s(300), melt_temp_c=220.0),  # < 225: open at the end
    ]


EXPECTED_SPANS = {
    ("melt_temp_c", s(60)): (s(180), "upper", 240.0, 243.0, "P-100"),
    ("melt_temp_c", s(180)): (s(240), "upper", 245.0, 246.0, "P-200"),
    ("melt_temp_c", s(300)): (None, "lower", 225.0, 220.0, "P-200"),
    ("cushion_mm", s(60)): (s(120), "lower", 3.5, 3.4, "P-100"),
}
EXPECTED_RUNS = {(M, s(0)): "P-100", (M, s(150)): "P-200"}


def test_spans_on_the_hand_worked_sequence(plant: PlantConfig) -> None:
    tr = LimitTracker(M, limits_of(limited(plant), M))
    spans: dict[tuple[str, datetime], LimitSpan] = {}
    runs: dict[tuple[str, datetime], str | None] = {}
    for seq, raw in enumerate(sequence(), 1):
        ev = parse_event(json.dumps(raw))
        if isinstance(ev, WorkOrderEvent):
            out: list[Any] = tr.on_work_order(ev)
        elif isinstance(ev, WorkOrderStartReport):
            out = tr.on_report(seq, ev)
        else:
            assert ev.type == "process_value"
            rows = tuple((M, ev.ts, k, v) for k, v in ev.values.items())
            out = tr.on_values(ProcessValues(seq, M, rows))
        for x in out:
            if isinstance(x, ProductRun):
                runs[(x.machine, x.start)] = x.product
            else:
                spans[(x.name, x.start)] = x
    got = {k: (v.end, v.limit, v.bound, v.worst, v.product) for k, v in spans.items()}
    assert got == EXPECTED_SPANS
    assert runs == EXPECTED_RUNS


def test_a_work_order_named_after_its_start_still_gives_the_product(plant: PlantConfig) -> None:
    tr = LimitTracker(M, limits_of(limited(plant), M))
    start = parse_event(json.dumps(sequence()[2]))
    assert isinstance(start, WorkOrderStartReport)
    assert tr.on_report(1, start) == [ProductRun(M, s(0), None)]
    wo = parse_event(json.dumps(sequence()[0]))
    assert isinstance(wo, WorkOrderEvent)
    assert tr.on_work_order(wo) == [ProductRun(M, s(0), "P-100")]
    out = tr.on_values(ProcessValues(2, M, ((M, s(10), "melt_temp_c", 250.0),)))
    assert [(x.product, x.bound) for x in out] == [("P-100", 240.0)]


def stored_spans(url: str) -> dict[tuple[str, datetime], tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT name, start_ts, end_ts, limit_side, bound, worst, product "
            "FROM v_process_limit_spans WHERE machine = %s",
            (M,),
        ).fetchall()
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def test_spans_through_the_dataflow_replayed_twice(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    lp = limited(plant)
    path = write_jsonl(tmp_path / "seq.jsonl", sequence())
    replay_file(path, lp, db_url, tmp_path / "rec", progress=False)
    once = stored_spans(db_url)
    assert once == EXPECTED_SPANS
    replay_file(path, lp, db_url, tmp_path / "rec2", progress=False)
    assert stored_spans(db_url) == once
    with psycopg.connect(db_url) as conn:
        runs = dict(
            ((m, t), p)
            for m, t, p in conn.execute(
                "SELECT machine, start_ts, product FROM process_product_run"
            )
        )
        late = conn.execute(
            "SELECT value FROM process_value WHERE machine = %s AND ts = %s", (M, s(200))
        ).fetchone()
    assert runs == EXPECTED_RUNS
    assert late == (300.0,)  # the late value is stored, only the spans skip it


def test_no_limits_no_span_step(db_url: str, plant: PlantConfig, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "seq.jsonl", sequence())
    replay_file(path, plant, db_url, tmp_path / "rec", progress=False)
    assert stored_spans(db_url) == {}


# --- Cpk ------------------------------------------------------------------------------------


def test_cpk_per_shift_against_a_hand_computation(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    """Shift A of IM-03 on 2026-11-20 (08:00-16:00), P-100 (melt lsl 220, usl 240):
    melt 232, 234, 236, 234 -> n = 4, mean = 936 / 4 = 234;
    deviations -2, 0, 2, 0 -> sum of squares 8; sample variance 8 / 3; σ = 1.632993;
    Cpk = min(240 - 234, 234 - 220) / (3σ) = 6 / 4.898979 = 1.224745;
    Cp = (240 - 220) / (6σ) = 20 / 9.797959 = 2.041241.
    A value at 07:00 (before the shift) is left out; cushion has one value (n < 2: NULL);
    cycle_time_s has no limits (NULL)."""
    lp = limited(plant)
    sync_plant(db_url, lp)
    wo = {"type": "work_order", "order_no": "O-1", "qty": 10, "machine": M, "ts": s(0).isoformat()}
    events: list[dict[str, Any]] = [
        {**wo, "work_order": "WO-1", "product": "P-100"},
        {"type": "report", "kind": "wo_start", "machine": M, "work_order": "WO-1",
         "ts": s(0).isoformat()},
        pv(s(-3600), melt_temp_c=100.0),
        pv(s(60), melt_temp_c=232.0, cushion_mm=4.0, cycle_time_s=30.0),
        pv(s(120), melt_temp_c=234.0, cycle_time_s=31.0),
        pv(s(180), melt_temp_c=236.0),
        pv(s(240), melt_temp_c=234.0),
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "cpk.jsonl", events)
    replay_file(path, lp, db_url, tmp_path / "rec", progress=False)
    with psycopg.connect(db_url) as conn:
        # One shift instance, written as the machine step writes them (its own rows for
        # this machine are replaced, so the hand example decides the bucket).
        conn.execute("DELETE FROM machine_kpi WHERE machine = %s", (M,))
        conn.execute(
            "INSERT INTO machine_kpi (machine, bucket, bucket_start, bucket_end, shift_date, "
            "shift_name) VALUES (%s, 'shift', %s, %s, %s, 'A')",
            (M, T0, T0 + timedelta(hours=8), date(2026, 11, 20)),
        )
        rows = conn.execute(
            "SELECT name, product, n, mean, stddev, lsl, usl, cpk, cp FROM v_process_cpk "
            "WHERE machine = %s AND shift_date = %s AND shift_name = 'A'",
            (M, date(2026, 11, 20)),
        ).fetchall()
    got = {r[0]: r[1:] for r in rows}
    sigma = math.sqrt(8 / 3)
    product, n, mean, sd, lsl, usl, cpk, cp = got["melt_temp_c"]
    assert (product, n, lsl, usl) == ("P-100", 4, 220.0, 240.0)
    assert mean == pytest.approx(234.0) and sd == pytest.approx(sigma)
    assert cpk == pytest.approx(6 / (3 * sigma)) and cpk == pytest.approx(1.224745, abs=1e-6)
    assert cp == pytest.approx(20 / (6 * sigma)) and cp == pytest.approx(2.041241, abs=1e-6)
    assert got["cushion_mm"][1] == 1 and got["cushion_mm"][6:] == (None, None)
    assert got["cycle_time_s"][1] == 2 and got["cycle_time_s"][4:] == (None, None, None, None)


# --- the machine page -----------------------------------------------------------------------


def test_machine_page_draws_limits_spans_and_cpk(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    """The sequence (08:00Z = 16:00 in the plant's zone): USL 240 until WO-2 starts at
    08:02:30, then 245; LSL 220 then 225; the three melt spans shaded; Cpk table served."""
    from dashboards import context
    from dashboards.app import create_app
    from mesflow import users
    from mesflow.settings import Settings
    from tests.test_analytics import _sign_in

    lp = limited(plant)
    path = write_jsonl(tmp_path / "seq.jsonl", sequence())
    replay_file(path, lp, db_url, tmp_path / "rec", progress=False)
    with psycopg.connect(db_url, autocommit=True) as conn:
        users.add_user(conn, "boss", "manager", "manager-password-123")
    app = create_app(Settings(auth_session_secret="s" * 40), lp, db_url)
    inputs = [
        {"id": "mc-machine", "property": "value", "value": M},
        {"id": "mc-date", "property": "date", "value": "2026-11-20"},
        {"id": "mv-name", "property": "value", "value": "melt_temp_c"},
    ]
    body = {
        "output": "mv-graph.figure",
        "outputs": {"id": "mv-graph", "property": "figure"},
        "inputs": inputs,
        "state": [{"id": "mc-lang", "property": "data", "value": "en"}],
        "changedPropIds": ["mv-name.value"],
    }
    try:
        client = app.server.test_client()
        _sign_in(client, "boss", "manager-password-123")
        got = client.post("/_dash-update-component", json=body)
        assert got.status_code == 200, got.get_data(as_text=True)
        fig = got.get_json()["response"]["mv-graph"]["figure"]
        lines = {t["name"]: t for t in fig["data"] if t.get("name") in ("USL", "LSL")}
        assert lines["USL"]["y"] == [240.0, 240.0, None, 245.0, 245.0]
        assert lines["LSL"]["y"] == [220.0, 220.0, None, 225.0, 225.0]
        assert lines["USL"]["x"][2:4] == [None, "2026-11-20T16:02:30"]
        rects = [(r["x0"], r["x1"]) for r in fig["layout"]["shapes"]]
        assert rects == [
            ("2026-11-20T16:01:00", "2026-11-20T16:03:00"),
            ("2026-11-20T16:03:00", "2026-11-20T16:04:00"),
            ("2026-11-20T16:05:00", "2026-11-21T00:00:00"),  # open: to the day's end
        ]
        cpk_body = {**body, "output": "mv-cpk.children"}
        cpk_body["outputs"] = {"id": "mv-cpk", "property": "children"}
        got = client.post("/_dash-update-component", json=cpk_body)
        assert got.status_code == 200, got.get_data(as_text=True)
    finally:
        context.of(app.server).db.close()


# --- the alert rule `process_limit` -------------------------------------------------------


def test_process_limit_alert_opens_escalates_and_resolves_with_the_last_value(
    plant: PlantConfig,
) -> None:
    from mesflow.alert_rules import AlertsConfig
    from streams.alert_engine import AlertEngine
    from streams.dataflow import _alert_inputs
    from streams.records import StatusRow

    levels = [{"after_min": 5, "people": ["zhang"]}, {"after_min": 15, "people": ["li"]}]
    people = {
        "zhang": {"display": "Zhang", "email": "z@plant.example"},
        "li": {"display": "Li", "email": "l@plant.example"},
    }
    rule = {"name": "limits", "kind": "process_limit", "levels": levels}
    cfg = AlertsConfig.model_validate({"people": people, "rules": [rule]})
    assert LimitSpan in _alert_inputs(cfg)
    e = AlertEngine(cfg, plant, grace_s=0)

    def at(minutes: float) -> datetime:
        return T0 + timedelta(minutes=minutes)

    def span(name: str, start: float, end: float | None) -> LimitSpan:
        return LimitSpan(M, name, at(start), None if end is None else at(end), "upper",
                         240.0, 250.0, "P-100")  # fmt: skip

    def heard(minutes: float) -> StatusRow:
        return StatusRow("IM-02", "running", at(0), None, None, at(minutes), 0, 0)

    def steps(rows: list[Any]) -> list[tuple[str, int, datetime]]:
        return [(r.step, r.level, r.at) for r in rows]

    # A 2-minute span that began and ended between batches: shorter than level 0, nothing.
    assert e.feed([span("melt_temp_c", -10, -8), heard(-7)]) == []
    assert e.feed([span("melt_temp_c", 0, None)]) == []
    opened = e.feed([span("cushion_mm", 7, None), heard(7)])
    assert steps(opened) == [("opened", 0, at(5))]
    assert opened[0].facts["values_out"] == ["cushion_mm", "melt_temp_c"]
    # Melt back in at 10; cushion still out: the alert goes on, and escalates at 15.
    assert e.feed([span("melt_temp_c", 0, 10), heard(13)]) == []
    assert steps(e.feed([heard(16)])) == [("escalated", 1, at(15))]
    # Cushion back in at 20: resolved once clear_after_s (120 s) passed.
    assert e.feed([span("cushion_mm", 7, 20), heard(21)]) == []
    assert steps(e.feed([heard(23)])) == [("resolved", 1, at(20))]
    # `names` narrows the rule: melt alone never opens an alert of a cushion-only rule.
    only = AlertsConfig.model_validate(
        {"people": people, "rules": [{**rule, "names": ["cushion_mm"]}]}
    )
    e2 = AlertEngine(only, plant, grace_s=0)
    assert e2.feed([span("melt_temp_c", 0, None), heard(30)]) == []


def test_a_resumed_tracker_goes_on_with_the_plant_file_limits(plant: PlantConfig) -> None:
    import pickle

    from streams.limit_spans_flow import LimitLogic

    lp = limited(plant)
    logic = LimitLogic(None, lp)
    wo = parse_event(json.dumps(sequence()[0]))
    start = parse_event(json.dumps(sequence()[2]))
    value = ProcessValues(3, M, ((M, s(60), "melt_temp_c", 241.0),))
    (first,), _ = logic.on_batch([(1, wo), (2, start), value])
    assert [type(x).__name__ for x in first] == ["ProductRun", "LimitSpan"]
    resumed = LimitLogic(logic.snapshot(), lp)
    assert "limits" not in pickle.loads(logic.snapshot()).__dict__  # not in the snapshot
    (rows,), _ = resumed.on_batch([ProcessValues(4, M, ((M, s(120), "melt_temp_c", 230.0),))])
    assert rows == [LimitSpan(M, "melt_temp_c", s(60), s(120), "upper", 240.0, 241.0, "P-100")]
