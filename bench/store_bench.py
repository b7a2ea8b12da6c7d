"""Storing a replay file in the ingest log, alone: rows/s and CPU per row, client and server.

    python bench/store_bench.py [--events 300000] [--rounds 2] [--against REV]

Generates the replay benchmark's file (the demo plant scaled to 200 machines), then stores
it the way `mesflow replay`'s storing process does (`streams.replay._store_file`: decode
and hash each line, append in chunks of 20,000) into a fresh ingest log, `--rounds` times
(the log emptied between rounds). Prints per round: rows/s, the CPU per row of this
process (decoding, hashing, COPY) and of PostgreSQL (every server process), and the load.

`--against REV`: each round also stores the file with `mesflow/ingest_log.py` and
`streams/replay.py` as they were at git revision REV (their `append` and `_store_file`),
today's and REV's in turn, so their ratio holds on a busy machine. Everything it writes
goes to a private temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BenchDatabase,
    load_average,
    module_at,
    private_tmp,
    tree_cpu_seconds,
)
from bench.replay_bench import make_file
from bench.scaled_plant import write_scaled_plant
from streams import replay


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def store_once(store: Callable[..., None], path: Path, db: BenchDatabase) -> tuple[float, ...]:
    """(rows, seconds, client CPU s, server CPU s) of storing `path` into an empty log."""
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute("TRUNCATE ingest_log RESTART IDENTITY")
        conn.execute("CHECKPOINT")  # each round starts from the same clean buffers
    postmaster = db.server_pid()
    assert postmaster is not None
    results: Any = mp.get_context("spawn").Queue()
    lines: Any = mp.get_context("spawn").Value("q", 0)
    s0, c0, t0 = tree_cpu_seconds(postmaster), _cpu(), time.perf_counter()
    store(path, db.url, results, lines)
    elapsed, client = time.perf_counter() - t0, _cpu() - c0
    time.sleep(0.3)  # the backend has exited: its CPU is the postmaster's children's
    server = tree_cpu_seconds(postmaster) - s0
    stored = results.get(timeout=5)
    if isinstance(stored, str):
        raise SystemExit(stored)
    return float(stored.new), elapsed, client, server


def describe(name: str, rows: float, elapsed: float, client: float, server: float) -> str:
    return (
        f"{name:>8}: {rows:,.0f} rows in {elapsed:.1f} s = {rows / elapsed:,.0f} rows/s; "
        f"CPU per row: storer {1e6 * client / rows:.1f} µs, PostgreSQL "
        f"{1e6 * server / rows:.1f} µs | {load_average()}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--against", metavar="REV", help="also store with REV's code, in turn")
    args = parser.parse_args(argv)
    with private_tmp("mesflow-store-bench-") as work:
        _plant_path, plant = write_scaled_plant(args.machines, work)
        path = make_file(plant, args.events, work)
        stores: dict[str, Callable[..., None]] = {"today": replay._store_file}
        if args.against:
            # REV's storer with REV's append: its module imports `append` by name.
            before_log = module_at(args.against, "mesflow/ingest_log.py", work)
            before = module_at(args.against, "streams/replay.py", work)
            before.append = before_log.append  # type: ignore[attr-defined]
            stores[args.against[:8]] = before._store_file
        db = BenchDatabase(plant, work / "db")
        try:
            print(
                f"{args.events:,} lines ({path.stat().st_size / 2**20:.0f} MiB); {load_average()}"
            )
            totals: dict[str, list[float]] = {name: [0.0] * 4 for name in stores}
            for k in range(args.rounds):
                order = list(stores) if k % 2 == 0 else list(stores)[::-1]
                for name in order:
                    figures = store_once(stores[name], path, db)
                    print(f"round {k + 1} " + describe(name, *figures), flush=True)
                    totals[name] = [a + b for a, b in zip(totals[name], figures, strict=True)]
            for name, figures in totals.items():
                print("total   " + describe(name, *figures))
            if args.against:
                today, then = (totals[n] for n in stores)
                print(
                    f"ratio today / {args.against[:8]}: rows/s "
                    f"{(today[0] / today[1]) / (then[0] / then[1]):.2f}x, PostgreSQL CPU per "
                    f"row {(today[3] / today[0]) / (then[3] / then[0]):.2f}x"
                )
        finally:
            db.stop()


if __name__ == "__main__":
    main()
