"""Ceilings measured in the same run as a benchmark, against the same services.

A figure means little alone on a shared 2-core machine: each benchmark measures what the
raw parts reach right now and prints its own figures as a ratio to these.

- `copy_ceiling`: binary COPY in 1000-row transactions into a logged table with a primary
  key shaped like `ingest_log`, in the benchmark's own PostgreSQL (the table is dropped).
- `paho_receive_ceiling`: one paho-mqtt subscriber at QoS 1 (what the collector is built
  on) receiving from the load generator (bench/loadgen.py) through the benchmark's broker,
  on a topic no collector reads; with `lean=True`, the collector's own client (LeanClient:
  paho with a cheaper receive path) acknowledging in batches as the collector does.

    python -m bench.ceilings     # both, against a throwaway PostgreSQL and mosquitto
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from bench.loadgen import LoadGenerator, plain_templates


@dataclass(frozen=True)
class Ceiling:
    name: str
    rate: float  # per second
    unit: str
    cpu_us: float  # CPU of the measuring (client) process per item
    detail: str = ""

    def describe(self) -> str:
        return (
            f"ceiling {self.name}: {self.rate:,.0f} {self.unit}/s "
            f"({self.cpu_us:.1f} µs client CPU each{'; ' + self.detail if self.detail else ''})"
        )


def copy_ceiling(database_url: str, rows: int = 200_000, batch: int = 1000) -> Ceiling:
    """Binary COPY, `batch` rows per transaction, into a durable table with a primary key."""
    table = f"bench_copy_ceiling_{uuid.uuid4().hex[:8]}"
    payload = b'{"type":"count","machine":"IM-01","ts":"2026-11-30T03:00:00.000000+00:00","good":1}'
    now = datetime.now(UTC)
    data = [(i, now, "mqtt:bench/ceiling", payload, i.to_bytes(16, "big")) for i in range(rows)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {table} (seq bigint PRIMARY KEY, received_at timestamptz NOT NULL, "
            "source text NOT NULL, payload bytea NOT NULL, dedupe_key bytea)"
        )
        try:
            conn.autocommit = False
            cpu0, t0 = time.process_time(), time.perf_counter()
            with conn.cursor() as cur:
                for start in range(0, rows, batch):
                    with cur.copy(
                        f"COPY {table} (seq, received_at, source, payload, dedupe_key) "
                        "FROM STDIN (FORMAT BINARY)"
                    ) as copy:
                        copy.set_types(["int8", "timestamptz", "text", "bytea", "bytea"])
                        for row in data[start : start + batch]:
                            copy.write_row(row)
                    conn.commit()
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        finally:
            conn.rollback()
            conn.autocommit = True
            conn.execute(f"DROP TABLE {table}")
    return Ceiling(
        "binary COPY (1000 rows/commit, logged + primary key)",
        rows / elapsed,
        "rows",
        1e6 * cpu / rows,
        f"{rows:,} rows",
    )


def paho_receive_ceiling(
    host: str,
    port: int,
    messages: int = 100_000,
    processes: int = 2,
    timeout: float = 60,
    *,
    lean: bool = False,
) -> Ceiling:
    """One paho subscriber at QoS 1, fed by the load generator as fast as it goes; the rate
    is messages received / (last receive - first receive).

    `lean`: the collector's own client (collectors/mqtt_conn.py LeanClient) with manual
    acknowledgements in batches (`ack_many`), as the collector sends them; else
    paho's Client acknowledging each message itself."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from collectors.mqtt_conn import LeanClient

    topic = f"mesflow-bench-ceiling/{uuid.uuid4().hex[:8]}"
    got = [0]
    first = [0.0]
    last = [0.0]
    unacked: list[int] = []
    subscribed = threading.Event()
    done = threading.Event()

    def on_message(_c: object, _u: object, msg: Any) -> None:
        if not got[0]:
            first[0] = time.perf_counter()
        got[0] += 1
        last[0] = time.perf_counter()
        if isinstance(sub, LeanClient):
            unacked.append(msg.mid)
            # Within the broker's window (mosquitto's max_inflight_messages: 100 here)
            if len(unacked) >= 50 or got[0] >= messages:
                sub.ack_many(unacked)
                unacked.clear()
        if got[0] >= messages:
            done.set()

    sub = (LeanClient if lean else mqtt.Client)(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-ceiling-{os.getpid()}",
        clean_session=True,
        manual_ack=lean,
    )
    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    # The collector's window (paho's own default is 20 in flight).
    sub.max_inflight_messages_set(1000 if lean else 100)
    sub.connect(host, port)
    sub.subscribe(f"{topic}/#", qos=1)
    sub.loop_start()
    try:
        if not subscribed.wait(10):
            raise RuntimeError("the ceiling subscriber could not subscribe")
        gen = LoadGenerator(host, port, plain_templates(topic, processes, "c"), count=messages)
        cpu0 = time.process_time()
        gen.start()
        sent = gen.join(timeout)
        done.wait(timeout)
        cpu = time.process_time() - cpu0
    finally:
        sub.loop_stop()
        sub.disconnect()
    span = last[0] - first[0]
    rate = got[0] / span if span > 0 else 0.0
    return Ceiling(
        "QoS 1 receive, the collector's client (LeanClient, acks in batches)"
        if lean
        else "paho QoS 1 receive (one subscriber)",
        rate,
        "msg",
        1e6 * cpu / max(got[0], 1),
        f"{got[0]:,} of {sent.acked:,} received; generator sent {sent.rate:,.0f}/s",
    )


def main() -> None:
    from bench.common import BenchDatabase, load_average, private_tmp
    from bench.scaled_plant import write_scaled_plant
    from mesflow.services import start_broker

    with private_tmp("mesflow-ceilings-") as work:
        _path, plant = write_scaled_plant(12, work)
        db = BenchDatabase(plant, work / "db")
        broker = start_broker(work / "broker", persistence=False, prefer="mosquitto")
        try:
            print(copy_ceiling(db.url).describe(), "|", load_average())
            print(paho_receive_ceiling(broker.host, broker.port).describe(), "|", load_average())
            lean = paho_receive_ceiling(broker.host, broker.port, lean=True)
            print(lean.describe(), "|", load_average())
        finally:
            broker.stop()
            db.stop()


if __name__ == "__main__":
    main()
