"""Replay throughput: a generated 1,000,000-event file for 200 machines.

    python bench/replay_bench.py [--events 1000000] [--machines 200]

Prints events/s for the whole `mesflow replay` (storing the file in the ingest log and
running the dataflow into PostgreSQL) and the peak memory of the process. The target on
a 2-core machine is >= 50,000 events/s.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import big_plant, fresh_database, peak_rss_mib
from collectors.simulator import write_history
from streams.replay import replay_file


def make_file(plant, events: int, directory: Path) -> Path:  # type: ignore[no-untyped-def]
    """Simulate the plant long enough for `events` events, keep exactly that many lines."""
    start = datetime(2026, 11, 16, 7, 0, tzinfo=plant.tz)
    full = directory / "sim.jsonl"
    duration = 3600.0 * 24
    while True:
        n = write_history(plant, full, seed=7, start=start, duration_s=duration)
        if n >= events:
            break
        duration *= events / max(n, 1) * 1.1
    out = directory / f"replay-{events}.jsonl"
    with full.open() as src, out.open("w") as dst:
        dst.writelines(itertools.islice(src, events))
    full.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--machines", type=int, default=200)
    args = parser.parse_args()

    # The file (~120 MiB for a million events) and the recovery store go with the run,
    # whatever ends it (an error, Ctrl-C).
    work = Path(tempfile.mkdtemp(prefix="mesflow-replay-bench-"))
    try:
        plant = big_plant(args.machines, work)
        t = time.perf_counter()
        path = make_file(plant, args.events, work)
        print(
            f"generated {args.events:,} events for {len(plant.machines)} machines "
            f"({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s"
        )

        pg, url = fresh_database(plant)
        try:
            t = time.perf_counter()
            summary = replay_file(path, plant, url, work / "recovery", progress=False)
            elapsed = time.perf_counter() - t
        finally:
            pg.stop()  # type: ignore[attr-defined]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(summary.describe())
    print(
        f"replay: {summary.read:,} events in {elapsed:.1f} s = {summary.read / elapsed:,.0f} events/s"
        f"  (target >= 50,000)"
    )
    print(f"peak memory of the replay process: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
