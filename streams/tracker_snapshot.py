"""A machine's tracker as Bytewax snapshot bytes, at a cost that follows what changed.

Bytewax snapshots every machine touched in an epoch (live: every 2 s), and a tracker
carries 48 hours of history: its state intervals are most of its pickle (275 intervals,
two thirds of 33 KB, for a machine of the demo plant after a day). Almost none of them
change between two snapshots: only the open one, the one just closed, and a stop whose
reason an operator reported.

So the intervals are encoded in pieces (an hour of their start, at most PIECE intervals),
and a piece's encoding is reused while none of its intervals changed. What changed is known from the rows the tracker
emitted: every field of an interval (but its planned-time cache) is a column of its
IntervalRow, and a change it did not emit would be a wrong figure on the boards already.
`note()` takes those rows; a piece is encoded again when one of its intervals was written
or deleted, or when the piece's intervals are not the ones encoded (history forgotten).
A rebuilt tracker (late data) is a new object: nothing cached is reused for it.

The state events and parts of the lateness window (`marks`, `parts`: a busy press keeps
hundreds of each for the 300 s of allowed lateness) go in pieces of 10 s whose pickles are
reused while their items are the same (streams/snapshot_pieces.py). Before, they were
pickled whole at every snapshot: with 200 machines at 10,000 events/s, 250 ms of the
flow's thread every 10 s once the window was full, the live p99's slowest seconds.

Intervals, hour buckets and reason reports pickle as tuples (copyreg, below): slotted dataclasses pickle
through a Python `__getstate__` per object, twice as slow (measured: docs/performance.md).

Pure: no Bytewax, no I/O (streams/dataflow.py calls it from MachineLogic).
"""

from __future__ import annotations

import copyreg
import dataclasses
import operator
import pickle
import zlib
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from typing import Any

from mesflow.events import CountEvent
from streams.buckets import Bucket
from streams.hour_clock import HOUR_US, to_us
from streams.machine_tracker import Interval, MachineSpec, MachineTracker, Report, Run
from streams.records import IntervalDelete, IntervalRow
from streams.snapshot_pieces import ListPieces, join

# Intervals are encoded in pieces of an hour of their start and at most PIECE intervals: a
# change re-encodes its piece only (a press changing state every second has thousands in
# the open hour; a usual one a few, one piece an hour).
PIECE = 64
# State events and parts of the lateness window (`marks`, `parts`) go in pieces of 10 s of
# their times (streams/snapshot_pieces.py): a snapshot pickles their newest and oldest.
LIST_PIECE_US = 10_000_000

# (FORMAT, spec bytes, the rest of the state, interval chunks, mark pieces, part pieces),
# lean or not (`runs_log` in the state says). Read too: 3, the same without list pieces and
# lean (its part times left in the log: a number an older mesflow refused instead of
# resuming without them); 2, not lean; 1, a pickled tracker.
FORMAT = 4
_PROTOCOL = pickle.HIGHEST_PROTOCOL


def _register(cls: type) -> None:
    get = operator.attrgetter(*[f.name for f in dataclasses.fields(cls)])

    def reduce(obj: Any) -> tuple[type, tuple[Any, ...]]:
        return cls, get(obj)

    copyreg.pickle(cls, reduce)


# Every pickle of them, here and in the late-data checkpoints: the same objects back.
_register(Interval)
_register(Bucket)
_register(Report)

Chunk = tuple[int, int, int, bytes]  # (intervals, first start, last start, their pickle)


