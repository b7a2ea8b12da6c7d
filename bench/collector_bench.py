"""The MQTT collector alone: how many events/s it stores, and its CPU per stored row.

    python -m bench.collector_bench [--rate 0 --count 300000 | --rate R --seconds 20]
                                    [--collectors 1] [--machines 200]

Runs mosquitto, PostgreSQL and `mesflow run collector-mqtt` (no dataflow) and drives them
with bench/loadgen.py: the live benchmark's messages (95 % counts, 5 % state changes over
the scaled demo plant), at `--rate` (0: as fast as the broker takes them; the broker then
queues what the collector has not taken yet, so the collector runs flat out; `--count`
messages then). It prints a line a second (sent, stored, stored/s, collector CPU µs per
stored row), then the stored rate over the whole run, the rows per commit (a commit's rows
share `received_at`, the transaction start), the CPU per stored row of the collector(s),
PostgreSQL and mosquitto, and the load average.
Everything it starts is stopped and every file it wrote is deleted.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BenchDatabase,
    cpu_seconds,
    load_average,
    private_tmp,
    tree_cpu_seconds,
)
from bench.live_latency import machine_cycle, wait_until_subscribed
from bench.loadgen import LoadGenerator, split
from bench.scaled_plant import write_scaled_plant
from mesflow.services import start_broker


def _stored(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM ingest_log").fetchone()
    return int(row[0]) if row else 0


def _profiled(profile: str | None, i: int) -> list[str]:
    """py-spy in front of the collector's command, when asked (a raw flame-graph file)."""
    if not profile:
        return []
    spy = str(Path(sys.executable).with_name("py-spy"))
    return [spy, "record", "-r", "200", "-f", "raw", "-o", f"{profile}.{i}", "--"]


