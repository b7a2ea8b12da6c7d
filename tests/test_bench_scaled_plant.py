"""The benchmarks' scaled plant keeps every feature of the demo plant (bench/scaled_plant.py).

The check is generic: fold every clone id back to its origin, and the scaled plant must
equal the example plant, section by section. A feature issue 13 (or later) adds to
config/plant.example.yaml is then covered without touching this test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.scaled_plant import EXAMPLE_PLANT, origin_of, scaled_plant_data, write_scaled_plant
from mesflow.plant import PlantConfig, load_plant_config


def _fold(node: Any) -> Any:
    """Clone ids -> origin ids; the repeated keys and list members this makes collapse
    (their values must then agree, or the clones differ from their origin)."""
    if isinstance(node, dict):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            name = origin_of(key) if isinstance(key, str) else key
            folded = _fold(value)
            if name in out:
                assert out[name] == folded, f"clones of {name!r} differ"
            out[name] = folded
        return out
    if isinstance(node, list):
        items: list[Any] = []
        for value in node:
            folded = _fold(value)
            if isinstance(value, str) and folded in items:
                continue
            items.append(folded)
        return items
    if isinstance(node, str):
        return origin_of(node)
    return node


def _without_names(line: dict[str, Any]) -> dict[str, Any]:
    return {
        **{k: v for k, v in line.items() if k != "name"},
        "machines": [{k: v for k, v in m.items() if k != "name"} for m in line["machines"]],
    }


@pytest.mark.parametrize("machines", [12, 200, 31])
def test_scaled_plant_folds_back_to_the_example(machines: int, tmp_path: Path) -> None:
    example = load_plant_config(EXAMPLE_PLANT)
    _path, scaled = write_scaled_plant(machines, tmp_path, max_event_age_days=None)
    assert len(scaled.machines) == machines
    assert len(set(scaled.machines)) == machines
    want = example.model_dump(mode="json")
    got = scaled.model_dump(mode="json")
    assert set(got) == set(want)
    for section in want:
        if section == "lines":
            continue
        # products (ideal cycles per machine), routings (machines per operation), the
        # reason and defect trees, inspection and labour policies, state mappings,
        # calendars, defaults, the plant itself.
        assert _fold(got[section]) == want[section], section
    originals = {line["id"]: _without_names(line) for line in want["lines"]}
    for line in got["lines"]:
        folded = _fold(_without_names(line))
        origin = originals[folded["id"]]
        # the last clone may be cut short: its machines are a prefix of the origin's
        assert folded["machines"] == origin["machines"][: len(folded["machines"])]
        assert {k: v for k, v in folded.items() if k != "machines"} == {
            k: v for k, v in origin.items() if k != "machines"
        }


def test_every_scaled_machine_behaves_like_its_origin(tmp_path: Path) -> None:
    """The same answers from the lookups the dataflow and the simulator use."""
    example = load_plant_config(EXAMPLE_PLANT)
    _path, scaled = write_scaled_plant(50, tmp_path)
    assert scaled.plant.max_event_age_days == 36500
    products = [None, *(p.id for p in example.products)]
    for machine in scaled.machines:
        origin = origin_of(machine)
        assert origin in example.machines
        assert scaled.calendar_for(machine) == example.calendar_for(origin)
        assert scaled.microstop_seconds(machine) == example.microstop_seconds(origin)
        m, o = scaled.machines[machine], example.machines[origin]
        assert m.state_mapping == o.state_mapping
        for product in products:
            assert scaled.ideal_cycle_seconds(machine, product) == example.ideal_cycle_seconds(
                origin, product
            )
        for routing in example.routings:
            for op, scaled_op in zip(
                routing.operations,
                scaled.routings_by_product[routing.product].operations,
                strict=True,
            ):
                assert (origin in op.machines) == (machine in scaled_op.machines)
    # a machine-named line calendar (CNC's weekday-only day shift) is on every CNC clone
    cnc = [m for m in scaled.machines if origin_of(m).startswith("CNC")]
    assert cnc and all(scaled.calendar_for(m).workdays == [1, 2, 3, 4, 5] for m in cnc)


def test_features_added_to_the_example_follow(tmp_path: Path) -> None:
    """A routing and a product-keyed policy added to the example reach every clone."""
    base = yaml.safe_load(EXAMPLE_PLANT.read_text())
    base["routings"] = [
        {"product": "P-100", "operations": [{"op": "mold", "machines": ["IM-01", "IM-02"]}]}
    ]
    data = scaled_plant_data(36, base)
    ops = data["routings"][0]["operations"][0]["machines"]
    assert ops == ["IM-01", "IM-01.k1", "IM-01.k2", "IM-02", "IM-02.k1", "IM-02.k2"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    assert isinstance(load_plant_config(path), PlantConfig)
