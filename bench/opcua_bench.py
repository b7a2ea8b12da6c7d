"""OPC UA collector throughput and CPU, against a bare asyncua client in the same run.

    .venv/bin/python -m bench.opcua_bench --machines 20 --hz 10 --seconds 30

An asyncua server (tests/opcua_server.py, its own process) plays MACHINES injection-molding
machines and changes 6 values of each (5 process values and the total counter) HZ times a
second, a machine's values with one source time. Two clients subscribe to all of them with
the same parameters (sampling 100 ms, publishing 500 ms, queue 10), each in its own
process: the collector (into an embedded PostgreSQL ingest log) and a bare asyncua client
whose handler only counts (the ceiling). Prints values/s and CPU seconds per second of
each, and the collector's ingest-log rows/s (process values of one machine and time are
merged into one event).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml

from mesflow.settings import REPO_ROOT

VALUES = ["CycleTime", "Cushion", "InjectionPressure", "MeltTemp", "MoldTemp"]
SAMPLING_MS = 100.0
PUBLISHING_MS = 500.0
QUEUE_SIZE = 10
SUB = {
    "sampling_interval_ms": SAMPLING_MS,
    "publishing_interval_ms": PUBLISHING_MS,
    "queue_size": QUEUE_SIZE,
}


def machines(n: int) -> list[str]:
    return [f"IM-{i:02d}" for i in range(1, n + 1)]


def layout(n: int, servers: int, port: int) -> dict[str, list[str]]:
    """Endpoint URL -> its machines: `n` machines spread over `servers` server processes."""
    per = -(-n // servers)
    names = machines(n)
    return {
        f"opc.tcp://127.0.0.1:{port + k}/mesflow/": names[k * per : (k + 1) * per]
        for k in range(servers)
        if names[k * per : (k + 1) * per]
    }


def plant_file(where: dict[str, list[str]], directory: Path) -> Path:
    base = yaml.safe_load((REPO_ROOT / "config" / "plant.example.yaml").read_text())
    line = base["lines"][0]
    line["machines"] = [
        {
            "id": m,
            "name": {"en": m, "zh": m},
            "opcua": {
                "endpoint": url,
                "total": {"node": f"ns=2;s={m}.TotalParts"},
                "process_values": {v.lower(): {"node": f"ns=2;s={m}.{v}"} for v in VALUES},
                **SUB,
            },
        }
        for url, names in where.items()
        for m in names
    ]
    base["lines"] = [line]
    base["products"] = []
    path = directory / "plant-opcua.yaml"
    path.write_text(yaml.safe_dump(base, allow_unicode=True))
    return path


async def _subscribe_raw(client: Any, m: str, handler: Any) -> None:
    from asyncua import ua

    params = ua.CreateSubscriptionParameters(
        RequestedPublishingInterval=PUBLISHING_MS,
        RequestedLifetimeCount=60,
        RequestedMaxKeepAliveCount=10,
        MaxNotificationsPerPublish=10000,
        PublishingEnabled=True,
        Priority=0,
    )
    sub = await client.create_subscription(params, handler)
    nodes = [client.get_node(f"ns=2;s={m}.{v}") for v in [*VALUES, "TotalParts"]]
    await sub.subscribe_data_change(
        nodes, queuesize=QUEUE_SIZE, sampling_interval=ua.Double(SAMPLING_MS)
    )


async def _raw(where: dict[str, list[str]], seconds: float) -> dict[str, float]:
    from asyncua import Client

    count = 0

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            nonlocal count
            count += 1

    clients = []
    for url, names in where.items():
        client = Client(url)
        await client.connect()
        clients.append(client)
        for m in names:
            await _subscribe_raw(client, m, Handler())
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "go"
    start_n, cpu0, t0 = count, time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    took = time.monotonic() - t0
    result = {
        "values_per_s": (count - start_n) / took,
        "cpu_per_s": (time.process_time() - cpu0) / took,
    }
    for client in clients:
        await client.disconnect()
    return result


def raw_main(where: str, seconds: float) -> None:
    print(json.dumps(asyncio.run(_raw(json.loads(where), seconds))), flush=True)


def collector_main(plant_path: str, db_url: str, seconds: float) -> None:
    import logging

    from collectors.opcua import OpcUaCollector
    from mesflow.plant import load_plant_config

    logging.basicConfig(level=logging.WARNING)
    c = OpcUaCollector(load_plant_config(plant_path), db_url)
    c.start()
    deadline = time.monotonic() + 120
    while not all(ep.status.connected for ep in c.endpoints):
        if time.monotonic() > deadline:
            sys.exit("collector: not every endpoint connected within 120 s")
        time.sleep(0.1)
    print("ready", flush=True)
    sys.stdin.readline()  # "go"
    got0 = sum(ep.status.received for ep in c.endpoints)
    stored0, cpu0, t0 = c.stored, time.process_time(), time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - t0
    got = sum(ep.status.received for ep in c.endpoints) - got0
    result = {
        "values_per_s": got / took,
        "rows_per_s": (c.stored - stored0) / took,
        "cpu_per_s": (time.process_time() - cpu0) / took,
        "dropped": c.dropped,
        "dead_lettered": c.with_errors,
    }
    c.stop()
    print(json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--machines", type=int, default=20)
    ap.add_argument("--hz", type=float, default=10)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--port", type=int, default=48411)
    ap.add_argument("--role", choices=["main", "raw", "collector"], default="main")
    ap.add_argument("--servers", type=int, default=1, help="server processes to spread over")
    ap.add_argument("--where", default="")
    ap.add_argument("--plant", default="")
    ap.add_argument("--db", default="")
    args = ap.parse_args()
    if args.role == "raw":
        raw_main(args.where, args.seconds)
        return
    if args.role == "collector":
        collector_main(args.plant, args.db, args.seconds)
        return

    from bench.common import fresh_database
    from mesflow.plant import load_plant_config

    where = layout(args.machines, args.servers, args.port)
    work = Path(tempfile.mkdtemp(prefix="mesflow-opcua-bench-"))
    plant_path = plant_file(where, work)
    pg, db_url = fresh_database(load_plant_config(plant_path))
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    warm = 12.0  # server start, both clients connected and settled
    servers = []
    for k, names in enumerate(where.values()):
        run = ["--port", str(args.port + k), "--first", names[0].removeprefix("IM-")]
        run += ["--machines", str(len(names)), "--hz", str(args.hz), "--delay", str(warm)]
        run += ["--seconds", str(args.seconds + 2 * warm)]
        servers.append(
            subprocess.Popen(
                [py, "-m", "tests.opcua_server", *run],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    raw: subprocess.Popen[str] | None = None
    col: subprocess.Popen[str] | None = None
    try:
        for server in servers:
            assert server.stdout is not None
            print(server.stdout.readline().strip(), flush=True)  # "serving ..."
        common = ["--machines", str(args.machines), "--seconds", str(args.seconds)]
        raw = subprocess.Popen(
            [py, "-m", "bench.opcua_bench", "--role", "raw", "--where", json.dumps(where), *common],
            cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        col = subprocess.Popen(
            [py, "-m", "bench.opcua_bench", "--role", "collector", "--plant", str(plant_path),
             "--db", db_url, *common],
            cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert raw.stdout is not None and col.stdout is not None
        raw.stdout.readline()
        col.stdout.readline()
        for server in servers:
            assert server.stdout is not None
            server.stdout.readline()  # "churn": values start changing
        time.sleep(2)
        for child in (raw, col):  # both measure the same window
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        raw_out, _ = raw.communicate(timeout=args.seconds + 120)
        col_out, _ = col.communicate(timeout=args.seconds + 120)
        r = json.loads(raw_out.strip().splitlines()[-1])
        c = json.loads(col_out.strip().splitlines()[-1])
        offered = args.machines * 6 * args.hz
        print(
            f"{args.servers} server process(es), {args.machines} machines x 6 values x {args.hz:g} Hz: {offered:.0f} changes/s offered"
        )
        print(f"raw asyncua client: {r['values_per_s']:.0f} values/s, CPU {r['cpu_per_s']:.2f} s/s")
        print(
            f"collector: {c['values_per_s']:.0f} values/s, {c['rows_per_s']:.0f} ingest-log rows/s, "
            f"CPU {c['cpu_per_s']:.2f} s/s, dropped {c['dropped']}, dead-lettered {c['dead_lettered']}"
        )
        with psycopg.connect(db_url) as conn:
            row = conn.execute("SELECT count(*) FROM ingest_log").fetchone()
        print(f"ingest log rows in total: {row[0] if row else 0}")
    finally:
        for leftover in (raw, col):
            if leftover is not None and leftover.poll() is None:
                leftover.kill()
        for server in servers:
            server.terminate()
            server.wait(30)
        pg.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