class TrackerSnapshots:
    """One machine's snapshot encoder: `note()` every row list the tracker emits, `encode()`
    at each snapshot. `encoded` counts the intervals encoded (not reused) so far.

    `lean`: leave the lateness buffer's in-order part times (`runs`, most of a busy
    machine's state: 15,000 times after 300 s at 50 parts/s) out, naming instead the log
    range they are in (`lean_runs`); the resume reads them back (`restore_runs`). Only
    where the log is at hand (the dataflow with its LateStore)."""

    __slots__ = ("_changed", "_chunks", "_marks", "_parts", "_spec", "_tracker", "encoded", "lean")

    def __init__(self, lean: bool = False) -> None:
        self._tracker: MachineTracker | None = None
        self._chunks: dict[int, Chunk] = {}  # by their first interval's start
        self._changed: set[int] = set()  # starts of the intervals written since the last encode
        self._spec: tuple[MachineSpec, bytes] | None = None
        self._marks = ListPieces(LIST_PIECE_US)
        self._parts = ListPieces(LIST_PIECE_US)
        self.encoded = 0
        self.lean = lean

    def note(self, rows: Iterable[Any]) -> None:
        changed = self._changed
        for r in rows:
            t = type(r)
            if t is IntervalRow or t is IntervalDelete:
                changed.add(to_us(r.start_ts))

    def encode(self, tracker: MachineTracker) -> bytes:
        if tracker.dirty.intervals or tracker.dirty.deleted:
            # Not flushed yet (never so after a step: MachineLogic flushes every batch): the
            # plain pickle keeps the dirty set's references into the intervals.
            self._tracker = None
            return pickle.dumps(tracker, protocol=_PROTOCOL)
        if tracker is not self._tracker:
            self._tracker, self._chunks = tracker, {}
            self._marks.forget()
            self._parts.forget()
        state = tracker.__getstate__()
        if self.lean:
            where = lean_runs(tracker)
            if where is not None:
                state["runs"] = []
                state["runs_log"] = where
        intervals = tracker.intervals
        del state["intervals"]
        del state["marks"], state["parts"]
        marks = self._marks.encode(tracker.marks)
        parts = self._parts.encode(tracker.parts)
        spec: MachineSpec = tracker.spec
        del state["spec"]
        cached = self._spec
        if cached is None or cached[0] is not spec:
            cached = self._spec = (spec, pickle.dumps(spec, protocol=_PROTOCOL))
        old = self._chunks
        changed = sorted(self._changed)
        chunks: dict[int, Chunk] = {}
        # Only the chunks' ends are read for a reused chunk: a cost per chunk, not per
        # interval (a busy press keeps thousands for its 48 hours).
        i, n = 0, len(intervals)
        while i < n:
            first = intervals[i].start
            hour = first // HOUR_US
            c = old.get(first)
            if c is not None:
                j = i + c[0]  # the same intervals as encoded, none written since: reuse
                last = c[2]
                if (
                    j <= n
                    and intervals[j - 1].start == last
                    and (c[0] == PIECE or j == n or intervals[j].start // HOUR_US != hour)
                    and not _written(changed, first, last)
                ):
                    chunks[first] = c
                    i = j
                    continue
            j = i + 1
            while j < n and j - i < PIECE and intervals[j].start // HOUR_US == hour:
                j += 1
            fields = [
                (iv.start, iv.end, iv.state, iv.state_reason, iv.work_order, iv.reason)
                for iv in intervals[i:j]
            ]
            # Compressed once per piece (reused pieces keep theirs): the states and reasons
            # repeat, a third of the bytes Bytewax writes at every snapshot.
            data = zlib.compress(pickle.dumps(fields, protocol=_PROTOCOL), 1)
            chunks[first] = (j - i, first, intervals[j - 1].start, data)
            self.encoded += j - i
            i = j
        self._chunks, self._changed = chunks, set()
        return pickle.dumps(
            (FORMAT, cached[1], state, [c[3] for c in chunks.values()], marks, parts),
            protocol=_PROTOCOL,
        )


def _written(changed: list[int], first: int, last: int) -> bool:
    """Whether an interval starting in [first, last] was written (`changed` sorted)."""
    k = bisect_left(changed, first)
    return k < len(changed) and changed[k] <= last


def lean_runs(tracker: MachineTracker) -> tuple[int, int, int, int] | None:
    """Where the tracker's in-order part times are in the log, for a snapshot without them:
    (after seq, up to seq, earliest time, how many); None: keep them in the snapshot (no
    mark old enough yet, a rebuild pending, or nothing to leave out).

    Every count logged at or before a mark's seq is at or before the mark's clock, so the
    counts at or after the earliest kept time were all logged after the newest mark
    before that time. A cost per run, not per part time."""
    runs = tracker.runs
    if not runs or tracker.late_from is not None or tracker.late_new:
        return None
    n, first = 0, None
    for _, ts in runs:
        n += len(ts)
        if ts and (first is None or ts[0] < first):
            first = ts[0]
    if first is None:
        return None
    after = None
    for seq, clock in tracker.seq_marks:
        if clock >= first:
            break
        after = seq
    if after is None:
        return None
    return after, tracker.seq, first, n


def restore_runs(tracker: MachineTracker, events: Iterable[tuple[int, Any]]) -> bool:
    """Put back the part times a lean snapshot left out, from the machine's events in
    its `runs_log` range (log order, parsed as the dataflow does): every count at or after
    the earliest time that is not a kept part (`parts`: counts that came out of order),
    classified as the tracker classifies now (runs are kept reclassified). False, the
    tracker unchanged, if they are not as many as encoded (the caller rebuilds the
    machine from a checkpoint instead)."""
    where = tracker.runs_log
    assert where is not None
    after, upto, first, n = where
    found: list[tuple[int, int, int, int]] = []  # (t, seq, good, scrap)
    for seq, ev in events:
        if after < seq <= upto and type(ev) is CountEvent:
            t = to_us(ev.ts)
            if t >= first:
                found.append((t, seq, ev.good, ev.scrap))
    kept = Counter((p[0], p[3], p[4]) for p in tracker.parts if p[2] == 0 and p[5] is None)
    found.sort()
    times: list[tuple[int, int, int]] = []
    for t, _, good, scrap in found:
        key = (t, good, scrap)
        if kept[key] > 0:
            kept[key] -= 1
        else:
            times.append(key)
    if len(times) != n:
        return False
    runs: list[Run] = []
    for t, good, scrap in times:
        run_key = (good, scrap, tracker._classify(t))
        if runs and runs[-1][0] == run_key:
            runs[-1][1].append(t)
        else:
            runs.append((run_key, array("q", (t,))))
    tracker.runs = runs
    tracker.runs_log = None
    return True


def decode(data: bytes) -> MachineTracker | None:
    """A tracker from `encode()`'s bytes, or from a plain pickle (older snapshots)."""
    obj = pickle.loads(data)
    if obj is None or isinstance(obj, MachineTracker):
        return obj
    fmt = obj[0]
    if fmt == FORMAT:
        _, spec, state, chunks, marks, parts = obj
        state["marks"] = join(marks)
        state["parts"] = join(parts)
    elif fmt in (2, 3):
        _, spec, state, chunks = obj
    else:
        raise ValueError(f"unknown tracker snapshot format {fmt} (from a newer mesflow?)")
    intervals: list[Interval] = []
    for chunk in chunks:
        # zlib (0x78) since the pieces are compressed; a pickle (0x80) before.
        for fields in pickle.loads(zlib.decompress(chunk) if chunk[:1] == b"x" else chunk):
            iv = Interval(*fields)
            iv.reset_cache()  # the planned-time cache is rebuilt on use
            intervals.append(iv)
    state["spec"] = pickle.loads(spec)
    state["intervals"] = intervals
    tracker = MachineTracker.__new__(MachineTracker)
    tracker.__setstate__(state)
    return tracker
