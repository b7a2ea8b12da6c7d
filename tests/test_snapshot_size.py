"""Snapshots of a machine cost what changed since the last one, and restore exactly
(streams/tracker_snapshot.py). Pure: the tracker and the encoder, no Bytewax, no database;
restarts through the real dataflow are in tests/test_guarantees_dataflow.py."""

from __future__ import annotations

import json
import pickle
import random
import time
from array import array
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow.events import parse_event
from mesflow.plant import PlantConfig, load_plant_config
from mesflow.settings import REPO_ROOT
from streams.hour_clock import HOUR_US, to_us
from streams.machine_tracker import MachineSpec, MachineTracker
from streams.records import IntervalRow
from streams.tracker_snapshot import PIECE, TrackerSnapshots, decode

PLANT: PlantConfig = load_plant_config(REPO_ROOT / "config" / "plant.example.yaml")
T0 = datetime.fromisoformat("2026-11-19T06:00:00+08:00")
REASONS = ["heater_fault", "no_operator", "mold_change", "material_shortage"]


def history(hours: float, seed: int = 1) -> list[Any]:
    """A busy machine: a state change every few minutes (stops with reasons, some reported
    later by an operator), a count every 4 s: many intervals and a full lateness buffer."""
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    t, end = 0.0, hours * 3600
    while t < end:
        run_s = rnd.uniform(120, 600)
        out.append({"type": "state", "state": "running", "ts": t})
        k = t + 4
        while k < t + run_s:
            out.append({"type": "count", "good": 1, "ts": k})
            k += 4
        t += run_s
        state = rnd.choice(["idle", "down", "idle"])
        stop = {"type": "state", "state": state, "ts": t}
        if state == "down":
            stop["reason"] = rnd.choice(REASONS)
        out.append(stop)
        if state == "idle" and rnd.random() < 0.5:  # reported while the stop lasts
            out.append(
                {"type": "report", "kind": "downtime_reason", "reason": rnd.choice(REASONS),
                 "ts": t + 20, "at": t + 1}
            )  # fmt: skip
        t += rnd.uniform(30, 400)
    return [_event(e) for e in out]


def _event(e: dict[str, Any]) -> Any:
    e = {**e, "machine": "IM-01", "ts": (T0 + timedelta(seconds=e["ts"])).isoformat()}
    if "at" in e:
        e["at"] = (T0 + timedelta(seconds=e["at"])).isoformat()
    return parse_event(json.dumps(e))


def reason_for_an_old_stop(tr: MachineTracker, minutes_after: float) -> Any | None:
    """An operator's late reason for the first stop of the history that is still kept."""
    stop = next((iv for iv in tr.intervals if iv.state == "idle"), None)
    if stop is None or tr.last_ts is None:
        return None
    at = datetime.fromtimestamp(stop.start / 1e6, T0.tzinfo)
    ts = datetime.fromtimestamp(tr.last_ts / 1e6, T0.tzinfo) + timedelta(minutes=minutes_after)
    reason = next(r for r in REASONS if r != stop.reason)  # a change
    body = {"type": "report", "kind": "downtime_reason", "machine": "IM-01",
            "reason": reason, "ts": ts.isoformat(), "at": at.isoformat()}  # fmt: skip
    return parse_event(json.dumps(body))


def feed(
    tr: MachineTracker, snaps: TrackerSnapshots, events: list[Any], start: int, batch: int = 50
) -> list[Any]:
    """Apply as MachineLogic does: a flush per batch, every row list noted."""
    rows: list[Any] = []
    for i in range(0, len(events), batch):
        for k, ev in enumerate(events[i : i + batch]):
            tr.apply(start + i + k, ev)
        out = tr.flush()
        snaps.note(out)
        rows.extend(out)
    return rows


def tracker() -> MachineTracker:
    return MachineTracker(MachineSpec.from_plant(PLANT, "IM-01"))


