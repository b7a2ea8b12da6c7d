"""Running the dataflow: live (follow the log forever) or until a seq (replay).

Recovery: Bytewax snapshots the log position and every machine's tracker each epoch
into SQLite files under the recovery directory; a restart resumes from the newest
complete snapshot and replays the log from there. Sinks are idempotent upserts, so the
replayed stretch rewrites the same values.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from mesflow.alert_rules import AlertsConfig
from mesflow.db import connect
from mesflow.plant import PlantConfig
from streams.dataflow import EventClock, build_flow
from streams.log_source import IngestLogSource
from streams.pg_sink import ResultsSink
from streams.rebuild import LateStore

log = logging.getLogger(__name__)

# Session-level advisory lock: one dataflow per database (released when its process dies);
# in a cluster, one per process id (dataflow_lock_key).
DATAFLOW_LOCK = 0x6D666C77

# Recovery partitions of a new recovery store (Bytewax's init_db_dir): fixed when the store
# is made, so as many as the most processes a plant may ever run (docs/scale-out.md). A
# store made before (1 partition) keeps working with any number of processes.
RECOVERY_PARTITIONS = 8


def dataflow_lock_key(process_id: int = 0) -> int:
    """Process 0 (or the one process) keeps the historical key: a single dataflow and
    process 0 of a cluster exclude each other."""
    return DATAFLOW_LOCK + (process_id << 32)


class DataflowBusy(RuntimeError):
    pass


@dataclass(frozen=True)
class Cluster:
    """This process's place in a Bytewax cluster: `addresses` (host:port of every process,
    in process-id order, this one included) and its `process_id` (0..N-1). Every process
    runs the same flow against the same database and the same recovery store."""

    addresses: tuple[str, ...]
    process_id: int

    @classmethod
    def parse(cls, processes: int, process_id: int, addresses: str | None) -> Cluster | None:
        """From `--processes N --process-id i --addresses "h:p;h:p"` (None: one process)."""
        if processes < 1:
            raise ValueError("--processes must be 1 or more")
        if not 0 <= process_id < processes:
            raise ValueError(f"--process-id must be 0..{processes - 1}")
        if processes == 1:
            return None
        if not addresses:
            # One host: consecutive ports from Bytewax's default.
            return cls(tuple(f"localhost:{2101 + i}" for i in range(processes)), process_id)
        parts = tuple(a.strip() for a in addresses.split(";") if a.strip())
        if len(parts) != processes:
            raise ValueError(f"--addresses names {len(parts)} processes, not {processes}")
        return cls(parts, process_id)

    @property
    def processes(self) -> int:
        return len(self.addresses)


def recovery_store(recovery_dir: Path, database_url: str) -> Path:
    """The snapshot directory for this database, created on first use.

    Keyed by the database's identity: snapshots of one database must never be resumed
    against another (their log positions would not match).
    """
    with connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT system_identifier::text || '-' || current_database() FROM pg_control_system()"
        ).fetchone()
    assert row is not None
    store = recovery_dir / str(row[0])
    if not store.exists():
        # Made aside and renamed: the processes of a cluster start together, and only one
        # store may come to be (the rename of a loser fails: the winner's is kept).
        recovery_dir.mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(prefix=".new-", dir=recovery_dir))
        init_db_dir(fresh, RECOVERY_PARTITIONS)
        try:
            fresh.rename(store)
        except OSError:
            shutil.rmtree(fresh, ignore_errors=True)
    return store


def hold_dataflow_lock(database_url: str) -> psycopg.Connection:
    """Take the one-dataflow-per-database lock; keep the returned connection open."""
    conn = connect(database_url, autocommit=True)
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (DATAFLOW_LOCK,)).fetchone()
    if not row or not row[0]:
        conn.close()
        raise DataflowBusy("another mesflow dataflow is already running against this database")
    return conn


@dataclass(frozen=True)
class Session:
    """A PostgreSQL session: its backend pid and start (a pid alone is reused; the start is
    None for another role's session, which pg_stat_activity does not show in full)."""

    pid: int
    started: datetime | None


def after_lost_lock(holder: Session | None, ours: Session | None) -> str:
    """What to do when the lock could not be taken again on a new connection.

    "wait": nobody holds it (a race with the unlock), or our own previous session still
    does (a network break the server has not noticed yet: it ends that session within
    the keepalive time set in `_lock_connection`, and until then nobody else can take the
    lock either). "busy": another session holds it, i.e. another dataflow started while
    ours had no lock.
    """
    if holder is None or holder == ours:
        return "wait"
    return "busy"


# Keepalives on the lock's connection, both ends: a client that vanished is noticed within
# about half a minute, and its session, with the lock, is released.
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}  # fmt: skip
_SERVER_SETTINGS = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "idle_session_timeout": "0",  # a site-wide idle timeout must not end the lock's session
}


