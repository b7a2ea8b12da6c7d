"""Result rows that store themselves: the people and quality steps' rows (issue 13).

A module whose step emits a new row type registers it here, with how to store a list of
them and (optionally) the key under which a later row replaces an earlier one in a sink
batch. The results sink (streams/pg_sink.py) writes every registered type in the same
transaction as the rest of the batch, and row by row (refused rows dead-lettered) when the
batch is refused: so a new row type needs no edit of the sink.

The frequent ones (a work order's operations, inspection runs, yields, labor segments,
operator activity: rewritten every batch that touches them) go through `Staged`: a text COPY
into a temporary table and one `INSERT ... SELECT ... ON CONFLICT`, which costs a fraction
of `executemany`'s Python work per row (measured: docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import cached_property
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


def columns(rows: Sequence[Sequence[Any]], n: int) -> list[list[Any]]:
    """The rows as n column lists: the array parameters of an
    `INSERT … SELECT … FROM unnest(%s::t[], …)` (see streams/pg_sink.py, Upsert)."""
    if not rows:
        return [[] for _ in range(n)]
    return [list(c) for c in zip(*rows, strict=True)]


REGISTRY: dict[type, RowStore] = {}

# DDL of the staging tables of every `Staged` store: run once per sink connection.
STAGING: list[str] = []
TRUNCATE_EVERY = 64
_WRITES: dict[str, int] = {}  # writes per staging table, in this process (any connection)


def truncate_now_and_then(cur: psycopg.Cursor[Any], stage: str) -> None:
    """Empty a staging table's dead rows every TRUNCATE_EVERY writes to it: the writes
    empty it by DELETE, and temporary tables are never autovacuumed."""
    writes = _WRITES[stage] = _WRITES.get(stage, 0) + 1
    if writes % TRUNCATE_EVERY == 0:
        cur.execute(f"TRUNCATE {stage}".encode())


@dataclass(frozen=True)
class Staged:
    """One statement for many rows: COPY (text format: psycopg encodes each value in C)
    into a temporary table like `table`, then INSERT ... SELECT ... ON CONFLICT `action`.

    The same outcome as `executemany` of the single-row INSERT: rows with the same conflict
    key are reduced first to the one that statement would have left (the last for
    DO UPDATE, the first for DO NOTHING), since one INSERT may not touch a row twice."""

    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    action: str  # "DO NOTHING" or "DO UPDATE SET ..." (EXCLUDED.<column>)

    def __post_init__(self) -> None:
        # PRESERVE ROWS, emptied by the write itself: PostgreSQL empties every ON COMMIT
        # DELETE ROWS table of a session at each commit that touched any temporary table,
        # 10-70 ms per commit with a dozen of them (docs/performance.md). The DELETE leaves
        # dead rows (temporary tables are never autovacuumed): `write` truncates its stage
        # every TRUNCATE_EVERY writes, about 1 ms for one table.
        STAGING.append(
            f"CREATE TEMP TABLE IF NOT EXISTS {self.stage} "
            f"(LIKE {self.table} INCLUDING DEFAULTS) ON COMMIT PRESERVE ROWS;"
        )

    @property
    def stage(self) -> str:
        return f"stage_rows_{self.table}"

    def write(self, cur: psycopg.Cursor[Any], rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        at = [self.columns.index(k) for k in self.key]
        unique: dict[Hashable, tuple[Any, ...]] = {}
        if self.action == "DO NOTHING":
            for r in rows:
                unique.setdefault(tuple([r[i] for i in at]), r)
        else:
            for r in rows:
                unique[tuple([r[i] for i in at])] = r
        names = ", ".join(self.columns)
        truncate_now_and_then(cur, self.stage)
        with cur.copy(f"COPY {self.stage} ({names}) FROM STDIN".encode()) as copy:
            for r in unique.values():
                copy.write_row(r)
        cur.execute(self.move_sql)

    @cached_property
    def move_sql(self) -> bytes:
        """The staged rows into the table, emptying the stage at once: the next write (and
        the row-by-row retry of a refused batch, one row at a time) finds it empty. One
        statement, so psycopg prepares it (two went by the simple protocol, planned at
        every write)."""
        names = ", ".join(self.columns)
        return (
            f"WITH s AS (DELETE FROM {self.stage} RETURNING {names}) "
            f"INSERT INTO {self.table} ({names}) SELECT {names} FROM s "
            f"ON CONFLICT ({', '.join(self.key)}) {self.action}"
        ).encode()


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
