"""Lean snapshots: a machine's snapshot leaves its lateness buffer's part times in the
ingest log, and a resume reads them back (streams/tracker_snapshot.py `lean_runs`,
`restore_runs`). Pure here: the tracker, the encoder and the events as the log would give
them; the restart through the real dataflow and database is the last test."""

from __future__ import annotations

import pickle
import random
import re
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.hour_clock import to_us
from streams.machine_tracker import MachineTracker
from streams.rebuild import CheckpointInfo, lost_parts_late_from, rebuild_candidates
from streams.tracker_snapshot import FORMAT, TrackerSnapshots, decode, lean_runs, restore_runs
from tests.helpers import (
    SHANGHAI,
    caught_up,
    clean_replay,
    count,
    diff_snapshots,
    feed,
    mesflow_env,
    start_dataflow,
    table_snapshot,
    wait_until,
)
from tests.test_snapshot_size import canonical, history, plain, tracker

Keyed = tuple[int, Any]


def arrival_order(events: list[Any], seed: int, share: float = 0.1) -> list[Any]:
    """The events as a plant delivers them: a share arrive up to 200 s of event time late
    (within the allowed lateness of 300 s: applied out of order, parts reclassified)."""
    rnd = random.Random(seed)
    keyed = []
    for i, ev in enumerate(events):
        delay = rnd.uniform(0, 200e6) if rnd.random() < share else 0.0
        keyed.append((to_us(ev.ts) + delay, i, ev))
    return [ev for _, _, ev in sorted(keyed, key=lambda k: (k[0], k[1]))]


def apply(tr: MachineTracker, snaps: TrackerSnapshots, log: list[Keyed], batch: int) -> list[Any]:
    rows: list[Any] = []
    for i in range(0, len(log), batch):
        for seq, ev in log[i : i + batch]:
            tr.apply(seq, ev)
        out = tr.flush()
        snaps.note(out)
        rows.extend(out)
    return rows


def part_times(tr: MachineTracker) -> Counter[Any]:
    return Counter((t, key) for key, ts in tr.runs for t in ts)


def without_runs(tr: MachineTracker) -> Any:
    ivs, (_, items) = canonical(tr)  # plain(): ["dict", [[key, value], ...]]
    return ivs, [kv for kv in items if kv[0] not in ("runs", "runs_log")]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    cut=st.floats(0.3, 0.9),
    batch=st.sampled_from([1, 7, 50]),
    share=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_a_lean_snapshot_resumes_exactly_as_the_original(
    seed: int, cut: float, batch: int, share: float
) -> None:
    events = arrival_order(history(3, seed=seed)[:1_500], seed, share)
    log = list(enumerate(events, start=1))
    k = int(len(log) * cut)
    tr, snaps = tracker(), TrackerSnapshots(lean=True)
    apply(tr, snaps, log[:k], batch)
    restored = decode(snaps.encode(tr))
    assert restored is not None
    if restored.runs_log is not None:
        assert not restored.runs
        # The whole log of the machine, also what came after the snapshot: the range counts.
        assert restore_runs(restored, log)
    assert restored.runs_log is None
    assert part_times(restored) == part_times(tr)
    assert without_runs(restored) == without_runs(tr)
    # Both go on with the rest (late parts reclassified against the restored times too).
    assert apply(restored, TrackerSnapshots(), log[k:], batch) == apply(tr, snaps, log[k:], batch)
    assert part_times(restored) == part_times(tr)


def busy_log(seed: int = 3, share: float = 0.1) -> list[Keyed]:
    return list(enumerate(arrival_order(history(4, seed=seed), seed, share), start=1))


