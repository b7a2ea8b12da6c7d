"""A machine's tracker as Bytewax snapshot bytes, at a cost that follows what changed.

Bytewax snapshots every machine touched in an epoch (live: every 2 s), and a tracker
carries 48 hours of history: its state intervals are most of its pickle (275 intervals,
two thirds of 33 KB, for a machine of the demo plant after a day). Almost none of them
change between two snapshots: only the open one, the one just closed, and a stop whose
reason an operator reported.

So the intervals are encoded per hour of their start, and an hour's encoding is reused
while none of its intervals changed. What changed is known from the rows the tracker
emitted: every field of an interval (but its planned-time cache) is a column of its
IntervalRow, and a change it did not emit would be a wrong figure on the boards already.
`note()` takes those rows; an hour is encoded again when one of its intervals was written
or deleted, or when the hour's intervals are not the ones encoded (history forgotten).
A rebuilt tracker (late data) is a new object: nothing cached is reused for it.

Intervals, hour buckets and reason reports pickle as tuples (copyreg, below): slotted dataclasses pickle
through a Python `__getstate__` per object, twice as slow (measured: docs/performance.md).

Pure: no Bytewax, no I/O (streams/dataflow.py calls it from MachineLogic).
"""

from __future__ import annotations

import copyreg
import dataclasses
import operator
import pickle
from collections.abc import Iterable
from typing import Any

from streams.buckets import Bucket
from streams.hour_clock import HOUR_US, to_us
from streams.machine_tracker import Interval, MachineSpec, MachineTracker, Report
from streams.records import IntervalDelete, IntervalRow

FORMAT = 2  # (FORMAT, spec bytes, the rest of the state, interval chunks); 1: a pickled tracker
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
    at each snapshot. `encoded` counts the intervals encoded (not reused) so far."""

    __slots__ = ("_changed", "_chunks", "_spec", "_tracker", "encoded")

    def __init__(self) -> None:
        self._tracker: MachineTracker | None = None
        self._chunks: dict[int, Chunk] = {}  # by hour of the intervals' start
        self._changed: set[int] = set()  # hours with an interval written since the last encode
        self._spec: tuple[MachineSpec, bytes] | None = None
        self.encoded = 0

    def note(self, rows: Iterable[Any]) -> None:
        changed = self._changed
        for r in rows:
            t = type(r)
            if t is IntervalRow or t is IntervalDelete:
                changed.add(to_us(r.start_ts) // HOUR_US)

    def encode(self, tracker: MachineTracker) -> bytes:
        if tracker.dirty.intervals or tracker.dirty.deleted:
            # Not flushed yet (never so after a step: MachineLogic flushes every batch): the
            # plain pickle keeps the dirty set's references into the intervals.
            self._tracker = None
            return pickle.dumps(tracker, protocol=_PROTOCOL)
        if tracker is not self._tracker:
            self._tracker, self._chunks = tracker, {}
        state = tracker.__getstate__()
        intervals = tracker.intervals
        del state["intervals"]
        spec: MachineSpec = tracker.spec
        del state["spec"]
        cached = self._spec
        if cached is None or cached[0] is not spec:
            cached = self._spec = (spec, pickle.dumps(spec, protocol=_PROTOCOL))
        old, changed = self._chunks, self._changed
        chunks: dict[int, Chunk] = {}
        starts = [iv.start for iv in intervals]  # sorted
        i, n = 0, len(starts)
        while i < n:
            first = starts[i]
            hour = first // HOUR_US
            c = old.get(hour)
            if c is not None and hour not in changed and c[1] == first:
                j = i + c[0]  # the same intervals as encoded: reuse (a check per hour)
                if j <= n and starts[j - 1] == c[2] and (j == n or starts[j] // HOUR_US != hour):
                    chunks[hour] = c
                    i = j
                    continue
            j = i + 1
            while j < n and starts[j] // HOUR_US == hour:
                j += 1
            fields = [
                (iv.start, iv.end, iv.state, iv.state_reason, iv.work_order, iv.reason)
                for iv in intervals[i:j]
            ]
            chunks[hour] = (j - i, first, starts[j - 1], pickle.dumps(fields, protocol=_PROTOCOL))
            self.encoded += j - i
            i = j
        self._chunks, self._changed = chunks, set()
        return pickle.dumps(
            (FORMAT, cached[1], state, [c[3] for c in chunks.values()]), protocol=_PROTOCOL
        )


def decode(data: bytes) -> MachineTracker | None:
    """A tracker from `encode()`'s bytes, or from a plain pickle (older snapshots)."""
    obj = pickle.loads(data)
    if obj is None or isinstance(obj, MachineTracker):
        return obj
    fmt, spec, state, chunks = obj
    assert fmt == FORMAT, f"unknown tracker snapshot format {fmt}"
    intervals: list[Interval] = []
    for chunk in chunks:
        for fields in pickle.loads(chunk):
            iv = Interval(*fields)
            iv.reset_cache()  # the planned-time cache is rebuilt on use
            intervals.append(iv)
    state["spec"] = pickle.loads(spec)
    state["intervals"] = intervals
    tracker = MachineTracker.__new__(MachineTracker)
    tracker.__setstate__(state)
    return tracker
