"""The results writer's CPU per write: the staged path (binary COPY) against the array path.

    python -m bench.sink_bench                      # live and replay shapes, interleaved
    python -m bench.sink_bench --shape live --rounds 8 --writes 200

Builds batches shaped like a live plant's (200 machines at 5,000 events/s: ~100 status
rows, ~20 intervals, a few hour, KPI and work-order rows, reason sets, progress) and like a
replay's (thousands of intervals, a row per machine in every other table), writes them to an
embedded PostgreSQL with `_ResultsPartition._write` on this thread, and prints per write:
the writer's CPU (this thread), PostgreSQL's CPU (its backend) and the wall time, for the
array path (`--old`, as before issue 14 session 6) and the staged one, in turn, round after
round (A/B interleaved: the machine is shared). Medians over rounds. Both paths write the
same rows to the same tables, so each round also continues the other's data.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

from bench.common import cpu_seconds, load_average, private_tmp
from mesflow.db import migrate
from streams import pg_sink
from streams.order_progress import OrderProgressRow, WorkOrderProgressRow
from streams.records import HourRow, IntervalRow, KpiRow, Progress, ReasonSetRow, StatusRow

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
MACHINES = 200


def _kpi(m: str, bucket: str, start: datetime, k: int) -> KpiRow:
    return KpiRow(
        m, bucket, start, start + timedelta(hours=1),
        date(2026, 11, 30) if bucket == "shift" else None, "day" if bucket == "shift" else None,
        3600.0, 3000.0 + k, 12.5, 3, 100.0, 400.0, 0.0, 87.5, 0.0, 120 + k, 4, 2900.0, 1,
        400.0, 120 + k, 4,
    )  # fmt: skip


def live_batch(k: int) -> list[Any]:
    """Write number k of a live plant: 20 ms of 5,000 events/s over 200 machines."""
    now = T0 + timedelta(milliseconds=20 * k)
    hour = now.replace(minute=0, second=0, microsecond=0)
    rows: list[Any] = []
    for i in range(100):
        m = f"M-{(k * 100 + i) % MACHINES:03}"
        rows.append(StatusRow(m, "running", T0, None, "WO-1", now, 10 * k + i, k % 7))
    for i in range(20):
        m = f"M-{(k * 20 + i) % MACHINES:03}"
        start = now - timedelta(seconds=i)
        rows.append(IntervalRow(m, start, now, "running", None, "WO-1", float(i), i % 2 == 0))
    for i in range(4):
        m = f"M-{(k * 4 + i) % MACHINES:03}"
        rows.append(HourRow(m, hour, 1000.0 + k, 10.0, 5.0, 0.0, 0.0, 0.0, 100 + k, 2))
        rows.append(_kpi(m, "hour", hour, k))
        rows.append(_kpi(m, "shift", T0, k))
        rows.append(ReasonSetRow(m, "hour", hour, (("jam", 12.5 + k, 2), ("material", 3.0, 1))))
    for i in range(3):
        wo = f"WO-{(k * 3 + i) % 60:03}"
        rows.append(
            WorkOrderProgressRow(wo, f"SO-{i}", "P-100", 1000, f"M-{i:03}", 10 * k, 1,
                                 0.01 * (k % 100), 120.0, now + timedelta(hours=2), T0, None, now)
        )  # fmt: skip
    rows.append(
        OrderProgressRow(f"SO-{k % 20}", "ACME", 2, "P-100", 5000, now + timedelta(days=1),
                         "open", 3, 10 * k, 2, 0.5, now + timedelta(hours=5), False, now)
    )  # fmt: skip
    return [rows, Progress(k + 1, 100, 0)]


def replay_batch(k: int) -> list[Any]:
    """Write number k of a replay: 20 intervals per machine, a row per machine elsewhere."""
    base = T0 + timedelta(hours=k)
    rows: list[Any] = []
    for i in range(MACHINES):
        m = f"M-{i:03}"
        for j in range(20):
            start = base + timedelta(minutes=3 * j)
            rows.append(IntervalRow(m, start, start + timedelta(minutes=3), "running", None,
                                    "WO-1", 180.0, False))  # fmt: skip
        rows.append(StatusRow(m, "running", base, None, "WO-1", base, 10 * k, 1))
        rows.append(HourRow(m, base, 3000.0, 300.0, 300.0, 0.0, 0.0, 0.0, 500, 5))
        rows.append(_kpi(m, "hour", base, k))
        rows.append(_kpi(m, "shift", T0, k))
        rows.append(ReasonSetRow(m, "hour", base, (("jam", 300.0, 2),)))
    for i in range(50):
        rows.append(
            WorkOrderProgressRow(f"WO-{i:03}", f"SO-{i % 10}", "P-100", 1000, f"M-{i:03}",
                                 10 * k, 1, 0.5, 120.0, base, T0, None, base)
        )  # fmt: skip
    return [rows, Progress(k + 1, 100, 0)]


SHAPES: dict[str, Callable[[int], list[Any]]] = {"live": live_batch, "replay": replay_batch}


@contextmanager
def array_path(old: bool) -> Iterator[None]:
    """The array path in place of the staged one, for this bench only."""
    saved = pg_sink._upsert
    if old:
        pg_sink._upsert = pg_sink._upsert_arrays
    try:
        yield
    finally:
        pg_sink._upsert = saved


def measure(
    part: pg_sink._ResultsPartition, make: Callable[[int], list[Any]], start: int, writes: int
) -> tuple[float, float, float]:
    """(writer CPU, PostgreSQL backend CPU, wall) per write, in ms."""
    batches = []
    for k in range(start, start + writes):
        batch = pg_sink._Batch()
        for item in make(k):
            batch.add_all(item) if type(item) is list else batch.add(item)
        batches.append(batch)
    conn = part._connection()
    backend = conn.info.backend_pid
    srv0, cpu0, wall0 = cpu_seconds(backend), time.thread_time(), time.perf_counter()
    for batch in batches:
        part._write(batch)
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    srv = cpu_seconds(backend) - srv0
    return 1000 * cpu / writes, 1000 * srv / writes, 1000 * wall / writes


def rows_per_write(make: Callable[[int], list[Any]]) -> int:
    return sum(len(x) if type(x) is list else 1 for x in make(0))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=[*SHAPES, "both"], default="both")
    ap.add_argument("--rounds", type=int, default=6, help="A/B pairs per shape")
    ap.add_argument("--writes", type=int, default=0, help="writes per round (0: by shape)")
    args = ap.parse_args(argv)
    shapes = list(SHAPES) if args.shape == "both" else [args.shape]
    with private_tmp("mesflow-sink-bench-") as work:
        from mesflow.services import EmbeddedPostgres

        pg = EmbeddedPostgres(work / "pg", delete_on_stop=True)
        try:
            migrate(pg.url, log=lambda _m: None)
            part = pg_sink._ResultsPartition(pg.url, "bench")
            try:
                for shape in shapes:
                    run_shape(part, shape, args.rounds, args.writes)
            finally:
                part.close()
        finally:
            pg.stop()


def run_shape(part: pg_sink._ResultsPartition, shape: str, rounds: int, writes: int) -> None:
    make = SHAPES[shape]
    n = writes or (200 if shape == "live" else 4)
    print(f"\n{shape}: {rows_per_write(make)} rows per write, {n} writes per round, "
          f"{rounds} rounds; {load_average()}")  # fmt: skip
    k = 0
    for old in (True, False):  # warm up both (prepared statements, caches)
        with array_path(old):
            measure(part, make, k, max(n // 4, 2))
        k += max(n // 4, 2)
    results: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    for r in range(rounds):
        for old in (True, False) if r % 2 == 0 else (False, True):
            with array_path(old):
                results[old].append(measure(part, make, k, n))
            k += n
    rows = rows_per_write(make)
    print(f"{'path':<8} {'writer ms/write':>16} {'µs/row':>8} {'PG ms/write':>12} "
          f"{'wall ms/write':>14}   (medians of {rounds}; writer per round)")  # fmt: skip
    for old in (True, False):
        cpu = statistics.median(x[0] for x in results[old])
        srv = statistics.median(x[1] for x in results[old])
        wall = statistics.median(x[2] for x in results[old])
        each = " ".join(f"{x[0]:.2f}" for x in results[old])
        print(f"{'arrays' if old else 'staged':<8} {cpu:>16.3f} {1000 * cpu / rows:>8.2f} "
              f"{srv:>12.3f} {wall:>14.3f}   [{each}]")  # fmt: skip
    a = statistics.median(x[0] for x in results[True])
    b = statistics.median(x[0] for x in results[False])
    print(f"staged/arrays writer CPU: {b / a:.2f} ({100 * (1 - b / a):+.0f} % less)")


if __name__ == "__main__":
    main()
