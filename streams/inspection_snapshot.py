"""The inspection step's state as Bytewax snapshot bytes, at a cost that follows what changed.

The step has one key for the plant (streams/inspections_flow.py), so every snapshot holds
every machine's state, and most of it is the parts totals each work order has made at each
machine (`InspectionState.parts`: up to MAX_POINTS per work order and machine, a point a
second while it runs). Measured with 200 machines after 6 minutes: 1.0 of 1.1 MB and
13 of 23 ms per snapshot, every 10 s, in the flow's thread (the pause shows in the live
p99).

A point list only grows at its end, gains a point inside (out of order, rare) or loses
its oldest points (`_point`). So each list is encoded in pieces, one per minute of its
points' times, and an inner piece (not the first, which loses points, nor the last, which
gains them) is reused while it is the same list with the same count, first and last point:
a point inserted into it changes its count. A snapshot pickles the newest minute of each
list and its oldest, not the whole list.

Pure: no Bytewax, no I/O.
"""

from __future__ import annotations

import dataclasses
import pickle
from bisect import bisect_left
from typing import Any

from streams.inspections import InspectionState

PIECE_US = 60_000_000  # a piece: the points of a minute of their times
FORMAT = "inspections/2"  # (FORMAT, the state without parts, {key: [pieces]}); else a plain pickle
_PROTOCOL = pickle.HIGHEST_PROTOCOL

Points = list[tuple[int, int]]
# An inner piece as last encoded: (the list, its count, first point, last point, bytes).
_Piece = tuple[Points, int, tuple[int, int], tuple[int, int], bytes]


class InspectionSnapshots:
    """The step's snapshot encoder: `encode()` at each snapshot. `encoded` counts the
    points pickled (not reused) so far."""

    __slots__ = ("_pieces", "encoded")

    def __init__(self) -> None:
        self._pieces: dict[tuple[str, str, str], dict[int, _Piece]] = {}
        self.encoded = 0

    def encode(self, state: InspectionState) -> bytes:
        old_pieces = self._pieces
        pieces: dict[tuple[str, str, str], dict[int, _Piece]] = {}
        parts: dict[tuple[str, str, str], list[bytes]] = {}
        for key, points in state.parts.items():
            old = old_pieces.get(key)
            kept: dict[int, _Piece] = {}
            blobs: list[bytes] = []
            i, n = 0, len(points)
            while i < n:
                minute = points[i][0] // PIECE_US
                j = bisect_left(points, ((minute + 1) * PIECE_US,), i)
                inner = i > 0 and j < n
                c = old.get(minute) if old is not None and inner else None
                if (
                    c is not None
                    and c[0] is points
                    and c[1] == j - i
                    and c[2] == points[i]
                    and c[3] == points[j - 1]
                ):
                    blob = c[4]
                else:
                    blob = pickle.dumps(points[i:j], protocol=_PROTOCOL)
                    self.encoded += j - i
                if inner:
                    kept[minute] = (points, j - i, points[i], points[j - 1], blob)
                blobs.append(blob)
                i = j
            if kept:
                pieces[key] = kept
            parts[key] = blobs
        self._pieces = pieces
        rest = dataclasses.replace(state, parts={})
        return pickle.dumps((FORMAT, rest, parts), protocol=_PROTOCOL)


def decode(data: bytes) -> InspectionState:
    """The state from `encode()`'s bytes, or from a plain pickle (older snapshots)."""
    obj: Any = pickle.loads(data)
    if isinstance(obj, InspectionState):
        return obj
    fmt, state, parts = obj
    if fmt != FORMAT:
        raise ValueError(f"unknown inspection snapshot format {fmt!r} (from a newer mesflow?)")
    assert isinstance(state, InspectionState)
    for key, blobs in parts.items():
        points: Points = []
        for blob in blobs:
            points.extend(pickle.loads(blob))
        state.parts[key] = points
    return state
