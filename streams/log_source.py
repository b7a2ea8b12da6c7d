"""Bytewax source over the ingest log, partitioned by machine (sql/035_log_partitions.sql).

The log has LOG_PARTS + 1 fixed partitions: 1..16 by a hash of the machine id, 0 for rows
naming no machine. Bytewax gives each partition to one worker; all the partitions of one
worker share one reader (`_Reader`), which reads them with ONE query per poll, in seq
order, and emits the rows as one batch: a single process (one worker, every partition)
reads exactly as the unpartitioned log was read, one query per poll when idle.

Each partition keeps its own position in recovery (the seq it has read up to), so a
restart with another number of processes (rescaling) resumes every partition where it
was, whichever worker gets it. A poll reads up to a horizon (the highest seq committed
when it ran, or the last row of a full batch): every owned partition has then read up to
it, rows or not, so an idle partition still advances. In a cluster the reader says so
with a `ReadMark` after each batch; the results sink records the marks per partition in
dataflow_progress, so min(last_seq) keeps meaning "everything up to here is processed".

PostgreSQL going away (a restart, a network blip) is not an error: the read is retried
with a backoff on a new connection, from the same positions.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import repeat
from operator import itemgetter
from typing import Any, NamedTuple

import bytewax.operators as op
import psycopg
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import Loader
from psycopg.pq import Format

from mesflow.db import connect
from mesflow.ingest_log import LogEntry

log = logging.getLogger(__name__)

LOG_PARTS = 16  # machine partitions (1..16); 0 holds the rows that name no machine
PARTS = tuple(range(LOG_PARTS + 1))
_NO_END = 2**62


def part_name(part: int) -> str:
    return f"p{part:02d}"


def part_of(machine: str | None) -> int:
    """The partition of a machine's rows: sql/035's ingest_log_part, in Python."""
    if machine is None:
        return 0
    return 1 + hashlib.md5(machine.encode()).digest()[0] % LOG_PARTS


class ReadMark(NamedTuple):
    """A reader has read these partitions up to these seqs (rows or not)."""

    positions: tuple[tuple[int, int], ...]  # (part, seq)


# One statement: the horizon (highest committed seq, capped at the run's end) and the rows
# after the lowest owned position up to it. With the writers serialised on the advisory
# lock, every row up to a committed seq is committed: nothing below the horizon comes later.
# The plain read (one process) gives the rows as LogEntry columns, and the horizon as one
# more row with no payload (the log's payload is NOT NULL), after them: PostgreSQL appends
# a UNION ALL's inputs in order, and `_Reader` finds the horizon's row wherever it is.
_READ_ALL = """
WITH h AS MATERIALIZED (
    SELECT LEAST(COALESCE((SELECT max(seq) FROM ingest_log), 0), %(upto)s) AS top)
(SELECT seq, payload, error, received_at FROM ingest_log
 WHERE seq > %(lo)s AND seq <= (SELECT top FROM h) ORDER BY seq LIMIT %(n)s)
UNION ALL
SELECT top, NULL, NULL, NULL FROM h"""
_READ_PARTS = """
WITH h AS MATERIALIZED (
    SELECT LEAST(COALESCE((SELECT max(seq) FROM ingest_log), 0), %(upto)s) AS top)