def _lock_connection(database_url: str) -> psycopg.Connection:
    conn = psycopg.connect(
        database_url,
        autocommit=True,
        application_name="mesflow dataflow lock",
        connect_timeout=5,
        **_KEEPALIVE,  # type: ignore[arg-type]
    )
    for name, value in _SERVER_SETTINGS.items():  # only those this server version knows
        conn.execute(
            "SELECT set_config(name, %s, false) FROM pg_settings WHERE name = %s", (value, name)
        )
    return conn


def _this_session(conn: psycopg.Connection) -> Session:
    row = conn.execute(
        "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    ).fetchone()
    assert row is not None
    return Session(int(row[0]), row[1])


def _lock_holder(conn: psycopg.Connection, key: int = DATAFLOW_LOCK) -> Session | None:
    # A bigint advisory key shows in pg_locks as classid (high 32 bits), objid (low 32 bits)
    # and objsubid 1.
    row = conn.execute(
        "SELECT l.pid, a.backend_start FROM pg_locks l LEFT JOIN pg_stat_activity a USING (pid) "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
        "AND l.classid = %s AND l.objid = %s AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())",
        (key >> 32, key & 0xFFFFFFFF),
    ).fetchone()
    return Session(int(row[0]), row[1]) if row else None


class DataflowLock:
    """The one-dataflow-per-database lock, held for as long as the dataflow runs.

    A session-level advisory lock lives in one connection: when PostgreSQL restarts (or the
    connection breaks) the lock is gone, and nothing would stop a second dataflow from
    starting. So a thread checks every `check_s` seconds that the lock is still held and,
    once it is not, takes it again on a new connection as soon as the database is back.

    Re-taking, not exiting for a supervisor to restart us: both leave the same short window
    (from the database's return to the next check) in which another dataflow could start;
    exiting would add no safety but need a supervisor (a dataflow run by hand, a replay or
    the demo would just stop) and redo the work since the last snapshot after every database
    restart. If another dataflow did take the lock in that window, this one exits at once
    with status 1 (os._exit: not one more write, like the kill -9 the snapshots are made to
    survive), so that never two write the results; a supervisor's restart then says
    "already running" until the other stops.
    """

    def __init__(self, database_url: str, *, check_s: float = 1.0, process_id: int = 0) -> None:
        self._url = database_url
        self.check_s = check_s
        self.key = dataflow_lock_key(process_id)
        self._conn = _lock_connection(database_url)
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        if not row or not row[0]:
            self._conn.close()
            who = f" as process {process_id}" if process_id else ""
            raise DataflowBusy(
                f"another mesflow dataflow is already running{who} against this database"
            )
        self._session: Session | None = _this_session(self._conn)
        self._closed = threading.Event()
        self._swap = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="dataflow-lock", daemon=True)
        self._thread.start()

    def _held(self) -> bool:
        return _lock_holder(self._conn, self.key) == self._session

    def _watch(self) -> None:
        while not self._closed.wait(self.check_s):
            try:
                if self._held():
                    continue
                why = "it is no longer held"
            except psycopg.Error as err:
                if not (isinstance(err, psycopg.OperationalError) or self._conn.closed):
                    # The check failed, not the connection: the lock is still ours.
                    log.warning("dataflow lock: cannot check it (%s)", err)
                    continue
                why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if self._closed.is_set():
                return
            log.warning("dataflow lock lost (%s): taking it again", why)
            self._retake()

    def _retake(self) -> None:
        old, self._session = self._session, None
        with contextlib.suppress(psycopg.Error):
            self._conn.close()
        warned = 0.0
        while not self._closed.is_set():
            try:
                conn = _lock_connection(self._url)
            except psycopg.Error as err:
                if time.monotonic() - warned > 30:
                    log.warning("dataflow lock: database unreachable (%s); retrying", err)
                    warned = time.monotonic()
                self._closed.wait(self.check_s)
                continue
            try:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
                if row and row[0]:
                    session = _this_session(conn)
                    with self._swap:  # close() must not miss the new connection
                        if self._closed.is_set():
                            conn.close()
                            return
                        self._conn, self._session = conn, session
                    log.warning("dataflow lock taken again")
                    return
                holder = _lock_holder(conn, self.key)
            except psycopg.Error:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
                self._closed.wait(self.check_s)
                continue
            with contextlib.suppress(psycopg.Error):
                conn.close()
            if after_lost_lock(holder, old) == "busy":
                assert holder is not None
                msg = (
                    "dataflow: stopping at once: while the database was away another mesflow "
                    f"dataflow took the one-dataflow lock (PostgreSQL pid {holder.pid}); "
                    "only one may write the results. This one resumes from its last snapshot "
                    "once the other stops."
                )
                print(msg, file=sys.stderr, flush=True)
                logging.shutdown()
                os._exit(1)
            self._closed.wait(self.check_s)

    def close(self) -> None:
        with self._swap:
            self._closed.set()
        self._thread.join(timeout=10)
        with contextlib.suppress(psycopg.Error):
            self._conn.close()


