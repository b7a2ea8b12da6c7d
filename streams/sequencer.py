"""The sequencer of a cluster: the plant-wide steps' inputs in log order (pure logic).

In a cluster each process reads its own log partitions at its own pace
(streams/log_source.py), so the steps that join several machines' rows (orders, labor,
inspections, quality) would see their inputs in an order that depends on those paces:
parts counted before their work order arrives, a sign-in judged late. The sequencer puts
them back in the order one process sees them: every input carries a sort key, (seq, rank,
machine, index) — the log seq it came from (a machine's rows: the last seq of the batch of
the machine's events that produced them), 0 for a validated input and 1 for a machine's
rows of the same seq, then the machine and the position within its producer's output — and
the sequencer releases them sorted by that key, but only up to the lowest read mark over
ALL log partitions: below it every partition has been read, so no input with a lower seq
can come later. The end of a replay (end of input) releases everything.

A single process reads every partition in one seq-ordered query and needs no sequencer.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple


class Keyed(NamedTuple):
    """One input of the plant-wide steps with its sort key."""

    seq: int
    rank: int  # 0: an input the validator passed; 1: a machine's rows
    machine: str
    pos: int
    item: Any


class Sequencer:
    """Buffers keyed inputs and releases them in key order up to the read watermark."""

    __slots__ = ("arrived", "buffer", "parts", "positions", "released_upto")

    def __init__(self, parts: Sequence[int]) -> None:
        self.parts = frozenset(parts)
        self.positions: dict[int, int] = {}  # part -> read up to (from the read marks)
        # A heap: a reader far ahead of another may leave many inputs waiting, and each
        # release takes only what is due (no scan of the whole buffer per batch).
        self.buffer: list[tuple[int, int, str, int, int, Any]] = []
        self.arrived = 0  # arrival count: equal keys keep their arrival order
        self.released_upto = -1  # every input with seq <= this has been released

    def watermark(self) -> int | None:
        """The lowest read position over every partition (None until each has a mark)."""
        if len(self.positions) < len(self.parts):
            return None
        return min(self.positions.values())

    def feed(
        self, inputs: Iterable[Keyed], marks: Iterable[Iterable[tuple[int, int]]]
    ) -> list[Any]:
        """Take a batch of inputs and read marks (each: (part, seq) pairs); the items now
        releasable, in order. The marks count after the inputs of the same batch: a
        reader's rows travel with or before its mark."""
        buf, n = self.buffer, self.arrived
        for k in inputs:
            heapq.heappush(buf, (k.seq, k.rank, k.machine, k.pos, n, k.item))
            n += 1
        self.arrived = n
        positions = self.positions
        for mark in marks:
            for part, seq in mark:
                if part in self.parts and seq > positions.get(part, -1):
                    positions[part] = seq
        top = self.watermark()
        if top is not None and top > self.released_upto:
            self.released_upto = top
        return self._release(self.released_upto)

    def finish(self) -> list[Any]:
        """The end of the input: everything still buffered, in order."""
        return self._release(None)

    def _release(self, upto: int | None) -> list[Any]:
        buf = self.buffer
        out: list[Any] = []
        pop = heapq.heappop
        while buf and (upto is None or buf[0][0] <= upto):
            out.append(pop(buf)[5])
        return out
