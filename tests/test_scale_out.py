"""Scale-out (issue 14): the log partitioned by machine, the dataflow as a Bytewax cluster.

Real PostgreSQL, real Bytewax processes (a cluster of child processes on local ports): the
same log processed by one process and by two or three gives identical results in every
results table (machines, dead letters, orders and work orders, labor, inspections,
quality); a cluster stopped part-way resumes with another number of processes (rescaling)
to the results of an uninterrupted run; every log partition's progress reaches the end of
the log; a second process with the same id is refused; the partition of a machine is the
same in SQL and in Python.

The plant-wide steps (orders, labor, inspections, quality) get their inputs in log order
through the cluster's sequencer (streams/sequencer.py). Left out of the comparison: the
figures "as observed at the batch that counted the parts" (ETAs, rates, a run's parts when
its first article was judged, which flags opened), which differ with how the log is
batched even in one process (tests/test_flow_lean.py OBSERVED) — a cluster's readers batch
their own partitions (BATCH_OBSERVED below; docs/scale-out.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesflow.plant import PlantConfig
from mesflow.services import free_port
from streams.log_source import LOG_PARTS, PARTS, part_name, part_of
from streams.runner import Cluster, DataflowBusy, DataflowLock, run_flow
from tests.helpers import (
    _VOLATILE,
    RESULT_TABLES,
    copy_log,
    count,
    diff_snapshots,
    feed,
    floor_events,
    log_position,
    random_events,
    table_snapshot,
)

MACHINES = ["IM-01", "IM-02", "IM-03", "IM-04", "CNC-01", "CNC-02", "CNC-03"]
START = "2026-11-20T08:00:00+08:00"
# The results a cluster computes exactly as one process does (see the module docstring).
PER_MACHINE = (
    "machine_state_interval",
    "machine_status",
    "machine_hour",
    "machine_kpi",
    "machine_kpi_reason",
    "machine_scrap",
    "dead_letter",
    "quality_record",
    "work_order_operation",
)

# One cluster member: the same flow as `mesflow run dataflow --processes N --process-id i`,
# in replay mode (up to a seq), so that its results are a function of the log alone.
_MEMBER = """
import logging
import sys
logging.basicConfig(level=logging.INFO)
from pathlib import Path
from mesflow.plant import load_plant_config
from mesflow.settings import get_settings
from streams.runner import Cluster, run_flow
url, rec, upto, n, pid, addresses, batch = sys.argv[1:]
plant = load_plant_config(get_settings().plant_config)
cluster = Cluster.parse(int(n), int(pid), addresses)
run_flow(plant, url, Path(rec), 0.5, upto_seq=int(upto), batch_size=int(batch), cluster=cluster)
"""


def history(seed: int = 5) -> list[dict[str, Any]]:
    """A multi-machine history: signals, scrap, reports, people and quality, CRM orders and
    work orders (with and without a machine: the latter go to every machine), bad inputs,
    and late events (older than the allowed lateness, arriving at the end: merged)."""
    t0 = datetime.fromisoformat(START)
    orders: list[dict[str, Any]] = []
    for k in (1, 2, 3):
        at = (t0 - timedelta(hours=1, minutes=k)).isoformat()
        orders.append({"id": f"so{k}", "type": "order", "order_no": f"SO-{k}", "version": 1,
                       "customer": "ACME", "priority": k, "product": "P-100", "qty": 400 * k,
                       "due": (t0 + timedelta(days=k)).isoformat(), "status": "open", "ts": at})  # fmt: skip
        wo: dict[str, Any] = {"id": f"wo{k}", "type": "work_order", "work_order": f"WO-{k}",
                              "order_no": f"SO-{k}", "product": "P-100", "qty": 200 * k, "ts": at}  # fmt: skip
        if k != 2:  # WO-2 names no machine: every machine gets it
            wo["machine"] = MACHINES[k]
        orders.append(wo)
    signals = random_events(MACHINES, 2400, seed=seed, start=START)
    floor = floor_events(MACHINES, 120, seed=seed, start=START)
    events = sorted(signals + floor, key=lambda e: datetime.fromisoformat(e["ts"]))
    # Late: every 97th event arrives at the end, hours after its machine moved on.
    late = events[50:-200:97]
    ontime = [e for e in events if e not in late]
    return orders + ontime + late


def _member(url: str, rec: Path, upto: int, n: int, pid: int, addresses: str, batch: int) -> Any:
    args = [url, str(rec), str(upto), str(n), str(pid), addresses, str(batch)]
    return subprocess.Popen(
        [sys.executable, "-c", _MEMBER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )


def run_cluster(url: str, rec: Path, upto: int, n: int, batch: int = 150) -> list[str]:
    """Run the flow as `n` processes up to `upto`; every process's output."""
    addresses = ";".join(f"localhost:{free_port()}" for _ in range(n))
    procs = [_member(url, rec, upto, n, i, addresses, batch) for i in range(n)]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        outs.append(out)
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
    return outs


