"""Replay throughput: a generated 1,000,000-event file for the demo plant scaled to 200 machines.

    python bench/replay_bench.py [--events 1000000] [--machines 200]

Generates the file with the plant simulator, measures the binary COPY ceiling of the same
PostgreSQL, then runs `mesflow replay` on the file (storing it in the ingest log and running
the dataflow into PostgreSQL). Prints a line every `--every` seconds (stored, processed,
backlog, rate, load), then events/s and its ratio to the COPY ceiling, what was
stored, dead-lettered and processed, the CPU per event (the replay process, and its storer
child), the peak memory and the load average. The run works in a private temporary folder
(also TMPDIR of its children) that is deleted however the run ends: it leaves no file.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ceilings import copy_ceiling
from bench.common import BenchDatabase, load_average, peak_rss_mib, private_tmp, ratio
from bench.scaled_plant import write_scaled_plant
from collectors.simulator import write_history
from mesflow.plant import PlantConfig
from streams.replay import replay_file


def make_file(plant: PlantConfig, events: int, directory: Path) -> Path:
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


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class Sampler(threading.Thread):
    """A line every `every` seconds: stored (the log's last seq: no gaps in a fresh
    database), processed (the slowest dataflow's committed seq), the backlog between them,
    the rate of that interval and the load average."""

    def __init__(self, url: str, every: float) -> None:
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.stopping = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        before = 0
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stopping.wait(self.every):
                row = conn.execute(
                    "SELECT (SELECT COALESCE(max(seq), 0) FROM ingest_log), "
                    "(SELECT COALESCE(min(last_seq), 0) FROM dataflow_progress)"
                ).fetchone()
                assert row is not None
                stored, processed = int(row[0]), int(row[1])
                print(
                    f"{time.perf_counter() - t0:6.1f} s  stored {stored:10,}  processed "
                    f"{processed:10,}  backlog {stored - processed:9,}  "
                    f"{(processed - before) / self.every:8,.0f} events/s  {load_average()}",
                    flush=True,
                )
                before = processed


def run(args: argparse.Namespace, work: Path) -> None:
    _plant_path, plant = write_scaled_plant(args.machines, work)
    t = time.perf_counter()
    path = make_file(plant, args.events, work)
    print(
        f"generated {args.events:,} events for {len(plant.machines)} machines on "
        f"{len(plant.lines)} lines ({path.stat().st_size / 2**20:.0f} MiB) in "
        f"{time.perf_counter() - t:.1f} s | {load_average()}",
        flush=True,
    )
    db = BenchDatabase(plant, work / "db")
    try:
        ceiling = None
        if not args.no_ceilings:
            ceiling = copy_ceiling(db.url, rows=args.ceiling_rows)
            print(ceiling.describe(), "|", load_average(), flush=True)
        cpu_self, cpu_children = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
        sampler = Sampler(db.url, args.every)
        t = time.perf_counter()
        sampler.start()
        try:
            summary = replay_file(path, plant, db.url, work / "recovery", progress=False)
        finally:
            sampler.stopping.set()
            sampler.join()
        elapsed = time.perf_counter() - t
        cpu_self = _cpu(resource.RUSAGE_SELF) - cpu_self
        cpu_children = _cpu(resource.RUSAGE_CHILDREN) - cpu_children
        with psycopg.connect(db.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM ingest_log), (SELECT count(*) FROM dead_letter), "
                "(SELECT COALESCE(min(last_seq), 0) FROM dataflow_progress)"
            ).fetchone()
            assert row is not None
            stored, dead, processed = (int(v) for v in row)
    finally:
        db.stop()
    rate = summary.read / elapsed
    print(summary.describe())
    print(
        f"read {summary.read:,} | stored {stored:,} | dead-lettered {dead:,} | "
        f"processed up to seq {processed:,}"
    )
    print(
        f"replay: {summary.read:,} events in {elapsed:.1f} s = {rate:,.0f} events/s"
        + (f", ratio to the binary COPY ceiling {ratio(rate, ceiling.rate)}" if ceiling else "")
        + f" | {load_average()}"
    )
    n = max(summary.read, 1)
    print(
        f"CPU per event: replay process {1e6 * cpu_self / n:.1f} µs (the dataflow), "
        f"storer child {1e6 * cpu_children / n:.1f} µs; peak memory of the replay process "
        f"{peak_rss_mib():.0f} MiB"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--no-ceilings", action="store_true", help="skip the COPY ceiling")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between lines")
    parser.add_argument("--ceiling-rows", type=int, default=200_000, help="rows for COPY")
    args = parser.parse_args(argv)
    # The file (~120 MiB for a million events), the database and the recovery store go
    # with the run, whatever ends it (an error, Ctrl-C).
    with private_tmp("mesflow-replay-bench-") as work:
        run(args, work)


if __name__ == "__main__":
    main()
