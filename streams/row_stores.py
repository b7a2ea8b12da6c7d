"""Result rows that store themselves: the people and quality steps' rows (issue 13).

A module whose step emits a new row type registers it here, with how to store a list of
them and (optionally) the key under which a later row replaces an earlier one in a sink
batch. The results sink (streams/pg_sink.py) writes every registered type in the same
transaction as the rest of the batch, and row by row (refused rows dead-lettered) when the
batch is refused: so a new row type needs no edit of the sink.

Stores are plain `INSERT ... ON CONFLICT` statements: these rows are few (a handful per
report), so COPY and staging tables would not pay for themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import psycopg

StoreFn = Callable[[psycopg.Cursor[Any], list[Any]], None]


@dataclass(frozen=True)
class RowStore:
    table: str  # named in a refused row's dead letter
    store: StoreFn
    key: Callable[[Any], Hashable] | None = None  # None: every row is kept, in order
    # What a refused row belongs to, to find its source event: (payload field, value).
    owner: Callable[[Any], tuple[str, Any]] | None = None


REGISTRY: dict[type, RowStore] = {}


def register(
    row_type: type,
    table: str,
    store: StoreFn,
    key: Callable[[Any], Hashable] | None = None,
    owner: Callable[[Any], tuple[str, Any]] | None = None,
) -> None:
    REGISTRY[row_type] = RowStore(table, store, key, owner)


class Pending:
    """One sink batch's registered rows, reduced to the last row per key."""

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows: dict[type, dict[Hashable, Any] | list[Any]] = {}

    def add(self, item: Any) -> bool:
        """Take `item` if its type is registered (True), else leave it (False)."""
        t = type(item)
        spec = REGISTRY.get(t)
        if spec is None:
            return False
        held = self.rows.get(t)
        if spec.key is None:
            if held is None:
                held = self.rows[t] = []
            assert isinstance(held, list)
            held.append(item)
        else:
            if held is None:
                held = self.rows[t] = {}
            assert isinstance(held, dict)
            held[spec.key(item)] = item
        return True

    def groups(self) -> list[tuple[RowStore, list[Any]]]:
        """The rows by type, in the order the types were registered: a module that
        registers a row type after another can rely on being stored after it."""
        out: list[tuple[RowStore, list[Any]]] = []
        for t, spec in REGISTRY.items():
            held = self.rows.get(t)
            if held:
                out.append((spec, list(held.values()) if isinstance(held, dict) else held))
        return out


def owner_of(spec: RowStore, row: Any) -> tuple[str, Any]:
    if spec.owner is not None:
        return spec.owner(row)
    for field in ("machine", "work_order", "seq"):
        value = getattr(row, field, None)
        if value is not None:
            return field, value
    return "seq", 0
