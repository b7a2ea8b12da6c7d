"""CPU of the order step (streams/order_progress.py) on the inputs a replay gives it.

    python -m bench.order_step_bench [--events 200000] [--machines 200] [--repeat 3]
                                     [--against REV]

Generates a simulated history of the scaled demo plant (as bench/replay_bench.py does),
runs it through the validator and the machine trackers in batches like the dataflow's
(no Bytewax, no database), and records what reaches the order step: per order, the
batches of CRM orders, work orders, WorkOrderParts and WorkOrderStarted rows. Then it
times (`time.process_time()`, CPU) feeding those batches to a fresh OrderProgress per
order and flushing after each batch, as streams/dataflow.py `OrderLogic.on_batch` does.

`--against REV` also loads streams/order_progress.py as it was at git revision REV and
times it on the same batches, interleaved (the ratio holds on a loaded machine), after
checking that both give identical rows and callbacks. Figures are printed per replay
event and per order input, with the load average. Its files go to a temporary folder
that is removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import big_plant, load_average, module_at
from bench.replay_profile import make_file
from mesflow.events import OrderEvent
from mesflow.ingest_log import LogEntry
from mesflow.plant import PlantConfig
from streams import order_progress
from streams.machine_tracker import MachineSpec, MachineTracker
from streams.records import WorkOrderParts, WorkOrderStarted
from streams.replay import line_records
from streams.runner import dataflow_gc
from streams.validate import OrderInput, Validator

Batches = list[tuple[str, list[Any]]]  # (order_no, the values of one on_batch call)
BATCH = 20_000  # log entries per dataflow batch: the replay source's (streams/replay.py)


def order_batches(plant: PlantConfig, path: Path) -> Batches:
    """What the order step is given, batch by batch, for the file at `path`."""
    records = [r for chunk in line_records(path) for r in chunk]
    received = datetime(2026, 12, 1, tzinfo=UTC)
    entries = [LogEntry(i + 1, r.payload, r.error, received) for i, r in enumerate(records)]
    check = Validator(plant)
    trackers: dict[str, MachineTracker] = {}
    out: Batches = []
    for i in range(0, len(entries), BATCH):
        checked = list(check(entries[i : i + BATCH]))
        by_machine: dict[str, list[Any]] = defaultdict(list)
        to_orders: list[Any] = []
        for x in checked:
            if type(x) is tuple:
                by_machine[x[0]].append(x[1])
            elif type(x) is OrderInput:
                to_orders.append(x)
        for machine, keyed in by_machine.items():
            tracker = trackers.get(machine)
            if tracker is None:
                tracker = trackers[machine] = MachineTracker(MachineSpec.from_plant(plant, machine))
            for seq, ev in keyed:
                tracker.apply(seq, ev)
            to_orders.extend(
                r for r in tracker.flush() if type(r) in (WorkOrderParts, WorkOrderStarted)
            )
        by_order: dict[str, list[Any]] = defaultdict(list)
        for x in to_orders:
            by_order[x.order_no].append(x)
        out.extend(by_order.items())
    return out


def feed(module: ModuleType, ideal: Any, batches: Batches) -> list[Any]:
    """The order step over `batches` with `module`'s OrderProgress (OrderLogic.on_batch)."""
    progress: dict[str, Any] = {}
    rows: list[Any] = []
    for order_no, values in batches:
        p = progress.get(order_no)
        if p is None:
            p = progress[order_no] = module.OrderProgress(order_no, ideal)
        for x in values:
            if type(x) is WorkOrderParts:
                p.on_parts(x.work_order, x.machine, x.t, x.good_total, x.scrap_total, x.ops)
            elif type(x) is WorkOrderStarted:
                p.on_wo_started(x.work_order, x.machine, x.t, x.ops)
            elif isinstance(x.event, OrderEvent):
                p.on_order(x.event)
            else:
                p.on_work_order(x.event)
        rows.append(p.flush())
    return rows


def cpu(fn: Any) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--against", metavar="REV", help="also time order_progress.py at REV")
    args = parser.parse_args()
    dataflow_gc()  # the dataflow's collector settings: the figures then hold for it
    work = Path(tempfile.mkdtemp(prefix="mesflow-order-bench-"))
    try:
        plant = big_plant(args.machines, work)
        path = make_file(plant, args.events, work)
        batches = order_batches(plant, path)
        inputs = sum(len(v) for _, v in batches)
        parts = sum(type(x) is WorkOrderParts for _, v in batches for x in v)
        print(
            f"{args.events:,} events, {len(plant.machines)} machines: {len(batches):,} order "
            f"batches, {inputs:,} order inputs ({parts:,} WorkOrderParts); {load_average()}"
        )
        ideal = order_progress.IdealCycles.from_plant(plant)
        before = (
            module_at(args.against, "streams/order_progress.py", work) if args.against else None
        )
        if before is not None:
            same = feed(before, before.IdealCycles.from_plant(plant), batches) == feed(
                order_progress, ideal, batches
            )
            print(f"rows and callbacks identical to {args.against}'s: {same}")
        for rnd in range(args.repeat):
            line = f"round {rnd + 1}: "
            if before is not None:
                ideal_b = before.IdealCycles.from_plant(plant)
                b = cpu(partial(feed, before, ideal_b, batches))
                line += (
                    f"before {1e6 * b / args.events:.2f} us/event "
                    f"({1e6 * b / inputs:.1f} us/input) -> "
                )
            a = cpu(partial(feed, order_progress, ideal, batches))
            line += f"now {1e6 * a / args.events:.2f} us/event ({1e6 * a / inputs:.1f} us/input)"
            if before is not None:
                line += f" ({b / a:.1f}x)"
            print(f"{line} CPU; {load_average()}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