def canonical(tr: MachineTracker) -> tuple[Any, Any]:
    """What a snapshot must keep, by value: the intervals' fields (not their planned-time
    cache) and the rest of the state, as a plain pickle restores it (caches dropped)."""
    again: MachineTracker = pickle.loads(pickle.dumps(tr))
    ivs = [(i.start, i.end, i.state, i.state_reason, i.work_order, i.reason) for i in tr.intervals]
    state = again.__getstate__()
    del state["intervals"]
    return ivs, plain(state)


def plain(x: Any) -> Any:
    """A value's content as nested lists (sets and dicts in a fixed order): equal content,
    equal result, whatever objects are shared."""
    if isinstance(x, dict):
        return ["dict", sorted(([plain(k), plain(v)] for k, v in x.items()), key=repr)]
    if isinstance(x, set | frozenset):
        return ["set", sorted((plain(v) for v in x), key=repr)]
    if isinstance(x, list | tuple):
        return [type(x).__name__, [plain(v) for v in x]]
    if isinstance(x, array):
        return ["array", x.tolist()]
    if hasattr(x, "__dict__") or hasattr(x, "__slots__"):
        names = list(getattr(x, "__dict__", {})) + [
            n for c in type(x).__mro__ for n in getattr(c, "__slots__", ())
        ]
        return [type(x).__name__, [[n, plain(getattr(x, n, None))] for n in sorted(set(names))]]
    return x


def best_of(n: int, fn: Any) -> float:
    best = float("inf")
    for _ in range(n):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def test_after_one_event_a_snapshot_encodes_one_piece_not_the_history() -> None:
    events = history(40)
    tr, snaps = tracker(), TrackerSnapshots()
    feed(tr, snaps, events[:-1], 1)
    assert len(tr.intervals) > 200  # 40 hours of history kept (48 h horizon)
    full = snaps.encode(tr)
    assert snaps.encoded == len(tr.intervals)
    rows = feed(tr, snaps, events[-1:], len(events))
    before = snaps.encoded
    small = snaps.encode(tr)
    # Only the pieces (an hour, at most PIECE intervals) of the intervals the event changed
    # are encoded again.
    hours = {to_us(r.start_ts) // HOUR_US for r in rows if type(r) is IntervalRow}
    assert 1 <= len(hours) <= 2
    again = [iv for iv in tr.intervals if iv.start // HOUR_US in hours]
    assert len(again) <= 2 * PIECE
    assert snaps.encoded - before == len(again) < 0.05 * len(tr.intervals)
    assert abs(len(small) - len(full)) < 2_000  # the bytes still hold the whole state
    # Time: a snapshot after one event costs a fraction of encoding it all again (or of
    # the plain pickle the dataflow made before).
    incremental = best_of(7, lambda: snaps.encode(tr))
    fresh = best_of(7, lambda: TrackerSnapshots().encode(tr))
    plain_pickle = best_of(7, lambda: pickle.dumps(tr, protocol=pickle.HIGHEST_PROTOCOL))
    print(f"snapshot CPU: incremental {incremental * 1e6:.0f} us, all encoded "
          f"{fresh * 1e6:.0f} us, plain pickle {plain_pickle * 1e6:.0f} us; {len(small):,} bytes, "
          f"plain {len(pickle.dumps(tr)):,}; {len(tr.intervals)} intervals")  # fmt: skip
    assert incremental < 0.6 * fresh, (incremental, fresh)
    assert incremental < 0.5 * plain_pickle, (incremental, plain_pickle)


def test_a_reason_for_an_old_stop_encodes_that_piece_again() -> None:
    events = history(30, seed=2)
    tr, snaps = tracker(), TrackerSnapshots()
    feed(tr, snaps, events, 1)
    snaps.encode(tr)
    late_reason = reason_for_an_old_stop(tr, 1)
    assert late_reason is not None
    stop = next(iv.start for iv in tr.intervals if iv.state == "idle")
    feed(tr, snaps, [late_reason], len(events) + 1)
    restored = decode(snaps.encode(tr))
    assert restored is not None
    assert canonical(restored) == canonical(tr)
    assert next(iv for iv in restored.intervals if iv.start == stop).reason == late_reason.reason


@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=2_999), min_size=1, max_size=4),
    late=st.booleans(),
    seed=st.integers(min_value=0, max_value=1_000),
    batch=st.sampled_from([7, 50, 400]),
)
def test_a_restored_tracker_goes_on_exactly_as_the_original(
    cuts: list[int], late: bool, seed: int, batch: int
) -> None:
    events = history(12, seed=seed)[:3_000]
    tr, snaps = tracker(), TrackerSnapshots()
    done = 0
    data = b""
    for cut in sorted(set(cuts)):
        feed(tr, snaps, events[done:cut], done + 1, batch)
        done = cut
        report = reason_for_an_old_stop(tr, 0.5) if late else None
        if report is not None:
            feed(tr, snaps, [report], 10_000 + done)
        data = snaps.encode(tr)  # each after the last: the incremental path
    restored = decode(data)
    assert restored is not None
    assert canonical(restored) == canonical(tr)
    # Both go on with the rest of the history: the same rows, the same state.
    rest = events[done:]
    assert feed(restored, TrackerSnapshots(), rest, done + 1, batch) == feed(
        tr, snaps, rest, done + 1, batch
    )
    assert canonical(restored) == canonical(tr)


