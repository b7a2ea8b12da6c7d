"""The machine trackers' CPU per event in a replay, and nothing else.

    python -m bench.tracker_bench [--events 300000] [--machines 200] [--repeat 3]
                                  [--batch 2000] [--cprofile N]
                                  [--save-rows FILE] [--compare-rows FILE]
                                  [--live] [--poll 100] [--full-every 50]

Builds the scaled plant (bench/common.py `big_plant`), generates the replay history (as
bench/replay_profile.py does), and validates it once, untimed, into what the dataflow's
machine step receives: per input batch, each machine's events in log order
(`Validator.grouped`). Then it times, with `time.process_time()` (CPU: the machine may be
shared), only what the machine step does with them in a replay: fresh trackers,
`MachineTracker.apply` of each event, then `take_late` and `flush()` per machine and
batch, and the final flush. Prints the median of `--repeat` rounds in µs per event, with
the load average. `--save-rows`/`--compare-rows` pickle the rows and rejections to prove
a change gives identical results; `--cprofile N` prints the top N functions of one round.
Everything it writes goes to a temporary folder that is removed at the end (except the
`--save-rows` file).

`--live`: the machine step's fixed cost per batch in a live flow instead. The same events
cut into polls of `--poll` log entries (5,000 events/s at 20 ms polls: 100), so that a
machine gets one or two events per batch; each machine's events of a poll go through
the live flow's `_SeqMachineLogic.on_batch` with a live throttle, then `notify_at` (as
Bytewax calls them), and every `--full-every` batches of a machine its timer (`on_notify`,
the full flush). Prints
µs per batch (CPU); then the fixed cost alone: each machine running, one in-order count
per batch. The throttle's wall clock is taken out (a full flush exactly every
`--full-every` batches), so the rows are comparable run to run (`--save-rows`).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pickle
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import big_plant
from bench.replay_profile import load, make_file
from mesflow.ingest_log import LogEntry
from mesflow.plant import PlantConfig
from streams.machine_tracker import MachineSpec, MachineTracker
from streams.replay import line_records
from streams.runner import dataflow_gc
from streams.validate import Validator

Batches = list[list[tuple[str, list[tuple[int, Any]]]]]


def machine_batches(plant: PlantConfig, entries: list[LogEntry], batch: int) -> Batches:
    """Per input batch: (machine, [(seq, event), ...]) as the machine step gets them."""
    check = Validator(plant)
    out: Batches = []
    for i in range(0, len(entries), batch):
        groups, _ = check.grouped(entries[i : i + batch])
        out.append([g for g in groups if type(g) is tuple])
    return out


def run_once(plant: PlantConfig, batches: Batches) -> tuple[float, list[Any]]:
    """One replay through fresh trackers: (CPU seconds of apply + flush, every row)."""
    specs = {m: MachineSpec.from_plant(plant, m) for m in plant.machines}
    trackers: dict[str, MachineTracker] = {}
    rows: list[Any] = []
    t0 = time.process_time()
    for groups in batches:
        for machine, events in groups:
            tracker = trackers.get(machine)
            if tracker is None:
                tracker = trackers[machine] = MachineTracker(specs[machine])
            apply = tracker.apply
            for seq, ev in events:
                r = apply(seq, ev)
                if r is not None:
                    rows.append(r)
            rows.extend(tracker.take_late())
            rows.extend(tracker.flush())
    for tracker in trackers.values():
        rows.extend(tracker.flush())
    return time.process_time() - t0, rows


def live_batches(batches: Batches, poll: int) -> Batches:
    """The machine events re-cut into polls of `poll` events: per poll, (machine, events)."""
    flat = [(m, e) for groups in batches for m, events in groups for e in events]
    flat.sort(key=lambda x: x[1][0])  # log order
    out: Batches = []
    for i in range(0, len(flat), poll):
        by: dict[str, list[tuple[int, Any]]] = {}
        for m, e in flat[i : i + poll]:
            by.setdefault(m, []).append(e)
        out.append(list(by.items()))
    return out


def run_live(plant: PlantConfig, polls: Batches, full_every: int) -> tuple[float, int, list[Any]]:
    """One live run through fresh MachineLogics: (CPU seconds, batches, every row)."""
    from datetime import timedelta

    from streams.dataflow import _SeqMachineLogic as MachineLogic  # the live flow's

    # A throttle that never lapses by itself: the bench runs the timer every `full_every`.
    throttle = timedelta(days=1)
    logics: dict[str, MachineLogic] = {}
    count: dict[str, int] = {}
    rows: list[Any] = []
    n = 0
    t0 = time.process_time()
    for groups in polls:
        for machine, events in groups:
            logic = logics.get(machine)
            if logic is None:
                logic = logics[machine] = MachineLogic(None, plant, throttle, None)
                count[machine] = 0
            for _, out in logic.on_batch([events])[0]:
                rows.extend(out)
            logic.notify_at()
            n += 1
            k = count[machine] = count[machine] + 1
            if k % full_every == 0:
                logic.next_full = None  # due now
                for _, out in logic.on_notify()[0]:
                    rows.extend(out)
                logic.notify_at()
    return time.process_time() - t0, n, rows


def run_counts(plant: PlantConfig, rounds: int, full_every: int) -> tuple[float, int, list[Any]]:
    """The fixed cost alone: every machine running, `rounds` polls in which each machine
    gets one in-order count (a batch of one event: on_batch, notify_at), its timer every
    `full_every` batches. (CPU seconds, batches, every row)."""
    import json
    from datetime import timedelta

    from mesflow.events import parse_event
    from streams.dataflow import _SeqMachineLogic as MachineLogic  # the live flow's

    start = datetime(2026, 11, 16, 7, 0, tzinfo=UTC)
    machines = sorted(plant.machines)

    def event(machine: str, ms: int, **fields: Any) -> Any:
        ts = (start + timedelta(milliseconds=ms)).isoformat()
        return parse_event(json.dumps({"machine": machine, "ts": ts, **fields}))

    logics = {m: MachineLogic(None, plant, timedelta(days=1), None) for m in machines}
    rows: list[Any] = []
    seq = 0
    for m, logic in logics.items():
        seq += 1
        logic.on_batch([[(seq, event(m, 0, type="state", state="running"))]])
    polls = [
        [(m, event(m, 40 * (k + 1), type="count", good=1)) for m in machines] for k in range(rounds)
    ]
    n = 0
    t0 = time.process_time()
    for k, poll in enumerate(polls):
        for m, ev in poll:
            seq += 1
            logic = logics[m]
            for _, out in logic.on_batch([[(seq, ev)]])[0]:
                rows.extend(out)
            logic.notify_at()
            n += 1
            if k % full_every == full_every - 1:
                logic.next_full = None  # due now
                for _, out in logic.on_notify()[0]:
                    rows.extend(out)
                logic.notify_at()
    return time.process_time() - t0, n, rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2000, help="input batch (the replay's)")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N")
    parser.add_argument("--save-rows", type=Path, help="pickle every row and rejection")
    parser.add_argument("--compare-rows", type=Path, help="compare the rows with a saved pickle")
    parser.add_argument("--live", action="store_true", help="live: µs per batch of 1-2 events")
    parser.add_argument("--poll", type=int, default=100, help="--live: log entries per poll")
    parser.add_argument("--full-every", type=int, default=50, help="--live: batches per timer")
    args = parser.parse_args()

    dataflow_gc()  # the dataflow's collector settings: the figures then hold for it
    work = Path(tempfile.mkdtemp(prefix="mesflow-tracker-bench-"))
    try:
        plant = big_plant(args.machines, work)
        path = make_file(plant, args.events, work)
        records = [r for chunk in line_records(path) for r in chunk]
        received = datetime(2026, 12, 1, tzinfo=UTC)
        entries = [LogEntry(i + 1, r.payload, r.error, received) for i, r in enumerate(records)]
        batches = machine_batches(plant, entries, args.batch)
        n = sum(len(ev) for groups in batches for _, ev in groups)
        print(f"{args.events:,} log entries, {n:,} machine events, {len(plant.machines)} machines")
        cpu: list[float] = []
        rows: list[Any] = []
        if args.live:
            polls = live_batches(batches, args.poll)
            for rnd in range(args.repeat):
                seconds, k, rows = run_live(plant, polls, args.full_every)
                cpu.append(seconds / k)
                print(
                    f"round {rnd + 1}: {seconds / k * 1e6:.2f} us/batch CPU "
                    f"({k:,} batches, {n / k:.2f} events each); {load()}"
                )
            print(
                f"live machine step: median {statistics.median(cpu) * 1e6:.2f} us/batch CPU "
                f"({len(rows):,} rows); {load()}"
            )
            one: list[float] = []
            for _ in range(args.repeat):
                seconds, k, _rows = run_counts(plant, 250, args.full_every)
                one.append(seconds / k)
            print(
                f"one count per batch: median {statistics.median(one) * 1e6:.2f} us/batch CPU "
                f"({k:,} batches, a full flush every {args.full_every}); {load()}"
            )
        else:
            for rnd in range(args.repeat):
                seconds, rows = run_once(plant, batches)
                cpu.append(seconds)
                print(f"round {rnd + 1}: {seconds / n * 1e6:.2f} us/event CPU; {load()}")
            print(
                f"tracker apply + flush: median {statistics.median(cpu) / n * 1e6:.2f} "
                f"us/event CPU ({len(rows):,} rows); {load()}"
            )
        if args.save_rows:
            args.save_rows.write_bytes(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))
            print(f"rows saved to {args.save_rows}")
        if args.compare_rows:
            saved = pickle.loads(args.compare_rows.read_bytes())
            print(f"rows identical to {args.compare_rows}: {saved == rows}")
            if saved != rows:
                diff = next(
                    (i for i, (a, b) in enumerate(zip(saved, rows, strict=False)) if a != b),
                    min(len(saved), len(rows)),
                )
                print(f"  first difference at row {diff} (of {len(saved)} vs {len(rows)})")
                if diff < min(len(saved), len(rows)):
                    print(f"  saved: {saved[diff]!r}\n  now:   {rows[diff]!r}")
                sys.exit(1)
        if args.cprofile:
            prof = cProfile.Profile()
            if args.live:
                prof.runcall(run_live, plant, live_batches(batches, args.poll), args.full_every)
            else:
                prof.runcall(run_once, plant, batches)
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.cprofile)
            print(out.getvalue())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
