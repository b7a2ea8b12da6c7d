"""A time-sorted list as snapshot pieces whose pickles are reused while they are unchanged.

The lists a step keeps for its lateness window (a tracker's state events and parts, the
inspection step's part totals) grow at their end, lose their oldest items and now and
then gain one inside (a late event). Bytewax snapshots a touched key whole at every
epoch, so pickling such a list whole costs what the list holds, not what changed: with
200 busy machines, a quarter of a second of the flow's thread every 10 s after five
minutes (docs/performance.md).

`ListPieces` cuts the list into pieces by the time in each item's first field (`piece_us`
of time each) and keeps each piece's items with its pickle. A piece whose items are the
ones last pickled is reused: `==` on two lists of the same item objects is a pointer
comparison in C, and items that are equal but new objects compare equal by value, so a
reused pickle is always the pickle of equal items. Items must be immutable (tuples of
ints, strings, None and other tuples): a piece mutated in place would compare equal to
itself.

Pure: no Bytewax, no I/O.
"""

from __future__ import annotations

import pickle
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

_PROTOCOL = pickle.HIGHEST_PROTOCOL


class ListPieces:
    """One list's piece encoder. `encoded` counts the items pickled (not reused) so far."""

    __slots__ = ("_cache", "encoded", "piece_us")

    def __init__(self, piece_us: int) -> None:
        self.piece_us = piece_us
        # piece number -> (its items as last encoded, their pickle)
        self._cache: dict[int, tuple[list[Any], bytes]] = {}
        self.encoded = 0

    def encode(self, items: Sequence[tuple[Any, ...]]) -> list[bytes]:
        """The pieces' pickles, in order: `join(encode(items)) == list(items)`. `items` is
        sorted by its first field (an int, µs)."""
        piece_us = self.piece_us
        old = self._cache
        cache: dict[int, tuple[list[Any], bytes]] = {}
        blobs: list[bytes] = []
        i, n = 0, len(items)
        while i < n:
            piece = items[i][0] // piece_us
            # (t,) sorts before every item whose time is t: the first item of the next piece.
            j = bisect_left(items, ((piece + 1) * piece_us,), i)
            chunk = list(items[i:j])
            c = old.get(piece)
            if c is not None and c[0] == chunk:
                blob = c[1]
            else:
                blob = pickle.dumps(chunk, protocol=_PROTOCOL)
                self.encoded += j - i
            cache[piece] = (chunk, blob)
            blobs.append(blob)
            i = j
        self._cache = cache
        return blobs

    def forget(self) -> None:
        """Reuse nothing at the next `encode` (the list belongs to a new owner)."""
        self._cache = {}


def join(blobs: Sequence[bytes]) -> list[Any]:
    """The list `ListPieces.encode` cut into `blobs`."""
    out: list[Any] = []
    for blob in blobs:
        out.extend(pickle.loads(blob))
    return out
