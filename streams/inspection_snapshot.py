"""The inspection step's state as Bytewax snapshot bytes, at a cost that follows what changed.

The step has one key for the plant (streams/inspections_flow.py), so every snapshot holds
every machine's state, and most of it is the parts totals each work order has made at each
machine (`InspectionState.parts`: up to MAX_POINTS per work order and machine, a point a
second while it runs). Measured with 200 machines after 6 minutes: 1.0 of 1.1 MB and
13 of 23 ms per snapshot, every 10 s, in the flow's thread (the pause shows in the live
p99).

A point list only grows at its end, gains a point inside (out of order, rare) or loses
its oldest points (`_point`). So each list is encoded in pieces, one per minute of its
points' times, and a piece's pickle is reused while its points are the ones pickled
(streams/snapshot_pieces.py): a snapshot pickles the newest minute of each list and its
oldest, not the whole list.

Pure: no Bytewax, no I/O.
"""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

from streams.inspections import InspectionState
from streams.snapshot_pieces import ListPieces, join

PIECE_US = 60_000_000  # a piece: the points of a minute of their times
FORMAT = "inspections/2"  # (FORMAT, the state without parts, {key: [pieces]}); else a plain pickle
_PROTOCOL = pickle.HIGHEST_PROTOCOL


class InspectionSnapshots:
    """The step's snapshot encoder: `encode()` at each snapshot. `encoded` counts the
    points pickled (not reused) so far."""

    __slots__ = ("_lists", "encoded")

    def __init__(self) -> None:
        self._lists: dict[tuple[str, str, str], ListPieces] = {}
        self.encoded = 0

    def encode(self, state: InspectionState) -> bytes:
        old = self._lists
        lists: dict[tuple[str, str, str], ListPieces] = {}
        parts: dict[tuple[str, str, str], list[bytes]] = {}
        for key, points in state.parts.items():
            pieces = old.get(key) or ListPieces(PIECE_US)
            before = pieces.encoded
            parts[key] = pieces.encode(points)
            self.encoded += pieces.encoded - before
            lists[key] = pieces
        self._lists = lists  # the lists gone from the state are forgotten
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
        state.parts[key] = join(blobs)
    return state
