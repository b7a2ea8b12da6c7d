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
import gc
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import big_plant
from collectors.simulator import write_history
from mesflow import events, ingest_log
from mesflow.ingest_log import LogEntry
from mesflow.plant import PlantConfig
from streams.replay import line_records
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cprofile", type=int, default=0, metavar="N")
    args = parser.parse_args()

    # The dataflow's own collector settings (streams/runner.py): the figures then hold for it.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
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
