"""What a recovery snapshot of one busy machine costs, full and lean, and what a resume
costs to read a lean snapshot's part times back from the log.

    python bench/snapshot_bench.py [--rate 25] [--seconds 400] [--state-every 20]
                                   [--epochs 20] [--against REV]

The machine is the live benchmark's (bench/live_latency.py): a count per event and a state
change every `--state-every` events, at `--rate` events per second of event time, for
`--seconds`, with the demo plant's allowed lateness (300 s). It is fed in batches of 10
with a full flush every 25 batches, as the live dataflow does, then:

- snapshot: the bytes and the CPU of an incremental encode at the end of each of `--epochs`
  snapshot epochs of 10 s of events (median), with the lateness buffer kept (full) and left
  in the log (lean); `--against REV` also times the lean encoder of
  streams/tracker_snapshot.py as it was at git revision REV, interleaved, same changes;
- resume: the CPU to validate the machine's logged events (as `LateStore.machine_events`
  does, without the database read) and to put the part times back (`restore_runs`);
- Bytewax: what its recovery store takes to write `--machines` states of each size at
  every snapshot (SQLite; wall and CPU per snapshot, the flow waits meanwhile).

Multiply by the machines of a plant for one snapshot (Bytewax writes each busy machine's
bytes at every snapshot) and for one resume. Pure CPU: no database, no Bytewax.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from bytewax.testing import TestingSource

from bench.common import load_average, module_at
from mesflow.ingest_log import LogEntry
from mesflow.plant import load_plant_config
from mesflow.settings import REPO_ROOT
from streams.machine_tracker import MachineSpec, MachineTracker
from streams.tracker_snapshot import TrackerSnapshots, decode, restore_runs
from streams.validate import Validator

STATES = ["running", "idle", "running", "down"]
T0 = datetime(2026, 11, 19, 6, 0, tzinfo=UTC)


def log_entries(rate: float, seconds: float, state_every: int) -> list[LogEntry]:
    rows = []
    for i in range(int(rate * seconds)):
        ts = (T0 + timedelta(seconds=i / rate)).isoformat()
        event: dict[str, Any] = {"type": "count", "machine": "IM-01", "ts": ts, "good": 1}
        if i % state_every == 0:
            event = {"type": "state", "machine": "IM-01", "ts": ts}
            event["state"] = STATES[(i // state_every) % len(STATES)]
        rows.append(LogEntry(i + 1, json.dumps(event).encode(), None, datetime.now(UTC)))
    return rows


def best(n: int, fn: Any) -> float:
    times = []
    for _ in range(n):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


class _Fixed(StatefulBatchLogic[int, int, bytes]):
    def __init__(self, state: bytes) -> None:
        self.state = state

    def on_batch(self, values: list[int]) -> tuple[list[int], bool]:
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return self.state


def bytewax_snapshot_cost(size: int, machines: int, epochs: int = 20) -> tuple[float, float]:
    """Wall and CPU seconds per snapshot of `machines` keys holding `size` bytes each, all
    touched every epoch (an epoch per input batch), minus the same flow without recovery."""
    state = bytes(range(256)) * (size // 256) + bytes(size % 256)
    items = [(f"m{k}", i) for i in range(epochs) for k in range(machines)]

    def run(recover: bool) -> tuple[float, float]:
        flow = Dataflow("snapshot_bench")
        stream = op.input("in", flow, TestingSource(items, batch_size=machines))
        op.inspect("out", op.stateful_batch("machines", stream, lambda _: _Fixed(state)))
        with tempfile.TemporaryDirectory(prefix="mesflow-snapshot-bench-") as d:
            init_db_dir(d, 1)
            config = RecoveryConfig(d, backup_interval=timedelta(0)) if recover else None
            wall, cpu = time.perf_counter(), time.process_time()
            cli_main(flow, epoch_interval=timedelta(0), recovery_config=config)
            return time.perf_counter() - wall, time.process_time() - cpu

    with_store, without = run(True), run(False)
    return (with_store[0] - without[0]) / epochs, (with_store[1] - without[1]) / epochs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=25.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=400.0, help="of event time")
    parser.add_argument("--state-every", type=int, default=20, help="events per state change")
    parser.add_argument("--plant", type=Path, default=REPO_ROOT / "config" / "plant.example.yaml")
    parser.add_argument("--machines", type=int, default=200, help="for Bytewax's share")
    parser.add_argument("--epochs", type=int, default=20, help="snapshots of 10 s each, timed")
    parser.add_argument("--against", metavar="REV", help="also time the lean encoder at REV")
    args = parser.parse_args(argv)
    plant = load_plant_config(args.plant)
    epoch_events = round(args.rate * 10)
    rows = log_entries(args.rate, args.seconds + 10 * args.epochs, args.state_every)
    validator = Validator(plant)
    keyed = [item[1] for item in validator(rows) if type(item) is tuple]
    tracker = MachineTracker(MachineSpec.from_plant(plant, "IM-01"))
    encoders: dict[str, Any] = {"full": TrackerSnapshots(), "lean": TrackerSnapshots(lean=True)}
    if args.against:
        with tempfile.TemporaryDirectory(prefix="mesflow-snapshot-bench-") as work:
            before = module_at(args.against, "streams/tracker_snapshot.py", Path(work))
        encoders[f"lean@{args.against}"] = before.TrackerSnapshots(lean=True)
    fill = len(keyed) - epoch_events * args.epochs
    batches = 0

    def feed(upto: int, start: int) -> None:
        nonlocal batches
        for i in range(start, upto, 10):
            for seq, ev in keyed[i : min(i + 10, upto)]:
                tracker.apply(seq, ev)
            batches += 1
            out = tracker.flush(batches % 25 == 0)  # a full flush every 25 batches
            for enc in encoders.values():
                enc.note(out)

    feed(fill, 0)
    for enc in encoders.values():
        enc.encode(tracker)  # the previous snapshot: the next one re-encodes what changed
    cpu: dict[str, list[float]] = {name: [] for name in encoders}
    data: dict[str, bytes] = {}
    names = list(encoders)
    for e in range(args.epochs):
        start = fill + e * epoch_events
        feed(start + epoch_events, start)
        for name in names if e % 2 == 0 else names[::-1]:  # interleaved, in turn first
            t = time.process_time()
            data[name] = encoders[name].encode(tracker)
            cpu[name].append(time.process_time() - t)
    kept = sum(len(ts) for _, ts in tracker.runs)
    print(
        f"one machine: {len(keyed):,} events over {args.seconds + 10 * args.epochs:.0f} s, "
        f"{len(tracker.intervals)} intervals, {kept:,} part times in the lateness buffer, "
        f"{len(tracker.marks)} state events and {len(tracker.parts)} parts kept for the "
        f"lateness | {load_average()}"
    )
    for name in names:
        median = statistics.median(cpu[name])
        ratio = ""
        if name != "lean" and name.startswith("lean@"):
            ratio = f" (lean now: {statistics.median(cpu['lean']) / median:.2f}x of it)"
        print(
            f"snapshot {name}: {len(data[name]):,} bytes, {median * 1e6:,.0f} µs CPU to encode "
            f"after 10 s (median of {args.epochs}){ratio}"
        )
    data.pop(f"lean@{args.against}", None)
    restored = decode(data["lean"])
    assert restored is not None and restored.runs_log is not None
    t = time.process_time()
    again = [item[1] for item in Validator(plant)(rows) if type(item) is tuple]
    read = time.process_time() - t
    t = time.process_time()
    assert restore_runs(restored, again)
    put = time.process_time() - t
    print(
        f"resume from lean: validate {len(again):,} logged events {read * 1e3:.1f} ms "
        f"({read / len(again) * 1e6:.1f} µs each), put {kept:,} part times back "
        f"{put * 1e3:.1f} ms ({put / max(kept, 1) * 1e6:.1f} µs each) | {load_average()}"
    )
    for name, raw in data.items():
        wall, cpu = bytewax_snapshot_cost(len(raw), args.machines)
        print(
            f"Bytewax writes {args.machines} machines' {name} snapshots "
            f"({args.machines * len(raw) / 1e6:.1f} MB): {wall * 1e3:.0f} ms wall, "
            f"{cpu * 1e3:.0f} ms CPU per snapshot | {load_average()}"
        )


if __name__ == "__main__":
    main()
