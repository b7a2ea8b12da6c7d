"""The demo plant scaled out to N machines, for the benchmarks.

The scaled plant is derived FROM `config/plant.example.yaml` by cloning its lines, so every
feature the example plant has (a line's own shift calendar, products with ideal cycles per
machine, state mappings, the reason tree, routings, defect codes, inspection and labour
policies, and whatever is added later) is kept: clone k of machine `IM-01` is `IM-01.k3`
(`IM-01` itself for k = 0), clone k of line `CNC` is `CNC.k3`, and every place outside
`lines` that names a machine (a mapping keyed by machine id, a list of machine ids) names
all its clones. tests/test_bench_scaled_plant.py folds the clones back and checks that the
result equals the example plant.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml

from mesflow.plant import PlantConfig, load_plant_config
from mesflow.settings import REPO_ROOT

EXAMPLE_PLANT = REPO_ROOT / "config" / "plant.example.yaml"
CLONE_SEPARATOR = ".k"  # "." is allowed in ids ([A-Za-z0-9_.-]) and never used by the example


def clone_id(original: str, k: int) -> str:
    return original if k == 0 else f"{original}{CLONE_SEPARATOR}{k}"


def origin_of(clone: str) -> str:
    """`IM-01.k3` -> `IM-01`; an id that is no clone is its own origin."""
    head, sep, tail = clone.rpartition(CLONE_SEPARATOR)
    return head if sep and tail.isdigit() else clone


def _expand(node: Any, clones: dict[str, list[str]]) -> Any:
    """Every machine id in `node` (as a mapping key or a list member) -> all its clones.

    A lone string value that names a machine (not in a list) stays as it is: it then
    names clone 0, which exists."""
    if isinstance(node, dict):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            for name in clones.get(key, [key]) if isinstance(key, str) else [key]:
                out[name] = _expand(value, clones)
        return out
    if isinstance(node, list):
        items: list[Any] = []
        for value in node:
            if isinstance(value, str) and value in clones:
                items.extend(clones[value])
            else:
                items.append(_expand(value, clones))
        return items
    return node


def scaled_plant_data(machines: int, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The example plant's YAML data with exactly `machines` machines (clones of its lines).

    The first `machines` of the clones are kept, line by line, so a count that is not a
    multiple of the example's machine count cuts the last clone short."""
    data = copy.deepcopy(base) if base is not None else yaml.safe_load(EXAMPLE_PLANT.read_text())
    template_lines: list[dict[str, Any]] = data["lines"]
    per_copy = sum(len(line["machines"]) for line in template_lines)
    if machines < 1:
        raise ValueError("a plant needs at least one machine")
    copies = math.ceil(machines / per_copy)
    clones: dict[str, list[str]] = {}
    lines: list[dict[str, Any]] = []
    left = machines
    for k in range(copies):
        for template in template_lines:
            if left <= 0:
                break
            line = copy.deepcopy(template)
            line["id"] = clone_id(template["id"], k)
            if k:
                line["name"] = {lang: f"{text} {k + 1}" for lang, text in template["name"].items()}
            kept = []
            for machine in line["machines"][:left]:
                original = machine["id"]
                machine["id"] = clone_id(original, k)
                if k:
                    machine["name"] = {
                        lang: f"{text} #{k + 1}" for lang, text in machine["name"].items()
                    }
                clones.setdefault(original, []).append(machine["id"])
                kept.append(machine)
            left -= len(kept)
            line["machines"] = kept
            lines.append(line)
    rest = {key: value for key, value in data.items() if key != "lines"}
    out = _expand(rest, clones)
    out["lines"] = lines
    # Keep the example's key order (lines before products etc.) for a readable file.
    return {key: out[key] for key in data}


def write_scaled_plant(
    machines: int, directory: Path, *, max_event_age_days: float | None = 36500
) -> tuple[Path, PlantConfig]:
    """Write the scaled plant to `directory` and load it (validated like any plant file).

    The benchmarks replay fixed November 2026 dates: by default the clock policy's event-age
    horizon is widened so that they stay inside it whatever today's date
    (docs/events.md#clock-policy)."""
    data = scaled_plant_data(machines)
    if max_event_age_days is not None:
        data["plant"]["max_event_age_days"] = max_event_age_days
    path = directory / f"plant-{machines}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path, load_plant_config(path)
