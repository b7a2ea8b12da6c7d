"""What a snapshot of the inspection step costs the flow: a plain pickle of its state (as
before) and the encoder that reuses each parts list's inner minutes
(streams/inspection_snapshot.py).

    python bench/inspection_snapshot_bench.py [--machines 200] [--seconds 360] [--every 10]

The state is the live benchmark's (bench/live_latency.py): every machine runs one work
order, and its parts totals come once a second (the figures' throttle), for `--seconds`;
then, `--every` seconds of totals apart, ten snapshots are taken both ways. Prints the
median CPU of each, their ratio, the bytes, and the points pickled per snapshot. Pure CPU:
no database, no Bytewax.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mesflow.events import parse_event
from mesflow.plant import load_plant_config
from mesflow.settings import REPO_ROOT
from streams.hour_clock import to_us
from streams.inspection_snapshot import InspectionSnapshots, decode
from streams.inspections import Inspections
from streams.records import FloorInput, WorkOrderParts

T0 = datetime.fromisoformat("2026-11-30T06:00:00+08:00")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--machines", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=360, help="parts totals before the first")
    ap.add_argument("--every", type=int, default=10, help="seconds between snapshots")
    args = ap.parse_args()
    plant = load_plant_config(REPO_ROOT / "config" / "plant.example.yaml")
    steps = Inspections(plant, None, lag_s=10.0)
    machines = [f"M-{i:03d}" for i in range(args.machines)]
    for i, m in enumerate(machines):
        body = {"type": "report", "kind": "wo_start", "machine": m, "work_order": f"LB-{m}",
                "ts": T0.isoformat()}  # fmt: skip
        steps.feed([FloorInput(i + 1, parse_event(json.dumps(body)))])

    def second(s: int) -> None:
        t = to_us(T0 + timedelta(seconds=s))
        total = 50 * s
        steps.feed([WorkOrderParts("SO-1", f"LB-{m}", m, t, total, 0, ()) for m in machines])

    for s in range(1, args.seconds + 1):
        second(s)
    snaps = InspectionSnapshots()
    snaps.encode(steps.state)  # the first encodes everything
    plain_ms: list[float] = []
    lean_ms: list[float] = []
    points: list[int] = []
    s = args.seconds
    for _ in range(10):
        for _ in range(args.every):
            s += 1
            second(s)
        t = time.process_time()
        plain = pickle.dumps(steps.state, protocol=pickle.HIGHEST_PROTOCOL)
        plain_ms.append((time.process_time() - t) * 1000)
        before = snaps.encoded
        t = time.process_time()
        lean = snaps.encode(steps.state)
        lean_ms.append((time.process_time() - t) * 1000)
        points.append(snaps.encoded - before)
    assert pickle.dumps(decode(lean).parts) == pickle.dumps(steps.state.parts)
    n_points = sum(len(p) for p in steps.state.parts.values())
    a, b = statistics.median(plain_ms), statistics.median(lean_ms)
    print(
        f"{args.machines} machines, {len(steps.state.parts)} parts lists, {n_points:,} points "
        f"(after {s} s of totals)"
    )
    print(f"plain pickle: {a:.1f} ms per snapshot (median of 10), {len(plain):,} bytes")
    print(
        f"by minute:    {b:.1f} ms per snapshot, {len(lean):,} bytes, "
        f"{statistics.median(points):,.0f} points pickled | {b / a:.2f}x the plain pickle's CPU"
    )


if __name__ == "__main__":
    main()
