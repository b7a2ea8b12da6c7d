"""Live path, end to end: MQTT publish -> collector -> ingest log -> dataflow -> results.

    python bench/live_latency.py [--rate 5000] [--seconds 60] [--machines 200]

Runs the real components as separate processes (mosquitto, `mesflow run collector-mqtt`,
`mesflow run dataflow`, PostgreSQL) and drives them with bench/loadgen.py: pre-encoded
QoS 1 messages from one process per 20k/s, each counted as sent only once the broker
acknowledged it, stamped `ts` = the moment it was sent, spread evenly over the scaled demo
plant (bench/scaled_plant.py). Of each machine's 800 messages: 40 state changes, 751 part
counts and 9 operator reports (its work order's start, 8 scrap reports), after a CRM order
and work order per machine, so the work-order, order, inspection and scrap steps work as in
a plant mid-shift; `--signals-only`: one state change in 20, the rest counts, no orders.

It prints, before the run, the ceilings measured against the same broker and PostgreSQL
(bench/ceilings.py: binary COPY, paho's QoS 1 receive, and the collector's own client's); during the run, a line every `--every` seconds with what was sent,
received by the collector, stored in the ingest log, dead-lettered and processed by the
dataflow, the backlog (stored, not yet processed), the latency of that interval, CPU per
event of the collector and the dataflow, and the load average; at the end the totals, the
losses between stages, the latency percentiles (publish -> ingest log, and publish -> the
state change's interval row: `machine_state_interval.first_seen_at`) and each rate's
ratio to its ceiling, with the CPU per event of every process (collector, dataflow,
mosquitto, PostgreSQL, load generator). Everything it starts is stopped and every file it
wrote is deleted.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ceilings import Ceiling, copy_ceiling, paho_receive_ceiling
from bench.common import (
    BenchDatabase,
    cpu_seconds,
    load_average,
    private_tmp,
    ratio,
    tree_cpu_seconds,
)
from bench.loadgen import ID_MARK, TS_MARK, LoadGenerator, LoadResult, Template, split, template
from bench.scaled_plant import write_scaled_plant
from collectors.topics import machine_topic
from mesflow.ingest_log import append, record_for
from mesflow.plant import PlantConfig
from mesflow.services import Broker, start_broker

STATES = ["running", "idle", "running", "down"]  # every change starts a new interval
STATE_EVERY = 20  # one event in 20 is a state change
# With reports: each machine runs one work order the whole run (the operator scans it
# again every 800 messages: the same run), and reports a scrap part every 100 messages.
# A real work order lasts hours; one that ended every few seconds (the bench compresses
# parts, not the wall clock) piled up thousands of ended runs whose missing last-piece
# inspection stays flagged for a day (docs/performance.md): no plant does that.
WORK_ORDER_EVERY = 800
SCRAP_EVERY = 100


def machine_cycle(
    plant: PlantConfig, machines: list[str], tag: str, reports: bool = True
) -> list[Template]:
    """The message cycle of one generator process: its machines in turn, each through all
    four states (a change every 20 messages). With `reports` a machine's cycle is 800
    messages and nine of its counts are operator reports: its work order's start (again)
    after the first change, and a part reported scrap every 100."""
    topics = {}
    for m in machines:
        line = plant.line_of_machine[m]
        topics[m] = {
            kind: machine_topic(plant.plant.site, line.area, line.id, m, kind)
            for kind in ("state", "count", "report")
        }
    steps = WORK_ORDER_EVERY if reports else STATE_EVERY * len(STATES)
    cycle = []
    for step in range(steps):
        for m in machines:
            report: dict[str, Any] | None = None
            if reports and step == 1:
                report = {"kind": "wo_start", "work_order": f"LB-{m}", "operator": "bench"}
            elif reports and step % SCRAP_EVERY == SCRAP_EVERY // 2 - 5:
                report = {"kind": "scrap", "qty": 1, "reason": "short_shot", "operator": "bench"}
            if step % STATE_EVERY == 0:
                event: dict[str, Any] = {
                    "ts": TS_MARK,
                    "state": STATES[step // STATE_EVERY % len(STATES)],
                    "id": ID_MARK,
                }
                cycle.append(template(topics[m]["state"], event, tag))
            elif report is not None:
                event = {"ts": TS_MARK, **report, "id": ID_MARK}
                cycle.append(template(topics[m]["report"], event, tag))
            else:
                cycle.append(
                    template(topics[m]["count"], {"ts": TS_MARK, "good": 1, "id": ID_MARK}, tag)
                )
    return cycle


def post_orders(conn: psycopg.Connection[Any], plant: PlantConfig) -> int:
    """A CRM order and its work order for every machine, as the CRM collector logs them,
    so that the reports' work orders join an order (priority, due date) in the order step:
    a work order no order names is left out of the order board. Quantities too large to
    finish in a run."""
    due = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    products: list[str | None] = [p.id for p in plant.products] or [None]
    events: list[dict[str, Any]] = []
    for i, m in enumerate(sorted(plant.machines)):
        product = products[i % len(products)]
        order_no = f"SO-LB-{m}"
        events.append({
            "type": "order", "ts": datetime.now(UTC).isoformat(), "order_no": order_no,
            "version": 1, "customer": "Bench", "priority": 1 + i % 3, "product": product,
            "qty": 10_000_000, "due": due, "status": "open",
        })  # fmt: skip
        events.append({
            "type": "work_order", "ts": datetime.now(UTC).isoformat(), "work_order": f"LB-{m}",
            "order_no": order_no, "product": product, "qty": 10_000_000, "machine": m,
        })  # fmt: skip
    append(conn, [record_for("crm:bench", e) for e in events])
    return len(events)


@dataclass
class Counts:
    """One look at every stage, from PostgreSQL."""

    received: int  # the collector's own count (source_health, refreshed every 5 s)
    stored: int  # ingest_log rows
    last_seq: int
    dead: int
    processed_seq: int  # the slowest dataflow's committed position (dataflow_progress)


def counts(conn: psycopg.Connection[Any], preloaded: int = 0) -> Counts:
    """`preloaded`: log rows written before the run (the CRM orders), not counted stored."""
    row = conn.execute(
        """SELECT (SELECT COALESCE(sum(messages_total), 0) FROM source_health WHERE kind = 'mqtt'),
                  (SELECT count(*) FROM ingest_log),
                  (SELECT COALESCE(max(seq), 0) FROM ingest_log),
                  (SELECT count(*) FROM dead_letter),
                  (SELECT COALESCE(min(last_seq), 0) FROM dataflow_progress)"""
    ).fetchone()
    assert row is not None
    c = Counts(*(int(v) for v in row))
    c.stored -= preloaded
    return c


def interval_latency(conn: psycopg.Connection[Any], since: float) -> str:
    """p50/p99 of the state changes whose interval row was first written since `since`."""
    row = conn.execute(
        """SELECT count(*),
                  percentile_disc(0.5) WITHIN GROUP (ORDER BY lat),
                  percentile_disc(0.99) WITHIN GROUP (ORDER BY lat)
           FROM (SELECT EXTRACT(EPOCH FROM first_seen_at - start_ts) * 1000 AS lat
                 FROM machine_state_interval WHERE first_seen_at >= to_timestamp(%s)) s""",
        (since,),
    ).fetchone()
    if not row or not row[0]:
        return "latency -"
    return f"latency p50 {float(row[1]):.0f} ms p99 {float(row[2]):.0f} ms"


def percentiles(conn: psycopg.Connection[Any], sql: str, args: tuple[Any, ...]) -> str:
    row = conn.execute(
        f"""SELECT count(*),
                   percentile_disc(0.5) WITHIN GROUP (ORDER BY lat),
                   percentile_disc(0.95) WITHIN GROUP (ORDER BY lat),
                   percentile_disc(0.99) WITHIN GROUP (ORDER BY lat),
                   max(lat)
            FROM ({sql}) s""",
        args,
    ).fetchone()
    if not row or not row[0]:
        return "no samples"
    n, p50, p95, p99, top = row
    return (
        f"p50 {float(p50):.1f} ms, p95 {float(p95):.1f} ms, p99 {float(p99):.1f} ms, "
        f"max {float(top):.1f} ms ({n:,} samples)"
    )


class Components:
    """`mesflow run collector-mqtt` and `mesflow run dataflow` as child processes."""

    def __init__(
        self,
        work: Path,
        env: dict[str, str],
        servers: dict[str, int | None],
        collectors: int = 1,
    ) -> None:
        self.servers = servers  # mosquitto and PostgreSQL: their CPU is counted too
        self.work = work
        self.logs: dict[str, IO[bytes]] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        runs: list[tuple[str, str, dict[str, str]]] = [("dataflow", "dataflow", env)]
        if collectors == 1:
            runs.append(("collector", "collector-mqtt", env))
        else:
            # Several collectors share the subscription (MQTT 5 shared subscription): the
            # broker hands each message to one of them.
            for i in range(collectors):
                own = {
                    "MESFLOW_MQTT_CLIENT_ID": f"bench-collector-{i}",
                    "MESFLOW_MQTT_SHARE_GROUP": "bench",
                }
                runs.append((f"collector-{i}", "collector-mqtt", env | own))
        for name, command, run_env in runs:
            self.logs[name] = open(work / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "mesflow.cli", "run", command],
                env=run_env,
                stdout=self.logs[name],
                stderr=subprocess.STDOUT,
            )

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: "collector" (all of them), "dataflow", the servers."""
        own = {name: cpu_seconds(p.pid) for name, p in self.procs.items()}
        out = {"collector": sum(v for k, v in own.items() if k.startswith("collector"))}
        out["dataflow"] = own["dataflow"]
        return out | {
            name: tree_cpu_seconds(pid) if pid else 0.0 for name, pid in self.servers.items()
        }

    def check(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                log = (self.work / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {p.returncode}; its log ends:\n{log}")

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self.logs.values():
            f.close()


def wait_until_subscribed(
    conn: psycopg.Connection[Any], collectors: int, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE connected) FROM source_health WHERE kind = 'mqtt'"
        ).fetchone()
        if row and row[0] >= collectors:
            time.sleep(1.0)  # the dataflow follows the log by then too
            return
        time.sleep(0.2)
    raise RuntimeError(f"{collectors} collector(s) did not report connected within {timeout} s")


def run(args: argparse.Namespace, work: Path) -> None:
    plant_path, plant = write_scaled_plant(args.machines, work)
    db = BenchDatabase(plant, work / "db")
    broker: Broker | None = None
    parts: Components | None = None
    try:
        broker = start_broker(work / "broker", persistence=False, prefer="mosquitto")
        print(
            f"plant: {len(plant.machines)} machines on {len(plant.lines)} lines "
            f"(the demo plant's lines cloned); {load_average()}",
            flush=True,
        )
        ceilings: dict[str, Ceiling] = {}
        if not args.no_ceilings:
            ceilings["copy"] = copy_ceiling(db.url, rows=args.ceiling_rows)
            print(ceilings["copy"].describe(), "|", load_average(), flush=True)
            ceilings["paho"] = paho_receive_ceiling(
                broker.host, broker.port, messages=args.ceiling_messages
            )
            print(ceilings["paho"].describe(), "|", load_average(), flush=True)
            ceilings["lean"] = paho_receive_ceiling(
                broker.host, broker.port, messages=args.ceiling_messages, lean=True
            )
            print(ceilings["lean"].describe(), "|", load_average(), flush=True)
        env = {
            **os.environ,
            "MESFLOW_DATABASE_URL": db.url,
            "MESFLOW_MQTT_URL": broker.url,
            "MESFLOW_PLANT_CONFIG": str(plant_path),
            "MESFLOW_DATA_DIR": str(work / "var"),
            "PYTHONUNBUFFERED": "1",
        }
        parts = Components(
            work,
            env,
            {"mosquitto": broker.process.pid, "postgres": db.server_pid()},
            args.collectors,
        )
        conn = psycopg.connect(db.url, autocommit=True)
        try:
            wait_until_subscribed(conn, args.collectors)
            parts.check()
            args.preloaded = 0 if args.signals_only else post_orders(conn, plant)
            tag = f"L{uuid.uuid4().hex[:6]}"
            shares = split(sorted(plant.machines), args.processes)
            cycles = [
                machine_cycle(plant, share, f"{tag}{w}-", not args.signals_only)
                for w, share in enumerate(shares)
            ]
            gen = LoadGenerator(
                broker.host, broker.port, cycles, rate=args.rate, seconds=args.seconds
            )
            try:
                result, final, cpu_at_start = _drive(args, gen, parts, conn)
            finally:
                gen.stop()
            _report(args, conn, result, final, ceilings, parts, cpu_at_start)
        finally:
            conn.close()
    finally:
        if parts is not None:
            parts.stop()
            if args.show_logs:
                for name in parts.logs:
                    print(f"--- {name} log ---\n{(work / f'{name}.log').read_text()[-3000:]}")
        if broker is not None:
            broker.stop()
        db.stop()


def _drive(
    args: argparse.Namespace,
    gen: LoadGenerator,
    parts: Components,
    conn: psycopg.Connection[Any],
) -> tuple[LoadResult, Counts, dict[str, float]]:
    print(
        f"{'t s':>5} {'sent':>9} {'received*':>9} {'stored':>9} {'dead':>5} {'processed':>9} "
        f"{'backlog':>8}  interval: events/s, latency, CPU µs/event collector/dataflow, load",
        flush=True,
    )
    print(
        "  (* the collector's own count, as it reports it to source_health every 5 s; "
        "CPU per event: the collector's per stored row, the dataflow's per processed event)",
        flush=True,
    )
    started = gen.start()
    cpu_at_start = cpu_before = parts.cpu()
    seq_before = stored_before = 0
    last_line = time.time()
    result: LoadResult | None = None
    drain_until = float("inf")
    while True:
        # While generating, look only when a line is due (counting the log costs the
        # database); while draining, every 0.5 s to catch the end.
        if result is None:
            time.sleep(
                max(0.05, min(last_line + args.every, started + args.seconds + 1) - time.time())
            )
        else:
            time.sleep(0.5)
        now = time.time()
        generating = now - started < args.seconds + 1
        if result is None and not generating:
            result = gen.join(args.seconds + 120)
            drain_until = time.time() + args.drain
        c = counts(conn, args.preloaded)
        done = result is not None and c.stored >= result.acked and c.processed_seq >= c.last_seq
        if now - last_line >= args.every or done or now > drain_until:
            parts.check()
            cpu = parts.cpu()
            span = now - last_line
            processed_now = c.processed_seq - seq_before
            stored_now = c.stored - stored_before
            sent = result.acked if result is not None else gen.progress()[1]
            per_event = (
                f"{1e6 * (cpu['collector'] - cpu_before['collector']) / max(stored_now, 1):.0f}/"
                f"{1e6 * (cpu['dataflow'] - cpu_before['dataflow']) / max(processed_now, 1):.0f}"
            )
            print(
                f"{now - started:5.0f} {sent:9,} {c.received:9,} {c.stored:9,} {c.dead:5,} "
                f"{c.processed_seq:9,} {c.last_seq - c.processed_seq:8,}  "
                f"{processed_now / span:7,.0f}/s, {interval_latency(conn, last_line)}, "
                f"{per_event}, {load_average()}",
                flush=True,
            )
            cpu_before, seq_before, stored_before = cpu, c.processed_seq, c.stored
            last_line = now
        if done or now > drain_until:
            break
    assert result is not None
    # The collector's count reaches source_health every 5 s: wait for its next report.
    time.sleep(6)
    return result, counts(conn, args.preloaded), cpu_at_start


def _report(
    args: argparse.Namespace,
    conn: psycopg.Connection[Any],
    result: LoadResult,
    final: Counts,
    ceilings: dict[str, Ceiling],
    parts: Components,
    cpu_at_start: dict[str, float],
) -> None:
    cpu = {name: used - cpu_at_start[name] for name, used in parts.cpu().items()}
    print(result.describe())
    spans = conn.execute(
        "SELECT EXTRACT(EPOCH FROM max(received_at) - min(received_at)) FROM ingest_log"
    ).fetchone()
    stored_span = float(spans[0]) if spans and spans[0] else 0.0
    sent_rate = result.rate
    print(
        f"sent {result.acked:,} | received {final.received:,} | stored {final.stored:,} | "
        f"dead-lettered {final.dead:,} | processed up to seq {final.processed_seq:,} of "
        f"{final.last_seq:,} | lost sent->received {result.acked - final.received:,}, "
        f"received->stored {final.received - final.stored:,}"
    )
    if not args.signals_only:
        # The operator reports reached their steps (not merely the log): proof, not trust.
        wos = conn.execute(
            "SELECT count(*), COALESCE(sum(good), 0) FROM work_order_progress"
            " WHERE work_order LIKE 'LB-%'"
        ).fetchone()
        scrap = conn.execute("SELECT COALESCE(sum(qty), 0) FROM machine_scrap").fetchone()
        print(
            f"operator reports: {wos[0] if wos else 0:,} work orders with progress "
            f"({wos[1] if wos else 0:,} good parts on them), "
            f"{scrap[0] if scrap else 0:,} parts reported scrap"
        )
    if final.stored < result.acked:
        # The broker holds what the collector has not acknowledged: waiting, not lost.
        print(
            f"the --drain limit ({args.drain:.0f} s) ended the run with "
            f"{result.acked - final.stored:,} sent messages not yet stored (queued at the "
            "broker or in the collector) and the collector's count last reported 5 s ago"
        )
    paho = ceilings.get("paho")
    lean = ceilings.get("lean")
    copy = ceilings.get("copy")
    stored_rate = final.stored / stored_span if stored_span else 0.0
    print(
        f"rates: sent {sent_rate:,.0f}/s (target {args.rate:,.0f}/s)"
        + (
            f", ratio to the paho QoS 1 receive ceiling {ratio(sent_rate, paho.rate)}"
            if paho
            else ""
        )
        + f"; stored {stored_rate:,.0f} rows/s"
        + (f", ratio to the paho ceiling {ratio(stored_rate, paho.rate)}" if paho else "")
        + (
            f", to the collector client's receive ceiling {ratio(stored_rate, lean.rate)}"
            if lean
            else ""
        )
        + (f", to the binary COPY ceiling {ratio(stored_rate, copy.rate)}" if copy else "")
    )
    n = max(final.stored, 1)
    print(
        "CPU µs per event, from the first message to the end of the backlog: "
        + ", ".join(f"{name} {1e6 * used / n:.1f}" for name, used in cpu.items())
        + f", load generator {1e6 * result.cpu_s / max(result.acked, 1):.1f} | {load_average()}"
    )
    warm = result.workers[0].first_send + args.warmup
    print(
        "latency publish -> ingest log (received_at, transaction start): "
        + percentiles(
            conn,
            "SELECT EXTRACT(EPOCH FROM received_at - "
            "(convert_from(payload, 'UTF8')::jsonb->>'ts')::timestamptz) * 1000 AS lat "
            "FROM ingest_log WHERE received_at >= to_timestamp(%s)",
            (warm,),
        )
    )
    print(
        "latency publish -> state interval row (first_seen_at): "
        + percentiles(
            conn,
            "SELECT EXTRACT(EPOCH FROM first_seen_at - start_ts) * 1000 AS lat "
            "FROM machine_state_interval WHERE start_ts >= to_timestamp(%s)",
            (warm,),
        )
        + f"  (after {args.warmup:.0f} s warm-up; target p99 <= 500 ms) | {load_average()}"
    )
    # Where the tail is: the same rows from the ingest log's transaction start (so without
    # the broker and the collector), and the seconds whose rows waited longest: a period
    # in them (every 10 s: the recovery snapshot; every second: the figures) names the cause.
    ingest_to_row = (
        "SELECT EXTRACT(EPOCH FROM i.first_seen_at - l.received_at) * 1000 AS lat, "
        "i.first_seen_at AS seen "
        "FROM machine_state_interval i JOIN ingest_log l "
        "ON l.source LIKE 'mqtt:%%' AND convert_from(l.payload, 'UTF8')::jsonb->>'machine' = i.machine "
        "AND (convert_from(l.payload, 'UTF8')::jsonb->>'ts')::timestamptz = i.start_ts "
        "AND convert_from(l.payload, 'UTF8')::jsonb->>'type' = 'state' "
        "WHERE i.start_ts >= to_timestamp(%s)"
    )
    print(
        "latency ingest log -> state interval row (the dataflow and its writer): "
        + percentiles(conn, f"SELECT lat FROM ({ingest_to_row}) r", (warm,))
    )
    slow = conn.execute(
        f"""SELECT to_char(date_trunc('second', seen), 'HH24:MI:SS'), count(*), max(lat)
            FROM ({ingest_to_row}) r GROUP BY 1 ORDER BY 3 DESC LIMIT 10""",
        (warm,),
    ).fetchall()
    print(
        "slowest seconds (row written at, rows, worst ms): "
        + ", ".join(f"{at} {n} {float(worst):.0f}" for at, n, worst in slow)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=5000, help="events per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to publish")
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument(
        "--processes", type=int, default=0, help="load generator processes (0: 1 per 20k/s)"
    )
    parser.add_argument(
        "--collectors", type=int, default=1, help="collector processes (>1: shared subscription)"
    )
    parser.add_argument("--every", type=float, default=5.0, help="seconds between lines")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds left out of latency")
    parser.add_argument("--drain", type=float, default=120.0, help="max wait for the backlog")
    parser.add_argument("--no-ceilings", action="store_true", help="skip the ceilings")
    parser.add_argument("--ceiling-rows", type=int, default=200_000, help="rows for COPY")
    parser.add_argument("--ceiling-messages", type=int, default=100_000, help="for paho")
    parser.add_argument(
        "--signals-only", action="store_true", help="machine signals only, no operator reports"
    )
    parser.add_argument("--show-logs", action="store_true", help="print the components' logs")
    args = parser.parse_args(argv)
    # One generator process sends ~70k+/s even on a loaded machine: more only cost CPU
    # that the components under test would otherwise get.
    args.processes = args.processes or max(1, math.ceil(args.rate / 20000))
    with private_tmp("mesflow-live-bench-") as work:
        run(args, work)


if __name__ == "__main__":
    main()
