"""Benchmark write_history on a big plant: `python bench/simulator_bench.py`.

The plant is the example plant with its lines copied until it has `--machines` machines
(ids get a clone suffix, e.g. IM-01.k3); the simulated duration is chosen to give about
`--events` events.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scaled_plant import scaled_plant_data
from collectors.simulator.history import write_history
from mesflow.plant import PlantConfig, load_plant_config
from mesflow.settings import REPO_ROOT


def big_plant(base: PlantConfig, machines: int) -> PlantConfig:
    """The example plant cloned to `machines` machines (bench/scaled_plant.py keeps every
    feature: routings, defect tree, inspection policies, crews per line)."""
    del base  # the scaled plant is derived from the example plant file itself
    return PlantConfig.model_validate(scaled_plant_data(machines))


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