def run_single(plant: PlantConfig, url: str, rec: Path, upto: int, batch: int = 150) -> None:
    run_flow(plant, url, rec, 0.5, upto_seq=upto, batch_size=batch)


# Columns (None: the whole table) that carry figures as observed at the batch that counted
# the parts: they differ with the batching, in one process too (tests/test_flow_lean.py).
BATCH_OBSERVED: dict[str, tuple[str, ...] | None] = {
    "order_progress": ("eta",),
    "work_order_progress": ("eta", "rate_per_h"),
    "quality_yield": ("first_ts", "last_ts"),
    # A defect's operation and product "as known when reported": in one process a batch's
    # machine rows (its work-order starts, with their operations) reach the quality step
    # before the batch's floor reports, so a defect reported just before the start in the
    # same batch takes its operation; a cluster batches otherwise.
    "quality_record": ("operation", "product"),
    "inspection_run": ("first_article", "parts_made", "slots"),
    "inspection_flag": None,
}


def per_machine(url: str) -> dict[str, list[tuple[Any, ...]]]:
    snap = table_snapshot(url)
    return {table: snap[table] for table in PER_MACHINE}


def every_table(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every results table (tests/helpers.py RESULT_TABLES), without the batch-observed
    columns (inspection_flag: all of it)."""
    snap = table_snapshot(url)
    with psycopg.connect(url) as conn:
        for table, drop in BATCH_OBSERVED.items():
            cols = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = %s ORDER BY ordinal_position",
                    (table,),
                )
                if r[0] not in _VOLATILE
            ]
            if drop is None:  # which flags open depends on the parts seen per batch
                snap[table] = []
                continue
            keep = [i for i, c in enumerate(cols) if c not in drop]
            assert len(keep) == len(cols) - len(drop), (table, cols)
            snap[table] = [tuple(row[i] for i in keep) for row in snap[table]]
    return snap


def progress(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT flow, last_seq FROM dataflow_progress").fetchall())


def _nonempty(snap: dict[str, list[tuple[Any, ...]]]) -> None:
    # The comparison must cover real rows of every kind the history makes.
    for table in PER_MACHINE:
        assert snap[table], f"{table} is empty: the test proves nothing there"


@pytest.fixture
def second_db(pg_server: str, pg_template: str) -> Any:
    """A third fresh database (db_url and ref_db_url are the other two)."""
    import uuid

    from tests.conftest import _with_db

    name = f"s_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    yield _with_db(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_two_processes_give_the_results_of_one(
    plant: PlantConfig, db_url: str, ref_db_url: str, tmp_path: Path
) -> None:
    feed(db_url, history())
    upto = log_position(db_url)
    assert copy_log(db_url, ref_db_url) == upto
    # The history spreads over several partitions, machine-less rows in partition 0.
    with psycopg.connect(db_url) as conn:
        parts = {r[0] for r in conn.execute("SELECT DISTINCT part FROM ingest_log")}
    assert 0 in parts and len(parts) >= 5

    run_single(plant, ref_db_url, tmp_path / "rec1", upto)
    want = every_table(ref_db_url)
    assert set(want) == set(RESULT_TABLES)
    for table in RESULT_TABLES:  # real rows of every kind: the comparison proves something
        assert want[table] or BATCH_OBSERVED.get(table, ()) is None, f"{table} is empty"

    outs = run_cluster(db_url, tmp_path / "rec2", upto, 2)
    got = every_table(db_url)
    assert not diff_snapshots(got, want), diff_snapshots(got, want)
    assert got == want
    assert all("Traceback" not in out for out in outs)
    # Every partition, idle or not, has its progress at the end of the log.
    names = {f"machines:{part_name(k)}" for k in PARTS}
    assert progress(db_url) == dict.fromkeys(names, upto)
    assert progress(ref_db_url) == dict.fromkeys(names, upto)


def test_three_processes_and_rescaling_give_the_results_of_one(
    plant: PlantConfig, db_url: str, ref_db_url: str, second_db: str, tmp_path: Path
) -> None:
    """1 -> 3 processes, and 2 -> 1, each stopped at a point of the log and resumed with
    another number of processes on the same recovery store: the results of one
    uninterrupted process."""
    feed(db_url, history(seed=9))
    upto = log_position(db_url)
    copy_log(db_url, ref_db_url)
    copy_log(db_url, second_db)
    run_single(plant, ref_db_url, tmp_path / "ref", upto)
    want = every_table(ref_db_url)
    _nonempty(want)

    mid = upto * 2 // 5
    run_single(plant, db_url, tmp_path / "a", mid)
    assert min(progress(db_url).values()) == mid
    outs = run_cluster(db_url, tmp_path / "a", upto, 3)
    # Each process resumed its partitions where the single process left them.
    assert all(f"resuming the ingest log after seq {mid}" in out for out in outs), outs
    got = every_table(db_url)
    assert not diff_snapshots(got, want), diff_snapshots(got, want)

    outs = run_cluster(second_db, tmp_path / "b", mid, 2)
    assert min(progress(second_db).values()) == mid
    run_single(plant, second_db, tmp_path / "b", upto)
    got = every_table(second_db)
    assert not diff_snapshots(got, want), diff_snapshots(got, want)
    assert all("Traceback" not in out for out in outs)


def test_a_second_process_with_the_same_id_is_refused(db_url: str) -> None:
    first = DataflowLock(db_url, process_id=1)
    try:
        with pytest.raises(DataflowBusy, match="as process 1"):
            DataflowLock(db_url, process_id=1)
        other = DataflowLock(db_url, process_id=2)  # another id of the cluster: fine
        other.close()
        # Process 0 and a single dataflow share the historical lock.
        single = DataflowLock(db_url)
        with pytest.raises(DataflowBusy):
            DataflowLock(db_url, process_id=0)
        single.close()
    finally:
        first.close()


def test_cluster_arguments() -> None:
    assert Cluster.parse(1, 0, None) is None
    c = Cluster.parse(2, 1, "a:1; b:2")
    assert c is not None and c.addresses == ("a:1", "b:2") and c.processes == 2
    assert Cluster.parse(3, 2, None) == Cluster(
        ("localhost:2101", "localhost:2102", "localhost:2103"), 2
    )
    for bad in ((2, 2, None), (2, 0, "a:1"), (0, 0, None)):
        with pytest.raises(ValueError):
            Cluster.parse(*bad)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s), max_size=8))
def test_python_and_sql_agree_on_a_machines_partition(db_url: str, machines: list[str]) -> None:
    with psycopg.connect(db_url) as conn:
        for m in [*machines, None]:
            row = conn.execute("SELECT ingest_log_part(%s)", (m,)).fetchone()
            assert row is not None and row[0] == part_of(m)
            assert 0 <= part_of(m) <= LOG_PARTS
            assert (part_of(m) == 0) == (m is None)


def test_the_machine_less_rows_and_each_machine_stay_in_one_partition(db_url: str) -> None:
    feed(db_url, history()[:300])
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT machine, part FROM ingest_log").fetchall()
    assert {p for m, p in rows if m is None} == {0}
    for m, p in rows:
        assert p == part_of(m)
    assert count(db_url, "SELECT count(DISTINCT part) FROM ingest_log") > 3
    assert json.dumps(sorted({p for _, p in rows}))


# The modules that may import Bytewax (docs/scale-out.md, "Replacing Bytewax"): the flow's
# wiring and its adapters. The logic they wrap must stay free of it.
BYTEWAX_IMPORTERS = {
    "streams/dataflow.py",
    "streams/runner.py",
    "streams/log_source.py",
    "streams/pg_sink.py",
    "streams/inspections_flow.py",
    "streams/labor_flow.py",
    "streams/quality_flow.py",
    "streams/limit_spans_flow.py",
    "streams/order_problems_flow.py",
    "bench/replay_profile.py",
    "bench/snapshot_bench.py",  # what Bytewax's own recovery store costs per snapshot
}


def test_only_the_wiring_imports_bytewax() -> None:
    import re

    from mesflow.settings import REPO_ROOT

    found = set()
    for folder in ("mesflow", "streams", "collectors", "dashboards", "notify", "bench"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            text = path.read_text("utf-8")
            if re.search(r"^\s*(from|import)\s+bytewax\b", text, re.MULTILINE):
                found.add(str(path.relative_to(REPO_ROOT)))
    assert found == BYTEWAX_IMPORTERS


def test_a_live_cluster_follows_the_log_and_stops_on_sigterm(db_url: str, tmp_path: Path) -> None:
    """`mesflow run dataflow --processes 2 --process-id i --addresses ..`: both processes
    follow the log as it grows; every partition's progress, idle ones too, reaches the end;
    SIGTERM to both stops them cleanly, and a restart resumes each partition."""
    import signal

    from tests.helpers import Mesflow, mesflow_env, wait_until

    addresses = ";".join(f"localhost:{free_port()}" for _ in range(2))
    env = mesflow_env(db_url, tmp_path / "var", MESFLOW_SNAPSHOT_SECONDS="0.5")

    def start() -> list[Mesflow]:
        return [
            Mesflow("run", "dataflow", "--processes", "2", "--process-id", str(i),
                    "--addresses", addresses, env=env, log=tmp_path / f"dataflow-{i}.log")
            for i in range(2)
        ]  # fmt: skip

    def stop(procs: list[Mesflow]) -> list[int]:
        # SIGTERM to every process first (each ends its own input), once: a second one
        # while a process exits would find Python's default handler.
        for p in procs:
            p.proc.send_signal(signal.SIGTERM)
        return [p.proc.wait(timeout=30) for p in procs]

    def caught_up() -> bool:
        p = progress(db_url)
        return len(p) == len(PARTS) and min(p.values()) == log_position(db_url)

    events = history(seed=3)
    procs = start()
    try:
        wait_until(lambda: all("process" in p.output() for p in procs), what="both started")
        feed(db_url, events[:800])
        wait_until(caught_up, timeout=60, what="both processes to take in the log")
        feed(db_url, events[800:1200])  # arrives while they run
        wait_until(caught_up, timeout=60, what="the new rows")
    finally:
        codes = stop(procs)
    assert codes == [0, 0], [p.output() for p in procs]
    assert count(db_url, "SELECT count(*) FROM machine_state_interval") > 0

    feed(db_url, events[1200:1500])  # while the cluster is down
    position = min(progress(db_url).values())
    procs = start()
    try:
        wait_until(caught_up, timeout=60, what="the restarted cluster")
        out = "".join(p.output() for p in procs)
        assert f"resuming the ingest log after seq {position}" in out
    finally:
        assert stop(procs) == [0, 0], [p.output() for p in procs]


def test_partitions_resumed_at_different_positions_read_each_row_once(db_url: str) -> None:
    """After a rescale the partitions of one reader resume at different seqs: each gets
    exactly its rows after its own position, and a reader without partition 0 re-reads
    partition 0's rows for those of its partitions that have not read past them."""
    import random
    import threading

    from mesflow.ingest_log import LogEntry
    from streams.log_source import IngestLogSource, ReadMark

    feed(db_url, history(seed=4))
    upto = log_position(db_url)
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT seq, part FROM ingest_log").fetchall()
    part: dict[int, int] = {int(s): int(k) for s, k in rows}
    rng = random.Random(4)
    resume = {k: rng.randrange(0, upto) for k in PARTS}
    source = IngestLogSource(db_url, batch_size=97, upto_seq=upto, marks=True)
    got: dict[str, list[Any]] = {}
    readers: dict[str, Any] = {}

    def worker(name: str, parts: list[int]) -> None:
        built = [source.build_part("in", part_name(k), resume[k]) for k in parts]
        readers[name] = built[0].reader
        out: list[Any] = []
        live = list(built)
        while live:
            for p in list(live):
                try:
                    batch = p.next_batch()
                except StopIteration:
                    live.remove(p)
                    continue
                # What owned_only would consume: the foreign rows' targets, now.
                foreign = p.reader.foreign
                out.extend((x, foreign.pop(getattr(x, "seq", -1), None)) for x in batch)
        got[name] = out

    halves = {"a": [k for k in PARTS if k % 2 == 0], "b": [k for k in PARTS if k % 2]}
    threads = [threading.Thread(target=worker, args=item) for item in halves.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, parts in halves.items():
        rows = [(x.seq, foreign) for x, foreign in got[name] if type(x) is LogEntry]
        own = sorted(s for s, f in rows if f is None)
        want = sorted(s for s, k in part.items() if k in parts and s > resume[k])
        assert own == want, name
        if 0 not in parts:  # partition 0's rows, each for our partitions not yet past it
            foreign = {s: f for s, f in rows if f is not None}
            want_f = {
                s: frozenset(k for k in parts if s > resume[k])
                for s, k in part.items()
                if k == 0 and any(s > resume[j] for j in parts)
            }
            assert foreign == want_f
        marks = [x for x, _ in got[name] if type(x) is ReadMark]
        assert dict(marks[-1].positions) == dict.fromkeys(parts, upto)
        assert readers[name].positions == dict.fromkeys(parts, upto)