def test_the_lean_snapshot_is_small_and_names_the_log_range() -> None:
    log = busy_log()
    tr = tracker()
    apply(tr, TrackerSnapshots(), log, 20)
    where = lean_runs(tr)
    assert where is not None
    after, upto, first, n = where
    assert upto == tr.seq and n == sum(len(ts) for _, ts in tr.runs) > 0
    assert first == min(ts[0] for _, ts in tr.runs)
    # Every part time kept is logged after `after`, and the range is not the whole log.
    assert 0 < after < upto
    assert all(seq > after for seq, ev in log if ev.type == "count" and to_us(ev.ts) >= first)
    lean = TrackerSnapshots(lean=True).encode(tr)
    full = TrackerSnapshots().encode(tr)
    assert pickle.loads(full)[2]["runs"] and not pickle.loads(lean)[2]["runs"]
    # The lean one names where its part times are; a mesflow older than the format
    # refuses it rather than resume without them.
    assert pickle.loads(full)[0] == pickle.loads(lean)[0] == FORMAT
    assert pickle.loads(lean)[2]["runs_log"] == where
    assert pickle.loads(full)[2].get("runs_log") is None
    assert len(lean) < len(full)


def test_part_times_missing_from_the_log_are_refused_not_guessed() -> None:
    log = busy_log(share=0.0)  # in order: every count after the earliest time is a part time
    tr = tracker()
    apply(tr, TrackerSnapshots(), log, 20)
    restored = decode(TrackerSnapshots(lean=True).encode(tr))
    assert restored is not None and restored.runs_log is not None
    first = restored.runs_log[2]
    last_count = max(
        i for i, (_, ev) in enumerate(log) if ev.type == "count" and to_us(ev.ts) >= first
    )
    broken = log[:last_count] + log[last_count + 1 :]  # one count lost from the log
    assert not restore_runs(restored, broken)
    assert restored.runs_log is not None and not restored.runs  # unchanged: the caller rebuilds
    doubled = [*log, log[last_count]]  # or one too many (a log rewritten under it)
    assert not restore_runs(restored, doubled)
    assert restore_runs(restored, log)
    assert part_times(restored) == part_times(tr)


def test_a_fresh_machine_is_lean_from_its_first_event() -> None:
    log = busy_log()[:40]
    tr = tracker()
    apply(tr, TrackerSnapshots(), log, 40)
    assert lean_runs(tr) == (
        0,
        40,
        min(ts[0] for _, ts in tr.runs),
        sum(map(len, (r[1] for r in tr.runs))),
    )


def test_without_a_mark_old_enough_the_snapshot_keeps_the_times() -> None:
    log = busy_log()[:40]
    tr = tracker()
    apply(tr, TrackerSnapshots(), log, 40)
    tr.seq_marks = ((40, tr.last_ts or 0),)  # as resumed from a snapshot before the marks
    assert tr.runs and lean_runs(tr) is None
    restored = decode(TrackerSnapshots(lean=True).encode(tr))
    assert restored is not None and restored.runs_log is None
    assert part_times(restored) == part_times(tr)
    assert plain(restored.seq_marks) == plain(tr.seq_marks)


# -- through the real dataflow ----------------------------------------------------------------


