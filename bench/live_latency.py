"""Live latency: state change published over MQTT -> row in machine_state_interval.

    python bench/live_latency.py [--rate 5000] [--seconds 30] [--machines 200]

Runs the real components as separate processes (mosquitto, `mesflow run collector-mqtt`,
`mesflow run dataflow`, PostgreSQL), publishes a mix of count and state events at a fixed
rate with `ts` = the wall clock at publish time, and reports, for every state change, the
time from its `ts` to the moment its interval row was first written (`first_seen_at`,
PostgreSQL's clock_timestamp() on the same machine). Target: p99 <= 500 ms at 5,000/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import big_plant, fresh_database
from collectors.topics import machine_topic
from mesflow.services import start_broker


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=5000, help="events per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds left out at the start")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mesflow-live-bench-"))
    plant = big_plant(args.machines, work)
    pg, url = fresh_database(plant)
    broker = start_broker(work / "broker", persistence=False, prefer="mosquitto")
    env = {
        **os.environ,
        "MESFLOW_DATABASE_URL": url,
        "MESFLOW_MQTT_URL": broker.url,
        "MESFLOW_PLANT_CONFIG": str(work / "plant-200.yaml"),
        "MESFLOW_DATA_DIR": str(work / "var"),
        "PYTHONUNBUFFERED": "1",
    }
    logs = {name: open(work / f"{name}.log", "wb") for name in ("collector", "dataflow")}  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mesflow.cli", "run", "collector-mqtt"],
            env=env,
            stdout=logs["collector"],
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "mesflow.cli", "run", "dataflow"],
            env=env,
            stdout=logs["dataflow"],
            stderr=subprocess.STDOUT,
        ),
    ]
    try:
        time.sleep(3.0)  # both subscribed / following
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
        pub.max_inflight_messages_set(1000)
        pub.max_queued_messages_set(0)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        machines = list(plant.machines)
        topics = {}
        for m in machines:
            line = plant.line_of_machine[m]
            topics[m] = {
                kind: machine_topic(plant.plant.site, line.area, line.id, m, kind)
                for kind in ("state", "count")
            }
        states = ["running", "idle", "running", "down"]  # every change is a new interval
        per_machine = dict.fromkeys(machines, 0)
        sent = state_events = 0
        tick = 0.01
        per_tick = max(1, int(args.rate * tick))
        t0 = time.monotonic()
        warm_until = datetime.now(UTC).timestamp() + args.warmup
        while time.monotonic() - t0 < args.seconds:
            for _ in range(per_tick):
                m = machines[sent % len(machines)]
                k = per_machine[m]
                per_machine[m] = k + 1
                ts = datetime.now(UTC).astimezone(plant.tz).isoformat(timespec="microseconds")
                if k % 20 == 0:  # 5 % of the events are state changes
                    state_events += 1
                    body = {"ts": ts, "state": states[(k // 20) % 4], "id": f"b{sent}"}
                    pub.publish(topics[m]["state"], json.dumps(body), qos=1)
                else:
                    pub.publish(
                        topics[m]["count"],
                        json.dumps({"ts": ts, "good": 1, "id": f"b{sent}"}),
                        qos=1,
                    )
                sent += 1
            next_tick = t0 + (sent / args.rate)
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        elapsed = time.monotonic() - t0
        print(
            f"published {sent:,} events ({state_events:,} state changes) in {elapsed:.1f} s "
            f"= {sent / elapsed:,.0f}/s"
        )
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                logged = conn.execute("SELECT count(*) FROM ingest_log").fetchone()[0]  # type: ignore[index]
                done = conn.execute(
                    "SELECT COALESCE(max(last_seq), 0) >= (SELECT COALESCE(max(seq), 0) FROM ingest_log) "
                    "FROM dataflow_progress"
                ).fetchone()[0]  # type: ignore[index]
                if logged >= sent and done:
                    break
                time.sleep(0.2)
            rows = conn.execute(
                "SELECT EXTRACT(EPOCH FROM (first_seen_at - start_ts)) FROM machine_state_interval "
                "WHERE start_ts >= to_timestamp(%s)",
                (warm_until,),
            ).fetchall()
        pub.loop_stop()
        lat = [float(r[0]) * 1000 for r in rows]
        print(
            f"ingest_log rows: {logged:,}; state changes measured (after {args.warmup:.0f} s warm-up): {len(lat):,}"
        )
        if lat:
            print(
                f"state change -> table latency: p50 {percentile(lat, 50):.1f} ms, "
                f"p90 {percentile(lat, 90):.1f} ms, p99 {percentile(lat, 99):.1f} ms, "
                f"max {max(lat):.1f} ms   (target p99 <= 500 ms)"
            )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)
        broker.stop()
        pg.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
