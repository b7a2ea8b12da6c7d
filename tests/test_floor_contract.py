"""The contract of issue 13's floor reports and plant settings, and how the validator routes
them: sign-in/out, inspections, defects and rework reach their steps as FloorInput; scrapped
parts also move the machine's counts, exactly once; hostile payloads are refused with a
reason, never half-read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mesflow.events import (
    ContractError,
    DefectReport,
    InspectionReport,
    ReworkReport,
    ScrapReport,
    SignInReport,
    WorkOrderEvent,
    WorkOrderStartReport,
    parse_event,
)
from mesflow.ingest_log import LogEntry
from mesflow.plant import ConfigError, PlantConfig, load_plant_config
from mesflow.settings import REPO_ROOT
from streams.records import FloorInput, Progress, Rejection
from streams.validate import Validator

TS = "2026-11-20T09:00:00+08:00"


def _report(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": "report", "kind": kind, "machine": "IM-01", "ts": TS, **fields}


def _run(plant: PlantConfig, *events: dict[str, Any] | bytes) -> list[Any]:
    entries = [
        LogEntry(i + 1, e if isinstance(e, bytes) else json.dumps(e).encode(), None)
        for i, e in enumerate(events)
    ]
    return [x for x in Validator(plant)(entries) if type(x) is not Progress]


def _no_defect_tree(plant: PlantConfig) -> PlantConfig:
    # Validated anew (not model_copy): cached lookups such as defects_by_code must follow.
    data = plant.model_dump()
    data["defects"] = []
    return PlantConfig.model_validate(data)


def test_sign_in_goes_to_the_floor_steps_only(plant: PlantConfig) -> None:
    out = _run(plant, _report("sign_in", operator="op7"))
    floor = [x for x in out if type(x) is FloorInput]
    assert len(floor) == 1 and type(floor[0].event) is SignInReport
    assert floor[0].seq == 1
    assert not [x for x in out if type(x) is tuple]  # no machine figure moves


def test_sign_in_needs_an_operator(plant: PlantConfig) -> None:
    (rej,) = _run(plant, _report("sign_in"))
    assert type(rej) is Rejection and rej.reason == "missing_field"


def test_work_order_reports_go_to_the_tracker_and_the_floor(plant: PlantConfig) -> None:
    out = _run(plant, _report("wo_start", work_order="WO-1", operation="20"))
    machine = [x for x in out if type(x) is tuple]
    floor = [x for x in out if type(x) is FloorInput]
    assert len(machine) == 1 and len(floor) == 1
    assert type(floor[0].event) is WorkOrderStartReport
    assert floor[0].event.operation == "20"


@pytest.mark.parametrize(
    ("fields", "moves"),
    [
        ({"disposition": "scrap"}, True),
        ({"disposition": "rework"}, False),
    ],
)
def test_defect_scrap_moves_the_machines_counts_once(
    plant: PlantConfig, fields: dict[str, Any], moves: bool
) -> None:
    plant = _no_defect_tree(plant)
    out = _run(plant, _report("defect", work_order="WO-1", code="flash", qty=3, **fields))
    floor = [x for x in out if type(x) is FloorInput]
    assert len(floor) == 1 and type(floor[0].event) is DefectReport
    scrap = [x[1][1] for x in out if type(x) is tuple]
    if moves:
        assert len(scrap) == 1 and type(scrap[0]) is ScrapReport
        assert (scrap[0].qty, scrap[0].reason, scrap[0].machine) == (3, "flash", "IM-01")
        assert scrap[0].ts == floor[0].event.ts
    else:
        assert scrap == []


def test_rework_scrap_moves_the_counts_and_good_does_not(plant: PlantConfig) -> None:
    plant = _no_defect_tree(plant)
    out = _run(
        plant,
        _report("rework", work_order="WO-1", qty=2, outcome="scrap", code="flash"),
        _report("rework", work_order="WO-1", qty=5, outcome="good"),
    )
    assert [type(x.event) for x in out if type(x) is FloorInput] == [ReworkReport] * 2
    scrap = [x[1][1] for x in out if type(x) is tuple]
    assert [(s.qty, s.reason) for s in scrap] == [(2, "flash")]


def test_unknown_defect_code_is_dead_lettered_with_the_tree(plant: PlantConfig) -> None:
    data = plant.model_dump()
    data["defects"] = [{"code": "flash", "name": {"en": "Flash", "zh": "飞边"}}]
    tree = PlantConfig.model_validate(data)
    out = _run(
        tree,
        _report("defect", work_order="W", code="flash", qty=1, disposition="scrap"),
        _report("defect", work_order="W", code="nope", qty=1, disposition="scrap"),
        _report(
            "inspection",
            work_order="W",
            stage="first",
            result="fail",
            defects=[{"code": "flash", "qty": 1}, {"code": "x\u0001", "qty": 1}],
        ),
        _report("rework", work_order="W", code="gone", qty=1, outcome="scrap"),
    )
    assert [type(x) for x in out] == [FloorInput, tuple, Rejection, Rejection, Rejection]
    assert [x.seq for x in out if type(x) is Rejection] == [2, 3, 4]
    assert all(x.reason == "unknown_defect" for x in out if type(x) is Rejection)
    assert "nope" in out[2].detail
    # The refused scrap moved nothing: only seq 1's scrap reached its machine.
    assert [x[1][0] for x in out if type(x) is tuple] == [1]


def test_inspection_parses_characteristics_and_defects() -> None:
    ev = parse_event(
        json.dumps(
            _report(
                "inspection",
                work_order="WO-1",
                stage="patrol",
                result="pass",
                sample_qty=5,
                characteristics=[
                    {"name": "diameter", "value": 12.02, "lsl": 11.95, "usl": 12.05, "unit": "mm"},
                    {"name": "appearance", "ok": True},
                ],
                defects=[{"code": "flash", "qty": 1}],
            )
        )
    )
    assert type(ev) is InspectionReport
    assert ev.characteristics[0].value == 12.02 and ev.characteristics[1].value is None
    assert ev.defects[0].qty == 1


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"stage": "daily"}, "invalid_field"),
        ({"result": "ok"}, "invalid_field"),
        ({"characteristics": [{"name": "d", "value": "12.0"}]}, "invalid_field"),
        ({"characteristics": [{"name": "d", "value": True}]}, "invalid_field"),
        ({"characteristics": [{"name": "d\u0000", "value": 1.0}]}, "invalid_field"),
        ({"characteristics": [{"name": "d", "value": 1.0}] * 65}, "invalid_field"),
        ({"defects": [{"code": "flash", "qty": 0}]}, "invalid_field"),
        ({"defects": [{"code": "flash", "qty": 1.0}]}, "invalid_field"),
        ({"defects": [{"code": "flash", "qty": 10**12}]}, "invalid_field"),
        ({"work_order": ""}, "invalid_field"),
        ({"work_order": "W" * 201}, "invalid_field"),
        ({"characteristics": {"name": "d"}}, "invalid_field"),
    ],
)
def test_hostile_inspections_are_refused(fields: dict[str, Any], reason: str) -> None:
    base = _report("inspection", work_order="WO-1", stage="first", result="pass")
    with pytest.raises(ContractError) as err:
        parse_event(json.dumps({**base, **fields}))
    assert err.value.reason == reason


def test_nan_measurement_is_refused() -> None:
    text = json.dumps(_report("inspection", work_order="W", stage="first", result="pass")).replace(
        '"result": "pass"', '"result": "pass", "characteristics": [{"name": "d", "value": NaN}]'
    )
    with pytest.raises(ContractError) as err:
        parse_event(text)
    assert err.value.reason in ("invalid_field", "malformed")


def test_deeply_nested_characteristic_is_refused() -> None:
    deep: Any = 1.0
    for _ in range(200):
        deep = [deep]
    base = _report("inspection", work_order="W", stage="first", result="pass")
    with pytest.raises(ContractError):
        parse_event(json.dumps({**base, "characteristics": [{"name": "d", "value": deep}]}))


@pytest.mark.parametrize(
    "routing",
    [
        [],
        [{"op": "10"}, {"op": "10"}],
        [{"op": "10", "ideal_cycle_seconds": 0}],
        [{"op": "10", "ideal_cycle_seconds": "30"}],
        [{"op": ""}],
        [{"op": str(i)} for i in range(51)],
    ],
)
def test_bad_routings_on_work_orders_are_refused(routing: list[dict[str, Any]]) -> None:
    wo = {
        "type": "work_order",
        "work_order": "WO-1",
        "order_no": "SO-1",
        "product": "P-100",
        "qty": 10,
        "ts": TS,
        "routing": routing,
    }
    with pytest.raises(ContractError) as err:
        parse_event(json.dumps(wo))
    assert err.value.reason == "invalid_field"


def test_routing_on_a_work_order_round_trips() -> None:
    wo = parse_event(
        json.dumps(
            {
                "type": "work_order",
                "work_order": "WO-1",
                "order_no": "SO-1",
                "product": "P-100",
                "qty": 10,
                "ts": TS,
                "routing": [
                    {
                        "op": "10",
                        "name": "molding",
                        "machines": ["IM-01"],
                        "ideal_cycle_seconds": 27,
                    },
                    {"op": "20", "name": "deburr"},
                ],
            }
        )
    )
    assert type(wo) is WorkOrderEvent and wo.routing is not None
    assert [s.op for s in wo.routing] == ["10", "20"]
    assert wo.routing[1].machines == []


# -- the plant file ----------------------------------------------------------------------------

EXAMPLE = REPO_ROOT / "config" / "plant.example.yaml"


def _plant_with(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "plant.yaml"
    path.write_text(EXAMPLE.read_text(encoding="utf-8") + "\n" + extra, encoding="utf-8")
    return path


def _strip(text: str) -> str:
    # The example may already carry these sections (the demo plant): drop them.
    keep: list[str] = []
    skipping = False
    for line in text.splitlines():
        top = line[:1] not in (" ", "-", "#", "") and ":" in line
        if top:
            skipping = line.split(":", 1)[0] in ("routings", "defects", "inspections", "labor")
        if not skipping:
            keep.append(line)
    return "\n".join(keep) + "\n"


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        (
            "routings:\n  - product: P-100\n    operations:\n      - {op: '10', machines: [IM-99]}\n",
            "routings.0.operations.0.machines",
            "unknown machines",
        ),
        (
            "routings:\n  - product: P-100\n    operations:\n      - {op: '10'}\n      - {op: '10'}\n",
            "routings.0.operations.1.op",
            "listed twice",
        ),
        (
            "routings:\n  - product: P-100\n    operations: [{op: '10'}]\n"
            "  - product: P-100\n    operations: [{op: '10'}]\n",
            "routings.1.product",
            "two routings",
        ),
        (
            "defects:\n  - code: flash\n    name: {en: Flash, zh: 飞边}\n"
            "    children:\n      - code: flash\n        name: {en: F, zh: 飞}\n",
            "defects.0.children.0.code",
            "used twice",
        ),
        ("inspections:\n  patrol_every_minutes: -5\n", "inspections.patrol_every_minutes", ""),
        ("inspections:\n  first_article_within: 5\n", "inspections.first_article_within", ""),
        ("labor:\n  max_sign_in_hours: 0\n", "labor.max_sign_in_hours", ""),
    ],
)
def test_bad_floor_settings_name_file_line_and_field(
    tmp_path: Path, extra: str, field: str, message: str
) -> None:
    path = tmp_path / "plant.yaml"
    base = _strip(EXAMPLE.read_text(encoding="utf-8"))
    path.write_text(base + extra, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_plant_config(path)
    text = str(err.value)
    assert str(path) in text and field in text and message in text
    # The line named is one of the lines added, not the top of the file.
    line = int(text.split(f"{path}:", 1)[1].split(":", 1)[0])
    assert base.count("\n") < line <= base.count("\n") + extra.count("\n")


def test_policies_default_off_and_products_override(tmp_path: Path) -> None:
    base = _strip(EXAMPLE.read_text(encoding="utf-8"))
    path = tmp_path / "plant.yaml"
    path.write_text(base, encoding="utf-8")
    plant = load_plant_config(path)
    assert plant.inspections.first_article_within_parts == 0  # off unless configured
    assert plant.inspections.patrol_every_minutes == 0
    assert plant.labor.max_sign_in_hours == 12
    assert plant.inspection_policy("P-100") is plant.inspections
    assert plant.routings_by_product == {} and plant.defects_by_code == {}