def run_flow(
    plant: PlantConfig,
    database_url: str,
    recovery_dir: Path,
    snapshot_seconds: float,
    *,
    upto_seq: int | Callable[[], int | None] | None = None,
    batch_size: int = 2000,
    stop: threading.Event | None = None,
    alerts: AlertsConfig | None = None,
    cluster: Cluster | None = None,
    poll_ms: float = 20.0,
    gather_ms: float = 20.0,
) -> None:
    """Run the dataflow in this process until the log reaches `upto_seq` (None: forever)
    or `stop` is set. `alerts`: the alert rules (None: those of MESFLOW_ALERTS_CONFIG, if
    it is set; see `configured_alerts`). `cluster`: this process is one of several
    (docs/scale-out.md); each must be started, with the same `upto_seq`. `poll_ms`: how
    often a caught-up flow looks for new log rows (MESFLOW_LOG_POLL_MS); `gather_ms`: how
    long live results are gathered into one transaction (MESFLOW_RESULTS_GATHER_MS).

    Without `stop` (a replay), Ctrl-C or SIGTERM in the main thread ends the input the same
    clean way, then raises KeyboardInterrupt here, outside Bytewax: an exception raised
    inside it would abort the process with a Rust backtrace. The run resumes next time.
    """
    interrupted = threading.Event()
    restore: list[tuple[int, Any]] = []
    if stop is None and threading.current_thread() is threading.main_thread():
        stop = threading.Event()
        own_stop = stop

        def on_signal(signum: int, frame: FrameType | None) -> None:
            interrupted.set()
            own_stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            restore.append((sig, signal.signal(sig, on_signal)))
    try:
        _run_flow(
            plant,
            database_url,
            recovery_dir,
            snapshot_seconds,
            upto_seq,
            batch_size,
            stop,
            alerts,
            cluster,
            poll_ms,
            gather_ms,
        )
    finally:
        for signum, previous in restore:
            signal.signal(signum, previous)
    if interrupted.is_set():
        raise KeyboardInterrupt