SELECT h.top, r.seq, r.payload, r.error, r.received_at, r.part
FROM h LEFT JOIN LATERAL (
    SELECT seq, payload, error, received_at, part FROM ingest_log
    WHERE part = ANY(%(parts)s) AND seq > %(lo)s AND seq <= h.top
    ORDER BY seq LIMIT %(n)s) r ON true"""


class IngestLogSource(FixedPartitionedSource[Any, int]):
    """Reads ingest_log in seq order per partition, following it live; with `upto_seq`,
    stops there.

    `upto_seq` may be a callable returning None while the end is not known yet (a replay
    whose file is still being stored). `stop`, once set, ends the input at the next read:
    the dataflow then finishes its work in hand, writes it and stops cleanly (SIGTERM),
    and a restart resumes after the last seq read. `marks`: emit a ReadMark after each
    read (a cluster: the sink records progress per partition from them).
    """

    def __init__(
        self,
        database_url: str,
        *,
        batch_size: int = 2000,
        poll_interval: timedelta = timedelta(milliseconds=20),
        upto_seq: int | Callable[[], int | None] | None = None,
        stop: threading.Event | None = None,
        marks: bool = False,
    ) -> None:
        self.database_url = database_url
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.upto_seq = upto_seq
        self.stop = stop
        self.marks = marks
        self._readers: dict[int, _Reader] = {}  # by worker thread
        self._lock = threading.Lock()

    def list_parts(self) -> list[str]:
        return [part_name(k) for k in PARTS]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _LogPartition:
        # Bytewax builds a worker's partitions in that worker's thread: they share a reader.
        with self._lock:
            reader = self._readers.setdefault(threading.get_ident(), _Reader(self))
        part = int(for_part[1:])
        reader.add(part, resume_state or 0)
        return _LogPartition(reader, part)

    def upto(self) -> int | None:
        return self.upto_seq() if callable(self.upto_seq) else self.upto_seq


class _Reader:
    """The partitions of one worker, read together: one query per poll for all of them."""

    def __init__(self, source: IngestLogSource) -> None:
        self.s = source
        self.positions: dict[int, int] = {}
        self.open: set[int] = set()
        self.conn: psycopg.Connection | None = None
        self.awake: datetime | None = None  # next poll (None: at once)
        self._backoff = 0.5
        self._started = False
        # Rows of partition 0 read for our machines only: seq -> our partitions they are for.
        self.foreign: dict[int, frozenset[int]] = {}
        self.keep: dict[str, bool] = {}  # machine -> is it in one of our partitions

    def add(self, part: int, position: int) -> None:
        self.positions[part] = position
        self.open.add(part)

    def done(self, part: int, upto: int | None) -> bool:
        s = self.s
        if s.stop is not None and s.stop.is_set():
            return True
        return upto is not None and self.positions[part] >= upto

    def poll(self, upto: int | None) -> list[Any]:
        """Rows of every owned partition after its position, up to the horizon."""
        now = datetime.now(UTC)
        if self.awake is not None and now < self.awake:
            return []
        s = self.s
        positions = self.positions
        parts = sorted(positions)
        lo = min(positions.values())
        if not self._started:
            self._started = True
            if any(positions.values()):
                log.info("resuming the ingest log after seq %d (partitions %s)", lo, _names(parts))
        even = all(p == lo for p in positions.values())
        # Partition 0 owned by another reader: read its rows too, for the work orders that
        # go to every machine (owned_only keeps only their copies for our machines), in seq
        # order with our machines' rows, as each machine's step needs them.
        shared_zero = 0 not in positions
        params: dict[str, Any] = {"upto": _NO_END if upto is None else upto, "lo": lo}
        params["n"] = s.batch_size
        # One worker owning every partition at one position (a single process): the plain
        # seq-ordered read of the whole log, without the partition filter.
        plain = not shared_zero and len(parts) == len(PARTS) and even
        if not plain:
            params["parts"] = [0, *parts] if shared_zero else parts
        try:
            if self.conn is None or self.conn.closed:
                self.conn = connect(s.database_url, autocommit=True)
                self.conn.adapters.register_loader("timestamptz", _ReceiptLoader)
            if plain:  # LogEntry rows made by psycopg (in C), no intermediate tuple
                with self.conn.cursor(binary=True, row_factory=_entry_rows) as entries:
                    rows: list[Any] = entries.execute(_READ_ALL, params).fetchall()
            else:
                with self.conn.cursor(binary=True) as cur:
                    rows = cur.execute(_READ_PARTS, params).fetchall()
        except psycopg.OperationalError as err:
            # The database restarted or the network blipped: retry, never crash the flow.
            log.warning("ingest log unreachable (%s); retrying in %.1fs", err, self._backoff)
            self.conn = None
            self.awake = now + timedelta(seconds=self._backoff)
            self._backoff = min(self._backoff * 2, 10.0)
            return []
        self._backoff = 0.5
        # A full batch has read every owned row up to its last one; else up to the horizon.
        if plain:
            out: list[Any] = rows
            top = int((out.pop() if out[-1].payload is None else _horizon_row(out)).seq)
            full = len(out) == s.batch_size
            horizon = int(out[-1].seq) if full else top
        else:
            top = int(rows[0][0])
            full = len(rows) == s.batch_size and rows[-1][1] is not None
            horizon = int(rows[-1][1]) if full else top
            out = self._owned(rows, parts, even, shared_zero)
        moved = False
        for k, pos in positions.items():
            if horizon > pos:
                positions[k] = horizon
                moved = True
        if moved and s.marks:
            out.append(ReadMark(tuple(sorted(positions.items()))))
        # A full batch means more is waiting: read again at once; else poll.
        self.awake = None if full else now + s.poll_interval
        return out

    def _owned(self, rows: list[Any], parts: list[int], even: bool, shared_zero: bool) -> list[Any]:
        """A partitioned read's rows (top, seq, payload, error, received_at, part) as the
        LogEntry rows this reader owns."""
        positions = self.positions
        if even and not shared_zero:
            # Every row is a log row but the lone row of an empty read (no seq). The entries
            # are built in C (the namedtuple's own __new__ is a Python call per row).
            if rows[0][1] is None:
                return []
            return list(map(_new_tuple, repeat(LogEntry, len(rows)), map(_entry_cols, rows)))
        out: list[Any] = []
        owned = frozenset(parts)
        for r in rows:
            seq = r[1]
            if seq is None:
                continue
            if shared_zero and r[5] == 0:
                # For which of our partitions this row is new (all, unless rescaled).
                mine = owned if even else frozenset(k for k in parts if seq > positions[k])
                if not mine:
                    continue
                self.foreign[seq] = mine
            elif not even and seq <= positions[r[5]]:
                continue  # positions differ after a rescale: this partition read it
            out.append(_new_tuple(LogEntry, r[1:5]))
        return out

    def close(self, part: int) -> None:
        self.open.discard(part)
        if not self.open and self.conn is not None:
            self.conn.close()
            self.conn = None


class _ReceiptLoader(Loader):
    """timestamptz (binary) as psycopg loads it, loaded once per run of equal values: the
    rows of one append share their receipt time, and a new datetime per row costs as much
    as the rest of the row. Equal bytes, equal value: the same datetime object serves."""

    format = Format.BINARY

    def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
        super().__init__(oid, context)
        # The default loader (the connection's own map holds this class for the type).
        default = psycopg.adapters.get_loader(oid, Format.BINARY)
        assert default is not None
        self._load = default(oid, context).load
        self._last: bytes | None = None
        self._value: Any = None

    def load(self, data: Buffer) -> Any:
        if data == self._last:
            return self._value
        self._last = bytes(data)
        self._value = value = self._load(data)
        return value


# A row's LogEntry columns (seq, payload, error, received_at), and tuple.__new__ to make
# them a LogEntry: the same tuple as LogEntry(*cols), without a Python call.
_entry_cols = itemgetter(slice(1, 5))
_new_tuple = tuple.__new__
_make_entry = partial(_new_tuple, LogEntry)


def _entry_rows(cursor: Any) -> Callable[[Sequence[Any]], LogEntry]:
    """psycopg row factory: each row (the LogEntry columns) as a LogEntry, made in C."""
    return _make_entry


def _horizon_row(rows: list[LogEntry]) -> LogEntry:
    """Take the plain read's horizon row (no payload) out of `rows`, wherever it is."""
    i = next(i for i, e in enumerate(rows) if e.payload is None)
    return rows.pop(i)