def run(args: argparse.Namespace, work: Path) -> None:
    plant_path, plant = write_scaled_plant(args.machines, work)
    db = BenchDatabase(plant, work / "db")
    broker = start_broker(work / "broker", persistence=False, prefer="mosquitto")
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []
    try:
        env = {
            **os.environ,
            "MESFLOW_DATABASE_URL": db.url,
            "MESFLOW_MQTT_URL": broker.url,
            "MESFLOW_PLANT_CONFIG": str(plant_path),
            "MESFLOW_DATA_DIR": str(work / "var"),
            "PYTHONUNBUFFERED": "1",
        } | {f"MESFLOW_{k}": v for k, v in (kv.split("=", 1) for kv in args.env)}
        for i in range(args.collectors):
            own = (
                {"MESFLOW_MQTT_CLIENT_ID": f"bench-collector-{i}", "MESFLOW_MQTT_SHARE_GROUP": "b"}
                if args.collectors > 1
                else {}
            )
            logs.append(open(work / f"collector-{i}.log", "wb"))  # noqa: SIM115 - closed below
            procs.append(
                subprocess.Popen(
                    [
                        *_profiled(args.profile, i),
                        sys.executable,
                        "-m",
                        "mesflow.cli",
                        "run",
                        "collector-mqtt",
                    ],
                    env=env | own,
                    stdout=logs[-1],
                    stderr=subprocess.STDOUT,
                )
            )
        conn = psycopg.connect(db.url, autocommit=True)
        wait_until_subscribed(conn, args.collectors)
        shares = split(sorted(plant.machines), max(1, math.ceil((args.rate or 40000) / 20000)))
        tag = f"C{uuid.uuid4().hex[:6]}"
        cycles = [
            machine_cycle(plant, share, f"{tag}{w}-", False) for w, share in enumerate(shares)
        ]
        # Flat out, a count: the generator would otherwise queue millions at the broker.
        gen = LoadGenerator(
            broker.host,
            broker.port,
            cycles,
            rate=args.rate,
            seconds=args.seconds if args.rate else 0,
            count=0 if args.rate else args.count,
        )
        servers = {"postgres": db.server_pid(), "mosquitto": broker.process.pid}
        server_cpu0 = {k: tree_cpu_seconds(pid) if pid else 0.0 for k, pid in servers.items()}
        cpu0 = sum(cpu_seconds(p.pid) for p in procs)
        started = gen.start()
        print(f"{'t s':>5} {'sent':>9} {'stored':>9} {'stored/s':>9} {'µs/row':>7}  load")
        last_t, last_stored, last_cpu = started, 0, cpu0
        first_at: float | None = None
        sent = None
        while True:
            time.sleep(1.0)
            now = time.time()
            stored = _stored(conn)
            cpu = sum(cpu_seconds(p.pid) for p in procs)
            if first_at is None and stored:
                first_at = now
            if sent is None and (
                now - started > args.seconds + 1 if args.rate else gen.progress()[1] >= args.count
            ):
                sent = gen.join(args.seconds + 120).acked
            acked = sent if sent is not None else gen.progress()[1]
            print(
                f"{now - started:5.0f} {acked:9,} {stored:9,} "
                f"{(stored - last_stored) / (now - last_t):9,.0f} "
                f"{1e6 * (cpu - last_cpu) / max(stored - last_stored, 1):7.1f}  {load_average()}",
                flush=True,
            )
            last_t, last_stored, last_cpu = now, stored, cpu
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a collector exited with {p.returncode}")
            if sent is not None and (stored >= sent or now - started > args.seconds + 120):
                break
        row = conn.execute(
            """SELECT count(*), count(DISTINCT received_at),
                      EXTRACT(EPOCH FROM max(received_at) - min(received_at))
               FROM ingest_log"""
        ).fetchone()
        assert row is not None
        rows, commits, span = int(row[0]), int(row[1]), float(row[2] or 0)
        sizes = conn.execute(
            """SELECT percentile_disc(ARRAY[0.1, 0.5, 0.9]) WITHIN GROUP (ORDER BY n)
               FROM (SELECT count(*) AS n FROM ingest_log GROUP BY received_at) s"""
        ).fetchone()
        server_cpu = {
            k: (tree_cpu_seconds(pid) if pid else 0.0) - server_cpu0[k]
            for k, pid in servers.items()
        }
        print(
            f"stored {rows:,} of {sent:,} sent in {span:.1f} s = {rows / max(span, 1e-9):,.0f} "
            f"rows/s; {commits:,} commits, {rows / max(commits, 1):.0f} rows per commit "
            f"(p10/p50/p90 {'/'.join(map(str, sizes[0])) if sizes else '-'}); "
            f"collector CPU {1e6 * (last_cpu - cpu0) / max(rows, 1):.1f} µs per stored row "
            f"({args.collectors} process(es)); "
            + ", ".join(f"{k} {1e6 * v / max(rows, 1):.1f} µs" for k, v in server_cpu.items())
            + f" | {load_average()}"
        )
        row = conn.execute(
            """SELECT percentile_disc(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY lat), max(lat)
               FROM (SELECT EXTRACT(EPOCH FROM received_at
                       - (convert_from(payload, 'UTF8')::jsonb->>'ts')::timestamptz) * 1000 AS lat
                     FROM ingest_log) s"""
        ).fetchone()
        if row and row[0]:
            print(
                f"latency publish -> ingest log (transaction start): p50 {row[0][0]:.1f} ms, "
                f"p99 {row[0][1]:.1f} ms, max {row[1]:.1f} ms"
                + (" (flat out: the broker's queue is in it)" if not args.rate else "")
            )
        conn.close()
    finally:
        for p in procs:
            # py-spy writes its profile on SIGINT (and passes it on to the collector)
            p.send_signal(signal.SIGINT) if args.profile else p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
        if args.show_logs:
            for i in range(len(procs)):
                print((work / f"collector-{i}.log").read_text()[-2000:])
        broker.stop()
        db.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=0, help="events/s, 0: flat out")
    parser.add_argument("--seconds", type=float, default=20.0, help="with --rate")
    parser.add_argument("--count", type=int, default=300_000, help="flat out: messages")
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--collectors", type=int, default=1)
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=value: MESFLOW_NAME for the collectors"
    )
    parser.add_argument("--show-logs", action="store_true")
    parser.add_argument("--profile", help="py-spy each collector into FILE.<i> (raw)")
    args = parser.parse_args(argv)
    with private_tmp("mesflow-collector-bench-") as work:
        run(args, work)


if __name__ == "__main__":
    main()
