"""Where a replay's CPU goes: the storer and the validator, per event, fast path vs slow.

    python -m bench.replay_profile [--events 200000] [--machines 200] [--repeat 3]
                                   [--cprofile N]

Generates a simulated plant history (the same generator as `bench/replay_bench.py`),
then measures in this process, with `time.process_time()` (CPU, not wall clock: the
machine may be shared):

- storer: the file's lines -> log records (`streams.replay.line_records`: JSON decoding,
  the canonical payload, the dedupe and content keys), with the fast path and with the
  reference (stdlib `json`) path forced;
- validation: log rows -> checked events (`streams.validate.Validator`), with the fast
  path (`mesflow.events.parse_event`) and with pydantic alone (`parse_event_reference`).

Both variants run on the same data in the same process, interleaved, so their ratio holds
on a loaded machine even when the absolute figures do not. Each figure is printed with
the load average. `--cprofile N` prints the top N functions of one validation pass.
Everything it writes goes to a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import itertools
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import big_plant
from collectors.simulator import write_history
from mesflow import events, ingest_log
from mesflow.ingest_log import LogEntry
from mesflow.plant import PlantConfig
from streams.replay import line_records
from streams.runner import dataflow_gc
from streams.validate import Validator


def make_file(plant: PlantConfig, n: int, directory: Path) -> Path:
    start = datetime(2026, 11, 16, 7, 0, tzinfo=plant.tz)
    full = directory / "sim.jsonl"
    duration = 3600.0 * 6
    while write_history(plant, full, seed=7, start=start, duration_s=duration) < n:
        duration *= 2
    out = directory / f"replay-{n}.jsonl"
    with full.open() as src, out.open("w") as dst:
        dst.writelines(itertools.islice(src, n))
    full.unlink()
    return out


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


@contextmanager
def reference_paths() -> Iterator[None]:
    """Force the reference code: stdlib json in the storer, pydantic alone in validation."""
    import streams.replay as replay
    import streams.validate as validate

    saved = (ingest_log.fast_record, replay.fast_record, validate.parse_event)
    ingest_log.fast_record = replay.fast_record = lambda source, raw: None
    validate.parse_event = events.parse_event_reference
    try:
        yield
    finally:
        ingest_log.fast_record, replay.fast_record, validate.parse_event = saved


def cpu_us_per(n: int, fn: Callable[[], Any]) -> float:
    t = time.process_time()
    fn()
    return (time.process_time() - t) / n * 1e6


STEPS = ("validate", "machines", "orders", "problems", "inspections", "quality", "labor")


class _SimClock:
    """--live: the wall clock the machine and order steps read (streams/dataflow.py's
    `time` and `datetime`), moved by the batches as a live flow at `rate` events/s would
    see it, so that their figure throttles and timers act as they do live."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return int(self.now * 1e9)

    def patch(self, module: Any) -> None:
        clock = self

        class SimDatetime(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> Any:
                return datetime.fromtimestamp(clock.now, tz)

        module.time, module.datetime = self, SimDatetime


def steps_once(
    plant: PlantConfig, entries: list[LogEntry], batch: int = 2000, live_rate: float = 0.0
) -> tuple[dict[str, float], list[Any]]:
    """One pass of the dataflow's steps as Bytewax runs them in a replay (each input batch
    through validation, then each key's share of it through its step's logic), every step
    timed apart (CPU). Returns the CPU seconds per step and every row, in step order.

    live_rate > 0: as a live flow reading `batch` events at a time at that rate: the
    machine and order steps with their live figure throttle (1 s) and their timers
    (notify_at / on_notify, as Bytewax calls them: for the keys a batch woke), on a
    simulated wall clock; the other steps as in a replay."""
    from bytewax.operators import StatefulBatchLogic

    import streams.dataflow as df
    from streams.inspections_flow import InspectionLogic
    from streams.inspections_flow import _inputs as inspection_inputs
    from streams.labor import labor_events
    from streams.labor_flow import LaborLogic
    from streams.order_problems import INPUT_TYPES as PROBLEM_INPUTS
    from streams.order_problems_flow import ProblemLogic
    from streams.order_progress import IdealCycles
    from streams.quality import Quality
    from streams.quality_flow import QualityLogic
    from streams.quality_flow import _inputs as quality_inputs

    cpu = dict.fromkeys(STEPS, 0.0)
    rows: list[Any] = []
    clock = df.EventClock()
    validator = clock.watch(Validator(plant))
    ideal = IdealCycles.from_plant(plant)
    quality = Quality(plant)
    keyed: dict[str, dict[Any, StatefulBatchLogic[Any, Any, Any]]] = {s: {} for s in STEPS}
    live = live_rate > 0
    sim = _SimClock()
    saved = (df.time, df.datetime)
    if live:
        sim.patch(df)
    throttle = timedelta(seconds=1) if live else None
    makers: dict[str, Callable[[], Any]] = {
        "machines": lambda: df.MachineLogic(None, plant, throttle, None),
        "orders": lambda: df.OrderLogic(None, ideal, live, None if live else clock, throttle),
        "problems": lambda: ProblemLogic(None, plant, False),
        "inspections": lambda: InspectionLogic(None, plant, False),
        "quality": lambda: QualityLogic(None, quality),
        "labor": lambda: LaborLogic(None, plant, False),
    }

    # The machine step may take each key's events of a batch as one list (the wiring's
    # choice: streams/dataflow.py), or one by one.
    grouped = "list[list[" in str(df.MachineLogic.on_batch.__annotations__.get("values"))

    def run(step: str, items: list[tuple[Any, Any]]) -> list[Any]:
        t = time.process_time()
        by_key: dict[Any, list[Any]] = {}
        for k, v in items:
            by_key.setdefault(k, []).append(v)
        if grouped and step == "machines":
            by_key = {k: [v] for k, v in by_key.items()}
        out: list[Any] = []
        logics = keyed[step]
        for k, values in by_key.items():
            logic = logics.get(k)
            if logic is None:
                logic = logics[k] = makers[step]()
            for part in logic.on_batch(values)[0]:
                out.extend(part)
            if live and step in TIMED:
                _schedule(step, k, logic)
        cpu[step] += time.process_time() - t
        return out

    # --live: each timed step's keys' next notify_at (Bytewax keeps these and asks again
    # only the keys a batch or a timer woke).
    TIMED = ("machines", "orders")
    sched: dict[str, dict[Any, float]] = {s: {} for s in TIMED}

    def _schedule(step: str, k: Any, logic: Any) -> None:
        due = logic.notify_at()
        if due is None:
            sched[step].pop(k, None)
        else:
            sched[step][k] = due.timestamp()

    def timers(step: str) -> list[Any]:
        t = time.process_time()
        out: list[Any] = []
        due = [k for k, at in sched[step].items() if at <= sim.now]
        for k in due:
            logic = keyed[step][k]
            for part in logic.on_notify()[0]:
                out.extend(part)
            _schedule(step, k, logic)
        cpu[step] += time.process_time() - t
        return out

    def eof(step: str) -> list[Any]:
        out: list[Any] = []
        for logic in keyed[step].values():
            for part in logic.on_eof()[0]:
                out.extend(part)
        return out

    def takes_lists(fn: Callable[..., Any]) -> bool:
        # The side steps' input functions may take the rows as one list per batch (the
        # wiring's choice: streams/dataflow.py), or as one list.
        first = next(iter(inspect.signature(fn).parameters.values()))
        return "list[list[" in str(first.annotation)

    def wrap(fn: Callable[..., Any]) -> Callable[[list[Any]], Any]:
        return (lambda rows: fn([rows])) if takes_lists(fn) else fn

    inspection_in = wrap(inspection_inputs)
    quality_in = wrap(quality_inputs)

    def rest_steps(rest: list[Any]) -> list[Any]:
        t = time.process_time()
        to_orders = [(x.order_no, x) for x in rest if type(x) in df._TO_ORDERS]
        cpu["orders"] += time.process_time() - t
        order_rows = run("orders", to_orders)
        if live:
            order_rows += timers("orders")
        results = [x for x in rest if type(x) not in df._TO_ORDERS] + order_rows
        t = time.process_time()
        problem_in = [("plant", x) for x in results if type(x) in PROBLEM_INPUTS]
        cpu["problems"] += time.process_time() - t
        out = results + run("problems", problem_in)
        t = time.process_time()
        ins = inspection_in(rest)
        cpu["inspections"] += time.process_time() - t
        out += run("inspections", ins)
        t = time.process_time()
        qin = quality_in(rest)
        cpu["quality"] += time.process_time() - t
        out += run("quality", qin)
        t = time.process_time()
        lin = [("plant", x) for x in labor_events(rest)]
        cpu["labor"] += time.process_time() - t
        out += run("labor", lin)
        return out

    for i in range(0, len(entries), batch):
        t = time.process_time()
        checked = list(validator(entries[i : i + batch]))
        machine_in = [x for x in checked if type(x) is tuple]
        other = [x for x in checked if type(x) is not tuple]
        cpu["validate"] += time.process_time() - t
        machine_rows = run("machines", machine_in)
        if live:
            sim.now += batch / live_rate
            machine_rows += timers("machines")
        rows.extend(rest_steps(machine_rows + other))
    vars(df).update(time=saved[0], datetime=saved[1])  # the real clock again
    for step in STEPS[1:]:
        t = time.process_time()
        last = eof(step)
        cpu[step] += time.process_time() - t
        rows.extend(last)
        if step == "machines":
            rows.extend(rest_steps(last))
    return cpu, rows


def run_steps(plant: PlantConfig, entries: list[LogEntry], args: argparse.Namespace) -> None:
    """--steps: each step's CPU per event, and the rows against a saved run (identical
    results before and after a change)."""
    import pickle

    n = len(entries)
    for rnd in range(args.repeat):
        cpu, rows = steps_once(plant, entries, args.batch, args.live)
        total = sum(cpu.values())
        figures = ", ".join(f"{s} {cpu[s] / n * 1e6:.2f}" for s in STEPS)
        print(
            f"round {rnd + 1}: steps {total / n * 1e6:.2f} us/event CPU ({figures}); "
            f"{len(rows):,} rows; batches of {args.batch:,}: "
            f"{total / -(-n // args.batch) * 1e3:.2f} ms per batch; {load()}"
        )
    if args.save_rows:
        args.save_rows.write_bytes(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))
        print(f"rows saved to {args.save_rows}")
    if args.compare_rows:
        saved = pickle.loads(args.compare_rows.read_bytes())
        same = saved == rows
        print(f"rows identical to {args.compare_rows}: {same}")
        if not same:
            diff = next(i for i, (a, b) in enumerate(zip(saved, rows, strict=False)) if a != b)
            print(f"  first difference at row {diff} (of {len(saved)} vs {len(rows)}):")
            print(f"  saved: {saved[diff]!r}\n  now:   {rows[diff]!r}")
    if args.cprofile:
        prof = cProfile.Profile()
        prof.runcall(steps_once, plant, entries)
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.cprofile)
        print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cprofile", type=int, default=0, metavar="N")
    parser.add_argument(
        "--steps",
        action="store_true",
        help="time each dataflow step in-process (no Bytewax): validate, machines, orders, "
        "order problems, inspections, quality, labor",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=2000,
        help="with --steps: events per input batch (a replay reads 2,000; a live flow at "
        "5,000 events/s reads ~100 every 20 ms)",
    )
    parser.add_argument(
        "--live",
        type=float,
        default=0.0,
        metavar="RATE",
        help="with --steps: the machine and order steps as live at RATE events/s (their "
        "1 s figure throttles and timers, on a simulated clock); use with --batch",
    )
    parser.add_argument("--save-rows", type=Path, help="with --steps: pickle every step's rows")
    parser.add_argument(
        "--compare-rows", type=Path, help="with --steps: compare the rows with a saved pickle"
    )
    args = parser.parse_args()

    dataflow_gc()  # the dataflow's collector settings: the figures then hold for it
    work = Path(tempfile.mkdtemp(prefix="mesflow-replay-profile-"))
    try:
        plant = big_plant(args.machines, work)
        path = make_file(plant, args.events, work)
        n = args.events
        print(f"{n:,} events, {len(plant.machines)} machines; {load()}")

        def store() -> list[Any]:
            return [r for chunk in line_records(path) for r in chunk]

        records = store()
        received = datetime(2026, 12, 1, tzinfo=UTC)
        entries = [LogEntry(i + 1, r.payload, r.error, received) for i, r in enumerate(records)]

        if args.steps:
            run_steps(plant, entries, args)
            return

        def validate() -> None:
            check = Validator(plant)
            for i in range(0, len(entries), 20_000):
                check(entries[i : i + 20_000])

        with reference_paths():
            ref_out = Validator(plant)(entries)
            ref_records = store()
        fast_out = Validator(plant)(entries)
        same = ref_out == fast_out and ref_records == records
        print(f"fast path output identical to the reference path: {same}")

        for rnd in range(args.repeat):
            with reference_paths():
                s_ref = cpu_us_per(n, store)
                v_ref = cpu_us_per(n, validate)
            s_fast = cpu_us_per(n, store)
            v_fast = cpu_us_per(n, validate)
            print(
                f"round {rnd + 1}: storer {s_ref:.2f} -> {s_fast:.2f} us/event "
                f"({s_ref / s_fast:.2f}x); validation {v_ref:.2f} -> {v_fast:.2f} us/event "
                f"({v_ref / v_fast:.2f}x) CPU; {load()}"
            )
        if args.cprofile:
            prof = cProfile.Profile()
            prof.runcall(validate)
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.cprofile)
            print(out.getvalue())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