def _machine_events(start: datetime, n: int, every_s: float) -> list[dict[str, Any]]:
    """IM-01 running, a part every `every_s`, a short stop every 40 parts."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        ts = (start + timedelta(seconds=i * every_s)).isoformat()
        if i % 40 == 0:
            state = "running" if (i // 40) % 2 == 0 else "idle"
            out.append(
                {"type": "state", "machine": "IM-01", "ts": ts, "state": state, "id": f"s{i}"}
            )
        else:
            out.append({"type": "count", "machine": "IM-01", "ts": ts, "good": 1, "id": f"c{i}"})
    return out


def test_a_restart_reads_the_part_times_back_and_late_events_still_reclassify_them(
    db_url: str, ref_db_url: str, tmp_path: Path
) -> None:
    start = datetime.now(SHANGHAI) - timedelta(minutes=30)
    events = _machine_events(start, 1200, 1.0)  # 20 minutes, a part a second
    env = mesflow_env(db_url, tmp_path / "var", MESFLOW_SNAPSHOT_SECONDS="0.5")
    proc = start_dataflow(env, tmp_path / "dataflow.log")
    try:
        for i in range(0, 900, 100):  # as a live plant sends: the machine's clock marks
            feed(db_url, events[i : i + 100])
            caught_up(db_url, proc)
        time.sleep(2)  # snapshots after the last batch
    finally:
        assert proc.terminate(timeout=20) == 0, proc.output()
    # While it is down: a planned stop reported late (within the allowed lateness) that
    # turns parts counted before the restart into parts made in planned time, then the rest.
    late_at = start + timedelta(seconds=850)
    late = [
        {"type": "state", "machine": "IM-01", "ts": late_at.isoformat(),
         "state": "planned_stop", "id": "late-stop"},
        {"type": "state", "machine": "IM-01", "ts": (late_at + timedelta(seconds=30)).isoformat(),
         "state": "running", "id": "late-back"},
    ]  # fmt: skip
    feed(db_url, [*late, *events[900:]])
    proc = start_dataflow(env, tmp_path / "dataflow2.log")
    try:
        caught_up(db_url, proc)
        assert re.search(r"IM-01: \d+ part times read back from the log", proc.output())
        assert "not in the log as recorded" not in proc.output()
    finally:
        assert proc.terminate(timeout=20) == 0, proc.output()
    got = table_snapshot(db_url, live=True)
    want = clean_replay(db_url, ref_db_url, tmp_path / "ref", live=True)
    assert not diff_snapshots(got, want), diff_snapshots(got, want)
    planned = count(
        db_url,
        "SELECT count(*) FROM machine_state_interval WHERE machine = 'IM-01' AND state = 'planned_stop'",
    )
    assert planned == 1


@given(
    lateness_s=st.integers(min_value=0, max_value=3600),
    offsets_ms=st.lists(st.integers(min_value=-7_200_000, max_value=7_200_000), max_size=20),
)
def test_a_rebuild_for_lost_part_times_admits_only_checkpoints_from_before_them(
    lateness_s: int, offsets_ms: list[int]
) -> None:
    """Pure: the rule the restart test below depends on, whatever the checkpoints' timing
    (there it is whatever the 0.5 s snapshots happened to hold). A checkpoint whose clock
    is at or past the earliest lost part may hold it; one before it cannot."""
    earliest_lost = to_us(datetime(2026, 11, 30, 8, tzinfo=SHANGHAI))
    lateness = lateness_s * 1_000_000
    cps = [CheckpointInfo(i, earliest_lost + ms * 1000) for i, ms in enumerate(offsets_ms)]
    admitted = rebuild_candidates(cps, lost_parts_late_from(earliest_lost, lateness), lateness)
    assert admitted == [c for c in cps if c.last_ts < earliest_lost]
    # A late event at the same time admits checkpoints up to the lateness past it.
    late = rebuild_candidates(cps, earliest_lost, lateness)
    assert late == [c for c in cps if c.last_ts <= earliest_lost + lateness]


def test_part_times_gone_from_the_log_rebuild_the_machine_from_its_checkpoint(
    db_url: str, ref_db_url: str, tmp_path: Path
) -> None:
    start = datetime.now(SHANGHAI) - timedelta(minutes=30)
    events = _machine_events(start, 1000, 1.0)
    env = mesflow_env(db_url, tmp_path / "var", MESFLOW_SNAPSHOT_SECONDS="0.5")
    proc = start_dataflow(env, tmp_path / "dataflow.log")
    try:
        for i in range(0, 900, 100):
            feed(db_url, events[i : i + 100])
            caught_up(db_url, proc)
        time.sleep(2)
    finally:
        assert proc.terminate(timeout=20) == 0, proc.output()
    # A part time the snapshot left in the log is gone from it (a log edited by hand, a
    # retention run gone wrong): the resume must not guess.
    with psycopg.connect(db_url, autocommit=True) as conn:
        gone = conn.execute(
            "DELETE FROM ingest_log WHERE convert_from(payload, 'UTF8')::jsonb->>'id' = 'c850'"
        ).rowcount
    assert gone == 1
    feed(db_url, events[900:])
    proc = start_dataflow(env, tmp_path / "dataflow2.log")
    try:
        caught_up(db_url, proc)
        wait_until(lambda: "merged late data" in proc.output(), timeout=30, what="the rebuild")
        caught_up(db_url, proc)
        assert "not in the log as recorded" in proc.output()
    finally:
        assert proc.terminate(timeout=20) == 0, proc.output()
    got = table_snapshot(db_url, live=True)
    want = clean_replay(db_url, ref_db_url, tmp_path / "ref", live=True)
    assert not diff_snapshots(got, want), diff_snapshots(got, want)
