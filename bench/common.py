"""Shared pieces of the benchmarks: a 200-machine plant and throwaway services."""

from __future__ import annotations

import resource
import tempfile
from pathlib import Path

import yaml

from mesflow.db import migrate, sync_plant
from mesflow.plant import PlantConfig, load_plant_config
from mesflow.settings import REPO_ROOT


def big_plant(machines: int, directory: Path) -> PlantConfig:
    """The example plant, scaled out: `machines` presses and mills over 10 lines."""
    base = yaml.safe_load((REPO_ROOT / "config" / "plant.example.yaml").read_text())
    per_line = max(1, machines // 10)
    lines = []
    for i in range(10):
        template = base["lines"][i % 2]
        prefix = template["id"]
        lines.append(
            {
                "id": f"{prefix}{i}",
                "name": {
                    "en": f"{template['name']['en']} {i}",
                    "zh": f"{template['name']['zh']}{i}",
                },
                "area": template["area"],
                "machines": [
                    {
                        "id": f"{prefix}{i}-{j:02d}",
                        "name": {"en": f"{prefix} {i}-{j}", "zh": f"{prefix}{i}-{j}号机"},
                        "ideal_cycle_seconds": 20 + (j % 5) * 10,
                    }
                    for j in range(per_line)
                ],
            }
        )
    base["lines"] = lines
    base["products"] = []
    # The benchmarks replay fixed November 2026 dates: keep them inside the clock policy's
    # event-age horizon whatever today's date (docs/events.md#clock-policy).
    base["plant"]["max_event_age_days"] = 36500
    path = directory / "plant-200.yaml"
    path.write_text(yaml.safe_dump(base, allow_unicode=True))
    return load_plant_config(path)


def fresh_database(plant: PlantConfig) -> tuple[object, str]:
    from mesflow.services import EmbeddedPostgres

    pg = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="mesflow-bench-")) / "pg", delete_on_stop=True
    )
    migrate(pg.url, log=lambda _m: None)
    sync_plant(pg.url, plant)
    return pg, pg.url


def peak_rss_mib() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
