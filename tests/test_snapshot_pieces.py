"""streams/snapshot_pieces.py: a time-sorted list's pieces join back to the list after
any change a lateness window makes (append, insert inside, forget the oldest, replace an
item), and only the pieces that changed are pickled again."""

from __future__ import annotations

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.snapshot_pieces import ListPieces, join

PIECE_US = 10


def _item(t: int, k: int) -> tuple[int, int, str, str | None]:
    return (t, k, "down", None if k % 2 else "heater")


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 25)),
        st.tuples(st.just("insert"), st.integers(0, 200)),
        st.tuples(st.just("forget"), st.integers(0, 30)),
        st.tuples(st.just("replace"), st.integers(0, 200)),
        st.tuples(st.just("same"), st.integers(0, 200)),  # a new object, equal by value
        st.tuples(st.just("encode"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_pieces_join_back_to_the_list_after_any_change(ops: list[tuple[str, int]]) -> None:
    items: list[tuple[int, int, str, str | None]] = []
    pieces = ListPieces(PIECE_US)
    for k, (op, x) in enumerate(ops, start=1):
        last = items[-1][0] if items else 0
        if op == "append":
            items.append(_item(last + x, k))
        elif op == "insert" and items:
            t = items[x % len(items)][0]
            items.append(_item(t, k))
            items.sort()
        elif op == "forget" and items:
            horizon = items[0][0] + x
            items = [i for i in items if i[0] >= horizon]  # `del [:k]` in the tracker
        elif op == "replace" and items:
            i = x % len(items)
            items[i] = (*items[i][:2], "idle", "changed")
        elif op == "same" and items:
            i = x % len(items)
            items[i] = tuple(list(items[i]))  # type: ignore[assignment]
        blobs = pieces.encode(items)
        assert join(blobs) == items
        # Each piece holds one span of PIECE_US and pickles on its own.
        for blob in blobs:
            got = pickle.loads(blob)
            assert got and len({t // PIECE_US for t, *_ in got}) == 1


def test_only_changed_pieces_are_pickled_again() -> None:
    items = [_item(t, t) for t in range(0, 100)]  # 10 pieces of 10
    pieces = ListPieces(PIECE_US)
    pieces.encode(items)
    assert pieces.encoded == 100
    pieces.encode(items)
    assert pieces.encoded == 100  # nothing changed: every pickle reused
    items = [*items[5:], _item(100, 100)]  # forget 5, one more in a new piece
    pieces.encode(items)
    assert pieces.encoded == 100 + 5 + 1  # the first piece's 5 left, the new piece's 1
    items[50] = (*items[50][:2], "idle", "late reason")  # a change inside: its piece
    blobs = pieces.encode(items)
    assert pieces.encoded == 106 + 10
    assert join(blobs) == items
    pieces.forget()
    pieces.encode(items)
    assert pieces.encoded == 116 + len(items)
