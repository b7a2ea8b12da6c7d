"""Sparkplug B throughput: the codec alone, the host (decode + map), a bare paho subscriber
(the ceiling) and the whole collector into the ingest log, in one run.

    python bench/sparkplug_bench.py [--messages 20000] [--devices 20]

Each DDATA carries 5 aliased metrics (state, total, scrap, two process values) with
timestamps, as a press gateway sends them: 4 events per message in the ingest log.
Published at QoS 1 so that the broker drops nothing for a slow subscriber.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt
import psycopg
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import fresh_database
from collectors.sparkplug import codec
from collectors.sparkplug.codec import Metric
from collectors.sparkplug.collector import SparkplugCollector
from collectors.sparkplug.host import SparkplugHost
from mesflow.plant import PlantConfig
from mesflow.services import start_broker
from mesflow.settings import REPO_ROOT

GROUP, EDGE = "bench", "gw"
METRICS = [
    ("Mode", codec.INT32),
    ("Total", codec.UINT64),
    ("Scrap", codec.UINT32),
    ("CycleTime", codec.DOUBLE),
    ("Cushion", codec.FLOAT),
]


def bench_plant(devices: int) -> PlantConfig:
    base = yaml.safe_load((REPO_ROOT / "config" / "plant.example.yaml").read_text())
    base["plant"]["max_event_age_days"] = 36500
    machines = []
    for i in range(devices):
        machines.append(
            {
                "id": f"P-{i:03d}",
                "name": {"en": f"Press {i}", "zh": f"{i}号"},
                "state_mapping": "euromap77",
                "sparkplug": {
                    "group": GROUP,
                    "edge_node": EDGE,
                    "device": f"P-{i:03d}",
                    "state": "Mode",
                    "total": "Total",
                    "scrap": "Scrap",
                    "process_values": {"cycle_time_s": "CycleTime", "cushion_mm": "Cushion"},
                },
            }
        )
    base["lines"] = [{"id": "L1", "name": {"en": "L1", "zh": "L1"}, "machines": machines}]
    base["products"] = []
    return PlantConfig.model_validate(base)


def births(devices: int, ts: int) -> list[tuple[str, bytes]]:
    out = [
        (
            f"spBv1.0/{GROUP}/NBIRTH/{EDGE}",
            codec.encode(
                [
                    Metric(name="bdSeq", datatype=codec.INT64, value=0, timestamp=ts),
                    Metric(name="Node Control/Rebirth", datatype=codec.BOOLEAN, value=False),
                ],
                timestamp=ts,
                seq=0,
            ),
        )
    ]
    for d in range(devices):
        metrics = [
            Metric(
                name=n,
                alias=i + 1,
                datatype=dt,
                value=1 if dt != codec.DOUBLE else 0.0,
                timestamp=ts,
            )
            for i, (n, dt) in enumerate(METRICS)
        ]
        out.append(
            (
                f"spBv1.0/{GROUP}/DBIRTH/{EDGE}/P-{d:03d}",
                codec.encode(metrics, timestamp=ts, seq=d + 1),
            )
        )
    return out


def data(devices: int, n: int, t0: int, first_seq: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        ts = t0 + i * 10
        metrics = [
            Metric(alias=1, datatype=codec.INT32, value=1, timestamp=ts),
            Metric(alias=2, datatype=codec.UINT64, value=1000 + i, timestamp=ts),
            Metric(alias=3, datatype=codec.UINT32, value=i // 100, timestamp=ts),
            Metric(alias=4, datatype=codec.DOUBLE, value=30.0 + (i % 7) / 10, timestamp=ts),
            Metric(alias=5, datatype=codec.FLOAT, value=4.5, timestamp=ts),
        ]
        seq = (first_seq + i) % 256
        out.append(
            (
                f"spBv1.0/{GROUP}/DDATA/{EDGE}/P-{i % devices:03d}",
                codec.encode(metrics, timestamp=ts, seq=seq),
            )
        )
    return out


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>10,.0f} msg/s ({n} in {seconds:.2f} s)"


def publish_all(url_host: str, port: int, messages: list[tuple[str, bytes]]) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-edge")
    pub.max_inflight_messages_set(1000)
    pub.connect(url_host, port)
    pub.loop_start()
    infos = [pub.publish(t, p, qos=1) for t, p in messages]
    for info in infos:
        info.wait_for_publish(120)
    pub.loop_stop()
    pub.disconnect()


def raw_ceiling(host: str, port: int, messages: list[tuple[str, bytes]]) -> float:
    """A paho subscriber that only counts: what one paho client receives per second."""
    got = 0
    done = threading.Event()
    n = len(messages)

    def on_message(c: Any, u: Any, m: Any) -> None:
        nonlocal got
        got += 1
        if got == n:
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw")
    sub.on_message = on_message
    sub.connect(host, port)
    sub.subscribe("spBv1.0/#", qos=1)
    sub.loop_start()
    time.sleep(0.5)
    start = time.perf_counter()
    publish_all(host, port, messages)
    done.wait(300)
    elapsed = time.perf_counter() - start
    sub.loop_stop()
    sub.disconnect()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--devices", type=int, default=20)
    args = ap.parse_args()
    n, devices = args.messages, args.devices
    plant = bench_plant(devices)
    t0 = int(time.time() * 1000) - 3_600_000
    birth_msgs = births(devices, t0)
    data_msgs = data(devices, n, t0 + 1000, devices + 1)

    start = time.perf_counter()
    for _, p in data_msgs:
        codec.decode(p)
    print("codec.decode alone         ", rate(n, time.perf_counter() - start))

    host = SparkplugHost(plant)
    for t, p in birth_msgs:
        host.handle(t, p, t0)
    start = time.perf_counter()
    events = 0
    for t, p in data_msgs:
        events += len(host.handle(t, p, t0).records)
    print("host.handle (decode + map) ", rate(n, time.perf_counter() - start), f"{events} events")

    tmp = Path(tempfile.mkdtemp(prefix="spb-bench-"))
    broker = start_broker(tmp / "broker", persistence=False, prefer="mosquitto")
    pg, url = fresh_database(plant)
    try:
        from urllib.parse import urlparse

        u = urlparse(broker.url)
        mhost, mport = u.hostname or "127.0.0.1", u.port or 1883
        print("paho subscriber (ceiling)  ", rate(n, raw_ceiling(mhost, mport, data_msgs)))

        collector = SparkplugCollector(
            plant, broker.url, url, host_id="bench", state_file=tmp / "h.json"
        )
        collector.start()
        assert collector.connected.wait(15)
        publish_all(mhost, mport, birth_msgs)
        time.sleep(0.5)
        with psycopg.connect(url, autocommit=True) as conn:
            base = conn.execute("SELECT count(*) FROM ingest_log").fetchone()[0]  # type: ignore[index]
            want = base + 4 * n
            start = time.perf_counter()
            publish_all(mhost, mport, data_msgs)
            while True:
                got = conn.execute("SELECT count(*) FROM ingest_log").fetchone()[0]  # type: ignore[index]
                if got >= want or time.perf_counter() - start > 600:
                    break
                time.sleep(0.05)
            elapsed = time.perf_counter() - start
        collector.stop()
        print(
            "collector -> ingest log    ",
            rate(n, elapsed),
            f"{got - base} rows ({(got - base) / elapsed:,.0f} events/s), "
            f"dead letters {collector.stats.dead_letters}, rebirths {collector.stats.rebirths}",
        )
    finally:
        broker.stop()
        pg.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
