"""The dataflow as 1 and as N Bytewax processes over the same stored log (docs/scale-out.md).

    python bench/scale_out_bench.py [--events 200000] [--machines 200] [--processes 1,2,1,2]

Generates the scaled demo plant's history (as bench/replay_bench.py), stores it in the
ingest log once, then for each entry of --processes runs the dataflow (replay mode, up to
the log's end) as that many processes on a fresh copy of the database (CREATE DATABASE ..
TEMPLATE), in the order given (interleave them: the machine is shared). Prints per run: wall
time, events/s, CPU µs per event summed over the processes (and the busiest process), and
the load average. Everything lives in a private temporary folder, deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BenchDatabase, load_average, private_tmp
from bench.replay_bench import make_file
from bench.scaled_plant import write_scaled_plant
from mesflow.ingest_log import append
from mesflow.services import free_port
from streams.replay import line_records

# One process of the run: prints its own CPU seconds at the end.
_MEMBER = """
import resource, sys
from pathlib import Path
from mesflow.plant import load_plant_config
from streams.runner import Cluster, run_flow
plant_file, url, rec, upto, n, pid, addresses = sys.argv[1:]
plant = load_plant_config(Path(plant_file))
cluster = Cluster.parse(int(n), int(pid), addresses)
run_flow(plant, url, Path(rec), 10.0, upto_seq=int(upto), batch_size=20_000, cluster=cluster)
u = resource.getrusage(resource.RUSAGE_SELF)
print("CPU", u.ru_utime + u.ru_stime, flush=True)
"""


def _with_db(url: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


def run_once(plant_file: Path, url: str, work: Path, upto: int, n: int, k: int) -> str:
    addresses = ";".join(f"localhost:{free_port()}" for _ in range(n))
    rec = work / f"rec-{k}"
    t = time.perf_counter()
    procs = []
    for i in range(n):
        args = [str(plant_file), url, str(rec), str(upto), str(n), str(i), addresses]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _MEMBER, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    cpus = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"process failed:\n{out}")
        cpus.append(float(out.rsplit("CPU", 1)[1]))
    wall = time.perf_counter() - t
    return (
        f"{n} process{'es' if n > 1 else ''}: {upto:,} events in {wall:.1f} s = "
        f"{upto / wall:,.0f} events/s | CPU {1e6 * sum(cpus) / upto:.1f} µs/event in all, "
        f"busiest process {1e6 * max(cpus) / upto:.1f} µs/event | {load_average()}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--processes", default="1,2,1,2", help="runs, in this order")
    args = parser.parse_args(argv)
    with private_tmp("mesflow-scale-") as work:
        plant_file, plant = write_scaled_plant(args.machines, work)
        path = make_file(plant, args.events, work)
        db = BenchDatabase(plant, work / "db")
        try:
            with psycopg.connect(db.url, autocommit=True) as conn:
                for chunk in line_records(path):
                    append(conn, chunk)
                row = conn.execute("SELECT max(seq) FROM ingest_log").fetchone()
                assert row is not None
                upto = int(row[0])
                name = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
            print(f"stored {upto:,} events, {len(plant.machines)} machines | {load_average()}")
            env_plant = os.environ.get("MESFLOW_PLANT_CONFIG")
            os.environ["MESFLOW_PLANT_CONFIG"] = str(plant_file)
            try:
                for k, n in enumerate(int(x) for x in args.processes.split(",")):
                    copy = f"run{k}"
                    admin = _with_db(db.url, "postgres")  # no session on the template
                    with psycopg.connect(admin, autocommit=True) as conn:
                        conn.execute(f"CREATE DATABASE {copy} TEMPLATE {name}")
                    url = _with_db(db.url, copy)
                    print(run_once(plant_file, url, work, upto, n, k), flush=True)
            finally:
                if env_plant is None:
                    os.environ.pop("MESFLOW_PLANT_CONFIG", None)
                else:
                    os.environ["MESFLOW_PLANT_CONFIG"] = env_plant
        finally:
            db.stop()


if __name__ == "__main__":
    main()
