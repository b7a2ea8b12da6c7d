"""A replay whose storing process dies (killed, out of memory) stops instead of waiting for
ever: the dataflow ends cleanly, `mesflow replay` exits 1 with one line saying how much of
the file was stored, and running it again finishes with the figures of an uninterrupted
run (the lines already stored are deduplicated, none is lost or counted twice).

The store is held mid-file on the ingest log's append lock (mesflow.ingest_log), so the kill
always lands after exactly one committed chunk and inside the next one's transaction.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from mesflow.ingest_log import _APPEND_LOCK
from streams.replay import CHUNK_LINES, _Stored, _Target, incomplete_message
from tests.helpers import (
    Mesflow,
    clean_replay,
    count,
    diff_snapshots,
    mesflow_env,
    random_events,
    table_snapshot,
    wait_until,
    write_jsonl,
)

MACHINES = ["IM-01", "IM-02", "IM-03", "CNC-01", "CNC-02"]
LINES = 2 * CHUNK_LINES + 5_000  # three chunks: the kill lands in the second


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        # The command name (in parentheses) may hold spaces: the parent pid follows it.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append((int(entry), cmdline.decode(errors="replace")))
    return out


def _storer_pid(replay_pid: int) -> int:
    """The replay's storing child (multiprocessing's spawn, not its resource tracker)."""
    found = [p for p, cmd in _children(replay_pid) if "spawn_main" in cmd]
    assert len(found) == 1, _children(replay_pid)
    return found[0]


def _waiting_on_append_lock(url: str) -> int:
    return count(
        url,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND objid::bigint = %s",
        (_APPEND_LOCK,),
    )


@pytest.mark.parametrize("live", [False, True], ids=["own-dataflow", "into-a-live-dataflow"])
def test_killed_storer_stops_the_replay_and_a_rerun_completes_it(
    db_url: str, ref_db_url: str, tmp_path: Path, live: bool
) -> None:
    """`live`: a dataflow already runs (the replay only stores the file and waits for it)."""
    path = write_jsonl(tmp_path / "big.jsonl", random_events(MACHINES, LINES, seed=8))
    env = mesflow_env(db_url, tmp_path / "var")
    flow = None
    if live:
        flow = Mesflow("run", "dataflow", env=env, log=tmp_path / "dataflow.log")
        wait_until(
            lambda: "following the ingest log" in flow.output() or not flow.alive(),
            60,
            "the live dataflow",
        )
        assert flow.alive(), flow.output()

    with psycopg.connect(db_url, autocommit=True) as lock:
        # Hold the append lock: the storer reads and stages its first chunk, then waits.
        lock.execute("BEGIN")
        lock.execute("SELECT pg_advisory_xact_lock(%s)", (_APPEND_LOCK,))
        run = Mesflow("replay", "--quiet", str(path), env=env, log=tmp_path / "replay.log")
        wait_until(lambda: _waiting_on_append_lock(db_url) == 1, 60, "the first chunk")
        # Let that chunk through (the waiting storer is first in the lock's queue) and take
        # the lock again behind it: the storer stops in the second chunk's transaction.
        lock.execute("COMMIT")
        lock.execute("BEGIN")
        lock.execute("SELECT pg_advisory_xact_lock(%s)", (_APPEND_LOCK,))
        assert count(db_url, "SELECT count(*) FROM ingest_log") == CHUNK_LINES
        wait_until(lambda: _waiting_on_append_lock(db_url) == 1, 60, "the second chunk")
        assert run.alive()
        os.kill(_storer_pid(run.pid), signal.SIGKILL)
        killed = time.monotonic()
        try:
            code = run.proc.wait(60)
        except subprocess.TimeoutExpired:
            run.kill9()
            raise AssertionError(f"the replay waits for its dead storer:\n{run.output()}") from None
        lock.execute("COMMIT")
    took = time.monotonic() - killed
    out = run.output()
    assert code == 1, out
    assert "Traceback" not in out and "panicked" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: replay of big.jsonl stopped: the storing process was killed by SIGKILL "
        f"without a report; the first {CHUNK_LINES} lines of the file are in the ingest log. "
        "Run the same replay again: lines already stored are skipped (deduplicated), so it "
        "continues safely"
    ], out
    assert took < 30, took
    # The killed transaction left nothing behind.
    assert count(db_url, "SELECT count(*) FROM ingest_log") == CHUNK_LINES

    again = Mesflow("replay", "--quiet", str(path), env=env, log=tmp_path / "again.log")
    assert again.proc.wait(300) == 0, again.output()
    assert f"big.jsonl: {LINES} events read," in again.output()
    assert f"{CHUNK_LINES} already in the log (skipped)" in again.output(), again.output()
    # Every line once in the log, and the figures of one uninterrupted run over it.
    assert count(db_url, "SELECT count(DISTINCT source) FROM ingest_log") == LINES
    assert count(db_url, "SELECT count(*) FROM ingest_log") == LINES
    if flow is not None:
        assert flow.terminate() == 0, flow.output()
    # Inspections due by time: a live flow decides them by the wall clock (these events
    # are days old, so every patrol of a run left open is overdue), a replay at its last
    # event time: left out live (helpers.WALL_CLOCK_DECIDED), the rest compared.
    want = clean_replay(db_url, ref_db_url, tmp_path / "rec-ref", live=live)
    got = table_snapshot(db_url, live=live)
    assert not diff_snapshots(got, want), diff_snapshots(got, want)
    assert count(db_url, "SELECT sum(good_total) FROM machine_status") > 0


def _exit_with(code: int) -> None:
    os._exit(code)


def _report_then_exit(results: mp.Queue[object]) -> None:
    results.put(_Stored(read=3, new=3, first_seq=1, last_seq=3, log_end=7))


def _report_failure(results: mp.Queue[object]) -> None:
    results.put("storing failed: OperationalError: the connection is lost")


@pytest.mark.parametrize(
    ("child", "failure"),
    [
        (_exit_with, "the storing process exited with code 3 without a report"),
        (_report_then_exit, None),
        (_report_failure, "storing failed: OperationalError: the connection is lost"),
    ],
)
def test_target_tells_a_dead_storer_from_a_finished_one(child: object, failure: str | None) -> None:
    ctx = mp.get_context("spawn")
    results: mp.Queue[object] = ctx.Queue()
    args = (3,) if child is _exit_with else (results,)
    proc = ctx.Process(target=child, args=args, daemon=True)  # type: ignore[arg-type]
    target = _Target(results, proc)
    assert target() is None  # not started yet: nothing known
    proc.start()
    proc.join(30)
    deadline = time.monotonic() + 10
    while (end := target()) is None:
        assert time.monotonic() < deadline, "a dead storer must end the wait"
        time.sleep(0.05)
    assert target.failure == failure
    if failure is None:
        assert end == 7
    else:
        assert end == 0  # the dataflow's input ends at its next read
        assert incomplete_message(Path("a.jsonl"), failure, 0).startswith(
            f"replay of a.jsonl stopped: {failure}; the first 0 lines"
        )