def dataflow_gc() -> None:
    """The dataflow's garbage-collector settings (the benchmarks use them too).

    The trackers hold many long-lived objects, and the default collector thresholds make
    CPython re-scan them every few hundred allocations: measured 1.5x more CPU per event.
    Freeze what exists at start and collect young objects less often."""
    gc.freeze()
    # 200,000, not 50,000: a replay spent ~14 % of its CPU collecting young objects that
    # live on anyway (the events of a batch); measured 27.3 -> 25.5 µs per event, the
    # same peak memory (docs/performance.md).
    gc.set_threshold(200_000, 20, 100)


def _run_flow(
    plant: PlantConfig,
    database_url: str,
    recovery_dir: Path,
    snapshot_seconds: float,
    upto_seq: int | Callable[[], int | None] | None,
    batch_size: int,
    stop: threading.Event | None,
    alerts: AlertsConfig | None = None,
    cluster: Cluster | None = None,
    poll_ms: float = 20.0,
    gather_ms: float = 20.0,
) -> None:
    if alerts is None:
        alerts = configured_alerts(plant)
    if cluster is not None and callable(upto_seq):
        raise ValueError("a cluster replays up to a known seq (store the file first)")
    lock = DataflowLock(database_url, process_id=cluster.process_id if cluster else 0)
    dataflow_gc()
    try:
        store = recovery_store(recovery_dir, database_url)
        many = cluster is not None
        source = IngestLogSource(
            database_url,
            batch_size=batch_size,
            poll_interval=timedelta(milliseconds=poll_ms),
            upto_seq=upto_seq,
            stop=stop,
            marks=many,
        )
        live = upto_seq is None
        # A cluster's replay clock: the highest event time of all processes (EventClock).
        shared = (database_url, upto_seq) if many and isinstance(upto_seq, int) else None
        EventClock.shared = shared
        flow = build_flow(
            plant,
            source,
            ResultsSink(
                database_url,
                alerts=alerts,
                marks=many,
                gather=timedelta(milliseconds=gather_ms) if live and gather_ms else None,
            ),
            figures_every=timedelta(seconds=1) if live else None,
            late=LateStore(database_url, plant),  # late data: checkpoints and rebuilds
            alerts=alerts,
        )
        EventClock.shared = None
        cli_main(
            flow,
            epoch_interval=timedelta(seconds=snapshot_seconds),
            # Superseded snapshots are not kept: a consistent off-box backup of the
            # recovery directory is the operator's job (docs/operations.md).
            recovery_config=RecoveryConfig(str(store), backup_interval=timedelta(0)),
            process_id=cluster.process_id if cluster else None,
            addresses=list(cluster.addresses) if cluster else None,
        )
    finally:
        EventClock.shared = None
        lock.close()


def configured_alerts(plant: PlantConfig) -> AlertsConfig | None:
    """The alerts file named by MESFLOW_ALERTS_CONFIG, validated (AlertsConfigError names the
    file and line); None when it is not set (no alert rules)."""
    from mesflow.alert_rules import load_alerts_config
    from mesflow.settings import get_settings

    path = get_settings().alerts_config
    if path is None:
        return None
    config = load_alerts_config(path, plant)
    for name, why in config.disabled.items():
        log.warning("alerts: channel %s left out (channels_optional): %s", name, why)
    return config


def run_live(
    plant: PlantConfig,
    database_url: str,
    recovery_dir: Path,
    snapshot_seconds: float,
    alerts: AlertsConfig | None = None,
    cluster: Cluster | None = None,
    poll_ms: float = 20.0,
    gather_ms: float = 20.0,
) -> None:
    """`mesflow run dataflow`: follow the ingest log until SIGINT/SIGTERM."""

    stopping = threading.Event()

    # Not an exception in whatever code runs at the moment (Bytewax would abort with a
    # backtrace): the source ends its input, and the flow finishes and snapshots cleanly.
    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    where = f" (process {cluster.process_id} of {cluster.processes})" if cluster else ""
    print(f"dataflow: following the ingest log{where}", flush=True)
    run_flow(
        plant,
        database_url,
        recovery_dir,
        snapshot_seconds,
        stop=stopping,
        alerts=alerts,
        cluster=cluster,
        poll_ms=poll_ms,
        gather_ms=gather_ms,
    )
    print("dataflow: stopped", flush=True)