def _names(parts: list[int]) -> str:
    if parts == list(range(parts[0], parts[-1] + 1)) and len(parts) > 2:
        return f"{part_name(parts[0])}-{part_name(parts[-1])}"
    return ",".join(part_name(k) for k in parts)


class _LogPartition(StatefulSourcePartition[Any, int]):
    def __init__(self, reader: _Reader, part: int) -> None:
        self.reader = reader
        self.part = part

    def next_batch(self) -> list[Any]:
        reader = self.reader
        upto = reader.s.upto()
        if reader.done(self.part, upto):
            raise StopIteration()
        return reader.poll(upto)

    def next_awake(self) -> datetime | None:
        return self.reader.awake

    def snapshot(self) -> int:
        return self.reader.positions[self.part]

    def close(self) -> None:
        self.reader.close(self.part)


def owned_only(source: Any, step: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    """`step` (the validator) over a worker's log rows, keeping only what is this worker's:
    of a row of partition 0 read for our machines (not ours: another worker has it), only
    its copies for our machines (a work order without a machine goes to every machine);
    of our own rows, no copy for another worker's machine (a work order naming a machine
    not in the plant goes to every machine: in a cluster, to those of its reader). So each
    machine's step gets its rows from one reader, in seq order. One process: `step`."""
    if not isinstance(source, IngestLogSource) or not source.marks:
        return step

    def run(batch: list[Any]) -> list[Any]:
        reader = source._readers.get(threading.get_ident())
        if reader is None:
            return list(step(batch))
        foreign, keep, own = reader.foreign, reader.keep, reader.positions
        out: list[Any] = []
        i, n = 0, len(batch)
        while i < n:  # runs of our rows and of foreign rows, in seq order
            f = batch[i].seq in foreign
            j = i + 1
            while j < n and (batch[j].seq in foreign) == f:
                j += 1
            for x in step(batch[i:j]):
                if type(x) is tuple:
                    if f:
                        if part_of(x[0]) not in foreign[x[1][0]]:
                            continue
                    else:
                        ok = keep.get(x[0])
                        if ok is None:
                            ok = keep[x[0]] = part_of(x[0]) in own
                        if not ok:
                            continue
                elif f:
                    continue  # the owner of partition 0 sends the rest (orders, refusals)
                out.append(x)
            if f:
                for e in batch[i:j]:
                    del foreign[e.seq]
            i = j
        return out

    return run


def _is_entry(x: Any) -> bool:
    return type(x) is LogEntry


def log_input(
    flow: Dataflow, source: IngestLogSource | Any
) -> tuple[Stream[Any], Stream[Any] | None]:
    """The log's rows, and the readers' ReadMarks for the sink (None: no marks)."""
    read = op.input("ingest_log", flow, source)
    if not getattr(source, "marks", False):
        return read, None
    split = op.branch("log_and_marks", read, _is_entry)
    return split.trues, split.falses
