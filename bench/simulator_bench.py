"""Benchmark write_history on a big plant: `python bench/simulator_bench.py`.

The plant is the example plant with its lines copied until it has `--machines` machines
(ids get a copy suffix, e.g. IM-01-c3); the simulated duration is chosen to give about
`--events` events.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collectors.simulator.history import write_history
from mesflow.plant import PlantConfig, load_plant_config
from mesflow.settings import REPO_ROOT


def big_plant(base: PlantConfig, machines: int) -> PlantConfig:
    data = base.model_dump(mode="json")
    lines: list[dict[str, Any]] = []
    products: list[dict[str, Any]] = []
    copy = 0
    while sum(len(line["machines"]) for line in lines) < machines:
        copy += 1
        for line in base.model_dump(mode="json")["lines"]:
            line["id"] = f"{line['id']}-c{copy}"
            for m in line["machines"]:
                m["id"] = f"{m['id']}-c{copy}"
            lines.append(line)
        for p in base.model_dump(mode="json")["products"]:
            p["ideal_cycle_seconds"] = {
                f"{mid}-c{copy}": s for mid, s in p["ideal_cycle_seconds"].items()
            }
            products.append(p)
    # Trim to exactly `machines` machines (drop products naming dropped machines).
    kept: list[dict[str, Any]] = []
    left = machines
    for line in lines:
        if left <= 0:
            break
        line["machines"] = line["machines"][:left]
        left -= len(line["machines"])
        kept.append(line)
    ids = {m["id"] for line in kept for m in line["machines"]}
    for p in products:
        p["ideal_cycle_seconds"] = {k: v for k, v in p["ideal_cycle_seconds"].items() if k in ids}
    merged: dict[str, dict[str, float]] = {}
    for p in products:
        merged.setdefault(p["id"], {}).update(p["ideal_cycle_seconds"])
    data["lines"] = kept
    data["products"] = [
        {**p, "ideal_cycle_seconds": merged[p["id"]]}
        for p in base.model_dump(mode="json")["products"]
    ]
    return PlantConfig.model_validate(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--machines", type=int, default=200)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=None, help="keep the file here")
    args = ap.parse_args()
    plant = big_plant(load_plant_config(REPO_ROOT / "config" / "plant.example.yaml"), args.machines)
    start = datetime(2026, 11, 16, 0, 0, tzinfo=plant.tz)  # a Monday
    # Estimate the duration from a short run, then time the real one.
    with tempfile.TemporaryDirectory() as tmp:
        probe = write_history(plant, Path(tmp) / "p.jsonl", seed=1, start=start, duration_s=86_400)
        duration = 86_400 * args.events / max(1, probe)
        out = args.out or Path(tmp) / "bench.jsonl"
        t0, c0 = time.perf_counter(), time.process_time()
        n = write_history(plant, out, seed=1, start=start, duration_s=duration)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        size = out.stat().st_size
    print(
        f"{len(plant.machines)} machines, {duration / 3600:.1f} simulated hours: "
        f"{n} events, {size / 1e6:.0f} MB in {dt:.2f} s = {n / dt:,.0f} events/s "
        f"(CPU time {cpu:.2f} s = {n / cpu:,.0f} events/s; the difference is other load)"
    )


if __name__ == "__main__":
    main()