def test_snapshots_of_the_earlier_format_still_load() -> None:
    tr = tracker()
    feed(tr, TrackerSnapshots(), history(2), 1)
    old = pickle.dumps(tr, protocol=pickle.HIGHEST_PROTOCOL)  # before streams/tracker_snapshot
    restored = decode(old)
    assert restored is not None
    assert canonical(restored) == canonical(tr)
    assert decode(pickle.dumps(None)) is None


def late_counts(tr: MachineTracker, n: int) -> list[Any]:
    """`n` counts up to a minute behind the tracker's clock, within the lateness: kept as
    parts (in-order counts go to runs)."""
    assert tr.last_ts is not None
    last_s = (tr.last_ts - to_us(T0)) / 1e6
    return [_event({"type": "count", "good": 1, "ts": last_s - 60 + i * 60 / n}) for i in range(n)]


def test_snapshots_of_formats_2_and_3_still_load() -> None:
    """Snapshots written before the state events and parts went in pieces (format 4)."""
    tr = tracker()
    events = history(2)
    feed(tr, TrackerSnapshots(), events, 1)
    feed(tr, TrackerSnapshots(), late_counts(tr, 5), len(events) + 1)
    assert tr.marks and tr.parts
    _, spec, state, chunks, marks, parts = pickle.loads(TrackerSnapshots().encode(tr))
    state = {**state, "marks": list(tr.marks), "parts": list(tr.parts)}
    for old in (2, 3):
        restored = decode(pickle.dumps((old, spec, state, chunks)))
        assert restored is not None and canonical(restored) == canonical(tr)
    with pytest.raises(ValueError, match="unknown tracker snapshot format 5"):
        decode(pickle.dumps((5, spec, state, chunks, marks, parts)))


def test_state_events_and_parts_are_pickled_where_they_changed() -> None:
    """A busy machine's lateness window: a snapshot after one more count pickles the
    newest piece of its parts and state events, not the window (which it restores whole)."""
    tr = tracker()
    events = history(3)
    snaps = TrackerSnapshots()
    feed(tr, snaps, events[:-1], 1)
    feed(tr, snaps, late_counts(tr, 30), len(events))
    snaps.encode(tr)
    window = len(tr.marks) + len(tr.parts)
    assert window > 20
    before = snaps._marks.encoded + snaps._parts.encoded
    feed(tr, snaps, events[-1:], len(events) + 30)
    restored = decode(snaps.encode(tr))
    again = snaps._marks.encoded + snaps._parts.encoded - before
    assert again < window / 4, (again, window)
    assert restored is not None and canonical(restored) == canonical(tr)
